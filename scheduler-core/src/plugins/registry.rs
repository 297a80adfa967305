//! Configuration `type` name → plugin factory. The one place a built-in plugin is made known.
//!
//! Adding a plugin is one line in `BUILTIN` (`Entry::of::<TheNewPlugin>()`, see
//! [`PluginFactory`]); tests and embedders extend a `Registry` with their own types the same way.

use super::detectors::concurrency_detector::ConcurrencyDetector;
use super::detectors::prefill_backlog_detector::PrefillBacklogDetector;
use super::detectors::utilization_detector::UtilizationDetector;
use super::filters::decode_filter::DecodeFilter;
use super::filters::least_kv_cache_filter::LeastKvCacheFilter;
use super::filters::least_queue_filter::LeastQueueFilter;
use super::filters::lora_affinity_filter::LoraAffinityFilter;
use super::filters::low_queue_filter::LowQueueFilter;
use super::filters::prefill_filter::PrefillFilter;
use super::filters::prefix_cache_affinity_filter::PrefixCacheAffinityFilter;
use super::pickers::max_score_picker::MaxScorePicker;
use super::pickers::near_best_picker::NearBestPicker;
use super::pickers::random_picker::RandomPicker;
use super::pickers::weighted_random_picker::WeightedRandomPicker;
use super::profile_handlers::pd_profile_handler::PdProfileHandler;
use super::profile_handlers::single_profile_handler::SingleProfileHandler;
use super::scorers::active_request_scorer::ActiveRequestScorer;
use super::scorers::inflight_aware_queue_scorer::InflightAwareQueueScorer;
use super::scorers::kv_cache_utilization_scorer::KvCacheUtilizationScorer;
use super::scorers::load_aware_scorer::LoadAwareScorer;
use super::scorers::lora_affinity_scorer::LoraAffinityScorer;
use super::scorers::lora_slot_scorer::LoraSlotScorer;
use super::scorers::prefill_backlog_scorer::PrefillBacklogScorer;
use super::scorers::prefix_cache_scorer::PrefixCacheScorer;
use super::scorers::prefix_owner_scorer::PrefixOwnerScorer;
use super::scorers::queue_scorer::QueueScorer;
use super::scorers::running_requests_size_scorer::RunningRequestsSizeScorer;
use super::scorers::session_affinity_scorer::SessionAffinityScorer;
use super::scorers::token_load_scorer::TokenLoadScorer;
use super::upstream;
use crate::config::params::{parse_params, ParamError};
use crate::config::ConfigError;
use crate::scheduling::{BuildContext, Plugin, PluginFactory, SharedState};
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use serde_json::Value;

const BUILTIN: &[Entry] = &[
    // Scorers
    Entry::of::<QueueScorer>(),
    Entry::of::<KvCacheUtilizationScorer>(),
    Entry::of::<LoraAffinityScorer>(),
    Entry::of::<PrefixCacheScorer>(),
    Entry::of::<RunningRequestsSizeScorer>(),
    Entry::of::<TokenLoadScorer>(),
    Entry::of::<ActiveRequestScorer>(),
    Entry::of::<LoadAwareScorer>(),
    Entry::of::<SessionAffinityScorer>(),
    Entry::of::<InflightAwareQueueScorer>(),
    Entry::of::<LoraSlotScorer>(),
    Entry::of::<PrefixOwnerScorer>(),
    Entry::of::<PrefillBacklogScorer>(),
    // Filters and detectors
    Entry::of::<PrefixCacheAffinityFilter>(),
    Entry::of::<LeastQueueFilter>(),
    Entry::of::<LeastKvCacheFilter>(),
    Entry::of::<LowQueueFilter>(),
    Entry::of::<LoraAffinityFilter>(),
    Entry::of::<UtilizationDetector>(),
    Entry::of::<ConcurrencyDetector>(),
    Entry::of::<PrefillBacklogDetector>(),
    // Pickers, profile handlers, role filters
    Entry::of::<MaxScorePicker>(),
    Entry::of::<RandomPicker>(),
    Entry::of::<WeightedRandomPicker>(),
    Entry::of::<NearBestPicker>(),
    Entry::of::<SingleProfileHandler>(),
    Entry::of::<PdProfileHandler>(),
    Entry::of::<PrefillFilter>(),
    Entry::of::<DecodeFilter>(),
];

