//! Flow control in the Wasm filter, in a real Envoy with two worker threads (two VMs) in front of
//! `model-sim` replicas that take a while to answer: requests over the pool's capacity wait paused in
//! the gateway and go in priority order across workers; a full queue refuses with 429 and an OpenAI
//! error; a client that leaves frees its place; a listener update that brings a new VM drops nothing.
//!
//! Order is read from the filter's own queue gauges (Envoy's admin `/stats`), not from timing: each
//! time capacity frees, exactly which band's gauge went down says which request was dispatched.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, ModelSim, Request, Response};
use serde_json::{json, Value};
use std::path::Path;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const QUEUE: &str = "wasmcustom.epp_flow_control_queue_size";
const IN_FLIGHT: &str = "wasmcustom.epp_in_flight_requests";
const REQUESTS: &str = "wasmcustom.epp_flow_control_requests";

/// Replicas that answer every completion after `delay_ms` (wall time), so requests hold their place.
fn slow_sims(n: usize, delay_ms: u64) -> Vec<ModelSim> {
    ModelSim::start_many(n, |_| {
        ["--time-scale", "0.05", "--default-output-tokens", "4", "--response-delay-ms", &delay_ms.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    })
    .unwrap()
}

/// Each replica saturated at one request in flight (the concurrency detector): capacity = replicas.
fn fc_config(sims: &[ModelSim], flow_control: Value) -> String {
    let mut fc =
        json!({"saturationDetector": {"pluginRef": "concurrency-detector"}, "defaultRequestTTL": "60s"});
    if let (Some(into), Value::Object(more)) = (fc.as_object_mut(), flow_control) {
        into.extend(more);
    }
    json!({
        "pool": {"name": "e2e", "endpoints": sims.iter().map(|s| s.addr()).collect::<Vec<_>>()},
        "collector": {"intervalMs": 50, "timeoutMs": 500},
        // The replicas answer slowly on purpose: that is not a failing endpoint.
        "health": {"firstByteTimeoutMs": 30000},
        "featureGates": ["flowControl"],
        "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"},
                    {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}],
        "flowControl": fc,
        "objectives": [{"name": "high", "priority": 10}],
    })
    .to_string()
}

fn start(wasm: &Path, config: &str) -> Envoy {
    let template = EnvoyTemplate::load("wasm-picker/envoy.yaml").unwrap().wasm(wasm).gateway_config(config);
    let envoy = Envoy::start(&template, &EnvoyOptions { concurrency: 2, ..EnvoyOptions::default() }).unwrap();
    // Let the collector publish a snapshot before traffic.
    thread::sleep(Duration::from_millis(800));
    envoy
}

fn completion(tag: &str, high: bool) -> Request {
    let r = Request::post_json(
        "/v1/completions",
        json!({"model": MODEL, "prompt": tag, "max_tokens": 4}).to_string(),
    )
    .header("x-request-id", tag)
    .timeout(Duration::from_secs(90));
    if high {
        r.header("x-gateway-inference-objective", "high")
    } else {
        r
    }
}

/// Sends on its own connection, in the background.
fn send_async(listener: &str, request: Request) -> JoinHandle<Result<Response, String>> {
    let listener = listener.to_string();
    thread::spawn(move || request.send(&listener))
}

/// The filter's queue gauges (one admin call, so both bands are read at the same instant).
fn queued(envoy: &Envoy) -> (u64, u64) {
    let text = Request::get(&format!("/stats?filter={QUEUE}"))
        .timeout(Duration::from_secs(5))
        .send(envoy.admin())
        .map(|r| r.text())
        .unwrap_or_default();
    let read = |band: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{QUEUE}.{band}: "))?.trim().parse().ok())
            .unwrap_or(0)
    };
    (read("band_10"), read("band_0"))
}

