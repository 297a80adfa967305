//! `cargo xtask soak --minutes N` (or `--seconds N`): installs Envoy 1.40 into .venv/ if missing, builds the
//! filter, and the shim and model-sim in release, then runs the `soak` binary of `test-harness/benchmarks`:
//! the filter and the shim side by side in real Envoy (two workers each) under steady mixed traffic and
//! scheduled faults, sampling RSS, in-flight gauges and the Wasm VMs; it exits non-zero when a target is
//! missed (docs/reliability.md, "Soak"). Output in `target/soak/` unless `--out DIR`.
//!
//! `cargo xtask test` runs a short smoke ([`smoke`]) on the debug builds its test step has just made.

use crate::cmd::{cargo, step, target_dir};
use crate::tools::{ensure_envoy, ensure_wasm_target};
use std::path::Path;

/// Seconds of traffic in the smoke run (the whole step takes about twice that: starts, warm-up, drain).
const SMOKE_SECONDS: &str = "20";
/// The smoke's prefix index capacity per endpoint: small, so that its fill phase takes seconds (at the
/// default, each model server's KV blocks, it took 33.5 s with release builds; docs/reliability.md).
const SMOKE_PREFIX_LRU: &str = "1000";

pub fn run(args: &[String]) -> Result<(), String> {
    let extra: Vec<&String> = args.iter().filter(|a| a.as_str() != "--").collect();
    if !extra.iter().any(|a| *a == "--minutes" || *a == "--seconds" || *a == "--help" || *a == "-h") {
        return Err(String::from(
            "usage: cargo xtask soak (--minutes N | --seconds N) [more soak options, --help]",
        ));
    }
    let envoy = ensure_envoy()?;
    ensure_wasm_target()?;
    crate::envoy::build_filter()?;
    step(
        "build the ext_proc shim and model-sim (release)",
        cargo().args(["build", "--release", "-p", "epp-shim", "-p", "model-sim"]),
    )?;
    soak(&envoy, &target_dir().join("release"), &extra)
}

/// The smoke run of `cargo xtask test`: the debug `model-sim` and `epp-shim` the test step built, the filter
/// the Envoy step built, the fill phase on prefix indexes of [`SMOKE_PREFIX_LRU`] blocks per endpoint (a
/// few seconds), then 20 s of traffic with one of each fault; the same targets as a long run except the
/// RSS slopes (not judged under 10 minutes).
pub fn smoke() -> Result<(), String> {
    let envoy = ensure_envoy()?;
    let out = String::from("target/soak-smoke");
    let args = [
        String::from("--seconds"),
        String::from(SMOKE_SECONDS),
        String::from("--prefix-lru"),
        String::from(SMOKE_PREFIX_LRU),
        String::from("--out"),
        out,
    ];
    soak(&envoy, &target_dir().join("debug"), &args.iter().collect::<Vec<_>>())
}

fn soak(envoy: &Path, bins: &Path, args: &[&String]) -> Result<(), String> {
    step(
        "soak",
        cargo()
            .args(["run", "--quiet", "-p", "benchmarks", "--bin", "soak", "--"])
            .args(args)
            .env("ENVOY_BIN", envoy)
            .env("EPP_SHIM_BIN", bins.join("epp-shim"))
            .env("MODEL_SIM_BIN", bins.join("model-sim")),
    )
}
