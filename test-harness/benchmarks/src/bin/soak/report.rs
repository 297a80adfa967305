//! What a soak run measured, reduced to its verdicts: the fault schedule, which failed requests fall
//! inside a fault window (plus the grace period), least-squares RSS slopes, and the files written (CSV of
//! samples, JSON summary, markdown). Pure: no clock, no I/O, so the reduction is unit-tested.

use std::collections::BTreeMap;
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
    /// The filter's memory gauges (`wasmcustom.epp_wasm_memory_bytes` and `wasmcustom.epp_memory_*`,
    /// prefix stripped: `wasm_memory_bytes`, `prefix_entries`, `prefix_entries_cap`, ...), summed over
    /// the serving workers; empty when the admin did not answer.
    pub memory: BTreeMap<String, u64>,
    /// The shim's prefix index: entries and cap (`epp_shim_prefix_index_entries`, `_capacity`).
    pub shim_prefix: [Option<u64>; 2],
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
    s.push_str(
        ",wasm_vms_created,wasm_vms_active,shim_prefix_entries,shim_prefix_cap,client_in_flight,ok,failed\n",
    );
    let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    for x in samples {
        let _ = write!(s, "{:.1}", x.at.as_secs_f64());
        for v in x.rss_kib.iter().chain(x.heap_kib.iter()).chain(x.gauges.iter()) {
            let _ = write!(s, ",{}", opt(*v));
        }
        let _ = writeln!(
            s,
            ",{},{},{},{},{},{},{}",
            opt(x.vms_created),
            opt(x.vms_active),
            opt(x.shim_prefix[0]),
            opt(x.shim_prefix[1]),
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

/// Envoy stat names of the filter's memory gauges (`filter/src/memory.rs`).
pub const WASM_MEMORY_STAT: &str = "wasmcustom.epp_wasm_memory_bytes";
pub const TABLE_STAT_PREFIX: &str = "wasmcustom.epp_memory_";
/// The key of linear memory in [`Sample::memory`].
pub const LINEAR: &str = "wasm_memory_bytes";
/// Linear memory one table entry may cost, at most, for the growth bound: an entry of the prefix index
/// is a 16-byte LRU slot plus a share of a hash table bucket (about 33 bytes), and a growing table
/// holds up to twice its length (both double) and, while it doubles, the old table beside the new one.
/// 256 covers that for every table the filter keeps (their entries are smaller than a prefix entry
/// plus an address string).
pub const ENTRY_BYTES: f64 = 256.0;
/// Tables that are not memory of their own: the pool (the reference for the per-endpoint caps) and the
/// prefix index's distinct hashes (already paid for by its entries).
const NOT_COUNTED: [&str; 2] = ["pool_endpoints", "prefix_hashes"];

/// The filter's memory gauges from an Envoy's `/stats`, names stripped of their prefix.
pub fn memory_gauges<'a>(stats: impl Iterator<Item = (&'a String, &'a u64)>) -> BTreeMap<String, u64> {
    stats
        .filter_map(|(k, v)| {
            if k == WASM_MEMORY_STAT {
                Some((String::from(LINEAR), *v))
            } else {
                k.strip_prefix(TABLE_STAT_PREFIX).map(|t| (String::from(t), *v))
            }
        })
        .collect()
}

/// One table of the filter over the judged window (the last third of the traffic).
#[derive(Clone, Debug, PartialEq)]
pub struct TableRow {
    pub name: String,
    /// Entries at the start and the end of the window, the most seen, and the cap at the end.
    pub first: u64,
    pub last: u64,
    pub max: u64,
    pub cap: u64,
    /// Entries gained per minute over the window ((last - first) / minutes; negative when it shrank).
    pub growth_per_min: f64,
    /// Samples of the window in which it held more than its cap.
    pub over_cap: usize,
}

impl TableRow {
    /// Reached its cap, still growing towards it, flat, or over it.
    pub fn verdict(&self) -> &'static str {
        if self.over_cap > 1 {
            "over its cap"
        } else if self.cap > 0 && self.last as f64 >= 0.98 * self.cap as f64 {
            "at its cap"
        } else if self.growth_per_min > 0.0 {
            "still growing (below its cap)"
        } else {
            "flat or shrinking"
        }
    }

    /// Counts towards linear memory's growth bound.
    pub fn counted(&self) -> bool {
        !NOT_COUNTED.contains(&self.name.as_str())
    }
}

