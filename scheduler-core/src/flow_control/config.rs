//! The `flowControl` section of llm-d's `EndpointPickerConfig`, with llm-d's meaning and defaults
//! (`apix/config/v1alpha1` `FlowControlConfig`, `pkg/epp/flowcontrol/{controller,registry}/config.go`).
//!
//! Flow control is on only with the `flowControl` feature gate, as in llm-d; the section alone is
//! checked and then ignored (except `saturationDetector`, which admission reads either way).

use crate::config::params::{json_repr, parse_duration_ms};
use crate::config::{ConfigError, ConfigWarning, PluginSpec};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// llm-d's feature gate name.
pub const FEATURE_GATE: &str = "flowControl";
/// llm-d's `defaultRequestTTL` when unset.
pub const DEFAULT_REQUEST_TTL_MS: u64 = 60_000;
/// A band's `maxRequests` when unset or 0.
pub const DEFAULT_BAND_MAX_REQUESTS: u64 = 5_000;
/// A band's `maxBytes` when unset or 0 (1 G, decimal, as llm-d).
pub const DEFAULT_BAND_MAX_BYTES: u64 = 1_000_000_000;
/// The flow of a request without a fairness id (llm-d's `DefaultFairnessID`).
pub const DEFAULT_FLOW: &str = "default-flow";

pub const GLOBAL_STRICT: &str = "global-strict-fairness-policy";
pub const ROUND_ROBIN: &str = "round-robin-fairness-policy";
pub const FCFS: &str = "fcfs-ordering-policy";
pub const EDF: &str = "edf-ordering-policy";
pub const STATIC_USAGE_LIMIT: &str = "static-usage-limit-policy";
pub const PRIORITY_HOLDBACK: &str = "priority-holdback-policy";

/// How a band chooses between its flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fairness {
    /// The single best head item across every flow of the band, as if flows did not exist.
    #[default]
    GlobalStrict,
    /// Flows in turn (sorted by id), one request each.
    RoundRobin,
}

/// How a flow orders its own requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ordering {
    /// Earliest arrival first.
    #[default]
    Fcfs,
    /// Earliest deadline (arrival + TTL) first, arrival breaking ties; no TTL sorts last.
    Edf,
}

/// One priority band's limits and policies (llm-d's `PriorityBandConfig`, defaults applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandConfig {
    pub priority: i32,
    /// Queued requests this band may hold.
    pub max_requests: u64,
    /// Queued body bytes this band may hold.
    pub max_bytes: u64,
    pub fairness: Fairness,
    pub ordering: Ordering,
}

impl BandConfig {
    fn template(priority: i32) -> BandConfig {
        BandConfig {
            priority,
            max_requests: DEFAULT_BAND_MAX_REQUESTS,
            max_bytes: DEFAULT_BAND_MAX_BYTES,
            fairness: Fairness::GlobalStrict,
            ordering: Ordering::Fcfs,
        }
    }
}

/// The dispatch ceiling of each band: a band dispatches only while the pool's saturation is below it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UsageLimit {
    /// `static-usage-limit-policy`: one ceiling for every band (llm-d's default, 1.0).
    Static { threshold: f64 },
    /// `priority-holdback-policy` (linear): ceilings from `max` (highest band) down to `min` (lowest),
    /// by rank among the known bands or by priority value.
    PriorityHoldback { min: f64, max: f64, by_value: bool },
}

impl UsageLimit {
    /// The ceiling of each of `priorities` (highest first).
    pub fn ceilings(&self, priorities: &[i32], out: &mut Vec<f64>) {
        out.clear();
        match *self {
            UsageLimit::Static { threshold } => out.extend(priorities.iter().map(|_| threshold)),
            UsageLimit::PriorityHoldback { min, max, by_value } => {
                let n = priorities.len();
                let (hi, lo) = match (priorities.first(), priorities.last()) {
                    (Some(&h), Some(&l)) => (f64::from(h), f64::from(l)),
                    _ => return,
                };
                for (i, &p) in priorities.iter().enumerate() {
                    let c = if n <= 1 {
                        max
                    } else if by_value {
                        if hi > lo {
                            min + (f64::from(p) - lo) / (hi - lo) * (max - min)
                        } else {
                            max
                        }
                    } else {
                        max - i as f64 * (max - min) / (n - 1) as f64
                    };
                    out.push(c);
                }
            }
        }
    }
}

