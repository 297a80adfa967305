//! Walks the JSON tree by hand so every error carries the exact path of the offending value.

use super::params::json_repr;
use super::{
    ConfigError, ConfigWarning, EndpointPickerConfig, PluginSpec, ProfilePluginRef, ProfileSpec, SectionRef,
    API_VERSION, DEFAULT_SATURATION_DETECTOR, DEPRECATED_API_VERSION, KIND,
};
use crate::flow_control::config::FEATURE_GATE as FLOW_CONTROL_GATE;
use crate::flow_control::FlowControlConfig;
use crate::plugins::upstream::{METRICS_DATA_SOURCE, PARSER_TYPES, PASSTHROUGH_PARSER};
use crate::scheduling::SectionRole;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// The upstream (GIE / llm-d `EndpointPickerConfig`) top-level fields.
pub(crate) const TOP_LEVEL: &[&str] = &[
    "apiVersion",
    "kind",
    "plugins",
    "schedulingProfiles",
    "saturationDetector",
    "flowControl",
    "featureGates",
    "dataLayer",
    "requestHandler",
    "parser",
];

/// The feature gates of GIE and llm-d that change nothing here, each with why: each one configured gets a
/// warning; a name not listed (nor `flowControl`, which is implemented) gets a warning that it is unknown
/// (a typo, or a gate newer than this list), never an error, so configurations written for those
/// pickers still load.
const KNOWN_FEATURE_GATES: &[(&str, &str)] = &[
    ("dataLayer", "metrics collection is configured by the pool and collector sections"),
    ("dynamicPD", "prefill and decode roles come from endpoint labels and are not reassigned at run time"),
    ("prepareDataPlugins", "the prefix match is always computed, by the first prefix plugin that needs it"),
];

pub(super) fn from_json(text: &str, own: &[&str]) -> Result<EndpointPickerConfig, ConfigError> {
    if text.trim().is_empty() {
        return EndpointPickerConfig::default_scheduling();
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::new("", "a JSON document", Some(format!("invalid JSON ({e})"))))?;
    from_value(&value, own)
}

fn err<T>(path: &str, expected: &str, got: &Value) -> Result<T, ConfigError> {
    Err(ConfigError::new(path, expected, Some(json_repr(got))))
}

fn unknown_field(path: String, known: &[&str]) -> ConfigError {
    ConfigError::new(
        path,
        format!("one of the fields {}", known.join(", ")),
        Some(String::from("an unknown field")),
    )
}

fn object<'v>(path: &str, v: &'v Value) -> Result<&'v Map<String, Value>, ConfigError> {
    v.as_object().map_or_else(|| err(path, "an object", v), Ok)
}

fn array<'v>(path: &str, v: &'v Value) -> Result<&'v [Value], ConfigError> {
    v.as_array().map_or_else(|| err(path, "a list", v), |a| Ok(a.as_slice()))
}

fn non_empty_string<'v>(path: &str, v: &'v Value) -> Result<&'v str, ConfigError> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => err(path, "a non-empty string", v),
    }
}

