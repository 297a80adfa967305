//! Pickers: turn the scored candidates of a profile into the primary target plus fallbacks.
//!
//! All take GIE's `maxNumOfEndpoints` (default 1); the pipeline's own cap is applied on top.

pub mod max_score_picker;
pub mod near_best_picker;
pub mod random_picker;
pub mod weighted_random_picker;

use crate::config::params::positive_count;
use crate::rng::Rng;
use crate::scheduling::ScoredEndpoint;
use alloc::vec::Vec;
use serde::Deserialize;

/// Parameters shared by every picker (GIE's `PickerParameters`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PickerParams {
    #[serde(deserialize_with = "positive_count")]
    pub max_num_of_endpoints: usize,
}

impl Default for PickerParams {
    fn default() -> PickerParams {
        PickerParams { max_num_of_endpoints: 1 }
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
