//! `cargo xtask bench overhead [--quick]`: installs what the suite runs on (Envoy 1.40 in .venv/, nginx
//! and wrk from apt, and perf for `-- --attribute`), builds the shim in release, then runs the
//! `overhead` binary of `test-harness/benchmarks`.

use crate::cmd::{cargo, step};
use crate::tools::{ensure_envoy, ensure_wasm_target};
use std::process::Command;

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
    let perf = perf.then_some(("perf", "linux-perf"));
    let missing: Vec<&str> = [("nginx", "nginx-light"), ("wrk", "wrk")]
        .into_iter()
        .chain(perf)
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(format!(
            "the overhead benchmark needs {} (not found, and no apt-get to install them)",
            missing.join(" and ")
        ));
    }
    eprintln!("\nxtask: installing {} with apt-get", missing.join(", "));
    step("apt-get update", Command::new("apt-get").args(["update", "-q"]))?;
    step(
        "install benchmark tools",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(program).is_file())
    })
}
