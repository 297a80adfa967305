//! Project commands: `cargo xtask test` (everything CI checks) and, as the project grows, `demo` and
//! `bench`. Plain std and three small crates (for `image`), so it builds in seconds on a fresh machine.
// A developer tool: the workspace denies these for code that runs in the proxy, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod bench;
mod cmd;
mod demo;
mod envoy;
mod faults;
mod fuzz;
mod image;
mod k8s;
mod overhead;
mod soak;
mod test;
mod tools;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test          fmt check, dependency licenses and bans (cargo-deny, deny.toml), clippy (-D warnings),
                every test in the workspace, the core's tests as Wasm, every Envoy config under
                envoy-config/ through `envoy --mode validate`, every Kubernetes manifest against the real CRDs
                and Kubernetes' schemas (k8s-check), and `image --verify`; installs Debian's nginx-light
                and libnginx-mod-http-js with apt-get when missing (the NGINX end-to-end tests)
  envoy-check   install Envoy 1.40 into .venv/ if missing and validate the configs in envoy-config/
  k8s-check     install kubernetes-validate into .venv/ if missing and validate envoy-config/kubernetes/ against
                Kubernetes' schemas and the CRDs in test-harness/fixtures/crds/ (offline)
  demo          picker vs round-robin Envoy on 4 simulated vLLM replicas: installs what is missing, replays
                a seeded shared-prefix chat workload through both and prints a table (target/demo/ttft.png)
  bench quality [--quick] [--validate]
                scheduling quality of the routing policies on simulated replicas (BENCHMARKS.md)
  bench overhead [--quick]
                the picker's cost in real Envoy against plain Envoy, a do-nothing Wasm filter and the
                ext_proc shim (installs nginx and wrk with apt-get when missing; BENCHMARKS.md)
  bench faults [--quick]
                routing around a failing pod (kill -9, SIGSTOP, hung /metrics, 5xx, missing gauge) through
                the filter, the ext_proc shim and round-robin Envoy on 4 simulated replicas (BENCHMARKS.md)
  fuzz [--seconds N] [TARGET]
                each coverage-guided fuzz target in fuzz/ (or one) for N seconds (default 60): installs
                nightly and cargo-fuzz when missing, prints executions, coverage and crashes
  soak (--minutes N | --seconds N) [-- more soak options]
                the filter and the shim side by side in real Envoy (2 workers each) under steady mixed
                traffic (streams, cancels, bad bodies) and scheduled faults (replica killed, /metrics hung,
                companion collector down): RSS over time, in-flight after the stop, failures outside the
                fault windows, Wasm VM restarts; exits non-zero when a target is missed (docs/reliability.md)
  image [--format compat|oci|both] [--out DIR] [--tag NAME:TAG] [--wasm FILE] | --verify
                the filter as OCI image layouts Istio and Envoy Gateway pull (no Docker; reproducible
                digests); --verify round-trips them through a local registry (docs/deploy/oci-image.md)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("envoy-check") => test::envoy_check(&args[1..]),
        Some("k8s-check") => k8s::check(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("image") => image::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
