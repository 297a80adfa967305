//! `quality-bench`: runs the scheduling-quality suite and writes tables, `results.csv` and charts.
//! `cargo xtask bench quality [--quick]` builds it in release mode and runs it.

use benchmarks::chart::{self, Series};
use benchmarks::policy::PolicyKind;
use benchmarks::report::{self, CellSummary};
use benchmarks::sim::{self, SimConfig};
use benchmarks::stats::{paired_ratio_ci, Estimate};
use benchmarks::workload::{self, Arrival, SharedPrefixShape, TraceSpec, WorkloadKind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const USAGE: &str = "\
usage: quality-bench [--quick] [--validate] [--out DIR] [--replicas N] [--requests N] [--threads N]
                     [--workloads a,b] [--policies a,b] [--qps x,y] [--seed N] [--llama2-kv]

  --quick       fewer requests and load points (CI smoke run, a few minutes on 2 cores)
  --validate    only the simulator checks against published results (GIE ShareGPT, llm-d shared prefix)
  --out DIR     where results.csv and the PNG charts go (default target/quality-bench)
  --llama2-kv   replicas with Llama-2-7B's KV footprint (GIE's benchmark model)
  --qps x,y     load points instead of the workload's ladder (applies to every selected workload)
";

/// Load ladders are fractions of the saturation point found for each workload on the default cluster
/// (H100 / Llama-3.1-8B replicas): the load where TTFT jumps from milliseconds to seconds under
/// round-robin (prefix-aware routing for the shared-prefix workload). See BENCHMARKS.md.
fn saturation_qps(kind: WorkloadKind, replicas: usize) -> f64 {
    let per_replica = match kind {
        WorkloadKind::ShareGpt => 70.0,
        WorkloadKind::Bursty => 50.0,
        WorkloadKind::SharedPrefix => 1.5,
        WorkloadKind::MultiTurn => 30.0,
        WorkloadKind::MultiLora => 6.0,
    };
    per_replica * replicas as f64
}

/// Requests per cell: enough virtual time for steady state (the first 20 % of arrivals are warm-up and
/// not measured) and at least 10k (full) / 1.5k (quick) requests.
fn cell_requests(qps: f64, quick: bool) -> usize {
    let (seconds, floor) = if quick { (60.0, 1500) } else { (300.0, 10_000) };
    ((qps * seconds) as usize).max(floor)
}

const FULL_LADDER: [f64; 6] = [0.4, 0.6, 0.8, 0.9, 1.0, 1.15];
const QUICK_LADDER: [f64; 3] = [0.5, 0.9, 1.1];

struct Options {
    quick: bool,
    validate: bool,
    out: PathBuf,
    replicas: usize,
    requests: Option<usize>,
    threads: usize,
    workloads: Vec<WorkloadKind>,
    policies: Vec<PolicyKind>,
    qps: Option<Vec<f64>>,
    seed: u64,
    /// Replicas with Llama-2-7B's KV footprint (GIE's benchmark model) instead of Llama-3.1-8B's.
    llama2_kv: bool,
}

