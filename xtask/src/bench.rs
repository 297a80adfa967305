//! `cargo xtask bench quality [--quick]`: the scheduling-quality suite (release build of
//! `quality-bench`), writing tables to stdout and `results.csv`, `tables.md` and PNG charts.
//!
//! Full mode writes into `docs/bench/` (what BENCHMARKS.md shows); `--quick` into
//! `target/quality-bench/` so CI smoke runs leave the committed results alone.
//!
//! `cargo xtask bench overhead [--quick]`: the picker's cost in real Envoy (nginx backend, wrk load), via
//! the `overhead` binary of test-harness; full mode writes `docs/bench/overhead.{md,csv}` and its PNG charts
//! `overhead-throughput-w<workers>.png` and `overhead-added-cpu-w<workers>.png`.

use crate::cmd::{cargo, step};

const USAGE: &str =
    "usage: cargo xtask bench quality [--quick] [--validate] [-- more quality-bench arguments]
       cargo xtask bench overhead [--quick] [-- more overhead arguments]";

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("quality") => quality(&args[1..]),
        Some("overhead") => crate::overhead::run(&args[1..]),
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
            .args(["run", "--release", "-p", "quality-bench", "--bin", "quality-bench", "--"])
            .args(&extra),
    )
}