/// The samples of the judged window: the last third of the traffic (after any warm-up).
fn window(samples: &[Sample], traffic: Duration) -> Vec<&Sample> {
    let from = traffic.mul_f64(2.0 / 3.0);
    samples.iter().filter(|s| s.at >= from && s.at <= traffic && !s.memory.is_empty()).collect()
}

/// Every table the filter reported, over the last third of the traffic (`traffic`: its length).
pub fn memory_tables(samples: &[Sample], traffic: Duration) -> Vec<TableRow> {
    let w = window(samples, traffic);
    let (Some(a), Some(b)) = (w.first(), w.last()) else { return Vec::new() };
    let minutes = (b.at.saturating_sub(a.at)).as_secs_f64() / 60.0;
    let names: Vec<&String> =
        b.memory.keys().filter(|k| k.as_str() != LINEAR && !k.ends_with("_cap")).collect();
    names
        .into_iter()
        .map(|name| {
            let get = |s: &Sample, k: &str| s.memory.get(k).copied().unwrap_or(0);
            let cap_key = format!("{name}_cap");
            let (first, last) = (get(a, name), get(b, name));
            TableRow {
                name: name.clone(),
                first,
                last,
                max: w.iter().map(|s| get(s, name)).max().unwrap_or(0),
                cap: get(b, &cap_key),
                growth_per_min: if minutes > 0.0 { (last as f64 - first as f64) / minutes } else { 0.0 },
                over_cap: w.iter().filter(|s| get(s, name) > get(s, &cap_key)).count(),
            }
        })
        .collect()
}

/// Linear memory over the judged window, against the bound the tables allow.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearRow {
    pub first_kib: f64,
    pub last_kib: f64,
    pub growth_kib_per_min: f64,
    /// [`ENTRY_BYTES`] for every entry the counted tables gained per minute: zero when every table sits
    /// at its cap or is flat.
    pub bound_kib_per_min: f64,
}

impl LinearRow {
    pub fn met(&self) -> bool {
        self.growth_kib_per_min <= self.bound_kib_per_min
    }
}

pub fn linear_memory(samples: &[Sample], traffic: Duration, tables: &[TableRow]) -> Option<LinearRow> {
    let w = window(samples, traffic);
    let (a, b) = (w.first()?, w.last()?);
    let (first, last) = (*a.memory.get(LINEAR)?, *b.memory.get(LINEAR)?);
    let minutes = (b.at.saturating_sub(a.at)).as_secs_f64() / 60.0;
    if minutes <= 0.0 {
        return None;
    }
    let bound_bytes: f64 =
        tables.iter().filter(|t| t.counted()).map(|t| t.growth_per_min.max(0.0) * ENTRY_BYTES).sum();
    Some(LinearRow {
        first_kib: first as f64 / 1024.0,
        last_kib: last as f64 / 1024.0,
        growth_kib_per_min: (last as f64 - first as f64) / 1024.0 / minutes,
        bound_kib_per_min: bound_bytes / 1024.0,
    })
}

/// Linear memory points (minutes, MiB), the whole run.
pub fn linear_points(samples: &[Sample]) -> Vec<(f64, f64)> {
    points(samples, Duration::ZERO, |s| s.memory.get(LINEAR).copied())
        .into_iter()
        .map(|(m, b)| (m, b / 1024.0 / 1024.0))
        .collect()
}

