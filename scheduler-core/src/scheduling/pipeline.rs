//! The scheduler: the per-request profile loop over plugins built from an `EndpointPickerConfig`
//! (built step by step in `pipeline/build.rs`, which applies llm-d's system defaults).

mod build;

use super::factory::SharedState;
use super::framework::{CycleState, Plugin, ProfileRunResult, SchedulingContext};
use super::profile::{Profile, Scratch};
use crate::config::{ConfigError, ConfigWarning, EndpointPickerConfig};
use crate::plugins::registry::Registry;
use crate::prefix::{PrefixMatch, PREFIX_MATCH_STATE_KEY};
use crate::rng::Rng;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Why no destination could be chosen (the caller answers 429, as GIE does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    /// The caller passed no candidates.
    NoCandidates,
    /// The destination profile ran and every candidate was filtered out.
    AllFiltered { profile: String },
    /// The profile handler chose no destination profile (misconfiguration caught at run time).
    NoDestinationProfile,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::NoCandidates => f.write_str("no candidate endpoints"),
            ScheduleError::AllFiltered { profile } => {
                write!(f, "every candidate endpoint was filtered out by profile {profile:?}")
            }
            ScheduleError::NoDestinationProfile => {
                f.write_str("the profile handler selected no destination profile")
            }
        }
    }
}

/// The outcome of one scheduling cycle. Indices point into `pool.endpoints`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedulingResult {
    /// Every profile that ran, in order.
    pub profiles: Vec<ProfileRunResult>,
    /// Destination first, then fallbacks in order.
    pub targets: Vec<usize>,
    /// Disaggregated prefill endpoint (`x-prefiller-host-port`), when one was chosen.
    pub prefill: Option<usize>,
    /// The request's prefix block hashes (empty without a prefix plugin or for short prompts). They were
    /// recorded on the destination; other proxy workers learn the same with [`Scheduler::learn_prefix`].
    pub prefix_hashes: Vec<u64>,
    /// Estimated prompt tokens the destination already holds, by the prefix index a plugin consulted
    /// when deciding (0 without one): its prefill is the prompt less these.
    pub cached_tokens: u64,
}

impl SchedulingResult {
    pub fn destination(&self) -> Option<usize> {
        self.targets.first().copied()
    }
}

/// Sizes of a scheduler's prefix indexes ([`Scheduler::prefix_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixUsage {
    /// (hash, endpoint) entries: the sum of the per-endpoint LRU lengths.
    pub entries: usize,
    /// The sum of the per-endpoint LRU capacities: what `entries` can reach.
    pub capacity: usize,
    /// Distinct block hashes held (at most `entries`).
    pub hashes: usize,
    /// Endpoints with an LRU.
    pub endpoints: usize,
}

/// A configured Filter → Score → Pick engine. Holds per-request scratch buffers, hence `&mut self`.
pub struct Scheduler {
    plugins: Vec<Box<dyn Plugin>>,
    plugin_names: Vec<String>,
    shared: SharedState,
    pub(crate) profiles: Vec<Profile>,
    profile_names: Vec<String>,
    handler: usize,
    pub(crate) detector: Option<usize>,
    max_endpoints: usize,
    /// At least this many targets when the candidates allow (see [`Scheduler::set_max_endpoints`]).
    fill_to: usize,
    feature_gates: Vec<(String, bool)>,
    warnings: Vec<ConfigWarning>,
    scratch: Scratch,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("plugins", &self.plugin_names)
            .field("profiles", &self.profiles)
            .field("handler", &self.plugin_names.get(self.handler))
            .field("detector", &self.detector.and_then(|d| self.plugin_names.get(d)))
            .finish()
    }
}

impl Scheduler {
    /// Builds from a parsed configuration with the built-in plugins.
    pub fn from_config(cfg: &EndpointPickerConfig) -> Result<Scheduler, ConfigError> {
        Scheduler::from_config_with(cfg, &Registry::builtin())
    }

