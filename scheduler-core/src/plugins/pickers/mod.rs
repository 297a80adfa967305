//! Pickers: turn the scored candidates of a profile into the primary target plus fallbacks.
//!
//! All take GIE's `maxNumOfEndpoints` (default 1); the pipeline's own cap is applied on top.

pub mod max_score_picker;
pub mod near_best_picker;
pub mod random_picker;
pub mod weighted_random_picker;

use crate::config::params::integer;
use crate::rng::Rng;
use crate::scheduling::{BuildContext, ScoredEndpoint};
use alloc::vec::Vec;
use serde::Deserialize;

/// Parameters shared by llm-d's pickers (`PickerParameters`), as configured.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PickerConfig {
    /// Default 1. As in llm-d, a value ≤ 0 also means 1 (with a warning here).
    #[serde(deserialize_with = "integer")]
    pub max_num_of_endpoints: i64,
}

impl Default for PickerConfig {
    fn default() -> PickerConfig {
        PickerConfig { max_num_of_endpoints: 1 }
    }
}

/// The parameters a picker runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickerParams {
    pub max_num_of_endpoints: usize,
}

impl Default for PickerParams {
    fn default() -> PickerParams {
        PickerParams { max_num_of_endpoints: 1 }
    }
}

impl PickerParams {
    /// Checks `config` as llm-d does: `maxNumOfEndpoints` ≤ 0 is read as 1, with a warning.
    pub fn from_config(config: PickerConfig, ctx: &mut BuildContext<'_>) -> PickerParams {
        let n = config.max_num_of_endpoints;
        let n = if n <= 0 {
            ctx.warn("maxNumOfEndpoints", alloc::format!("{n} read as 1, as in llm-d"));
            1
        } else {
            usize::try_from(n).unwrap_or(usize::MAX)
        };
        PickerParams { max_num_of_endpoints: n }
    }
}

/// The pick of a picker that chooses its primary and ranks the rest: at most `n` endpoints, the one at
/// the position `choose` returns in `scored` first, then fallbacks in score order, their ties shuffled.
///
/// `choose` is not called when `n` is 0 (nothing is drawn from `rng`); when it returns `None` (no
/// candidates) the pick is empty. With `n = 1`, the default, nothing is sorted.
pub(crate) fn primary_then_ranked(
    scored: &mut [ScoredEndpoint],
    n: usize,
    rng: &mut Rng,
    choose: impl FnOnce(&[ScoredEndpoint], &mut Rng) -> Option<usize>,
) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let Some(chosen) = choose(scored, rng) else { return Vec::new() };
    if n == 1 {
        // A single destination is the default: no sort (sorting a 4096-endpoint pool to take its head
        // cost ~200 µs of a decision, BENCHMARKS.md).
        return scored.get(chosen).map(|s| s.index).into_iter().collect();
    }
    // The primary to the front (no index that could be out of range: `..=chosen` is checked).
    let Some(head) = scored.get_mut(..=chosen) else { return Vec::new() };
    head.rotate_right(1);
    let Some((first, rest)) = scored.split_first_mut() else { return Vec::new() };
    rng.shuffle(rest);
    rest.sort_by(|a, b| b.score.total_cmp(&a.score));
    core::iter::once(first.index).chain(rest.iter().take(n.saturating_sub(1)).map(|s| s.index)).collect()
}

/// Test input: candidates `0..scores.len()` with these total scores.
#[cfg(test)]
pub(crate) fn scored(scores: &[f64]) -> Vec<ScoredEndpoint> {
    scores.iter().enumerate().map(|(index, &score)| ScoredEndpoint { index, score }).collect()
}
