//! The overload suite (issue 19): priority bands and tenants on a trace, the gateway's admission modes
//! compared on it, and what they are judged by.
//!
//! - Bands are InferenceObjectives with priorities, as llm-d's flow-control guide sets them up:
//!   `critical` (100), `standard` (0) and `sheddable` (-10, negative: sheddable). Every request names
//!   its objective and its tenant (the fairness id); one tenant is noisy (half of the standard and
//!   sheddable traffic).
//! - Modes ([`Mode`]), all through `scheduler-core`'s `EndpointPicker` with the default scheduling
//!   profile: no admission control (the gateway is not told the objective, so nothing is shed and
//!   everything goes to the pods' queues), shedding (today's default: a sheddable request is answered
//!   429 while the saturation detector says the pool is full; others go to the pods' queues) and flow
//!   control (requests wait in the gateway's queue, dispatched by priority and fairness while the
//!   detector says there is room; `decide_or_queue` on arrival, `poll` on a tick and on every finish).
//! - Measures: goodput (requests completed within the SLO, [`Slo`]), p99 TTFT per band, rejections per
//!   band, and how often a request of a band was rejected while a request of a lower band waited in
//!   the gateway's queue (a priority inversion; target 0 for the highest band).

use crate::chart::{bar_chart, BarSeries, PALETTE};
use crate::policy::{Admission, GatewayRequest, Picker, Policy, Release, OURS_CONFIG};
use crate::sim::{self, RequestRecord, RunResult, SimConfig};
use crate::stats::quantile;
use crate::workload::{self, Arrival, SharedPrefixShape, TraceSpec, WorkloadKind};
use scheduler_core::endpoint_picker::{
    Admission as FcAdmission, EndpointPicker, Outcome, PoolView, RequestInfo, WaitingRequests,
};
use scheduler_core::flow_control::Ticket;
use scheduler_core::model::PoolSnapshot;
use scheduler_core::rng::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;
use std::time::Instant;

/// A priority band: the InferenceObjective a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Band {
    Critical,
    Standard,
    Sheddable,
}

impl Band {
    /// Highest priority first.
    pub const ALL: [Band; 3] = [Band::Critical, Band::Standard, Band::Sheddable];

    /// The objective's name (`x-gateway-inference-objective`).
    pub fn objective(self) -> &'static str {
        match self {
            Band::Critical => "critical",
            Band::Standard => "standard",
            Band::Sheddable => "sheddable",
        }
    }

    /// The objective's priority (llm-d's guide: premium 100, standard 0, best-effort -10).
    pub fn priority(self) -> i32 {
        match self {
            Band::Critical => 100,
            Band::Standard => 0,
            Band::Sheddable => -10,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The tenants (fairness ids); the last one is the noisy neighbour.
pub const TENANTS: [&str; 4] = ["tenant-a", "tenant-b", "tenant-c", "tenant-noisy"];
/// Index of the noisy tenant in [`TENANTS`].
pub const NOISY: u8 = 3;

/// Who sent a request, and at which priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Class {
    pub band: Band,
    /// Index into [`TENANTS`].
    pub tenant: u8,
}

impl Class {
    pub fn tenant_name(&self) -> &'static str {
        TENANTS.get(usize::from(self.tenant)).copied().unwrap_or("tenant-a")
    }
}

/// Shares of the traffic: bands, and the noisy tenant's share of the standard and sheddable bands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    pub critical: f64,
    pub standard: f64,
    /// Of the standard and sheddable requests, the share the noisy tenant sends; the rest, and every
    /// critical request, spread evenly over the other tenants.
    pub noisy: f64,
}

impl Default for Mix {
    /// 20 % critical, 50 % standard, 30 % sheddable; the noisy tenant sends half of the standard and
    /// sheddable traffic (40 % of all requests, the three others 20 % each).
    fn default() -> Mix {
        Mix { critical: 0.2, standard: 0.5, noisy: 0.5 }
    }
}

/// Gives every request of `trace` a band and a tenant, reproducibly from `seed` (independent of the
/// arrival times and lengths, so one trace per load point serves every mode).
pub fn classify(trace: &mut [Arrival], mix: Mix, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xC1A5_5E5D_0B1E_C7ED);
    let quiet = NOISY.max(1);
    for a in trace.iter_mut() {
        let u = rng.next_f64();
        let band = if u < mix.critical {
            Band::Critical
        } else if u < mix.critical + mix.standard {
            Band::Standard
        } else {
            Band::Sheddable
        };
        let noisy = band != Band::Critical && rng.next_f64() < mix.noisy;
        let tenant = if noisy { NOISY } else { rng.below(usize::from(quiet)) as u8 };
        a.class = Some(Class { band, tenant });
    }
}

/// `base` (a scheduling configuration) with the three bands as InferenceObjectives.
pub fn with_objectives(base: &str) -> Result<String, String> {
    let mut v: Value = serde_json::from_str(base).map_err(|e| format!("picker config: {e}"))?;
    let Some(o) = v.as_object_mut() else { return Err(String::from("picker config: not a JSON object")) };
    let objectives: Vec<Value> = Band::ALL
        .iter()
        .map(|b| serde_json::json!({"name": b.objective(), "priority": b.priority()}))
        .collect();
    o.insert(String::from("objectives"), Value::Array(objectives));
    Ok(v.to_string())
}

/// What the gateway does with a request when the pool is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Admit {
    /// Nothing shed: the objective is not passed to the picker, everything goes to the pods' queues.
    None,
    /// Today's default: sheddable requests 429 while the saturation detector reads ≥ 1.
    Shedding,
    /// llm-d's flow control: requests wait in the gateway (`EndpointPicker::decide_or_queue`/`poll`).
    FlowControl,
}

/// An admission mode, the saturation detector it reads and, for flow control, its tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode {
    pub admit: Admit,
    /// `Some(n)`: `concurrency-detector` with `maxConcurrency` n per endpoint; `None`: the default
    /// detector (`utilization-detector`: waiting queue 5, KV 80 %, on the last scrape).
    pub max_concurrency: Option<u32>,
    /// Flow control: `priority-holdback-policy` with `minCeiling` this many percent (ceilings by rank:
    /// critical 100 %, standard halfway, sheddable this); `None`: one ceiling of 1.0 for all.
    pub holdback_pct: Option<u32>,
    /// Flow control: `defaultRequestTTL` in seconds (`None`: the guide's 60 s).
    pub ttl_s: Option<u32>,
    /// Flow control: `enableEviction` (in-flight sheddable requests ended 429 to make room for a
    /// blocked higher band).
    pub eviction: bool,
    /// With `max_concurrency`: `concurrencyMode` `hybrid` with `maxTokenConcurrency` this many thousand
    /// estimated tokens per endpoint (a pod is full at either limit).
    pub max_ktokens: Option<u32>,
    /// With `max_concurrency`: our `prefill-backlog-detector` instead of `concurrency-detector`, full at
    /// `maxConcurrency` requests or this many prompt tokens awaiting their first token per endpoint.
    pub max_backlog: Option<u32>,
}