    /// Parses and builds; blank text gives the GIE default.
    pub fn from_json(text: &str) -> Result<Scheduler, ConfigError> {
        Scheduler::from_config(&EndpointPickerConfig::from_json(text)?)
    }

    /// GIE's default profile. Fails while one of its plugins is not registered.
    pub fn gie_default() -> Result<Scheduler, ConfigError> {
        Scheduler::from_config(&EndpointPickerConfig::gie_default())
    }

    /// Builds from a parsed configuration with the plugin types of `registry` (the steps are in
    /// `pipeline/build.rs`).
    pub fn from_config_with(
        cfg: &EndpointPickerConfig,
        registry: &Registry,
    ) -> Result<Scheduler, ConfigError> {
        build::scheduler(cfg, registry)
    }

    /// Caps destination + fallbacks (e.g. 1 for gateways that accept a single address). Pickers'
    /// own `maxNumOfEndpoints` still applies.
    /// How many endpoints the gateway sends (primary, then fallbacks): at most `max`, and as many as
    /// that when the pool has them, even if the picker's own `maxNumOfEndpoints` asks for fewer (the next
    /// best by score fill in), so `routing.maxEndpoints` alone is enough to get fallbacks.
    pub fn set_max_endpoints(&mut self, max: usize) {
        self.max_endpoints = max.max(1);
        self.fill_to = max.max(1);
    }

    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    pub fn feature_gates(&self) -> &[(String, bool)] {
        &self.feature_gates
    }

    pub fn profile_names(&self) -> &[String] {
        &self.profile_names
    }

    /// Plugin names, configuration order first, then those added by default.
    pub fn plugin_names(&self) -> &[String] {
        &self.plugin_names
    }

    pub fn plugin(&self, name: &str) -> Option<&dyn Plugin> {
        let i = self.plugin_names.iter().position(|n| n == name)?;
        self.plugins.get(i).map(|p| p.as_ref())
    }

    /// The state the plugins share (the prefix indexes), by the name of the plugin that owns it.
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// Name of the saturation detector plugin in use, if any.
    pub fn detector_name(&self) -> Option<&str> {
        self.plugin_names.get(self.detector?).map(|s| s.as_str())
    }

    /// Pool saturation per the configured detector (`None`: no detector, never saturated).
    pub fn saturation(&self, ctx: &SchedulingContext<'_>) -> Option<f64> {
        let d = self.plugins.get(self.detector?)?.as_saturation_detector()?;
        Some(d.saturation(ctx))
    }

    /// Runs the profile handler loop over `candidates` (indices into `ctx.pool.endpoints`), then lets
    /// every plugin learn from the result (`pre_request`).
    pub fn schedule(
        &mut self,
        ctx: &SchedulingContext<'_>,
        candidates: &[usize],
        rng: &mut Rng,
    ) -> Result<SchedulingResult, ScheduleError> {
        if candidates.is_empty() {
            return Err(ScheduleError::NoCandidates);
        }
        let Scheduler { plugins, profiles, profile_names, handler, max_endpoints, fill_to, scratch, .. } =
            self;
        let handler = plugins
            .get(*handler)
            .and_then(|p| p.as_profile_handler())
            .ok_or(ScheduleError::NoDestinationProfile)?;
        let mut state = CycleState::default();
        let mut done: Vec<ProfileRunResult> = Vec::with_capacity(2);
        // Each profile runs at most once, so a handler that keeps asking cannot loop forever.
        for _ in 0..=profiles.len() {
            let next = handler.pick_profiles(ctx, &mut state, profile_names, &done);
            let mut ran = false;
            for name in next {
                if done.iter().any(|r| r.profile == name) {
                    continue;
                }
                let Some(profile) = profiles.iter().find(|p| p.name == name) else { continue };
                let result = profile.run(
                    plugins,
                    ctx,
                    &mut state,
                    candidates,
                    (*fill_to, *max_endpoints),
                    rng,
                    scratch,
                );
                done.push(result);
                ran = true;
            }
            if !ran {
                break;
            }
        }

        let primary = handler.primary_profile(&done).ok_or(ScheduleError::NoDestinationProfile)?;
        if primary.targets.is_empty() {
            return Err(ScheduleError::AllFiltered { profile: primary.profile.clone() });
        }
        let targets = primary.targets.clone();
        let prefill = handler.prefill_profile(&done).and_then(|r| r.targets.first().copied());

        for p in plugins.iter_mut() {
            p.pre_request(ctx, &state, &done);
        }
        let (prefix_hashes, cached_tokens) = match state.take::<PrefixMatch>(PREFIX_MATCH_STATE_KEY) {
            Some(m) => {
                let cached = targets.first().map_or(0, |&t| m.matched_tokens(t));
                (m.hashes, cached)
            }
            None => (Vec::new(), 0),
        };
        Ok(SchedulingResult { profiles: done, targets, prefill, prefix_hashes, cached_tokens })
    }

