//! The scheduler: plugins built from an `EndpointPickerConfig`, and the per-request profile loop.
//!
//! Building applies llm-d's system defaults (a picker in every profile, a single-profile handler for a
//! single profile, the utilization detector) so that what runs is exactly what the config implies.

use super::factory::{BuildContext, SharedState};
use super::framework::{CycleState, Plugin, ProfileRunResult, SchedulingContext};
use super::profile::{Profile, Scratch};
use crate::config::{
    ConfigError, ConfigWarning, EndpointPickerConfig, DEFAULT_PICKER, DEFAULT_PROFILE_HANDLER,
    DEFAULT_SATURATION_DETECTOR, DEFAULT_WEIGHT,
};
use crate::plugins::registry::Registry;
use crate::prefix::{PrefixMatch, PREFIX_MATCH_STATE_KEY};
use crate::rng::Rng;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde_json::Value;

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
}

impl SchedulingResult {
    pub fn destination(&self) -> Option<usize> {
        self.targets.first().copied()
    }
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

/// A profile's plugin reference resolved to (plugin index, weight, config path of the reference).
type ResolvedRef = (usize, Option<f64>, String);

/// Human word for what a plugin is, for error messages.
fn roles(p: &dyn Plugin) -> String {
    let mut r: Vec<&str> = Vec::new();
    if p.as_filter().is_some() {
        r.push("filter");
    }
    if p.as_scorer().is_some() {
        r.push("scorer");
    }
    if p.as_picker().is_some() {
        r.push("picker");
    }
    if p.as_profile_handler().is_some() {
        r.push("profile handler");
    }
    if p.as_saturation_detector().is_some() {
        r.push("saturation detector");
    }
    if r.is_empty() {
        r.push("plugin with no scheduling role");
    }
    r.join(" and ")
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

    pub fn from_config_with(
        cfg: &EndpointPickerConfig,
        registry: &Registry,
    ) -> Result<Scheduler, ConfigError> {
        let mut warnings = cfg.warnings.clone();
        let mut entries = Vec::with_capacity(cfg.plugins.len());
        for (i, spec) in cfg.plugins.iter().enumerate() {
            entries.push(registry.entry_at(&format!("plugins[{i}].type"), &spec.type_name)?);
        }
        // Producers of shared state first, so a consumer finds the producer it names wherever the two
        // entries are; the list keeps configuration order.
        let mut shared = SharedState::default();
        let mut built: Vec<Option<Box<dyn Plugin>>> = cfg.plugins.iter().map(|_| None).collect();
        for producers in [true, false] {
            for (i, spec) in cfg.plugins.iter().enumerate() {
                let (Some(entry), Some(slot)) = (entries.get(i), built.get_mut(i)) else { continue };
                if entry.is_producer() != producers {
                    continue;
                }
                let plugin = entry.build(&spec.parameters, &mut BuildContext::new(&spec.name, &mut shared));
                *slot = Some(plugin.map_err(|e| e.at(&format!("plugins[{i}].parameters")))?);
            }
        }
        let mut plugins: Vec<Box<dyn Plugin>> = Vec::with_capacity(cfg.plugins.len() + 3);
        plugins.extend(built.into_iter().flatten());
        let mut plugin_names: Vec<String> = Vec::with_capacity(cfg.plugins.len() + 3);
        plugin_names.extend(cfg.plugins.iter().map(|spec| spec.name.clone()));
        let index_of = |names: &[String], n: &str| names.iter().position(|x| x == n);
        let mut add_default = |plugins: &mut Vec<Box<dyn Plugin>>, names: &mut Vec<String>, t: &str| {
            let entry = registry.get(t).ok_or_else(|| {
                ConfigError::new("plugins", format!("the built-in plugin {t:?} to be registered"), None)
            })?;
            let p = entry
                .build(&Value::Null, &mut BuildContext::new(t, &mut shared))
                .map_err(|e| ConfigError::new("plugins", format!("{t} defaults: {e}"), None))?;
            plugins.push(p);
            names.push(String::from(t));
            Ok::<usize, ConfigError>(plugins.len() - 1)
        };

        // Profiles as (name, [(plugin index, weight, path of the reference)]).
        let mut specs: Vec<(String, Vec<ResolvedRef>)> = Vec::new();
        if cfg.scheduling_profiles.is_empty() {
            // llm-d: no profiles → one `default` profile with every filter, scorer and picker.
            let refs = plugins
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.as_filter().is_some() || p.as_scorer().is_some() || p.as_picker().is_some()
                })
                .map(|(i, _)| (i, None, format!("plugins[{i}]")))
                .collect();
            specs.push((String::from("default"), refs));
        } else {
            for (i, profile) in cfg.scheduling_profiles.iter().enumerate() {
                let mut refs = Vec::with_capacity(profile.plugins.len());
                for (j, r) in profile.plugins.iter().enumerate() {
                    let path = format!("schedulingProfiles[{i}].plugins[{j}]");
                    let Some(idx) = index_of(&plugin_names, &r.plugin_ref) else {
                        return Err(ConfigError::new(
                            format!("{path}.pluginRef"),
                            "the name of an entry in plugins",
                            Some(format!("{:?}", r.plugin_ref)),
                        ));
                    };
                    refs.push((idx, r.weight, path));
                }
                specs.push((profile.name.clone(), refs));
            }
        }