/// The `flowControl` section, built (every default applied, every reference resolved).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowControlConfig {
    /// Global cap on queued requests; 0: none.
    pub max_requests: u64,
    /// Global cap on queued body bytes; 0: none.
    pub max_bytes: u64,
    /// Queue-wait budget while the pool has endpoints; 0: no limit.
    pub request_ttl_ms: u64,
    /// Queue-wait budget while the pool has no endpoints (follows `request_ttl_ms` unless set).
    pub no_endpoint_request_ttl_ms: u64,
    /// Bands configured explicitly.
    pub bands: Vec<BandConfig>,
    /// Template for other priorities ≥ 0 (and < 0 without a negative template).
    pub default_band: BandConfig,
    /// Template for other priorities < 0.
    pub default_negative_band: Option<BandConfig>,
    pub usage_limit: UsageLimit,
    /// In-flight eviction: sheddable requests in flight may be ended (429) to unblock higher bands.
    pub enable_eviction: bool,
}

impl Default for FlowControlConfig {
    fn default() -> FlowControlConfig {
        FlowControlConfig {
            max_requests: 0,
            max_bytes: 0,
            request_ttl_ms: DEFAULT_REQUEST_TTL_MS,
            no_endpoint_request_ttl_ms: DEFAULT_REQUEST_TTL_MS,
            bands: Vec::new(),
            default_band: BandConfig::template(0),
            default_negative_band: None,
            usage_limit: UsageLimit::Static { threshold: 1.0 },
            enable_eviction: false,
        }
    }
}

impl FlowControlConfig {
    /// The band `priority` falls in: its own, or a template given that priority.
    pub fn band(&self, priority: i32) -> BandConfig {
        if let Some(b) = self.bands.iter().find(|b| b.priority == priority) {
            return b.clone();
        }
        let template = match &self.default_negative_band {
            Some(neg) if priority < 0 => neg,
            _ => &self.default_band,
        };
        BandConfig { priority, ..template.clone() }
    }

    /// Builds the section at `path` (`flowControl`), `plugins` being the configuration's plugins
    /// (policy references name them or one of llm-d's built-in policies). The key
    /// `saturationDetector` is the caller's. Warnings name what is accepted without effect.
    pub fn from_value(
        path: &str,
        v: &Value,
        plugins: &[PluginSpec],
        warnings: &mut Vec<ConfigWarning>,
    ) -> Result<FlowControlConfig, ConfigError> {
        let obj = object(path, v)?;
        let mut cfg = FlowControlConfig::default();
        let mut ttl_set = false;
        let mut no_endpoint_ttl = None;
        for (k, fv) in obj {
            let p = format!("{path}.{k}");
            match k.as_str() {
                "maxBytes" => cfg.max_bytes = quantity(&p, fv)?,
                "maxRequests" => cfg.max_requests = quantity(&p, fv)?,
                "defaultRequestTTL" => {
                    cfg.request_ttl_ms = duration(&p, fv)?;
                    ttl_set = true;
                }
                "noEndpointRequestTTL" => no_endpoint_ttl = Some(duration(&p, fv)?),
                "defaultPriorityBand" => cfg.default_band = band(&p, fv, 0, false, plugins, warnings)?,
                "defaultNegativePriorityBand" => {
                    cfg.default_negative_band = Some(band(&p, fv, -1, false, plugins, warnings)?)
                }
                "priorityBands" => {
                    for (i, b) in array(&p, fv)?.iter().enumerate() {
                        let bp = format!("{p}[{i}]");
                        let built = band(&bp, b, 0, true, plugins, warnings)?;
                        if let Some(j) = cfg.bands.iter().position(|x| x.priority == built.priority) {
                            return Err(ConfigError::new(
                                format!("{bp}.priority"),
                                "a priority no other band has",
                                Some(format!("{}, already used by {p}[{j}]", built.priority)),
                            ));
                        }
                        cfg.bands.push(built);
                    }
                }
                "usageLimitPolicyPluginRef" => {
                    cfg.usage_limit = usage_limit(&p, fv, plugins, warnings)?;
                }
                "enableEviction" => match fv {
                    Value::Bool(b) => cfg.enable_eviction = *b,
                    Value::Null => {}
                    _ => return Err(ConfigError::new(p, "true or false", Some(json_repr(fv)))),
                },
                // The caller's (admission reads it with or without flow control).
                "saturationDetector" => {}
                _ => {
                    return Err(ConfigError::new(
                        p,
                        format!("one of the fields {}", FIELDS.join(", ")),
                        Some(String::from("an unknown field")),
                    ))
                }
            }
        }
        // Unset, the no-endpoint budget follows defaultRequestTTL (llm-d).
        cfg.no_endpoint_request_ttl_ms = match no_endpoint_ttl {
            Some(ms) => ms,
            None if ttl_set => cfg.request_ttl_ms,
            None => DEFAULT_REQUEST_TTL_MS,
        };
        // A configured band keeps the default template's policies unless it names its own.
        Ok(cfg)
    }
}

