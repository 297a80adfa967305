//! `quality-bench`: runs the scheduling-quality suite and writes tables, `results.csv` and charts.
//! `cargo xtask bench quality [--quick]` builds it in release mode and runs it.

use benchmarks::chart::{self, Series};
use benchmarks::overload;
use benchmarks::placement::{self, Placement};
use benchmarks::policy::PolicyKind;
use benchmarks::report::{self, CellSummary};
use benchmarks::sim::{self, SimConfig};
use benchmarks::stats::{paired_ratio_ci, Estimate};
use benchmarks::topology::{PodsKind, Topology, DEFAULT_CONNECTIONS};
use benchmarks::trace;
use benchmarks::workload::{self, Arrival, SharedPrefixShape, TraceSpec, WorkloadKind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const USAGE: &str = "\
usage: quality-bench [--quick] [--validate] [--overload] [--out DIR] [--replicas N] [--requests N] [--threads N]
                     [--workloads a,b] [--policies a,b] [--qps x,y] [--seed N] [--llama2-kv]
                     [--gateways G,..] [--workers W,..] [--connections C] [--pods a,b]
                     [--trace PATH] [--trace-speed x,y] [--trace-limit N]
                     [--placement] [--ours-config PATH]

  --quick         fewer requests and load points (CI smoke run, a few minutes on 2 cores)
  --validate      only the simulator checks against published results (GIE ShareGPT, llm-d shared prefix)
  --overload      only the overload suite (flow control, issue 19): priority bands (critical 100,
                  standard 0, sheddable -10: 20/50/30 %) from four tenants, one noisy; admission modes
                  compared on the same traces; writes flow-control-tables.md, flow-control.csv and
                  charts to --out.
                  Its options: --loads x,y (multiples of the pool's capacity, 70 QPS per replica;
                  default 0.8,1,1.2,2), --shapes steady,bursty, --seconds N (virtual seconds of
                  arrivals per cell, default 120), --slo-ttft-ms (2000), --slo-tpot-ms (100),
                  --modes a,b: no-admission-control, shedding, flow-control, each with -c<n>
                  (concurrency-detector, maxConcurrency n per pod), then -k<thousands> (hybrid,
                  maxTokenConcurrency) or -b<tokens> (prefill-backlog-detector, maxPrefillTokens per
                  pod); flow control also -h<percent> (priority-holdback-policy minCeiling),
                  -t<seconds> (defaultRequestTTL) and -e (enableEviction);
                  default no-admission-control, shedding, shedding-c1024, flow-control,
                  flow-control-c1024-t2, flow-control-c1024-b4096-h90-t2. --replicas defaults to 4 here
  --out DIR       where results.csv, topology.csv and the PNG charts go (default target/quality-bench)
  --llama2-kv     replicas with Llama-2-7B's KV footprint (GIE's benchmark model)
  --qps x,y       load points instead of the workload's ladder (applies to every selected workload)
  --workloads     sharegpt, shared-prefix, multi-turn, multi-lora, bursty (default: all five), trace
  --policies      round-robin, random, least-request, gie-v0.3, gie-default, sglang-cache-aware,
                  dynamo-cost, ours (default: these eight), k8s-service, gie-reference,
                  ours-trust-stale (ours, but failing scrapes and old metrics never exclude a pod)