        // Exactly one profile handler; single-profile-handler when there is one profile and none given.
        let mut handler = None;
        for (i, p) in plugins.iter().enumerate() {
            if p.as_profile_handler().is_some() {
                if let Some(first) = handler {
                    return Err(ConfigError::new(
                        format!("plugins[{i}].type"),
                        "at most one profile handler",
                        Some(format!(
                            "a second one ({:?} after {:?})",
                            plugin_names.get(i).map_or("", |s| s.as_str()),
                            plugin_names.get(first).map_or("", |s: &String| s.as_str())
                        )),
                    ));
                }
                handler = Some(i);
            }
        }
        let handler = match handler {
            Some(h) => h,
            None if specs.len() == 1 => {
                add_default(&mut plugins, &mut plugin_names, DEFAULT_PROFILE_HANDLER)?
            }
            None => {
                return Err(ConfigError::new(
                    "plugins",
                    format!("a profile handler (such as pd-profile-handler) for {} profiles", specs.len()),
                    Some(String::from("none")),
                ))
            }
        };

        // Profiles without a picker share the first configured picker, else a default max-score-picker.
        let mut default_picker = plugins.iter().position(|p| p.as_picker().is_some());
        let mut profiles = Vec::with_capacity(specs.len());
        for (name, refs) in specs {
            let mut profile = Profile { name, filters: Vec::new(), scorers: Vec::new(), picker: usize::MAX };
            for (idx, weight, path) in refs {
                let Some(p) = plugins.get(idx) else { continue };
                let plugin_name = plugin_names.get(idx).map_or("", |s| s.as_str());
                let (is_filter, is_scorer, is_picker) =
                    (p.as_filter().is_some(), p.as_scorer().is_some(), p.as_picker().is_some());
                if !is_filter && !is_scorer && !is_picker {
                    return Err(ConfigError::new(
                        format!("{path}.pluginRef"),
                        "a filter, scorer or picker",
                        Some(format!("{plugin_name:?}, a {}", roles(p.as_ref()))),
                    ));
                }
                if let (Some(w), false) = (weight, is_scorer) {
                    return Err(ConfigError::new(
                        format!("{path}.weight"),
                        format!(
                            "no weight ({plugin_name:?} is a {}, only scorers take one)",
                            roles(p.as_ref())
                        ),
                        Some(format!("{w}")),
                    ));
                }
                if is_filter {
                    profile.filters.push(idx);
                }
                if is_scorer {
                    profile.scorers.push((idx, weight.unwrap_or(DEFAULT_WEIGHT)));
                }
                if is_picker {
                    if profile.picker != usize::MAX {
                        return Err(ConfigError::new(
                            format!("{path}.pluginRef"),
                            format!("at most one picker in profile {:?}", profile.name),
                            Some(format!("a second picker {plugin_name:?}")),
                        ));
                    }
                    profile.picker = idx;
                }
            }
            if profile.picker == usize::MAX {
                let picker = match default_picker {
                    Some(p) => p,
                    None => {
                        let p = add_default(&mut plugins, &mut plugin_names, DEFAULT_PICKER)?;
                        default_picker = Some(p);
                        p
                    }
                };
                profile.picker = picker;
            }
            profiles.push(profile);
        }
        let profile_names: Vec<String> = profiles.iter().map(|p| p.name.clone()).collect();
        if let Some(h) = plugins.get(handler).and_then(|p| p.as_profile_handler()) {
            h.validate_profiles(&profile_names).map_err(|expected| ConfigError {
                path: String::from("schedulingProfiles"),
                expected,
                got: None,
            })?;
        }

