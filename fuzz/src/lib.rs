//! What the fuzz targets share: the API paths, a small fresh pool, and the configurations the
//! lifecycle targets run under. The targets themselves are in `fuzz_targets/`, one per input surface.

use scheduler_core::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};

// The shim's pure parts, compiled from its own source files (see Cargo.toml): `machine` reaches its
// siblings as `super::body` and `super::proto`, so the three sit side by side at this crate's root.
#[allow(dead_code)]
#[path = "../../shim-ext-proc/src/extproc/body.rs"]
mod body;
#[allow(dead_code)]
#[path = "../../shim-ext-proc/src/config.rs"]
pub mod config;
#[path = "../../shim-ext-proc/src/extproc/machine.rs"]
pub mod machine;
#[allow(dead_code)]
#[path = "../../shim-ext-proc/src/extproc/proto.rs"]
mod proto;

/// Every request API the core tells apart, plus one it does not know.
pub const PATHS: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/inference/v1/generate",
    "/openai/v1/chat/completions?x=1",
    "/other",
];

/// The clock every lifecycle target runs at (snapshots are published at this instant, so fresh).
pub const NOW_MS: u64 = 1_000_000;

/// Configurations the lifecycle targets pick from: the default, a small body limit, a model rewrite
/// (the response body is then held and rewritten), trusting the proxy's report of the upstream with
/// fallbacks, and a small response limit with session affinity.
pub const CONFIGS: [&str; 5] = [
    "",
    r#"{"limits": {"maxBodyBytes": 64}}"#,
    r#"{"modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "m"}}],
        "targets": [{"modelRewrite": "served-m"}]}]}]}"#,
    r#"{"routing": {"servedFrom": "proxy", "maxEndpoints": 3}}"#,
    r#"{"limits": {"maxResponseBodyBytes": 32},
        "plugins": [{"type": "session-affinity-scorer"}, {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "session-affinity-scorer"},
        {"pluginRef": "max-score-picker"}]}]}"#,
];

/// Three fresh endpoints with different queues.
pub fn pool() -> PoolSnapshot {
    let mut p = PoolSnapshot { generation: 1, published_at_ms: NOW_MS, ..PoolSnapshot::default() };
    for (i, waiting) in [5u32, 0, 5].into_iter().enumerate() {
        let m = Metrics { waiting, kv_usage: 0.1, updated_at_ms: NOW_MS, ..Metrics::default() };
        p.endpoints.push(EndpointState {
            metrics: Some(m),
            ..EndpointState::new(Endpoint::new(format!("10.0.0.{}:8000", i + 1)))
        });
    }
    p
}

/// Picks one of `items` by an arbitrary byte.
pub fn pick<T: Copy>(items: &[T], which: u8) -> T {
    items[usize::from(which) % items.len()]
}

/// Builds the picker a configuration describes (plugins, profiles, health) and, when it builds, has it
/// decide one chat request on [`pool`]: a configuration that parses must not break the first request.
pub fn build_and_decide(config: scheduler_core::config::gateway::GatewayConfig) {
    use scheduler_core::endpoint_picker::{EndpointPicker, RequestInfo};
    let _ = scheduler_core::exchange::ExchangeSettings::new(&config);
    let Ok(mut picker) = EndpointPicker::new(config) else { return };
    let pool = pool();
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":5}"#;
    let info = RequestInfo { path: "/v1/chat/completions", request_id: "r1", ..RequestInfo::default() };
    let view = picker.view(Some(&pool), false, NOW_MS);
    let _ = picker.decide(&info, Some(body), view, NOW_MS, 7);
}

/// Header names the request lifecycle reads or strips, for targets that build header sets.
pub const HEADER_NAMES: [&str; 11] = [
    ":path",
    "x-request-id",
    "content-type",
    "content-length",
    "content-encoding",
    "x-gateway-destination-endpoint",
    "x-gateway-model-name-rewrite",
    "x-session-token",
    "x-gateway-inference-objective",
    "x-prefiller-host-port",
    "x-gateway-destination-endpoint-served",
];

/// Content types the request and response paths tell apart.
pub const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "text/event-stream",
    "text/plain",
    "multipart/form-data; boundary=b",
    "application/vnd+json; charset=utf-8",
    "",
];

/// Request bodies that read, so sequences get past parsing often.
pub const REQUEST_BODIES: [&[u8]; 5] = [
    br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":10}"#,
    br#"{"model":"m","prompt":"once upon a time","stream":true,"stream_options":{"include_usage":true}}"#,
    br#"{"model":"other","input":"hello","max_output_tokens":4}"#,
    b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--b--\r\n",
    br#"{"model":"m","messages":"not a list"}"#,
];

/// Response bodies: JSON with usage and a model name, and server-sent events.
pub const RESPONSE_BODIES: [&[u8]; 4] = [
    br#"{"id":"x","model":"served-m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
    b"data: {\"model\":\"served-m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    b"data: {\"model\":\"served-m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
    b"data: partial line without an end",
];

/// Upstreams a proxy may report as having served a request.
pub const UPSTREAMS: [&str; 4] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.9.9.9:1", ""];

/// A body chunk: one of the known bodies (or a piece of it), or arbitrary bytes.
#[derive(arbitrary::Arbitrary, Debug)]
pub enum Chunk {
    Known { which: u8, from: u16, to: u16 },
    Raw(Vec<u8>),
}

impl Chunk {
    pub fn bytes(&self, known: &[&[u8]]) -> Vec<u8> {
        match self {
            Chunk::Known { which, from, to } => {
                let b = pick(known, *which);
                let end = usize::from(*to).min(b.len());
                let start = usize::from(*from).min(end);
                if start == 0 && end == 0 {
                    b.to_vec()
                } else {
                    b[start..end].to_vec()
                }
            }
            Chunk::Raw(b) => b.clone(),
        }
    }
}
