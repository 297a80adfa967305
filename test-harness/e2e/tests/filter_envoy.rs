//! The Wasm filter end to end with the real proxy: `model-sim` replicas behind a real Envoy 1.40 on
//! loopback, driven by real HTTP. The first tests need only Envoy (they prove the framework and the
//! routing mechanism the picker relies on); the rest run the picker filter (`filter/`) in the
//! `envoy-config/` bootstraps. Without `.venv/bin/envoy` every test skips with a notice; `cargo xtask test`
//! installs Envoy first, so in CI they all run.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, ModelSim, Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// What model-sim serves unless told otherwise.
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Fast simulated replicas: short answers, time running 20x faster than real.
fn sim_args(extra: &[&str]) -> Vec<String> {
    ["--time-scale", "0.05", "--default-output-tokens", "8"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

fn start_sims(args: &[Vec<String>]) -> Vec<ModelSim> {
    args.iter().map(|a| ModelSim::start(&a.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()).collect()
}

fn completion(prompt: &str) -> Request {
    Request::post_json(
        "/v1/completions",
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 4}).to_string(),
    )
}

fn replica(r: &Response) -> String {
    r.header("x-model-sim-replica").unwrap_or("<none>").to_string()
}

/// How many of `n` requests each replica served (all must succeed).
fn spread(envoy: &Envoy, n: usize, request: impl Fn(usize) -> Request) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let r = envoy.send(&request(i)).unwrap();
        assert_eq!(r.status, 200, "request {i}: {} {}", r.status, r.text());
        *counts.entry(replica(&r)).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------------
// Envoy only: the mechanism under the picker.

/// The routing half of `wasm-picker/envoy.yaml` without the filter: an ORIGINAL_DST cluster keyed by the
/// destination header, so the client plays the picker.
const PLAIN_ORIGINAL_DST: &str = r#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_ADMIN}}}}}
static_resources:
  listeners:
  - name: gateway
    address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_LISTENER}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: pool, timeout: 60s}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: pool
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {use_http_header: true, http_header_name: x-gateway-destination-endpoint}
"#;

#[test]
fn plain_envoy_routes_each_request_to_the_replica_named_in_the_destination_header() {
    require!(envoy);
    let sims = start_sims(&[sim_args(&[]), sim_args(&[]), sim_args(&[])]);
    let envoy =
        Envoy::start(&EnvoyTemplate::inline("plain", PLAIN_ORIGINAL_DST), &EnvoyOptions::default()).unwrap();
    for i in 0..9 {
        let target = &sims[(i * 2) % 3];
        let r =
            envoy.send(&completion("hello").header("x-gateway-destination-endpoint", target.addr())).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(replica(&r), target.replica(), "request {i}");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["object"], "text_completion");
    }
    assert_eq!(envoy.stat("cluster.pool.upstream_rq_completed"), Some(9));
}