        // Saturation detector: the named plugin, else the default one created on demand.
        let detector_name = cfg.saturation_detector.as_deref().unwrap_or(DEFAULT_SATURATION_DETECTOR);
        let detector = match index_of(&plugin_names, detector_name) {
            Some(i) => {
                let p = plugins.get(i).map(|p| p.as_ref());
                if p.and_then(|p| p.as_saturation_detector()).is_none() {
                    return Err(ConfigError::new(
                        "saturationDetector.pluginRef",
                        "the name of a saturation detector plugin",
                        Some(format!("{detector_name:?}, a {}", p.map(roles).unwrap_or_default())),
                    ));
                }
                Some(i)
            }
            None if registry.get(DEFAULT_SATURATION_DETECTOR).is_some() => {
                Some(add_default(&mut plugins, &mut plugin_names, DEFAULT_SATURATION_DETECTOR)?)
            }
            None => {
                warnings.push(ConfigWarning {
                    path: String::from("saturationDetector"),
                    message: format!(
                        "{DEFAULT_SATURATION_DETECTOR} is not available; sheddable requests are never shed"
                    ),
                });
                None
            }
        };

        Ok(Scheduler {
            plugins,
            plugin_names,
            shared,
            profiles,
            profile_names,
            handler,
            detector,
            max_endpoints: usize::MAX,
            feature_gates: cfg.feature_gates.clone(),
            warnings,
            scratch: Scratch::default(),
        })
    }

    /// Caps destination + fallbacks (e.g. 1 for gateways that accept a single address). Pickers'
    /// own `maxNumOfEndpoints` still applies.
    pub fn set_max_endpoints(&mut self, max: usize) {
        self.max_endpoints = max.max(1);
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
        let Scheduler { plugins, profiles, profile_names, handler, max_endpoints, scratch, .. } = self;
        let handler = plugins
            .get(*handler)
            .and_then(|p| p.as_profile_handler())
            .ok_or(ScheduleError::NoDestinationProfile)?;
        let mut state = CycleState::default();
        let mut done: Vec<ProfileRunResult> = Vec::with_capacity(2);
        // Each profile runs at most once, so a handler that keeps asking cannot loop forever.
        for _ in 0..=profiles.len() {
            let next = handler.pick_profiles(ctx, &state, profile_names, &done);
            let mut ran = false;
            for name in next {
                if done.iter().any(|r| r.profile == name) {
                    continue;
                }
                let Some(profile) = profiles.iter().find(|p| p.name == name) else { continue };
                let result = profile.run(plugins, ctx, &mut state, candidates, *max_endpoints, rng, scratch);
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
        let prefix_hashes =
            state.take::<PrefixMatch>(PREFIX_MATCH_STATE_KEY).map(|m| m.hashes).unwrap_or_default();
        Ok(SchedulingResult { profiles: done, targets, prefill, prefix_hashes })
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
