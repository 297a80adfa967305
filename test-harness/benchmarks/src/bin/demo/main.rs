//! `cargo xtask demo`: the picker in a real Envoy against plain round-robin on the same seeded workload,
//! four simulated vLLM replicas (one with a LoRA adapter, one already saturated), compared in one table.
//! With `--trace`, a Mooncake-format trace instead of the seeded workload; with `--even`, four identical
//! replicas; with `--picker-config` (repeatable), one picker run per scheduling configuration.
//!
//! xtask installs Envoy and builds the filter first, then runs this with `--wasm` and `ENVOY_BIN`.
// A benchmark tool: the workspace denies these for code that runs in the proxy, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod replay;
mod report;
mod workload;

use model_sim::engine::EngineConfig;
use replay::{Policy, Replicas, Settings};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

const USAGE: &str = "\
usage: demo [--wasm PATH] [--requests N] [--rate R] [--time-scale F] [--seed S] [--out DIR]
            [--trace PATH [--trace-limit N] [--trace-speed X]] [--even] [--profile h100|a100]
            [--picker-config FILE|JSON]...

  --wasm PATH       the picker filter (default: built from filter/)
  --requests N      requests per run [default: 600]
  --rate R          mean arrivals per second of model time (Poisson) [default: 12]
  --time-scale F    wall seconds per model second; 0.25 runs 4x faster [default: 0.25]
  --seed S          the workload's seed [default: 7]
  --out DIR         where ttft.png goes [default: target/demo]

Trace replay (instead of the seeded workload; --requests, --rate and --seed do not apply):
  --trace PATH      a JSONL trace in the Mooncake / aiperf format (timestamp ms, input_length,
                    output_length, hash_ids of 512-token blocks), each request sent as a streamed
                    completion of its generated prompt text (identical ids, identical text) with
                    max_tokens = output_length
  --trace-limit N   only the first N requests of the file [default: all]
  --trace-speed X   time scaling of the trace, 2 = twice its rate [default: 1]

Replicas and policies:
  --even            four identical replicas that serve only the demo's traffic, instead of the
                    demo's four (one with a LoRA adapter, one already saturated)
  --profile P       the replicas' model-sim profile: h100 (Llama-3.1-8B, 440k KV tokens) or a100
                    (Llama-2-7B, 45k) [default: a100; h100 with --trace]
  --picker-config C a scheduling configuration for the picker, a file such as
                    envoy-config/scheduling/gie-default.json or inline JSON ('{}': the filter's
                    no-configuration default, envoy-config/scheduling/recommended.json);
                    the run adds the pool and, unless C has one, the demo's 50 ms collector.
                    Repeatable: one picker run per configuration, then one round-robin run
                    [default: the demo's own, GIE's scorers plus LoRA affinity]
";

/// The model-sim profile of the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    H100,
    A100,
}

impl Profile {
    fn flag(self) -> &'static str {
        match self {
            Profile::H100 => "h100",
            Profile::A100 => "a100",
        }
    }

    /// Prompt plus output tokens one request may have: the replica's whole KV cache (more is refused).
    fn capacity_tokens(self) -> u64 {
        let cfg = match self {
            Profile::H100 => EngineConfig::h100_llama3_8b(),
            Profile::A100 => EngineConfig::a100_llama2_7b(),
        };
        u64::from(cfg.num_gpu_blocks) * u64::from(cfg.block_size)
    }
}

