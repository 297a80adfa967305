//! `cargo xtask demo`: installs what a fresh machine lacks (Wasm target, Envoy), builds the filter and
//! model-sim, then runs the demo binary (`test-harness/benchmarks/src/bin/demo`), which owns every
//! process it starts.

use crate::cmd::{cargo, step};
use crate::tools::{ensure_envoy, ensure_wasm_target};

pub fn run(args: &[String]) -> Result<(), String> {
    ensure_wasm_target()?;
    let envoy = ensure_envoy()?;
    let wasm = crate::envoy::build_filter()?;
    step("build model-sim", cargo().args(["build", "-p", "model-sim", "--bin", "model-sim"]))?;
    // `cargo run` replaces itself with the demo on Unix, so Ctrl-C reaches the demo's own handler.
    step(
        "demo",
        cargo()
            .args(["run", "--quiet", "-p", "benchmarks", "--bin", "demo", "--", "--wasm"])
            .arg(&wasm)
            .args(args.iter().filter(|a| a.as_str() != "--"))
            .env("ENVOY_BIN", &envoy),
    )
}
