//! One filter, many pools, through the host emulator against the built module: each request is decided
//! by the pool its route's cluster (Envoy's `xds.cluster_name`) or its model selects, on that pool's
//! metrics; a cluster no pool claims passes untouched; a model no pool serves gets a 404; the singleton
//! collector scrapes every pool.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proxy_wasm_emulator::{CalloutResponse, Host, VmId};
use scheduler_core::snapshot_codec;
use std::time::Duration;

/// Two pools under one scheduling (queue only, so the least-queued endpoint wins): `qwen` claims the
/// cluster `qwen`, `llama` serves its models wherever the route points.
const TWO_POOLS: &str = r#"{
  "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"}],
  "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}],
  "pools": [
    {"match": {"clusters": ["qwen"]}, "pool": {"name": "qwen", "endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"]}},
    {"match": {"models": ["llama", "sql-lora"]}, "pool": {"name": "llama", "endpoints": ["10.0.1.1:8000", "10.0.1.2:8000"]}}
  ]}"#;

fn body(model: &str) -> String {
    format!(
        r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "hello"}}], "max_tokens": 8}}"#
    )
}

/// One collector tick with every endpoint answering its queue from `queues` (by address).
fn scrape(host: &mut Host, queues: &[(&str, u32)]) {
    host.advance(Duration::from_millis(50));
    answer_scrapes(host, |a| {
        let (_, q) = queues.iter().find(|(addr, _)| *addr == a)?;
        Some(CalloutResponse::new(200).body(vllm(*q, 0.2)))
    });
}

fn deployment(cfg: &str) -> (Host, VmId) {
    let mut host = host();
    let worker = host.start_vm(picker(cfg)).unwrap();
    host.start_vm(collector(cfg)).unwrap();
    (host, worker)
}

/// Sends `model`'s request on a route to `cluster`.
fn request(host: &mut Host, vm: VmId, cluster: &str, model: &str) -> proxy_wasm_emulator::HttpStream {
    host.set_property("xds.cluster_name", cluster);
    send(host, vm, &body(model), &[])
}

#[test]
fn the_collector_scrapes_every_pool_and_publishes_each_under_its_own_keys() {
    let (mut host, _) = deployment(TWO_POOLS);
    host.advance(Duration::from_millis(50));
    let mut targets: Vec<String> = host
        .pending_callouts()
        .iter()
        .map(|c| c.header(":authority").unwrap_or_default().to_string())
        .collect();
    targets.sort();
    assert_eq!(targets, ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.1.1:8000", "10.0.1.2:8000"]);
    answer_scrapes(&mut host, |_| Some(CalloutResponse::new(200).body(vllm(1, 0.2))));
    for (pool, first) in [("qwen", "10.0.0.1:8000"), ("llama", "10.0.1.1:8000")] {
        let (bytes, _) = host.shared_data(VM_ID, &format!("epp/{pool}/snapshot")).unwrap();
        let s = snapshot_codec::decode(&bytes).unwrap();
        assert_eq!(s.pool, pool);
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.endpoints[0].address(), first, "pool {pool} holds its own endpoints only");
    }
    assert_no_traps(&host);
}

#[test]
fn each_request_is_decided_by_its_pool_on_that_pools_metrics() {
    let (mut host, worker) = deployment(TWO_POOLS);
    let queues = [("10.0.0.1:8000", 9), ("10.0.0.2:8000", 0), ("10.0.1.1:8000", 0), ("10.0.1.2:8000", 9)];
    scrape(&mut host, &queues);
    // By cluster (the model is not the qwen pool's concern: it lists none).
    let s = request(&mut host, worker, "qwen", "Qwen/Qwen3-32B");
    assert_eq!(destination(&s), Some("10.0.0.2:8000"), "{s:?}");
    // By model, the route's cluster being no pool's; an adapter the pool lists too.
    let s = request(&mut host, worker, "llama-route", "llama");
    assert_eq!(destination(&s), Some("10.0.1.1:8000"), "{s:?}");
    let s = request(&mut host, worker, "llama-route", "sql-lora");
    assert_eq!(destination(&s), Some("10.0.1.1:8000"), "{s:?}");
    // The queues move the other way in each pool: so do the picks, each on its own pool's snapshot.
    let flipped = [("10.0.0.1:8000", 0), ("10.0.0.2:8000", 9), ("10.0.1.1:8000", 9), ("10.0.1.2:8000", 0)];
    scrape(&mut host, &flipped);
    let s = request(&mut host, worker, "qwen", "Qwen/Qwen3-32B");
    assert_eq!(destination(&s), Some("10.0.0.1:8000"), "{s:?}");
    let s = request(&mut host, worker, "anything", "llama");
    assert_eq!(destination(&s), Some("10.0.1.2:8000"), "{s:?}");
    // Stats per pool.
    assert_eq!(host.metric_value("pool.qwen.epp_decisions_routed"), Some(2));
    assert_eq!(host.metric_value("pool.llama.epp_decisions_routed"), Some(3));
    assert_eq!(host.metric_value("epp_decisions_routed"), None, "no unlabelled decision counter");
    assert_no_traps(&host);
}