impl Mode {
    pub const NO_ADMISSION: Mode = Mode {
        admit: Admit::None,
        max_concurrency: None,
        holdback_pct: None,
        ttl_s: None,
        eviction: false,
        max_ktokens: None,
        max_backlog: None,
    };
    pub const SHEDDING: Mode = Mode { admit: Admit::Shedding, ..Mode::NO_ADMISSION };
    pub const FLOW_CONTROL: Mode = Mode { admit: Admit::FlowControl, ..Mode::NO_ADMISSION };
    pub const ALL: [Mode; 3] = [Mode::NO_ADMISSION, Mode::SHEDDING, Mode::FLOW_CONTROL];

    /// `no-admission-control`, `shedding`, `flow-control`, then `-c<n>` for the concurrency detector,
    /// `-k<thousand tokens>` for hybrid token gating, `-b<tokens>` for the prefill-backlog detector,
    /// `-h<percent>` for priority holdback, `-t<seconds>` for the time-to-live and `-e` for in-flight
    /// eviction.
    pub fn name(self) -> String {
        let mut name = String::from(match self.admit {
            Admit::None => "no-admission-control",
            Admit::Shedding => "shedding",
            Admit::FlowControl => "flow-control",
        });
        for (tag, v) in [
            ("c", self.max_concurrency),
            ("k", self.max_ktokens),
            ("b", self.max_backlog),
            ("h", self.holdback_pct),
            ("t", self.ttl_s),
        ] {
            if let Some(v) = v {
                name.push_str(&format!("-{tag}{v}"));
            }
        }
        if self.eviction {
            name.push_str("-e");
        }
        name
    }

    pub fn parse(s: &str) -> Option<Mode> {
        let mut rest = s;
        let mut mode = Mode::NO_ADMISSION;
        if let Some(head) = rest.strip_suffix("-e") {
            mode.eviction = true;
            rest = head;
        }
        while let Some((head, tail)) = rest.rsplit_once('-') {
            let (tag, digits) = tail.split_at(tail.len().min(1));
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                break;
            }
            let v = digits.parse::<u32>().ok()?;
            match tag {
                "c" if v > 0 => mode.max_concurrency = Some(v),
                "k" if v > 0 => mode.max_ktokens = Some(v),
                "b" if v > 0 => mode.max_backlog = Some(v),
                "h" if v < 100 => mode.holdback_pct = Some(v),
                "t" => mode.ttl_s = Some(v),
                _ => return None,
            }
            rest = head;
        }
        mode.admit = match rest {
            "no-admission-control" => Admit::None,
            "shedding" => Admit::Shedding,
            "flow-control" => Admit::FlowControl,
            _ => return None,
        };
        let tuned = mode.holdback_pct.is_some() || mode.ttl_s.is_some() || mode.eviction;
        let tokens_alone =
            (mode.max_ktokens.is_some() || mode.max_backlog.is_some()) && mode.max_concurrency.is_none();
        let both = mode.max_ktokens.is_some() && mode.max_backlog.is_some();
        ((mode.admit == Admit::FlowControl || !tuned) && !tokens_alone && !both).then_some(mode)
    }

    /// The picker's configuration: `scheduling` with the bands as objectives, the detector, and for flow
    /// control the feature gate and llm-d's flow-control guide's section (bands 100 / 0 / -10 holding at
    /// most 500 / 200 / 50 requests, 1k in all, 10Gi, a 60 s time-to-live, round-robin between tenants,
    /// first come first served within one).
    pub fn config(self, scheduling: &str) -> Result<String, String> {
        let mut v: Value = serde_json::from_str(&with_objectives(scheduling)?).map_err(|e| format!("{e}"))?;
        let Some(o) = v.as_object_mut() else { return Err(String::from("picker config: not a JSON object")) };
        let plugins = o.entry("plugins").or_insert_with(|| Value::Array(Vec::new()));
        let Some(plugins) = plugins.as_array_mut() else { return Err(String::from("plugins: not a list")) };
        if let (Some(n), Some(b)) = (self.max_concurrency, self.max_backlog) {
            plugins.push(serde_json::json!({
                "type": "prefill-backlog-detector",
                "parameters": {"maxConcurrency": n, "maxPrefillTokens": b}
            }));
            o.insert(
                String::from("saturationDetector"),
                serde_json::json!({"pluginRef": "prefill-backlog-detector"}),
            );
        } else if let Some(n) = self.max_concurrency {
            let parameters = match self.max_ktokens {
                Some(k) => serde_json::json!({
                    "maxConcurrency": n,
                    "concurrencyMode": "hybrid",
                    "maxTokenConcurrency": u64::from(k) * 1000
                }),
                None => serde_json::json!({"maxConcurrency": n}),
            };
            plugins.push(serde_json::json!({"type": "concurrency-detector", "parameters": parameters}));
            o.insert(
                String::from("saturationDetector"),
                serde_json::json!({"pluginRef": "concurrency-detector"}),
            );
        }
        if self.admit == Admit::FlowControl {
            if let Some(p) = o.get_mut("plugins").and_then(Value::as_array_mut) {
                p.push(serde_json::json!({"type": "round-robin-fairness-policy"}));
                p.push(serde_json::json!({"type": "fcfs-ordering-policy"}));
            }
            o.insert(String::from("featureGates"), serde_json::json!(["flowControl"]));
            if let Some(pct) = self.holdback_pct {
                if let Some(p) = o.get_mut("plugins").and_then(Value::as_array_mut) {
                    p.push(serde_json::json!({
                        "type": "priority-holdback-policy",
                        "parameters": {"minCeiling": f64::from(pct) / 100.0, "maxCeiling": 1.0}
                    }));
                }
            }
            let band = |priority: i32, max: &str| {
                serde_json::json!({
                    "priority": priority,
                    "maxRequests": max,
                    "fairnessPolicyRef": "round-robin-fairness-policy",
                    "orderingPolicyRef": "fcfs-ordering-policy"
                })
            };
            let mut section = serde_json::json!({
                "maxBytes": "10Gi",
                "maxRequests": "1k",
                "defaultRequestTTL": format!("{}s", self.ttl_s.unwrap_or(60)),
                "priorityBands": [band(100, "500"), band(0, "200"), band(-10, "50")]
            });
            if self.eviction {
                if let Some(f) = section.as_object_mut() {
                    f.insert(String::from("enableEviction"), Value::Bool(true));
                }
            }
            if self.holdback_pct.is_some() {
                if let Some(f) = section.as_object_mut() {
                    f.insert(
                        String::from("usageLimitPolicyPluginRef"),
                        Value::from("priority-holdback-policy"),
                    );
                }
            }
            o.insert(String::from("flowControl"), section);
        }
        Ok(v.to_string())
    }

    /// The decision point, scheduling with `scheduling`.
    pub fn build(self, scheduling: &str, seed: u64) -> Result<Box<dyn Policy>, String> {
        let config = self.config(scheduling)?;
        Ok(match self.admit {
            Admit::None => Box::new(Unprioritised { inner: Picker::new(&config, seed)? }),
            Admit::Shedding => Box::new(Picker::new(&config, seed)?),
            Admit::FlowControl => {
                let picker = EndpointPicker::from_json(&config).map_err(|e| format!("picker config: {e}"))?;
                if picker.flow_control().is_none() {
                    return Err(String::from("flow control is not on in the configuration"));
                }
                Box::new(FlowControl {
                    picker,
                    seed,
                    waiting: Waiting::default(),
                    lease_of: HashMap::new(),
                    leased: HashMap::new(),
                    ended: Vec::new(),
                    prompt_tokens: HashMap::new(),
                })
            }
        })
    }
}

