//! `near-best-picker` (ours): a random choice among the candidates whose total score is within `margin`
//! of the best, so decision points that read the same stale metrics do not all send their requests to
//! the same endpoint.
//!
//! Every Envoy worker of every gateway replica picks on its own, from metrics scraped every 50 ms (the
//! workers of one Envoy also share in-flight counts, the replicas nothing). `max-score-picker` gives each
//! of them the same answer until the next scrape: a herd. Scores that differ by less than the noise of
//! their inputs say nothing about which endpoint is better, so this picker treats them as equal and draws.
//!
//! # Formula
//!
//! With `best` the highest total score, the near-best set is `{e : score(e) ≥ best − margin}`. The picker
//! draws `choices` candidates from it, uniformly and with replacement, and keeps the one with the highest
//! score (the first drawn among equals): `choices = 1` is a uniform draw among the near-best, `choices =
//! 2` the power of two choices within them, and a `margin` larger than the sum of the profile's weights
//! makes the set every candidate (Mitzenmacher's power of two choices). Fallbacks, when asked for, follow
//! in score order, ties shuffled, as in `max-score-picker`. The draw uses the decision's seed, so a
//! decision stays a pure function of (snapshot, request, clock, seed).
//!
//! `margin` is in the unit of the totals, which are weighted sums (GIE does not divide by the weights):
//! 0.5 is a quarter of a ×2 scorer's range. With the default `margin` a profile's clear preferences (most
//! of the prompt cached, a rendezvous owner at ×4, a queue more than a quarter of the candidates' spread
//! shorter under a ×2 min-max queue scorer) still win outright; KV-cache usages a few percent apart, and
//! exact ties, are drawn. `margin = 0` draws among exact ties only, like `max-score-picker` (whose draw
//! among ties uses the coins differently, so the two do not pick alike from the same seed).

use super::primary_then_ranked;
use crate::config::params::{non_negative_number, positive_count, ParamError};
use crate::rng::Rng;
use crate::scheduling::{BuildContext, Picker, Plugin, PluginFactory, ScoredEndpoint};
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "near-best-picker";

/// Most draws `choices` may ask for (more than that is the best of the set anyway).
const MAX_CHOICES: usize = 64;

/// `parameters` of a `near-best-picker` entry.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NearBestPickerParams {
    /// GIE's picker parameter: destination plus fallbacks returned at most. Default 1.
    #[serde(deserialize_with = "positive_count")]
    pub max_num_of_endpoints: usize,
    /// How far below the best total a candidate may score and still be drawn. Default 0.5.
    #[serde(deserialize_with = "non_negative_number")]
    pub margin: f64,
    /// Candidates drawn from the near-best set; the best of them wins. Default 1 (a uniform draw).
    #[serde(deserialize_with = "positive_count")]
    pub choices: usize,
}

impl Default for NearBestPickerParams {
    fn default() -> NearBestPickerParams {
        NearBestPickerParams { max_num_of_endpoints: 1, margin: 0.5, choices: 1 }
    }
}

#[derive(Clone, Debug)]
pub struct NearBestPicker {
    params: NearBestPickerParams,
}

impl PluginFactory for NearBestPicker {
    const TYPE: &'static str = TYPE;
    type Params = NearBestPickerParams;

    fn build(params: NearBestPickerParams, _: &mut BuildContext<'_>) -> Result<NearBestPicker, ParamError> {
        if params.choices > MAX_CHOICES {
            return Err(ParamError::new(
                "choices",
                "an integer in [1, 64]",
                Some(alloc::format!("{}", params.choices)),
            ));
        }
        Ok(NearBestPicker { params })
    }
}

impl Picker for NearBestPicker {
    fn pick(&self, scored: &mut [ScoredEndpoint], max: usize, rng: &mut Rng) -> Vec<usize> {
        let n = self.params.max_num_of_endpoints.min(max);
        primary_then_ranked(scored, n, rng, |scored, rng| self.draw(scored, rng))
    }
}

impl NearBestPicker {
    /// Position in `scored` of the drawn candidate (see the module documentation); `None` when empty.
    fn draw(&self, scored: &[ScoredEndpoint], rng: &mut Rng) -> Option<usize> {
        let best = scored.iter().map(|s| s.score).max_by(f64::total_cmp)?;
        let floor = best - self.params.margin;
        let near = |s: &ScoredEndpoint| s.score >= floor || s.score.total_cmp(&best).is_eq();
        let size = scored.iter().filter(|s| near(s)).count();
        let mut chosen: Option<(usize, f64)> = None;
        for _ in 0..self.params.choices {
            let k = rng.below(size);
            let Some((pos, s)) = scored.iter().enumerate().filter(|(_, s)| near(s)).nth(k) else { continue };
            if chosen.is_none_or(|(_, c)| s.score > c) {
                chosen = Some((pos, s.score));
            }
        }
        chosen.map(|(pos, _)| pos)
    }
}

