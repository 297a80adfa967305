//! `cargo xtask bench quality [--quick]`: the scheduling-quality suite (release build of the
//! `quality-bench` binary of `test-harness/benchmarks`), writing tables to stdout and `results.csv`,
//! `tables.md` and PNG charts.
//!
//! Full mode writes into `docs/bench/` (what BENCHMARKS.md shows); `--quick` into
//! `target/quality-bench/` so CI smoke runs leave the committed results alone.
//!
//! `cargo xtask bench overhead [--quick]`: the picker's cost in real Envoy (nginx backend, wrk load), via
//! the `overhead` binary of `test-harness/benchmarks`; full mode writes `docs/bench/overhead.{md,csv}`
//! and its PNG charts `overhead-throughput-w<workers>.png` and `overhead-added-cpu-w<workers>.png`.
//!
//! `cargo xtask bench faults [--quick]`: routing around a failing pod in real Envoy (the filter, the
//! ext_proc shim and round-robin, six faults), via the `faults` binary of `test-harness/benchmarks`;
//! full mode writes `docs/bench/faults.md`.
//!
//! `cargo xtask bench core-wasm [-- criterion filter and options]`: the core's Criterion benchmarks
//! compiled to `wasm32-wasip1` (with SIMD, as the filter ships) and run under Node's V8, the engine
//! Envoy runs the filter on; results in `target/criterion-wasm/`.

use crate::cmd::{cargo, step, workspace_root};
use crate::tools::{ensure_wasm_target, require_node, WASM_TARGET};

const USAGE: &str =
    "usage: cargo xtask bench quality [--quick] [--validate] [-- more quality-bench arguments]
       cargo xtask bench overhead [--quick] [-- more overhead arguments]
       cargo xtask bench faults [--quick] [-- more faults arguments]
       cargo xtask bench core-wasm [-- criterion filter and options]";

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("quality") => quality(&args[1..]),
        Some("overhead") => crate::overhead::run(&args[1..]),
        Some("faults") => crate::faults::run(&args[1..]),
        Some("core-wasm") => core_wasm(&args[1..]),
        _ => Err(String::from(USAGE)),
    }
}

fn quality(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut extra: Vec<String> = args.iter().filter(|a| a.as_str() != "--").cloned().collect();
    if !extra.iter().any(|a| a == "--out") {
        let out = if quick { "target/quality-bench" } else { "docs/bench" };
        extra.extend(["--out".to_string(), out.to_string()]);
    }
    step(
        "quality benchmark",
        cargo()
            // Without the `envoy` feature (overhead and demo only): the release build skips wasmtime.
            .args(["run", "--release", "-p", "benchmarks", "--no-default-features"])
            .args(["--bin", "quality-bench", "--"])
            .args(&extra),
    )
}

fn core_wasm(args: &[String]) -> Result<(), String> {
    ensure_wasm_target()?;
    require_node()?;
    let root = workspace_root();
    let runner = root.join("xtask/wasi/run.mjs");
    let out = root.join("target/criterion-wasm");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let extra: Vec<&String> = args.iter().filter(|a| a.as_str() != "--").collect();
    step(
        "core benchmarks as Wasm under Node",
        cargo()
            .args(["bench", "-p", "scheduler-core", "--bench", "core", "--target", WASM_TARGET, "--"])
            .args(extra)
            .env("CARGO_TARGET_WASM32_WASIP1_RUNNER", format!("node --no-warnings {}", runner.display()))
            // run.mjs lends the benchmark this directory (as /criterion) for Criterion's reports.
            .env("WASI_CRITERION_DIR", &out),
    )
}

/// A benchmark's arguments as its binary takes them (`--` dropped); full runs (no `--quick`) write into
/// `docs/bench/` unless `--out` says otherwise.
pub fn bench_args(args: &[String]) -> Vec<String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut extra: Vec<String> = args.iter().filter(|a| a.as_str() != "--").cloned().collect();
    if !quick && !extra.iter().any(|a| a == "--out") {
        extra.extend(["--out".to_string(), "docs/bench".to_string()]);
    }
    extra
}
