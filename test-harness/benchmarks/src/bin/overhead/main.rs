//! `overhead`: what routing in the proxy costs, measured in real Envoy on loopback. Plain Envoy, the
//! do-nothing body-buffering Wasm filter (the floor for any in-proxy picker), our picker and the ext_proc
//! shim are driven by the same wrk load in one run, against one nginx standing in for the model servers.
//! `cargo xtask bench overhead [--quick]` builds what it needs and runs this; results go to BENCHMARKS.md.
// A benchmark tool: the workspace denies these for code that runs in the proxy, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod attribute;
mod backend;
mod gateway;
mod host_calls;
mod load;
mod report;

use gateway::{Artifacts, Gateway};
use report::{Memory, Run};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: overhead [--quick] [--out DIR] [--shim PATH] [--duration SECS] [--connections N]
       overhead --charts-from CSV [--out DIR]

  --quick          4 KiB and 220 KiB bodies, 64 endpoints, 1 worker, 2 rounds of 3 s (a few minutes)
  --out DIR        where overhead.md, overhead.csv and the charts overhead-throughput-w<workers>.png and
                   overhead-added-cpu-w<workers>.png go [default: target/overhead-bench]
  --charts-from CSV  only redraw the charts from an overhead.csv a run wrote (no Envoy); they go next to
                   it unless --out is given
  --shim PATH      the epp-shim binary (build it with --release) [default: target/release/epp-shim]
  --duration SECS  measured seconds per round [default: 4, quick 3]
  --connections N  wrk connections [default: 8]
  --host-calls-only  only count the filters' host calls per request (emulated, no Envoy)
  --rounds N       measured rounds per cell, alternating between configurations [default: 3, quick 2]
  --only KEYS      only these configurations, comma-separated keys: plain, floor, floor-rr-<N> (the floor
                   round-robin over N endpoints), floor-read (the floor also reading each request as the
                   picker does), picker-<N>, ext_proc-64; body-based routing (not in the default set):
                   bbr-only (the module's bbr role alone), bbr-picker-<N> (the picker with a bbr section,
                   one filter), ext_proc-bbr-<N> (GIE's shape: the shim's BBR and its picker, two
                   ext_proc filters, two processes)
                   (for a focused comparison while working on the filter; skips the memory table)
  --bodies KIBS    body sizes in KiB, comma-separated [default: 4,128,220, quick 4,220]
  --workers LIST   Envoy worker counts, comma-separated [default: 1,2, quick 1]
  --baseline-wasm PATH  another build of the picker's .wasm (e.g. from an earlier commit), measured
                   side by side as the configuration baseline-64 (keys baseline-<N> with --only)
  --attribute      instead of the tables: sample each configuration's Envoy with perf while wrk drives
                   it, and say where its CPU per request goes (module code, host functions, the rest of
                   Envoy, kernel) [default configurations floor-rr-64,picker-64, body 4 KiB, 1 worker,
                   20 s each]; writes attribution.md
";

struct Options {
    quick: bool,
    out: PathBuf,
    shim: PathBuf,
    duration: Duration,
    connections: usize,
    rounds: usize,
    host_calls_only: bool,
    charts_from: Option<PathBuf>,
    out_given: bool,
    only: Option<Vec<String>>,
    bodies_kib: Option<Vec<usize>>,
    workers: Option<Vec<usize>>,
    attribute: bool,
    baseline_wasm: Option<PathBuf>,
    /// `--duration` as given (`duration` falls back to a default per mode).
    duration_given: Option<Duration>,
}

fn parse_list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("{flag} {v:?}: expected comma-separated counts")))
        .collect()
}