fn parse_list<T>(v: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    v.split(',').map(|s| parse(s.trim()).ok_or_else(|| format!("unknown {what} {s:?}"))).collect()
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        validate: false,
        out: PathBuf::from("target/quality-bench"),
        replicas: 8,
        requests: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()).min(2),
        workloads: WorkloadKind::ALL.to_vec(),
        policies: PolicyKind::ALL.to_vec(),
        qps: None,
        seed: 1,
        llama2_kv: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let number =
            |v: String| v.parse::<usize>().map_err(|_| format!("{a}: expected a whole number, got {v:?}"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--validate" => o.validate = true,
            "--llama2-kv" => o.llama2_kv = true,
            "--out" => o.out = PathBuf::from(value()?),
            "--replicas" => o.replicas = number(value()?)?.max(1),
            "--requests" => o.requests = Some(number(value()?)?.max(10)),
            "--threads" => o.threads = number(value()?)?.max(1),
            "--seed" => o.seed = number(value()?)? as u64,
            "--workloads" => o.workloads = parse_list(&value()?, "workload", WorkloadKind::parse)?,
            "--policies" => o.policies = parse_list(&value()?, "policy", PolicyKind::parse)?,
            "--qps" => o.qps = Some(parse_list(&value()?, "QPS value", |s| s.parse::<f64>().ok())?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// One (workload, QPS) point: its trace, shared by every policy.
struct Point {
    kind: WorkloadKind,
    qps: f64,
    trace: Vec<Arrival>,
    cfg: SimConfig,
}

impl Point {
    /// Arrivals before this are warm-up: simulated, not measured.
    fn warmup_us(&self) -> u64 {
        self.trace.get(self.trace.len() / 5).map_or(0, |a| a.at_us)
    }
}

/// Cluster for a workload: multi-LoRA servers hold 4 adapters at once (15 adapters in the traffic).
fn cluster_for(kind: WorkloadKind, replicas: usize, llama2_kv: bool) -> SimConfig {
    let mut cfg = if llama2_kv { SimConfig::h100_llama2_7b_kv(replicas) } else { SimConfig::h100(replicas) };
    if kind == WorkloadKind::MultiLora {
        cfg.engine.max_lora = 4;
    }
    cfg
}

fn make_point(kind: WorkloadKind, qps: f64, requests: usize, seed: u64, cfg: SimConfig) -> Point {
    let spec = TraceSpec {
        kind,
        qps,
        requests,
        seed,
        shared_prefix: SharedPrefixShape::scaled(cfg.cluster_kv_tokens(), 0.7),
    };
    Point { kind, qps, trace: workload::generate(&spec), cfg }
}

/// (point index, policy, summary, per-request records when kept).
type Cell = (usize, PolicyKind, CellSummary, Vec<sim::RequestRecord>);

/// Runs every (point, policy) pair on `threads` threads; returns summaries and per-request records
/// (the latter only when `keep_records`, for paired comparisons).
fn run_cells(
    points: &[Point],
    policies: &[PolicyKind],
    threads: usize,
    resamples: usize,
    seed: u64,
    keep_records: bool,
) -> Result<Vec<Cell>, String> {
    let jobs: Vec<(usize, PolicyKind)> =
        (0..points.len()).flat_map(|p| policies.iter().map(move |&k| (p, k))).collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let failure = Mutex::new(None::<String>);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while let Some(&(p, kind)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let Some(point) = points.get(p) else { break };
                    let started = Instant::now();
                    let outcome = kind.build(seed).and_then(|mut policy| {
                        sim::run(&point.trace, policy.as_mut(), &point.cfg).map_err(|e| e.to_string())
                    });
                    match outcome {
                        Ok(run) => {
                            let summary = report::summarize(
                                point.kind.name(),
                                kind.name(),
                                point.qps,
                                &run,
                                point.warmup_us(),
                                resamples,
                            );
                            eprintln!(
                                "  {:<14} {:>6.1} QPS  {:<19} p90 NTPOT {:>8}  p90 TTFT {:>8}  ({:.1} s)",
                                point.kind.name(),
                                point.qps,
                                kind.name(),
                                report::ms(summary.ntpot[1].value),
                                report::ms(summary.ttft[1].value),
                                started.elapsed().as_secs_f64()
                            );
                            let records = if keep_records { run.records } else { Vec::new() };
                            if let Ok(mut r) = results.lock() {
                                r.push((p, kind, summary, records));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                *f = Some(format!(
                                    "{} at {} QPS, {}: {e}",
                                    point.kind.name(),
                                    point.qps,
                                    kind.name()
                                ));
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut r = results.into_inner().map_err(|_| String::from("a worker thread panicked"))?;
    let order = |k: PolicyKind| policies.iter().position(|&x| x == k).unwrap_or(usize::MAX);
    r.sort_by_key(|a| (a.0, order(a.1)));
    Ok(r)
}

fn suite(o: &Options) -> Result<(), String> {
    let resamples = if o.quick { 100 } else { 200 };
    let ladder: &[f64] = if o.quick { &QUICK_LADDER } else { &FULL_LADDER };
    std::fs::create_dir_all(&o.out).map_err(|e| format!("creating {}: {e}", o.out.display()))?;
    let mut all: Vec<CellSummary> = Vec::new();
    let mut markdown = String::new();
    for &kind in &o.workloads {
        let cfg = cluster_for(kind, o.replicas, o.llama2_kv);
        let qps: Vec<f64> = match &o.qps {
            Some(q) => q.clone(),
            None => {
                ladder.iter().map(|f| (f * saturation_qps(kind, o.replicas) * 10.0).round() / 10.0).collect()
            }
        };
        let requests = |q: f64| o.requests.unwrap_or_else(|| cell_requests(q, o.quick));
        eprintln!("\n== {} ({} replicas)", kind.name(), o.replicas);
        let points: Vec<Point> =
            qps.iter().map(|&q| make_point(kind, q, requests(q), o.seed, cfg.clone())).collect();
        let cells = run_cells(&points, &o.policies, o.threads, resamples, o.seed, false)?;
        let summaries: Vec<CellSummary> = cells.into_iter().map(|c| c.2).collect();
        let refs: Vec<&CellSummary> = summaries.iter().collect();
        let counts: Vec<String> = points.iter().map(|p| p.trace.len().to_string()).collect();
        println!(
            "\n### {} — {} replicas, requests per cell {}\n",
            kind.name(),
            o.replicas,
            counts.join(" / ")
        );
        println!("{}", report::table(&refs, false));
        markdown.push_str(&format!("\n#### {}\n\n{}", kind.name(), report::table(&refs, true)));
        for (metric, label, pick) in [
            ("ntpot", "p90 NTPOT (ms)", (|c: &CellSummary| c.ntpot[1].value) as fn(&CellSummary) -> f64),
            ("ttft", "p90 TTFT (ms)", |c: &CellSummary| c.ttft[1].value),
        ] {
            let series: Vec<Series> = o
                .policies
                .iter()
                .map(|p| Series {
                    name: p.name().to_string(),
                    points: summaries
                        .iter()
                        .filter(|c| c.policy == p.name())
                        .map(|c| (c.qps, pick(c)))
                        .collect(),
                })
                .collect();
            let title = format!("{}: {label} vs offered QPS, {} replicas", kind.name(), o.replicas);
            let png = chart::line_chart(&title, "offered QPS", label, &series, true)?;
            let path = o.out.join(format!("quality-{}-{metric}.png", kind.name()));
            std::fs::write(&path, png).map_err(|e| format!("writing {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        all.extend(summaries);
    }
    let csv_path = o.out.join("results.csv");
    std::fs::write(&csv_path, report::csv(&all))
        .map_err(|e| format!("writing {}: {e}", csv_path.display()))?;
    let md_path = o.out.join("tables.md");
    std::fs::write(&md_path, markdown).map_err(|e| format!("writing {}: {e}", md_path.display()))?;
    eprintln!("wrote {} and {}", csv_path.display(), md_path.display());
    Ok(())
}

fn pct(e: &Estimate) -> String {
    format!("{:+.0} % [{:+.0}, {:+.0}]", (e.value - 1.0) * 100.0, (e.lo - 1.0) * 100.0, (e.hi - 1.0) * 100.0)
}

/// The validation: GIE's ShareGPT picker-vs-round-robin gap on 6 replicas near saturation,
/// and llm-d's shared-prefix ordering.
fn validate(o: &Options) -> Result<(), String> {
    let requests = |q: f64| o.requests.unwrap_or_else(|| cell_requests(q, o.quick));
    let resamples = if o.quick { 100 } else { 300 };
    let replicas = 6;
    let policies = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::GieV03,
        PolicyKind::GieDefault,
        PolicyKind::Ours,
    ];
    println!(
        "\n## Validation 1: ShareGPT-like, {replicas} replicas with Llama-2-7B KV, picker vs round-robin\n"
    );
    // Saturation of 6 Llama-2-KV replicas on this workload (TTFT knee under round-robin), the load
    // GIE's 185–195 QPS points sit just below on their cluster.
    let sat = 200.0;
    let fractions: Vec<f64> = match &o.qps {
        Some(q) => q.iter().map(|x| x / sat).collect(),
        None => vec![0.8, 0.9, 0.95, 1.0, 1.05],
    };
    let points: Vec<Point> = fractions
        .iter()
        .map(|f| {
            make_point(
                WorkloadKind::ShareGpt,
                (f * sat).round(),
                requests(f * sat),
                o.seed,
                SimConfig::h100_llama2_7b_kv(replicas),
            )
        })
        .collect();
    let cells = run_cells(&points, &policies, o.threads, resamples, o.seed, true)?;
    println!("| QPS | load / saturation | policy | p90 NTPOT ms | vs round-robin (95 % CI) | p90 e2e vs round-robin | out tok/s |");
    println!("|---:|---:|---|---:|---:|---:|---:|");
    for (p, point) in points.iter().enumerate() {
        let of = |k: PolicyKind| cells.iter().find(|c| c.0 == p && c.1 == k);
        let Some(rr) = of(PolicyKind::RoundRobin) else { continue };
        let warmup = point.warmup_us();
        let values = |c: &Cell, f: fn(&sim::RequestRecord) -> Option<f64>| {
            c.3.iter().map(|r| if r.arrival_us >= warmup { f(r) } else { None }).collect::<Vec<Option<f64>>>()
        };
        for &k in &policies {
            let Some(c) = of(k) else { continue };
            let ntpot = paired_ratio_ci(
                &values(c, sim::RequestRecord::ntpot_ms),
                &values(rr, sim::RequestRecord::ntpot_ms),
                0.9,
                resamples,
                11,
            );
            let e2e = paired_ratio_ci(
                &values(c, sim::RequestRecord::e2e_ms),
                &values(rr, sim::RequestRecord::e2e_ms),
                0.9,
                resamples,
                12,
            );
            println!(
                "| {:.0} | {:.2} | {} | {} | {} | {} | {:.0} |",
                point.qps,
                point.qps / sat,
                k.name(),
                report::ms(c.2.ntpot[1].value),
                if k == PolicyKind::RoundRobin { String::from("—") } else { pct(&ntpot) },
                if k == PolicyKind::RoundRobin { String::from("—") } else { pct(&e2e) },
                c.2.output_tokens_per_s
            );
        }
    }
    println!("\n## Validation 2: shared prefix, 8 replicas, ordering prefix-aware ≫ load-only ≈ random\n");
    let sat = saturation_qps(WorkloadKind::SharedPrefix, 8);
    let points: Vec<Point> = [0.8, 1.0, 1.2]
        .iter()
        .map(|f| {
            make_point(
                WorkloadKind::SharedPrefix,
                (f * sat * 10.0).round() / 10.0,
                requests(f * sat),
                o.seed,
                SimConfig::h100(8),
            )
        })
        .collect();
    let policies = [
        PolicyKind::Random,
        PolicyKind::LeastRequest,
        PolicyKind::GieV03,
        PolicyKind::GieDefault,
        PolicyKind::Ours,
    ];
    let cells = run_cells(&points, &policies, o.threads, resamples, o.seed, false)?;
    let refs: Vec<&CellSummary> = cells.iter().map(|c| &c.2).collect();
    println!("{}", report::table(&refs, true));
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("quality-bench: {e}\n");
            }
            eprint!("{USAGE}");
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    let started = Instant::now();
    let result = if o.validate { validate(&o) } else { suite(&o) };
    match result {
        Ok(()) => {
            eprintln!("quality-bench: done in {:.0} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quality-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