#[test]
fn a_model_no_pool_serves_gets_404_and_a_request_without_one_passes() {
    let (mut host, worker) = deployment(TWO_POOLS);
    scrape(
        &mut host,
        &[("10.0.0.1:8000", 0), ("10.0.0.2:8000", 0), ("10.0.1.1:8000", 0), ("10.0.1.2:8000", 0)],
    );
    let s = request(&mut host, worker, "somewhere", "gpt-4o");
    assert_eq!(s.response_status(), Some(404), "{s:?}");
    let e = reply_body(&s);
    assert_eq!(e["error"]["code"], "model_not_found");
    assert!(e["error"]["message"].as_str().unwrap().contains("`gpt-4o`"), "{e}");
    assert_eq!(destination(&s), None);
    assert_eq!(host.metric_value("epp_unknown_model"), Some(1), "counted before any pool decided");
    // No body, no model: nothing to choose a pool by, on a route that is no pool's.
    host.set_property("xds.cluster_name", "somewhere");
    let get = [(":method", "GET"), (":path", "/v1/models"), (":authority", "gw")];
    let s = send_headers(&mut host, worker, &get);
    assert!(s.local_reply.is_none(), "{s:?}");
    assert!(s.upstream_request.is_some(), "forwarded");
    assert_eq!(destination(&s), None);
    // The same request on the qwen pool's route is that pool's.
    host.set_property("xds.cluster_name", "qwen");
    let s = send_headers(&mut host, worker, &get);
    assert!(destination(&s).is_some_and(|d| d.starts_with("10.0.0.")), "{s:?}");
    assert_no_traps(&host);
}

#[test]
fn a_route_to_a_cluster_no_pool_claims_passes_untouched() {
    let cfg = r#"{"pools": [
        {"match": {"clusters": ["a"]}, "pool": {"name": "a", "endpoints": ["10.0.0.1:8000"]}},
        {"match": {"clusters": ["b"]}, "pool": {"name": "b", "endpoints": ["10.0.1.1:8000"]}}]}"#;
    let (mut host, worker) = deployment(cfg);
    scrape(&mut host, &[("10.0.0.1:8000", 0), ("10.0.1.1:8000", 0)]);
    let smuggled = [("x-gateway-destination-endpoint", "6.6.6.6:80")];
    host.set_property("xds.cluster_name", "static-site");
    let b = body("whatever");
    let s = send(&mut host, worker, &b, &smuggled);
    assert!(s.local_reply.is_none(), "{s:?}");
    let up = s.upstream_request.as_ref().unwrap();
    assert_eq!(up.body, b.as_bytes(), "the body passes unchanged");
    // Untouched but for the client's routing headers, removed before anything else.
    assert_eq!(destination(&s), None);
    host.set_property("xds.cluster_name", "b");
    let s = send(&mut host, worker, &b, &smuggled);
    assert_eq!(destination(&s), Some("10.0.1.1:8000"));
    assert_eq!(host.metric_value("pool.b.epp_decisions_routed"), Some(1));
    assert_eq!(host.metric_value("pool.a.epp_decisions_routed").unwrap_or(0), 0);
    assert_no_traps(&host);
}

#[test]
fn responses_are_accounted_to_the_pool_that_routed() {
    let (mut host, worker) = deployment(TWO_POOLS);
    scrape(
        &mut host,
        &[("10.0.0.1:8000", 0), ("10.0.0.2:8000", 5), ("10.0.1.1:8000", 0), ("10.0.1.2:8000", 5)],
    );
    host.set_property("xds.cluster_name", "qwen");
    let s = chat(&mut host, worker, &body("q"), &[]);
    assert_eq!(destination(&host.stream(s)), Some("10.0.0.1:8000"));
    let in_flight = |host: &Host, pool: &str| -> u32 {
        host.shared_data_all(VM_ID)
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("epp/{pool}/inflight/")))
            .map(|(_, (v, _))| {
                let t = scheduler_core::shared_state::InFlightTable::decode(v).unwrap();
                t.iter().map(|(_, f)| f.requests).sum::<u32>()
            })
            .sum()
    };
    // Published once a second worker would read it; a tick writes it at the latest.
    host.advance(Duration::from_millis(1_100));
    assert_eq!((in_flight(&host, "qwen"), in_flight(&host, "llama")), (1, 0));
    host.respond(s, 500, b"{}").unwrap();
    assert_eq!(host.metric_value("pool.qwen.epp_upstream_5xx"), Some(1));
    host.advance(Duration::from_millis(1_100));
    assert_eq!(in_flight(&host, "qwen"), 0);
    assert_no_traps(&host);
}