#[test]
fn plain_envoy_passes_sse_streams_through_whole_and_stops_its_processes_when_dropped() {
    require!(envoy);
    let sim =
        ModelSim::start(&sim_args(&["--force-include-usage"]).iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
    let envoy =
        Envoy::start(&EnvoyTemplate::inline("plain", PLAIN_ORIGINAL_DST), &EnvoyOptions::default()).unwrap();
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": true});
    let r = envoy
        .send(
            &Request::post_json("/v1/chat/completions", body.to_string())
                .header("x-gateway-destination-endpoint", sim.addr()),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.truncated, "stream cut: {}", r.text());
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6, "{usage}");

    let (admin, listener) = (envoy.admin().to_string(), envoy.listener().to_string());
    drop(envoy);
    drop(sim);
    for addr in [admin, listener] {
        assert!(
            Request::get("/").timeout(Duration::from_secs(2)).send(&addr).is_err(),
            "{addr} still answers"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// The picker filter in the envoy-config bootstraps.

/// The filter's JSON configuration: the replicas as static endpoints, a fast collector, plus `extra`'s
/// top-level keys.
fn gateway_config(sims: &[&ModelSim], extra: Value) -> String {
    let mut config = json!({
        "pool": {"name": "e2e", "endpoints": sims.iter().map(|s| s.addr()).collect::<Vec<_>>()},
        "collector": {"intervalMs": 50, "timeoutMs": 500},
    });
    if let (Some(base), Value::Object(more)) = (config.as_object_mut(), extra) {
        for (k, v) in more {
            if let (Some(Value::Object(into)), Value::Object(v)) = (base.get_mut(&k), &v) {
                into.extend(v.clone());
            } else {
                base.insert(k, v);
            }
        }
    }
    config.to_string()
}

fn start_picker(shape: &str, wasm: &Path, config: &str, pool: &[&ModelSim], concurrency: usize) -> Envoy {
    let template = EnvoyTemplate::load(&format!("{shape}/envoy.yaml"))
        .unwrap()
        .wasm(wasm)
        .gateway_config(config)
        .pool_endpoints(&pool.iter().map(|s| s.addr()).collect::<Vec<_>>());
    let envoy = Envoy::start(&template, &EnvoyOptions { concurrency, ..EnvoyOptions::default() }).unwrap();
    // Let the collector scrape a few rounds (every 50 ms) before traffic.
    std::thread::sleep(Duration::from_millis(1000));
    envoy
}

const SERVED: &str = "x-gateway-destination-endpoint-served";

#[test]
fn picker_answers_every_request_and_reports_where_it_went() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&[]), sim_args(&[]), sim_args(&[])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let envoy = start_picker("wasm-picker", &wasm, &gateway_config(&pool, json!({})), &pool, 1);
    for i in 0..30 {
        let r = envoy.send(&completion(&format!("request {i}"))).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header(SERVED), Some(replica(&r).as_str()), "request {i}: served header vs the replica");
    }
    // Header values that are not UTF-8 (obs-text, which Envoy passes on) are opaque bytes to the picker,
    // not a crash of its VM: the request is routed and so is the next one.
    for i in 0..3 {
        let r = envoy
            .send(
                &completion("bytes")
                    .header_bytes("x-session-token", b"caf\xe9\xff")
                    .header_bytes("x-gateway-inference-objective", b"\xc3\x28"),
            )
            .unwrap();
        assert_eq!(r.status, 200, "non-UTF-8 headers, request {i}: {}", r.text());
        assert_eq!(r.header(SERVED), Some(replica(&r).as_str()));
    }
}

#[test]
fn a_client_set_destination_header_cannot_steer_a_request() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&[]), sim_args(&[]), sim_args(&[])]);
    let (pool, outsider) = (vec![&sims[0], &sims[1]], &sims[2]);
    let envoy = start_picker("wasm-picker", &wasm, &gateway_config(&pool, json!({})), &pool, 1);
    let counts = spread(&envoy, 12, |_| {
        completion("steer me").header("x-gateway-destination-endpoint", outsider.addr())
    });
    assert!(!counts.contains_key(outsider.replica()), "the client's header routed requests: {counts:?}");
}

fn chat(system: &str, question: &str) -> Request {
    Request::post_json(
        "/v1/chat/completions",
        json!({"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": question}]})
        .to_string(),
    )
}

#[test]
fn requests_sharing_a_long_system_prompt_stick_to_one_replica_while_load_allows() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&[]), sim_args(&[]), sim_args(&[])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let envoy = start_picker("wasm-picker", &wasm, &gateway_config(&pool, json!({})), &pool, 1);
    // Control: with nothing cached, equally idle replicas tie and the picker spreads distinct prompts.
    let spread_out = spread(&envoy, 15, |i| chat(&format!("system prompt {i} ").repeat(2), "hello"));
    assert!(spread_out.len() >= 2, "distinct prompts should spread over idle replicas: {spread_out:?}");
    // A ~6 KB system prompt shared by every request: after the first, its blocks are cached on one replica
    // and the prefix scorer keeps the conversation there.
    let system =
        "You are the support assistant of an airline. Answer with care and cite the policy. ".repeat(75);
    let stuck = spread(&envoy, 15, |i| chat(&system, &format!("question number {i}")));
    assert_eq!(stuck.len(), 1, "a shared system prompt should stay on one replica: {stuck:?}");
}