impl Plugin for NearBestPicker {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_picker(&self) -> Option<&dyn Picker> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::pickers::scored;
    use crate::plugins::test_support::{build_err, built};
    use alloc::string::ToString;
    use alloc::vec;

    /// How often each candidate is the primary over `draws` seeds.
    fn shares(p: &NearBestPicker, scores: &[f64], draws: u64) -> Vec<u32> {
        let mut counts = vec![0u32; scores.len()];
        for seed in 0..draws {
            counts[p.pick(&mut scored(scores), 1, &mut Rng::new(seed))[0]] += 1;
        }
        counts
    }

    #[test]
    fn near_equal_candidates_share_the_picks() {
        // Totals 6.0, 5.8, 5.6 are within 0.5 of the best; 5.4 and 3.0 are not.
        let p = built::<NearBestPicker>("{}");
        let counts = shares(&p, &[6.0, 5.8, 5.4, 5.6, 3.0], 3000);
        assert_eq!((counts[2], counts[4]), (0, 0), "{counts:?}");
        for i in [0, 1, 3] {
            assert!((850..=1150).contains(&counts[i]), "{counts:?}");
        }
    }

    #[test]
    fn two_choices_lean_to_the_better_of_the_near_best() {
        // Best of two uniform draws among three: the best wins 5/9, the worst 1/9.
        let p = built::<NearBestPicker>(r#"{"margin": 1, "choices": 2}"#);
        let counts = shares(&p, &[3.0, 2.5, 2.2, 0.0], 9000);
        assert_eq!(counts[3], 0);
        for (i, want) in [(0, 5000), (1, 3000), (2, 1000)] {
            assert!(counts[i].abs_diff(want) < 250, "{counts:?}");
        }
        // A margin above every total: the classic power of two choices over all candidates.
        let p = built::<NearBestPicker>(r#"{"margin": 1000, "choices": 2}"#);
        let counts = shares(&p, &[3.0, 2.0, 1.0, 0.0], 16000);
        for (i, want) in [(0, 7000), (1, 5000), (2, 3000), (3, 1000)] {
            assert!(counts[i].abs_diff(want) < 300, "{counts:?}");
        }
    }

    #[test]
    fn zero_margin_draws_among_exact_ties_only() {
        let p = built::<NearBestPicker>(r#"{"margin": 0}"#);
        let counts = shares(&p, &[1.0, 0.999, 1.0, 0.5], 2000);
        assert_eq!((counts[1], counts[3]), (0, 0), "{counts:?}");
        assert!((850..=1150).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_pick_and_seeds_spread() {
        let p = built::<NearBestPicker>(r#"{"maxNumOfEndpoints": 3}"#);
        let scores = [2.0, 2.0, 1.9, 1.8, 0.1];
        let mut primaries = [0u32; 5];
        for seed in 0..200 {
            let a = p.pick(&mut scored(&scores), usize::MAX, &mut Rng::new(seed));
            assert_eq!(a, p.pick(&mut scored(&scores), usize::MAX, &mut Rng::new(seed)));
            primaries[a[0]] += 1;
            // Fallbacks: distinct, in score order after the primary.
            assert_eq!(a.len(), 3);
            let rest: Vec<f64> = a[1..].iter().map(|&i| scores[i]).collect();
            assert!(rest.windows(2).all(|w| w[0] >= w[1]), "{a:?}");
            assert!(!a[1..].contains(&a[0]));
        }
        assert_eq!(primaries[4], 0);
        assert!(primaries[..4].iter().all(|&n| n > 20), "{primaries:?}");
        // The caller's cap wins when smaller.
        assert_eq!(p.pick(&mut scored(&scores), 1, &mut Rng::new(1)).len(), 1);
        assert_eq!(p.pick(&mut scored(&scores), 0, &mut Rng::new(1)), Vec::<usize>::new());
        assert_eq!(p.pick(&mut scored(&[0.3]), 3, &mut Rng::new(1)), vec![0]);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let field = |json: &str| build_err::<NearBestPicker>(json).field;
        assert_eq!(field(r#"{"margin": -1}"#), "margin");
        assert_eq!(field(r#"{"choices": 0}"#), "choices");
        assert_eq!(field(r#"{"maxNumOfEndpoints": 0}"#), "maxNumOfEndpoints");
        assert_eq!(field(r#"{"temperature": 1}"#), "temperature");
        let err = build_err::<NearBestPicker>(r#"{"choices": 65}"#);
        assert_eq!(err.to_string(), "choices: expected an integer in [1, 64], got 65");
    }
}
