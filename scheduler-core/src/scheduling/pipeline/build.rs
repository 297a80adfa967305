//! Building a [`Scheduler`] from an `EndpointPickerConfig`, one step per function, in the order
//! [`Scheduler::from_config_with`] runs them:
//!
//! 1. [`build_plugins`]: every `plugins[]` entry through the registry, producers of shared state first;
//! 2. [`profile_refs`]: what each profile references (llm-d: no profiles → one `default` profile with
//!    every filter, scorer and picker);
//! 3. [`profile_handler`]: the one configured, else `single-profile-handler` for a single profile;
//! 4. [`profiles`]: each profile's filters, weighted scorers and picker (the first configured picker
//!    for a profile without one, else a default `max-score-picker`), checked by the handler;
//! 5. [`saturation_detector`]: the one named, else the default created on demand.
//!
//! Steps 3–5 apply llm-d's system defaults, so that what runs is exactly what the config implies. Only
//! the registry knows concrete plugin types; the defaults are named by type in `config`.

use super::{Scheduler, Scratch};
use crate::config::{
    ConfigError, ConfigWarning, EndpointPickerConfig, DEFAULT_PICKER, DEFAULT_PROFILE_HANDLER,
    DEFAULT_SATURATION_DETECTOR, DEFAULT_WEIGHT,
};
use crate::plugins::registry::Registry;
use crate::scheduling::factory::{BuildContext, SharedState};
use crate::scheduling::framework::Plugin;
use crate::scheduling::profile::Profile;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::Value;

pub(super) fn scheduler(cfg: &EndpointPickerConfig, registry: &Registry) -> Result<Scheduler, ConfigError> {
    let mut plugins = build_plugins(cfg, registry)?;
    section_roles(cfg, &plugins)?;
    let refs = profile_refs(cfg, &plugins)?;
    let handler = profile_handler(&mut plugins, refs.len())?;
    let profiles = profiles(refs, &mut plugins, handler)?;
    let detector = saturation_detector(cfg, &mut plugins)?;
    let profile_names = profiles.iter().map(|p| p.name.clone()).collect();
    let Plugins { list, names, shared, warnings: built, .. } = plugins;
    let mut warnings = cfg.warnings.clone();
    warnings.extend(built);
    Ok(Scheduler {
        plugins: list,
        plugin_names: names,
        shared,
        profiles,
        profile_names,
        handler,
        detector,
        max_endpoints: usize::MAX,
        fill_to: 1,
        feature_gates: cfg.feature_gates.clone(),
        warnings,
        scratch: Scratch::default(),
    })
}

/// The plugins built so far (configuration order, then the defaults added), their names, the state
/// they share, and the warnings of the build so far.
struct Plugins<'r> {
    registry: &'r Registry,
    list: Vec<Box<dyn Plugin>>,
    names: Vec<String>,
    shared: SharedState,
    warnings: Vec<ConfigWarning>,
}

impl Plugins<'_> {
    fn get(&self, i: usize) -> Option<&dyn Plugin> {
        self.list.get(i).map(|p| p.as_ref())
    }

    fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("", String::as_str)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Adds a system default with its default parameters, named after its type.
    fn add_default(&mut self, type_name: &str) -> Result<usize, ConfigError> {
        let entry = self.registry.get(type_name).ok_or_else(|| {
            ConfigError::new("plugins", format!("the built-in plugin {type_name:?} to be registered"), None)
        })?;
        let mut ctx = BuildContext::new(type_name, &mut self.shared);
        let plugin = entry
            .build(&Value::Null, &mut ctx)
            .map_err(|e| ConfigError::new("plugins", format!("{type_name} defaults: {e}"), None))?;
        let built = ctx.take_warnings();
        self.warnings.extend(built.into_iter().map(|w| w.at("plugins")));
        self.list.push(plugin);
        self.names.push(String::from(type_name));
        Ok(self.list.len() - 1)
    }
}

