//! `soak`: the filter and the shim side by side in real Envoy (two workers each) for minutes on end, under
//! steady mixed traffic and faults on a schedule, watching memory, in-flight counts and the Wasm VMs.
//!
//! - Replicas: `model-sim` on loopback. The **filter** runs in `envoy-config/wasm-picker-gateway-shape`
//!   (leader-elected collector polling the **companion collector**, `epp-shim --collector-only`, as under
//!   Istio and Envoy Gateway); the **shim** (`epp-shim`, ext_proc) behind
//!   `envoy-config/ext-proc-override-host`. Both with `envoy-config/scheduling/recommended.json`.
//! - Traffic (`load.rs`): open loop, alternating between the two gateways: completions, streams, streams
//!   the client closes after the first event, non-JSON, compressed and over-limit bodies, unknown models.
//! - Faults (`report::schedule`): a replica killed (`kill -9`) and started again on its port, a replica's
//!   `/metrics` hung, the companion collector killed and started again on its port.
//! - Samples every few seconds: RSS of both Envoys, the shim and the collector (`/proc/PID/status`),
//!   Envoy's active-request gauges, the filter's and the shim's in-flight gauges, the filter Envoy's Wasm
//!   VM counts, and the filter's own memory gauges (Wasm linear memory, each table's size and cap).
//! - Before the timed traffic, a fill phase (`fill.rs`, `--no-fill` to skip): long prompts, each new,
//!   until both pickers' prefix indexes sit at their caps and have gone on evicting, so that the run
//!   measures from the steady state of a gateway that has served for hours.
//! - At the end the traffic stops, the gauges must return to 0, and every process is stopped.
//!
//! Writes `samples.csv`, `memory.csv`, `fill.csv`, `summary.json`, `soak.md`, `rss.png` and `memory.png`
//! into `--out`, and exits non-zero when a target is missed. `cargo xtask soak --minutes N` builds what it
//! needs and runs this (docs/reliability.md).
// A benchmark tool: the workspace denies these for code that runs in the proxy, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod fill;
mod load;
mod report;

use e2e::{Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request};
use report::{FaultKind, Planned, Sample, Verdict, Window};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: soak (--minutes M | --seconds S) [--rate R] [--replicas N] [--sample-every S] [--grace S]
            [--prefix-lru N] [--no-fill] [--fill-factor F] [--fill-concurrency N] [--out DIR]

  --minutes M       how long the traffic runs (fractions allowed)
  --seconds S       the same in seconds
  --rate R          requests per second, open loop, half through each gateway [default: 30]
  --replicas N      model-sim replicas [default: 3]
  --sample-every S  seconds between samples [default: 5]
  --grace S         a failed request counts against a fault when its life overlaps the fault's window
                    stretched by this many seconds at its end [default: 5]
  --prefix-lru N    both pickers' prefix index keeps at most N blocks per endpoint (the prefix-cache
                    scorer's lruCapacityPerServer, autoTune off), so it fills within a short run
                    [default: as recommended.json: each server's reported KV blocks]
  --no-fill         start the timed traffic at once, without the fill phase
  --fill-factor F   the fill phase sends long prompts, each new, through both gateways until each
                    picker's prefix index is at its cap and F times its cap in blocks has been sent
                    to it (so it has evicted, and its hash table has resized after the first
                    evictions: at 27,500 blocks per endpoint after 2.1 to 3.2 times)
                    [default: 4]
  --fill-concurrency N
                    fill requests in flight per gateway [default: 4]
  --out DIR         where samples.csv, memory.csv, fill.csv, summary.json, soak.md, rss.png and
                    memory.png go [default: target/soak]

Needs Envoy (.venv/bin/envoy or $ENVOY_BIN); model-sim and epp-shim come from $MODEL_SIM_BIN and
$EPP_SHIM_BIN, else debug builds.
";

/// Envoy workers of both gateways.
const WORKERS: usize = 2;
/// model-sim's `--time-scale` (as in the faults benchmark).
const TIME_SCALE: &str = "0.25";
/// The pool's name in both pickers' configurations.
const POOL: &str = "soak";
/// Filter cluster the picker polls the collector through (`wasm-picker-gateway-shape`).
const COLLECTOR_CLUSTER: &str = "outbound|9090||epp-shim.default.svc.cluster.local";
/// RSS slope target, judged in runs of at least [`JUDGE_SLOPE_AFTER`]: growth at this rate is ~90 MiB a day.
const SLOPE_TARGET_KIB_PER_MIN: f64 = 64.0;
const JUDGE_SLOPE_AFTER: Duration = Duration::from_secs(600);
/// Blocks the fill sends per prefix index, as a multiple of its cap. Measured by replaying unique 256-block
/// prompts into `scheduler-core`'s `PrefixIndex` (three endpoints, picked at random): the hash table's
/// resize after the first evictions (deleted entries use up its free slots) came at 3.1 to 3.2 times the
/// cap at 27,500 blocks per endpoint (model-sim's KV blocks, the soak's default), at 1.9 to 2.1 times at
/// 1,000 (`--prefix-lru 1000`). In a 3-minute soak at 27,500 the shim's came at 3.0 to 3.1 times, the
/// filter's at 2.1 to 2.3 (hashbrown's groups are 8 wide on wasm32, 16 with SSE2). Other caps differ: how
/// soon it comes depends on how full the table is at the cap, and below 7/16 full it never comes (the
/// table then rehashes in place).
const DEFAULT_FILL_FACTOR: f64 = 4.0;
/// How long the in-flight gauges get to return to 0 once the last request has finished.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

struct Options {
    length: Duration,
    rate: f64,
    replicas: usize,
    sample_every: Duration,
    grace: Duration,
    prefix_lru: Option<u64>,
    /// False with `--no-fill`.
    fill: bool,
    /// Blocks the fill sends per prefix index, as a multiple of its cap.
    fill_factor: f64,
    fill_concurrency: usize,
    out: PathBuf,
    args: Vec<String>,
}

fn positive(flag: &str, v: Option<String>) -> Result<f64, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("{flag} {v:?}: expected a number > 0"))
}

