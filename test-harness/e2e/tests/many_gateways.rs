//! Two gateway replicas that share nothing but the pods' metrics agree on where a prompt goes: two Envoy
//! processes with the Wasm picker (2 workers each, the default override_host shape), each with its own
//! collector and prefix index, in front of the same four model-sim replicas, with no scheduling
//! configuration (the default profile, `envoy-config/scheduling/recommended.json`). Requests that share a
//! long system prompt, sent through both gateways in turn, land on one replica (the prompt's owner by
//! rendezvous hashing, `prefix-owner-scorer`), so the engine computes that system prompt once. (GIE's
//! default profile splits each prompt between two replicas, one per gateway.) Skipped with a notice when
//! Envoy is not installed.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{filter_wasm, require, Envoy, EnvoyOptions, EnvoyTemplate, ModelSim, Request};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// No scheduling configuration: the pool of `sims` and a fast collector.
fn config(sims: &[ModelSim]) -> String {
    let mut c = json!({});
    let c_obj = c.as_object_mut().unwrap();
    c_obj.insert(
        "pool".into(),
        json!({"name": "shared", "endpoints": sims.iter().map(|s| s.addr()).collect::<Vec<_>>()}),
    );
    c_obj.insert("collector".into(), json!({"intervalMs": 50, "timeoutMs": 300}));
    c.to_string()
}

fn gateway(sims: &[ModelSim], wasm: &Path) -> Envoy {
    let template = EnvoyTemplate::load("wasm-picker-override-host/envoy.yaml")
        .unwrap()
        .wasm(wasm)
        .gateway_config(&config(sims))
        .pool_endpoints(&sims.iter().map(|s| s.addr()).collect::<Vec<_>>());
    let options = EnvoyOptions { concurrency: 2, log_level: "warn".into(), ..EnvoyOptions::default() };
    Envoy::start(&template, &options).unwrap()
}

/// A chat request: a system prompt of about 1,500 tokens shared by every request of `group`, then a short
/// question of its own (the shared part is most of the prompt, as with a long agent or RAG preamble).
fn chat(group: usize, i: usize) -> Request {
    let system: String = (0..250).map(|w| format!("rule{group}-{w} ")).collect::<String>();
    let body = json!({
        "model": MODEL,
        "max_tokens": 4,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("question {i}: what does rule {i} say?")},
        ],
    });
    Request::post_json("/v1/chat/completions", body.to_string()).timeout(Duration::from_secs(5))
}

#[test]
fn a_shared_system_prompt_sent_through_two_gateways_lands_on_one_replica() {
    require!(envoy);
    let sims = ModelSim::start_many(4, |_| {
        ["--time-scale", "0.02", "--default-output-tokens", "4"].map(String::from).to_vec()
    })
    .unwrap();
    let wasm = filter_wasm().unwrap_or_else(|e| panic!("the filter does not build: {e}"));
    let a = gateway(&sims, &wasm);
    let b = gateway(&sims, &wasm);
    std::thread::sleep(Duration::from_millis(800));
    // Four groups (four system prompts), eight requests each, alternating between the gateways.
    let mut placed: BTreeMap<usize, BTreeMap<String, usize>> = BTreeMap::new();
    for i in 0..8 {
        for group in 0..4 {
            let gw = if (i + group) % 2 == 0 { &a } else { &b };
            let r = gw.send(&chat(group, i)).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let replica = r.header("x-model-sim-replica").unwrap().to_string();
            *placed.entry(group).or_default().entry(replica).or_default() += 1;
        }
    }
    eprintln!("replicas per system prompt: {placed:?}");
    for (group, replicas) in &placed {
        assert_eq!(replicas.len(), 1, "system prompt {group} went to several replicas: {replicas:?}");
    }
    // Different prompts have different owners: not everything on one pod.
    let owners: std::collections::BTreeSet<&String> = placed.values().flat_map(|r| r.keys()).collect();
    assert!(owners.len() >= 2, "every system prompt went to the same replica: {placed:?}");
}