type BuildFn = fn(&Value, &mut BuildContext<'_>) -> Result<Box<dyn Plugin>, ParamError>;

/// One plugin type a scheduler can be built from.
#[derive(Clone, Copy)]
pub struct Entry {
    type_name: &'static str,
    producer: bool,
    reads_producers: bool,
    build: BuildFn,
}

impl Entry {
    /// Plugin type `F`, under its own type name.
    pub const fn of<F: PluginFactory>() -> Entry {
        Entry::named::<F>(F::TYPE)
    }

    /// Plugin type `F` under another type name: a stand-in for a built-in type (tests, or an embedder's
    /// replacement).
    pub const fn named<F: PluginFactory>(type_name: &'static str) -> Entry {
        Entry {
            type_name,
            producer: F::PRODUCER,
            reads_producers: F::READS_PRODUCERS,
            build: parse_and_build::<F>,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Whether plugins of this type publish shared state (and so are built first).
    pub fn is_producer(&self) -> bool {
        self.producer
    }

    /// When plugins of this type are built: 0 producers, 1 producers that read other producers'
    /// state, 2 the rest.
    pub fn build_stage(&self) -> u8 {
        match (self.producer, self.reads_producers) {
            (true, false) => 0,
            (true, true) => 1,
            (false, _) => 2,
        }
    }

    /// Parses `parameters` (`Value::Null` when absent) and builds the plugin.
    pub fn build(
        &self,
        parameters: &Value,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Box<dyn Plugin>, ParamError> {
        (self.build)(parameters, ctx)
    }
}

/// Parameters are parsed here and checked by the factory's `build`, once, for every plugin type.
fn parse_and_build<F: PluginFactory>(
    parameters: &Value,
    ctx: &mut BuildContext<'_>,
) -> Result<Box<dyn Plugin>, ParamError> {
    let params: F::Params = parse_params(parameters)?;
    Ok(Box::new(F::build(params, ctx)?))
}

/// The plugin types a scheduler can be built from.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::builtin()
    }
}

impl Registry {
    /// Every plugin shipped with wasm-epp.
    pub fn builtin() -> Registry {
        let mut entries = BUILTIN.to_vec();
        entries.extend(upstream::entries());
        Registry { entries }
    }

    /// No types at all: for embedders that want to choose every plugin themselves.
    pub fn empty() -> Registry {
        Registry { entries: Vec::new() }
    }

    /// Adds plugin type `F` (replacing a type of the same name).
    pub fn with<F: PluginFactory>(self) -> Registry {
        self.with_entry(Entry::of::<F>())
    }

    /// Adds (or replaces) a type.
    pub fn with_entry(mut self, entry: Entry) -> Registry {
        self.entries.retain(|e| e.type_name != entry.type_name);
        self.entries.push(entry);
        self
    }

    pub fn get(&self, type_name: &str) -> Option<Entry> {
        self.entries.iter().find(|e| e.type_name == type_name).copied()
    }

    /// Known type names, sorted (for error messages).
    pub fn types(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.entries.iter().map(|e| e.type_name).collect();
        v.sort_unstable();
        v
    }

    /// The entry for `type_name`, or the error for `path` (`plugins[2].type`) naming the known types.
    pub fn entry_at(&self, path: &str, type_name: &str) -> Result<Entry, ConfigError> {
        self.get(type_name).ok_or_else(|| match upstream::refused(type_name) {
            Some(why) => ConfigError::new(
                path,
                "a plugin type wasm-epp can run",
                Some(format!("{type_name:?}, which it cannot: {why}")),
            ),
            None => ConfigError::new(
                path,
                format!("a known plugin type ({})", self.types().join(", ")),
                Some(format!("{type_name:?}")),
            ),
        })
    }

    /// Builds one plugin on its own, named after its type and sharing nothing: for tools that drive a
    /// plugin directly. Errors name `type` or `parameters.<field>`.
    pub fn build(&self, type_name: &str, parameters: &Value) -> Result<Box<dyn Plugin>, ConfigError> {
        let entry = self.entry_at("type", type_name)?;
        let mut shared = SharedState::default();
        entry
            .build(parameters, &mut BuildContext::new(type_name, &mut shared))
            .map_err(|e| e.at("parameters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_PICKER, DEFAULT_PROFILE_HANDLER, DEFAULT_SATURATION_DETECTOR};
    use alloc::string::ToString;

    #[test]
    fn builtin_types_build_with_defaults() {
        let r = Registry::builtin();
        for t in r.types() {
            let plugin = match r.build(t, &Value::Null) {
                Ok(p) => p,
                // A type whose llm-d counterpart requires a parameter (e.g. utilization-filter's conditions).
                Err(e) if e.to_string().contains("(this parameter is required)") => continue,
                Err(e) => panic!("{t}: {e}"),
            };
            assert_eq!(plugin.type_name(), t);
        }
        assert_eq!(r.types().len(), BUILTIN.len() + upstream::entries().count(), "one entry per type");
        for t in [DEFAULT_PICKER, DEFAULT_PROFILE_HANDLER, DEFAULT_SATURATION_DETECTOR] {
            assert!(r.get(t).is_some(), "the system default {t} is built in");
        }
        assert!(r.get("no-such-plugin").is_none());
    }

    #[test]
    fn building_one_plugin_names_the_bad_field() {
        let r = Registry::builtin();
        let err = |t: &str, v: Value| r.build(t, &v).err().map(|e| e.to_string());
        assert_eq!(
            err("low-queue-filter", serde_json::json!({"threshold": -1})).as_deref(),
            Some("parameters.threshold: expected an integer >= 0")
        );
        assert!(err("no-such-plugin", Value::Null)
            .is_some_and(|e| e.starts_with("type: expected a known plugin type")));
    }
}