/// Step 1. Producers of shared state are built first (those that read another producer's state
/// after the others, see [`Entry::build_stage`](crate::plugins::registry::Entry::build_stage)), so a
/// consumer finds the producer it names wherever the two entries are; the list keeps configuration
/// order.
fn build_plugins<'r>(cfg: &EndpointPickerConfig, registry: &'r Registry) -> Result<Plugins<'r>, ConfigError> {
    let mut entries = Vec::with_capacity(cfg.plugins.len());
    for (i, spec) in cfg.plugins.iter().enumerate() {
        entries.push(registry.entry_at(&format!("plugins[{i}].type"), &spec.type_name)?);
    }
    let mut shared = SharedState::default();
    let mut built: Vec<Option<Box<dyn Plugin>>> = cfg.plugins.iter().map(|_| None).collect();
    // Per entry, so they are reported in configuration order whatever the build order.
    let mut entry_warnings: Vec<Vec<ConfigWarning>> = cfg.plugins.iter().map(|_| Vec::new()).collect();
    for stage in 0..=2 {
        for (i, spec) in cfg.plugins.iter().enumerate() {
            let (Some(entry), Some(slot)) = (entries.get(i), built.get_mut(i)) else { continue };
            if entry.build_stage() != stage {
                continue;
            }
            let path = format!("plugins[{i}].parameters");
            let mut ctx = BuildContext::new(&spec.name, &mut shared);
            let plugin = entry.build(&spec.parameters, &mut ctx);
            let found = ctx.take_warnings();
            *slot = Some(plugin.map_err(|e| e.at(&path))?);
            if let Some(w) = entry_warnings.get_mut(i) {
                w.extend(found.into_iter().map(|w| w.at(&path)));
            }
        }
    }
    let capacity = cfg.plugins.len() + 3;
    let mut list = Vec::with_capacity(capacity);
    list.extend(built.into_iter().flatten());
    let mut names = Vec::with_capacity(capacity);
    names.extend(cfg.plugins.iter().map(|spec| spec.name.clone()));
    let warnings = entry_warnings.into_iter().flatten().collect();
    Ok(Plugins { registry, list, names, shared, warnings })
}

/// Each reference from `requestHandler`, `parser` and `dataLayer` names a plugin of the kind its section
/// needs (names were checked when the configuration was parsed).
fn section_roles(cfg: &EndpointPickerConfig, plugins: &Plugins<'_>) -> Result<(), ConfigError> {
    for r in &cfg.section_refs {
        let (Some(role), Some(i)) = (r.role, plugins.index_of(&r.plugin_ref)) else { continue };
        let Some(p) = plugins.get(i) else { continue };
        if p.section_role() != Some(role) {
            return Err(ConfigError::new(
                r.path.clone(),
                format!("the name of a {} plugin", role.describe()),
                Some(format!("{:?}, a {}", r.plugin_ref, roles(p))),
            ));
        }
    }
    Ok(())
}

/// A profile's plugin reference: plugin index, configured weight, config path of the reference.
type Ref = (usize, Option<f64>, String);

