//! `faults`: how the gateways route around a failing pod, in real Envoy on loopback. Four model-sim
//! replicas under steady open-loop load; one of them fails at a fixed time (kill -9 and a restart on the
//! same port, SIGSTOP and SIGCONT, a hung `/metrics`, 500 on every completion, a missing KV-cache
//! gauge, completions left unanswered while `/metrics` looks fine) and recovers a fixed time later. Each
//! fault runs on fresh replicas through the Wasm picker and the ext_proc shim in their default shapes
//! (`envoy-config/wasm-picker-override-host`, `envoy-config/ext-proc-override-host`: retries on another
//! member), optionally in their ORIGINAL_DST shapes (`envoy-config/wasm-picker`, `envoy-config/ext-proc`),
//! and plain round-robin Envoy with health checks, outlier detection and retries
//! (`envoy-config/round-robin`), one after the other in the same run. `cargo xtask bench faults [--quick]` builds what it needs and runs this;
//! results go to BENCHMARKS.md.
// A benchmark tool: the workspace denies these for code that runs in the proxy, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod gateway;
mod report;
mod trial;

use report::{Fault, Gateway, Trial};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use trial::Plan;

const USAGE: &str = "\
usage: faults [--quick] [--out DIR] [--rounds N] [--rate R] [--seconds S] [--fault-at S] [--fault-for S]
              [--faults LIST] [--gateways LIST] [--scheduling recommended|gie-default]

  --quick          a smoke run: 10 s of load per trial, the fault at 2 s for 3 s, 50 requests/s
                   (about 5 minutes); the report goes to target/faults-bench unless --out is given
  --out DIR        where faults.md goes [default: target/faults-bench]
  --rounds N       every fault through every gateway N times, rounds one after the other; the table sums
                   the counts and shows each time's worst round [default: 2, quick 1]
  --rate R         requests per second, open loop [default: 100, quick 50]
  --seconds S      seconds of load per trial [default: 30, quick 10]
  --fault-at S     when the fault starts, seconds into the load [default: 5, quick 2]
  --fault-for S    how long it lasts; kill -9: until the new process starts [default: 6, quick 3]
  --faults LIST    comma-separated: kill, hang, metrics-hang, 5xx, missing-gauge, completions-hang
                   [default: all]
  --gateways LIST  comma-separated: filter, shim (the default override_host shapes), filter-original-dst,
                   shim-original-dst (the ORIGINAL_DST shapes), round-robin
                   [default: filter,shim,round-robin]
  --scheduling S   the picker's scheduling configuration: recommended (envoy-config/scheduling/
                   recommended.json) or gie-default (none: GIE's default profile) [default: recommended]

Needs Envoy (.venv/bin/envoy or $ENVOY_BIN); model-sim and epp-shim come from $MODEL_SIM_BIN and
$EPP_SHIM_BIN, else debug builds (cargo xtask bench faults passes release builds).
";

struct Options {
    out: PathBuf,
    plan: Plan,
    rounds: usize,
    faults: Vec<Fault>,
    gateways: Vec<Gateway>,
    /// The arguments as given, for the report.
    args: Vec<String>,
}

fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} {v:?}: expected seconds > 0"))
}

