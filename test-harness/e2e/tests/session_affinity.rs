//! Session affinity end to end with the real Envoy, through the Wasm filter
//! (`envoy-config/wasm-picker-override-host`) and through the ext_proc shim
//! (`envoy-config/ext-proc-override-host`): with a `session-affinity-scorer` in the profile, every routed
//! response carries `x-session-token` (base64 of the serving replica's `ip:port`), and requests that send
//! it back land on that replica, while requests without it spread over the pool. Three model-sim
//! replicas on loopback; skipped with a notice when Envoy is not installed.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{filter_wasm, require, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request, Response};
use scheduler_core::plugins::scorers::session_affinity_scorer::{decode_session_token, encode_session_token};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SERVED: &str = "x-gateway-destination-endpoint-served";
const TOKEN: &str = "x-session-token";
const REPLICA: &str = "x-model-sim-replica";
/// Requests sent with and without the token.
const ROUNDS: usize = 12;

fn sims(n: usize) -> Vec<ModelSim> {
    ModelSim::start_many(n, |_| {
        ["--time-scale", "0.02", "--default-output-tokens", "4"].map(String::from).to_vec()
    })
    .unwrap()
}

fn pool(sims: &[ModelSim]) -> Vec<&str> {
    sims.iter().map(ModelSim::addr).collect()
}

/// Session affinity (weight 10) over the queue scorer: idle replicas tie on the queue, and the
/// max-score picker breaks ties at random, so requests without a token spread.
fn config(sims: &[ModelSim]) -> String {
    json!({
        "pool": {"name": "sessions", "endpoints": pool(sims)},
        "collector": {"intervalMs": 100, "timeoutMs": 300},
        "plugins": [
            {"type": "session-affinity-scorer"},
            {"type": "queue-scorer"},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "session-affinity-scorer", "weight": 10},
            {"pluginRef": "queue-scorer", "weight": 1},
            {"pluginRef": "max-score-picker"}]}],
    })
    .to_string()
}

fn completion(i: usize, token: Option<&str>) -> Request {
    let r = Request::post_json(
        "/v1/completions",
        json!({"model": MODEL, "prompt": format!("turn {i}"), "max_tokens": 4}).to_string(),
    )
    .timeout(Duration::from_secs(10));
    match token {
        Some(t) => r.header(TOKEN, t),
        None => r,
    }
}

fn filter_gateway(sims: &[ModelSim]) -> Envoy {
    let wasm = filter_wasm().unwrap_or_else(|e| panic!("the filter does not build: {e}"));
    let template = EnvoyTemplate::load("wasm-picker-override-host/envoy.yaml")
        .unwrap()
        .wasm(&wasm)
        .gateway_config(&config(sims))
        .pool_endpoints(&pool(sims));
    let options = EnvoyOptions { concurrency: 2, log_level: "warn".into(), ..EnvoyOptions::default() };
    let envoy = Envoy::start(&template, &options).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    envoy
}

fn shim_gateway(sims: &[ModelSim]) -> (Envoy, EppShim) {
    let shim = EppShim::start(&config(sims), &[]).unwrap();
    let port = shim.ext_proc().rsplit_once(':').map_or("", |(_, p)| p).to_string();
    let template = EnvoyTemplate::load("ext-proc-override-host/envoy.yaml")
        .unwrap()
        .set("PORT_EXT_PROC", port)
        .pool_endpoints(&pool(sims));
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    (envoy, shim)
}

fn send(envoy: &Envoy, i: usize, token: Option<&str>) -> Response {
    let r = envoy.send(&completion(i, token)).unwrap();
    assert_eq!(r.status, 200, "request {i}: {}", r.text());
    r
}

fn header(r: &Response, name: &str) -> String {
    r.header(name).unwrap_or_else(|| panic!("no {name} on the response")).to_string()
}

fn sessions_stick_and_tokenless_requests_spread(envoy: &Envoy, sims: &[ModelSim], product: &str) {
    // The first turn: no token yet; the answer names the replica that served it.
    let first = send(envoy, 0, None);
    let token = header(&first, TOKEN);
    let replica = header(&first, REPLICA);
    let served = header(&first, SERVED);
    assert_eq!(token, encode_session_token(&served), "{product}: the token is base64 of {served}");
    assert_eq!(decode_session_token(&token).as_deref(), Some(served.as_str()));
    assert!(sims.iter().any(|s| s.replica() == replica), "{product}: {replica} is not one of the pool");

    // Every later turn sending it back lands on the same replica and gets the same token again.
    for i in 1..=ROUNDS {
        let r = send(envoy, i, Some(&token));
        assert_eq!(header(&r, REPLICA), replica, "{product}: turn {i} left its session");
        assert_eq!(header(&r, TOKEN), token, "{product}: turn {i}");
    }

    // Without a token (or with one naming no pool member) the requests spread over the tied replicas.
    let stray = encode_session_token("127.0.0.1:1");
    let mut seen = BTreeSet::new();
    for i in 0..ROUNDS {
        let token = (i % 2 == 1).then_some(stray.as_str());
        let r = send(envoy, 100 + i, token);
        let served = header(&r, SERVED);
        assert_eq!(header(&r, TOKEN), encode_session_token(&served), "{product}: every answer has a token");
        seen.insert(header(&r, REPLICA));
    }
    assert!(seen.len() >= 2, "{product}: {ROUNDS} requests without a session all went to {seen:?}");
}

#[test]
fn filter_a_session_token_keeps_a_conversation_on_its_replica() {
    require!(envoy);
    let sims = sims(3);
    let envoy = filter_gateway(&sims);
    sessions_stick_and_tokenless_requests_spread(&envoy, &sims, "filter");
}

#[test]
fn shim_a_session_token_keeps_a_conversation_on_its_replica() {
    require!(envoy);
    let sims = sims(3);
    let (envoy, _shim) = shim_gateway(&sims);
    sessions_stick_and_tokenless_requests_spread(&envoy, &sims, "shim");
}