fn parse_args() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = e2e::workspace_root();
    let mut o = Options {
        length: Duration::ZERO,
        rate: 30.0,
        replicas: 3,
        sample_every: Duration::from_secs(5),
        grace: Duration::from_secs(5),
        prefix_lru: None,
        fill: true,
        fill_factor: DEFAULT_FILL_FACTOR,
        fill_concurrency: 4,
        out: root.join("target/soak"),
        args: args.clone(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => o.length = Duration::from_secs_f64(positive("--minutes", it.next())? * 60.0),
            "--seconds" => o.length = Duration::from_secs_f64(positive("--seconds", it.next())?),
            "--rate" => {
                o.rate = positive("--rate", it.next())?;
                if o.rate > 200.0 {
                    return Err(format!("--rate {}: at most 200 requests per second", o.rate));
                }
            }
            "--replicas" => {
                let n = positive("--replicas", it.next())?;
                if n.fract() != 0.0 || !(2.0..=16.0).contains(&n) {
                    return Err(format!("--replicas {n}: expected a whole number from 2 to 16"));
                }
                o.replicas = n as usize;
            }
            "--sample-every" => {
                o.sample_every = Duration::from_secs_f64(positive("--sample-every", it.next())?)
            }
            "--grace" => o.grace = Duration::from_secs_f64(positive("--grace", it.next())?),
            "--prefix-lru" => {
                let n = positive("--prefix-lru", it.next())?;
                if n.fract() != 0.0 {
                    return Err(format!("--prefix-lru {n}: expected a whole number"));
                }
                o.prefix_lru = Some(n as u64);
            }
            "--no-fill" => o.fill = false,
            "--fill-factor" => {
                let f = positive("--fill-factor", it.next())?;
                if f < 1.0 {
                    return Err(format!(
                        "--fill-factor {f}: expected at least 1 (one cap's worth of blocks)"
                    ));
                }
                o.fill_factor = f;
            }
            "--fill-concurrency" => {
                let n = positive("--fill-concurrency", it.next())?;
                if n.fract() != 0.0 || n > 64.0 {
                    return Err(format!("--fill-concurrency {n}: expected a whole number from 1 to 64"));
                }
                o.fill_concurrency = n as usize;
            }
            "--out" => o.out = root.join(it.next().ok_or_else(|| format!("--out needs a value\n\n{USAGE}"))?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if o.length.is_zero() {
        return Err(format!("say how long: --minutes M or --seconds S\n\n{USAGE}"));
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("soak: a target was missed (see above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The picker configuration both gateways run: the recommended scheduling plus `extra` at the top level,
/// and the prefix index's capacity when `prefix_lru` is set.
fn picker_config(extra: serde_json::Value, prefix_lru: Option<u64>) -> Result<String, String> {
    let path = e2e::workspace_root().join("envoy-config/scheduling/recommended.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let object = config.as_object_mut().ok_or("recommended.json is not a JSON object")?;
    for (k, v) in extra.as_object().into_iter().flatten() {
        object.insert(k.clone(), v.clone());
    }
    if let Some(n) = prefix_lru {
        let plugins = object.get_mut("plugins").and_then(|p| p.as_array_mut()).ok_or("no plugins array")?;
        let scorer = plugins
            .iter_mut()
            .find(|p| p["type"] == "prefix-cache-scorer")
            .ok_or("recommended.json has no prefix-cache-scorer")?;
        // Without autoTune off the capacity follows each server's reported KV blocks instead.
        scorer["parameters"]["lruCapacityPerServer"] = serde_json::json!(n);
        scorer["parameters"]["autoTune"] = serde_json::json!(false);
    }
    Ok(config.to_string())
}

/// Everything the soak started; each process is stopped (killed by PID) when its handle is dropped.
struct Rig {
    sims: Vec<ModelSim>,
    sim_args: Vec<String>,
    collector: Option<EppShim>,
    collector_config: String,
    collector_port: String,
    filter_envoy: Envoy,
    shim: EppShim,
    shim_envoy: Envoy,
}

fn start_collector(config: &str, port: &str) -> Result<EppShim, String> {
    EppShim::start(config, &["--collector-only", "--plaintext", "--metrics-port", port])
}

impl Rig {
    /// Started on the calling (main) thread: the processes' parent-death signal follows that thread.
    fn start(replicas: usize, prefix_lru: Option<u64>) -> Result<Rig, String> {
        let sim_args = vec![String::from("--time-scale"), String::from(TIME_SCALE)];
        let sims = ModelSim::start_many(replicas, |_| sim_args.clone())?;
        let addrs: Vec<&str> = sims.iter().map(ModelSim::addr).collect();
        let collector_config = serde_json::json!({"pool": {"name": POOL, "endpoints": addrs}}).to_string();
        let collector = start_collector(&collector_config, "0")?;
        let collector_port = collector.addr("http").rsplit_once(':').map_or("", |(_, p)| p).to_string();
        let options =
            EnvoyOptions { concurrency: WORKERS, log_level: String::from("warn"), ..EnvoyOptions::default() };
        let filter_config = picker_config(
            serde_json::json!({
                "pool": {
                    "name": POOL,
                    "discoveryUrl": "http://epp-shim.default.svc.cluster.local:9090/snapshot",
                    "discoveryCluster": COLLECTOR_CLUSTER,
                },
                "collector": {"mode": "leader-elected"},
            }),
            prefix_lru,
        )?;
        let template = EnvoyTemplate::load("wasm-picker-gateway-shape/envoy.yaml")?
            .wasm(&e2e::filter_wasm()?)
            .gateway_config(&filter_config)
            .pool_endpoints(&addrs)
            .set("PORT_COLLECTOR", collector_port.clone());
        let filter_envoy = Envoy::start(&template, &options)?;
        let shim = EppShim::start(
            &picker_config(serde_json::json!({"pool": {"name": POOL, "endpoints": addrs}}), prefix_lru)?,
            &[],
        )?;
        let ext_proc_port = shim.ext_proc().rsplit_once(':').map_or("", |(_, p)| p).to_string();
        let template = EnvoyTemplate::load("ext-proc-override-host/envoy.yaml")?
            .pool_endpoints(&addrs)
            .set("PORT_EXT_PROC", ext_proc_port);
        let shim_envoy = Envoy::start(&template, &options)?;
        Ok(Rig {
            sims,
            sim_args,
            collector: Some(collector),
            collector_config,
            collector_port,
            filter_envoy,
            shim,
            shim_envoy,
        })
    }

    /// Until a completion through each gateway is answered 200 and the filter has published snapshots.
    fn settle(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let probe = |envoy: &Envoy| {
                let body = serde_json::json!({"model": load::MODEL, "prompt": "warm up", "max_tokens": 2});
                envoy
                    .send(
                        &Request::post_json("/v1/completions", body.to_string())
                            .timeout(Duration::from_secs(5)),
                    )
                    .is_ok_and(|r| r.status == 200)
            };
            let published = self.filter_envoy.stat("wasmcustom.epp_snapshots_published").unwrap_or(0);
            if published >= 2 && probe(&self.filter_envoy) && probe(&self.shim_envoy) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the gateways did not answer within {limit:?}; filter Envoy log:\n{}\nshim Envoy log:\n{}",
                    self.filter_envoy.process().log_tail(20),
                    self.shim_envoy.process().log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn inject(&mut self, p: &Planned) -> Result<(), String> {
        match p.kind {
            FaultKind::KillReplica => {
                let sim = self.sims.get(p.replica).ok_or("no such replica")?;
                signal(sim.process().id(), libc::SIGKILL);
            }
            FaultKind::MetricsHang => {
                self.sims.get(p.replica).ok_or("no such replica")?.set_faults(r#"{"metrics_hang": true}"#)?
            }
            // Dropping the handle kills the process.
            FaultKind::CollectorDown => drop(self.collector.take()),
        }
        Ok(())
    }

    fn restore(&mut self, p: &Planned) -> Result<(), String> {
        match p.kind {
            FaultKind::KillReplica => {
                let slot = self.sims.get_mut(p.replica).ok_or("no such replica")?;
                let port = slot.port();
                let args: Vec<&str> = self.sim_args.iter().map(String::as_str).collect();
                *slot = retry_bind(|| ModelSim::start_on_port(port, &args))?;
            }
            FaultKind::MetricsHang => {
                self.sims.get(p.replica).ok_or("no such replica")?.set_faults(r#"{"metrics_hang": false}"#)?
            }
            FaultKind::CollectorDown => {
                let (config, port) = (self.collector_config.clone(), self.collector_port.clone());
                self.collector = Some(retry_bind(|| start_collector(&config, &port))?);
            }
        }
        Ok(())
    }

    fn sample(&self, at: Duration, counters: &load::Counters) -> Sample {
        let f = admin_stats(&self.filter_envoy);
        let s = admin_stats(&self.shim_envoy);
        let shim_metrics = get_text(self.shim.addr("http"), "/metrics");
        let sum = |name: &str| -> Option<u64> {
            let text = shim_metrics.as_ref()?;
            Some(
                text.lines()
                    .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                    .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
                    .sum::<f64>() as u64,
            )
        };
        let stat =
            |m: &Option<HashMap<String, u64>>, name: &str| m.as_ref().and_then(|m| m.get(name).copied());
        Sample {
            at,
            rss_kib: [
                rss_kib(self.filter_envoy.process().id()),
                rss_kib(self.shim_envoy.process().id()),
                rss_kib(self.shim.process().id()),
                self.collector.as_ref().and_then(|c| rss_kib(c.process().id())),
            ],
            heap_kib: {
                let (f, s) = (heap_kib(&self.filter_envoy), heap_kib(&self.shim_envoy));
                [f.map(|h| h.0), f.map(|h| h.1), s.map(|h| h.0), s.map(|h| h.1)]
            },
            gauges: [
                stat(&f, "http.gateway.downstream_rq_active"),
                stat(&f, "cluster.pool.upstream_rq_active"),
                stat(&f, "wasmcustom.epp_in_flight_requests"),
                stat(&s, "http.gateway.downstream_rq_active"),
                stat(&s, "cluster.pool.upstream_rq_active"),
                sum("llm_d_epp_request_running"),
                sum("epp_shim_endpoint_in_flight_requests"),
                sum("llm_d_epp_extproc_streams_inflight"),
            ],
            vms_created: stat(&f, "wasm.envoy.wasm.runtime.v8.created"),
            vms_active: stat(&f, "wasm.envoy.wasm.runtime.v8.active"),
            memory: f.as_ref().map(|m| report::memory_gauges(m.iter())).unwrap_or_default(),
            shim_prefix: [sum("epp_shim_prefix_index_entries"), sum("epp_shim_prefix_index_capacity")],
            client_in_flight: counters.in_flight.load(Ordering::Relaxed),
            ok: counters.ok.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
        }
    }
}

impl Rig {
    /// The filter's prefix index, summed over its workers (each keeps one holding every worker's picks),
    /// and its Wasm linear memory; `None` when the admin did not answer or the gauges are not there yet.
    fn filter_index(&self) -> (Option<fill::Index>, Option<u64>) {
        let Some(stats) = admin_stats(&self.filter_envoy) else { return (None, None) };
        let m = report::memory_gauges(stats.iter());
        let get = |k: &str| m.get(k).copied();
        let index = (|| {
            Some(fill::Index {
                entries: get("prefix_entries")?,
                cap: get("prefix_entries_cap")?,
                endpoints: get("prefix_endpoints")?,
                // The pool's endpoints in every worker's index.
                endpoints_expected: get("prefix_endpoints_cap")?.max((self.sims.len() * WORKERS) as u64),
            })
        })();
        (index, get(report::LINEAR))
    }

    /// The shim's prefix index (`epp_shim_prefix_index_*` in its `/metrics`).
    fn shim_index(&self) -> Option<fill::Index> {
        let text = get_text(self.shim.addr("http"), "/metrics")?;
        let get = |name: &str| {
            let name = format!("epp_shim_prefix_index_{name} ");
            text.lines()
                .find_map(|l| l.strip_prefix(name.as_str())?.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        };
        Some(fill::Index {
            entries: get("entries")?,
            cap: get("capacity")?,
            endpoints: get("endpoints")?,
            endpoints_expected: self.sims.len() as u64,
        })
    }
}

/// What the fill phase did (`fill.rs`).
struct FillOutcome {
    shape: fill::Shape,
    factor: f64,
    concurrency: usize,
    length: Duration,
    /// Requests per gateway (filter, shim): sent, answered right.
    sent: [u64; 2],
    ok: [u64; 2],
    failed: u64,
    failures: Vec<String>,
    progress: [fill::Progress; 2],
    samples: Vec<fill::FillSample>,
}

impl FillOutcome {
    fn blocks_per_request(&self) -> u64 {
        self.shape.max_blocks as u64
    }
}

const SIDES: [&str; 2] = ["filter", "shim"];

/// The fill phase: long prompts, each new, through both gateways (`concurrency` in flight each) until
/// each picker's prefix index is full and `factor` × its cap in blocks has been sent to it. `Err` when
/// an index does not fill within [`fill::LIMIT`] or [`fill::MAX_REQUESTS`], or the gateways keep failing.
fn run_fill(rig: &Rig, o: &Options) -> Result<FillOutcome, String> {
    let reported =
        rig.sims.first().and_then(|s| s.metrics().ok()).and_then(|m| fill::reported_block_tokens(&m));
    let shape = fill::shape(&picker_config(serde_json::json!({}), o.prefix_lru)?, reported)?;
    let bytes = shape.prompt_bytes();
    let blocks = shape.max_blocks as u64;
    eprintln!(
        "    fill: {bytes}-byte prompts ({blocks} blocks of {} bytes each), {} in flight per gateway, until each \
         prefix index is full and {}× its cap sent",
        shape.block_bytes, o.fill_concurrency, o.fill_factor
    );
    let addrs = [rig.filter_envoy.listener().to_string(), rig.shim_envoy.listener().to_string()];
    let next = AtomicU64::new(0);
    let sent = [AtomicU64::new(0), AtomicU64::new(0)];
    let ok = [AtomicU64::new(0), AtomicU64::new(0)];
    let failed = AtomicU64::new(0);
    let done = [AtomicBool::new(false), AtomicBool::new(false)];
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let start = Instant::now();
    let mut progress = [fill::Progress::default(), fill::Progress::default()];
    let mut samples = Vec::new();
    let mut outcome: Result<(), String> = Ok(());
    std::thread::scope(|scope| {
        for side in 0..2 {
            for _ in 0..o.fill_concurrency {
                let (addr, next, sent, ok, failed, done, stop, failures) =
                    (&addrs[side], &next, &sent[side], &ok[side], &failed, &done[side], &stop, &failures);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        if sent.fetch_add(1, Ordering::Relaxed) >= fill::MAX_REQUESTS {
                            sent.fetch_sub(1, Ordering::Relaxed);
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let at = start.elapsed();
                        match fill::send(addr, &fill::body(&fill::prompt(i, bytes))) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                if let Ok(mut f) = failures.lock() {
                                    if f.len() < 20 {
                                        f.push(format!("{:.1} s via {}: {e}", at.as_secs_f64(), SIDES[side]));
                                    }
                                }
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                });
            }
        }
        // This thread reads both indexes once a second (the pickers report their gauges once a second).
        let mut next_log = Duration::ZERO;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let at = start.elapsed();
            let (filter, linear) = rig.filter_index();
            let shim = rig.shim_index();
            let answered = [ok[0].load(Ordering::Relaxed), ok[1].load(Ordering::Relaxed)];
            samples.push(fill::FillSample {
                at,
                ok: answered,
                failed: failed.load(Ordering::Relaxed),
                index: [filter, shim],
                linear_bytes: linear,
                rss_kib: [
                    rss_kib(rig.filter_envoy.process().id()),
                    rss_kib(rig.shim_envoy.process().id()),
                    rss_kib(rig.shim.process().id()),
                ],
            });
            for (side, (reading, indexes)) in [(filter, WORKERS as u64), (shim, 1)].into_iter().enumerate() {
                if let Err(e) =
                    progress[side].update(reading, at, answered[side] * blocks, indexes, o.fill_factor)
                {
                    outcome = Err(format!("the {}'s prefix index {e}", SIDES[side]));
                }
                if progress[side].done() {
                    done[side].store(true, Ordering::Relaxed);
                }
            }
            if at >= next_log || progress.iter().all(fill::Progress::done) {
                let show = |p: &fill::Progress| {
                    p.last
                        .map_or_else(|| String::from("no gauge yet"), |i| format!("{}/{}", i.entries, i.cap))
                };
                eprintln!(
                    "    {:>7.1} s  fill: filter {} entries ({} requests), shim {} ({} requests), {} failed; \
                     filter Wasm memory {:.2} MiB",
                    at.as_secs_f64(),
                    show(&progress[0]),
                    answered[0],
                    show(&progress[1]),
                    answered[1],
                    failed.load(Ordering::Relaxed),
                    linear.unwrap_or(0) as f64 / 1024.0 / 1024.0
                );
                next_log = at + Duration::from_secs(10);
            }
            if outcome.is_err() || progress.iter().all(fill::Progress::done) {
                break;
            }
            let wrong = failed.load(Ordering::Relaxed);
            if wrong >= fill::MAX_FAILURES {
                outcome = Err(format!("{wrong} fill requests failed"));
                break;
            }
            if at >= fill::LIMIT {
                outcome = Err(format!("not full and done within {:?}", fill::LIMIT));
                break;
            }
            if let Some(side) =
                (0..2).find(|&s| !progress[s].done() && sent[s].load(Ordering::Relaxed) >= fill::MAX_REQUESTS)
            {
                outcome = Err(format!(
                    "the {}'s index not done after {} requests",
                    SIDES[side],
                    fill::MAX_REQUESTS
                ));
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap_or_default();
    if let Err(e) = outcome {
        let state: Vec<String> = (0..2)
            .map(|s| {
                let last = progress[s].last.map_or_else(
                    || String::from("no gauge read"),
                    |i| {
                        format!(
                            "{} of {} entries, {} of {} endpoints",
                            i.entries, i.cap, i.endpoints, i.endpoints_expected
                        )
                    },
                );
                format!("{}: {last} after {} requests answered", SIDES[s], ok[s].load(Ordering::Relaxed))
            })
            .collect();
        return Err(format!("fill phase: {e} ({}); failed requests: {failures:?}", state.join("; ")));
    }
    Ok(FillOutcome {
        shape,
        factor: o.fill_factor,
        concurrency: o.fill_concurrency,
        length: start.elapsed(),
        sent: [sent[0].load(Ordering::Relaxed), sent[1].load(Ordering::Relaxed)],
        ok: [ok[0].load(Ordering::Relaxed), ok[1].load(Ordering::Relaxed)],
        failed: failed.load(Ordering::Relaxed),
        failures,
        progress,
        samples,
    })
}

/// A start on a port just freed can lose a race with an ephemeral port: a few tries within 5 s.
fn retry_bind<T>(mut start: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match start() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("cannot start again on its port: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this process started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn get_text(addr: &str, path: &str) -> Option<String> {
    Request::get(path)
        .timeout(Duration::from_secs(3))
        .send(addr)
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| r.text())
}

/// Envoy's tcmalloc heap, KiB: in use and held (admin `/memory`: `"allocated": "<bytes>"`, `"heap_size"`).
fn heap_kib(envoy: &Envoy) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(&get_text(envoy.admin(), "/memory")?).ok()?;
    let kib = |name: &str| {
        let bytes = v.get(name)?;
        bytes.as_str().and_then(|b| b.parse::<u64>().ok()).or_else(|| bytes.as_u64()).map(|b| b / 1024)
    };
    Some((kib("allocated")?, kib("heap_size")?))
}

/// Every counter and gauge of an Envoy's admin `/stats` (histograms left out).
fn admin_stats(envoy: &Envoy) -> Option<HashMap<String, u64>> {
    let text = get_text(envoy.admin(), "/stats")?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Log lines of a failed or panicking Wasm VM.
fn vm_failures(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("panicked") || l.contains("Wasm VM failed") || l.contains("Uncaught RuntimeError")
        })
        .map(|l| l.chars().take(300).collect())
        .collect()
}

fn run() -> Result<bool, String> {
    let o = parse_args()?;
    if e2e::envoy_binary().is_none() {
        return Err(String::from("no Envoy: run `cargo xtask envoy-check` (or set ENVOY_BIN)"));
    }
    let started_at = shell(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]);
    let commit = shell(&["git", "rev-parse", "--short", "HEAD"]);
    let plan = report::schedule(o.length, o.replicas);
    eprintln!(
        "soak: {:.1} min of traffic at {} req/s, {} faults, samples every {:?}",
        o.length.as_secs_f64() / 60.0,
        o.rate,
        plan.len(),
        o.sample_every
    );
    let mut rig = Rig::start(o.replicas, o.prefix_lru)?;
    rig.settle(Duration::from_secs(60))?;
    // Taken before the fill: a VM that fails during the fill counts too.
    let wasm_before = admin_stats(&rig.filter_envoy).unwrap_or_default();
    let filled = if o.fill { Some(run_fill(&rig, &o)?) } else { None };
    if let Some(f) = &filled {
        eprintln!(
            "    fill done in {:.1} s: {} + {} requests, {} failed; the timed traffic starts",
            f.length.as_secs_f64(),
            f.ok[0],
            f.ok[1],
            f.failed
        );
    }

    let results = Mutex::new(Vec::new());
    let counters = load::Counters::default();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut windows: Vec<Window> = Vec::new();
    let mut outcome: Result<(), String> = Ok(());
    let (filter_addr, shim_addr) =
        (rig.filter_envoy.listener().to_string(), rig.shim_envoy.listener().to_string());
    let load = load::Load {
        rate: o.rate,
        length: o.length,
        filter: &filter_addr,
        shim: &shim_addr,
        start,
        results: &results,
        counters: &counters,
        stop: &stop,
    };
    std::thread::scope(|scope| {
        let load = &load;
        scope.spawn(move || load.run(scope));
        // This thread injects and ends the faults on time and samples, waking for whichever is due first.
        let mut next = 0usize;
        let mut active: Option<(Planned, Duration)> = None;
        let mut next_sample = Duration::ZERO;
        loop {
            let now = start.elapsed();
            if let Some((p, began)) = active.take() {
                if now >= began + p.length {
                    if let Err(e) = rig.restore(&p) {
                        outcome = Err(format!("ending {} failed: {e}", p.kind.key()));
                        break;
                    }
                    let end = start.elapsed();
                    eprintln!("    {:>7.1} s  {} ended", end.as_secs_f64(), p.kind.key());
                    windows.push(Window { kind: p.kind, replica: p.replica, start: began, end });
                } else {
                    active = Some((p, began));
                }
            }
            if active.is_none() {
                if let Some(p) = plan.get(next).filter(|p| now >= p.at) {
                    if let Err(e) = rig.inject(p) {
                        outcome = Err(format!("{} failed: {e}", p.kind.key()));
                        break;
                    }
                    let began = start.elapsed();
                    let on = match p.kind {
                        FaultKind::CollectorDown => String::new(),
                        _ => format!(" (replica {})", p.replica),
                    };
                    eprintln!("    {:>7.1} s  {}{on}", began.as_secs_f64(), p.kind.key());
                    active = Some((p.clone(), began));
                    next += 1;
                }
            }
            if now >= next_sample {
                let s = rig.sample(start.elapsed(), &counters);
                if samples.len() % 12 == 0 {
                    let mem = |k: &str| s.memory.get(k).copied().unwrap_or(0);
                    eprintln!(
                        "    {:>7.1} s  RSS MiB: envoy-filter {:.1}, envoy-shim {:.1}, epp-shim {:.1}; filter Wasm memory {:.2} MiB, prefix entries {}/{}; {} ok, {} failed",
                        s.at.as_secs_f64(),
                        s.rss_kib[0].unwrap_or(0) as f64 / 1024.0,
                        s.rss_kib[1].unwrap_or(0) as f64 / 1024.0,
                        s.rss_kib[2].unwrap_or(0) as f64 / 1024.0,
                        mem(report::LINEAR) as f64 / 1024.0 / 1024.0,
                        mem("prefix_entries"),
                        mem("prefix_entries_cap"),
                        s.ok,
                        s.failed
                    );
                }
                samples.push(s);
                next_sample = (next_sample + o.sample_every).max(start.elapsed());
            }
            if now >= o.length && active.is_none() {
                break;
            }
            let mut wake = next_sample.min(o.length);
            if let Some((p, began)) = &active {
                wake = wake.min(*began + p.length);
            } else if let Some(p) = plan.get(next) {
                wake = wake.min(p.at);
            }
            std::thread::sleep(wake.saturating_sub(start.elapsed()).max(Duration::from_millis(5)));
        }
        stop.store(true, Ordering::Relaxed);
        // A fault still on (an error above) is ended before the scope waits for the requests.
    });
    outcome?;
    let traffic_end = start.elapsed();
    eprintln!("    {:>7.1} s  traffic stopped, every request finished", traffic_end.as_secs_f64());

    // In-flight gauges back to 0 once nothing is sent: polled until they are, at most DRAIN_LIMIT.
    let drain_deadline = Instant::now() + DRAIN_LIMIT;
    let last = loop {
        let s = rig.sample(start.elapsed(), &counters);
        let zero = s.gauges.iter().all(|g| *g == Some(0));
        if zero || Instant::now() > drain_deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    samples.push(last.clone());
    let wasm_after = admin_stats(&rig.filter_envoy).unwrap_or_default();
    let failures_logged = vm_failures(&rig.filter_envoy.process().log());

    // Stop everything (each handle kills its process by PID) before the report.
    let collector_restarts = windows.iter().filter(|w| w.kind == FaultKind::CollectorDown).count();
    drop(rig);

    let mut sent = results.into_inner().map_err(|_| String::from("a request thread panicked"))?;
    sent.sort_by_key(|s| s.sent);
    let tally = report::tally(&sent, &windows, o.grace);

    // VM restarts: VMs created after the start, Envoy's reload and failure counters, failure lines.
    let wasm_delta = |name: &str| {
        wasm_after.get(name).copied().unwrap_or(0).saturating_sub(wasm_before.get(name).copied().unwrap_or(0))
    };
    let created = wasm_delta("wasm.envoy.wasm.runtime.v8.created");
    let lifecycle: Vec<(String, u64)> = wasm_after
        .keys()
        .filter(|k| k.contains("vm_reload") || k.contains("vm_failed") || k.ends_with(".crashed"))
        .map(|k| (k.clone(), wasm_delta(k)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let restarts = created + lifecycle.iter().map(|(_, v)| v).sum::<u64>() + failures_logged.len() as u64;

    let judge_slope = o.length >= JUDGE_SLOPE_AFTER;
    let warmup = (o.length / 5).max(Duration::from_secs(60)).min(o.length / 2);
    let mut verdicts = Vec::new();
    let mut slopes = Vec::new();
    for (i, name) in report::PROCESSES.iter().enumerate() {
        let points = report::rss_points(&samples, i, warmup);
        let slope = report::slope(&points);
        slopes.push((name.to_string(), slope));
        let restarted = *name == "collector" && collector_restarts > 0;
        verdicts.push(Verdict {
            name: format!("RSS slope, {name} (after {:.0} s of warm-up)", warmup.as_secs_f64()),
            value: slope.map_or_else(|| String::from("n/a"), |s| format!("{s:+.1} KiB/min")),
            target: format!("≤ {SLOPE_TARGET_KIB_PER_MIN} KiB/min"),
            met: if restarted || !judge_slope {
                None
            } else {
                Some(slope.is_some_and(|s| s <= SLOPE_TARGET_KIB_PER_MIN))
            },
        });
    }
    // Where an Envoy's growth is: its heap (tcmalloc) or outside it (V8, the Wasm VMs' memory).
    for (i, name) in report::HEAP.iter().enumerate() {
        let slope = report::slope(&report::heap_points(&samples, i, warmup));
        slopes.push((name.to_string(), slope));
        verdicts.push(Verdict {
            name: format!("slope of {name} (admin /memory, same window)"),
            value: slope.map_or_else(|| String::from("n/a"), |s| format!("{s:+.1} KiB/min")),
            target: String::from("(shows where RSS growth is)"),
            met: None,
        });
    }
    // The filter's memory: linear memory may grow in the last third only as far as its tables did, and
    // no table may hold more than its cap.
    let tables = report::memory_tables(&samples, o.length);
    let linear = report::linear_memory(&samples, o.length, &tables);
    let over: Vec<String> = tables
        .iter()
        .filter(|t| t.verdict() == "over its cap")
        .map(|t| format!("{} ({} > cap {})", t.name, t.max, t.cap))
        .collect();
    verdicts.push(Verdict {
        name: String::from("filter tables over their caps (last third)"),
        value: if tables.is_empty() {
            String::from("no memory gauges read")
        } else if over.is_empty() {
            format!("none of {}", tables.len())
        } else {
            over.join(", ")
        },
        target: String::from("none"),
        met: if tables.is_empty() { judge_slope.then_some(false) } else { Some(over.is_empty()) },
    });
    verdicts.push(Verdict {
        name: String::from("filter Wasm linear memory growth (last third, summed over workers)"),
        value: linear.as_ref().map_or_else(
            || String::from("n/a"),
            |l| format!("{:+.1} KiB/min ({:.0} → {:.0} KiB)", l.growth_kib_per_min, l.first_kib, l.last_kib),
        ),
        target: linear.as_ref().map_or_else(
            || String::from("≤ what the tables' growth explains"),
            |l| {
                format!(
                    "≤ {:.1} KiB/min ({} B per entry the tables gained)",
                    l.bound_kib_per_min,
                    report::ENTRY_BYTES
                )
            },
        ),
        met: if judge_slope { Some(linear.as_ref().is_some_and(report::LinearRow::met)) } else { None },
    });
    verdicts.push(Verdict {
        name: String::from("failed requests outside the fault windows"),
        value: format!(
            "{} of {} ({} inside the windows)",
            tally.failed_outside(),
            tally.sent(),
            tally.failed_inside()
        ),
        target: String::from("0"),
        met: Some(tally.failed_outside() == 0),
    });
    verdicts.push(Verdict {
        name: String::from("Wasm VM restarts (filter Envoy)"),
        value: format!(
            "{restarts} ({created} VMs created after the start, {} reload/failure counters, {} failure log lines)",
            lifecycle.iter().map(|(_, v)| v).sum::<u64>(),
            failures_logged.len()
        ),
        target: String::from("0"),
        met: Some(restarts == 0),
    });
    let in_flight: Vec<String> = report::GAUGES
        .iter()
        .zip(last.gauges.iter())
        .map(|(n, v)| format!("{n} {}", v.map_or_else(|| String::from("unread"), |v| v.to_string())))
        .collect();
    verdicts.push(Verdict {
        name: format!(
            "in-flight gauges {:.1} s after the traffic stopped",
            (last.at - traffic_end).as_secs_f64()
        ),
        value: in_flight.join(", "),
        target: String::from("all 0"),
        met: Some(last.gauges.iter().all(|g| *g == Some(0))),
    });
    verdicts.push(Verdict {
        name: String::from("failed requests in the fill phase (before the timed traffic, no fault injected)"),
        value: filled.as_ref().map_or_else(
            || String::from("no fill (--no-fill)"),
            |f| format!("{} of {}", f.failed, f.sent[0] + f.sent[1]),
        ),
        target: String::from("0"),
        met: filled.as_ref().map(|f| f.failed == 0),
    });
    let shim_prefix = samples.iter().rev().find(|s| s.at <= traffic_end).map(|s| s.shim_prefix);
    verdicts.push(Verdict {
        name: String::from("shim prefix index at the end of the traffic"),
        value: match shim_prefix {
            Some([Some(entries), Some(cap)]) => format!("{entries} of {cap} entries"),
            _ => String::from("not read"),
        },
        target: String::from("(at its cap after a fill)"),
        met: None,
    });

    std::fs::create_dir_all(&o.out).map_err(|e| format!("cannot create {}: {e}", o.out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = o.out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("samples.csv", report::csv(&samples).as_bytes())?;
    let series: Vec<benchmarks::chart::Series> = report::PROCESSES
        .iter()
        .enumerate()
        .map(|(i, name)| benchmarks::chart::Series {
            name: name.to_string(),
            points: report::rss_points(&samples, i, Duration::ZERO)
                .into_iter()
                .map(|(m, kib)| (m, kib / 1024.0))
                .collect(),
        })
        .collect();
    let png =
        benchmarks::chart::line_chart("RSS during the soak run", "minutes", "RSS (MiB)", &series, false)?;
    write("rss.png", &png)?;
    write("memory.csv", report::memory_csv(&samples).as_bytes())?;
    if let Some(f) = &filled {
        write("fill.csv", fill::csv(&f.samples, f.blocks_per_request()).as_bytes())?;
    }
    let linear_series = [benchmarks::chart::Series {
        name: String::from("filter Wasm linear memory, all workers"),
        points: report::linear_points(&samples),
    }];
    if linear_series[0].points.len() >= 2 {
        let png = benchmarks::chart::line_chart(
            "Filter Wasm linear memory during the soak run",
            "minutes",
            "linear memory (MiB)",
            &linear_series,
            false,
        )?;
        write("memory.png", &png)?;
    }
    let summary = serde_json::json!({
        "started": started_at,
        "commit": commit,
        "args": o.args,
        "minutes": o.length.as_secs_f64() / 60.0,
        "rate": o.rate,
        "replicas": o.replicas,
        "grace_seconds": o.grace.as_secs_f64(),
        "requests": tally.sent(),
        "failed_inside_windows": tally.failed_inside(),
        "failed_outside_windows": tally.failed_outside(),
        "outside_examples": tally.outside_examples,
        "by_class": tally.rows.iter().map(|((c, v), n)| serde_json::json!({
            "class": c.key(), "via": v.key(), "sent": n[0], "ok": n[1], "failed_inside": n[2], "failed_outside": n[3],
        })).collect::<Vec<_>>(),
        "windows": windows.iter().map(|w| serde_json::json!({
            "fault": w.kind.key(), "replica": w.replica, "start_s": w.start.as_secs_f64(), "end_s": w.end.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "slopes_kib_per_min": slopes.iter().map(|(n, s)| (n.clone(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
        "wasm_vms_created_after_start": created,
        "wasm_lifecycle_counters": lifecycle.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "vm_failure_log_lines": failures_logged,
        // How the filter saw the faults: its own counters (per-endpoint ones left out), and Envoy's VM stats.
        "filter_envoy_stats": wasm_after
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix("wasmcustom.").is_some_and(|n| n.starts_with("epp_") && !n.contains('.'))
                    || k.starts_with("wasm.")
            })
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "memory_tables": tables.iter().map(|t| serde_json::json!({
            "table": t.name, "first": t.first, "last": t.last, "max": t.max, "cap": t.cap,
            "growth_per_min": t.growth_per_min, "verdict": t.verdict(),
        })).collect::<Vec<_>>(),
        "linear_memory": linear.as_ref().map(|l| serde_json::json!({
            "first_kib": l.first_kib, "last_kib": l.last_kib, "growth_kib_per_min": l.growth_kib_per_min,
            "bound_kib_per_min": l.bound_kib_per_min,
        })),
        "prefix_lru": o.prefix_lru,
        "fill": filled.as_ref().map(fill_json),
        "in_flight_after_stop": report::GAUGES.iter().zip(last.gauges.iter()).map(|(n, v)| (n.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "verdicts": verdicts.iter().map(|v| serde_json::json!({"name": v.name, "value": v.value, "target": v.target, "met": v.met})).collect::<Vec<_>>(),
    });
    write("summary.json", serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Soak run {started_at}, commit `{commit}`: {:.1} min at {} req/s over {} replicas, `soak {}`.\n",
        o.length.as_secs_f64() / 60.0,
        o.rate,
        o.replicas,
        o.args.join(" ")
    );
    if let Some(f) = &filled {
        md.push_str(&fill_markdown(f));
    } else {
        md.push_str("No fill phase (`--no-fill`): the prefix indexes start empty.\n\n");
    }
    md.push_str(&report::markdown_table(&verdicts));
    md.push('\n');
    md.push_str(&report::tally_table(&tally));
    if !tables.is_empty() {
        md.push_str("\nThe filter's tables over the last third of the traffic:\n\n");
        md.push_str(&report::memory_table(&tables));
    }
    if !tally.outside_examples.is_empty() {
        let _ =
            writeln!(md, "\nFailures outside the fault windows (first {}):\n", tally.outside_examples.len());
        for e in &tally.outside_examples {
            let _ = writeln!(md, "- {e}");
        }
    }
    let _ = writeln!(md, "\nFault windows (grace {:.0} s after each):\n", o.grace.as_secs_f64());
    for w in &windows {
        let _ = writeln!(
            md,
            "- {:.1}–{:.1} s {}{}",
            w.start.as_secs_f64(),
            w.end.as_secs_f64(),
            w.kind.key(),
            if w.kind == FaultKind::CollectorDown {
                String::new()
            } else {
                format!(" (replica {})", w.replica)
            }
        );
    }
    write("soak.md", md.as_bytes())?;
    println!("{md}");
    eprintln!("wrote {}", o.out.display());
    Ok(verdicts.iter().all(|v| v.met != Some(false)))
}

fn fill_json(f: &FillOutcome) -> serde_json::Value {
    let side = |i: usize| {
        let p = &f.progress[i];
        serde_json::json!({
            "requests_sent": f.sent[i],
            "requests_ok": f.ok[i],
            "blocks_sent": f.ok[i] * f.blocks_per_request(),
            "full_at_s": p.full_at.map(|(at, _)| at.as_secs_f64()),
            "blocks_sent_when_full": p.full_at.map(|(_, b)| b),
            "done_at_s": p.done_at.map(|at| at.as_secs_f64()),
            "entries": p.last.map(|i| i.entries),
            "cap": p.last.map(|i| i.cap),
        })
    };
    serde_json::json!({
        "seconds": f.length.as_secs_f64(),
        "prompt_bytes": f.shape.prompt_bytes(),
        "block_bytes": f.shape.block_bytes,
        "blocks_per_request": f.blocks_per_request(),
        "factor": f.factor,
        "concurrency_per_gateway": f.concurrency,
        "failed": f.failed,
        "failures": f.failures,
        "filter": side(0),
        "shim": side(1),
    })
}

fn fill_markdown(f: &FillOutcome) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Fill phase before the timed traffic: {:.1} s, {}-byte prompts, each new ({} blocks of {} bytes), {} \
         in flight per gateway, until each prefix index was full and {}× its cap in blocks had been sent to \
         it; {} failed. Per gateway (the filter's entries and cap are summed over its {WORKERS} workers, each \
         holding every pick):\n",
        f.length.as_secs_f64(),
        f.shape.prompt_bytes(),
        f.blocks_per_request(),
        f.shape.block_bytes,
        f.concurrency,
        f.factor,
        f.failed
    );
    md.push_str(
        "| gateway | requests | blocks sent | full at | blocks sent by then | done at | entries / cap at the end |\n",
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (i, side) in SIDES.iter().enumerate() {
        let p = &f.progress[i];
        let secs = |d: Option<Duration>| {
            d.map_or_else(|| String::from("—"), |d| format!("{:.0} s", d.as_secs_f64()))
        };
        let _ = writeln!(
            md,
            "| {side} | {} | {} | {} | {} | {} | {} |",
            f.ok[i],
            f.ok[i] * f.blocks_per_request(),
            secs(p.full_at.map(|(at, _)| at)),
            p.full_at.map_or_else(|| String::from("—"), |(_, b)| b.to_string()),
            secs(p.done_at),
            p.last.map_or_else(|| String::from("—"), |i| format!("{} / {}", i.entries, i.cap)),
        );
    }
    md.push('\n');
    for e in &f.failures {
        let _ = writeln!(md, "- failed fill request: {e}");
    }
    if !f.failures.is_empty() {
        md.push('\n');
    }
    md
}

fn shell(args: &[&str]) -> String {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .current_dir(e2e::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| String::from("unknown"), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}