pub(super) fn from_value(value: &Value, own: &[&str]) -> Result<EndpointPickerConfig, ConfigError> {
    let root = object("", value)?;
    let mut cfg = EndpointPickerConfig {
        plugins: Vec::new(),
        scheduling_profiles: Vec::new(),
        saturation_detector: None,
        feature_gates: Vec::new(),
        flow_control: None,
        section_refs: Vec::new(),
        warnings: Vec::new(),
    };
    let mut flow_section: Option<&Value> = None;
    let mut profiles_given = false;
    let mut legacy_detector: Option<String> = None;
    let mut flow_detector: Option<String> = None;
    let mut no_default_source = false;
    for (key, v) in root {
        match key.as_str() {
            "apiVersion" => match v.as_str() {
                Some(API_VERSION) => {}
                Some(DEPRECATED_API_VERSION) => cfg.warnings.push(ConfigWarning {
                    path: key.clone(),
                    message: format!("{DEPRECATED_API_VERSION} is deprecated, use {API_VERSION}"),
                }),
                _ => return err(key, &format!("{API_VERSION:?} or {DEPRECATED_API_VERSION:?}"), v),
            },
            "kind" => {
                if v.as_str() != Some(KIND) {
                    return err(key, &format!("{KIND:?}"), v);
                }
            }
            "plugins" => cfg.plugins = plugins(array(key, v)?)?,
            "schedulingProfiles" => {
                profiles_given = true;
                let list = array(key, v)?;
                if list.is_empty() {
                    return err(key, "at least one profile (omit the field for the default profile)", v);
                }
                cfg.scheduling_profiles = profiles(list)?;
            }
            "saturationDetector" => {
                legacy_detector = saturation_detector(key, v, &mut cfg)?;
                cfg.warnings.push(ConfigWarning {
                    path: key.clone(),
                    message: String::from("deprecated, use flowControl.saturationDetector"),
                });
            }
            "flowControl" => {
                if let Some(fv) = object(key, v)?.get("saturationDetector") {
                    flow_detector = saturation_detector("flowControl.saturationDetector", fv, &mut cfg)?;
                }
                // Built once the plugins it names and the feature gates are known.
                flow_section = Some(v);
            }
            "featureGates" => cfg.feature_gates = feature_gates(array(key, v)?, &mut cfg.warnings)?,
            "dataLayer" => no_default_source = data_layer(key, v, &mut cfg)?,
            "requestHandler" => {
                for (k, fv) in object(key, v)? {
                    let path = format!("{key}.{k}");
                    if k != "parsers" {
                        return Err(unknown_field(path, &["parsers"]));
                    }
                    for (i, p) in array(&path, fv)?.iter().enumerate() {
                        let r = plugin_ref(&format!("{path}[{i}]"), p)?;
                        cfg.section_refs.push(SectionRef { role: Some(SectionRole::Parser), ..r });
                    }
                }
            }
            "parser" => {
                let r = plugin_ref(key, v)?;
                cfg.section_refs.push(SectionRef { role: Some(SectionRole::Parser), ..r });
            }
            k if own.contains(&k) => {}
            _ => return Err(unknown_field(key.clone(), TOP_LEVEL)),
        }
    }
    // llm-d then scrapes no metrics at all unless a source is configured; the collector here always does.
    if no_default_source && cfg.plugins.iter().all(|p| p.type_name != METRICS_DATA_SOURCE) {
        return Err(ConfigError::new(
            "dataLayer.injectDefaults",
            format!(
                "true, or a {METRICS_DATA_SOURCE} plugin (wasm-epp always scrapes the model servers' metrics)"
            ),
            Some(String::from("false")),
        ));
    }
    flow_control(flow_section, &mut cfg)?;
    // The newer field wins when both are set (llm-d).
    let detector_path =
        if flow_detector.is_some() { "flowControl.saturationDetector" } else { "saturationDetector" };
    cfg.saturation_detector = flow_detector.or(legacy_detector);

    if cfg.plugins.is_empty() && !profiles_given {
        let mut default = EndpointPickerConfig::default_scheduling()?;
        default.plugins.append(&mut cfg.plugins);
        default.saturation_detector = cfg.saturation_detector;
        default.feature_gates = cfg.feature_gates;
        default.flow_control = cfg.flow_control;
        default.section_refs = cfg.section_refs;
        default.warnings = cfg.warnings;
        return check_references(with_named_parsers(default), detector_path);
    }
    check_references(with_named_parsers(cfg), detector_path)
}

/// A parser reference may name an llm-d parser type that no `plugins` entry declares: llm-d creates that
/// parser, named after its type, and so does this (a refused type is then refused by name).
/// A parser listed after a `passthrough-parser` never gets a request (the passthrough parser claims every
/// path left): a warning, as llm-d logs one.
fn with_named_parsers(mut cfg: EndpointPickerConfig) -> EndpointPickerConfig {
    for r in &cfg.section_refs {
        let named = r.role == Some(SectionRole::Parser) && PARSER_TYPES.contains(&r.plugin_ref.as_str());
        if named && cfg.plugins.iter().all(|p| p.name != r.plugin_ref) {
            let name = r.plugin_ref.clone();
            cfg.plugins.push(PluginSpec { name: name.clone(), type_name: name, parameters: Value::Null });
        }
    }
    let mut after_passthrough = false;
    for r in cfg.section_refs.iter().filter(|r| r.path.starts_with("requestHandler.parsers[")) {
        if after_passthrough {
            cfg.warnings.push(ConfigWarning {
                path: r.path.clone(),
                message: format!(
                    "ignored: the {PASSTHROUGH_PARSER} listed before it takes every request (as in llm-d)"
                ),
            });
        }
        let type_name = cfg.plugin(&r.plugin_ref).map(|p| p.type_name.as_str());
        after_passthrough |= type_name == Some(PASSTHROUGH_PARSER);
    }
    cfg
}