#[derive(Debug)]
struct Args {
    wasm: Option<PathBuf>,
    requests: usize,
    rate: f64,
    time_scale: f64,
    seed: u64,
    out: PathBuf,
    trace: Option<PathBuf>,
    trace_limit: Option<usize>,
    trace_speed: f64,
    even: bool,
    profile: Option<Profile>,
    /// As given: a file or inline JSON.
    picker_configs: Vec<String>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        wasm: None,
        requests: 600,
        rate: 12.0,
        time_scale: 0.25,
        seed: 7,
        out: e2e::workspace_root().join("target/demo"),
        trace: None,
        trace_limit: None,
        trace_speed: 1.0,
        even: false,
        profile: None,
        picker_configs: Vec::new(),
    };
    let (mut synthetic, mut trace_options) = (Vec::new(), Vec::new());
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "--even" {
            a.even = true;
            continue;
        }
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
            "--trace" => a.trace = Some(PathBuf::from(&value)),
            "--trace-limit" => {
                a.trace_limit = Some(value.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad("a count > 0"))?)
            }
            "--trace-speed" => {
                a.trace_speed = value
                    .parse()
                    .ok()
                    .filter(|&r: &f64| r > 0.0 && r.is_finite())
                    .ok_or_else(|| bad("a factor > 0"))?
            }
            "--profile" => {
                a.profile = Some(match value.as_str() {
                    "h100" => Profile::H100,
                    "a100" => Profile::A100,
                    _ => return Err(bad("h100 or a100")),
                })
            }
            "--picker-config" => a.picker_configs.push(value),
            _ => return Err(format!("unknown flag {flag:?}\n\n{USAGE}")),
        }
        if matches!(flag.as_str(), "--requests" | "--rate" | "--seed") {
            synthetic.push(flag);
        } else if matches!(flag.as_str(), "--trace-limit" | "--trace-speed") {
            trace_options.push(flag);
        }
    }
    match (&a.trace, synthetic.first(), trace_options.first()) {
        (Some(_), Some(flag), _) => {
            Err(format!("{flag} does not apply to --trace (the trace sets the requests)"))
        }
        (None, _, Some(flag)) => Err(format!("{flag} needs --trace")),
        _ => Ok(a),
    }
}