/// The queue's tick: how often a gateway polls its waiting requests (besides every finish).
pub const TICK_US: u64 = 10_000;

/// A waiting request as the gateway keeps it (the body stays here, not in the core).
struct Held {
    id: u64,
    request_id: String,
    objective: Option<String>,
    fairness_id: Option<String>,
    body: Vec<u8>,
}

/// The gateway's store of waiting requests, by ticket.
#[derive(Default)]
struct Waiting {
    held: HashMap<Ticket, Held>,
}

impl WaitingRequests for Waiting {
    fn with_request(&mut self, ticket: Ticket, f: &mut dyn FnMut(&RequestInfo<'_>, Option<&[u8]>)) -> bool {
        let Some(h) = self.held.get(&ticket) else { return false };
        let info = RequestInfo {
            path: "/v1/completions",
            request_id: &h.request_id,
            objective: h.objective.as_deref(),
            fairness_id: h.fairness_id.as_deref(),
            ..RequestInfo::default()
        };
        f(&info, Some(&h.body));
        true
    }
}

/// Flow control as the filter and the shim drive it: `decide_or_queue` on arrival, `poll` on the tick
/// and when a request finishes, each on one decision point's `EndpointPicker`.
struct FlowControl {
    picker: EndpointPicker,
    seed: u64,
    waiting: Waiting,
    /// In-flight eviction: the lease of each routed request that has one, both ways.
    lease_of: HashMap<u64, Ticket>,
    leased: HashMap<Ticket, u64>,
    /// Leases whose request ended since the last call into the picker (reported with that call's clock,
    /// the same instant: the simulator polls right after a finish).
    ended: Vec<Ticket>,
    /// `Route::prompt_tokens` of each request routed and not yet taken by the simulator.
    prompt_tokens: HashMap<u64, u64>,
}

impl FlowControl {
    fn routed(&mut self, id: u64, outcome: &Outcome, lease: Option<Ticket>) {
        self.lease(id, lease);
        if let Outcome::Route(r) | Outcome::FailOpen { route: Some(r), .. } = outcome {
            self.prompt_tokens.insert(id, r.prompt_tokens);
        }
    }

    fn lease(&mut self, id: u64, lease: Option<Ticket>) {
        if let Some(l) = lease {
            self.lease_of.insert(id, l);
            self.leased.insert(l, id);
        }
    }

    fn report_ended(&mut self, now_ms: u64) {
        for l in std::mem::take(&mut self.ended) {
            self.picker.finished(l, now_ms);
        }
    }
}

/// What the simulator does with a decided outcome.
fn admission_of(outcome: &Outcome, pool: &PoolSnapshot) -> Admission {
    match outcome {
        Outcome::Route(r) | Outcome::FailOpen { route: Some(r), .. } => {
            match pool.endpoints.iter().position(|e| e.address() == r.destination) {
                Some(i) => Admission::Route(i),
                None => Admission::Reject(503),
            }
        }
        Outcome::FailOpen { route: None, .. } => Admission::Reject(503),
        Outcome::Reply(reply) => Admission::Reject(reply.status),
    }
}

impl Policy for FlowControl {
    /// Never called by the simulator, which asks [`Policy::admit`]: a request that must wait has no
    /// answer here.
    fn pick(&mut self, _: &GatewayRequest<'_>, _: &PoolSnapshot, _: u64) -> Option<usize> {
        None
    }

    fn admit(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Admission {
        let info = RequestInfo {
            path: "/v1/completions",
            request_id: req.request_id,
            objective: req.objective,
            fairness_id: req.fairness_id,
            ..RequestInfo::default()
        };
        let seed = self.seed ^ req.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.report_ended(now_ms);
        match self.picker.decide_or_queue(&info, Some(req.body), PoolView::Fresh(pool), now_ms, seed) {
            FcAdmission::Decided { outcome, lease } => {
                let admission = admission_of(&outcome, pool);
                if matches!(admission, Admission::Route(_)) {
                    self.routed(req.id, &outcome, lease);
                } else if let Some(l) = lease {
                    self.picker.finished(l, now_ms);
                }
                admission
            }
            FcAdmission::Queued(ticket) => {
                let held = Held {
                    id: req.id,
                    request_id: req.request_id.to_string(),
                    objective: req.objective.map(str::to_string),
                    fairness_id: req.fairness_id.map(str::to_string),
                    body: req.body.to_vec(),
                };
                self.waiting.held.insert(ticket, held);
                Admission::Hold
            }
        }
    }

    fn poll(&mut self, pool: &PoolSnapshot, now_ms: u64, out: &mut Vec<Release>) {
        // The core adds what it dispatches to the snapshot it is given, for its next gate reading within
        // this poll; the simulator counts the routes itself, on its own pool.
        self.report_ended(now_ms);
        let mut overlay = pool.clone();
        let polled = self.picker.poll(Some(&mut overlay), false, now_ms, &mut self.waiting);
        for s in polled.settled {
            let Some(held) = self.waiting.held.remove(&s.ticket) else { continue };
            let release = match admission_of(&s.outcome, pool) {
                Admission::Route(endpoint) => {
                    self.routed(held.id, &s.outcome, s.lease);
                    Release::Route { id: held.id, endpoint }
                }
                other => {
                    if let Some(l) = s.lease {
                        self.picker.finished(l, now_ms);
                    }
                    let status = if let Admission::Reject(status) = other { status } else { 503 };
                    Release::Reject { id: held.id, status }
                }
            };
            out.push(release);
        }
        for r in polled.revoked {
            if let Some(&id) = self.leased.get(&r.lease) {
                out.push(Release::Abort { id, status: r.reply.status });
            }
        }
    }

    fn on_finish(&mut self, _endpoint: usize, id: u64) {
        if let Some(l) = self.lease_of.remove(&id) {
            self.leased.remove(&l);
            self.ended.push(l);
        }
    }

    fn take_routed_prompt_tokens(&mut self, id: u64) -> Option<u64> {
        self.prompt_tokens.remove(&id)
    }

    /// Waiting requests, and ended leases not yet reported (so the loop polls at the finish).
    fn holding(&self) -> usize {
        self.waiting.held.len() + self.ended.len()
    }

    fn tick_interval_us(&self) -> Option<u64> {
        Some(TICK_US)
    }
}

/// The default scheduling configuration every mode schedules with.
pub const SCHEDULING: &str = OURS_CONFIG;

/// A picker that is never told the request's objective: every request has priority 0, so none is shed.
struct Unprioritised {
    inner: Picker,
}

impl Policy for Unprioritised {
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Option<usize> {
        self.inner.pick(&GatewayRequest { objective: None, ..*req }, pool, now_ms)
    }