Many decision points (every combination of the lists runs; default 1 x 1, one decision point):
  --gateways G    gateway replicas; nothing is shared between them but the pods (each scrapes them
                  on its own phase)
  --workers W     Envoy workers per gateway, each deciding on its own: a worker sees its siblings'
                  in-flight counts 1 ms late and their routed prefixes 10 ms late (least-request:
                  in-flight at once, as Envoy's shared per-host active-request gauge)
  --connections C client keep-alive connections (default 64), each pinned to a random gateway worker;
                  every request takes a random connection (multi-turn sessions too)
  k8s-service is a Kubernetes Service: kube-proxy pins each connection to a random pod. gie-reference
  is GIE's default configuration as ONE decision point (a single active EPP) for every gateway, each
  request paying the ext_proc round trip (1.68 ms, the shim's p50 over plain Envoy at 4 KiB bodies in
  docs/bench/overhead.md).

Uneven pods:
  --pods a,b      even: every replica at calibrated speed (default)
                  uneven: replica i of N at 1 - 0.4 i/(N-1) of it (1.0 down to 0.6)
                  straggler: the last replica at 0.5x speed (steps take twice as long)
                  noisy: every replica at full speed, but each slowed to 0.5x for windows that come
                  and go (quiet Exp(mean 20 s), slowed Exp(mean 5 s), independently per replica)
                  metrics-lost: every replica healthy at full speed, but the first one's scrapes fail
                  from a third to two thirds of the run (compare ours with ours-trust-stale)

Trace replay (adds the `trace` workload):
  --trace PATH    JSONL in the Mooncake / aiperf format (timestamp ms, input_length, output_length,
                  hash_ids of 512-token blocks; equal ids = equal text)
  --trace-speed   time scaling, 2 = twice the trace's rate (default 1; a list gives load points)
  --trace-limit N replay only the first N requests

Diagnostics:
  --placement     also write placement.md: each cell's missed prompt tokens by cause (the group's first
                  request, a pod new to the group, its prefill still pending, evicted) and how many pods
                  each group (first prompt piece) went to
  --ours-config PATH  run this scheduling configuration as `ours` instead of
                  envoy-config/scheduling/recommended.json (to try a candidate default on the same cells)
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
        // Replayed at its own rate (scaled by --trace-speed); no ladder.
        WorkloadKind::Trace => 1.0,
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
    overload: bool,
    grid: overload::Grid,
    replicas_given: bool,
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
    gateways: Vec<usize>,
    workers: Vec<usize>,
    connections: usize,
    pods: Vec<PodsKind>,
    trace: Option<PathBuf>,
    trace_speed: Vec<f64>,
    trace_limit: Option<usize>,
    placement: bool,
}

/// One way of deploying the gateways in front of one kind of pods.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Setup {
    topology: Topology,
    pods: PodsKind,
}

impl Setup {
    fn is_default(&self) -> bool {
        self.topology.decision_points() == 1 && self.pods == PodsKind::Even
    }

    /// What follows the policy's name in tables and charts (nothing for 1 x 1 on even pods).
    fn suffix(&self) -> String {
        if self.is_default() {
            String::new()
        } else {
            format!(" @{}/{}", self.topology.label(), self.pods.name())
        }
    }
}

impl Options {
    fn setups(&self) -> Vec<Setup> {
        let mut out = Vec::new();
        for &g in &self.gateways {
            for &w in &self.workers {
                for &pods in &self.pods {
                    let topology = Topology {
                        connections: self.connections,
                        seed: Topology::default().seed ^ self.seed,
                        ..Topology::new(g, w)
                    };
                    out.push(Setup { topology, pods });
                }
            }
        }
        out
    }
}

