//! Shared setup for the integration tests: the filter built for wasm32-wasip1 once per test process, and
//! shorthands for plugins, requests, metrics pages and snapshots.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use proxy_wasm_emulator::{
    build_wasm_crate, workspace_root, CalloutResponse, Host, HttpStream, Plugin, StreamId, VmId,
};
use scheduler_core::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
use scheduler_core::snapshot_codec;

pub const VM_ID: &str = "epp";
pub const SCRAPE_CLUSTER: &str = "epp-metrics";
pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const CHAT: &str =
    r#"{"model": "llama", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}"#;

pub fn wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = workspace_root();
        build_wasm_crate(&root.join("filter/Cargo.toml"), "epp_filter", &root.join("target/filter-wasm"))
            .unwrap_or_else(|e| panic!("building the filter failed: {e}"))
    })
    .clone()
}

/// A host with the scrape cluster, a 1 MiB buffer limit and the clock at 2026-01-01.
pub fn host() -> Host {
    Host::builder().cluster(SCRAPE_CLUSTER).build()
}

pub fn picker(config: &str) -> Plugin {
    Plugin::new(wasm())
        .root_id("picker")
        .vm_id(VM_ID)
        .configuration(config)
        .allow_on_headers_stop_iteration(true)
}

pub fn collector(config: &str) -> Plugin {
    Plugin::new(wasm()).root_id("collector").vm_id(VM_ID).configuration(config)
}

/// `n` static endpoints `10.0.0.{1..n}:8000` plus `extra` top-level JSON members.
pub fn config(n: usize, extra: &str) -> String {
    let endpoints: Vec<String> = (1..=n).map(|i| format!("\"10.0.0.{i}:8000\"")).collect();
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"pool": {{"name": "pool", "endpoints": [{}]}}{sep}{extra}}}"#, endpoints.join(","))
}

pub fn addr(i: usize) -> String {
    format!("10.0.0.{i}:8000")
}

pub fn vllm(waiting: u32, kv: f64) -> String {
    format!(
        "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"llama\"}} {waiting}\n\
         vllm:num_requests_running{{model_name=\"llama\"}} 2\nvllm:kv_cache_usage_perc{{model_name=\"llama\"}} {kv}\n"
    )
}

/// Answers every pending scrape with the page `page(address)` returns (None: leave it pending).
pub fn answer_scrapes(host: &mut Host, page: impl Fn(&str) -> Option<CalloutResponse>) -> usize {
    let mut n = 0;
    for call in host.pending_callouts() {
        let target = call.header(":authority").unwrap_or_default().to_string();
        if let Some(response) = page(&target) {
            host.answer_callout(call.id, response).unwrap();
            n += 1;
        }
    }
    n
}

/// A collector tick (50 ms) and every endpoint answering with its queue length from `queues`.
pub fn scrape_round(host: &mut Host, queues: &[u32]) {
    host.advance(Duration::from_millis(50));
    answer_scrapes(host, |a| {
        let i = (1..=queues.len()).find(|i| addr(*i) == a)?;
        Some(CalloutResponse::new(200).body(vllm(queues[i - 1], 0.2)))
    });
}

/// Writes a snapshot straight into shared data (as the collector service would), fresh at the host clock.
pub fn write_snapshot(host: &mut Host, generation: u64, queues: &[u32]) {
    let now = now_ms(host);
    let endpoints = queues
        .iter()
        .enumerate()
        .map(|(i, &w)| EndpointState {
            metrics: Some(Metrics { waiting: w, kv_usage: 0.2, updated_at_ms: now, ..Metrics::default() }),
            ..EndpointState::new(Endpoint::new(addr(i + 1)))
        })
        .collect();
    let s = PoolSnapshot {
        generation,
        published_at_ms: now,
        pool: "pool".into(),
        endpoints,
        ..PoolSnapshot::default()
    };
    host.set_shared_data(VM_ID, "epp/pool/snapshot", &snapshot_codec::encode(&s));
    host.set_shared_data(VM_ID, "epp/pool/generation", &generation.to_le_bytes());
    // A worker reads the generation at most once per millisecond: the next request comes a little later.
    host.advance(std::time::Duration::from_millis(1));
}

pub fn now_ms(host: &Host) -> u64 {
    proxy_wasm_emulator::host::DEFAULT_START_UNIX_NS / 1_000_000 + host.now().as_millis() as u64
}

pub fn published(host: &Host) -> Option<PoolSnapshot> {
    let (bytes, _) = host.shared_data(VM_ID, "epp/pool/snapshot")?;
    snapshot_codec::decode(&bytes).ok()
}

pub fn chat_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", "POST"),
        (":path", CHAT_PATH),
        (":authority", "gateway"),
        ("content-type", "application/json"),
    ];
    h.extend_from_slice(extra);
    h
}

/// A whole chat request; returns the stream.
pub fn chat(host: &mut Host, vm: VmId, body: &str, extra: &[(&str, &str)]) -> StreamId {
    host.request(vm, &chat_headers(extra), body.as_bytes()).unwrap()
}

pub fn destination(s: &HttpStream) -> Option<&str> {
    s.upstream_header("x-gateway-destination-endpoint")
}

pub fn reply_body(s: &HttpStream) -> serde_json::Value {
    let r = s.local_reply.as_ref().unwrap_or_else(|| panic!("no local reply: {s:?}"));
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {:?}", r.body))
}

/// Sum of this pool's in-flight requests over every worker's table.
pub fn in_flight_total(host: &Host) -> u32 {
    host.shared_data_all(VM_ID)
        .iter()
        .filter(|(k, _)| k.starts_with("epp/pool/inflight/"))
        .map(|(_, (v, _))| {
            let t = scheduler_core::shared_state::InFlightTable::decode(v).unwrap();
            t.iter().map(|(_, f)| f.requests).sum::<u32>()
        })
        .sum()
}

pub fn assert_no_traps(host: &Host) {
    assert!(host.traps().is_empty(), "traps: {:?}", host.traps());
}

/// A whole chat request; returns the stream's final state.
pub fn send(host: &mut Host, vm: VmId, body: &str, extra: &[(&str, &str)]) -> HttpStream {
    let s = chat(host, vm, body, extra);
    host.stream(s)
}

/// A request without a body; returns the stream's final state.
pub fn send_headers(host: &mut Host, vm: VmId, headers: &[(&str, &str)]) -> HttpStream {
    let s = host.start_request(vm, headers, true).unwrap();
    host.stream(s)
}