/// `memory.csv`: seconds, then every memory gauge the filter reported (the union over the samples).
pub fn memory_csv(samples: &[Sample]) -> String {
    let mut names: Vec<&String> = samples.iter().flat_map(|s| s.memory.keys()).collect();
    names.sort();
    names.dedup();
    let mut s = String::from("seconds");
    for n in &names {
        let _ = write!(s, ",{n}");
    }
    s.push('\n');
    for x in samples {
        let _ = write!(s, "{:.1}", x.at.as_secs_f64());
        for n in &names {
            let _ = write!(s, ",{}", x.memory.get(*n).map_or_else(String::new, |v| v.to_string()));
        }
        s.push('\n');
    }
    s
}

pub fn memory_table(rows: &[TableRow]) -> String {
    let mut s = String::from(
        "| table (summed over workers) | entries at 2/3 → end | most | cap at the end | growth per minute | verdict |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| `{}` | {} → {} | {} | {} | {:+.1} | {} |",
            r.name,
            r.first,
            r.last,
            r.max,
            r.cap,
            r.growth_per_min,
            r.verdict()
        );
    }
    s
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

    fn mem(at: f64, linear_pages: u64, entries: u64, cap: u64) -> Sample {
        let mut memory = BTreeMap::new();
        memory.insert(String::from(LINEAR), linear_pages * 65_536);
        memory.insert(String::from("prefix_entries"), entries);
        memory.insert(String::from("prefix_entries_cap"), cap);
        memory.insert(String::from("pool_endpoints"), 3);
        memory.insert(String::from("pool_endpoints_cap"), 3);
        Sample { at: secs(at), memory, ..Sample::default() }
    }

    #[test]
    fn linear_memory_may_grow_only_as_far_as_the_tables_do() {
        let traffic = secs(600.0);
        // Caches filling: 4,000 entries in the last 200 s (1,200 a minute) allow 300 KiB a minute.
        let filling = [
            mem(400.0, 100, 10_000, 90_000),
            mem(500.0, 102, 12_000, 90_000),
            mem(600.0, 104, 14_000, 90_000),
        ];
        let tables = memory_tables(&filling, traffic);
        assert_eq!(tables.len(), 2);
        let prefix = tables.iter().find(|t| t.name == "prefix_entries").unwrap();
        assert_eq!((prefix.first, prefix.last, prefix.cap, prefix.over_cap), (10_000, 14_000, 90_000, 0));
        assert!((prefix.growth_per_min - 1_200.0).abs() < 1e-6);
        assert_eq!(prefix.verdict(), "still growing (below its cap)");
        let linear = linear_memory(&filling, traffic, &tables).unwrap();
        assert!((linear.growth_kib_per_min - 76.8).abs() < 1e-6, "{linear:?}");
        assert!((linear.bound_kib_per_min - 300.0).abs() < 1e-6, "{linear:?}");
        assert!(linear.met());

        // Every cache at its cap: one page grown is a failure.
        let full = [mem(400.0, 100, 90_000, 90_000), mem(600.0, 101, 90_000, 90_000)];
        let tables = memory_tables(&full, traffic);
        assert_eq!(tables.iter().find(|t| t.name == "prefix_entries").unwrap().verdict(), "at its cap");
        let linear = linear_memory(&full, traffic, &tables).unwrap();
        assert_eq!(linear.bound_kib_per_min, 0.0);
        assert!(!linear.met());
        assert!(linear_memory(
            &[mem(400.0, 100, 90_000, 90_000), mem(600.0, 100, 90_000, 90_000)],
            traffic,
            &tables
        )
        .unwrap()
        .met());

        // Over its cap in more than one sample; samples before the last third do not count.
        let over = [mem(100.0, 1, 99, 10), mem(400.0, 100, 11, 10), mem(600.0, 100, 12, 10)];
        let t = memory_tables(&over, traffic);
        assert_eq!(t.iter().find(|t| t.name == "prefix_entries").unwrap().verdict(), "over its cap");
        assert!(memory_csv(&over).starts_with("seconds,pool_endpoints,pool_endpoints_cap,prefix_entries,"));
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