const FIELDS: &[&str] = &[
    "maxBytes",
    "maxRequests",
    "defaultRequestTTL",
    "noEndpointRequestTTL",
    "defaultPriorityBand",
    "defaultNegativePriorityBand",
    "priorityBands",
    "usageLimitPolicyPluginRef",
    "saturationDetector",
    "enableEviction",
];

fn object<'v>(path: &str, v: &'v Value) -> Result<&'v Map<String, Value>, ConfigError> {
    v.as_object().ok_or_else(|| ConfigError::new(path, "an object", Some(json_repr(v))))
}

fn array<'v>(path: &str, v: &'v Value) -> Result<&'v [Value], ConfigError> {
    v.as_array().map(Vec::as_slice).ok_or_else(|| ConfigError::new(path, "a list", Some(json_repr(v))))
}

/// A Kubernetes quantity (`"1Gi"`, `"500M"`, `"1k"`, `"100"`, or a plain number), as a whole count
/// rounded up (Kubernetes' `Quantity.Value()`); refused below zero.
fn quantity(path: &str, v: &Value) -> Result<u64, ConfigError> {
    const EXPECTED: &str = "a non-negative quantity such as 100, \"1k\", \"500M\" or \"1Gi\"";
    let bad = || ConfigError::new(path, EXPECTED, Some(json_repr(v)));
    match v {
        Value::Null => Ok(0),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(u),
            (None, Some(f)) if (0.0..1.8e19).contains(&f) => Ok(ceil(f)),
            _ => Err(bad()),
        },
        Value::String(s) => parse_quantity(s.trim()).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn ceil(f: f64) -> u64 {
    let t = f as u64;
    if (t as f64) < f {
        t.saturating_add(1)
    } else {
        t
    }
}

/// `<number><suffix>`: binary (`Ki`…`Ei`), decimal (`k`, `M`…`E`, `m` milli) or an exponent (`1e3`).
pub fn parse_quantity(s: &str) -> Option<u64> {
    let num_len = s.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b'+').count();
    let (num, suffix) = s.split_at(num_len);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num == "." || num.contains('+') {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1_048_576.0,
        "Gi" => 1_073_741_824.0,
        "Ti" => 1_099_511_627_776.0,
        "Pi" => 1_125_899_906_842_624.0,
        "Ei" => 1_152_921_504_606_846_976.0,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e.get(1..)?.parse().ok()?;
            if !(-18..=18).contains(&exp) {
                return None;
            }
            let mut x = 1.0;
            for _ in 0..exp.unsigned_abs() {
                x *= 10.0;
            }
            if exp < 0 {
                1.0 / x
            } else {
                x
            }
        }
        _ => return None,
    };
    let total = value * scale;
    (total.is_finite() && total < 1.8e19).then(|| ceil(total))
}

