//! The official `openai` Python client (from PyPI) through the picker gateway, unchanged: the client
//! must not notice that a proxy with a Wasm picker sits in front of the model servers.
//!
//! Uses the project venv that `cargo xtask` creates for Envoy (`.venv/`), installing `openai` into it
//! when missing; skips with a notice without that venv or Envoy.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{envoy_binary, filter_wasm, workspace_root, Envoy, EnvoyOptions, EnvoyTemplate, ModelSim};
use std::process::Command;
use std::time::Duration;

#[test]
fn the_openai_python_client_works_through_the_picker() {
    let python = workspace_root().join(".venv/bin/python");
    if !python.exists() || envoy_binary().is_none() {
        eprintln!("SKIPPED: no .venv/bin/python or Envoy (`cargo xtask envoy-check` creates both)");
        return;
    }
    let wasm = filter_wasm().unwrap();
    let has_openai = |py: &std::path::Path| {
        Command::new(py).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success())
    };
    if !has_openai(&python) {
        let out = Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet", "openai>=1.40,<3"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pip install openai failed:\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(has_openai(&python), "openai installed but cannot be imported");
    }

    let args = ["--time-scale", "0.05"];
    let sims = [ModelSim::start(&args).unwrap(), ModelSim::start(&args).unwrap()];
    let addrs: Vec<&str> = sims.iter().map(ModelSim::addr).collect();
    let config = serde_json::json!({
        "pool": {"name": "openai", "endpoints": addrs},
        "collector": {"intervalMs": 50, "timeoutMs": 500},
    });
    let template = EnvoyTemplate::load("wasm-picker/envoy.yaml")
        .unwrap()
        .wasm(&wasm)
        .gateway_config(&config.to_string())
        .pool_endpoints(&addrs);
    let envoy = Envoy::start(&template, &EnvoyOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let script = workspace_root().join("test-harness/e2e/tests/python/openai_client.py");
    let out =
        Command::new(&python).arg(&script).arg(format!("http://{}/v1", envoy.listener())).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} failed:\n{stdout}\n{stderr}", script.display());
    assert!(stdout.contains("chat, streaming chat and completion OK"), "{stdout}");
    // Every call went through the picker: Envoy routed them all to the pool.
    assert_eq!(envoy.stat("cluster.pool.upstream_rq_completed"), Some(3), "{stdout}");
}
