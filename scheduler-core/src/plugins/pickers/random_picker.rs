//! `random-picker`: uniform choice among the candidates, scores ignored.
//!
//! Useful as a baseline and as the fallback of the weighted picker when no candidate scored above 0.

use super::{PickerConfig, PickerParams};
use crate::config::params::ParamError;
use crate::rng::Rng;
use crate::scheduling::{BuildContext, Picker, Plugin, PluginFactory, ScoredEndpoint};
use alloc::vec::Vec;

pub const TYPE: &str = "random-picker";

#[derive(Clone, Debug, Default)]
pub struct RandomPicker {
    pub params: PickerParams,
}

impl PluginFactory for RandomPicker {
    const TYPE: &'static str = TYPE;
    type Params = PickerConfig;

    fn build(config: PickerConfig, ctx: &mut BuildContext<'_>) -> Result<RandomPicker, ParamError> {
        Ok(RandomPicker { params: PickerParams::from_config(config, ctx) })
    }
}

/// Uniform sample of `n` distinct candidates: a partial Fisher-Yates shuffle.
pub(crate) fn uniform(scored: &mut [ScoredEndpoint], n: usize, rng: &mut Rng) -> Vec<usize> {
    let n = n.min(scored.len());
    for i in 0..n {
        let j = i + rng.below(scored.len() - i);
        scored.swap(i, j);
    }
    scored.iter().take(n).map(|s| s.index).collect()
}

impl Picker for RandomPicker {
    fn pick(&self, scored: &mut [ScoredEndpoint], max: usize, rng: &mut Rng) -> Vec<usize> {
        uniform(scored, self.params.max_num_of_endpoints.min(max), rng)
    }
}

impl Plugin for RandomPicker {
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
    use crate::plugins::test_support::picker;

    #[test]
    fn uniform_and_distinct() {
        let p = picker::<RandomPicker>(2);
        let mut counts = [0u32; 4];
        for seed in 0..2000 {
            let mut s: Vec<ScoredEndpoint> = [0.0, 1.0, 0.0, 0.5]
                .iter()
                .enumerate()
                .map(|(index, &score)| ScoredEndpoint { index, score })
                .collect();
            let got = p.pick(&mut s, usize::MAX, &mut Rng::new(seed));
            assert_eq!(got.len(), 2);
            assert_ne!(got[0], got[1]);
            counts[got[0]] += 1;
        }
        for c in counts {
            assert!((400..=600).contains(&c), "primary counts {counts:?}");
        }
    }
}
