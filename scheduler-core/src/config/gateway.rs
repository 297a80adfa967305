//! The whole configuration of a picker deployment: the GIE/llm-d `EndpointPickerConfig` keys plus our own
//! top-level sections (pool endpoints, collector, routing headers, failure mode, limits, objectives,
//! model rewrites). An existing `EndpointPickerConfig` document is a valid gateway configuration as is.
//!
//! The Wasm filter reads it from the plugin configuration, the shim from a file; both get the same
//! errors, each naming the field and what was expected.

use super::health::HealthConfig;
use super::objectives::{Objective, ObjectivePriorities};
use super::params::{json_repr, parse_params};
use super::{ConfigError, EndpointPickerConfig};
use crate::model::{validate_address, Endpoint, Engine, Role};
use crate::model_rewrite::{InferenceModelRewrite, ModelRewrites};
use crate::plugins::upstream::{metrics_source, RequestParsers, METRICS_DATA_SOURCE};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use serde_json::Value;

/// Our top-level sections; everything else belongs to the `EndpointPickerConfig`.
pub const OWN_SECTIONS: &[&str] = &[
    "pool",
    "collector",
    "routing",
    "failureMode",
    "failOpen",
    "limits",
    "objectives",
    "modelRewrites",
    "health",
    "bbr",
    "pools",
];

/// What to do when the picker cannot decide from metrics (no snapshot, stale, undecodable).
/// Mirrors InferencePool `endpointPickerRef.failureMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum FailureMode {
    /// Keep serving: route without metrics (see [`FailOpenStrategy`]).
    FailOpen,
    /// Refuse with 503 rather than route blind.
    FailClose,
}

/// How to route while failing open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailOpenStrategy {
    /// Round-robin over the endpoints known from the configuration or the last snapshot.
    RoundRobin,
    /// Set no destination header, so the cluster's own load balancing (override_host's fallback
    /// policy) decides.
    LeaveUnset,
}

/// Where the filter learns which endpoint served a request (its response header and per-endpoint 5xx
/// counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServedFrom {
    /// Ask the proxy on every response (Envoy's `upstream.address`): right whatever the cluster does,
    /// e.g. when override_host's fallback policy sends the request to another host.
    #[default]
    Proxy,
    /// The endpoint the picker chose: right for clusters that cannot send a request anywhere else (an
    /// ORIGINAL_DST cluster with `use_http_header`, `routing.maxEndpoints` 1), and one host call per
    /// response cheaper (~3 µs in Envoy's V8).
    Destination,
}

/// Who scrapes the model servers inside the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CollectorMode {
    /// An Envoy bootstrap singleton VM (`envoy.bootstrap.wasm`) with the same `vm_id` scrapes; the HTTP
    /// filter's workers only read.
    Singleton,
    /// Every worker's root context competes for a lease in shared data; the holder scrapes (Istio, where
    /// there is no singleton).
    LeaderElected,
    /// Nobody in this proxy scrapes (another proxy or the companion collector publishes).
    Off,
}

/// One statically configured endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointSpec {
    address: String,
    #[serde(default)]
    engine: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    labels: Option<serde_json::Map<String, Value>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct PoolSpec {
    name: String,
    endpoints: Vec<Value>,
    discovery_url: Option<String>,
    discovery_cluster: Option<String>,
}

impl Default for PoolSpec {
    fn default() -> PoolSpec {
        PoolSpec {
            name: String::from("default"),
            endpoints: Vec::new(),
            discovery_url: None,
            discovery_cluster: None,
        }
    }
}

/// Where endpoints and their metrics come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    /// Static endpoints (scraped one by one).
    pub endpoints: Vec<Endpoint>,
    /// The companion collector service: one URL serving the encoded snapshot, polled instead of scraping
    /// every pod. Split into the parts an HTTP callout needs.
    pub discovery: Option<DiscoveryConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Proxy cluster that reaches the collector service.
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// The in-proxy collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CollectorConfig {
    pub mode: CollectorMode,
    /// Scrape period (GIE: 50 ms).
    pub interval_ms: u64,
    /// Per-scrape timeout (GIE: 1 s).
    pub timeout_ms: u64,
    /// Proxy cluster for scrapes: an ORIGINAL_DST cluster keyed by `hostHeader` reaches any pod.
    pub cluster: String,
    /// Header carrying `ip:port` for the ORIGINAL_DST scrape cluster.
    pub host_header: String,
    pub metrics_path: String,
    /// Leader lease lifetime when leader-elected; a dead leader is replaced after this.
    pub lease_ttl_ms: u64,
}