fn parse_list<T>(v: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    v.split(',').map(|s| parse(s.trim()).ok_or_else(|| format!("unknown {what} {s:?}"))).collect()
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        validate: false,
        overload: false,
        grid: overload::Grid::default(),
        replicas_given: false,
        out: PathBuf::from("target/quality-bench"),
        replicas: 8,
        requests: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()).min(2),
        workloads: WorkloadKind::ALL.to_vec(),
        policies: PolicyKind::ALL.to_vec(),
        qps: None,
        seed: 1,
        llama2_kv: false,
        gateways: vec![1],
        workers: vec![1],
        connections: DEFAULT_CONNECTIONS,
        pods: vec![PodsKind::Even],
        trace: None,
        trace_speed: vec![1.0],
        trace_limit: None,
        placement: false,
    };
    let mut workloads_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let number =
            |v: String| v.parse::<usize>().map_err(|_| format!("{a}: expected a whole number, got {v:?}"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--validate" => o.validate = true,
            "--overload" => o.overload = true,
            "--loads" => o.grid.loads = parse_list(&value()?, "load", positive_f64)?,
            "--shapes" => o.grid.shapes = parse_list(&value()?, "shape", overload::Shape::parse)?,
            "--modes" => o.grid.modes = parse_list(&value()?, "mode", overload::Mode::parse)?,
            "--seconds" => {
                o.grid.seconds = positive_f64(&value()?).ok_or("--seconds: expected a number > 0")?
            }
            "--slo-ttft-ms" => {
                o.grid.slo.ttft_ms = positive_f64(&value()?).ok_or("--slo-ttft-ms: expected a number > 0")?
            }
            "--slo-tpot-ms" => {
                o.grid.slo.tpot_ms = positive_f64(&value()?).ok_or("--slo-tpot-ms: expected a number > 0")?
            }
            "--llama2-kv" => o.llama2_kv = true,
            "--out" => o.out = PathBuf::from(value()?),
            "--replicas" => {
                o.replicas = number(value()?)?.max(1);
                o.replicas_given = true;
            }
            "--requests" => o.requests = Some(number(value()?)?.max(10)),
            "--threads" => o.threads = number(value()?)?.max(1),
            "--seed" => o.seed = number(value()?)? as u64,
            "--workloads" => {
                o.workloads = parse_list(&value()?, "workload", WorkloadKind::parse)?;
                workloads_given = true;
            }
            "--gateways" => o.gateways = parse_list(&value()?, "gateway count", positive)?,
            "--workers" => o.workers = parse_list(&value()?, "worker count", positive)?,
            "--connections" => o.connections = number(value()?)?.max(1),
            "--pods" => o.pods = parse_list(&value()?, "pods kind", PodsKind::parse)?,
            "--trace" => o.trace = Some(PathBuf::from(value()?)),
            "--trace-speed" => {
                o.trace_speed = parse_list(&value()?, "trace speed", |s| {
                    s.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0)
                })?
            }
            "--trace-limit" => o.trace_limit = Some(number(value()?)?.max(1)),
            "--placement" => o.placement = true,
            "--ours-config" => {
                let path = value()?;
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("--ours-config {path}: {e}"))?;
                benchmarks::policy::override_ours_config(text)?;
            }
            "--policies" => o.policies = parse_list(&value()?, "policy", PolicyKind::parse)?,
            "--qps" => o.qps = Some(parse_list(&value()?, "QPS value", |s| s.parse::<f64>().ok())?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let wants_trace = o.workloads.contains(&WorkloadKind::Trace);
    match (&o.trace, wants_trace) {
        (None, true) => return Err(String::from("the trace workload needs --trace PATH")),
        (Some(_), false) if workloads_given => o.workloads.push(WorkloadKind::Trace),
        (Some(_), false) => o.workloads = vec![WorkloadKind::Trace],
        _ => {}
    }
    Ok(o)
}

fn positive_f64(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0)
}