fn duration(path: &str, v: &Value) -> Result<u64, ConfigError> {
    v.as_str().and_then(|s| parse_duration_ms(s.trim())).ok_or_else(|| {
        ConfigError::new(path, "a duration such as \"30s\", \"1m30s\" or \"0s\"", Some(json_repr(v)))
    })
}

/// One band at `path`. `explicit`: a `priorityBands[]` entry (its `priority` is required).
fn band(
    path: &str,
    v: &Value,
    default_priority: i32,
    explicit: bool,
    plugins: &[PluginSpec],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<BandConfig, ConfigError> {
    const BAND: &[&str] = &["priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef"];
    let obj = object(path, v)?;
    let mut b = BandConfig::template(default_priority);
    let mut priority_given = false;
    for (k, fv) in obj {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "priority" => {
                let n = fv.as_i64().and_then(|n| i32::try_from(n).ok());
                b.priority =
                    n.ok_or_else(|| ConfigError::new(&p, "an integer priority", Some(json_repr(fv))))?;
                priority_given = true;
            }
            // 0 means "the default" (llm-d: per-band limits are always bounded).
            "maxBytes" => {
                b.max_bytes = match quantity(&p, fv)? {
                    0 => DEFAULT_BAND_MAX_BYTES,
                    n => n,
                }
            }
            "maxRequests" => {
                b.max_requests = match quantity(&p, fv)? {
                    0 => DEFAULT_BAND_MAX_REQUESTS,
                    n => n,
                }
            }
            "fairnessPolicyRef" => b.fairness = fairness(&p, fv, plugins, warnings)?,
            "orderingPolicyRef" => b.ordering = ordering(&p, fv, plugins, warnings)?,
            _ => {
                return Err(ConfigError::new(
                    p,
                    format!("one of the fields {}", BAND.join(", ")),
                    Some(String::from("an unknown field")),
                ))
            }
        }
    }
    if explicit && !priority_given {
        return Err(ConfigError::new(
            format!("{path}.priority"),
            "an integer priority",
            Some("nothing".into()),
        ));
    }
    Ok(b)
}

/// llm-d registers its default policies under their type names whether or not `plugins` declares them;
/// any other policy is named by a `plugins` entry.
const BUILT_IN_FAIRNESS: &[&str] = &[GLOBAL_STRICT];
const BUILT_IN_ORDERING: &[&str] = &[FCFS];

/// The plugin type a policy reference names: a `plugins` entry, or a built-in policy llm-d registers
/// under its type name.
fn policy_type<'p>(
    path: &str,
    v: &'p Value,
    plugins: &'p [PluginSpec],
    built_in: &[&'static str],
) -> Result<(&'p str, Option<&'p PluginSpec>), ConfigError> {
    let name = match v.as_str() {
        Some(s) if !s.is_empty() => s,
        _ => return Err(ConfigError::new(path, "a plugin name", Some(json_repr(v)))),
    };
    if let Some(spec) = plugins.iter().find(|p| p.name == name) {
        return Ok((spec.type_name.as_str(), Some(spec)));
    }
    if built_in.contains(&name) {
        return Ok((name, None));
    }
    let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).chain(built_in.iter().copied()).collect();
    Err(ConfigError::new(
        path,
        format!("the name of an entry in plugins or a built-in policy ({})", names.join(", ")),
        Some(format!("{name:?}")),
    ))
}

