//! Data sources, extractors and discovery (llm-d's dataLayer): the collector and the pool section do their work.
//!
//! wasm-epp's collector (the shim's scraper, the filter's singleton or leader) scrapes every endpoint's
//! Prometheus `/metrics` and reads the engines' queue, running, KV-cache, LoRA and cache-config metrics,
//! which is what llm-d's `metrics-data-source` + `core-metrics-extractor` pair does. The source's
//! `path` and `interval` configure the collector ([`metrics_source`], applied by
//! `config::gateway`); a value the collector cannot honour is an error naming it.

use super::{only_keys, Group, Mapped, Refused};
use crate::config::params::{json_repr, parse_duration_ms, ParamError};
use crate::plugins::registry::Entry;
use crate::scheduling::{BuildContext, SectionRole};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value};

pub const METRICS_DATA_SOURCE: &str = "metrics-data-source";
pub const CORE_METRICS_EXTRACTOR: &str = "core-metrics-extractor";

/// The engine labels wasm-epp's endpoint discovery understands (llm-d's default key first).
const ENGINE_LABEL_KEYS: &[&str] = &["llm-d.ai/engine-type", "inference.networking.k8s.io/engine-type"];

/// What a `metrics-data-source` asks of the collector (`None`: the collector's own setting).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSource {
    /// `path` → `collector.metricsPath`.
    pub path: Option<String>,
    /// `interval` → `collector.intervalMs`.
    pub interval_ms: Option<u64>,
}

fn string<'v>(obj: &'v Map<String, Value>, key: &str) -> Result<Option<&'v str>, ParamError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(ParamError::new(key, "a string", Some(json_repr(v)))),
    }
}

fn boolean(obj: &Map<String, Value>, key: &str) -> Result<(), ParamError> {
    match obj.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(_)) => Ok(()),
        Some(v) => Err(ParamError::new(key, "true or false", Some(json_repr(v)))),
    }
}

/// What an HTTP poller's parameters say: scheme, path, interval in ms.
struct Poller<'v> {
    scheme: Option<&'v str>,
    path: Option<&'v str>,
    interval_ms: Option<u64>,
}

/// `scheme`, `path`, TLS settings and `interval` of an HTTP poller (llm-d's metrics and models
/// sources share them).
fn poller(obj: &Map<String, Value>) -> Result<Poller<'_>, ParamError> {
    let scheme = string(obj, "scheme")?;
    if let Some(s) = scheme.filter(|s| !matches!(*s, "http" | "https")) {
        return Err(ParamError::new("scheme", "\"http\" or \"https\"", Some(format!("{s:?}"))));
    }
    let path = string(obj, "path")?;
    if let Some(p) = path.filter(|p| !p.starts_with('/')) {
        return Err(ParamError::new("path", "a URL path starting with /", Some(format!("{p:?}"))));
    }
    boolean(obj, "insecureSkipVerify")?;
    for key in ["caCertPath", "clientCertPath", "clientKeyPath"] {
        string(obj, key)?;
    }
    let interval = match string(obj, "interval")? {
        None | Some("") => None,
        Some(text) => match parse_duration_ms(text) {
            Some(ms) if ms > 0 => Some(ms),
            _ => {
                return Err(ParamError::new(
                    "interval",
                    "a duration > 0 such as \"50ms\" or \"1s\"",
                    Some(format!("{text:?}")),
                ))
            }
        },
    };
    Ok(Poller { scheme, path, interval_ms: interval })
}

/// Reads a `metrics-data-source`'s parameters into what the collector is told, or names the parameter
/// the collector cannot honour.
pub fn metrics_source(params: &Value) -> Result<MetricsSource, ParamError> {
    let keys = [
        "scheme",
        "path",
        "port",
        "insecureSkipVerify",
        "caCertPath",
        "clientCertPath",
        "clientKeyPath",
        "interval",
    ];
    let Some(obj) = only_keys(params, &keys)? else { return Ok(MetricsSource::default()) };
    let Poller { scheme, path, interval_ms } = poller(obj)?;
    if scheme == Some("https") {
        return Err(ParamError::new(
            "scheme",
            "\"http\": wasm-epp scrapes the model servers' metrics over plain HTTP (in Envoy, TLS to them \
             belongs to the scrape cluster's transport socket, not to this setting)",
            Some(String::from("\"https\"")),
        ));
    }
    if let Some(v) = obj.get("port").filter(|v| !v.is_null()) {
        return Err(ParamError::new(
            "port",
            "no port: wasm-epp scrapes each endpoint on its serving port (the pool's target port)",
            Some(json_repr(v)),
        ));
    }
    Ok(MetricsSource { path: path.map(String::from), interval_ms })
}

fn check_metrics_source(params: &Value, _: &mut BuildContext<'_>) -> Result<(), ParamError> {
    metrics_source(params).map(|_| ())
}

