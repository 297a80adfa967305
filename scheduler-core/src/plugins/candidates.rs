//! Reading candidates (indices into `ctx.pool.endpoints`) the same way in every plugin, including the
//! two shared rules: GIE's min-max scaling, and what a filter does when no candidate has metrics.
//!
//! An index outside the pool (a pipeline bug, never expected) reads as an endpoint without metrics:
//! scorers give it their lowest score and filters drop it, so a bad index can never win a pick.

use crate::model::{EndpointState, Metrics};
use crate::scheduling::SchedulingContext;

/// The endpoint a candidate index refers to.
pub fn state<'a>(ctx: &SchedulingContext<'a>, index: usize) -> Option<&'a EndpointState> {
    ctx.pool.endpoints.get(index)
}

/// The last scraped metrics of a candidate, if there are any.
pub fn metrics<'a>(ctx: &SchedulingContext<'a>, index: usize) -> Option<&'a Metrics> {
    state(ctx, index).and_then(|s| s.metrics.as_ref())
}

/// True when not one candidate has metrics (typically right after start, before the first scrape).
///
/// Metric-based filters then keep every candidate instead of failing the request: with nothing
/// measured there is nothing to prefer, and the house rule is to fail open on missing metrics.
pub fn none_measured(ctx: &SchedulingContext<'_>, candidates: &[usize]) -> bool {
    candidates.iter().all(|&i| metrics(ctx, i).is_none())
}

/// GIE's min-max scaling where a lower value is better: `(max − v) / (max − min)` over the candidates
/// that have a value, 1.0 for all of them when their values are equal.
///
/// A candidate without a value (no metrics) scores 0.0, as if it had the worst value, without
/// stretching the range for the others; when no candidate has a value they all tie at 1.0.
pub fn score_lower_is_better(candidates: &[usize], scores: &mut [f64], value: impl Fn(usize) -> Option<u64>) {
    let mut range: Option<(u64, u64)> = None;
    for &i in candidates {
        if let Some(v) = value(i) {
            range = Some(match range {
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
                None => (v, v),
            });
        }
    }
    for (slot, &i) in scores.iter_mut().zip(candidates) {
        *slot = match (range, value(i)) {
            (None, _) => 1.0,
            (Some(_), None) => 0.0,
            (Some((lo, hi)), Some(v)) if hi > lo => (hi - v) as f64 / (hi - lo) as f64,
            (Some(_), Some(_)) => 1.0,
        };
    }
}

/// Whether a server can load one more LoRA adapter: `running + waiting adapters < max_lora`.
///
/// A server that does not report `max_lora` has no known room (GIE reads it as 0), so only servers
/// that advertise LoRA capacity attract new adapters.
pub fn has_lora_room(m: &Metrics) -> bool {
    let loaded = m.running_loras.len().saturating_add(m.waiting_loras.len());
    let max = m.max_lora.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    loaded < max
}
