//! The GIE/llm-d `EndpointPickerConfig`, parsed from JSON into plain data with path-precise errors.
//!
//! Parsing checks the document's shape and references; building plugins (which needs the registry)
//! and the system defaults (picker, profile handler, saturation detector) happen in `Scheduler`.

pub mod gateway;
pub mod health;
pub mod objectives;
pub mod params;
mod parse;
pub mod pools;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde_json::Value;

/// Current config API group/version.
pub const API_VERSION: &str = "llm-d.ai/v1alpha1";
/// The pre-move GIE group/version, still accepted with a deprecation warning.
pub const DEPRECATED_API_VERSION: &str = "inference.networking.x-k8s.io/v1alpha1";
pub const KIND: &str = "EndpointPickerConfig";
/// The saturation detector used when the configuration names none.
pub const DEFAULT_SATURATION_DETECTOR: &str = "utilization-detector";
/// The picker of a profile that names none (llm-d's system default).
pub const DEFAULT_PICKER: &str = "max-score-picker";
/// The scheduling of a configuration that has no plugins and no profiles (no configuration at all, or
/// only our own sections): `envoy-config/scheduling/recommended.json`, the very file. GIE's default
/// (queue ×2, KV ×2, prefix ×3, [`EndpointPickerConfig::gie_default`]) herds when several decision
/// points read the same stale metrics; this profile (the prompt's rendezvous owner with bounded loads,
/// in-flight-aware queue, the prefill backlog of prompts awaiting their first token plus this prompt's
/// uncached tokens, a random draw among near-best endpoints) keeps 4 gateways × 4 workers within a few
/// percent of one decision point (BENCHMARKS.md, "Many gateways"); the prefill backlog cut trace p90 TTFT
/// by 21–27 % at one decision point and 1–9 % at 4 × 4 (`docs/bench/many-gateways.md`, "Adopted").
pub const DEFAULT_SCHEDULING: &str = include_str!("../../../envoy-config/scheduling/recommended.json");
/// The profile handler of a configuration with one profile and no handler (llm-d's system default).
pub const DEFAULT_PROFILE_HANDLER: &str = "single-profile-handler";
/// Weight of a scorer referenced without one.
pub const DEFAULT_WEIGHT: f64 = 1.0;

/// A configuration that cannot be used: where, what was expected, and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path such as `plugins[2].parameters.threshold`; empty for the document itself.
    pub path: String,
    pub expected: String,
    pub got: Option<String>,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, expected: impl Into<String>, got: Option<String>) -> ConfigError {
        ConfigError { path: path.into(), expected: expected.into(), got }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str("configuration: ")?;
        } else {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "expected {}", self.expected)?;
        if let Some(got) = &self.got {
            write!(f, ", got {got}")?;
        }
        Ok(())
    }
}

/// Something accepted but worth telling the operator (deprecated or ignored settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// One `plugins[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginSpec {
    /// Defaults to the type.
    pub name: String,
    pub type_name: String,
    /// `Value::Null` when absent.
    pub parameters: Value,
}

/// One `schedulingProfiles[].plugins[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfilePluginRef {
    pub plugin_ref: String,
    /// Only scorers take a weight; `None` means the default 1.0 for a scorer.
    pub weight: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProfileSpec {
    pub name: String,
    pub plugins: Vec<ProfilePluginRef>,
}

/// A reference to a plugin from one of llm-d's sections outside the scheduling profiles
/// (`requestHandler.parsers[].pluginRef`, `dataLayer.sources[].pluginRef`...): the name is checked at
/// parse time, the kind of plugin when plugins are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionRef {
    /// Config path of the reference, e.g. `dataLayer.sources[0].extractors[1].pluginRef`.
    pub path: String,
    pub plugin_ref: String,
    /// The kind of plugin the section needs; `None`: any (a section not implemented here, whose names
    /// are still checked).
    pub role: Option<crate::scheduling::SectionRole>,
}

/// A parsed `EndpointPickerConfig`, before any plugin is built.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointPickerConfig {
    pub plugins: Vec<PluginSpec>,
    /// Empty: the scheduler builds a `default` profile from every filter, scorer and picker (llm-d).
    pub scheduling_profiles: Vec<ProfileSpec>,
    /// Plugin name of the saturation detector; `None` → `utilization-detector`.
    pub saturation_detector: Option<String>,
    /// `(gate, enabled)` in document order.
    pub feature_gates: Vec<(String, bool)>,
    /// The `flowControl` section, built; `Some` only with the `flowControl` feature gate on (llm-d:
    /// the gate turns flow control on, the section tunes it, defaults filling what it leaves out).
    pub flow_control: Option<crate::flow_control::FlowControlConfig>,
    /// References from `requestHandler`, `parser` and `dataLayer`, in document order.
    pub section_refs: Vec<SectionRef>,
    pub warnings: Vec<ConfigWarning>,
}

impl EndpointPickerConfig {
    /// Parses a JSON document. Blank text means "no configuration": the GIE default.
    pub fn from_json(text: &str) -> Result<EndpointPickerConfig, ConfigError> {
        parse::from_json(text, &[])
    }

    /// Like [`from_json`](Self::from_json) for a document that also carries the embedder's own
    /// top-level sections (named in `own_sections`, skipped here).
    pub fn from_json_with_sections(
        text: &str,
        own_sections: &[&str],
    ) -> Result<EndpointPickerConfig, ConfigError> {
        parse::from_json(text, own_sections)
    }

    pub fn from_value(value: &Value, own_sections: &[&str]) -> Result<EndpointPickerConfig, ConfigError> {
        parse::from_value(value, own_sections)
    }

    /// What a configuration without plugins and profiles schedules with: [`DEFAULT_SCHEDULING`].
    pub fn default_scheduling() -> Result<EndpointPickerConfig, ConfigError> {
        parse::from_json(DEFAULT_SCHEDULING, &[])
    }

    /// GIE's default: queue ×2, KV-cache utilization ×2, prefix cache ×3, max-score picker,
    /// single profile handler, utilization detector (the last three are added by the scheduler). Not the
    /// default here (see [`DEFAULT_SCHEDULING`]); configure these plugins to get its decisions.
    pub fn gie_default() -> EndpointPickerConfig {
        let scorer = |t: &str, w: f64| {
            (
                PluginSpec { name: String::from(t), type_name: String::from(t), parameters: Value::Null },
                ProfilePluginRef { plugin_ref: String::from(t), weight: Some(w) },
            )
        };
        let entries = [
            scorer("queue-scorer", 2.0),
            scorer("kv-cache-utilization-scorer", 2.0),
            scorer("prefix-cache-scorer", 3.0),
        ];
        EndpointPickerConfig {
            plugins: entries.iter().map(|(p, _)| p.clone()).collect(),
            scheduling_profiles: alloc::vec![ProfileSpec {
                name: String::from("default"),
                plugins: entries.iter().map(|(_, r)| r.clone()).collect(),
            }],
            saturation_detector: None,
            feature_gates: Vec::new(),
            flow_control: None,
            section_refs: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn plugin(&self, name: &str) -> Option<&PluginSpec> {
        self.plugins.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests;