/// Polls `what` every 10 ms until it holds, or fails after `limit`.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_burst_of_three_times_capacity_is_served_in_priority_order_and_a_full_queue_refuses_429() {
    let wasm = require!(filter);
    let sims = slow_sims(2, 1_200);
    let envoy = start(&wasm, &fc_config(&sims, json!({"maxRequests": 8})));
    let listener = envoy.listener().to_string();

    // Capacity 2, taken by two requests started apart, so places free one at a time.
    let mut handles = vec![send_async(&listener, completion("fill-0", false))];
    thread::sleep(Duration::from_millis(600));
    handles.push(send_async(&listener, completion("fill-1", false)));
    wait_until(Duration::from_secs(10), "two requests in flight", || envoy.stat(IN_FLIGHT) == Some(2));
    // Then four default (priority 0) requests, and after them four high ones: eight waiting, the queue's
    // whole capacity, over both workers.
    for i in 0..4 {
        handles.push(send_async(&listener, completion(&format!("low-{i}"), false)));
        thread::sleep(Duration::from_millis(20));
    }
    for i in 0..4 {
        handles.push(send_async(&listener, completion(&format!("high-{i}"), true)));
        thread::sleep(Duration::from_millis(20));
    }
    wait_until(Duration::from_secs(10), "eight requests queued", || queued(&envoy) == (4, 4));

    // One more: the queue is full.
    let refused = envoy.send(&completion("one-too-many", false)).unwrap();
    assert_eq!(refused.status, 429, "{}", refused.text());
    let err: Value = serde_json::from_slice(&refused.body).unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("queue is full"), "{err}");
    assert_eq!(refused.header("content-type"), Some("application/json"));

    // As places free, every high request goes before any default one, whichever worker holds it.
    let mut seen = queued(&envoy);
    let mut drops = Vec::new();
    let mut most_in_flight = 0;
    wait_until(Duration::from_secs(60), "the queue to drain", || {
        most_in_flight = most_in_flight.max(envoy.stat(IN_FLIGHT).unwrap_or(0));
        let now = queued(&envoy);
        if now.1 < seen.1 {
            assert_eq!(
                now.0, 0,
                "a default request left the queue while high ones waited: {seen:?} -> {now:?}"
            );
        }
        if now != seen {
            drops.push(now);
            seen = now;
        }
        now == (0, 0)
    });
    eprintln!("queue gauges (high, default) after each change: {drops:?}; most in flight: {most_in_flight}");
    // Capacity 2; two workers deciding on the same millisecond's counts may each take the last place
    // (docs/flow-control.md): never more than one request per worker over.
    assert!(most_in_flight <= 2 + 2, "in flight: {most_in_flight}");
    for h in handles {
        let r = h.join().unwrap().unwrap();
        assert_eq!(r.status, 200, "nothing lost: {}", r.text());
    }
    assert_eq!(envoy.stat(&format!("{REQUESTS}.RejectedCapacity")), Some(1));
    assert_eq!(envoy.stat(&format!("{REQUESTS}.Dispatched")), Some(8), "dispatch steps: {drops:?}");
    wait_until(Duration::from_secs(5), "in-flight gauge at zero", || envoy.stat(IN_FLIGHT) == Some(0));
    let log = envoy.process().log();
    assert!(!log.contains("not readable at dispatch"), "bodies are read through the stream's context");
}

#[test]
fn a_client_that_leaves_while_waiting_leaves_queue_and_in_flight_at_zero() {
    let wasm = require!(filter);
    let sims = slow_sims(1, 1_500);
    let envoy = start(&wasm, &fc_config(&sims, json!({})));
    let listener = envoy.listener().to_string();
    let running = send_async(&listener, completion("running", false));
    wait_until(Duration::from_secs(10), "one request in flight", || envoy.stat(IN_FLIGHT) == Some(1));
    // The client gives up after 300 ms and closes its connection while its request waits.
    let gone = completion("impatient", true).timeout(Duration::from_millis(300)).send(&listener);
    assert!(gone.is_err(), "it waited, so no answer came: {gone:?}");
    wait_until(Duration::from_secs(5), "its place freed", || queued(&envoy) == (0, 0));
    assert_eq!(envoy.stat(&format!("{REQUESTS}.EvictedContextCancelled")), Some(1));
    assert_eq!(running.join().unwrap().unwrap().status, 200);
    wait_until(Duration::from_secs(5), "in-flight gauge at zero", || envoy.stat(IN_FLIGHT) == Some(0));
    // Nothing was sent upstream for it: the pool saw the one request.
    assert_eq!(envoy.stat("cluster.pool.upstream_rq_total"), Some(1));
}

/// The gateway with its listener from a file (LDS): replacing the file swaps the filter, here onto new
/// VMs (another VM configuration), for new connections, while the old ones keep theirs.
const LDS_BOOTSTRAP: &str = r#"
node: {id: e2e-gateway, cluster: e2e}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_ADMIN}}}}}
bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: collector
      root_id: collector
      configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: {{GATEWAY_CONFIG}}}
      vm_config: {vm_id: epp, runtime: envoy.wasm.runtime.v8, code: {local: {filename: "{{WASM_PATH}}"}}}