fn plugins(list: &[Value]) -> Result<Vec<PluginSpec>, ConfigError> {
    const FIELDS: &[&str] = &["name", "type", "parameters"];
    let mut out: Vec<PluginSpec> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let path = format!("plugins[{i}]");
        let obj = object(&path, entry)?;
        let mut name = None;
        let mut type_name = None;
        let mut parameters = Value::Null;
        for (k, v) in obj {
            let p = format!("{path}.{k}");
            match k.as_str() {
                "name" => name = Some(non_empty_string(&p, v)?),
                "type" => type_name = Some(non_empty_string(&p, v)?),
                "parameters" => parameters = v.clone(),
                _ => return Err(unknown_field(p, FIELDS)),
            }
        }
        let Some(type_name) = type_name else {
            return Err(ConfigError::new(
                format!("{path}.type"),
                "a plugin type",
                Some(String::from("nothing")),
            ));
        };
        let name = name.unwrap_or(type_name);
        if let Some(j) = out.iter().position(|p| p.name == name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "a unique plugin name (name defaults to the type)",
                Some(format!("{name:?}, already used by plugins[{j}]")),
            ));
        }
        out.push(PluginSpec { name: name.to_string(), type_name: type_name.to_string(), parameters });
    }
    Ok(out)
}

fn profiles(list: &[Value]) -> Result<Vec<ProfileSpec>, ConfigError> {
    let mut out: Vec<ProfileSpec> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let path = format!("schedulingProfiles[{i}]");
        let obj = object(&path, entry)?;
        let mut name = None;
        let mut refs = Vec::new();
        for (k, v) in obj {
            let p = format!("{path}.{k}");
            match k.as_str() {
                "name" => name = Some(non_empty_string(&p, v)?),
                "plugins" => {
                    for (j, r) in array(&p, v)?.iter().enumerate() {
                        refs.push(profile_ref(&format!("{p}[{j}]"), r)?);
                    }
                }
                _ => return Err(unknown_field(p, &["name", "plugins"])),
            }
        }
        let Some(name) = name else {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "a profile name",
                Some(String::from("nothing")),
            ));
        };
        if let Some(j) = out.iter().position(|p| p.name == name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "a unique profile name",
                Some(format!("{name:?}, already used by schedulingProfiles[{j}]")),
            ));
        }
        out.push(ProfileSpec { name: name.to_string(), plugins: refs });
    }
    Ok(out)
}

fn profile_ref(path: &str, v: &Value) -> Result<ProfilePluginRef, ConfigError> {
    let mut plugin_ref = None;
    let mut weight = None;
    for (k, fv) in object(path, v)? {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "pluginRef" => plugin_ref = Some(non_empty_string(&p, fv)?),
            "weight" => {
                weight = match fv {
                    Value::Null => None,
                    _ => match fv.as_f64() {
                        Some(w) if w.is_finite() && w >= 0.0 => Some(w),
                        _ => return err(&p, "a number ≥ 0", fv),
                    },
                }
            }
            _ => return Err(unknown_field(p, &["pluginRef", "weight"])),
        }
    }
    match plugin_ref {
        Some(r) => Ok(ProfilePluginRef { plugin_ref: r.to_string(), weight }),
        None => {
            Err(ConfigError::new(format!("{path}.pluginRef"), "a plugin name", Some(String::from("nothing"))))
        }
    }
}