/// One picker run per `--picker-config` (the demo's own configuration without any), then round-robin.
fn policies(configs: &[String]) -> Result<Vec<Policy>, String> {
    let mut out = Vec::new();
    for c in configs {
        let (name, text) = if c.trim_start().starts_with('{') {
            (format!("picker {}", c.trim()), c.clone())
        } else {
            let text = std::fs::read_to_string(c).map_err(|e| format!("--picker-config {c}: {e}"))?;
            let file = Path::new(c).file_name().map_or(c.clone(), |f| f.to_string_lossy().into_owned());
            (format!("picker {file}"), text)
        };
        let config: Value =
            serde_json::from_str(&text).map_err(|e| format!("--picker-config {c}: not JSON: {e}"))?;
        if !config.is_object() {
            return Err(format!("--picker-config {c}: expected a JSON object"));
        }
        out.push(Policy::Picker { name, config: Some(config) });
    }
    if out.is_empty() {
        out.push(Policy::Picker { name: String::from("picker"), config: None });
    }
    out.push(Policy::RoundRobin);
    Ok(out)
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
    let args = parse_args(std::env::args().skip(1))?;
    let started = Instant::now();
    let policies = policies(&args.picker_configs)?;
    let profile = args.profile.unwrap_or(if args.trace.is_some() { Profile::H100 } else { Profile::A100 });
    let trace = match &args.trace {
        None => workload::generate(args.requests, args.rate, args.seed),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("--trace {}: {e}", path.display()))?;
            let items = workload::from_trace(&text, args.trace_limit, args.trace_speed)
                .map_err(|e| format!("--trace {}: {e}", path.display()))?;
            if items.is_empty() {
                return Err(format!("--trace {}: no requests", path.display()));
            }
            items
        }
    };
    // A request the replicas' KV cache cannot hold would be refused (HTTP 400): a setup error, not data.
    let capacity = profile.capacity_tokens();
    if let Some(too_long) = trace.iter().map(|i| i.tokens).max().filter(|&t| t > capacity) {
        return Err(format!(
            "a request of {too_long} tokens (prompt + max_tokens) does not fit a {} replica's {capacity}-token \
             KV cache: use --profile h100 or a smaller --trace-limit",
            profile.flag()
        ));
    }
    let model_seconds = trace.last().map_or(0.0, |i| i.at.as_secs_f64());
    let replicas = if args.even { Replicas::Even } else { Replicas::Demo };
    let wasm = match &args.wasm {
        Some(w) => w.clone(),
        None => e2e::filter_wasm()?,
    };
    match &args.trace {
        None => eprintln!(
            "demo: {} chat requests (seed {}), Poisson at {} req/s over {:.0} s of model time, time running \
             {}x faster; each policy gets fresh replicas",
            trace.len(),
            args.seed,
            args.rate,
            model_seconds,
            1.0 / args.time_scale
        ),
        Some(path) => {
            let tokens: u64 = trace.iter().map(|i| i.tokens).sum();
            eprintln!(
                "demo: {} requests of {} at speed {} ({:.2} req/s, {:.0} tokens each on average) over {:.0} s \
                 of model time, time running {}x faster; {} {} replicas; each policy gets fresh replicas",
                trace.len(),
                path.display(),
                args.trace_speed,
                (trace.len().saturating_sub(1)) as f64 / model_seconds.max(1e-9),
                tokens as f64 / trace.len() as f64,
                model_seconds,
                1.0 / args.time_scale,
                if args.even { "4 even" } else { "the demo's 4" },
                profile.flag()
            )
        }
    }
    let settings = Settings { wasm: &wasm, time_scale: args.time_scale, replicas, profile: profile.flag() };
    let mut runs = Vec::new();
    for policy in &policies {
        let (outcomes, cache) = replay::run(policy, &settings, &trace)?;
        let summary = report::Summary::new(policy.name(), &outcomes);
        // With the demo's replicas the counters include the busy replica's own traffic: shown only when
        // the replicas serve nothing but the run.
        runs.push(if args.even { summary.with_engine_cache(cache) } else { summary });
    }
    let chart = args.out.join("ttft.png");
    report::write_chart(&runs, &chart)?;
    println!();
    print!("{}", report::table(&runs, &replay::replica_names(replicas), args.time_scale));
    println!("TTFT chart: {}", chart.display());
    println!("(demo took {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn trace_flags_parse_and_do_not_mix_with_the_seeded_workload() {
        let a = parse(&["--trace", "t.jsonl", "--trace-limit", "1500", "--trace-speed", "0.8", "--even"])
            .unwrap();
        assert_eq!(a.trace.as_deref(), Some(Path::new("t.jsonl")));
        assert_eq!((a.trace_limit, a.trace_speed, a.even), (Some(1500), 0.8, true));
        let d = parse(&[]).unwrap();
        assert!(d.trace.is_none() && !d.even && d.profile.is_none() && d.picker_configs.is_empty());
        assert!(parse(&["--trace-limit", "5"]).unwrap_err().contains("needs --trace"));
        assert!(parse(&["--trace", "t", "--rate", "3"]).unwrap_err().contains("does not apply"));
        assert!(parse(&["--trace", "t", "--trace-speed", "0"]).is_err());
        assert!(parse(&["--profile", "b200"]).is_err());
    }

    #[test]
    fn picker_configs_make_one_run_each_then_round_robin() {
        let p = policies(&[]).unwrap();
        assert_eq!(p, vec![Policy::Picker { name: "picker".into(), config: None }, Policy::RoundRobin]);
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../envoy-config/scheduling/recommended.json");
        let p = policies(&["{}".into(), file.into()]).unwrap();
        let names: Vec<&str> = p.iter().map(Policy::name).collect();
        assert_eq!(names, vec!["picker {}", "picker recommended.json", "round-robin"]);
        assert!(policies(&["[1]".into()]).is_err() && policies(&["/no/such/file".into()]).is_err());
        assert!(Profile::H100.capacity_tokens() > 400_000 && Profile::A100.capacity_tokens() < 50_000);
    }
}
