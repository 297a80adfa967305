//! `lora-affinity-filter` (GIE legacy): keeps endpoints that already have the requested adapter
//! (running or queued), except for a `1 − threshold` share of requests sent to endpoints with room to
//! load it, so an adapter spreads to more servers as its traffic grows.
//!
//! GIE draws the coin from a clock-seeded RNG. Filters here get no RNG (the core is deterministic), so
//! the coin is a hash of the request id and model: the same request always lands in the same group
//! (retries included), different request ids spread like a fair coin. Requests without an id share
//! one coin per model.

use crate::config::params::ParamError;
use crate::plugins::candidates::{has_lora_room, metrics, none_measured};
use crate::scheduling::{
    BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext, SchedulingRequest,
};
use alloc::vec::Vec;
use serde::Deserialize;
use xxhash_rust::xxh64::xxh64;

pub const TYPE: &str = "lora-affinity-filter";

/// GIE's `DefaultLoraAffinityThreshold`.
pub const DEFAULT_THRESHOLD: f64 = 0.999;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Probability of keeping the affinity group when both groups are non-empty.
    pub threshold: f64,
}

impl Default for Params {
    fn default() -> Params {
        Params { threshold: DEFAULT_THRESHOLD }
    }
}

/// Splits candidates into "adapter active or waiting" and "room to load it" (`has_lora_room`); keeps
/// the first group with probability `threshold` when both exist, else whichever exists, else nothing
/// (as in GIE, e.g. a base-model request on servers that report no `max_lora`). Endpoints without
/// metrics belong to neither group, unless no candidate has metrics: then all are kept.
#[derive(Clone, Debug)]
pub struct LoraAffinityFilter {
    threshold: f64,
}

impl PluginFactory for LoraAffinityFilter {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<LoraAffinityFilter, ParamError> {
        if !(0.0..=1.0).contains(&params.threshold) {
            return Err(ParamError::invalid("threshold", "a probability in [0, 1]"));
        }
        Ok(LoraAffinityFilter { threshold: params.threshold })
    }
}

/// Uniform in [0, 1), fixed for a given (request id, model).
fn coin(request: &SchedulingRequest<'_>) -> f64 {
    // Chaining the id's hash in as the seed keeps ("ab", "c") and ("a", "bc") apart.
    let h = xxh64(request.model.as_bytes(), xxh64(request.request_id.as_bytes(), 0));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Plugin for LoraAffinityFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}

impl Filter for LoraAffinityFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        if none_measured(ctx, candidates) {
            return;
        }
        let adapter = ctx.request.model;
        let has_affinity = |i: usize| {
            metrics(ctx, i).is_some_and(|m| m.has_active_lora(adapter) || m.has_waiting_lora(adapter))
        };
        let has_room = |i: usize| metrics(ctx, i).is_some_and(|m| !has_affinity(i) && has_lora_room(m));
        let any_affinity = candidates.iter().any(|&i| has_affinity(i));
        let any_room = candidates.iter().any(|&i| has_room(i));
        let keep_affinity = match (any_affinity, any_room) {
            (true, true) => coin(ctx.request) < self.threshold,
            (affinity, _) => affinity,
        };
        if keep_affinity {
            candidates.retain(|&i| has_affinity(i));
        } else {
            candidates.retain(|&i| has_room(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    fn request<'a>(id: &'a str, model: &'a str) -> SchedulingRequest<'a> {
        SchedulingRequest { request_id: id, model, ..SchedulingRequest::default() }
    }

    fn mixed_pool() -> crate::model::PoolSnapshot {
        pool(vec![
            lora(ep(1, 0, 0, 0.0), &["sql"], &[], Some(1)),    // active
            lora(ep(2, 0, 0, 0.0), &[], &[], Some(4)),         // room
            lora(ep(3, 0, 0, 0.0), &["x"], &["sql"], Some(2)), // waiting (full)
            lora(ep(4, 0, 0, 0.0), &["x", "y"], &[], Some(2)), // full, no adapter
            bare(5),
        ])
    }

    #[test]
    fn affinity_group_is_active_or_waiting() {
        let f = built::<LoraAffinityFilter>(r#"{"threshold": 1}"#);
        assert_eq!(kept(&f, &mixed_pool(), &request("r1", "sql")), vec![0, 2]);
    }

    #[test]
    fn room_group_when_the_coin_says_so_or_no_affinity_exists() {
        let f = built::<LoraAffinityFilter>(r#"{"threshold": 0}"#);
        assert_eq!(kept(&f, &mixed_pool(), &request("r1", "sql")), vec![1]);
        // Nobody has "new": endpoints with room, whatever the threshold.
        let f = built::<LoraAffinityFilter>("{}");
        assert_eq!(kept(&f, &mixed_pool(), &request("r1", "new")), vec![1]);
    }

    #[test]
    fn nothing_fits_nothing_kept_unless_nothing_is_measured() {
        let f = built::<LoraAffinityFilter>("{}");
        let p = pool(vec![lora(ep(1, 0, 0, 0.0), &["x"], &[], Some(1)), bare(2)]);
        assert!(kept(&f, &p, &request("r", "sql")).is_empty());
        let p = pool(vec![bare(1), bare(2)]);
        assert_eq!(kept(&f, &p, &request("r", "sql")), vec![0, 1]);
    }

    #[test]
    fn coin_is_deterministic_and_roughly_fair() {
        let f = built::<LoraAffinityFilter>(r#"{"threshold": 0.5}"#);
        let p = mixed_pool();
        let ids: Vec<String> = (0..2000).map(|n| format!("req-{n}")).collect();
        let affinity = ids.iter().filter(|id| kept(&f, &p, &request(id, "sql")) == vec![0, 2]).count();
        assert!((850..1150).contains(&affinity), "{affinity} of 2000 kept affinity at p = 0.5");
        for id in ids.iter().take(50) {
            assert_eq!(kept(&f, &p, &request(id, "sql")), kept(&f, &p, &request(id, "sql")));
        }
        // At the default 0.999 almost every request keeps affinity.
        let f = built::<LoraAffinityFilter>("{}");
        let affinity = ids.iter().filter(|id| kept(&f, &p, &request(id, "sql")) == vec![0, 2]).count();
        assert!(affinity >= 1990, "{affinity}");
    }

    #[test]
    fn threshold_must_be_a_probability() {
        assert_eq!(build_err::<LoraAffinityFilter>(r#"{"threshold": 1.01}"#).field, "threshold");
        assert_eq!(build_err::<LoraAffinityFilter>(r#"{"threshold": -0.1}"#).field, "threshold");
        assert!(try_build::<LoraAffinityFilter>(r#"{"threshold": 0}"#).is_ok());
    }
}