impl Default for CollectorConfig {
    fn default() -> CollectorConfig {
        CollectorConfig {
            mode: CollectorMode::Singleton,
            interval_ms: 50,
            timeout_ms: 1_000,
            cluster: String::from("epp-metrics"),
            host_header: String::from("x-envoy-original-dst-host"),
            metrics_path: String::from("/metrics"),
            lease_ttl_ms: 500,
        }
    }
}

/// Header names and how many addresses go into the destination header.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingConfig {
    pub destination_header: String,
    /// 1 (default): one `ip:port`, what ORIGINAL_DST, agentgateway and NGINX accept. More: a comma list,
    /// primary first, for Envoy's override_host policy to retry in order.
    pub max_endpoints: usize,
    pub prefill_header: String,
    /// Response header telling the client (and tests) which endpoint served the request.
    pub served_header: String,
    pub served_from: ServedFrom,
}

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            destination_header: String::from("x-gateway-destination-endpoint"),
            max_endpoints: 1,
            prefill_header: String::from("x-prefiller-host-port"),
            served_header: String::from("x-gateway-destination-endpoint-served"),
            served_from: ServedFrom::Proxy,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FailOpenConfig {
    pub strategy: FailOpenStrategy,
}

impl Default for FailOpenConfig {
    fn default() -> FailOpenConfig {
        FailOpenConfig { strategy: FailOpenStrategy::RoundRobin }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// Request bodies larger than this get 413 (set it at or below Envoy's buffer limit).
    pub max_body_bytes: usize,
    /// A snapshot older than this is stale: the picker fails open (or closed).
    pub snapshot_max_age_ms: u64,
    /// Response bodies are read (usage counted, the client's model name put back after a rewrite) up to
    /// this size and pass through untouched past it. A JSON answer whose model is put back is held until
    /// its end, in the proxy's buffer: keep this below the proxy's buffer limit (Envoy's default
    /// per-connection limit is 1 MiB).
    pub max_response_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_body_bytes: 4 * 1024 * 1024,
            snapshot_max_age_ms: 5_000,
            max_response_body_bytes: 256 * 1024,
        }
    }
}

/// Everything a picker deployment is configured with.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub picker: EndpointPickerConfig,
    pub pool: PoolConfig,
    pub collector: CollectorConfig,
    pub routing: RoutingConfig,
    pub failure_mode: FailureMode,
    pub fail_open: FailOpenConfig,
    pub limits: LimitsConfig,
    pub objectives: ObjectivePriorities,
    pub rewrites: ModelRewrites,
    /// Which endpoints get no traffic (failing scrapes, stale metrics, the gateway's own failures).
    pub health: HealthConfig,
    /// Which request bodies are read, from llm-d's parser list (a passthrough parser leaves the bodies
    /// it claims unread).
    pub parsers: RequestParsers,
    /// Body-based routing (`bbr`): body fields promoted to headers before the route is chosen; `None`
    /// when the section is absent (a `bbr` root id then runs GIE's default).
    pub bbr: Option<crate::bbr::BodyRouting>,
    /// `pools`: one picker for several pools ([`super::pools`]); empty for the usual single pool
    /// (`pool`). When set, the sections above that act before a pool is chosen (`routing`, `limits`,
    /// `bbr`) are the ones in use, and each pool decides with its entry's configuration.
    pub pools: Vec<super::pools::PoolEntry>,
}