#[test]
fn the_vms_linear_memory_is_reported_once_under_the_first_pool_and_each_pools_tables_under_its_own() {
    let (mut host, worker) = deployment(TWO_POOLS);
    scrape(
        &mut host,
        &[("10.0.0.1:8000", 0), ("10.0.0.2:8000", 5), ("10.0.1.1:8000", 0), ("10.0.1.2:8000", 5)],
    );
    request(&mut host, worker, "qwen", "Qwen/Qwen3-32B");
    // Reported once per heartbeat, from the root tick.
    host.advance(Duration::from_millis(1_100));
    let gauge = |name: &str| host.metric_value(name).unwrap_or(0);
    let linear = gauge("pool.qwen.epp_wasm_memory_bytes");
    assert!(linear > 0 && linear % 65_536 == 0, "linear memory in whole pages, got {linear}");
    assert_eq!(gauge("pool.llama.epp_wasm_memory_bytes"), 0, "the same VM's memory, counted once");
    assert_eq!(gauge("pool.qwen.epp_memory_pool_endpoints"), 2);
    assert_eq!(gauge("pool.llama.epp_memory_pool_endpoints"), 2);
    assert_no_traps(&host);
}

#[test]
fn a_configuration_a_pool_refuses_is_refused_naming_the_pool() {
    let mut host = host();
    let cfg = r#"{"pools": [{"match": {"clusters": ["a"]}, "pool": {"name": "a"}},
        {"match": {"clusters": ["b"]}, "pool": {"name": "b"}, "plugins": [{"type": "no-such-scorer"}]}]}"#;
    assert!(host.start_vm(picker(cfg)).is_err());
    let logs = host.logs().iter().map(|l| l.message.clone()).collect::<Vec<_>>().join("\n");
    assert!(logs.contains("pools[1].plugins[0]"), "{logs}");
}

/// A fresh snapshot of `pool` with idle `addresses`, written as the collector would.
fn publish(host: &mut Host, pool: &str, addresses: &[&str]) {
    use scheduler_core::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
    let now = now_ms(host);
    let endpoints = addresses
        .iter()
        .map(|a| EndpointState {
            metrics: Some(Metrics { waiting: 0, kv_usage: 0.2, updated_at_ms: now, ..Metrics::default() }),
            ..EndpointState::new(Endpoint::new(a.to_string()))
        })
        .collect();
    let s = PoolSnapshot {
        generation: 1,
        published_at_ms: now,
        pool: pool.into(),
        endpoints,
        ..PoolSnapshot::default()
    };
    host.set_shared_data(VM_ID, &format!("epp/{pool}/snapshot"), &snapshot_codec::encode(&s));
    host.set_shared_data(VM_ID, &format!("epp/{pool}/generation"), &1u64.to_le_bytes());
    host.advance(Duration::from_millis(1));
}

#[test]
fn flow_control_queues_per_pool_and_each_pool_dispatches_its_own() {
    // One endpoint per pool, saturated at one request in flight: capacity 1 in each pool, not 2 in all.
    let cfg = r#"{"featureGates": ["flowControl"],
      "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"},
                  {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}}],
      "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}],
      "flowControl": {"saturationDetector": {"pluginRef": "concurrency-detector"}},
      "pools": [
        {"match": {"clusters": ["a"]}, "pool": {"name": "a", "endpoints": ["10.0.0.1:8000"]}},
        {"match": {"clusters": ["b"]}, "pool": {"name": "b", "endpoints": ["10.0.1.1:8000"]}}]}"#;
    let mut host = host();
    let vm = host.start_vm(picker(cfg)).unwrap();
    publish(&mut host, "a", &["10.0.0.1:8000"]);
    publish(&mut host, "b", &["10.0.1.1:8000"]);
    host.set_property("xds.cluster_name", "a");
    let a1 = chat(&mut host, vm, &body("m"), &[]);
    let a2 = chat(&mut host, vm, &body("m"), &[]);
    assert_eq!(destination(&host.stream(a1)), Some("10.0.0.1:8000"));
    assert!(
        host.stream(a2).request_paused() && host.stream(a2).upstream_request.is_none(),
        "a is full: a2 waits"
    );
    // Pool b's capacity is its own: its request goes at once while a2 waits in a's queue.
    host.set_property("xds.cluster_name", "b");
    let b1 = chat(&mut host, vm, &body("m"), &[]);
    assert_eq!(destination(&host.stream(b1)), Some("10.0.1.1:8000"));
    assert_eq!(host.metric_value("pool.a.epp_flow_control_queue_size.band_0"), Some(1));
    // b's request ending frees nothing in a.
    host.respond(b1, 200, b"{}").unwrap();
    host.advance(Duration::from_millis(30));
    assert!(host.stream(a2).upstream_request.is_none(), "a2 still waits for a's endpoint");
    // a's first request ends: a2 goes, to a's endpoint.
    host.respond(a1, 200, b"{}").unwrap();
    host.advance(Duration::from_millis(30));
    assert_eq!(destination(&host.stream(a2)), Some("10.0.0.1:8000"));
    host.respond(a2, 200, b"{}").unwrap();
    assert_eq!(host.metric_value("pool.a.epp_flow_control_requests.Dispatched"), Some(1));
    assert_eq!(host.metric_value("pool.a.epp_flow_control_queue_size.band_0"), Some(0));
    assert_no_traps(&host);
}