/// Step 2. Each profile's name and references, resolved to plugin indices.
fn profile_refs(
    cfg: &EndpointPickerConfig,
    plugins: &Plugins<'_>,
) -> Result<Vec<(String, Vec<Ref>)>, ConfigError> {
    if cfg.scheduling_profiles.is_empty() {
        // llm-d: no profiles → one `default` profile with every filter, scorer and picker.
        let refs = (0..plugins.list.len())
            .filter(|&i| plugins.get(i).is_some_and(plays_in_profiles))
            .map(|i| (i, None, format!("plugins[{i}]")))
            .collect();
        return Ok(alloc::vec![(String::from("default"), refs)]);
    }
    let mut specs = Vec::with_capacity(cfg.scheduling_profiles.len());
    for (i, profile) in cfg.scheduling_profiles.iter().enumerate() {
        let mut refs = Vec::with_capacity(profile.plugins.len());
        for (j, r) in profile.plugins.iter().enumerate() {
            let path = format!("schedulingProfiles[{i}].plugins[{j}]");
            let Some(idx) = plugins.index_of(&r.plugin_ref) else {
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
    Ok(specs)
}

fn plays_in_profiles(p: &dyn Plugin) -> bool {
    p.as_filter().is_some() || p.as_scorer().is_some() || p.as_picker().is_some()
}

/// Step 3. Exactly one profile handler; `single-profile-handler` when there is one profile and none is
/// configured.
fn profile_handler(plugins: &mut Plugins<'_>, profile_count: usize) -> Result<usize, ConfigError> {
    let mut handler = None;
    for (i, p) in plugins.list.iter().enumerate() {
        if p.as_profile_handler().is_none() {
            continue;
        }
        if let Some(first) = handler {
            return Err(ConfigError::new(
                format!("plugins[{i}].type"),
                "at most one profile handler",
                Some(format!("a second one ({:?} after {:?})", plugins.name(i), plugins.name(first))),
            ));
        }
        handler = Some(i);
    }
    match handler {
        Some(h) => Ok(h),
        None if profile_count == 1 => plugins.add_default(DEFAULT_PROFILE_HANDLER),
        None => Err(ConfigError::new(
            "plugins",
            format!("a profile handler (such as pd-profile-handler) for {profile_count} profiles"),
            Some(String::from("none")),
        )),
    }
}

/// Step 4. Profiles without a picker share the first configured picker, else one default picker.
fn profiles(
    refs: Vec<(String, Vec<Ref>)>,
    plugins: &mut Plugins<'_>,
    handler: usize,
) -> Result<Vec<Profile>, ConfigError> {
    let mut default_picker = plugins.list.iter().position(|p| p.as_picker().is_some());
    let mut profiles = Vec::with_capacity(refs.len());
    for (name, refs) in refs {
        let (mut profile, picker) = profile(name, refs, plugins)?;
        profile.picker = match (picker, default_picker) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                let p = plugins.add_default(DEFAULT_PICKER)?;
                default_picker = Some(p);
                p
            }
        };
        profiles.push(profile);
    }
    let names: Vec<String> = profiles.iter().map(|p| p.name.clone()).collect();
    if let Some(h) = plugins.get(handler).and_then(|p| p.as_profile_handler()) {
        h.validate_profiles(&names).map_err(|expected| ConfigError {
            path: String::from("schedulingProfiles"),
            expected,
            got: None,
        })?;
    }
    Ok(profiles)
}

/// One profile from its references, and its picker if it names one.
///
/// As in llm-d, a reference to a plugin that is not a filter, scorer or picker (a profile handler, a
/// producer) plays no part in the profile, and a weight given to a plugin that is not a scorer is not
/// used; both are warnings, since shipped llm-d configurations contain them.
fn profile(
    name: String,
    refs: Vec<Ref>,
    plugins: &mut Plugins<'_>,
) -> Result<(Profile, Option<usize>), ConfigError> {
    let mut profile = Profile { name, filters: Vec::new(), scorers: Vec::new(), picker: usize::MAX };
    let mut picker = None;
    let mut warnings = Vec::new();
    for (idx, weight, path) in refs {
        let Some(p) = plugins.get(idx) else { continue };
        let plugin_name = plugins.name(idx);
        let (is_filter, is_scorer, is_picker) =
            (p.as_filter().is_some(), p.as_scorer().is_some(), p.as_picker().is_some());
        if !is_filter && !is_scorer && !is_picker {
            warnings.push(ConfigWarning {
                path: format!("{path}.pluginRef"),
                message: format!(
                    "{plugin_name:?} is a {}, not a filter, scorer or picker: it plays no part in profile {:?} \
                     (ignored, as in llm-d)",
                    roles(p),
                    profile.name
                ),
            });
            continue;
        }
        if let (Some(w), false) = (weight, is_scorer) {
            warnings.push(ConfigWarning {
                path: format!("{path}.weight"),
                message: format!(
                    "weight {w} ignored, as in llm-d: {plugin_name:?} is a {}, and only scorers are weighted",
                    roles(p)
                ),
            });
        }
        if is_filter {
            profile.filters.push(idx);
        }
        if is_scorer {
            profile.scorers.push((idx, weight.unwrap_or(DEFAULT_WEIGHT)));
        }
        if is_picker {
            if picker.is_some() {
                return Err(ConfigError::new(
                    format!("{path}.pluginRef"),
                    format!("at most one picker in profile {:?}", profile.name),
                    Some(format!("a second picker {plugin_name:?}")),
                ));
            }
            picker = Some(idx);
        }
    }
    plugins.warnings.extend(warnings);
    Ok((profile, picker))
}

/// Step 5. The named saturation detector, else the default one created on demand; without it (not
/// registered) nothing is ever shed, and a warning says so.
fn saturation_detector(
    cfg: &EndpointPickerConfig,
    plugins: &mut Plugins<'_>,
) -> Result<Option<usize>, ConfigError> {
    let name = cfg.saturation_detector.as_deref().unwrap_or(DEFAULT_SATURATION_DETECTOR);
    if let Some(i) = plugins.index_of(name) {
        let p = plugins.get(i);
        if p.and_then(|p| p.as_saturation_detector()).is_none() {
            return Err(ConfigError::new(
                "saturationDetector.pluginRef",
                "the name of a saturation detector plugin",
                Some(format!("{name:?}, a {}", p.map(roles).unwrap_or_default())),
            ));
        }
        return Ok(Some(i));
    }
    if plugins.registry.get(DEFAULT_SATURATION_DETECTOR).is_some() {
        return plugins.add_default(DEFAULT_SATURATION_DETECTOR).map(Some);
    }
    plugins.warnings.push(ConfigWarning {
        path: String::from("saturationDetector"),
        message: format!("{DEFAULT_SATURATION_DETECTOR} is not available; sheddable requests are never shed"),
    });
    Ok(None)
}

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
    if let Some(role) = p.section_role() {
        r.push(role.describe());
    }
    if r.is_empty() {
        r.push("plugin with no scheduling role");
    }
    r.join(" and ")
}