fn positive(s: &str) -> Option<usize> {
    s.parse::<usize>().ok().filter(|&n| n > 0)
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

/// (point index, setup index, policy, summary, per-request records when kept, placement when asked).
type Cell = (usize, usize, PolicyKind, CellSummary, Vec<sim::RequestRecord>, Option<Placement>);

/// The cluster of `point` deployed as `setup`: its topology, and its pods' speeds (noisy windows drawn
/// up to well after the last arrival).
fn setup_config(point: &Point, setup: &Setup, seed: u64) -> SimConfig {
    let mut cfg = point.cfg.clone();
    cfg.topology = setup.topology;
    let last = point.trace.last().map_or(0, |a| a.at_us);
    cfg.pods = setup.pods.build(cfg.replicas, last.saturating_mul(2).saturating_add(60_000_000), seed);
    cfg
}

/// What a cell keeps beside its summary.
#[derive(Clone, Copy, Debug, Default)]
struct Keep {
    /// Per-request records, for paired comparisons.
    records: bool,
    /// Where its prefix-cache misses came from (`--placement`).
    placement: bool,
}

/// Runs every (point, setup, policy) triple on `threads` threads; returns summaries, and what `keep`
/// asks for.
fn run_cells(
    points: &[Point],
    setups: &[Setup],
    policies: &[PolicyKind],
    threads: usize,
    resamples: usize,
    seed: u64,
    keep: Keep,
) -> Result<Vec<Cell>, String> {
    let jobs: Vec<(usize, usize, PolicyKind)> = (0..points.len())
        .flat_map(|p| (0..setups.len()).flat_map(move |s| policies.iter().map(move |&k| (p, s, k))))
        .collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let failure = Mutex::new(None::<String>);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while let Some(&(p, si, kind)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (Some(point), Some(setup)) = (points.get(p), setups.get(si)) else { break };
                    let started = Instant::now();
                    let mut cfg = setup_config(point, setup, seed);
                    cfg.topology.inflight_delay_us = kind.sibling_inflight_delay_us(&cfg.topology);
                    let label = format!("{}{}", kind.name(), setup.suffix());
                    let outcome = kind.build_decision_points(seed, &cfg.topology).and_then(|mut policies| {
                        sim::run_boxed(&point.trace, &mut policies, &cfg).map_err(|e| e.to_string())
                    });
                    match outcome {
                        Ok(run) => {
                            let mut summary = report::summarize(
                                point.kind.name(),
                                &label,
                                point.qps,
                                &run,
                                point.warmup_us(),
                                resamples,
                            );
                            summary.topology = setup.topology.label();
                            summary.pods = setup.pods.name().to_string();
                            eprintln!(
                                "  {:<14} {:>6.1} QPS  {:<19} p90 NTPOT {:>8}  p90 TTFT {:>8}  ({:.1} s)",
                                point.kind.name(),
                                point.qps,
                                label,
                                report::ms(summary.ntpot[1].value),
                                report::ms(summary.ttft[1].value),
                                started.elapsed().as_secs_f64()
                            );
                            let placed = keep
                                .placement
                                .then(|| placement::analyze(&point.trace, &run.records, point.warmup_us()));
                            let records = if keep.records { run.records } else { Vec::new() };
                            if let Ok(mut r) = results.lock() {
                                r.push((p, si, kind, summary, records, placed));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                *f =
                                    Some(format!("{} at {} QPS, {label}: {e}", point.kind.name(), point.qps));
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
    r.sort_by_key(|a| (a.0, a.1, order(a.2)));
    Ok(r)
}

/// The trace's load points: the first `--trace-limit` requests at each `--trace-speed`.
fn trace_points(o: &Options, cfg: &SimConfig) -> Result<Vec<Point>, String> {
    let Some(path) = &o.trace else { return Ok(Vec::new()) };
    let requests = trace::read(path, o.trace_limit)?;
    Ok(o.trace_speed
        .iter()
        .map(|&speed| {
            let arrivals = trace::arrivals(&requests, speed);
            let qps = (trace::mean_rate(&arrivals) * 100.0).round() / 100.0;
            Point { kind: WorkloadKind::Trace, qps, trace: arrivals, cfg: cfg.clone() }
        })
        .collect())
}

fn suite(o: &Options) -> Result<(), String> {
    let resamples = if o.quick { 100 } else { 200 };
    let ladder: &[f64] = if o.quick { &QUICK_LADDER } else { &FULL_LADDER };
    std::fs::create_dir_all(&o.out).map_err(|e| format!("creating {}: {e}", o.out.display()))?;
    let setups = o.setups();
    let many = setups.iter().any(|s| !s.is_default())
        || o.policies.iter().any(|p| PolicyKind::EXTRA.contains(p))
        || o.workloads.contains(&WorkloadKind::Trace);
    let mut all: Vec<CellSummary> = Vec::new();
    let mut markdown = String::new();
    let mut topology_markdown = String::new();
    let mut placement_markdown = String::new();
    for &kind in &o.workloads {
        let cfg = cluster_for(kind, o.replicas, o.llama2_kv);
        let points: Vec<Point> = if kind == WorkloadKind::Trace {
            trace_points(o, &cfg)?
        } else {
            let qps: Vec<f64> = match &o.qps {
                Some(q) => q.clone(),
                None => ladder
                    .iter()
                    .map(|f| (f * saturation_qps(kind, o.replicas) * 10.0).round() / 10.0)
                    .collect(),
            };
            let requests = |q: f64| o.requests.unwrap_or_else(|| cell_requests(q, o.quick));
            qps.iter().map(|&q| make_point(kind, q, requests(q), o.seed, cfg.clone())).collect()
        };
        eprintln!("\n== {} ({} replicas)", kind.name(), o.replicas);
        let keep = Keep { records: false, placement: o.placement };
        let cells = run_cells(&points, &setups, &o.policies, o.threads, resamples, o.seed, keep)?;
        if o.placement {
            placement_markdown.push_str(&format!("\n#### {}\n\n{}\n", kind.name(), placement::HEADER));
            for c in &cells {
                if let Some(p) = &c.5 {
                    let label = format!("{} {} {} {}", c.3.qps, c.3.policy, c.3.topology, c.3.pods);
                    placement_markdown.push_str(&format!("{}\n", placement::row(&label, p)));
                }
            }
        }
        // Series in run order: each policy in each setup.
        let mut labels: Vec<String> = Vec::new();
        for c in &cells {
            if !labels.contains(&c.3.policy) {
                labels.push(c.3.policy.clone());
            }
        }
        let summaries: Vec<CellSummary> = cells.into_iter().map(|c| c.3).collect();
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
        if many {
            println!("{}", report::topology_table(&refs, false));
        }
        topology_markdown.push_str(&format!(
            "\n#### {}\n\n{}",
            kind.name(),
            report::topology_table(&refs, true)
        ));
        for (metric, label, pick) in [
            ("ntpot", "p90 NTPOT (ms)", (|c: &CellSummary| c.ntpot[1].value) as fn(&CellSummary) -> f64),
            ("ttft", "p90 TTFT (ms)", |c: &CellSummary| c.ttft[1].value),
        ] {
            let series: Vec<Series> = labels
                .iter()
                .map(|name| Series {
                    name: name.clone(),
                    points: summaries
                        .iter()
                        .filter(|c| &c.policy == name)
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
    let write = |name: &str, text: &str| {
        let path = o.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
        Ok::<(), String>(())
    };
    write("results.csv", &report::csv(&all))?;
    write("tables.md", &markdown)?;
    write("topology.csv", &report::topology_csv(&all))?;
    write("topology.md", &topology_markdown)?;
    if o.placement {
        println!("{placement_markdown}");
        write("placement.md", &placement_markdown)?;
    }
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
    let setups = [Setup { topology: Topology::default(), pods: PodsKind::Even }];
    let keep = Keep { records: true, placement: false };
    let cells = run_cells(&points, &setups, &policies, o.threads, resamples, o.seed, keep)?;
    println!("| QPS | load / saturation | policy | p90 NTPOT ms | vs round-robin (95 % CI) | p90 e2e vs round-robin | out tok/s |");
    println!("|---:|---:|---|---:|---:|---:|---:|");
    for (p, point) in points.iter().enumerate() {
        let of = |k: PolicyKind| cells.iter().find(|c| c.0 == p && c.2 == k);
        let Some(rr) = of(PolicyKind::RoundRobin) else { continue };
        let warmup = point.warmup_us();
        let values = |c: &Cell, f: fn(&sim::RequestRecord) -> Option<f64>| {
            c.4.iter().map(|r| if r.arrival_us >= warmup { f(r) } else { None }).collect::<Vec<Option<f64>>>()
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
                report::ms(c.3.ntpot[1].value),
                if k == PolicyKind::RoundRobin { String::from("—") } else { pct(&ntpot) },
                if k == PolicyKind::RoundRobin { String::from("—") } else { pct(&e2e) },
                c.3.output_tokens_per_s
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
    let cells = run_cells(&points, &setups, &policies, o.threads, resamples, o.seed, Keep::default())?;
    let refs: Vec<&CellSummary> = cells.iter().map(|c| &c.3).collect();
    println!("{}", report::table(&refs, true));
    Ok(())
}

/// The overload suite: every (shape, load, mode) cell, its tables, CSV and charts.
fn overload_suite(o: &Options) -> Result<(), String> {
    let mut grid = o.grid.clone();
    grid.seed = o.seed;
    grid.threads = o.threads;
    if o.replicas_given {
        grid.replicas = o.replicas;
    }
    std::fs::create_dir_all(&o.out).map_err(|e| format!("creating {}: {e}", o.out.display()))?;
    eprintln!(
        "\n== overload: {} replicas ({} QPS capacity), {} s of arrivals per cell, SLO TTFT ≤ {} ms and TPOT ≤ {} ms",
        grid.replicas,
        overload::CAPACITY_QPS_PER_REPLICA * grid.replicas as f64,
        grid.seconds,
        grid.slo.ttft_ms,
        grid.slo.tpot_ms
    );
    let cells = overload::run_grid(&grid, &|line: &str| eprintln!("{line}"))?;
    let main = overload::table(&cells);
    let tenants = overload::tenant_table(&cells);
    println!("\n{main}\n{tenants}");
    let write = |name: &str, bytes: &[u8]| {
        let path = o.out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
        Ok::<(), String>(())
    };
    let tables = format!(
        "# Flow control under overload: every cell\n\nWritten by `quality-bench --overload`; method, tuning and \
         findings in [flow-control.md](flow-control.md). p99 TTFT in ms unless marked s; rejected = total \
         (429 / 503).\n\n{main}\n## p99 TTFT of the standard band per tenant\n\n{tenants}"
    );
    write("flow-control-tables.md", tables.as_bytes())?;
    write("flow-control.csv", overload::csv(&cells).as_bytes())?;
    for (name, png) in overload::charts(&cells, &grid)? {
        write(&name, &png)?;
    }
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
    let result = if o.overload {
        overload_suite(&o)
    } else if o.validate {
        validate(&o)
    } else {
        suite(&o)
    };
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