    fn admit(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Admission {
        self.inner.admit(&GatewayRequest { objective: None, ..*req }, pool, now_ms)
    }

    fn take_routed_prefix(&mut self) -> Option<Vec<u64>> {
        self.inner.take_routed_prefix()
    }

    fn take_routed_prompt_tokens(&mut self, id: u64) -> Option<u64> {
        self.inner.take_routed_prompt_tokens(id)
    }

    fn on_peer_routed(&mut self, endpoint: usize, hashes: &[u64], pool: &PoolSnapshot) {
        self.inner.on_peer_routed(endpoint, hashes, pool);
    }
}

/// What "finished within the SLO" means for goodput.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slo {
    /// Time to first token, from the client's send (gateway queueing included).
    pub ttft_ms: f64,
    /// Mean time per output token after the first.
    pub tpot_ms: f64,
}

impl Default for Slo {
    /// TTFT ≤ 2 s and TPOT ≤ 100 ms: an interactive answer that starts within two seconds and streams
    /// faster than people read.
    fn default() -> Slo {
        Slo { ttft_ms: 2000.0, tpot_ms: 100.0 }
    }
}

impl Slo {
    pub fn met(&self, r: &RequestRecord) -> bool {
        let (Some(ttft), Some(_)) = (r.ttft_ms(), r.finish_us) else { return false };
        ttft <= self.ttft_ms && r.tpot_ms().is_none_or(|t| t <= self.tpot_ms)
    }
}

/// One band's outcome in one cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BandSummary {
    pub requests: usize,
    pub completed: usize,
    /// Completed within the SLO.
    pub good: usize,
    /// Answered by the gateway: 429 (shed, queue full, evicted) and 503 (queue time-to-live).
    pub rejected_429: usize,
    pub rejected_503: usize,
    pub rejected_other: usize,
    /// Held in the gateway's queue at some point.
    pub queued: usize,
    /// Ended by the gateway after it was routed (in-flight eviction; also counted in the rejections).
    pub evicted: usize,
    pub p50_ttft_ms: f64,
    pub p99_ttft_ms: f64,
    /// Rejected while a request of a lower band was waiting in the gateway's queue.
    pub rejected_over_lower: usize,
}

impl BandSummary {
    pub fn rejected(&self) -> usize {
        self.rejected_429 + self.rejected_503 + self.rejected_other
    }
}

/// One (workload, load, mode) cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverloadSummary {
    pub workload: String,
    /// Offered load as a multiple of the pool's capacity.
    pub load: f64,
    pub qps: f64,
    pub mode: String,
    pub requests: usize,
    /// Requests completed within the SLO per second of the measured window.
    pub goodput_rps: f64,
    /// The same as a share of the measured requests.
    pub goodput_share: f64,
    pub bands: [BandSummary; 3],
    /// p99 TTFT of the standard band per tenant (index as [`TENANTS`]); NaN when a tenant has none.
    pub standard_p99_by_tenant: [f64; 4],
    /// Output tokens delivered per second within the measured window.
    pub output_tokens_per_s: f64,
}

/// Which cell a run is.
#[derive(Clone, Copy, Debug)]
pub struct Label<'a> {
    pub workload: &'a str,
    pub load: f64,
    pub qps: f64,
    pub mode: &'a str,
}

/// Measures one run of `trace` (the trace the run replayed, classified): requests arriving before
/// `warmup_us` are simulated, not measured.
pub fn summarize(
    label: Label<'_>,
    trace: &[Arrival],
    run: &RunResult,
    warmup_us: u64,
    slo: Slo,
) -> OverloadSummary {
    let Label { workload, load, qps, mode } = label;
    let end = trace.last().map_or(0, |a| a.at_us);
    let window_s = end.saturating_sub(warmup_us) as f64 / 1e6;
    let measured = |r: &RequestRecord| r.arrival_us >= warmup_us;
    let class_of = |i: usize| trace.get(i).and_then(|a| a.class);
    let waiting = Timeline::new(trace, &run.records);
    let mut bands: [BandSummary; 3] = Default::default();
    let mut ttfts: [Vec<f64>; 3] = Default::default();
    let mut tenant_ttfts: [Vec<f64>; 4] = Default::default();
    let mut good = 0usize;
    let mut requests = 0usize;
    for (i, r) in run.records.iter().enumerate() {
        if !measured(r) {
            continue;
        }
        requests += 1;
        let Some(class) = class_of(i) else { continue };
        let Some(b) = bands.get_mut(class.band.index()) else { continue };
        b.requests += 1;
        if r.finish_us.is_some() {
            b.completed += 1;
        }
        if slo.met(r) {
            b.good += 1;
            good += 1;
        }
        if r.queued_us.is_some() {
            b.queued += 1;
        }
        if r.endpoint.is_some() && r.rejected_us.is_some() {
            b.evicted += 1;
        }
        match r.reject_status {
            Some(429) => b.rejected_429 += 1,
            Some(503) => b.rejected_503 += 1,
            Some(_) => b.rejected_other += 1,
            None => {}
        }
        if let Some(t) = r.rejected_us {
            if waiting.lower_band_waiting(class.band, t) {
                b.rejected_over_lower += 1;
            }
        }
        if let Some(ttft) = r.ttft_ms() {
            if let Some(v) = ttfts.get_mut(class.band.index()) {
                v.push(ttft);
            }
            if class.band == Band::Standard {
                if let Some(v) = tenant_ttfts.get_mut(usize::from(class.tenant)) {
                    v.push(ttft);
                }
            }
        }
    }
    for (b, v) in bands.iter_mut().zip(&ttfts) {
        b.p50_ttft_ms = quantile(v, 0.5);
        b.p99_ttft_ms = quantile(v, 0.99);
    }
    let mut standard_p99_by_tenant = [f64::NAN; 4];
    for (slot, v) in standard_p99_by_tenant.iter_mut().zip(&tenant_ttfts) {
        *slot = quantile(v, 0.99);
    }
    let in_window = |t: Option<u64>| t.is_some_and(|t| t >= warmup_us && t <= end);
    let delivered: u64 =
        run.records.iter().filter(|x| in_window(x.finish_us)).map(|x| u64::from(x.output_tokens)).sum();
    OverloadSummary {
        workload: workload.to_string(),
        load,
        qps,
        mode: mode.to_string(),
        requests,
        goodput_rps: if window_s > 0.0 { good as f64 / window_s } else { 0.0 },
        goodput_share: if requests > 0 { good as f64 / requests as f64 } else { 0.0 },
        bands,
        standard_p99_by_tenant,
        output_tokens_per_s: if window_s > 0.0 { delivered as f64 / window_s } else { 0.0 },
    }
}