dynamic_resources:
  lds_config:
    resource_api_version: V3
    path_config_source: {path: "{{LDS_PATH}}"}
static_resources:
  clusters:
  - name: pool
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {use_http_header: true, http_header_name: x-gateway-destination-endpoint}
  - name: epp-metrics
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: {use_http_header: true}
"#;

/// `generation` goes into `vm_config.configuration`, part of the key Envoy finds a VM by (with the
/// `vm_id` and the code): a new value means new VMs, with the same shared data (same `vm_id`).
fn lds(port: u16, wasm: &Path, config: &str, generation: &str) -> String {
    let filter = json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "picker", "root_id": "picker", "allow_on_headers_stop_iteration": true,
                "failure_policy": "FAIL_CLOSED",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
                "vm_config": {"vm_id": "epp", "runtime": "envoy.wasm.runtime.v8",
                              "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": generation},
                              "code": {"local": {"filename": wasm.display().to_string()}}}
            }
        }
    });
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "gateway",
            "route_config": {"name": "gateway", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/", "headers": [{"name": "x-gateway-destination-endpoint", "present_match": true}]},
                 "route": {"cluster": "pool", "timeout": "600s"}},
                {"match": {"prefix": "/"}, "direct_response": {"status": 503}}]}]},
            "http_filters": [filter, {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }
    });
    json!({"resources": [{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm]}]
    }]})
    .to_string()
}

/// Replaces the LDS file the way Envoy notices: a new file moved over the old one.
fn write_lds(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp.json");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_filter_update_that_brings_new_vms_drops_no_waiting_request() {
    let wasm = require!(filter);
    let sims = slow_sims(1, 1_500);
    let config = fc_config(&sims, json!({}));
    let dir = e2e::workspace_root().join("target/e2e-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let stem = format!("fc-reload-{}", std::process::id());
    let lds_path = dir.join(format!("{stem}-lds.json"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    write_lds(&lds_path, &lds(port, &wasm, &config, "generation-1"));
    let template = EnvoyTemplate::inline("fc-reload", LDS_BOOTSTRAP)
        .wasm(&wasm)
        .gateway_config(&config)
        .set("LDS_PATH", lds_path.display().to_string());
    let envoy = Envoy::start(&template, &EnvoyOptions { concurrency: 2, ..EnvoyOptions::default() }).unwrap();
    thread::sleep(Duration::from_millis(800));
    let listener = format!("127.0.0.1:{port}");

    let mut handles = vec![send_async(&listener, completion("running", false))];
    wait_until(Duration::from_secs(10), "one request in flight", || envoy.stat(IN_FLIGHT) == Some(1));
    for (i, high) in [false, true, false].into_iter().enumerate() {
        handles.push(send_async(&listener, completion(&format!("waiting-{i}"), high)));
        thread::sleep(Duration::from_millis(20));
    }
    wait_until(Duration::from_secs(10), "three requests queued", || {
        let (h, l) = queued(&envoy);
        h + l == 3
    });

    // The filter moves to new VMs (a new VM configuration), for new connections.
    let joins = |envoy: &Envoy| envoy.process().log().matches("joined pool").count();
    let joined_before = joins(&envoy);
    let before = envoy.stat("listener_manager.lds.update_success").unwrap_or(0);
    write_lds(&lds_path, &lds(port, &wasm, &config, "generation-2"));
    wait_until(Duration::from_secs(20), "the listener update", || {
        envoy.stat("listener_manager.lds.update_success").unwrap_or(0) > before
    });
    for i in 0..2 {
        handles.push(send_async(&listener, completion(&format!("after-{i}"), false)));
        thread::sleep(Duration::from_millis(20));
    }

    // Every request is answered: the old VMs go on dispatching what they queued, the new ones theirs,
    // one pool capacity between them (same vm_id, same shared data).
    for h in handles {
        let r = h.join().unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_until(Duration::from_secs(5), "queues empty", || queued(&envoy) == (0, 0));
    wait_until(Duration::from_secs(5), "in-flight gauge at zero", || envoy.stat(IN_FLIGHT) == Some(0));
    let log = envoy.process().log();
    // The requests after the update ran in new VMs: a worker joined after it.
    assert!(joins(&envoy) > joined_before, "no new VM served a request after the update");
    assert!(!log.contains("waiting requests 503"), "no waiting request was answered 503");
    let _ = std::fs::remove_file(&lds_path);
}