impl GatewayConfig {
    /// Parses the JSON document. Blank text or `{}` means every default (the default scheduling,
    /// [`crate::config::DEFAULT_SCHEDULING`]; no static endpoints).
    pub fn from_json(text: &str) -> Result<GatewayConfig, ConfigError> {
        let value: Value = if text.trim().is_empty() {
            Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(text).map_err(|e| {
                ConfigError::new("configuration", "a JSON object", Some(format!("invalid JSON: {e}")))
            })?
        };
        GatewayConfig::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<GatewayConfig, ConfigError> {
        let Value::Object(map) = value else {
            return Err(ConfigError::new("configuration", "a JSON object", Some(json_repr(value))));
        };
        if let Some(list) = map.get("pools") {
            // The top level alone first: its errors are its own, not every entry's.
            let top: serde_json::Map<String, Value> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "pools")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut front = GatewayConfig::from_value(&Value::Object(top))?;
            front.pools = super::pools::parse(map, list)?;
            return Ok(front);
        }
        let null = Value::Null;
        let section = |name: &str| map.get(name).unwrap_or(&null);

        let picker = EndpointPickerConfig::from_value(value, OWN_SECTIONS)?;
        let pool = parse_pool(section("pool"))?;
        let collector: CollectorConfig = parse_params(section("collector")).map_err(|e| e.at("collector"))?;
        if collector.interval_ms == 0 {
            return Err(ConfigError::new(
                "collector.intervalMs",
                "a period in ms > 0",
                Some(String::from("0")),
            ));
        }
        if collector.timeout_ms == 0 {
            return Err(ConfigError::new(
                "collector.timeoutMs",
                "a timeout in ms > 0",
                Some(String::from("0")),
            ));
        }
        let collector = with_metrics_source(collector, section("collector"), &picker)?;
        let routing: RoutingConfig = parse_params(section("routing")).map_err(|e| e.at("routing"))?;
        if routing.max_endpoints == 0 {
            return Err(ConfigError::new("routing.maxEndpoints", "an integer >= 1", Some(String::from("0"))));
        }
        if routing.served_from == ServedFrom::Destination && routing.max_endpoints > 1 {
            return Err(ConfigError::new(
                "routing.servedFrom",
                "\"proxy\" with routing.maxEndpoints > 1 (the cluster may serve any listed endpoint)",
                Some(String::from("\"destination\"")),
            ));
        }
        for (field, name) in [
            ("routing.destinationHeader", &routing.destination_header),
            ("routing.prefillHeader", &routing.prefill_header),
            ("routing.servedHeader", &routing.served_header),
        ] {
            if !is_header_name(name) {
                return Err(ConfigError::new(
                    field,
                    "a lower-case HTTP header name",
                    Some(format!("{name:?}")),
                ));
            }
        }
        let failure_mode = match map.get("failureMode") {
            None | Some(Value::Null) => FailureMode::FailOpen,
            Some(v) => FailureMode::deserialize(v).map_err(|_| {
                ConfigError::new("failureMode", "\"FailOpen\" or \"FailClose\"", Some(json_repr(v)))
            })?,
        };
        let fail_open: FailOpenConfig = parse_params(section("failOpen")).map_err(|e| e.at("failOpen"))?;
        let limits: LimitsConfig = parse_params(section("limits")).map_err(|e| e.at("limits"))?;
        if limits.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "limits.maxBodyBytes",
                "a size in bytes > 0",
                Some(String::from("0")),
            ));
        }
        let objectives = match section("objectives") {
            Value::Null => ObjectivePriorities::default(),
            v => ObjectivePriorities::new(Vec::<Objective>::deserialize(v).map_err(|e| {
                ConfigError::new(
                    "objectives",
                    "a list of {\"name\": string, \"priority\": integer}",
                    Some(format!("{e}")),
                )
            })?),
        };
        let rewrites = match section("modelRewrites") {
            Value::Null => ModelRewrites::default(),
            v => ModelRewrites::new(Vec::<InferenceModelRewrite>::deserialize(v).map_err(|e| {
                ConfigError::new(
                    "modelRewrites",
                    "a list of InferenceModelRewrite specs ({\"rules\": [...]})",
                    Some(format!("{e}")),
                )
            })?)
            .map_err(|e| ConfigError {
                path: format!("modelRewrites{}", e.path.trim_start_matches("rewrites")),
                ..e
            })?,
        };
        let health = HealthConfig::from_value(section("health")).map_err(|e| e.at("health"))?;
        let parsers = RequestParsers::of(&picker);
        let bbr = map.get("bbr").map(crate::bbr::BodyRouting::from_value).transpose()?;
        Ok(GatewayConfig {
            picker,
            pool,
            collector,
            routing,
            failure_mode,
            fail_open,
            limits,
            objectives,
            rewrites,
            health,
            parsers,
            bbr,
            pools: Vec::new(),
        })
    }
}

