//! `max-score-picker`: the highest total score wins; ties break at random.
//!
//! The winner is drawn uniformly among the endpoints tied for the highest score (one pass, a coin only per
//! tie), so a pool of idle endpoints shares load instead of always feeding the first one. Fallbacks, when
//! asked for, follow in score order, their ties shuffled.

use super::{primary_then_ranked, PickerConfig, PickerParams};
use crate::config::params::ParamError;
use crate::rng::Rng;
use crate::scheduling::{BuildContext, Picker, Plugin, PluginFactory, ScoredEndpoint};
use alloc::vec::Vec;

pub const TYPE: &str = "max-score-picker";

#[derive(Clone, Debug, Default)]
pub struct MaxScorePicker {
    pub params: PickerParams,
}

impl PluginFactory for MaxScorePicker {
    const TYPE: &'static str = TYPE;
    type Params = PickerConfig;

    fn build(config: PickerConfig, ctx: &mut BuildContext<'_>) -> Result<MaxScorePicker, ParamError> {
        Ok(MaxScorePicker { params: PickerParams::from_config(config, ctx) })
    }
}

impl Picker for MaxScorePicker {
    fn pick(&self, scored: &mut [ScoredEndpoint], max: usize, rng: &mut Rng) -> Vec<usize> {
        primary_then_ranked(scored, self.params.max_num_of_endpoints.min(max), rng, uniform_best)
    }
}

/// Position in `scored` of a highest score, each of the tied ones equally likely (reservoir sampling: the
/// k-th tie seen replaces the choice with probability 1/k). `None` when `scored` is empty.
fn uniform_best(scored: &[ScoredEndpoint], rng: &mut Rng) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    let mut ties = 0usize;
    for (i, s) in scored.iter().enumerate() {
        match best.map(|(_, b)| s.score.total_cmp(&b)) {
            None | Some(core::cmp::Ordering::Greater) => {
                best = Some((i, s.score));
                ties = 1;
            }
            Some(core::cmp::Ordering::Equal) => {
                ties += 1;
                if rng.below(ties) == 0 {
                    best = Some((i, s.score));
                }
            }
            Some(core::cmp::Ordering::Less) => {}
        }
    }
    best.map(|(i, _)| i)
}

impl Plugin for MaxScorePicker {
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
    use crate::plugins::test_support::picker;
    use alloc::vec;

    #[test]
    fn fallbacks_come_in_score_order() {
        let p = picker::<MaxScorePicker>(3);
        let mut s = scored(&[0.2, 0.9, 0.5, 0.7]);
        assert_eq!(p.pick(&mut s, usize::MAX, &mut Rng::new(1)), vec![1, 3, 2]);
        // The caller's cap wins when smaller, down to none at all.
        let mut s = scored(&[0.2, 0.9, 0.5, 0.7]);
        assert_eq!(p.pick(&mut s, 1, &mut Rng::new(1)), vec![1]);
        assert_eq!(p.pick(&mut s, 0, &mut Rng::new(1)), Vec::<usize>::new());
    }

    #[test]
    fn ties_break_randomly_but_reproducibly() {
        let p = picker::<MaxScorePicker>(1);
        let pick = |seed| p.pick(&mut scored(&[1.0, 1.0, 1.0, 1.0, 0.5]), 1, &mut Rng::new(seed))[0];
        let mut seen = [0u32; 5];
        for seed in 0..400 {
            let a = pick(seed);
            assert_eq!(a, pick(seed), "same seed, same pick");
            seen[a] += 1;
        }
        assert_eq!(seen[4], 0, "the lower score never wins");
        for (i, n) in seen.iter().take(4).enumerate() {
            assert!((60..=140).contains(n), "endpoint {i} won {n} of 400 ties");
        }
    }

    #[test]
    fn fallbacks_are_distinct_and_ranked_whatever_the_ties() {
        let p = picker::<MaxScorePicker>(3);
        let mut gen = Rng::new(5);
        for seed in 0..300 {
            let scores: Vec<f64> = (0..gen.below(8)).map(|_| gen.below(3) as f64).collect();
            let got = p.pick(&mut scored(&scores), usize::MAX, &mut Rng::new(seed));
            assert_eq!(got.len(), scores.len().min(3), "{scores:?}");
            let mut seen = got.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), got.len(), "{scores:?} -> {got:?}");
            let ranked: Vec<f64> = got.iter().map(|&i| scores[i]).collect();
            assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{scores:?} -> {got:?}");
            let top = scores.iter().copied().fold(f64::MIN, f64::max);
            assert!(ranked.first().is_none_or(|&s| s == top));
        }
    }

    #[test]
    fn a_single_pick_is_the_head_of_the_ranked_list() {
        // Same seed, same scores: the primary does not depend on how many fallbacks are asked for.
        let one = picker::<MaxScorePicker>(1);
        let many = picker::<MaxScorePicker>(3);
        let mut gen = Rng::new(99);
        for seed in 0..300 {
            // Few distinct values, so most cases have ties at the top; includes NaN-free negatives.
            let scores: Vec<f64> = (0..1 + gen.below(12)).map(|_| gen.below(4) as f64 - 1.0).collect();
            let head = many.pick(&mut scored(&scores), usize::MAX, &mut Rng::new(seed))[0];
            assert_eq!(one.pick(&mut scored(&scores), usize::MAX, &mut Rng::new(seed)), vec![head]);
            assert_eq!(many.pick(&mut scored(&scores), 1, &mut Rng::new(seed)), vec![head]);
        }
    }
}