fn fairness(
    path: &str,
    v: &Value,
    plugins: &[PluginSpec],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Fairness, ConfigError> {
    let (t, _) = policy_type(path, v, plugins, BUILT_IN_FAIRNESS)?;
    match t {
        GLOBAL_STRICT => Ok(Fairness::GlobalStrict),
        ROUND_ROBIN => Ok(Fairness::RoundRobin),
        "program-aware-fairness" => {
            warnings.push(ConfigWarning {
                path: path.to_string(),
                message: String::from(
                    "program-aware-fairness is not implemented (it needs per-program service metrics); \
                     the band uses global-strict-fairness-policy",
                ),
            });
            Ok(Fairness::GlobalStrict)
        }
        other => Err(ConfigError::new(
            path,
            "a fairness policy (global-strict-fairness-policy, round-robin-fairness-policy)",
            Some(format!("a {other} plugin")),
        )),
    }
}

fn ordering(
    path: &str,
    v: &Value,
    plugins: &[PluginSpec],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Ordering, ConfigError> {
    let (t, _) = policy_type(path, v, plugins, BUILT_IN_ORDERING)?;
    match t {
        FCFS => Ok(Ordering::Fcfs),
        EDF => Ok(Ordering::Edf),
        "slo-deadline-ordering-policy" => {
            warnings.push(ConfigWarning {
                path: path.to_string(),
                message: String::from(
                    "slo-deadline-ordering-policy is not implemented (deadlines from the request's SLO \
                     headers); the band orders first come, first served",
                ),
            });
            Ok(Ordering::Fcfs)
        }
        other => Err(ConfigError::new(
            path,
            "an ordering policy (fcfs-ordering-policy, edf-ordering-policy)",
            Some(format!("a {other} plugin")),
        )),
    }
}

fn usage_limit(
    path: &str,
    v: &Value,
    plugins: &[PluginSpec],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<UsageLimit, ConfigError> {
    let (t, spec) = policy_type(path, v, plugins, &[STATIC_USAGE_LIMIT])?;
    let params = spec.map_or(&Value::Null, |s| &s.parameters);
    let fraction = |key: &str, lo_open: bool, hi_open: bool| -> Result<Option<f64>, ConfigError> {
        match params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => match x.as_f64() {
                Some(n)
                    if (if lo_open { n > 0.0 } else { n >= 0.0 })
                        && (if hi_open { n < 1.0 } else { n <= 1.0 }) =>
                {
                    Ok(Some(n))
                }
                _ => Err(ConfigError::new(
                    format!("plugins[{}].parameters.{key}", plugin_index(plugins, spec)),
                    match (lo_open, hi_open) {
                        (false, false) => "a fraction in [0, 1]",
                        (false, true) => "a fraction in [0, 1)",
                        _ => "a fraction in (0, 1]",
                    },
                    Some(json_repr(x)),
                )),
            },
        }
    };
    match t {
        STATIC_USAGE_LIMIT => {
            Ok(UsageLimit::Static { threshold: fraction("threshold", false, false)?.unwrap_or(1.0) })
        }
        PRIORITY_HOLDBACK => {
            let Some(min) = fraction("minCeiling", false, true)? else {
                return Err(ConfigError::new(
                    format!("plugins[{}].parameters.minCeiling", plugin_index(plugins, spec)),
                    "a fraction in [0, 1) (required)",
                    Some(String::from("nothing")),
                ));
            };
            let max = fraction("maxCeiling", true, false)?.unwrap_or(1.0);
            let by_value = params.get("domain").and_then(Value::as_str) == Some("value");
            Ok(UsageLimit::PriorityHoldback { min, max, by_value })
        }
        "soft-reflective-ceiling-policy" => {
            warnings.push(ConfigWarning {
                path: path.to_string(),
                message: String::from(
                    "soft-reflective-ceiling-policy is not implemented (a ceiling that follows observed \
                     saturation); every band dispatches up to saturation 1.0 (static-usage-limit-policy)",
                ),
            });
            Ok(UsageLimit::Static { threshold: 1.0 })
        }
        other => Err(ConfigError::new(
            path,
            "a usage limit policy (static-usage-limit-policy, priority-holdback-policy)",
            Some(format!("a {other} plugin")),
        )),
    }
}

fn plugin_index(plugins: &[PluginSpec], spec: Option<&PluginSpec>) -> usize {
    spec.and_then(|s| plugins.iter().position(|p| core::ptr::eq(p, s))).unwrap_or(0)
}
