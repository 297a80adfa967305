//! `cargo xtask bench overhead [--quick]`: installs what the suite runs on (Envoy 1.40 in .venv/, nginx
//! and wrk from apt, and perf for `-- --attribute`), builds the shim in release, then runs the
//! `overhead` binary of `test-harness/benchmarks`.

use crate::cmd::{cargo, step};
use crate::tools::{ensure_apt_packages, ensure_envoy, ensure_wasm_target, Need};

pub fn run(args: &[String]) -> Result<(), String> {
    let extra = crate::bench::bench_args(args);
    let envoy = ensure_envoy()?;
    ensure_wasm_target()?;
    ensure_packages(args.iter().any(|a| a == "--attribute"))?;
    step("build the ext_proc shim (release)", cargo().args(["build", "--release", "-p", "epp-shim"]))?;
    step(
        "overhead benchmark",
        cargo()
            .args(["run", "-p", "benchmarks", "--bin", "overhead", "--"])
            .args(&extra)
            .env("ENVOY_BIN", envoy),
    )
}

/// nginx (the backend) and wrk (the load) from the distribution, and perf when sampling, installed with
/// apt-get when missing.
fn ensure_packages(perf: bool) -> Result<(), String> {
    let perf = perf.then_some((Need::Program("perf"), "linux-perf"));
    let needs: Vec<(Need, &str)> = [(Need::Program("nginx"), "nginx-light"), (Need::Program("wrk"), "wrk")]
        .into_iter()
        .chain(perf)
        .collect();
    ensure_apt_packages("the overhead benchmark", &needs)
}