/// When requests of each band waited in the gateway's queue, to answer "was a lower band waiting at
/// t?" in O(log n).
struct Timeline {
    /// Per band: waiting intervals `[queued, left)` sorted by start, with the running maximum of
    /// their ends.
    bands: [Vec<(u64, u64)>; 3],
}

impl Timeline {
    fn new(trace: &[Arrival], records: &[RequestRecord]) -> Timeline {
        let mut bands: [Vec<(u64, u64)>; 3] = Default::default();
        for (a, r) in trace.iter().zip(records) {
            let (Some(class), Some(queued)) = (a.class, r.queued_us) else { continue };
            // It left the queue when it was dispatched or answered.
            let left = r.dispatched_us.or(r.rejected_us).unwrap_or(u64::MAX);
            if let Some(v) = bands.get_mut(class.band.index()) {
                v.push((queued, left));
            }
        }
        for v in bands.iter_mut() {
            v.sort_unstable();
            let mut max_end = 0u64;
            for iv in v.iter_mut() {
                max_end = max_end.max(iv.1);
                iv.1 = max_end;
            }
        }
        Timeline { bands }
    }

    /// Whether a request of a band below `band` was waiting at `t` (queued at or before `t`, not yet
    /// gone).
    fn lower_band_waiting(&self, band: Band, t: u64) -> bool {
        Band::ALL.iter().filter(|b| b.index() > band.index()).any(|b| {
            let Some(v) = self.bands.get(b.index()) else { return false };
            let n = v.partition_point(|&(start, _)| start <= t);
            n > 0 && v.get(n - 1).is_some_and(|&(_, max_end)| max_end > t)
        })
    }
}

/// The workloads of the overload suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// ShareGPT-like lengths, Poisson arrivals at the load.
    Steady,
    /// The same lengths, the suite's bursts (each 5 s: 1 s at 3× the mean rate, 4 s at 0.5×).
    Bursty,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Steady, Shape::Bursty];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Steady => "steady",
            Shape::Bursty => "bursty",
        }
    }

    pub fn parse(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|m| m.name() == s)
    }

    fn kind(self) -> WorkloadKind {
        match self {
            Shape::Steady => WorkloadKind::ShareGpt,
            Shape::Bursty => WorkloadKind::Bursty,
        }
    }
}

/// The pool's capacity on ShareGPT-like requests: 70 QPS per H100 / Llama-3.1-8B replica, the quality
/// suite's sharegpt knee, past which the pods' queues grow without bound (no admission control, 120 s of
/// arrivals on 4 replicas: p99 TTFT 8.8 s at 1.0×, 36 s at 1.2×, 63 s at 1.4×). Below it the batch
/// grows instead: output tokens delivered / offered are 0.98 at 50 QPS per replica and 0.90 at 58, with
/// p90 TPOT 27 and 50 ms, within the SLO.
pub const CAPACITY_QPS_PER_REPLICA: f64 = 70.0;

/// The modes `--overload` compares by default: the two baselines (shedding also with the detector flow
/// control uses), flow control as llm-d's guide configures it but with the default detector, and tuned
/// on another seed (`docs/bench/flow-control.md`): `maxConcurrency` 1024 per pod (the engine's
/// `max_num_seqs`, llm-d's tuning rule) and a 2 s time-to-live (the TTFT budget); and the configuration
/// the targets are judged on: the same gated also on the pods' prefill backlog (our
/// `prefill-backlog-detector`, 4096 prompt tokens awaiting a first token per pod) with priority holdback
/// (sheddable dispatched below 90 % of either limit, standard below 95 %).
pub const DEFAULT_MODES: [&str; 6] = [
    "no-admission-control",
    "shedding",
    "shedding-c1024",
    "flow-control",
    "flow-control-c1024-t2",
    "flow-control-c1024-b4096-h90-t2",
];

/// What one overload run covers.
#[derive(Clone, Debug)]
pub struct Grid {
    pub shapes: Vec<Shape>,
    /// Offered load, multiples of the pool's capacity.
    pub loads: Vec<f64>,
    pub modes: Vec<Mode>,
    pub replicas: usize,
    /// Virtual seconds of arrivals per cell (the first 20 % of arrivals are warm-up).
    pub seconds: f64,
    pub seed: u64,
    pub mix: Mix,
    pub slo: Slo,
    pub threads: usize,
}

impl Default for Grid {
    fn default() -> Grid {
        Grid {
            shapes: Shape::ALL.to_vec(),
            loads: vec![0.8, 1.0, 1.2, 2.0],
            modes: DEFAULT_MODES.iter().filter_map(|m| Mode::parse(m)).collect(),
            replicas: 4,
            seconds: 120.0,
            seed: 1,
            mix: Mix::default(),
            slo: Slo::default(),
            threads: 2,
        }
    }
}

/// One load point's classified trace, shared by every mode.
struct Point {
    shape: Shape,
    load: f64,
    qps: f64,
    trace: Vec<Arrival>,
}