#[test]
fn requests_avoid_a_saturated_replica() {
    let wasm = require!(filter);
    // Replica 0 runs 4 sequences at a time and always has ~20 more waiting.
    let busy = sim_args(&["--max-num-seqs", "4", "--busy", "24", "--busy-output-tokens", "400"]);
    let sims = start_sims(&[busy, sim_args(&[]), sim_args(&[])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let envoy = start_picker("wasm-picker", &wasm, &gateway_config(&pool, json!({})), &pool, 1);
    let counts = spread(&envoy, 20, |i| completion(&format!("distinct prompt number {i}")));
    let to_busy = counts.get(sims[0].replica()).copied().unwrap_or(0);
    assert!(to_busy <= 1, "{to_busy} of 20 went to the saturated replica: {counts:?}");
}

#[test]
fn lora_requests_go_where_the_adapter_is_loaded() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&[]), sim_args(&["--lora", "sql-lora"]), sim_args(&[])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let plugins = json!({
        "plugins": [{"type": "lora-affinity-filter"}, {"type": "queue-scorer"}, {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "lora-affinity-filter"}, {"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}],
    });
    let envoy = start_picker("wasm-picker", &wasm, &gateway_config(&pool, plugins), &pool, 1);
    // A long request keeps the adapter running (and so listed in the replica's metrics) for the whole
    // test: ~14 s of wall time here, as an idle adapter is not listed (4000 tokens, ~1.4 s, ran out on
    // a loaded machine before the tenth request).
    let warm = Request::post_json(
        "/v1/completions",
        json!({"model": "sql-lora", "prompt": "warm", "max_tokens": 40000}).to_string(),
    )
    .timeout(Duration::from_secs(60));
    let addr = sims[1].addr().to_string();
    let warming = std::thread::spawn(move || warm.send(&addr));
    std::thread::sleep(Duration::from_millis(500));
    let counts = spread(&envoy, 10, |i| {
        Request::post_json(
            "/v1/completions",
            json!({"model": "sql-lora", "prompt": format!("select {i}"), "max_tokens": 3}).to_string(),
        )
    });
    assert_eq!(counts.get(sims[1].replica()), Some(&10), "{counts:?}");
    drop(warming);
}

#[test]
fn sheddable_requests_get_429_when_every_replica_is_saturated_and_others_are_served() {
    let wasm = require!(filter);
    let busy = || sim_args(&["--max-num-seqs", "2", "--busy", "30", "--busy-output-tokens", "400"]);
    let sims = start_sims(&[busy(), busy()]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let config = gateway_config(&pool, json!({"objectives": [{"name": "batch", "priority": -1}]}));
    let envoy = start_picker("wasm-picker", &wasm, &config, &pool, 1);
    let shed = envoy.send(&completion("later").header("x-gateway-inference-objective", "batch")).unwrap();
    assert_eq!(shed.status, 429, "{}", shed.text());
    let body: Value = serde_json::from_slice(&shed.body).unwrap();
    assert!(body["error"]["message"].is_string(), "OpenAI error shape: {body}");
    let normal = envoy.send(&completion("now").timeout(Duration::from_secs(60))).unwrap();
    assert_eq!(normal.status, 200, "{}", normal.text());
}

#[test]
fn malformed_json_gets_400_and_an_oversized_body_413() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&[])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let envoy = start_picker(
        "wasm-picker",
        &wasm,
        &gateway_config(&pool, json!({"limits": {"maxBodyBytes": 2048}})),
        &pool,
        1,
    );
    let bad = envoy.send(&Request::post_json("/v1/completions", "{\"model\": ")).unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());
    let body: Value = serde_json::from_slice(&bad.body).unwrap();
    assert!(body["error"]["message"].is_string(), "OpenAI error shape: {body}");
    let big = envoy.send(&completion(&"x".repeat(4096))).unwrap();
    assert_eq!(big.status, 413, "{}", big.text());
    // Past Envoy's own buffer limit (4 MiB in the bootstrap), Envoy answers 413 before the picker decides.
    let huge = envoy.send(&completion(&"y".repeat(5 << 20))).unwrap();
    assert_eq!(huge.status, 413);
    assert_eq!(envoy.send(&completion("fits")).unwrap().status, 200);
}