fn parse_args() -> Result<Options, String> {
    let root = e2e::workspace_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        out: root.join("target/faults-bench"),
        plan: Plan {
            rate: if quick { 50.0 } else { 100.0 },
            length: Duration::from_secs(if quick { 10 } else { 30 }),
            fault_at: Duration::from_secs(if quick { 2 } else { 5 }),
            fault_for: Duration::from_secs(if quick { 3 } else { 6 }),
            client_timeout: Duration::from_secs(3),
            sample_every: Duration::from_millis(100),
            time_scale: 0.25,
            max_tokens: 32,
            scheduling: gateway::Scheduling::Recommended,
        },
        rounds: if quick { 1 } else { 2 },
        faults: Fault::ALL.to_vec(),
        gateways: Gateway::DEFAULT.to_vec(),
        args: args.clone(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"));
        match a.as_str() {
            "--quick" => {}
            "--out" => o.out = root.join(value("--out")?),
            "--rate" => {
                let v = value("--rate")?;
                o.plan.rate = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| *r > 0.0 && *r <= 1000.0)
                    .ok_or_else(|| format!("--rate {v:?}: expected requests per second in (0, 1000]"))?;
            }
            "--rounds" => {
                let v = value("--rounds")?;
                o.rounds = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| format!("--rounds {v:?}: expected a count > 0"))?;
            }
            "--seconds" => o.plan.length = seconds("--seconds", &value("--seconds")?)?,
            "--fault-at" => o.plan.fault_at = seconds("--fault-at", &value("--fault-at")?)?,
            "--fault-for" => o.plan.fault_for = seconds("--fault-for", &value("--fault-for")?)?,
            "--faults" => {
                o.faults = value("--faults")?
                    .split(',')
                    .map(|k| {
                        Fault::from_key(k.trim()).ok_or_else(|| format!("--faults: unknown fault {k:?}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--gateways" => {
                o.gateways = value("--gateways")?
                    .split(',')
                    .map(|k| {
                        Gateway::from_key(k.trim())
                            .ok_or_else(|| format!("--gateways: unknown gateway {k:?}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--scheduling" => {
                let v = value("--scheduling")?;
                o.plan.scheduling = gateway::Scheduling::from_key(&v)
                    .ok_or_else(|| format!("--scheduling {v:?}: expected recommended or gie-default"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if o.plan.fault_at + o.plan.fault_for >= o.plan.length {
        return Err(format!(
            "the fault ({:?} + {:?}) must end before the load does ({:?})",
            o.plan.fault_at, o.plan.fault_for, o.plan.length
        ));
    }
    Ok(o)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faults: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = parse_args()?;
    if e2e::envoy_binary().is_none() {
        return Err(String::from("no Envoy: run `cargo xtask envoy-check` (or set ENVOY_BIN)"));
    }
    let started = Instant::now();
    // What is measured: the commit (and any uncommitted change) when the builds are made.
    let (when, commit, load_before) = (utc_now(), commit(), loadavg());
    let frozen = Frozen::new()?;
    let wasm = frozen.copy(&e2e::filter_wasm()?)?;
    // Built (or found) before the first trial, so no trial waits for cargo.
    let model_sim = build_kind(&e2e::model_sim_binary()?);
    let shim = if o.gateways.iter().any(|g| g.is_shim()) { build_kind(&e2e::epp_shim_binary()?) } else { "" };
    let run = RunInfo {
        when,
        commit,
        load_before,
        model_sim: frozen.kind_of("MODEL_SIM_BIN").unwrap_or(model_sim),
        shim: frozen.kind_of("EPP_SHIM_BIN").unwrap_or(shim),
        frozen: frozen.names(),
    };
    let per_trial = o.plan.trial_time() + Duration::from_secs(4);
    eprintln!(
        "{} trials of about {:.0} s each",
        o.rounds * o.faults.len() * o.gateways.len(),
        per_trial.as_secs_f64()
    );
    let mut trials: Vec<Trial> = Vec::new();
    // Rounds one after the other; within a round each fault through every gateway in turn.
    let mut schedule = Vec::new();
    for round in 1..=o.rounds {
        for &fault in &o.faults {
            for &gateway in &o.gateways {
                schedule.push((round, fault, gateway));
            }
        }
    }
    for (round, fault, gateway) in schedule {
        eprintln!("\n[round {round}: {} / {}]", fault.label(), gateway.label());
        let mut t = trial::run(gateway, fault, &o.plan, &wasm)?;
        t.round = round;
        let c = report::reduce(&t);
        eprintln!(
            "    {} requests, {} failed ({:.2} %), {} failed > 2 s after, {} to the faulty pod > 2 s after",
            c.requests,
            c.failed,
            c.failed_pct(),
            c.failed_late,
            c.to_faulty_late
        );
        trials.push(t);
    }
    let cells = report::merge(&trials.iter().map(report::reduce).collect::<Vec<_>>());
    drop(frozen);
    let text = markdown(&o, &trials, &cells, &run, started.elapsed());
    std::fs::create_dir_all(&o.out).map_err(|e| format!("cannot create {}: {e}", o.out.display()))?;
    let md = o.out.join("faults.md");
    std::fs::write(&md, &text).map_err(|e| format!("cannot write {}: {e}", md.display()))?;
    println!("{}", report::table(&cells));
    println!("{}", report::verdict_list(&report::verdicts(&cells)));
    eprintln!("wrote {} in {:.0} s", md.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// When the run started, on what, and how busy the machine was then.
struct RunInfo {
    when: String,
    commit: String,
    load_before: String,
    /// `release` or `debug` builds.
    model_sim: &'static str,
    shim: &'static str,
    /// The executables copied before the first trial.
    frozen: String,
}

/// Private copies of the executables the trials start, made before the first trial: the target directory
/// is shared, and a build by someone else during the run must not change what is measured. The filter's
/// `.wasm` is always copied (Envoy reads it at every start); model-sim and epp-shim when given as
/// `$MODEL_SIM_BIN` / `$EPP_SHIM_BIN` (as `cargo xtask bench faults` does), which then name the copies.
/// The copies are removed when the run ends.
struct Frozen {
    dir: PathBuf,
    /// Per variable, the build the original was (the copy's path no longer says).
    kinds: Vec<(&'static str, &'static str)>,
    copied: std::cell::RefCell<Vec<String>>,
}

impl Frozen {
    fn new() -> Result<Frozen, String> {
        let dir = e2e::workspace_root().join(format!("target/faults-bench/frozen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut frozen = Frozen { dir, kinds: Vec::new(), copied: std::cell::RefCell::new(Vec::new()) };
        for var in ["MODEL_SIM_BIN", "EPP_SHIM_BIN"] {
            if let Some(path) = std::env::var_os(var) {
                let path = PathBuf::from(path);
                let copy = frozen.copy(&path)?;
                frozen.kinds.push((var, build_kind(&path)));
                // Before the first launch reads it; the benchmark has no other threads yet.
                std::env::set_var(var, copy);
            }
        }
        Ok(frozen)
    }

    fn kind_of(&self, var: &str) -> Option<&'static str> {
        self.kinds.iter().find(|(v, _)| *v == var).map(|(_, k)| *k)
    }

    fn names(&self) -> String {
        self.copied.borrow().iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }

    fn copy(&self, path: &std::path::Path) -> Result<PathBuf, String> {
        let name = path.file_name().ok_or_else(|| format!("{}: not a file", path.display()))?;
        let copy = self.dir.join(name);
        std::fs::copy(path, &copy)
            .map_err(|e| format!("cannot copy {} to {}: {e}", path.display(), copy.display()))?;
        self.copied.borrow_mut().push(name.to_string_lossy().into_owned());
        Ok(copy)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn markdown(
    o: &Options,
    trials: &[Trial],
    cells: &[report::Cell],
    run: &RunInfo,
    elapsed: Duration,
) -> String {
    let p = &o.plan;
    let mut s = String::new();
    let _ = writeln!(s, "# Routing around failure: the picker against round-robin\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench faults{}` (`test-harness/benchmarks/src/bin/faults/`); not edited by hand. \
         The headline table and the verdict are in [BENCHMARKS.md](../../BENCHMARKS.md#routing-around-failure).\n",
        shown_args(&o.args)
    );
    let _ = writeln!(
        s,
        "Run {} UTC, commit {}, {}; load average (1 min) {} at the start, {} at the end; run time {:.0} s. \
         Built at the start and copied, so that every trial ran the same build whatever else was built in \
         the shared target directory meanwhile: {}.\n",
        run.when,
        run.commit,
        machine(),
        run.load_before,
        loadavg(),
        elapsed.as_secs_f64(),
        run.frozen
    );
    let _ = writeln!(s, "## Method\n");
    let _ = writeln!(
        s,
        "- **Pods**: {} `model-sim` replicas ({} build, `--time-scale {}`), fresh for every trial, on loopback. The first one is the faulty one.",
        trial::REPLICAS,
        run.model_sim,
        p.time_scale
    );
    let _ = writeln!(
        s,
        "- **Load**: {:.0} requests/s, open loop (sent on schedule whatever the answers), for {:.0} s per trial: \
         `/v1/completions` of {} tokens with a different prompt each. A request counts as failed unless a \
         whole 200 answer arrives within {:.0} s (the client then gives up).",
        p.rate,
        p.length.as_secs_f64(),
        p.max_tokens,
        p.client_timeout.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- **Fault**: injected {:.0} s into the load, ended {:.0} s later: {}.",
        p.fault_at.as_secs_f64(),
        p.fault_for.as_secs_f64(),
        o.faults
            .iter()
            .map(|f| format!("{} (ended by {})", f.label(), f.restore()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let files = o
        .gateways
        .iter()
        .map(|g| format!("{} (`{}`)", g.label(), g.config().trim_end_matches("envoy.yaml")))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "- **Gateways**, Envoy with {} workers each, configured by the files in `envoy-config/` as they are in the tree: \
         {files}. The filter and the shim ({} `epp-shim`) are configured with {} and \
         the pool (every collector and health setting at its default: scrapes every 50 ms with a 1 s \
         timeout, out after 2 failed scrapes, 3 gateway failures or 5 5xx in a row); in their default \
         shapes (`*-override-host/`) the pool is a STATIC cluster whose override_host policy follows the \
         picker's header and retries a failed connection on another member, in the ORIGINAL_DST shapes \
         (`wasm-picker/`, `ext-proc/`) every attempt goes to the pod the header names. Round-robin has \
         active `/health` checks, outlier detection and the same retries on another pod. A trial starts \
         its load once the gateway has every pod in rotation.",
        gateway::WORKERS,
        run.shim,
        p.scheduling.describe()
    );
    let _ = writeln!(
        s,
        "- **Measures**: *failed*: over the whole load, summed over the rounds (each round's count after \
         the `=`). *Failed > 2 s after*: failed requests sent more than 2 s after the fault. *To the faulty \
         pod > 2 s after*: requests sent to the faulty pod from 2 s after the fault until it ended, the \
         larger of two counts that each miss some: Envoy's per-host `rq_total` + `cx_connect_fail` of \
         cluster `pool` (a connection attempt then retried elsewhere counts; a request still waiting for a \
         connection does not) and the requests that pod answered. *To the faulty pod in the first 2 s*: \
         the same count from the fault to 2 s after, and its share of the requests sent then (a pod kept \
         in rotation by round-robin gets 25 %). \
         *Last request to it*: the last time during the fault either count rose (Envoy's sampled every {} \
         ms); *until restored* when that was within {} ms of the end of the fault. *Marked out*: when the \
         gateway's own state first showed it out of rotation (the filter's `epp_endpoint_health.<ip_port>` \
         stat, the shim's `epp_shim_endpoint_usable` metric, which it refreshes at most once a second, \
         round-robin's health flags); *not reported* when the gateway never showed a state for it. *Back \
         after*: from the end of the fault (kill -9: the new process listening) to the first whole 200 \
         answer from that pod. *Healthy pods shown out*: for how long the gateway's state showed another \
         pod out. *Longest gap, healthy pods*: the longest time another pod got no request while the load \
         ran (0.0 s: one in every sample).\n",
        p.sample_every.as_millis(),
        report::KEPT_MARGIN.as_millis()
    );
    let _ = writeln!(
        s,
        "- **Rounds**: {} ({} trials, one after the other, each fault through each gateway in turn within a \
         round). The table sums the counts over the rounds; its times are the worst round's. Every trial is \
         in the per-second section below.\n",
        o.rounds,
        trials.len()
    );
    let _ = writeln!(s, "## Results\n");
    s.push_str(&report::table(cells));
    let _ = writeln!(s, "\n## Targets (filter and shim in their default shapes)\n");
    s.push_str(&report::verdict_list(&report::verdicts(cells)));
    let _ = writeln!(s, "\n## Per second around the fault\n");
    let _ = writeln!(
        s,
        "Failed requests by the second they were sent in, and requests Envoy gave the faulty pod (its \
         per-host counters), from a second before the fault to the end of the load.\n"
    );
    s.push_str(&report::timeline(trials));
    let _ = writeln!(s, "## The gateways' own counters at the end of each trial\n");
    for t in trials {
        let stats = t.stats.iter().map(|(k, v)| format!("`{k}` {v}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "- {} / {}: {}",
            t.fault.label(),
            t.gateway.label(),
            if stats.is_empty() { "–" } else { &stats }
        );
    }
    s
}

/// The arguments as `cargo xtask bench faults` takes them: `--out` left out (xtask adds `--out docs/bench`
/// in full mode).
fn shown_args(args: &[String]) -> String {
    let mut shown = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--out" {
            it.next();
        } else {
            shown.push(a.as_str());
        }
    }
    if shown.is_empty() {
        String::new()
    } else {
        format!(" -- {}", shown.join(" "))
    }
}

/// `release` or `debug`, from where cargo put the executable.
fn build_kind(path: &std::path::Path) -> &'static str {
    if path.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else if path.components().any(|c| c.as_os_str() == "debug") {
        "debug"
    } else {
        "a given"
    }
}

/// The 1-minute load average: the machine is shared, so the report says how busy it was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| String::from("?"))
}

/// `2 vCPUs AMD EPYC 7B13, Linux x86_64`.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_string()))
        })
        .unwrap_or_else(|| String::from("unknown CPU"));
    format!("{cpus} vCPUs {model}, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The checked-out commit, and the tracked files that differ from it (what the builds contain besides).
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(e2e::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let hash = git(&["rev-parse", "--short", "HEAD"])
        .map_or_else(|| String::from("unknown"), |h| h.trim().to_string());
    let changed: Vec<String> = git(&["status", "--porcelain", "--untracked-files=no"])
        .unwrap_or_default()
        .lines()
        // `XY path`: two status letters and a space.
        .filter_map(|l| l.get(3..).map(str::to_string))
        .collect();
    if changed.is_empty() {
        format!("`{hash}`")
    } else {
        let shown: Vec<String> = changed.iter().take(6).map(|p| format!("`{p}`")).collect();
        let more = if changed.len() > 6 { format!(" and {} more", changed.len() - 6) } else { String::new() };
        format!("`{hash}` with uncommitted changes to {}{more}", shown.join(", "))
    }
}

/// `YYYY-MM-DD HH:MM` in UTC, from the system clock (days to a civil date: Howard Hinnant's algorithm).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rest / 3_600, rest % 3_600 / 60)
}