/// llm-d's `metrics-data-source` tells the collector what to scrape: its `path` and `interval` become
/// `collector.metricsPath` and `collector.intervalMs`, unless the collector section sets them otherwise
/// (an error naming both). One source only: the collector scrapes each endpoint once.
fn with_metrics_source(
    mut collector: CollectorConfig,
    own: &Value,
    picker: &EndpointPickerConfig,
) -> Result<CollectorConfig, ConfigError> {
    let mut sources = picker.plugins.iter().enumerate().filter(|(_, p)| p.type_name == METRICS_DATA_SOURCE);
    let Some((i, spec)) = sources.next() else { return Ok(collector) };
    if let Some((j, _)) = sources.next() {
        return Err(ConfigError::new(
            format!("plugins[{j}].type"),
            format!("one {METRICS_DATA_SOURCE} (the collector scrapes each endpoint once)"),
            Some(format!("a second one, after plugins[{i}]")),
        ));
    }
    let at = format!("plugins[{i}].parameters");
    let source = metrics_source(&spec.parameters).map_err(|e| e.at(&at))?;
    let conflict = |field: &str, ours: String, theirs: String| {
        ConfigError::new(
            format!("collector.{field}"),
            format!("the value {at} sets ({theirs}), or no collector.{field}"),
            Some(ours),
        )
    };
    if let Some(path) = source.path {
        if own.get("metricsPath").is_some() && collector.metrics_path != path {
            return Err(conflict(
                "metricsPath",
                format!("{:?}", collector.metrics_path),
                format!("{path:?}"),
            ));
        }
        collector.metrics_path = path;
    }
    if let Some(ms) = source.interval_ms {
        if own.get("intervalMs").is_some() && collector.interval_ms != ms {
            return Err(conflict("intervalMs", format!("{}", collector.interval_ms), format!("{ms} ms")));
        }
        collector.interval_ms = ms;
    }
    Ok(collector)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn parse_pool(v: &Value) -> Result<PoolConfig, ConfigError> {
    let spec: PoolSpec = parse_params(v).map_err(|e| e.at("pool"))?;
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(spec.endpoints.len());
    for (i, raw) in spec.endpoints.iter().enumerate() {
        let path = format!("pool.endpoints[{i}]");
        let e: EndpointSpec = match raw {
            // Shorthand: a bare "ip:port" string.
            Value::String(s) => EndpointSpec { address: s.clone(), engine: None, role: None, labels: None },
            other => parse_params(other).map_err(|e| e.at(&path))?,
        };
        validate_address(&e.address).map_err(|err| {
            ConfigError::new(
                format!("{path}.address"),
                "ipv4:port or [ipv6]:port",
                Some(format!("{:?} ({})", e.address, err.reason)),
            )
        })?;
        if endpoints.iter().any(|x| x.address == e.address) {
            return Err(ConfigError::new(
                format!("{path}.address"),
                "an address not listed before",
                Some(format!("{:?}", e.address)),
            ));
        }
        let engine = match e.engine.as_deref() {
            None => Engine::default(),
            Some(s) => Engine::parse(s).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.engine"),
                    "one of vllm, sglang, trtllm-serve, triton-tensorrt-llm",
                    Some(format!("{s:?}")),
                )
            })?,
        };
        let role = match e.role.as_deref() {
            None => Role::default(),
            Some(s) => Role::parse(s).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.role"),
                    "one of both, prefill, decode",
                    Some(format!("{s:?}")),
                )
            })?,
        };
        let mut labels: Vec<(String, String)> = Vec::new();
        for (k, val) in e.labels.iter().flatten() {
            let Value::String(s) = val else {
                return Err(ConfigError::new(format!("{path}.labels.{k}"), "a string", Some(json_repr(val))));
            };
            labels.push((k.clone(), s.clone()));
        }
        labels.sort();
        endpoints.push(Endpoint { address: e.address, role, engine, labels });
    }
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    let discovery = match (spec.discovery_url, spec.discovery_cluster) {
        (None, None) => None,
        (Some(url), cluster) => Some(parse_discovery(&url, cluster)?),
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "pool.discoveryUrl",
                "a URL when pool.discoveryCluster is set",
                None,
            ))
        }
    };
    Ok(PoolConfig { name: spec.name, endpoints, discovery })
}