/// `core-metrics-extractor`: wasm-epp reads the built-in metric names of vLLM, SGLang, trtllm-serve and
/// Triton TensorRT-LLM; the engine of an endpoint comes from its engine label, vLLM without one.
fn check_core_metrics_extractor(params: &Value, _: &mut BuildContext<'_>) -> Result<(), ParamError> {
    let Some(obj) = only_keys(params, &["engineLabelKey", "defaultEngine", "engineConfigs"])? else {
        return Ok(());
    };
    if let Some(key) = string(obj, "engineLabelKey")?.filter(|k| !ENGINE_LABEL_KEYS.contains(k)) {
        return Err(ParamError::new(
            "engineLabelKey",
            format!("a label wasm-epp reads the engine from ({})", ENGINE_LABEL_KEYS.join(" or ")),
            Some(format!("{key:?}")),
        ));
    }
    if let Some(engine) = string(obj, "defaultEngine")?.filter(|e| *e != "vllm") {
        return Err(ParamError::new(
            "defaultEngine",
            "\"vllm\", the engine of endpoints without an engine label here (label the pods, or set \
             `engine` on static endpoints)",
            Some(format!("{engine:?}")),
        ));
    }
    match obj.get("engineConfigs") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(list)) if list.is_empty() => Ok(()),
        Some(v) => Err(ParamError::new(
            "engineConfigs",
            "no engine configurations: wasm-epp reads the built-in metric names of vllm, sglang, \
             trtllm-serve and triton-tensorrt-llm, and no custom metrics",
            Some(json_repr(v)),
        )),
    }
}

/// `models-data-source`: polls each endpoint's `/v1/models`; nothing in llm-d reads the list but its
/// extractor, so wasm-epp does not poll it.
fn check_models_source(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    let keys =
        ["scheme", "path", "insecureSkipVerify", "caCertPath", "clientCertPath", "clientKeyPath", "interval"];
    if let Some(obj) = only_keys(params, &keys)? {
        poller(obj)?;
    }
    ctx.warn("", MODELS_UNUSED);
    Ok(())
}

const MODELS_UNUSED: &str = "has no effect: no scheduling plugin reads the endpoints' model lists (in llm-d \
                             neither), so wasm-epp does not poll /v1/models";

/// Parameters that llm-d's factory never reads: accepted, and named in a warning.
fn ignored(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    match params {
        Value::Null => Ok(()),
        Value::Object(o) if o.is_empty() => Ok(()),
        Value::Object(o) => {
            let keys: Vec<&str> = o.keys().map(String::as_str).collect();
            ctx.warn(
                "",
                format!("{} ignored, as in llm-d (this plugin type reads no parameters)", keys.join(", ")),
            );
            Ok(())
        }
        other => Err(ParamError::new("", "an object", Some(json_repr(other)))),
    }
}

fn check_models_extractor(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    ignored(params, ctx)?;
    ctx.warn("", MODELS_UNUSED);
    Ok(())
}

crate::upstream_mapped_plugin!(
    /// `metrics-data-source`: scrapes each endpoint's Prometheus metrics (wasm-epp's collector).
    MetricsDataSource,
    "metrics-data-source",
    DataSource,
    check_metrics_source
);
crate::upstream_mapped_plugin!(
    /// `core-metrics-extractor`: reads the engines' queue, KV-cache and LoRA metrics (the collector's
    /// per-engine tables).
    CoreMetricsExtractor,
    "core-metrics-extractor",
    Extractor,
    check_core_metrics_extractor
);
crate::upstream_mapped_plugin!(
    /// `endpoint-notification-source`: tells its extractors when endpoints come and go (pool discovery).
    EndpointNotificationSource,
    "endpoint-notification-source",
    DataSource,
    ignored
);
crate::upstream_mapped_plugin!(
    /// `models-data-source`: polls `/v1/models` (accepted, nothing reads it).
    ModelsDataSource,
    "models-data-source",
    DataSource,
    check_models_source
);
crate::upstream_mapped_plugin!(
    /// `models-data-extractor`: keeps the `/v1/models` list (accepted, nothing reads it).
    ModelsDataExtractor,
    "models-data-extractor",
    Extractor,
    check_models_extractor
);

const DCGM: &str = "GPU utilization from NVIDIA's DCGM exporter is not collected by wasm-epp; remove the \
                    dcgm-data-source, the dcgm-extractor and the endpoint-attribute filter/scorer that read \
                    GPUUtilization (kv-cache-utilization-scorer and queue-scorer weigh the servers' load)";

