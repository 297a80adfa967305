//! `cargo xtask bench quality [--quick]`: the scheduling-quality suite (release build of
//! `quality-bench`), writing tables to stdout and `results.csv`, `tables.md` and PNG charts.
//!
//! Full mode writes into `docs/bench/` (what BENCHMARKS.md shows); `--quick` into
//! `target/quality-bench/` so CI smoke runs leave the committed results alone.

use crate::cmd::{cargo, step};

const USAGE: &str =
    "usage: cargo xtask bench quality [--quick] [--validate] [-- more quality-bench arguments]";

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("quality") => quality(&args[1..]),
        Some("overhead") => {
            Err(String::from("`bench overhead` is not available yet (issue 7, overhead suite)"))
        }
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
