//! What one trial (one gateway, one fault) measured, reduced to the figures of the table, and the
//! markdown of `faults.md`. Pure: no clock, no I/O, so the reduction is unit-tested.

use std::fmt::Write as _;
use std::time::Duration;

/// How long after the fault a gateway may still fail requests or send to the faulty pod ("more than
/// 2 s after the fault").
pub const GRACE: Duration = Duration::from_secs(2);

/// The picker's `limits.snapshotMaxAgeMs` (default, unchanged in this benchmark): the target for taking
/// a pod whose `/metrics` hangs out of rotation.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(5_000);

/// A restarted pod should serve again within this time of listening.
pub const BACK_WITHIN: Duration = Duration::from_secs(5);

/// A healthy pod without a single request for longer than this while the load runs has lost its
/// traffic (at the default rate each pod gets about 25 requests a second).
pub const GAP_LIMIT: Duration = Duration::from_secs(1);

/// A pod that got a request this close to the end of its fault was kept in rotation throughout.
pub const KEPT_MARGIN: Duration = Duration::from_millis(500);

/// Share of failed requests over the whole kill -9 run the target allows, percent.
pub const KILL_MAX_FAILED_PCT: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`, a new process on the same port afterwards.
    Kill,
    /// SIGSTOP (the kernel still accepts connections; nothing answers), SIGCONT afterwards.
    Hang,
    /// `metrics_hang`: `/metrics` never answers, completions do.
    MetricsHang,
    /// `error_rate: 1, error_status: 500`: every completion answers 500.
    Errors,
    /// `drop_gauges: ["vllm:kv_cache_usage_perc"]`: a core gauge is missing from `/metrics`.
    MissingGauge,
    /// `completions_hang`: completion requests are read and never answered; `/metrics` answers as usual.
    CompletionsHang,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Kill,
        Fault::Hang,
        Fault::MetricsHang,
        Fault::Errors,
        Fault::MissingGauge,
        Fault::CompletionsHang,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Hang => "hang",
            Fault::MetricsHang => "metrics-hang",
            Fault::Errors => "5xx",
            Fault::MissingGauge => "missing-gauge",
            Fault::CompletionsHang => "completions-hang",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9, restarted",
            Fault::Hang => "hung pod (SIGSTOP)",
            Fault::MetricsHang => "hung /metrics",
            Fault::Errors => "pod answering 500",
            Fault::MissingGauge => "missing KV-cache gauge",
            Fault::CompletionsHang => "hung completions, /metrics fine",
        }
    }

    /// How the fault ends.
    pub fn restore(self) -> &'static str {
        match self {
            Fault::Kill => "a new model-sim on the same port",
            Fault::Hang => "SIGCONT",
            Fault::MetricsHang => "`metrics_hang: false`",
            Fault::Errors => "`error_rate: 0`",
            Fault::MissingGauge => "`drop_gauges: []`",
            Fault::CompletionsHang => "`completions_hang: false`",
        }
    }

    pub fn from_key(key: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.key() == key)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    /// The Wasm picker in its default shape (`envoy-config/wasm-picker-override-host`: STATIC pool,
    /// override_host, retries on another member).
    Filter,
    /// Envoy with the ext_proc shim in its default shape (`envoy-config/ext-proc-override-host`).
    Shim,
    /// The Wasm picker over an ORIGINAL_DST pool (`envoy-config/wasm-picker`: no retry on another pod).
    FilterOriginalDst,
    /// The shim over an ORIGINAL_DST pool (`envoy-config/ext-proc`, GIE's reference shape).
    ShimOriginalDst,
    /// Plain Envoy round-robin with health checks, outlier detection and retries (`envoy-config/round-robin`).
    RoundRobin,
}

impl Gateway {
    pub const ALL: [Gateway; 5] = [
        Gateway::Filter,
        Gateway::Shim,
        Gateway::FilterOriginalDst,
        Gateway::ShimOriginalDst,
        Gateway::RoundRobin,
    ];

    /// What a run measures unless told otherwise: the two default shapes and the baseline (the
    /// ORIGINAL_DST shapes would add two thirds to the run's time).
    pub const DEFAULT: [Gateway; 3] = [Gateway::Filter, Gateway::Shim, Gateway::RoundRobin];

    pub fn key(self) -> &'static str {
        match self {
            Gateway::Filter => "filter",
            Gateway::Shim => "shim",
            Gateway::FilterOriginalDst => "filter-original-dst",
            Gateway::ShimOriginalDst => "shim-original-dst",
            Gateway::RoundRobin => "round-robin",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Gateway::Filter => "filter",
            Gateway::Shim => "ext_proc shim",
            Gateway::FilterOriginalDst => "filter, ORIGINAL_DST",
            Gateway::ShimOriginalDst => "shim, ORIGINAL_DST",
            Gateway::RoundRobin => "round-robin",
        }
    }

    /// The file under `envoy-config/`.
    pub fn config(self) -> &'static str {
        match self {
            Gateway::Filter => "wasm-picker-override-host/envoy.yaml",
            Gateway::Shim => "ext-proc-override-host/envoy.yaml",
            Gateway::FilterOriginalDst => "wasm-picker/envoy.yaml",
            Gateway::ShimOriginalDst => "ext-proc/envoy.yaml",
            Gateway::RoundRobin => "round-robin/envoy.yaml",
        }
    }

    /// The Wasm filter picks.
    pub fn is_filter(self) -> bool {
        matches!(self, Gateway::Filter | Gateway::FilterOriginalDst)
    }

    /// The ext_proc shim picks.
    pub fn is_shim(self) -> bool {
        matches!(self, Gateway::Shim | Gateway::ShimOriginalDst)
    }

    /// A default shape of the picker: the targets are judged on these.
    pub fn is_default_picker(self) -> bool {
        matches!(self, Gateway::Filter | Gateway::Shim)
    }

    pub fn from_key(key: &str) -> Option<Gateway> {
        Gateway::ALL.into_iter().find(|g| g.key() == key)
    }
}

/// One client request: when it was sent and ended (since the load started), its status (0: no answer
/// within the client's timeout, or the connection failed) and the replica that answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub sent: Duration,
    pub done: Duration,
    pub status: u16,
    /// A whole 200 answer.
    pub ok: bool,
    pub replica: Option<String>,
}

/// Whether the gateway's own state has a pod in rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The gateway did not say (no such stat at this moment).
    Unknown,
    In,
    /// Out of rotation, and why (the gateway's words).
    Out(String),
}

/// One look at the gateway's view of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSample {
    pub addr: String,
    /// Requests Envoy gave this host so far (`rq_total` + `cx_connect_fail` of cluster `pool`, summed
    /// across counter resets).
    pub attempts: u64,
    pub state: State,
}

impl HostSample {
    fn out(&self) -> Option<&str> {
        match &self.state {
            State::Out(why) => Some(why),
            _ => None,
        }
    }
}

/// All pods at one moment (since the load started).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at: Duration,
    pub hosts: Vec<HostSample>,
}

impl Sample {
    fn host(&self, addr: &str) -> Option<&HostSample> {
        self.hosts.iter().find(|h| h.addr == addr)
    }
}

/// Everything one trial recorded. Times are since the load started.
#[derive(Clone, Debug)]
pub struct Trial {
    /// Which round of the run (from 1).
    pub round: usize,
    pub gateway: Gateway,
    pub fault: Fault,
    /// The faulty pod's `ip:port` (also its replica name).
    pub faulty: String,
    pub healthy: Vec<String>,
    pub fault_at: Duration,
    /// When the fault ended (SIGCONT sent, knob cleared, the new process started).
    pub restore_at: Duration,
    /// When the pod could serve again: the restarted process listening, else `restore_at`.
    pub ready_at: Duration,
    /// When the last request was sent.
    pub load_end: Duration,
    pub end: Duration,
    pub sent: Vec<Sent>,
    pub samples: Vec<Sample>,
    /// Counters worth a look, as `name value` (the gateway's own ejections, health checks, retries...).
    pub stats: Vec<(String, u64)>,
}

/// When the faulty pod got its last request while faulty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LastRequest {
    /// None after the fault.
    None,
    /// The last one was seen at this time after the fault.
    At(Duration),
    /// It got requests until the fault ended.
    Kept,
}

/// One cell of the table: one trial, or the rounds of one gateway and fault merged (counts summed,
/// times the worst round's).
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub gateway: Gateway,
    pub fault: Fault,
    pub rounds: usize,
    pub requests: usize,
    pub failed: usize,
    /// `failed` of each round.
    pub failed_by_round: Vec<usize>,
    /// Requests sent in the first [`GRACE`] after the fault, and how many of them went to the faulty pod.
    pub sent_early: usize,
    pub to_faulty_early: u64,
    /// Failed requests sent more than [`GRACE`] after the fault.
    pub failed_late: usize,
    /// Requests Envoy gave the faulty pod more than [`GRACE`] after the fault and before it was restored.
    pub to_faulty_late: u64,
    pub last_to_faulty: LastRequest,
    /// When the gateway's own state first showed the pod out, after the fault; `Err(())` when the
    /// gateway never reported a state for it.
    pub marked_out: Result<Option<Duration>, ()>,
    /// From `ready_at` to the end of its first whole 200 answer; `None` if none came.
    pub back_after: Option<Duration>,
    /// How long the run went on after `ready_at` (what "not back" means).
    pub observed_after_ready: Duration,
    /// Healthy pods the gateway's state showed out of rotation at some point: address, for how long,
    /// and why; `None` when the gateway reported no state for them.
    pub healthy_excluded: Option<Vec<(String, Duration, String)>>,
    /// The longest time a healthy pod got no request while the load ran (sampling resolution).
    pub healthy_gap: Duration,
}

impl Cell {
    pub fn failed_pct(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failed as f64 * 100.0 / self.requests as f64
        }
    }
}

/// A pod's attempt counter at the first sample at or after `at`.
fn attempts_from(samples: &[Sample], addr: &str, at: Duration) -> Option<u64> {
    samples.iter().filter(|s| s.at >= at).find_map(|s| s.host(addr)).map(|h| h.attempts)
}

/// A pod's attempt counter at the last sample at or before `at`.
fn attempts_at(samples: &[Sample], addr: &str, at: Duration) -> Option<u64> {
    samples.iter().filter(|s| s.at <= at).filter_map(|s| s.host(addr)).map(|h| h.attempts).next_back()
}

pub fn reduce(t: &Trial) -> Cell {
    let late = t.fault_at + GRACE;
    let failed = t.sent.iter().filter(|s| !s.ok).count();
    let failed_late = t.sent.iter().filter(|s| !s.ok && s.sent >= late).count();

    // Two lower bounds of what went to the faulty pod, the larger one counts: Envoy's per-host
    // counters (they miss requests still waiting for a connection to a hung pod) and the requests the
    // pod itself answered (they miss those that got no answer).
    let answered_by_faulty = |from: Duration| {
        t.sent.iter().filter(move |s| {
            s.sent >= from && s.sent < t.restore_at && s.replica.as_deref() == Some(t.faulty.as_str())
        })
    };
    // The sample taken right after the injection starts the count.
    let to_faulty_early = {
        let from = attempts_from(&t.samples, &t.faulty, t.fault_at).unwrap_or(0);
        let to = attempts_at(&t.samples, &t.faulty, late.min(t.restore_at)).unwrap_or(from);
        let answered = answered_by_faulty(t.fault_at).filter(|s| s.sent < late).count() as u64;
        to.saturating_sub(from).max(answered)
    };
    let sent_early = t.sent.iter().filter(|s| s.sent >= t.fault_at && s.sent < late).count();
    let to_faulty_late = if t.restore_at > late {
        let from = attempts_at(&t.samples, &t.faulty, late).unwrap_or(0);
        let to = attempts_at(&t.samples, &t.faulty, t.restore_at).unwrap_or(from);
        to.saturating_sub(from).max(answered_by_faulty(late).count() as u64)
    } else {
        0
    };

    // The last sampling interval inside the fault window in which the count rose, or the last request
    // sent during the fault that the pod answered.
    let window: Vec<(Duration, u64)> = t
        .samples
        .iter()
        .filter(|s| s.at <= t.restore_at)
        .filter_map(|s| Some((s.at, s.host(&t.faulty)?.attempts)))
        .collect();
    let mut last = answered_by_faulty(t.fault_at).map(|s| s.sent).max();
    for pair in window.windows(2) {
        // Only intervals that start after the fault: a rise shows some request within the interval.
        if let [(from, a), (at, b)] = pair {
            if *from >= t.fault_at && b > a {
                last = last.max(Some(*at));
            }
        }
    }
    let last_to_faulty = match last {
        Some(l) if l + KEPT_MARGIN >= t.restore_at => LastRequest::Kept,
        Some(l) => LastRequest::At(l.saturating_sub(t.fault_at)),
        None => LastRequest::None,
    };

    let known =
        |addr: &str| t.samples.iter().any(|s| s.host(addr).is_some_and(|h| h.state != State::Unknown));
    let marked_out = if known(&t.faulty) {
        Ok(t.samples
            .iter()
            .filter(|s| s.at >= t.fault_at && s.at <= t.restore_at)
            .find(|s| s.host(&t.faulty).is_some_and(|h| h.out().is_some()))
            .map(|s| s.at - t.fault_at))
    } else {
        Err(())
    };

    let back_after = t
        .sent
        .iter()
        .filter(|s| s.ok && s.sent >= t.ready_at && s.replica.as_deref() == Some(t.faulty.as_str()))
        .map(|s| s.done.saturating_sub(t.ready_at))
        .min();

    let mut healthy_excluded = Vec::new();
    for addr in &t.healthy {
        let mut out = Duration::ZERO;
        let mut reasons: Vec<String> = Vec::new();
        for pair in t.samples.windows(2) {
            if let [a, b] = pair {
                if let Some(why) = a.host(addr).and_then(HostSample::out) {
                    out += b.at.saturating_sub(a.at);
                    if !reasons.iter().any(|r| r == why) {
                        reasons.push(why.to_string());
                    }
                }
            }
        }
        // A last sample showing it out counts too, for no time.
        if let Some(why) = t.samples.last().and_then(|s| s.host(addr)).and_then(HostSample::out) {
            if reasons.is_empty() {
                reasons.push(why.to_string());
            }
        }
        if !reasons.is_empty() {
            healthy_excluded.push((addr.clone(), out, reasons.join(", ")));
        }
    }
    let healthy_excluded = t.healthy.iter().any(|a| known(a)).then_some(healthy_excluded);

    // Per healthy pod, the longest run of samples (while the load ran) without a new request.
    let mut healthy_gap = Duration::ZERO;
    for addr in &t.healthy {
        let mut since: Option<(Duration, u64)> = None;
        for s in t.samples.iter().filter(|s| s.at <= t.load_end) {
            let Some(h) = s.host(addr) else { continue };
            match since {
                Some((_, n)) if h.attempts == n => {}
                _ => since = Some((s.at, h.attempts)),
            }
            if let Some((from, _)) = since {
                healthy_gap = healthy_gap.max(s.at - from);
            }
        }
    }

    Cell {
        gateway: t.gateway,
        fault: t.fault,
        rounds: 1,
        requests: t.sent.len(),
        failed,
        failed_by_round: vec![failed],
        sent_early,
        to_faulty_early,
        failed_late,
        to_faulty_late,
        last_to_faulty,
        marked_out,
        back_after,
        observed_after_ready: t.end.saturating_sub(t.ready_at),
        healthy_excluded,
        healthy_gap,
    }
}

/// The cells of several rounds merged per gateway and fault, in the order they first appear: counts
/// summed, for times the worst round (latest out, slowest back, longest gap).
pub fn merge(cells: &[Cell]) -> Vec<Cell> {
    let mut out: Vec<Cell> = Vec::new();
    for c in cells {
        let Some(m) = out.iter_mut().find(|m| m.gateway == c.gateway && m.fault == c.fault) else {
            out.push(c.clone());
            continue;
        };
        m.rounds += c.rounds;
        m.requests += c.requests;
        m.failed += c.failed;
        m.failed_by_round.extend(&c.failed_by_round);
        m.sent_early += c.sent_early;
        m.to_faulty_early += c.to_faulty_early;
        m.failed_late += c.failed_late;
        m.to_faulty_late += c.to_faulty_late;
        m.last_to_faulty = match (m.last_to_faulty, c.last_to_faulty) {
            (LastRequest::Kept, _) | (_, LastRequest::Kept) => LastRequest::Kept,
            (LastRequest::At(a), LastRequest::At(b)) => LastRequest::At(a.max(b)),
            (LastRequest::At(a), LastRequest::None) | (LastRequest::None, LastRequest::At(a)) => {
                LastRequest::At(a)
            }
            (LastRequest::None, LastRequest::None) => LastRequest::None,
        };
        m.marked_out = match (m.marked_out, c.marked_out) {
            (Ok(Some(a)), Ok(Some(b))) => Ok(Some(a.max(b))),
            (Ok(a), Ok(b)) => Ok(a.and(b)),
            _ => Err(()),
        };
        m.back_after = m.back_after.zip(c.back_after).map(|(a, b)| a.max(b));
        m.observed_after_ready = m.observed_after_ready.min(c.observed_after_ready);
        m.healthy_excluded = match (m.healthy_excluded.take(), &c.healthy_excluded) {
            (Some(mut a), Some(b)) => {
                a.extend(b.iter().cloned());
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        };
        m.healthy_gap = m.healthy_gap.max(c.healthy_gap);
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn last_cell(l: LastRequest) -> String {
    match l {
        LastRequest::None => String::from("none"),
        LastRequest::At(d) => secs(d),
        LastRequest::Kept => String::from("until restored"),
    }
}

fn back_cell(c: &Cell) -> String {
    c.back_after.map_or_else(|| format!("not in {}", secs(c.observed_after_ready)), secs)
}

fn healthy_cell(c: &Cell) -> String {
    match &c.healthy_excluded {
        None => String::from("not reported"),
        Some(list) if list.is_empty() => String::from("none"),
        Some(list) => {
            list.iter().map(|(a, d, why)| format!("{a} {} ({why})", secs(*d))).collect::<Vec<_>>().join("; ")
        }
    }
}

fn marked_cell(c: &Cell) -> String {
    match c.marked_out {
        Err(()) => String::from("not reported"),
        Ok(None) => String::from("never"),
        Ok(Some(d)) => secs(d),
    }
}

/// One target, judged on the cells it concerns.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub target: String,
    pub met: bool,
    pub evidence: String,
}

fn cell(cells: &[Cell], g: Gateway, f: Fault) -> Option<&Cell> {
    cells.iter().find(|c| c.gateway == g && c.fault == f)
}

/// The targets of issue 16, for the picker's default shapes (filter and shim over override_host) in every
/// fault the run has; the ORIGINAL_DST shapes are measured for comparison, not judged.
pub fn verdicts(cells: &[Cell]) -> Vec<Verdict> {
    let ours: Vec<&Cell> = cells.iter().filter(|c| c.gateway.is_default_picker()).collect();
    let mut out = Vec::new();
    let mut judge = |target: &str,
                     of: &[&Cell],
                     ok: &dyn Fn(&Cell) -> bool,
                     show: &dyn Fn(&Cell) -> String| {
        if of.is_empty() {
            return;
        }
        let evidence =
            of.iter().map(|c| format!("{}: {}", c.gateway.label(), show(c))).collect::<Vec<_>>().join("; ");
        out.push(Verdict { target: target.to_string(), met: of.iter().all(|c| ok(c)), evidence });
    };
    let of = |f: Fault| ours.iter().copied().filter(|c| c.fault == f).collect::<Vec<_>>();
    judge(
        "kill -9: ≤ 0.5 % of requests failed, none sent more than 2 s after the kill",
        &of(Fault::Kill),
        &|c| c.failed_pct() <= KILL_MAX_FAILED_PCT && c.failed_late == 0,
        &|c| format!("{:.2} % ({} of {}), {} late", c.failed_pct(), c.failed, c.requests, c.failed_late),
    );
    judge(
        "hung pod: no new request to it more than 2 s after the fault",
        &of(Fault::Hang),
        &|c| c.to_faulty_late == 0,
        &|c| format!("{} requests to it after 2 s, last {}", c.to_faulty_late, last_cell(c.last_to_faulty)),
    );
    judge(
        "hung completions (/metrics fine): no new request to it more than 2 s after the fault",
        &of(Fault::CompletionsHang),
        &|c| c.to_faulty_late == 0,
        &|c| format!("{} requests to it after 2 s, last {}", c.to_faulty_late, last_cell(c.last_to_faulty)),
    );
    judge(
        "hung /metrics: out within limits.snapshotMaxAgeMs (5 s)",
        &of(Fault::MetricsHang),
        &|c| match c.last_to_faulty {
            LastRequest::None => true,
            LastRequest::At(d) => d <= SNAPSHOT_MAX_AGE,
            LastRequest::Kept => false,
        },
        &|c| format!("last request to it {}", last_cell(c.last_to_faulty)),
    );
    judge(
        "restarted pod serves again within 5 s",
        &of(Fault::Kill),
        &|c| c.back_after.is_some_and(|d| d <= BACK_WITHIN),
        &back_cell,
    );
    let compared: Vec<&Cell> =
        ours.iter().copied().filter(|c| cell(cells, Gateway::RoundRobin, c.fault).is_some()).collect();
    judge(
        "never worse than round-robin (share of requests failed, same fault)",
        &compared,
        &|c| cell(cells, Gateway::RoundRobin, c.fault).is_some_and(|rr| c.failed <= rr.failed),
        &|c| {
            let rr = cell(cells, Gateway::RoundRobin, c.fault).map_or(0.0, Cell::failed_pct);
            format!("{} {:.2} % vs {:.2} %", c.fault.key(), c.failed_pct(), rr)
        },
    );
    judge(
        "no healthy pod ever excluded (shown out by the gateway, or no request for more than 1 s)",
        &ours,
        &|c| c.healthy_excluded.as_ref().is_none_or(Vec::is_empty) && c.healthy_gap <= GAP_LIMIT,
        &|c| format!("{} shown out: {}, longest gap {}", c.fault.key(), healthy_cell(c), secs(c.healthy_gap)),
    );
    out
}

/// The headline table: one row per fault and gateway.
pub fn table(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| Fault | Gateway | requests | failed (by round) | failed > 2 s after | to the faulty pod in the first 2 s | to the faulty pod > 2 s after | last request to it | marked out | back after | healthy pods shown out | longest gap, healthy pods |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for c in cells {
        let by_round = if c.failed_by_round.len() > 1 {
            format!(" = {}", c.failed_by_round.iter().map(usize::to_string).collect::<Vec<_>>().join(" + "))
        } else {
            String::new()
        };
        let early_pct =
            if c.sent_early == 0 { 0.0 } else { c.to_faulty_early as f64 * 100.0 / c.sent_early as f64 };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({:.2} %){by_round} | {} | {} ({early_pct:.0} %) | {} | {} | {} | {} | {} | {} |",
            c.fault.label(),
            c.gateway.label(),
            c.requests,
            c.failed,
            c.failed_pct(),
            c.failed_late,
            c.to_faulty_early,
            c.to_faulty_late,
            last_cell(c.last_to_faulty),
            marked_cell(c),
            back_cell(c),
            healthy_cell(c),
            secs(c.healthy_gap),
        );
    }
    s
}

pub fn verdict_list(verdicts: &[Verdict]) -> String {
    let mut s = String::new();
    for v in verdicts {
        let _ = writeln!(s, "- **{}: {}.** {}", v.target, if v.met { "met" } else { "not met" }, v.evidence);
    }
    s
}

/// Failed requests and requests to the faulty pod per second around the fault, one line per gateway.
pub fn timeline(trials: &[Trial]) -> String {
    let mut s = String::new();
    for t in trials {
        let from = t.fault_at.saturating_sub(Duration::from_secs(1)).as_secs();
        let to = t.end.as_secs_f64().ceil() as u64;
        let seconds: Vec<u64> = (from..to).collect();
        let failed =
            |sec: u64| t.sent.iter().filter(|r| !r.ok && r.sent.as_secs() == sec).count().to_string();
        let to_faulty = |sec: u64| {
            let a = attempts_at(&t.samples, &t.faulty, Duration::from_secs(sec)).unwrap_or(0);
            let b = attempts_at(&t.samples, &t.faulty, Duration::from_secs(sec + 1)).unwrap_or(a);
            b.saturating_sub(a).to_string()
        };
        let _ = writeln!(
            s,
            "{} / {}, round {}, seconds {from}–{to} of the load (fault at {}, restored at {}):\n",
            t.fault.label(),
            t.gateway.label(),
            t.round,
            secs(t.fault_at),
            secs(t.restore_at)
        );
        let _ = writeln!(s, "```");
        let _ = writeln!(
            s,
            "failed     {}",
            seconds.iter().map(|&x| format!("{:>4}", failed(x))).collect::<String>()
        );
        let _ = writeln!(
            s,
            "to faulty  {}",
            seconds.iter().map(|&x| format!("{:>4}", to_faulty(x))).collect::<String>()
        );
        let _ = writeln!(s, "```\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn sent(sent_ms: u64, ok: bool, replica: &str) -> Sent {
        Sent {
            sent: ms(sent_ms),
            done: ms(sent_ms + 50),
            status: if ok { 200 } else { 503 },
            ok,
            replica: (!replica.is_empty()).then(|| replica.to_string()),
        }
    }

    /// Samples every 500 ms: the faulty pod `a` gets one request per sample until `last_ms` and is shown
    /// out from 5.5 s to 11 s; healthy `b` gets one per sample except in `b_idle` and is shown out in
    /// `b_out` (ms ranges).
    fn samples(last_ms: u64, end_ms: u64, b_out: (u64, u64), b_idle: (u64, u64)) -> Vec<Sample> {
        let mut b = 0;
        (0..=end_ms / 500)
            .map(|i| {
                let at = i * 500;
                if !(at >= b_idle.0 && at < b_idle.1) {
                    b += 1;
                }
                Sample {
                    at: ms(at),
                    hosts: vec![
                        HostSample {
                            addr: String::from("a"),
                            attempts: at.min(last_ms) / 500,
                            state: if at > 5_500 && at < 11_000 {
                                State::Out(String::from("scrape_failing"))
                            } else {
                                State::In
                            },
                        },
                        HostSample {
                            addr: String::from("b"),
                            attempts: b,
                            state: if at >= b_out.0 && at < b_out.1 {
                                State::Out(String::from("ejected"))
                            } else {
                                State::In
                            },
                        },
                    ],
                }
            })
            .collect()
    }

    fn trial(sent: Vec<Sent>, samples: Vec<Sample>) -> Trial {
        Trial {
            round: 1,
            gateway: Gateway::Filter,
            fault: Fault::Kill,
            faulty: String::from("a"),
            healthy: vec![String::from("b")],
            fault_at: ms(5_000),
            restore_at: ms(11_000),
            ready_at: ms(11_200),
            load_end: ms(20_000),
            end: ms(20_000),
            sent,
            samples,
            stats: Vec::new(),
        }
    }

    #[test]
    fn failures_late_requests_and_the_way_back() {
        let mut requests: Vec<Sent> = (0..200).map(|i| sent(i * 100, true, "b")).collect();
        requests.extend([sent(5_010, false, ""), sent(6_900, false, ""), sent(7_000, false, "")]);
        requests.push(sent(11_100, true, "a")); // before the pod was ready: not "back"
        requests.push(sent(12_000, true, "a"));
        let t = trial(requests, samples(8_000, 20_000, (0, 0), (0, 0)));
        let c = reduce(&t);
        assert_eq!((c.requests, c.failed, c.failed_late), (205, 3, 1));
        // Samples at 7 000 (count 14) and 11 000 (count 16): two requests after the grace.
        assert_eq!(c.to_faulty_late, 2);
        // Counts 10 at 5 s and 14 at 7 s; 20 + 2 requests sent meanwhile.
        assert_eq!((c.to_faulty_early, c.sent_early), (4, 22));
        assert_eq!(c.last_to_faulty, LastRequest::At(ms(3_000)));
        assert_eq!(c.marked_out, Ok(Some(ms(1_000))));
        assert_eq!(c.back_after, Some(ms(850)));
        assert_eq!(c.healthy_excluded, Some(vec![]));
        assert_eq!(c.healthy_gap, Duration::ZERO);
        assert!((c.failed_pct() - 3.0 * 100.0 / 205.0).abs() < 1e-9);
    }

    #[test]
    fn a_pod_kept_in_rotation_and_a_healthy_pod_held_out() {
        // b gets nothing from 6 s to 8 s: the samples from 5.5 s to 7.5 s show the same count (2 s).
        let t = trial(vec![sent(0, true, "b")], samples(20_000, 20_000, (6_000, 7_000), (6_000, 8_000)));
        let c = reduce(&t);
        assert_eq!(c.last_to_faulty, LastRequest::Kept);
        assert_eq!(c.back_after, None);
        assert_eq!(c.observed_after_ready, ms(8_800));
        assert_eq!(c.healthy_excluded, Some(vec![(String::from("b"), ms(1_000), String::from("ejected"))]));
        assert_eq!(c.healthy_gap, ms(2_000));
        assert!(table(std::slice::from_ref(&c))
            .contains("| until restored | 1.0 s | not in 8.8 s | b 1.0 s (ejected) | 2.0 s |"));
        let v = verdicts(&[c]);
        let healthy = v.iter().find(|v| v.target.starts_with("no healthy")).unwrap();
        assert!(!healthy.met);
        // Without a round-robin cell there is nothing to compare with.
        assert!(!v.iter().any(|v| v.target.starts_with("never worse")));
    }

    #[test]
    fn a_gateway_that_reports_no_state_is_judged_on_traffic_alone() {
        let mut samples = samples(6_000, 20_000, (0, 0), (0, 0));
        for s in &mut samples {
            for h in &mut s.hosts {
                h.state = State::Unknown;
            }
        }
        let c = reduce(&trial(vec![sent(0, true, "b")], samples));
        assert_eq!((c.marked_out, c.healthy_excluded.clone()), (Err(()), None));
        assert!(table(std::slice::from_ref(&c))
            .contains("| not reported | not in 8.8 s | not reported | 0.0 s |"));
        let v = verdicts(&[c]);
        assert!(v.iter().find(|v| v.target.starts_with("no healthy")).unwrap().met);
    }

    #[test]
    fn requests_the_faulty_pod_answered_count_when_envoy_counters_miss_them() {
        // Envoy's counter stops at 6 s (requests wait for a connection), but the pod answers requests
        // sent until 10.8 s once it runs again.
        let mut requests = vec![sent(0, true, "b")];
        requests.extend((0..20).map(|i| sent(7_000 + i * 200, true, "a")));
        let c = reduce(&trial(requests, samples(6_000, 20_000, (0, 0), (0, 0))));
        assert_eq!(c.to_faulty_late, 20);
        assert_eq!(c.last_to_faulty, LastRequest::Kept);
    }

    #[test]
    fn rounds_merge_into_sums_and_the_worst_times() {
        let one = reduce(&trial(
            vec![sent(0, true, "b"), sent(5_100, false, ""), sent(12_000, true, "a")],
            samples(6_000, 20_000, (0, 0), (0, 0)),
        ));
        let two = Cell {
            back_after: Some(ms(2_000)),
            last_to_faulty: LastRequest::None,
            healthy_gap: ms(400),
            ..one.clone()
        };
        let other = Cell { gateway: Gateway::Shim, ..one.clone() };
        let merged = merge(&[one.clone(), other, two]);
        assert_eq!(merged.len(), 2);
        let m = &merged[0];
        assert_eq!((m.rounds, m.requests, m.failed), (2, 6, 2));
        assert_eq!(m.failed_by_round, vec![1, 1]);
        assert!(table(&merged).contains("| 6 | 2 (33.33 %) = 1 + 1 |"), "{}", table(&merged));
        assert_eq!(m.back_after, Some(ms(2_000)));
        assert_eq!(m.last_to_faulty, one.last_to_faulty);
        assert_eq!(m.healthy_gap, ms(400));
        assert_eq!(merged[1].gateway, Gateway::Shim);
    }

    #[test]
    fn targets_compare_with_round_robin_of_the_same_fault() {
        let base = reduce(&trial(
            vec![sent(0, true, "b"), sent(12_000, true, "a")],
            samples(6_000, 20_000, (0, 0), (0, 0)),
        ));
        let rr = Cell { gateway: Gateway::RoundRobin, failed: 0, ..base.clone() };
        let ours = Cell { failed: 1, requests: 1_000, ..base };
        let v = verdicts(&[ours, rr]);
        let worse = v.iter().find(|v| v.target.starts_with("never worse")).unwrap();
        assert!(!worse.met, "{worse:?}");
        let kill = v.iter().find(|v| v.target.starts_with("kill -9")).unwrap();
        assert!(kill.met, "{kill:?}");
        let back = v.iter().find(|v| v.target.starts_with("restarted")).unwrap();
        assert!(back.met, "{back:?}");
        // Round-robin's own cells are not judged.
        assert!(v.iter().all(|v| !v.evidence.contains("round-robin")));
    }

    #[test]
    fn only_the_default_shapes_are_judged_and_hung_completions_have_their_target() {
        let base = reduce(&trial(
            vec![sent(0, true, "b"), sent(12_000, true, "a")],
            samples(6_000, 20_000, (0, 0), (0, 0)),
        ));
        let hung = Cell { fault: Fault::CompletionsHang, ..base.clone() };
        let original_dst = Cell { gateway: Gateway::FilterOriginalDst, failed: 500, ..base.clone() };
        let v = verdicts(&[hung.clone(), original_dst]);
        assert!(v.iter().all(|v| !v.evidence.contains("ORIGINAL_DST")), "{v:?}");
        let target = v.iter().find(|v| v.target.starts_with("hung completions")).unwrap();
        // The faulty pod got requests until 6 s, 1 s after the fault: none after the 2 s grace.
        assert!(target.met, "{target:?}");
        let late = Cell { to_faulty_late: 3, ..hung };
        let v = verdicts(&[late]);
        assert!(!v.iter().find(|v| v.target.starts_with("hung completions")).unwrap().met);
        for g in Gateway::ALL {
            assert_eq!(Gateway::from_key(g.key()), Some(g));
        }
        assert_eq!(Fault::from_key("completions-hang"), Some(Fault::CompletionsHang));
    }
}