pub const GROUP: Group = Group {
    entries: &[
        Entry::of::<MetricsDataSource>(),
        Entry::of::<CoreMetricsExtractor>(),
        Entry::of::<EndpointNotificationSource>(),
        Entry::of::<ModelsDataSource>(),
        Entry::of::<ModelsDataExtractor>(),
    ],
    mapped: &[
        Mapped {
            type_name: METRICS_DATA_SOURCE,
            role: Some(SectionRole::DataSource),
            done_by: "the collector (the shim's scraper, the filter's singleton or leader), which scrapes every \
                      endpoint's metrics over HTTP; `path` and `interval` set collector.metricsPath and \
                      collector.intervalMs (an error if the collector section says otherwise), https and `port` \
                      are errors",
        },
        Mapped {
            type_name: CORE_METRICS_EXTRACTOR,
            role: Some(SectionRole::Extractor),
            done_by: "the collector's per-engine metric tables (vllm, sglang, trtllm-serve, triton-tensorrt-llm); \
                      `engineLabelKey` may be either engine label, `defaultEngine` only vllm, custom \
                      `engineConfigs` are errors",
        },
        Mapped {
            type_name: "endpoint-notification-source",
            role: Some(SectionRole::DataSource),
            done_by: "pool discovery, whose endpoint changes reach every part that keeps per-endpoint state",
        },
        Mapped {
            type_name: "models-data-source",
            role: Some(SectionRole::DataSource),
            done_by: "nothing: no plugin reads the model lists it polls (in llm-d neither); accepted with a warning",
        },
        Mapped {
            type_name: "models-data-extractor",
            role: Some(SectionRole::Extractor),
            done_by: "nothing: no plugin reads the model lists it keeps (in llm-d neither); accepted with a warning",
        },
    ],
    refused: &[
        Refused { type_name: "dcgm-data-source", why: DCGM },
        Refused { type_name: "dcgm-extractor", why: DCGM },
        Refused {
            type_name: "k8s-notification-source",
            why: "wasm-epp does not watch arbitrary Kubernetes resources for plugins; remove it",
        },
        Refused {
            type_name: "file-discovery",
            why: "wasm-epp does not read an endpoints file (a Wasm filter cannot read files at all); list the \
                  endpoints in the pool section (`pool.endpoints`: address, labels) or use Kubernetes discovery",
        },
        Refused {
            type_name: "mock-metrics-source",
            why: "it is a test double of llm-d's integration tests; use metrics-data-source",
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use serde_json::json;

    #[test]
    fn metrics_source_settings_or_errors_naming_the_parameter() {
        // The Helm chart's default.
        let chart = json!({"scheme": "http", "path": "/metrics", "insecureSkipVerify": true});
        assert_eq!(
            metrics_source(&chart),
            Ok(MetricsSource { path: Some(String::from("/metrics")), interval_ms: None })
        );
        assert_eq!(metrics_source(&Value::Null), Ok(MetricsSource::default()));
        assert_eq!(
            metrics_source(&json!({"path": "/vllm/metrics", "interval": "1s"})),
            Ok(MetricsSource { path: Some(String::from("/vllm/metrics")), interval_ms: Some(1_000) })
        );
        let e = |v| metrics_source(&v).unwrap_err().to_string();
        assert!(e(json!({"scheme": "https"})).starts_with("scheme: expected \"http\": wasm-epp scrapes"));
        assert_eq!(e(json!({"scheme": "ftp"})), "scheme: expected \"http\" or \"https\", got \"ftp\"");
        assert!(e(json!({"port": 9090})).starts_with("port: expected no port"));
        assert!(e(json!({"interval": "soon"})).starts_with("interval: expected a duration > 0"));
        assert!(e(json!({"path": "metrics"})).starts_with("path: expected a URL path starting with /"));
        assert!(
            e(json!({"insecureSkipVerify": "yes"})).starts_with("insecureSkipVerify: expected true or false")
        );
        assert!(e(json!({"url": "x"})).starts_with("url: expected one of the parameters"));
    }

    #[test]
    fn no_default_metrics_source_needs_a_declared_one() {
        use crate::config::EndpointPickerConfig;
        let err = EndpointPickerConfig::from_json(r#"{"dataLayer": {"injectDefaults": false}}"#).unwrap_err();
        assert_eq!(err.path, "dataLayer.injectDefaults");
        assert!(err.to_string().contains("always scrapes"), "{err}");
        let ok = r#"{"plugins": [{"name": "m", "type": "metrics-data-source"}, {"type": "core-metrics-extractor"}],
            "dataLayer": {"injectDefaults": false,
                          "sources": [{"pluginRef": "m", "extractors": [{"pluginRef": "core-metrics-extractor"}]}]}}"#;
        assert!(EndpointPickerConfig::from_json(ok).is_ok());
    }

    #[test]
    fn core_metrics_extractor_accepts_what_the_collector_does() {
        let mut shared = crate::scheduling::SharedState::default();
        let mut ctx = BuildContext::new("x", &mut shared);
        let mut check = |v: Value| check_core_metrics_extractor(&v, &mut ctx).map_err(|e| e.to_string());
        assert_eq!(check(Value::Null), Ok(()));
        assert_eq!(
            check(
                json!({"engineLabelKey": "llm-d.ai/engine-type", "defaultEngine": "vllm", "engineConfigs": []})
            ),
            Ok(())
        );
        assert!(check(json!({"engineLabelKey": "app"}))
            .unwrap_err()
            .starts_with("engineLabelKey: expected a label"));
        assert!(check(json!({"defaultEngine": "sglang"}))
            .unwrap_err()
            .starts_with("defaultEngine: expected \"vllm\""));
        assert!(check(json!({"engineConfigs": [{"name": "custom"}]}))
            .unwrap_err()
            .starts_with("engineConfigs: expected no engine configurations"));
    }
}