/// `http://authority/path` → callout parts; the cluster defaults to the authority's host.
fn parse_discovery(url: &str, cluster: Option<String>) -> Result<DiscoveryConfig, ConfigError> {
    let bad =
        || ConfigError::new("pool.discoveryUrl", "an http://host[:port]/path URL", Some(format!("{url:?}")));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Ok(DiscoveryConfig {
        cluster: cluster.unwrap_or_else(|| String::from(host)),
        authority: String::from(authority),
        path: String::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn err(json: &str) -> String {
        GatewayConfig::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn empty_means_defaults() {
        for text in ["", "{}", "  "] {
            let c = GatewayConfig::from_json(text).unwrap();
            assert_eq!(c.failure_mode, FailureMode::FailOpen);
            assert_eq!(c.collector.interval_ms, 50);
            assert_eq!(c.routing.destination_header, "x-gateway-destination-endpoint");
            assert_eq!(c.routing.max_endpoints, 1);
            assert!(c.pool.endpoints.is_empty());
            assert_eq!(c.picker.plugins, EndpointPickerConfig::default_scheduling().unwrap().plugins);
        }
    }

    #[test]
    fn a_gie_config_with_our_sections() {
        let c = GatewayConfig::from_json(
            r#"{"apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig",
                "plugins": [{"type": "queue-scorer"}],
                "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
                "pool": {"name": "llama", "endpoints": ["10.0.0.2:8000",
                    {"address": "10.0.0.1:8000", "engine": "sglang", "role": "decode", "labels": {"zone": "a"}}]},
                "collector": {"mode": "leader-elected", "intervalMs": 100},
                "routing": {"maxEndpoints": 3},
                "failureMode": "FailClose",
                "failOpen": {"strategy": "leave-unset"},
                "limits": {"maxBodyBytes": 1048576},
                "objectives": [{"name": "batch", "priority": -1}],
                "modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "m"}}],
                                              "targets": [{"modelRewrite": "m-v2", "weight": 1}]}]}]}"#,
        )
        .unwrap();
        assert_eq!(c.pool.name, "llama");
        assert_eq!(c.pool.endpoints[0].address, "10.0.0.1:8000", "sorted by address");
        assert_eq!(c.pool.endpoints[0].engine, Engine::Sglang);
        assert_eq!(c.pool.endpoints[0].role, Role::Decode);
        assert_eq!(c.pool.endpoints[0].label("zone"), Some("a"));
        assert_eq!(c.collector.mode, CollectorMode::LeaderElected);
        assert_eq!(c.collector.timeout_ms, 1_000);
        assert_eq!(c.routing.max_endpoints, 3);
        assert_eq!(c.failure_mode, FailureMode::FailClose);
        assert_eq!(c.fail_open.strategy, FailOpenStrategy::LeaveUnset);
        assert_eq!(c.routing.served_from, ServedFrom::Proxy);
        let trusting = GatewayConfig::from_json(r#"{"routing": {"servedFrom": "destination"}}"#).unwrap();
        assert_eq!(trusting.routing.served_from, ServedFrom::Destination);
        assert_eq!(c.limits.max_body_bytes, 1_048_576);
        assert_eq!(c.objectives.priority(Some("batch")), -1);
        assert!(!c.rewrites.is_empty());
        assert_eq!(c.picker.plugins.len(), 1);
    }

    #[test]
    fn llm_d_metrics_source_configures_the_collector() {
        let source = |params: &str, collector: &str| {
            GatewayConfig::from_json(&format!(
                r#"{{"plugins": [{{"type": "queue-scorer"}}, {{"type": "metrics-data-source", "parameters": {params}}},
                    {{"type": "core-metrics-extractor"}}]{collector}}}"#
            ))
        };
        // The Helm chart's default: what the collector does anyway.
        let c = source(r#"{"scheme": "http", "path": "/metrics", "insecureSkipVerify": true}"#, "").unwrap();
        assert_eq!((c.collector.metrics_path.as_str(), c.collector.interval_ms), ("/metrics", 50));
        let c = source(r#"{"path": "/engine/metrics", "interval": "1s"}"#, "").unwrap();
        assert_eq!((c.collector.metrics_path.as_str(), c.collector.interval_ms), ("/engine/metrics", 1_000));
        let same = r#", "collector": {"metricsPath": "/engine/metrics", "intervalMs": 1000}"#;
        assert!(source(r#"{"path": "/engine/metrics", "interval": "1s"}"#, same).is_ok());
        assert_eq!(
            source(r#"{"path": "/m"}"#, r#", "collector": {"metricsPath": "/metrics"}"#)
                .unwrap_err()
                .to_string(),
            "collector.metricsPath: expected the value plugins[1].parameters sets (\"/m\"), or no \
             collector.metricsPath, got \"/metrics\""
        );
        assert!(source(r#"{"interval": "2s"}"#, r#", "collector": {"intervalMs": 100}"#)
            .unwrap_err()
            .to_string()
            .starts_with("collector.intervalMs: expected the value plugins[1].parameters sets (2000 ms)"));
        assert!(source(r#"{"scheme": "https"}"#, "")
            .unwrap_err()
            .to_string()
            .starts_with("plugins[1].parameters.scheme: expected \"http\""));
        let two = GatewayConfig::from_json(
            r#"{"plugins": [{"type": "metrics-data-source"}, {"name": "b", "type": "metrics-data-source"}]}"#,
        );
        assert!(two
            .unwrap_err()
            .to_string()
            .starts_with("plugins[1].type: expected one metrics-data-source"));
    }

    #[test]
    fn discovery_url() {
        let c =
            GatewayConfig::from_json(r#"{"pool": {"discoveryUrl": "http://epp-collector:9090/snapshot"}}"#)
                .unwrap();
        assert_eq!(
            c.pool.discovery,
            Some(DiscoveryConfig {
                cluster: String::from("epp-collector"),
                authority: String::from("epp-collector:9090"),
                path: String::from("/snapshot"),
            })
        );
        assert!(
            err(r#"{"pool": {"discoveryUrl": "https://x/y"}}"#).starts_with("pool.discoveryUrl: expected")
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(r#"{"pool": {"endpoints": ["10.0.0.1"]}}"#),
            "pool.endpoints[0].address: expected ipv4:port or [ipv6]:port, got \"10.0.0.1\" (missing :port)"
        );
        assert!(err(r#"{"pool": {"endpoints": [{"address": "10.0.0.1:80", "engine": "tgi"}]}}"#)
            .starts_with("pool.endpoints[0].engine: expected one of vllm"));
        assert!(err(r#"{"pool": {"endpoints": ["10.0.0.1:80", "10.0.0.1:80"]}}"#)
            .starts_with("pool.endpoints[1].address: expected an address not listed before"));
        assert!(err(r#"{"collector": {"intervalMs": "fast"}}"#).starts_with("collector.intervalMs: expected"));
        assert!(
            err(r#"{"collector": {"intervalMS": 5}}"#).starts_with("collector.intervalMS: expected one of")
        );
        assert_eq!(
            err(r#"{"collector": {"intervalMs": 0}}"#),
            "collector.intervalMs: expected a period in ms > 0, got 0"
        );
        assert!(err(r#"{"collector": {"mode": "sometimes"}}"#).starts_with("collector.mode: expected"));
        assert_eq!(
            err(r#"{"failureMode": "FailSoft"}"#),
            "failureMode: expected \"FailOpen\" or \"FailClose\", got \"FailSoft\""
        );
        assert!(err(r#"{"routing": {"destinationHeader": "X Bad"}}"#)
            .starts_with("routing.destinationHeader: expected a lower-case HTTP header name"));
        assert_eq!(
            err(r#"{"routing": {"maxEndpoints": 0}}"#),
            "routing.maxEndpoints: expected an integer >= 1, got 0"
        );
        assert!(err(r#"{"routing": {"servedFrom": "upstream"}}"#).starts_with("routing.servedFrom: expected"));
        assert_eq!(
            err(r#"{"routing": {"servedFrom": "destination", "maxEndpoints": 2}}"#),
            "routing.servedFrom: expected \"proxy\" with routing.maxEndpoints > 1 (the cluster may serve any \
             listed endpoint), got \"destination\""
        );
        assert!(err("[1]").starts_with("configuration: expected a JSON object"));
        assert!(err("{").starts_with("configuration: expected a JSON object, got invalid JSON"));
        assert!(err(
            r#"{"modelRewrites": [{"rules": [{"targets": [{"modelRewrite": "x", "weight": 0}]}]}]}"#
        )
        .starts_with("modelRewrites[0].rules[0]"));
    }
}