/// Runs every (shape, load, mode) cell of `grid`; summaries in grid order. `progress` gets one line per
/// finished cell.
pub fn run_grid(grid: &Grid, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<OverloadSummary>, String> {
    let capacity = CAPACITY_QPS_PER_REPLICA * grid.replicas as f64;
    let mut points = Vec::new();
    for &shape in &grid.shapes {
        for &load in &grid.loads {
            let qps = (load * capacity * 10.0).round() / 10.0;
            let requests = ((qps * grid.seconds) as usize).max(100);
            let spec = TraceSpec {
                kind: shape.kind(),
                qps,
                requests,
                seed: grid.seed,
                shared_prefix: SharedPrefixShape::scaled(
                    SimConfig::h100(grid.replicas).cluster_kv_tokens(),
                    0.7,
                ),
            };
            let mut trace = workload::generate(&spec);
            classify(&mut trace, grid.mix, grid.seed);
            points.push(Point { shape, load, qps, trace });
        }
    }
    let jobs: Vec<(usize, Mode)> =
        (0..points.len()).flat_map(|p| grid.modes.iter().map(move |&m| (p, m))).collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let failure = Mutex::new(None::<String>);
    std::thread::scope(|s| {
        for _ in 0..grid.threads.max(1) {
            s.spawn(|| {
                while let Some(&(p, mode)) = jobs.get(next.fetch_add(1, AtomicOrdering::Relaxed)) {
                    let Some(point) = points.get(p) else { break };
                    let started = Instant::now();
                    let cfg = SimConfig::h100(grid.replicas);
                    let outcome = mode
                        .build(SCHEDULING, grid.seed)
                        .and_then(|mut policy| sim::run(&point.trace, policy.as_mut(), &cfg).map_err(|e| e.to_string()));
                    match outcome {
                        Ok(run) => {
                            let warmup = point.trace.get(point.trace.len() / 5).map_or(0, |a| a.at_us);
                            let label = Label {
                                workload: point.shape.name(),
                                load: point.load,
                                qps: point.qps,
                                mode: &mode.name(),
                            };
                            let s = summarize(
                                label,
                                &point.trace,
                                &run,
                                warmup,
                                grid.slo,
                            );
                            let [c, st, sh] = &s.bands;
                            progress(&format!(
                                "  {:<7} {:>4.1}x {:>6.1} QPS  {:<21} goodput {:>6.1}/s  p99 TTFT c/s/s {:>8} {:>8} {:>8}  rejected {} {} {}  ({:.1} s)",
                                point.shape.name(),
                                point.load,
                                point.qps,
                                mode.name(),
                                s.goodput_rps,
                                crate::report::ms(c.p99_ttft_ms),
                                crate::report::ms(st.p99_ttft_ms),
                                crate::report::ms(sh.p99_ttft_ms),
                                c.rejected(),
                                st.rejected(),
                                sh.rejected(),
                                started.elapsed().as_secs_f64()
                            ));
                            if let Ok(mut r) = results.lock() {
                                r.push((p, mode, s));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                *f = Some(format!("{} at {}x, {}: {e}", point.shape.name(), point.load, mode.name()));
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
    let order = |m: Mode| grid.modes.iter().position(|&x| x == m).unwrap_or(usize::MAX);
    r.sort_by_key(|a| (a.0, order(a.1)));
    Ok(r.into_iter().map(|(_, _, s)| s).collect())
}

fn ms_or_dash(v: f64) -> String {
    if v.is_finite() {
        crate::report::ms(v)
    } else {
        String::from("—")
    }
}

/// The cells as a markdown table: goodput, p99 TTFT per band, rejections per band (429 / 503), and
/// rejections of a band while a lower band waited.
pub fn table(cells: &[OverloadSummary]) -> String {
    let mut out = String::from(
        "| workload | load | QPS | mode | goodput /s | goodput % | p99 TTFT critical | p99 TTFT standard | p99 TTFT sheddable | rejected critical | rejected standard | rejected sheddable | critical rejected while lower waits | any band rejected while lower waits | out tok/s |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        let [cr, st, sh] = &c.bands;
        let rej = |b: &BandSummary| match (b.rejected(), b.evicted) {
            (0, _) => String::from("0"),
            (n, 0) => format!("{n} ({} / {})", b.rejected_429, b.rejected_503),
            (n, e) => format!("{n} ({} / {}; {e} evicted)", b.rejected_429, b.rejected_503),
        };
        let over: usize = c.bands.iter().map(|b| b.rejected_over_lower).sum();
        out.push_str(&format!(
            "| {} | {:.1}× | {:.0} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            c.workload,
            c.load,
            c.qps,
            c.mode,
            c.goodput_rps,
            c.goodput_share * 100.0,
            ms_or_dash(cr.p99_ttft_ms),
            ms_or_dash(st.p99_ttft_ms),
            ms_or_dash(sh.p99_ttft_ms),
            rej(cr),
            rej(st),
            rej(sh),
            cr.rejected_over_lower,
            over,
            c.output_tokens_per_s,
        ));
    }
    out
}

/// Fairness: p99 TTFT of the standard band per tenant.
pub fn tenant_table(cells: &[OverloadSummary]) -> String {
    let mut out = String::from("| workload | load | mode |");
    for t in TENANTS {
        out.push_str(&format!(" {t} |"));
    }
    out.push_str("\n|---|---:|---|");
    for _ in TENANTS {
        out.push_str("---:|");
    }
    out.push('\n');
    for c in cells {
        out.push_str(&format!("| {} | {:.1}× | {} |", c.workload, c.load, c.mode));
        for v in c.standard_p99_by_tenant {
            out.push_str(&format!(" {} |", ms_or_dash(v)));
        }
        out.push('\n');
    }
    out
}

/// Every number of every cell, one row per (cell, band).
pub fn csv(cells: &[OverloadSummary]) -> String {
    let mut out = String::from(
        "workload,load,qps,mode,goodput_rps,goodput_share,output_tokens_per_s,band,requests,completed,good,queued,rejected_429,rejected_503,rejected_other,rejected_while_lower_waits,p50_ttft_ms,p99_ttft_ms,evicted\n",
    );
    for c in cells {
        for (band, b) in Band::ALL.iter().zip(&c.bands) {
            out.push_str(&format!(
                "{},{},{},{},{:.3},{:.4},{:.0},{},{},{},{},{},{},{},{},{},{:.1},{:.1},{}\n",
                c.workload,
                c.load,
                c.qps,
                c.mode,
                c.goodput_rps,
                c.goodput_share,
                c.output_tokens_per_s,
                band.objective(),
                b.requests,
                b.completed,
                b.good,
                b.queued,
                b.rejected_429,
                b.rejected_503,
                b.rejected_other,
                b.rejected_over_lower,
                b.p50_ttft_ms,
                b.p99_ttft_ms,
                b.evicted
            ));
        }
    }
    out
}

/// Per shape: goodput and the critical band's p99 TTFT against the load, one bar per mode
/// (`flow-control-<shape>-goodput.png`, `flow-control-<shape>-critical-ttft.png`).
pub fn charts(cells: &[OverloadSummary], grid: &Grid) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    // ASCII only: the charts' font has no "×" or "≤".
    let groups: Vec<String> = grid.loads.iter().map(|l| format!("{l}x capacity")).collect();
    for shape in &grid.shapes {
        let value = |mode: Mode, load: f64, f: &dyn Fn(&OverloadSummary) -> f64| {
            cells
                .iter()
                .find(|c| c.workload == shape.name() && c.mode == mode.name() && c.load == load)
                .map_or(f64::NAN, f)
        };
        let series = |f: &dyn Fn(&OverloadSummary) -> f64| -> Vec<BarSeries> {
            grid.modes
                .iter()
                .enumerate()
                .map(|(k, &m)| BarSeries {
                    name: m.name().to_string(),
                    values: grid.loads.iter().map(|&l| value(m, l, f)).collect(),
                    stacked: false,
                    // One colour per mode in both charts, though the second leaves one out.
                    colour: PALETTE.get(k % PALETTE.len().max(1)).copied(),
                })
                .collect()
        };
        let goodput = series(&|c: &OverloadSummary| c.goodput_rps);
        let title = format!(
            "{}: goodput (TTFT <= {} s, TPOT <= {} ms), {} replicas",
            shape.name(),
            grid.slo.ttft_ms / 1000.0,
            grid.slo.tpot_ms,
            grid.replicas
        );
        out.push((
            format!("flow-control-{}-goodput.png", shape.name()),
            bar_chart(&title, "offered load", "requests / s within the SLO", &groups, &goodput)?,
        ));
        // No admission control's minutes would flatten every other bar: it is in the tables.
        let critical: Vec<BarSeries> = series(&|c: &OverloadSummary| c.bands[0].p99_ttft_ms / 1000.0)
            .into_iter()
            .filter(|s| Mode::parse(&s.name).is_none_or(|m| m.admit != Admit::None))
            .collect();
        let title = format!(
            "{}: p99 TTFT of the critical band, {} replicas (no admission control left out)",
            shape.name(),
            grid.replicas
        );
        out.push((
            format!("flow-control-{}-critical-ttft.png", shape.name()),
            bar_chart(&title, "offered load", "p99 TTFT (s)", &groups, &critical)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: usize) -> Vec<Arrival> {
        let spec = TraceSpec {
            kind: WorkloadKind::ShareGpt,
            qps: 50.0,
            requests: n,
            seed: 3,
            shared_prefix: SharedPrefixShape::scaled(1_000_000, 0.7),
        };
        workload::generate(&spec)
    }

    #[test]
    fn classes_follow_the_mix_reproducibly() {
        let mut a = trace(20_000);
        let mut b = a.clone();
        classify(&mut a, Mix::default(), 9);
        classify(&mut b, Mix::default(), 9);
        assert_eq!(a, b);
        let mut c = a.clone();
        classify(&mut c, Mix::default(), 10);
        assert_ne!(a, c);
        let n = a.len() as f64;
        let share = |f: &dyn Fn(&Class) -> bool| {
            a.iter().filter(|x| x.class.as_ref().is_some_and(f)).count() as f64 / n
        };
        assert!((share(&|c| c.band == Band::Critical) - 0.2).abs() < 0.015);
        assert!((share(&|c| c.band == Band::Standard) - 0.5).abs() < 0.015);
        assert!((share(&|c| c.band == Band::Sheddable) - 0.3).abs() < 0.015);
        assert!((share(&|c| c.tenant == NOISY) - 0.4).abs() < 0.015);
        assert_eq!(share(&|c| c.tenant == NOISY && c.band == Band::Critical), 0.0);
        for t in 0..NOISY {
            assert!((share(&|c| c.tenant == t) - 0.2).abs() < 0.015, "tenant {t}");
        }
    }

    #[test]
    fn flow_control_holds_requests_in_priority_order_and_each_ends_once() {
        let mut t = trace(3000);
        for a in t.iter_mut() {
            a.at_us = a.at_us * 5 / 14; // 140 QPS on one replica: twice its capacity.
        }
        classify(&mut t, Mix::default(), 1);
        let mode = Mode::parse("flow-control-c256").unwrap();
        let mut fc = mode.build(SCHEDULING, 1).unwrap();
        let r = sim::run(&t, fc.as_mut(), &SimConfig::h100(1)).unwrap();
        assert_eq!(fc.holding(), 0);
        for x in &r.records {
            assert_ne!(x.finish_us.is_some(), x.rejected_us.is_some(), "each request ends exactly once");
            if let (Some(q), Some(d)) = (x.queued_us, x.dispatched_us) {
                assert!(d >= q && x.first_token_us.is_some_and(|f| f > d));
            }
        }
        let s = summarize(LABEL, &t, &r, 0, Slo::default());
        let [c, st, sh] = &s.bands;
        assert!(st.queued > 100 && sh.queued > 20, "{st:?} {sh:?}");
        assert_eq!(c.rejected(), 0);
        assert_eq!(c.rejected_over_lower, 0);
        assert!(sh.rejected() > 0);
        // Strict priority: the lower the band, the longer its requests waited in the gateway.
        let wait = |band: Band| {
            let w: Vec<f64> = t
                .iter()
                .zip(&r.records)
                .filter(|(a, _)| a.class.is_some_and(|c| c.band == band))
                .filter_map(|(_, x)| Some((x.dispatched_us? - x.queued_us?) as f64))
                .collect();
            w.iter().sum::<f64>() / w.len().max(1) as f64
        };
        assert!(wait(Band::Critical) < wait(Band::Standard) && wait(Band::Standard) < wait(Band::Sheddable));
    }

    #[test]
    fn in_flight_eviction_ends_routed_sheddable_requests_once() {
        let mut t = trace(3000);
        for a in t.iter_mut() {
            a.at_us = a.at_us * 5 / 14; // 140 QPS on one replica: twice its capacity.
        }
        classify(&mut t, Mix::default(), 1);
        let mut fc = Mode::parse("flow-control-c256-e").unwrap().build(SCHEDULING, 1).unwrap();
        let r = sim::run(&t, fc.as_mut(), &SimConfig::h100(1)).unwrap();
        assert_eq!(fc.holding(), 0);
        let s = summarize(LABEL, &t, &r, 0, Slo::default());
        let [c, st, sh] = &s.bands;
        assert!(sh.evicted > 0, "{sh:?}");
        assert_eq!(c.evicted + st.evicted, 0);
        for (a, x) in t.iter().zip(&r.records) {
            assert_ne!(x.finish_us.is_some(), x.rejected_us.is_some(), "each request ends exactly once");
            if x.endpoint.is_some() && x.rejected_us.is_some() {
                assert_eq!(a.class.map(|c| c.band), Some(Band::Sheddable));
                assert_eq!(x.reject_status, Some(429));
            }
        }
        // Without eviction nothing routed is ended.
        let mut plain = Mode::parse("flow-control-c256").unwrap().build(SCHEDULING, 1).unwrap();
        let r = sim::run(&t, plain.as_mut(), &SimConfig::h100(1)).unwrap();
        assert!(r.records.iter().all(|x| x.endpoint.is_none() || x.rejected_us.is_none()));
    }

    #[test]
    fn mode_names_round_trip() {
        for name in [
            "no-admission-control",
            "shedding",
            "shedding-c512",
            "flow-control",
            "flow-control-c768",
            "flow-control-c768-h80-t2",
            "flow-control-h50",
            "flow-control-c1024-t2-e",
            "flow-control-e",
            "flow-control-c1024-k400-t2",
            "shedding-c1024-k400",
            "flow-control-c1024-b4096-t2",
            "flow-control-c1024-b2048-h50-t2",
        ] {
            let m = Mode::parse(name).unwrap();
            assert_eq!(m.name(), name);
            m.build(SCHEDULING, 1).unwrap();
        }
        for bad in [
            "flow",
            "shedding-h80",
            "shedding-e",
            "flow-control-k400",
            "flow-control-c0",
            "flow-control-x3",
            "flow-control-h100",
            "flow-control-b4096",
            "flow-control-c1024-k400-b4096",
        ] {
            assert_eq!(Mode::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn objectives_are_added_to_the_scheduling_configuration() {
        let cfg = with_objectives(SCHEDULING).unwrap();
        let picker = scheduler_core::endpoint_picker::EndpointPicker::from_json(&cfg).unwrap();
        let o = &picker.config().objectives;
        assert_eq!(o.get("critical"), Some(100));
        assert_eq!(o.get("standard"), Some(0));
        assert_eq!(o.get("sheddable"), Some(-10));
    }

    const LABEL: Label<'static> = Label { workload: "w", load: 1.0, qps: 1.0, mode: "m" };

    fn record(arrival_ms: u64) -> RequestRecord {
        RequestRecord { arrival_us: arrival_ms * 1000, ..RequestRecord::default() }
    }

    #[test]
    fn goodput_bands_rejections_and_inversions_are_counted() {
        let class = |band, tenant| Some(Class { band, tenant });
        let mut t: Vec<Arrival> = trace(6);
        for (i, a) in t.iter_mut().enumerate() {
            a.at_us = i as u64 * 1_000_000;
        }
        t[0].class = class(Band::Critical, 0);
        t[1].class = class(Band::Sheddable, 3);
        t[2].class = class(Band::Critical, 1);
        t[3].class = class(Band::Standard, 2);
        t[4].class = class(Band::Standard, 3);
        t[5].class = class(Band::Critical, 0);
        let mut r: Vec<RequestRecord> = (0..6).map(|i| record(i * 1000)).collect();
        // 0: critical, served in 100 ms, 20 tokens at 10 ms: within the SLO.
        r[0].first_token_us = Some(100_000);
        r[0].finish_us = Some(290_000);
        r[0].output_tokens = 20;
        // 1: sheddable, queued at 1 s, still waiting until 3.5 s, then 503.
        r[1].queued_us = Some(1_000_000);
        r[1].rejected_us = Some(3_500_000);
        r[1].reject_status = Some(503);
        // 2: critical, rejected 429 at 2.5 s while 1 waits: an inversion.
        r[2].rejected_us = Some(2_500_000);
        r[2].reject_status = Some(429);
        // 3: standard, queued, dispatched at 3.2 s, first token at 3.4 s (TTFT 400 ms), slow tokens.
        r[3].queued_us = Some(3_000_000);
        r[3].dispatched_us = Some(3_200_000);
        r[3].first_token_us = Some(3_400_000);
        r[3].finish_us = Some(13_400_000);
        r[3].output_tokens = 11;
        // 4: standard, rejected at 4 s: nobody lower waits any more.
        r[4].rejected_us = Some(4_000_000);
        r[4].reject_status = Some(429);
        // 5: critical, TTFT 2.5 s: completed, not good.
        r[5].first_token_us = Some(7_500_000);
        r[5].finish_us = Some(7_600_000);
        r[5].output_tokens = 2;
        let run = RunResult { records: r, makespan_us: 13_400_000, per_replica: vec![3] };
        let s = summarize(LABEL, &t, &run, 0, Slo::default());
        let [c, st, sh] = &s.bands;
        assert_eq!((c.requests, c.completed, c.good, c.rejected_429), (3, 2, 1, 1));
        assert_eq!(c.rejected_over_lower, 1);
        assert_eq!((st.requests, st.completed, st.good, st.rejected_429, st.queued), (2, 1, 0, 1, 1));
        assert_eq!(st.rejected_over_lower, 0);
        assert_eq!((sh.requests, sh.rejected_503, sh.rejected_over_lower), (1, 1, 0));
        assert_eq!(s.goodput_share, 1.0 / 6.0);
        assert_eq!(s.goodput_rps, 1.0 / 5.0);
        assert_eq!(c.p99_ttft_ms, 2500.0);
        assert_eq!(st.p99_ttft_ms, 400.0);
        assert_eq!(s.standard_p99_by_tenant[2], 400.0);
        assert!(s.standard_p99_by_tenant[3].is_nan());
        // Warm-up excluded: only requests from 2 s on.
        let later = summarize(LABEL, &t, &run, 2_000_000, Slo::default());
        assert_eq!(later.requests, 4);
        assert_eq!(later.bands[0].requests, 2);
    }

    #[test]
    fn shedding_rejects_only_sheddable_requests_and_no_admission_rejects_none() {
        let mut t = trace(3000);
        for a in t.iter_mut() {
            a.at_us /= 8; // 400 QPS on one replica: far past saturation.
        }
        classify(&mut t, Mix::default(), 1);
        let cfg = SimConfig::h100(1);
        let mut shed = Mode::SHEDDING.build(SCHEDULING, 1).unwrap();
        let r = sim::run(&t, shed.as_mut(), &cfg).unwrap();
        let s = summarize(LABEL, &t, &r, 0, Slo::default());
        assert!(s.bands[2].rejected_429 > 100, "{:?}", s.bands[2]);
        assert_eq!(s.bands[0].rejected() + s.bands[1].rejected(), 0);
        let mut none = Mode::NO_ADMISSION.build(SCHEDULING, 1).unwrap();
        let r = sim::run(&t, none.as_mut(), &cfg).unwrap();
        assert!(r.records.iter().all(|x| x.finish_us.is_some() && x.rejected_us.is_none()));
    }
}