    /// Records that `address` now holds the KV blocks `hashes`, as if this scheduler had routed there:
    /// how a proxy worker learns the picks other workers made (see the filter's prefix sync). Unknown
    /// addresses are recorded too (the endpoint may be newer than this worker's snapshot).
    pub fn learn_prefix(&mut self, pool: &crate::model::PoolSnapshot, address: &str, hashes: &[u64]) {
        if hashes.is_empty() {
            return;
        }
        let endpoint = pool.find(address);
        for handle in self.shared.prefix_indexes() {
            let Some(config) = handle.config() else { continue };
            let capacity = match endpoint {
                Some(e) => config.capacity_for(e),
                None => config.lru_capacity_per_server,
            };
            if let Some(mut index) = handle.index_mut() {
                index.record(address, hashes, capacity);
            };
        }
    }

    /// Forgets the prefix evidence of endpoints that left `pool`. Each endpoint's LRU is capped, but
    /// the set of endpoints is not: without this, every pod that ever served (a new address per restart
    /// under Kubernetes) would keep up to its cap of hashes for the life of the process. Cheap when
    /// nothing left: an index that knows no more endpoints than the pool has is not walked, so the
    /// index holds at most as many endpoints as the pool once this ran (an address recorded before
    /// this worker's snapshot listed it stays until it is counted over).
    pub fn retain_prefix_endpoints(&mut self, pool: &crate::model::PoolSnapshot) {
        for handle in self.shared.prefix_indexes() {
            if let Some(mut index) = handle.index_mut() {
                if index.endpoint_count() > pool.endpoints.len() {
                    index.retain_endpoints(|a| pool.find(a).is_some());
                }
            }
        }
    }

    /// What the prefix indexes hold, summed over them (consumers share their producer's): for memory
    /// accounting. O(endpoints), no walk over the hashes.
    pub fn prefix_usage(&self) -> PrefixUsage {
        let mut u = PrefixUsage::default();
        for handle in self.shared.prefix_indexes() {
            let Some(index) = handle.index() else { continue };
            u.hashes += index.len();
            u.endpoints += index.endpoint_count();
            for address in index.endpoints() {
                u.entries += index.endpoint_len(address).unwrap_or(0);
                u.capacity += index.endpoint_capacity(address).unwrap_or(0);
            }
        }
        u
    }

    /// Lays out every prefix index's block-hash table by `seed` (default: a fixed seed). Proxies pass a
    /// secret random seed once per process or VM, so clients cannot craft prompts whose block hashes
    /// collide in the table; decisions are the same whatever the seed.
    pub fn set_prefix_table_seed(&mut self, seed: u64) {
        for handle in self.shared.prefix_indexes() {
            if let Some(mut index) = handle.index_mut() {
                index.set_table_seed(seed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
