//! The Kubernetes manifests' picker configurations, as shipped, in the Envoy shape their controllers build
//! (`envoy-config/wasm-picker-gateway-shape/envoy.yaml`): the Istio WasmPlugin's `pluginConfig` and the Envoy
//! Gateway EnvoyExtensionPolicy's `config` are read from `envoy-config/kubernetes/` unchanged, so their
//! `pool.discoveryCluster` must name the cluster each controller builds for the shim's Service, and the
//! model Service's cluster follows the picker's header through override_host. The shim runs as the
//! companion collector (`--collector-only`) over simulated replicas; two workers elect one poller.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request, Response};
use scheduler_core::model::PoolSnapshot;
use scheduler_core::snapshot_codec;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SERVED: &str = "x-gateway-destination-endpoint-served";

/// The picker configuration embedded in one manifest: the document of `kind`, then `path` inside it.
fn manifest_config(file: &str, kind: &str, path: &[&str]) -> Value {
    let full = e2e::workspace_root().join("envoy-config/kubernetes").join(file);
    let text = std::fs::read_to_string(&full).unwrap();
    let doc = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).unwrap())
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {file}"));
    let mut node = &doc;
    for key in path {
        node = match key.parse::<usize>() {
            Ok(i) => &node[i],
            Err(_) => &node[*key],
        };
    }
    serde_json::to_value(node).unwrap()
}

fn sim(extra: &[&str]) -> ModelSim {
    let mut args = vec!["--time-scale", "0.05", "--default-output-tokens", "8"];
    args.extend_from_slice(extra);
    ModelSim::start(&args).unwrap()
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

/// The shim as companion collector for `pool` (named as in the manifests), once its snapshot lists every
/// replica.
fn start_collector(pool_name: &str, pool: &[&ModelSim]) -> EppShim {
    let config = json!({
        "pool": {"name": pool_name, "endpoints": pool.iter().map(|s| s.addr()).collect::<Vec<_>>()},
        "collector": {"intervalMs": 50, "timeoutMs": 500}
    });
    let shim = EppShim::start(&config.to_string(), &["--collector-only", "--plaintext"]).unwrap();
    let addr = shim.addr("http").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let polled = Request::get("/snapshot").header("x-epp-snapshot-version", "2").send(&addr);
        let snapshot: Option<PoolSnapshot> =
            polled.ok().filter(|r| r.status == 200).and_then(|r| snapshot_codec::decode(&r.body).ok());
        if snapshot.is_some_and(|s| s.endpoints.len() == pool.len()) {
            return shim;
        }
        assert!(
            Instant::now() < deadline,
            "the shim never listed the pool:\n{}",
            shim.process().log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_gateway(wasm: &Path, config: &Value, shim: &EppShim, pool: &[&ModelSim]) -> Envoy {
    let collector_port = shim.addr("http").rsplit_once(':').unwrap().1.to_string();
    let template = EnvoyTemplate::load("wasm-picker-gateway-shape/envoy.yaml")
        .unwrap()
        .wasm(wasm)
        .gateway_config(&config.to_string())
        .pool_endpoints(&pool.iter().map(|s| s.addr()).collect::<Vec<_>>())
        .set("PORT_COLLECTOR", collector_port);
    let envoy = Envoy::start(&template, &EnvoyOptions { concurrency: 2, ..EnvoyOptions::default() }).unwrap();
    // The leader polls the collector (intervalMs 50 or the default) a few times before traffic.
    std::thread::sleep(Duration::from_millis(1500));
    envoy
}

/// Picks follow the collector's load, the served header names the pod, and a client-set destination
/// header pointing outside the pool is not followed.
fn routes_by_load_through_the_collector(config: Value) {
    let wasm = require!(filter);
    let pool_name = config["pool"]["name"].as_str().unwrap().to_string();
    let busy = sim(&["--max-num-seqs", "4", "--busy", "24", "--busy-output-tokens", "400"]);
    let (a, b, outsider) = (sim(&[]), sim(&[]), sim(&[]));
    let pool = [&busy, &a, &b];
    let shim = start_collector(&pool_name, &pool);
    let envoy = start_gateway(&wasm, &config, &shim, &pool);

    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..20 {
        let r = envoy
            .send(
                &completion(&format!("distinct prompt {i}"))
                    .header("x-gateway-destination-endpoint", outsider.addr()),
            )
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_ne!(replica(&r), outsider.replica(), "request {i} followed the client's header");
        assert_eq!(r.header(SERVED), Some(replica(&r).as_str()), "request {i}: served header vs the replica");
        *counts.entry(replica(&r)).or_insert(0) += 1;
    }
    let to_busy = counts.get(busy.replica()).copied().unwrap_or(0);
    assert!(to_busy <= 1, "{to_busy} of 20 went to the saturated replica: {counts:?}");
    // The picks came from the collector's snapshot: the filters polled it through the named cluster.
    let cluster = config["pool"]["discoveryCluster"].as_str().unwrap();
    let polls: u64 = envoy.host_requests(cluster).unwrap_or_default().iter().map(|(_, n)| n).sum();
    assert!(polls > 0, "no poll went through {cluster}");
}

#[test]
fn the_istio_wasmplugin_config_routes_by_load_through_istios_shim_cluster() {
    routes_by_load_through_the_collector(manifest_config(
        "istio-wasmplugin.yaml",
        "WasmPlugin",
        &["spec", "pluginConfig"],
    ));
}

#[test]
fn the_envoy_gateway_policy_config_routes_by_load_through_its_route_cluster() {
    routes_by_load_through_the_collector(manifest_config(
        "envoy-gateway-extensionpolicy.yaml",
        "EnvoyExtensionPolicy",
        &["spec", "wasm", "0", "config"],
    ));
}
