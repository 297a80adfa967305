//! `weighted-random-picker`: chance proportional to score, without replacement (A-Res sampling).
//!
//! Each candidate draws key `U^(1/score)` and the largest keys win, so fallbacks are a weighted sample
//! too. With no positive score at all it degrades to a uniform pick, as GIE does.

use super::random_picker::uniform;
use super::{PickerConfig, PickerParams};
use crate::config::params::ParamError;
use crate::rng::Rng;
use crate::scheduling::{BuildContext, Picker, Plugin, PluginFactory, ScoredEndpoint};
use alloc::vec::Vec;

pub const TYPE: &str = "weighted-random-picker";

#[derive(Clone, Debug, Default)]
pub struct WeightedRandomPicker {
    pub params: PickerParams,
}

impl PluginFactory for WeightedRandomPicker {
    const TYPE: &'static str = TYPE;
    type Params = PickerConfig;

    fn build(config: PickerConfig, ctx: &mut BuildContext<'_>) -> Result<WeightedRandomPicker, ParamError> {
        Ok(WeightedRandomPicker { params: PickerParams::from_config(config, ctx) })
    }
}

impl Picker for WeightedRandomPicker {
    fn pick(&self, scored: &mut [ScoredEndpoint], max: usize, rng: &mut Rng) -> Vec<usize> {
        let n = self.params.max_num_of_endpoints.min(max);
        if !scored.iter().any(|s| s.score > 0.0) {
            return uniform(scored, n, rng);
        }
        // Sort by ln(U)/score instead of U^(1/score): same order (ln is increasing), no `powf` needed
        // in no_std. The key replaces the score in place; the scores are not needed after this.
        for s in scored.iter_mut() {
            s.score = if s.score > 0.0 { ln(rng.next_f64().max(1e-10)) / s.score } else { f64::NEG_INFINITY };
        }
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        scored.iter().take(n).map(|s| s.index).collect()
    }
}

/// Natural log for x > 0 (range-reduced to [1, 2), then the atanh series; error < 1e-15).
fn ln(x: f64) -> f64 {
    if x <= 0.0 || x.is_nan() {
        return f64::NEG_INFINITY;
    }
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let t = (mantissa - 1.0) / (mantissa + 1.0);
    let t2 = t * t;
    let mut term = t;
    let mut sum = 0.0;
    let mut k = 1.0;
    // t ≤ 1/3, so t^(2k) falls below 1e-17 well before 40 terms.
    while k < 40.0 {
        sum += term / k;
        term *= t2;
        k += 2.0;
    }
    2.0 * sum + exponent as f64 * core::f64::consts::LN_2
}

impl Plugin for WeightedRandomPicker {
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

    #[test]
    fn ln_matches_std() {
        for &x in &[0.5, 0.1, 0.999_999, 1e-10, 0.73, 1.0, 3.5] {
            let (got, want) = (ln(x), std::primitive::f64::ln(x));
            assert!((got - want).abs() < 1e-12, "ln {x}: {got} vs {want}");
        }
    }

    #[test]
    fn share_follows_score() {
        // Scores 1, 2, 3, 0: expected primary shares 1/6, 2/6, 3/6, 0.
        let p = picker::<WeightedRandomPicker>(1);
        let mut rng = Rng::new(42);
        let mut counts = [0u32; 4];
        let draws = 12_000;
        for _ in 0..draws {
            counts[p.pick(&mut scored(&[1.0, 2.0, 3.0, 0.0]), 1, &mut rng)[0]] += 1;
        }
        assert_eq!(counts[3], 0, "a zero score is never picked while others score");
        for (i, want) in [(0, 1.0 / 6.0), (1, 2.0 / 6.0), (2, 3.0 / 6.0)] {
            let share = f64::from(counts[i]) / f64::from(draws);
            assert!((share - want).abs() < 0.03, "endpoint {i}: share {share}, want {want}");
        }
    }

    #[test]
    fn all_zero_scores_pick_uniformly() {
        let p = picker::<WeightedRandomPicker>(1);
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[p.pick(&mut scored(&[0.0, 0.0, -1.0]), 1, &mut rng)[0]] += 1;
        }
        for c in counts {
            assert!((850..=1150).contains(&c), "{counts:?}");
        }
    }
}
