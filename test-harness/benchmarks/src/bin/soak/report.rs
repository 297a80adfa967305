//! What a soak run measured, reduced to its verdicts: the fault schedule, which failed requests fall
//! inside a fault window (plus the grace period), least-squares RSS slopes, and the files written (CSV of
//! samples, JSON summary, markdown). Pure: no clock, no I/O, so the reduction is unit-tested.

use std::fmt::Write as _;
use std::time::Duration;

/// The faults the soak injects, each into one process for a while and then undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9` of one model-sim replica, a new process on the same port when the window ends.
    KillReplica,
    /// One replica's `/metrics` never answers (model-sim's `metrics_hang`); completions still do.
    MetricsHang,
    /// The companion collector (the filter's snapshot source) killed, a new one on the same port when
    /// the window ends.
    CollectorDown,
}

impl FaultKind {
    pub fn key(self) -> &'static str {
        match self {
            FaultKind::KillReplica => "kill-replica",
            FaultKind::MetricsHang => "metrics-hang",
            FaultKind::CollectorDown => "collector-down",
        }
    }
}

/// One planned fault: what, on which replica (for the replica faults), from when, for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub kind: FaultKind,
    pub replica: usize,
    pub at: Duration,
    pub length: Duration,
}

/// A fault as it happened: from the moment it took effect to the moment it was undone (for a kill, the
/// new process listening).
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub kind: FaultKind,
    pub replica: usize,
    pub start: Duration,
    pub end: Duration,
}

/// The schedule: the run is cut into cycles (5 minutes in runs of 10 minutes or more, else the whole run
/// is one cycle); every cycle kills a replica at 10 % of it, hangs another replica's `/metrics` at 40 %
/// and takes the collector down at 70 %, each for 15 s (8 % of the cycle, at least 2 s, in shorter runs).
/// The replicas take turns.
pub fn schedule(duration: Duration, replicas: usize) -> Vec<Planned> {
    let total = duration.as_secs_f64();
    let cycle = if total >= 600.0 { 300.0 } else { total };
    let length = if total >= 600.0 { 15.0 } else { (cycle * 0.08).max(2.0) };
    let replicas = replicas.max(1);
    let mut out = Vec::new();
    let mut n = 0usize;
    while (n as f64 + 1.0) * cycle <= total + 1e-9 {
        let base = n as f64 * cycle;
        for (kind, share, replica) in [
            (FaultKind::KillReplica, 0.1, n % replicas),
            (FaultKind::MetricsHang, 0.4, (n + 1) % replicas),
            (FaultKind::CollectorDown, 0.7, 0),
        ] {
            out.push(Planned {
                kind,
                replica,
                at: Duration::from_secs_f64(base + cycle * share),
                length: Duration::from_secs_f64(length),
            });
        }
        n += 1;
    }
    out
}

/// What a request was, and so what answer counts as right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// `/v1/completions`, whole JSON answer: 200.
    Completion,
    /// `/v1/chat/completions` with `stream: true`: 200, every event up to `[DONE]`.
    Stream,
    /// A stream the client closes after its first event: 200 and at least one body byte before the close.
    Cancel,
    /// A body that is not JSON: 400.
    Malformed,
    /// A body over `limits.maxBodyBytes` (4 MiB): 413.
    Huge,
    /// `content-encoding: gzip`: 415 (the picker reads bodies as sent).
    Compressed,
    /// A model no replica serves: the model server's 404.
    UnknownModel,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::Completion,
        Class::Stream,
        Class::Cancel,
        Class::Malformed,
        Class::Huge,
        Class::Compressed,
        Class::UnknownModel,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Class::Completion => "completion",
            Class::Stream => "stream",
            Class::Cancel => "cancel",
            Class::Malformed => "malformed",
            Class::Huge => "huge",
            Class::Compressed => "compressed",
            Class::UnknownModel => "unknown-model",
        }
    }

    /// The status that counts as the right answer.
    pub fn expected_status(self) -> u16 {
        match self {
            Class::Completion | Class::Stream | Class::Cancel => 200,
            Class::Malformed => 400,
            Class::Huge => 413,
            Class::Compressed => 415,
            Class::UnknownModel => 404,
        }
    }
}

/// Which gateway a request went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    Filter,
    Shim,
}

impl Via {
    pub fn key(self) -> &'static str {
        match self {
            Via::Filter => "filter",
            Via::Shim => "shim",
        }
    }
}

/// One request as the client saw it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub class: Class,
    pub via: Via,
    pub sent: Duration,
    pub done: Duration,
    pub ok: bool,
    /// Status and what was wrong, for a failed one (`200 truncated`, `503`, `no reply: …`).
    pub detail: String,
}

