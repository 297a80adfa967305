//! Configuration `type` name → plugin constructor. The one place a new plugin is made known.
//!
//! Adding a plugin is one line in `BUILTIN`; tests and embedders can extend a `Registry` with their own.

use super::detectors::{concurrency_detector, utilization_detector};
use super::filters::prefix_cache_affinity_filter::{
    PrefixCacheAffinityFilter, PrefixCacheAffinityFilterParams, PREFIX_CACHE_AFFINITY_FILTER_TYPE,
};
use super::filters::{
    decode_filter, least_kv_cache_filter, least_queue_filter, lora_affinity_filter, low_queue_filter,
    prefill_filter,
};
use super::pickers::{max_score_picker, random_picker, weighted_random_picker};
use super::profile_handlers::{pd_profile_handler, single_profile_handler};
use super::scorers::prefix_cache_scorer::{
    PrefixCacheScorer, PrefixCacheScorerParams, PREFIX_CACHE_SCORER_TYPE,
};
use super::scorers::{
    active_request_scorer, inflight_aware_queue_scorer, kv_cache_utilization_scorer, load_aware_scorer,
    lora_affinity_scorer, lora_slot_scorer, queue_scorer, running_requests_size_scorer,
    session_affinity_scorer, token_load_scorer,
};
use crate::config::params::{parse_params, ParamError};
use crate::scheduling::Plugin;
use alloc::boxed::Box;
use alloc::vec::Vec;
use serde_json::Value;

/// Builds a plugin from its `parameters` (`Value::Null` when absent).
pub type Constructor = fn(&Value) -> Result<Box<dyn Plugin>, ParamError>;

/// `(TYPE, constructor)` for a plugin module following the convention: `Params` (serde) with
/// `validate()`, and `new(Params)`.
macro_rules! validated {
    ($module:ident :: $plugin:ident) => {{
        fn build(value: &Value) -> Result<Box<dyn Plugin>, ParamError> {
            let params: $module::Params = parse_params(value)?;
            params.validate()?;
            Ok(Box::new($module::$plugin::new(params)))
        }
        ($module::TYPE, build as Constructor)
    }};
}

fn build_prefix_cache_scorer(value: &Value) -> Result<Box<dyn Plugin>, ParamError> {
    let params: PrefixCacheScorerParams = parse_params(value)?;
    Ok(Box::new(PrefixCacheScorer::new(&params)))
}

/// Built with its own index; the scheduler's wiring step switches it to its prefix scorer's index.
fn build_prefix_cache_affinity_filter(value: &Value) -> Result<Box<dyn Plugin>, ParamError> {
    let params: PrefixCacheAffinityFilterParams = parse_params(value)?;
    let filter = PrefixCacheAffinityFilter::standalone(params)
        .map_err(|e| ParamError::new(e.field, e.expected, Some(e.got)))?;
    Ok(Box::new(filter))
}

const BUILTIN: &[(&str, Constructor)] = &[
    // Scorers
    validated!(queue_scorer::QueueScorer),
    validated!(kv_cache_utilization_scorer::KvCacheUtilizationScorer),
    validated!(lora_affinity_scorer::LoraAffinityScorer),
    (PREFIX_CACHE_SCORER_TYPE, build_prefix_cache_scorer),
    validated!(running_requests_size_scorer::RunningRequestsSizeScorer),
    validated!(token_load_scorer::TokenLoadScorer),
    validated!(active_request_scorer::ActiveRequestScorer),
    validated!(load_aware_scorer::LoadAwareScorer),
    validated!(session_affinity_scorer::SessionAffinityScorer),
    validated!(inflight_aware_queue_scorer::InflightAwareQueueScorer),
    validated!(lora_slot_scorer::LoraSlotScorer),
    // Filters and detectors
    (PREFIX_CACHE_AFFINITY_FILTER_TYPE, build_prefix_cache_affinity_filter),
    validated!(least_queue_filter::LeastQueueFilter),
    validated!(least_kv_cache_filter::LeastKvCacheFilter),
    validated!(low_queue_filter::LowQueueFilter),
    validated!(lora_affinity_filter::LoraAffinityFilter),
    validated!(utilization_detector::UtilizationDetector),
    validated!(concurrency_detector::ConcurrencyDetector),
    // Pickers, profile handlers, role filters
    (max_score_picker::TYPE, max_score_picker::MaxScorePicker::build),
    (random_picker::TYPE, random_picker::RandomPicker::build),
    (weighted_random_picker::TYPE, weighted_random_picker::WeightedRandomPicker::build),
    (single_profile_handler::TYPE, single_profile_handler::SingleProfileHandler::build),
    (pd_profile_handler::TYPE, pd_profile_handler::PdProfileHandler::build),
    (prefill_filter::TYPE, prefill_filter::PrefillFilter::build),
    (decode_filter::TYPE, decode_filter::DecodeFilter::build),
];

/// The plugin types a scheduler can be built from.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<(&'static str, Constructor)>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::builtin()
    }
}

impl Registry {
    /// Every plugin shipped with wasm-epp.
    pub fn builtin() -> Registry {
        Registry { entries: BUILTIN.to_vec() }
    }

    /// No types at all: for embedders that want to choose every plugin themselves.
    pub fn empty() -> Registry {
        Registry { entries: Vec::new() }
    }

    /// Adds (or replaces) a type.
    pub fn with(mut self, type_name: &'static str, constructor: Constructor) -> Registry {
        self.entries.retain(|(t, _)| *t != type_name);
        self.entries.push((type_name, constructor));
        self
    }

    pub fn get(&self, type_name: &str) -> Option<Constructor> {
        self.entries.iter().find(|(t, _)| *t == type_name).map(|(_, c)| *c)
    }

    /// Known type names, sorted (for error messages).
    pub fn types(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.entries.iter().map(|(t, _)| *t).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_types_build_with_defaults() {
        let r = Registry::builtin();
        for t in r.types() {
            let ctor = r.get(t).unwrap();
            let plugin = ctor(&Value::Null).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(plugin.type_name(), t);
        }
        assert!(r.get("no-such-plugin").is_none());
    }
}