/// `{pluginRef}` (GIE ≥ 1.3, llm-d), or GIE ≤ 1.2's inline utilization thresholds, which become a
/// `utilization-detector` plugin with the same parameters.
fn saturation_detector(
    path: &str,
    v: &Value,
    cfg: &mut EndpointPickerConfig,
) -> Result<Option<String>, ConfigError> {
    const LEGACY: &[&str] = &["queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold"];
    let obj = object(path, v)?;
    if let Some(r) = obj.get("pluginRef") {
        if let Some(k) = obj.keys().find(|k| *k != "pluginRef") {
            return Err(unknown_field(format!("{path}.{k}"), &["pluginRef"]));
        }
        return Ok(Some(non_empty_string(&format!("{path}.pluginRef"), r)?.to_string()));
    }
    if obj.is_empty() {
        return Ok(None);
    }
    if let Some(k) = obj.keys().find(|k| !LEGACY.contains(&k.as_str())) {
        let mut known = alloc::vec!["pluginRef"];
        known.extend_from_slice(LEGACY);
        return Err(unknown_field(format!("{path}.{k}"), &known));
    }
    cfg.warnings.push(ConfigWarning {
        path: String::from(path),
        message: format!(
            "inline thresholds are deprecated, configure a {DEFAULT_SATURATION_DETECTOR} plugin"
        ),
    });
    let name = String::from(DEFAULT_SATURATION_DETECTOR);
    if cfg.plugins.iter().all(|p| p.name != name) {
        cfg.plugins.push(PluginSpec { name: name.clone(), type_name: name.clone(), parameters: v.clone() });
    }
    Ok(Some(name))
}

/// `{pluginRef: name}` at `path`, any other key an error. The role is filled in by the caller.
fn plugin_ref(path: &str, v: &Value) -> Result<SectionRef, ConfigError> {
    let obj = object(path, v)?;
    if let Some(k) = obj.keys().find(|k| *k != "pluginRef") {
        return Err(unknown_field(format!("{path}.{k}"), &["pluginRef"]));
    }
    let p = format!("{path}.pluginRef");
    let Some(r) = obj.get("pluginRef") else {
        return Err(ConfigError::new(p, "a plugin name", Some(String::from("nothing"))));
    };
    let plugin_ref = non_empty_string(&p, r)?.to_string();
    Ok(SectionRef { path: p, plugin_ref, role: None })
}

/// llm-d's `dataLayer`: which sources (each with its extractors) collect endpoint data, and how
/// endpoints are discovered. Here the collector and the pool section do that work; the section's
/// references are kept so they can be checked against the plugins they name. Returns whether
/// `injectDefaults` is false (no default metrics source).
fn data_layer(key: &str, v: &Value, cfg: &mut EndpointPickerConfig) -> Result<bool, ConfigError> {
    const FIELDS: &[&str] = &[
        "injectDefaults",
        "sources",
        "discovery",
        "crossReplicaSyncerPluginRef",
        "crossReplicaSyncInterval",
    ];
    let mut no_default_source = false;
    for (k, fv) in object(key, v)? {
        let path = format!("{key}.{k}");
        match k.as_str() {
            "injectDefaults" => match fv.as_bool() {
                Some(inject) => no_default_source = !inject,
                None => return err(&path, "true or false", fv),
            },
            "sources" => {
                for (i, src) in array(&path, fv)?.iter().enumerate() {
                    let sp = format!("{path}[{i}]");
                    let obj = object(&sp, src)?;
                    let mut extractors = Vec::new();
                    let mut own = None;
                    for (sk, sv) in obj {
                        let p = format!("{sp}.{sk}");
                        match sk.as_str() {
                            "pluginRef" => own = Some(non_empty_string(&p, sv)?.to_string()),
                            "extractors" => {
                                for (j, e) in array(&p, sv)?.iter().enumerate() {
                                    let r = plugin_ref(&format!("{p}[{j}]"), e)?;
                                    extractors.push(SectionRef { role: Some(SectionRole::Extractor), ..r });
                                }
                            }
                            _ => return Err(unknown_field(p, &["pluginRef", "extractors"])),
                        }
                    }
                    let Some(plugin_ref) = own else {
                        return Err(ConfigError::new(
                            format!("{sp}.pluginRef"),
                            "a plugin name",
                            Some(String::from("nothing")),
                        ));
                    };
                    cfg.section_refs.push(SectionRef {
                        path: format!("{sp}.pluginRef"),
                        plugin_ref,
                        role: Some(SectionRole::DataSource),
                    });
                    cfg.section_refs.append(&mut extractors);
                }
            }
            "discovery" => {
                let r = plugin_ref(&path, fv)?;
                cfg.section_refs.push(SectionRef { role: Some(SectionRole::Discovery), ..r });
            }
            "crossReplicaSyncerPluginRef" => {
                let plugin_ref = non_empty_string(&path, fv)?.to_string();
                cfg.section_refs.push(SectionRef { path: path.clone(), plugin_ref, role: None });
                cfg.warnings.push(ConfigWarning {
                    path,
                    message: String::from(
                        "ignored: every gateway worker picks on its own here; what they share is described \
                         in docs/bench/many-gateways.md",
                    ),
                });
            }
            "crossReplicaSyncInterval" => {
                non_empty_string(&path, fv)?;
            }
            _ => return Err(unknown_field(path, FIELDS)),
        }
    }
    Ok(no_default_source)
}