/// True when the request's life `[sent, done]` overlaps a window stretched by `grace` at its end: a
/// failure there may be the fault's doing.
pub fn in_fault(s: &Sent, windows: &[Window], grace: Duration) -> bool {
    windows.iter().any(|w| s.sent <= w.end + grace && s.done >= w.start)
}

/// Failed requests, split by class and gateway, inside and outside the fault windows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// (class, via) → (sent, ok, failed inside a window, failed outside every window).
    pub rows: Vec<((Class, Via), [u64; 4])>,
    /// The first failures outside every window (at most 20), for the report.
    pub outside_examples: Vec<String>,
}

impl Tally {
    pub fn failed_outside(&self) -> u64 {
        self.rows.iter().map(|(_, c)| c[3]).sum()
    }

    pub fn failed_inside(&self) -> u64 {
        self.rows.iter().map(|(_, c)| c[2]).sum()
    }

    pub fn sent(&self) -> u64 {
        self.rows.iter().map(|(_, c)| c[0]).sum()
    }
}

pub fn tally(sent: &[Sent], windows: &[Window], grace: Duration) -> Tally {
    let mut t = Tally::default();
    for class in Class::ALL {
        for via in [Via::Filter, Via::Shim] {
            t.rows.push(((class, via), [0; 4]));
        }
    }
    for s in sent {
        let Some((_, c)) = t.rows.iter_mut().find(|(k, _)| *k == (s.class, s.via)) else { continue };
        c[0] += 1;
        if s.ok {
            c[1] += 1;
        } else if in_fault(s, windows, grace) {
            c[2] += 1;
        } else {
            c[3] += 1;
            if t.outside_examples.len() < 20 {
                t.outside_examples.push(format!(
                    "{:.1} s–{:.1} s {} via {}: {}",
                    s.sent.as_secs_f64(),
                    s.done.as_secs_f64(),
                    s.class.key(),
                    s.via.key(),
                    s.detail
                ));
            }
        }
    }
    t
}

/// Least-squares slope of `y` over `x`; `None` for fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// The processes whose RSS is sampled, in CSV column order.
pub const PROCESSES: [&str; 4] = ["envoy-filter", "envoy-shim", "epp-shim", "collector"];

/// The Envoy heap readings sampled, in CSV column order.
pub const HEAP: [&str; 4] = [
    "heap_allocated_kib_envoy_filter",
    "heap_size_kib_envoy_filter",
    "heap_allocated_kib_envoy_shim",
    "heap_size_kib_envoy_shim",
];

/// The in-flight gauges sampled, in CSV column order: Envoy's own (both Envoys), the shim's.
pub const GAUGES: [&str; 8] = [
    "filter_envoy_downstream_rq_active",
    "filter_envoy_upstream_rq_active",
    "filter_in_flight",
    "shim_envoy_downstream_rq_active",
    "shim_envoy_upstream_rq_active",
    "shim_request_running",
    "shim_endpoint_in_flight",
    "shim_extproc_streams",
];

/// One sample, every few seconds.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at: Duration,
    /// KiB per process of [`PROCESSES`]; `None` when it could not be read (the process restarting).
    pub rss_kib: [Option<u64>; 4],
    /// Both Envoys' tcmalloc heap, KiB, in [`HEAP`] order (admin `/memory`: `allocated` is what is in use,
    /// `heap_size` what tcmalloc holds; neither counts V8's own mappings, the Wasm VMs' memory among them).
    pub heap_kib: [Option<u64>; 4],
    /// Values of [`GAUGES`]; `None` when the admin or `/metrics` did not answer.
    pub gauges: [Option<u64>; 8],
    /// `wasm.envoy.wasm.runtime.v8.created` and `.active` of the filter's Envoy.
    pub vms_created: Option<u64>,
    pub vms_active: Option<u64>,
    /// Requests the client has sent and not finished.
    pub client_in_flight: u64,
    /// Requests finished so far: right answers, wrong ones.
    pub ok: u64,
    pub failed: u64,
}

pub fn csv(samples: &[Sample]) -> String {
    let mut s = String::from("seconds");
    for p in PROCESSES {
        let _ = write!(s, ",rss_kib_{}", p.replace('-', "_"));
    }
    for h in HEAP {
        let _ = write!(s, ",{h}");
    }
    for g in GAUGES {
        let _ = write!(s, ",{g}");
    }
    s.push_str(",wasm_vms_created,wasm_vms_active,client_in_flight,ok,failed\n");
    let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    for x in samples {
        let _ = write!(s, "{:.1}", x.at.as_secs_f64());
        for v in x.rss_kib.iter().chain(x.heap_kib.iter()).chain(x.gauges.iter()) {
            let _ = write!(s, ",{}", opt(*v));
        }
        let _ = writeln!(
            s,
            ",{},{},{},{},{}",
            opt(x.vms_created),
            opt(x.vms_active),
            x.client_in_flight,
            x.ok,
            x.failed
        );
    }
    s
}