fn parse_args() -> Result<Options, String> {
    let root = e2e::workspace_root();
    let mut o = Options {
        quick: false,
        out: root.join("target/overhead-bench"),
        shim: root.join("target/release/epp-shim"),
        duration: Duration::ZERO,
        connections: 8,
        rounds: 3,
        host_calls_only: false,
        charts_from: None,
        out_given: false,
        only: None,
        bodies_kib: None,
        workers: None,
        attribute: false,
        baseline_wasm: None,
        duration_given: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--host-calls-only" => o.host_calls_only = true,
            "--attribute" => o.attribute = true,
            "--out" => {
                o.out = root.join(value("--out")?);
                o.out_given = true;
            }
            "--charts-from" => o.charts_from = Some(root.join(value("--charts-from")?)),
            "--shim" => o.shim = root.join(value("--shim")?),
            "--duration" => {
                let v = value("--duration")?;
                o.duration = Duration::from_secs(
                    v.parse().map_err(|_| format!("--duration {v:?}: expected whole seconds"))?,
                );
            }
            "--connections" => {
                let v = value("--connections")?;
                o.connections = v.parse().map_err(|_| format!("--connections {v:?}: expected a count"))?;
            }
            "--rounds" => {
                let v = value("--rounds")?;
                o.rounds = v.parse().map_err(|_| format!("--rounds {v:?}: expected a count"))?;
            }
            "--baseline-wasm" => o.baseline_wasm = Some(root.join(value("--baseline-wasm")?)),
            "--only" => o.only = Some(value("--only")?.split(',').map(|k| k.trim().to_string()).collect()),
            "--bodies" => o.bodies_kib = Some(parse_list("--bodies", &value("--bodies")?)?),
            "--workers" => o.workers = Some(parse_list("--workers", &value("--workers")?)?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    o.duration_given = (!o.duration.is_zero()).then_some(o.duration);
    if o.duration.is_zero() {
        o.duration = Duration::from_secs(if o.quick { 3 } else { 4 });
    }
    if o.quick {
        o.rounds = o.rounds.min(2);
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overhead: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = parse_args()?;
    if let Some(csv) = &o.charts_from {
        let text = std::fs::read_to_string(csv).map_err(|e| format!("cannot read {}: {e}", csv.display()))?;
        let runs = report::parse_csv(&text, &csv.display().to_string())?;
        let dir = match csv.parent() {
            Some(parent) if !o.out_given => parent.to_path_buf(),
            _ => o.out.clone(),
        };
        for path in write_charts(&runs, &dir)? {
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    let started = Instant::now();
    let load_before = loadavg();
    let root = e2e::workspace_root();
    let work = root.join("target/overhead-bench");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;

    let picker_wasm = e2e::filter_wasm()?;
    let (floor_wasm, reading_floor_wasm) = gateway::build_floors(&root)?;
    let needs_shim = o.only.as_ref().is_none_or(|keys| keys.iter().any(|k| k.starts_with("ext_proc")));
    if !o.shim.exists() && !o.host_calls_only && needs_shim {
        return Err(format!("{} is missing: cargo build --release -p epp-shim", o.shim.display()));
    }
    if let Some(b) = &o.baseline_wasm {
        if !b.is_file() {
            return Err(format!("--baseline-wasm {}: no such file", b.display()));
        }
    }
    let art = Artifacts {
        picker_wasm,
        baseline_wasm: o.baseline_wasm.clone(),
        floor_wasm,
        reading_floor_wasm,
        shim: o.shim.clone(),
        scrape_interval_ms: 1000,
    };
    if o.host_calls_only {
        let pool: Vec<String> = (0..64).map(|i| format!("127.0.0.1:{}", 20_000 + i)).collect();
        print!("{}", report::host_calls_table(&count_host_calls(&art, &pool)?));
        return Ok(());
    }

    if o.attribute {
        return attribute_run(&o, &art, &work);
    }

    let default_bodies = if o.quick { vec![4, 220] } else { vec![4, 128, 220] };
    let bodies_kib: Vec<usize> = o.bodies_kib.clone().unwrap_or(default_bodies);
    let default_workers = if o.quick { vec![1] } else { vec![1, 2] };
    let workers: Vec<usize> = o.workers.clone().unwrap_or(default_workers);
    let picker_sizes: Vec<usize> = if o.quick { vec![64] } else { vec![8, 64, 256] };
    let memory_endpoints = 1024;
    let backend = backend::Backend::start(memory_endpoints, &work.join("nginx"))?;
    let pool = backend.addrs(memory_endpoints);
    eprintln!("nginx serving {} loopback ports (pid {})", pool.len(), backend.pid());

    let mut runs = Vec::new();
    let mut gateways =
        vec![Gateway::Plain, Gateway::Floor, Gateway::FloorRoundRobin { endpoints: 64 }, Gateway::FloorRead];
    gateways.extend(picker_sizes.iter().map(|&n| Gateway::Picker { endpoints: n }));
    if o.baseline_wasm.is_some() {
        gateways.push(Gateway::Baseline { endpoints: 64 });
    }
    gateways.push(Gateway::ExtProc { endpoints: 64 });
    if let Some(only) = &o.only {
        gateways = parse_only(only)?;
    }
    for &w in &workers {
        // Every configuration runs side by side and the rounds alternate between them, so a burst of
        // background load on this shared machine hits all of them alike instead of one cell.
        let running: Vec<gateway::Running> =
            gateways.iter().map(|g| gateway::start(g, w, &pool, &art)).collect::<Result<_, _>>()?;
        std::thread::sleep(Duration::from_millis(1500));
        for &kib in &bodies_kib {
            let script = body_script(&work, kib)?;
            // Warm-up: connections open, the prefix index holds the body's blocks, V8 has tiered up.
            for r in &running {
                load::wrk(r.envoy.listener(), &script, o.connections, Duration::from_secs(2))?;
            }
            let mut cells: Vec<Vec<Round>> = gateways.iter().map(|_| Vec::new()).collect();
            for _ in 0..o.rounds {
                for ((g, r), cell) in gateways.iter().zip(&running).zip(cells.iter_mut()) {
                    cell.push(measure(g, r, &script, &o, backend.pid())?);
                }
            }
            for ((g, r), cell) in gateways.iter().zip(&running).zip(cells) {
                check_picker(g, r)?;
                let run = aggregate(g, w, kib, cell);
                eprintln!(
                    "  {w} worker(s) {kib:>3} KiB {:<34} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  Envoy {:>6.1} µs CPU/req",
                    g.label(),
                    run.wrk.rps(),
                    run.wrk.p50_us / 1e3,
                    run.wrk.p99_us / 1e3,
                    run.envoy_cpu_us()
                );
                runs.push(run);
            }
        }
    }

    let mut memory = Vec::new();
    let memory_workers = if o.only.is_some() { &[][..] } else { &workers[..] };
    let script = body_script(&work, 4)?;
    for &w in memory_workers {
        for g in [Gateway::Plain, Gateway::Floor, Gateway::Picker { endpoints: memory_endpoints }] {
            let running = gateway::start(&g, w, &pool, &art)?;
            settle(&g);
            load::wrk(running.envoy.listener(), &script, o.connections, Duration::from_secs(3))?;
            let rss = load::rss_kib(running.envoy_pid())?;
            eprintln!("  memory: {w} worker(s) {:<34} VmRSS {:.1} MiB", g.label(), rss as f64 / 1024.0);
            memory.push(Memory { gateway: g.clone(), workers: w, rss_kib: rss });
        }
    }
    drop(backend);

    let sizes = [
        ("epp_filter.wasm (the picker)", &art.picker_wasm),
        ("floor_filter.wasm", &art.floor_wasm),
        ("floor_filter.wasm with `read` (the reading floor)", &art.reading_floor_wasm),
    ]
    .iter()
    .map(|(n, p)| {
        Ok((n.to_string(), std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?.len()))
    })
    .collect::<Result<Vec<_>, String>>()?;
    let calls = count_host_calls(&art, &pool)?;
    let elapsed = started.elapsed();
    let load = format!(
        "{}; load average (1 min) {} at the start, {} at the end",
        o_summary(&o),
        load_before,
        loadavg()
    );
    let text = report::markdown(&runs, &memory, &sizes, &calls, &load, elapsed);
    std::fs::create_dir_all(&o.out).map_err(|e| format!("cannot create {}: {e}", o.out.display()))?;
    let md = o.out.join("overhead.md");
    let csv = o.out.join("overhead.csv");
    std::fs::write(&md, &text).map_err(|e| format!("cannot write {}: {e}", md.display()))?;
    std::fs::write(&csv, report::csv(&runs)).map_err(|e| format!("cannot write {}: {e}", csv.display()))?;
    println!("{text}");
    eprintln!("wrote {} and {} in {:.0} s", md.display(), csv.display(), elapsed.as_secs_f64());
    // A focused run (--only) lacks the rows the charts compare against.
    if o.only.is_none() {
        for path in write_charts(&runs, &o.out)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The configurations `--only` names.
fn parse_only(keys: &[String]) -> Result<Vec<Gateway>, String> {
    keys.iter()
        .map(|k| {
            Gateway::from_key(k).ok_or_else(|| {
                format!(
                    "--only {k:?}: expected plain, floor, floor-rr-<N>, floor-read, picker-<N>, ext_proc-<N>, \
                     bbr-only, bbr-picker-<N> or ext_proc-bbr-<N>"
                )
            })
        })
        .collect()
}

/// Writes the chat body of `kib` KiB and the wrk script that posts it.
fn body_script(work: &std::path::Path, kib: usize) -> Result<PathBuf, String> {
    let body = work.join(format!("body-{kib}k.json"));
    std::fs::write(&body, load::chat_body(kib * 1024))
        .map_err(|e| format!("cannot write {}: {e}", body.display()))?;
    load::write_script(&body)
}

/// Host calls per request of both filters at 4 and 220 KiB, in the harness's emulation.
fn count_host_calls(art: &Artifacts, pool: &[String]) -> Result<Vec<host_calls::Count>, String> {
    let mut calls = Vec::new();
    for kib in [4, 220] {
        calls.extend(host_calls::count(
            &art.picker_wasm,
            &[
                (&art.floor_wasm, "floor (do-nothing Wasm)"),
                (&art.reading_floor_wasm, "reading floor (floor + request read)"),
            ],
            pool,
            &load::chat_body(kib * 1024),
            kib,
        )?);
    }
    Ok(calls)
}

/// `--attribute`: each configuration in turn under perf, then the table of where its CPU went.
fn attribute_run(o: &Options, art: &Artifacts, work: &std::path::Path) -> Result<(), String> {
    attribute::check_perf()?;
    let keys = o.only.clone().unwrap_or_else(|| vec![String::from("floor-rr-64"), String::from("picker-64")]);
    let gateways = parse_only(&keys)?;
    let duration = o.duration_given.unwrap_or(Duration::from_secs(20));
    let backend = backend::Backend::start(256, &work.join("nginx"))?;
    let pool = backend.addrs(256);
    let mut text = String::new();
    for &w in o.workers.as_deref().unwrap_or(&[1]) {
        let running: Vec<gateway::Running> =
            gateways.iter().map(|g| gateway::start(g, w, &pool, art)).collect::<Result<_, _>>()?;
        std::thread::sleep(Duration::from_millis(1500));
        for &kib in o.bodies_kib.as_deref().unwrap_or(&[4]) {
            let script = body_script(work, kib)?;
            let mut runs = Vec::new();
            for (g, r) in gateways.iter().zip(&running) {
                load::wrk(r.envoy.listener(), &script, o.connections, Duration::from_secs(2))?;
                let a = attribute::measure(g, r, &script, o.connections, duration, work)?;
                check_picker(g, r)?;
                eprintln!("  {w} worker(s) {kib:>3} KiB {:<34} {} requests sampled", g.label(), a.requests);
                runs.push(a);
            }
            text.push_str(&attribute::markdown(&runs, kib, w));
        }
    }
    drop(backend);
    std::fs::create_dir_all(&o.out).map_err(|e| format!("cannot create {}: {e}", o.out.display()))?;
    let path = o.out.join("attribution.md");
    std::fs::write(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("{text}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Renders the report's charts of `runs` into `dir`; returns the files written.
fn write_charts(runs: &[Run], dir: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, png) in report::charts(runs)? {
        let path = dir.join(name);
        std::fs::write(&path, png).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn o_summary(o: &Options) -> String {
    format!(
        "wrk -t 2 -c {} -d {}s, {} rounds per cell alternating between configurations, after a 2 s warm-up{}",
        o.connections,
        o.duration.as_secs(),
        o.rounds,
        if o.quick { " (--quick)" } else { "" }
    )
}

/// The 1-minute load average: the machine is shared, so the report says how busy it was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| String::from("?"))
}

/// Waits for what a gateway needs before traffic: the picker's first scrape round.
fn settle(g: &Gateway) {
    if matches!(
        g,
        Gateway::Picker { .. }
            | Gateway::Baseline { .. }
            | Gateway::ExtProc { .. }
            | Gateway::BbrPicker { .. }
            | Gateway::ExtProcBbr { .. }
    ) {
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// One wrk run against one gateway and the CPU time each process spent meanwhile.
struct Round {
    wrk: load::WrkResult,
    cpu: [f64; 3],
}

fn measure(
    g: &Gateway,
    running: &gateway::Running,
    script: &std::path::Path,
    o: &Options,
    nginx_pid: u32,
) -> Result<Round, String> {
    let shims: Vec<u32> = running.shims.iter().map(|s| s.id()).collect();
    // Envoy, the shim processes together, nginx.
    let cpu_now = || -> Result<Vec<f64>, String> {
        let shim: f64 = shims.iter().map(|&p| load::cpu_seconds(p)).sum::<Result<f64, String>>()?;
        Ok(vec![load::cpu_seconds(running.envoy_pid())?, shim, load::cpu_seconds(nginx_pid)?])
    };
    let before = cpu_now()?;
    let wrk = load::wrk(running.envoy.listener(), script, o.connections, o.duration)?;
    let after = cpu_now()?;
    if wrk.non_2xx > 0 || wrk.requests == 0 {
        return Err(format!(
            "{}: {} of {} responses were not 2xx; Envoy log:\n{}",
            g.label(),
            wrk.non_2xx,
            wrk.requests,
            running.envoy.process().log_tail(20)
        ));
    }
    let mut cpu = [0.0; 3];
    for ((c, a), b) in cpu.iter_mut().zip(&after).zip(&before) {
        *c = a - b;
    }
    Ok(Round { wrk, cpu })
}

/// The picker must have decided every request itself: a fail-open would measure a cheaper path.
fn check_picker(g: &Gateway, running: &gateway::Running) -> Result<(), String> {
    if !matches!(g, Gateway::Picker { .. } | Gateway::Baseline { .. } | Gateway::BbrPicker { .. }) {
        return Ok(());
    }
    let routed = running.envoy.stat_sum("epp_decisions_routed").unwrap_or(0);
    let fail_open = running.envoy.stat_sum("epp_decisions_fail_open").unwrap_or(0);
    if routed == 0 || fail_open > 0 {
        return Err(format!(
            "{}: the picker did not decide every request (routed {routed}, failed open {fail_open})",
            g.label()
        ));
    }
    eprintln!("    {}", picker_facts(running));
    Ok(())
}

/// How long the picker's decisions took (Envoy's `epp_decision_time_us` histogram, cumulative, wall
/// time inside the module) and how many upstream hosts its requests went to, for the run's log.
fn picker_facts(running: &gateway::Running) -> String {
    let quantile = |text: &str, q: &str| -> Option<f64> {
        let (_, rest) = text.split_once(&format!(" {q}("))?;
        let (_, cumulative) = rest.split_once(')')?.0.split_once(',')?;
        cumulative.parse().ok()
    };
    let decisions = e2e::Request::get("/stats?filter=epp_decision_time_us&histogram_buckets=none")
        .send(running.envoy.admin())
        .ok()
        .map(|r| r.text())
        .and_then(|t| {
            Some(format!("decisions P50 {:.1} µs, P99 {:.1} µs", quantile(&t, "P50")?, quantile(&t, "P99")?))
        })
        .unwrap_or_else(|| String::from("decision times not available"));
    let hosts = running.envoy.host_requests("pool").map_or_else(
        || String::from("upstream hosts not available"),
        |hosts| {
            let mut served: Vec<u64> = hosts.iter().map(|h| h.1).filter(|&n| n > 0).collect();
            served.sort_unstable_by(|a, b| b.cmp(a));
            let total: u64 = served.iter().sum();
            format!(
                "{} upstream hosts served {total} requests, busiest {:?}",
                served.len(),
                &served[..served.len().min(4)]
            )
        },
    );
    format!("{decisions}; {hosts}")
}

/// Rounds into one cell: medians for rate and latency (robust to one disturbed round), totals for CPU.
fn aggregate(g: &Gateway, workers: usize, kib: usize, rounds: Vec<Round>) -> Run {
    let median = |f: &dyn Fn(&load::WrkResult) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(|r| f(&r.wrk)).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let requests: u64 = rounds.iter().map(|r| r.wrk.requests).sum();
    let rps = median(&|w| w.rps());
    let wrk = load::WrkResult {
        requests,
        // Scaled so that rps() is the median round's while CPU per request uses every request.
        seconds: if rps > 0.0 { requests as f64 / rps } else { 0.0 },
        p50_us: median(&|w| w.p50_us),
        p99_us: median(&|w| w.p99_us),
        non_2xx: rounds.iter().map(|r| r.wrk.non_2xx).sum(),
        socket_errors: rounds.iter().map(|r| r.wrk.socket_errors).sum(),
    };
    let cpu = |i: usize| rounds.iter().map(|r| r.cpu.get(i).copied().unwrap_or(0.0)).sum();
    Run {
        gateway: g.clone(),
        workers,
        body_kib: kib,
        wrk,
        envoy_cpu_s: cpu(0),
        shim_cpu_s: cpu(1),
        nginx_cpu_s: cpu(2),
    }
}
