//! `cargo xtask demo`: the picker in a real Envoy against plain round-robin on the same seeded workload,
//! four simulated vLLM replicas (one with a LoRA adapter, one already saturated), compared in one table.
//!
//! xtask installs Envoy and builds the filter first, then runs this with `--wasm` and `ENVOY_BIN`.
// A benchmark tool: the workspace denies these for code that runs in the proxy, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod replay;
mod report;
mod workload;

use replay::{Policy, Settings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

const USAGE: &str = "\
usage: demo [--wasm PATH] [--requests N] [--rate R] [--time-scale F] [--seed S] [--out DIR]

  --wasm PATH       the picker filter (default: built from filter/)
  --requests N      requests per run [default: 600]
  --rate R          mean arrivals per second of model time (Poisson) [default: 12]
  --time-scale F    wall seconds per model second; 0.25 runs 4x faster [default: 0.25]
  --seed S          the workload's seed [default: 7]
  --out DIR         where ttft.png goes [default: target/demo]
";

struct Args {
    wasm: Option<PathBuf>,
    requests: usize,
    rate: f64,
    time_scale: f64,
    seed: u64,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        wasm: None,
        requests: 600,
        rate: 12.0,
        time_scale: 0.25,
        seed: 7,
        out: e2e::workspace_root().join("target/demo"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        let bad = |what: &str| format!("{flag} {value:?}: expected {what}");
        match flag.as_str() {
            "--wasm" => a.wasm = Some(PathBuf::from(&value)),
            "--requests" => {
                a.requests = value.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad("a count > 0"))?
            }
            "--rate" => {
                a.rate = value.parse().ok().filter(|&r: &f64| r > 0.0).ok_or_else(|| bad("a rate > 0"))?
            }
            "--time-scale" => {
                a.time_scale =
                    value.parse().ok().filter(|&r: &f64| r > 0.0).ok_or_else(|| bad("a factor > 0"))?
            }
            "--seed" => a.seed = value.parse().map_err(|_| bad("an integer"))?,
            "--out" => a.out = PathBuf::from(&value),
            _ => return Err(format!("unknown flag {flag:?}\n\n{USAGE}")),
        }
    }
    Ok(a)
}

extern "C" fn on_signal(_: libc::c_int) {
    replay::INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM only raise a flag: the run then returns, and dropping the replicas and Envoy stops
/// them (they also die with this process through their parent-death signal, should it be killed).
fn handle_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    handle_signals();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if replay::INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("\ndemo: {e}; every replica and Envoy it started has been stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let started = Instant::now();
    let wasm = match &args.wasm {
        Some(w) => w.clone(),
        None => e2e::filter_wasm()?,
    };
    let trace = workload::generate(args.requests, args.rate, args.seed);
    let model_seconds = trace.last().map_or(0.0, |i| i.at.as_secs_f64());
    eprintln!(
        "demo: {} chat requests (seed {}), Poisson at {} req/s over {:.0} s of model time, time running {}x \
         faster; each policy gets fresh replicas",
        trace.len(),
        args.seed,
        args.rate,
        model_seconds,
        1.0 / args.time_scale
    );
    let settings = Settings { wasm: &wasm, time_scale: args.time_scale };
    let mut runs = Vec::new();
    for policy in [Policy::Picker, Policy::RoundRobin] {
        let outcomes = replay::run(policy, &settings, &trace)?;
        runs.push(report::Summary::new(policy.name(), &outcomes));
    }
    let chart = args.out.join("ttft.png");
    report::write_chart(&runs, &chart)?;
    println!();
    print!("{}", report::table(&runs, &replay::replica_names(), args.time_scale));
    println!("TTFT chart: {}", chart.display());
    println!("(demo took {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