/// RSS points (minutes, KiB) of process `i`, from `from` on (the warm-up left out).
pub fn rss_points(samples: &[Sample], i: usize, from: Duration) -> Vec<(f64, f64)> {
    points(samples, from, |s| *s.rss_kib.get(i)?)
}

/// Envoy heap points (minutes, KiB) of reading `i` of [`HEAP`], from `from` on.
pub fn heap_points(samples: &[Sample], i: usize, from: Duration) -> Vec<(f64, f64)> {
    points(samples, from, |s| *s.heap_kib.get(i)?)
}

fn points(samples: &[Sample], from: Duration, value: impl Fn(&Sample) -> Option<u64>) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter(|s| s.at >= from)
        .filter_map(|s| Some((s.at.as_secs_f64() / 60.0, value(s)? as f64)))
        .collect()
}

/// The targets and how the run did against them.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub name: String,
    pub value: String,
    pub target: String,
    /// `None`: reported, not judged (an RSS slope over a run too short to mean anything).
    pub met: Option<bool>,
}

pub fn markdown_table(verdicts: &[Verdict]) -> String {
    let mut s = String::from("| measure | value | target | met |\n|---|---|---|---|\n");
    for v in verdicts {
        let met = match v.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not judged",
        };
        let _ = writeln!(s, "| {} | {} | {} | {met} |", v.name, v.value, v.target);
    }
    s
}

pub fn tally_table(t: &Tally) -> String {
    let mut s = String::from(
        "| class | gateway | sent | right answer | failed in a fault window | failed outside |\n|---|---|---|---|---|---|\n",
    );
    for ((class, via), c) in &t.rows {
        if c[0] == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "| {} (expects {}) | {} | {} | {} | {} | {} |",
            class.key(),
            class.expected_status(),
            via.key(),
            c[0],
            c[1],
            c[2],
            c[3]
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn thirty_minutes_make_six_cycles_of_three_faults_that_never_overlap() {
        let plan = schedule(secs(1800.0), 3);
        assert_eq!(plan.len(), 18);
        for pair in plan.windows(2) {
            assert!(pair[0].at + pair[0].length < pair[1].at, "{pair:?}");
        }
        let last = plan.last().unwrap();
        assert!(last.at + last.length + secs(30.0) < secs(1800.0));
        // The kills go round the replicas.
        let killed: Vec<usize> =
            plan.iter().filter(|p| p.kind == FaultKind::KillReplica).map(|p| p.replica).collect();
        assert_eq!(killed, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_short_run_is_one_cycle_with_short_faults() {
        let plan = schedule(secs(30.0), 3);
        assert_eq!(plan.iter().map(|p| p.kind).collect::<Vec<_>>().len(), 3);
        assert_eq!(plan[0].at, secs(3.0));
        assert!(plan.iter().all(|p| p.length == secs(2.4)));
        assert!(schedule(secs(5.0), 3).iter().all(|p| p.length == secs(2.0)));
    }

    #[test]
    fn failures_are_classified_by_overlap_with_a_stretched_window() {
        let w = [Window { kind: FaultKind::KillReplica, replica: 0, start: secs(10.0), end: secs(20.0) }];
        let grace = secs(5.0);
        let req = |sent: f64, done: f64, ok: bool| Sent {
            class: Class::Completion,
            via: Via::Filter,
            sent: secs(sent),
            done: secs(done),
            ok,
            detail: String::from("503"),
        };
        // Sent before the fault but still running when it hit; sent inside; sent in the grace period.
        assert!(in_fault(&req(9.0, 10.5, false), &w, grace));
        assert!(in_fault(&req(15.0, 15.1, false), &w, grace));
        assert!(in_fault(&req(24.9, 25.0, false), &w, grace));
        // Over before it began; sent after the grace period.
        assert!(!in_fault(&req(8.0, 9.9, false), &w, grace));
        assert!(!in_fault(&req(25.1, 25.2, false), &w, grace));
        let t = tally(&[req(1.0, 2.0, true), req(15.0, 16.0, false), req(30.0, 31.0, false)], &w, grace);
        assert_eq!((t.sent(), t.failed_inside(), t.failed_outside()), (3, 1, 1));
        assert_eq!(t.outside_examples.len(), 1);
    }

    #[test]
    fn least_squares_slope() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        let noisy = [(0.0, 10.0), (1.0, 12.0), (2.0, 10.0), (3.0, 12.0)];
        assert!((slope(&noisy).unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }
}