#[test]
fn sse_streams_pass_through_the_picker_intact() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&[]), sim_args(&[])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let envoy = start_picker("wasm-picker", &wasm, &gateway_config(&pool, json!({})), &pool, 1);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12,
                      "stream": true, "stream_options": {"include_usage": true}});
    let r = envoy.send(&Request::post_json("/v1/chat/completions", body.to_string())).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.truncated);
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    assert!(!text.is_empty());
}

#[test]
fn failing_scrapes_fail_open_and_every_request_is_answered() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&["--metrics-hang"]), sim_args(&["--metrics-garbage"])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let envoy = start_picker("wasm-picker", &wasm, &gateway_config(&pool, json!({})), &pool, 1);
    let counts = spread(&envoy, 10, |i| completion(&format!("blind {i}")));
    assert_eq!(counts.values().sum::<usize>(), 10, "{counts:?}");
}

#[test]
fn istio_shape_with_two_workers_shares_one_elected_collector() {
    let wasm = require!(filter);
    let busy = sim_args(&["--max-num-seqs", "4", "--busy", "24", "--busy-output-tokens", "400"]);
    let sims = start_sims(&[busy, sim_args(&[]), sim_args(&[])]);
    let pool: Vec<&ModelSim> = sims.iter().collect();
    let config = gateway_config(&pool, json!({"collector": {"mode": "leader-elected"}}));
    let envoy = start_picker("wasm-picker-istio-shape", &wasm, &config, &pool, 2);
    // Each request is its own connection, so both workers serve some: both must see the leader's snapshot.
    let counts = spread(&envoy, 20, |i| completion(&format!("distinct prompt number {i}")));
    let to_busy = counts.get(sims[0].replica()).copied().unwrap_or(0);
    assert!(to_busy <= 1, "{to_busy} of 20 went to the saturated replica: {counts:?}");
    // Per-worker listener stats are named after the listener's configured address (port 0 here), so
    // match any listener, excluding the admin one.
    let workers_used = (0..2)
        .filter(|w| {
            envoy
                .stat_sum(&format!("^listener\\.127\\.0\\.0\\.1_.*\\.worker_{w}\\.downstream_cx_total$"))
                .unwrap_or(0)
                > 0
        })
        .count();
    assert_eq!(workers_used, 2, "both workers should have served");
}

#[test]
fn override_host_shape_routes_to_pool_members() {
    let wasm = require!(filter);
    let sims = start_sims(&[sim_args(&[]), sim_args(&[]), sim_args(&[])]);
    let (pool, outsider) = (vec![&sims[0], &sims[1]], &sims[2]);
    let envoy = start_picker("wasm-picker-override-host", &wasm, &gateway_config(&pool, json!({})), &pool, 1);
    for i in 0..10 {
        let r = envoy
            .send(&completion(&format!("o{i}")).header("x-gateway-destination-endpoint", outsider.addr()))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(replica(&r), outsider.replica());
        assert_eq!(r.header(SERVED), Some(replica(&r).as_str()));
    }
}