/// Builds the `flowControl` section (checked whether or not it is used) and turns flow control on when
/// the `flowControl` feature gate is, as llm-d does; without the gate the section is ignored, with a
/// warning, except `saturationDetector`.
fn flow_control(section: Option<&Value>, cfg: &mut EndpointPickerConfig) -> Result<(), ConfigError> {
    let gate =
        cfg.feature_gates.iter().rev().find(|(g, _)| g == FLOW_CONTROL_GATE).is_some_and(|(_, on)| *on);
    let built = match section {
        Some(v) => FlowControlConfig::from_value("flowControl", v, &cfg.plugins, &mut cfg.warnings)?,
        None => FlowControlConfig::default(),
    };
    if gate {
        cfg.flow_control = Some(built);
    } else if section.and_then(Value::as_object).is_some_and(|o| o.keys().any(|k| k != "saturationDetector"))
    {
        cfg.warnings.push(ConfigWarning {
            path: String::from("flowControl"),
            message: String::from(
                "ignored except saturationDetector: flow control is off without the flowControl feature \
                 gate (featureGates: [\"flowControl\"]), as in llm-d",
            ),
        });
    }
    Ok(())
}

fn feature_gates(
    list: &[Value],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<(String, bool)>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let path = format!("featureGates[{i}]");
        let s = non_empty_string(&path, v)?;
        let (name, enabled) = match s.split_once('=') {
            None => (s, true),
            Some((n, val)) => match val.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "t" => (n, true),
                "false" | "0" | "f" => (n, false),
                _ => return err(&path, "\"name\", \"name=true\" or \"name=false\"", v),
            },
        };
        let name = name.trim();
        let message = match KNOWN_FEATURE_GATES.iter().find(|(gate, _)| *gate == name) {
            _ if name == FLOW_CONTROL_GATE => None,
            Some((_, why)) => Some(format!("feature gate {name:?} has no effect here: {why}")),
            None => {
                let mut known: Vec<&str> = KNOWN_FEATURE_GATES.iter().map(|(gate, _)| *gate).collect();
                known.push(FLOW_CONTROL_GATE);
                known.sort_unstable();
                Some(format!("unknown feature gate {name:?} ignored (GIE/llm-d gates: {})", known.join(", ")))
            }
        };
        if let Some(message) = message {
            warnings.push(ConfigWarning { path, message });
        }
        out.push((String::from(name), enabled));
    }
    Ok(out)
}

/// References that can be checked without building plugins: profile → plugin, detector → plugin.
fn check_references(
    cfg: EndpointPickerConfig,
    detector_path: &str,
) -> Result<EndpointPickerConfig, ConfigError> {
    let names = || cfg.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    for (i, profile) in cfg.scheduling_profiles.iter().enumerate() {
        for (j, r) in profile.plugins.iter().enumerate() {
            if cfg.plugin(&r.plugin_ref).is_none() {
                return Err(ConfigError::new(
                    format!("schedulingProfiles[{i}].plugins[{j}].pluginRef"),
                    format!("the name of an entry in plugins ({})", names()),
                    Some(format!("{:?}", r.plugin_ref)),
                ));
            }
        }
    }
    for r in &cfg.section_refs {
        if cfg.plugin(&r.plugin_ref).is_none() {
            return Err(ConfigError::new(
                r.path.clone(),
                format!("the name of an entry in plugins ({})", names()),
                Some(format!("{:?}", r.plugin_ref)),
            ));
        }
    }
    if let Some(d) = &cfg.saturation_detector {
        // The default detector is created on demand, like llm-d does.
        if d != DEFAULT_SATURATION_DETECTOR && cfg.plugin(d).is_none() {
            return Err(ConfigError::new(
                format!("{detector_path}.pluginRef"),
                format!("the name of an entry in plugins ({})", names()),
                Some(format!("{d:?}")),
            ));
        }
    }
    Ok(cfg)
}
