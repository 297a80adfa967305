//! The shim's own Prometheus metrics (decisions, decision latency, sheds, fallbacks, scrapes, usage,
//! per-endpoint metrics age), kept in atomics and small maps and rendered as text on demand, followed by
//! the reference picker's names for the same quantities ([`reference`], docs/metrics.md).

pub mod reference;

use crate::pool::Pool;
pub use reference::{request_model, RequestRecord};
use reference::{EndpointLoad, Histogram, Requests, SCHEDULER_BUCKETS};
use scheduler_core::endpoint_picker::Outcome;
use scheduler_core::flow_control::{FlowController, FlowStats, QueueOutcome, WAIT_BUCKETS_S};
use scheduler_core::health::Unusable;
use scheduler_core::model::InFlight;
use scheduler_core::scheduling::pipeline::PrefixUsage;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the decision-latency histogram: a pick is micro- to milliseconds.
const LATENCY_BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

#[derive(Debug, Default)]
pub struct Metrics {
    /// (outcome, reason) → count.
    decisions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    shed: AtomicU64,
    fallbacks: Mutex<BTreeMap<&'static str, u64>>,
    scrapes_ok: AtomicU64,
    scrapes_failed: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    served_elsewhere: AtomicU64,
    /// Responses with status >= 500, per endpoint that answered.
    upstream_5xx: Mutex<BTreeMap<String, u64>>,
    ejections: AtomicU64,
    scrapes_missing_gauges: AtomicU64,
    readmissions: AtomicU64,
    first_byte_timeouts: AtomicU64,
    /// Each endpoint's health as the picker thread last reported it (`None`: usable).
    health: Mutex<Vec<(String, Option<Unusable>)>>,
    active_streams: AtomicI64,
    /// Gateway-side in-flight work per endpoint, as the picker thread last left it.
    in_flight: Mutex<Vec<(String, InFlight)>>,
    /// Per-model request series under the reference picker's names.
    requests: Mutex<Requests>,
    /// Decision latency with the reference picker's buckets (created on first use).
    scheduler: Mutex<Option<Histogram>>,
    /// Flow control's queues as the picker thread last left them (`None`: flow control is off).
    flow: Mutex<Option<FlowView>>,
    /// Requests in flight that flow control's eviction ended.
    evicted: AtomicU64,
    /// What the picker's prefix index holds, as the picker thread last reported it (`None`: no picker,
    /// as in `--collector-only`, or not reported yet).
    prefix: Mutex<Option<PrefixUsage>>,
}

/// What `/metrics` shows of flow control: its counts and each band's capacity.
#[derive(Clone, Debug, Default)]
struct FlowView {
    stats: FlowStats,
    /// `(priority, maxRequests, maxBytes)` of every band in `stats`.
    capacity: Vec<(i32, u64, u64)>,
    /// Global `(maxRequests, maxBytes)`; 0: none.
    global: (u64, u64),
}

impl Metrics {
    pub fn record_decision(&self, outcome: &Outcome, took: Duration) {
        let key = match outcome {
            Outcome::Route(_) => ("route", ""),
            Outcome::FailOpen { reason, .. } => {
                if let Ok(mut f) = self.fallbacks.lock() {
                    *f.entry(reason.as_str()).or_default() += 1;
                }
                ("fail_open", reason.as_str())
            }
            Outcome::Reply(r) => {
                if r.status == 429 {
                    self.shed.fetch_add(1, Ordering::Relaxed);
                }
                ("reply", r.reason)
            }
        };
        if let Ok(mut d) = self.decisions.lock() {
            *d.entry(key).or_default() += 1;
        }
        let secs = took.as_secs_f64();
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        if let Ok(mut h) = self.scheduler.lock() {
            h.get_or_insert_with(|| Histogram::new(SCHEDULER_BUCKETS)).observe(secs);
        }
    }

    /// A request that waited in flow control was decided at dispatch (or answered at its TTL): counted
    /// among decisions, not timed (the core decides it inside a poll of the whole queue).
    pub fn record_queued_decision(&self, outcome: &Outcome) {
        let key = match outcome {
            Outcome::Route(_) => ("route", ""),
            Outcome::FailOpen { reason, .. } => ("fail_open", reason.as_str()),
            Outcome::Reply(r) => {
                if r.status == 429 {
                    self.shed.fetch_add(1, Ordering::Relaxed);
                }
                ("reply", r.reason)
            }
        };
        if let Ok(mut d) = self.decisions.lock() {
            *d.entry(key).or_default() += 1;
        }
    }

    /// Flow control's in-flight eviction ended a request (its stream answered 429).
    pub fn record_eviction(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Flow control's state after the picker thread changed it.
    pub fn set_flow_control(&self, flow: Option<&FlowController>) {
        let view = flow.map(|f| {
            let stats = f.stats().clone();
            let cfg = f.config();
            let capacity = stats
                .bands
                .iter()
                .map(|b| {
                    let band = cfg.band(b.priority);
                    (b.priority, band.max_requests, band.max_bytes)
                })
                .collect();
            FlowView { stats, capacity, global: (cfg.max_requests, cfg.max_bytes) }
        });
        if let Ok(mut f) = self.flow.lock() {
            *f = view;
        }
    }

    /// The stream's request was decided: `model` is what the client asked for ([`request_model`]).
    pub fn request_decided(&self, record: &mut RequestRecord, model: &str, outcome: &Outcome) {
        if let Ok(mut r) = self.requests.lock() {
            r.decided(record, model, outcome);
        }
    }

    /// The stream's request was answered before a decision (see [`Metrics::record_early_reply`]).
    pub fn request_refused_early(&self, record: &mut RequestRecord) {
        if let Ok(mut r) = self.requests.lock() {
            r.refused_early(record);
        }
    }

    /// The model server answered the stream's request with `status`.
    pub fn request_answered(&self, record: &mut RequestRecord, status: u16) {
        if let Ok(mut r) = self.requests.lock() {
            r.answered(record, status);
        }
    }

    /// The usage the stream's response reported (also counted in `epp_shim_usage_tokens_total`).
    pub fn request_usage(&self, record: &mut RequestRecord, prompt: u64, completion: u64) {
        self.record_usage(prompt, completion);
        if let Ok(mut r) = self.requests.lock() {
            r.usage(record, prompt, completion);
        }
    }

    /// The stream's response ended ([`RequestRecord::observe`] said so).
    pub fn response_complete(&self, record: &mut RequestRecord) {
        if let Ok(mut r) = self.requests.lock() {
            r.complete(record);
        }
    }

    /// The stream ended, however: its error is counted once and it stops running.
    pub fn request_ended(&self, record: &mut RequestRecord) {
        if let Ok(mut r) = self.requests.lock() {
            r.ended(record);
        }
    }

    /// A request answered before any decision was asked for (a body over the limit).
    pub fn record_early_reply(&self, reason: &'static str) {
        if let Ok(mut d) = self.decisions.lock() {
            *d.entry(("reply", reason)).or_default() += 1;
        }
    }

    /// A scrape whose page lacked a core gauge (also counted as a failed scrape).
    pub fn record_missing_gauges(&self) {
        self.scrapes_missing_gauges.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_first_byte_timeouts(&self, n: u64) {
        self.first_byte_timeouts.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_readmission(&self) {
        self.readmissions.fetch_add(1, Ordering::Relaxed);
    }

    /// Replaces the per-endpoint health view (called by the picker thread).
    pub fn set_health(&self, entries: impl Iterator<Item = (String, Option<Unusable>)>) {
        if let Ok(mut h) = self.health.lock() {
            h.clear();
            h.extend(entries);
        }
    }

    /// `endpoint` answered with a status >= 500.
    pub fn record_upstream_5xx(&self, endpoint: &str) {
        if let Ok(mut m) = self.upstream_5xx.lock() {
            *m.entry(endpoint.to_string()).or_default() += 1;
        }
    }

    pub fn record_scrape(&self, ok: bool) {
        let c = if ok { &self.scrapes_ok } else { &self.scrapes_failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_usage(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens.fetch_add(completion, Ordering::Relaxed);
    }

    pub fn record_served_elsewhere(&self) {
        self.served_elsewhere.fetch_add(1, Ordering::Relaxed);
    }

    /// Replaces the in-flight view (called by the picker thread after every change).
    pub fn set_in_flight(&self, entries: impl Iterator<Item = (String, InFlight)>) {
        if let Ok(mut f) = self.in_flight.lock() {
            f.clear();
            f.extend(entries);
        }
    }

    /// Replaces the prefix index's sizes (the picker thread reports them once a second).
    pub fn set_prefix_index(&self, usage: PrefixUsage) {
        if let Ok(mut p) = self.prefix.lock() {
            *p = Some(usage);
        }
    }

    pub fn stream_started(&self) {
        self.active_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_ended(&self) {
        self.active_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition, including per-endpoint metrics age read from the pool at `now_ms`.
    pub fn render(&self, pool: &Pool, now_ms: u64) -> String {
        let mut out = String::with_capacity(4096);
        let _ = self.write(&mut out, pool, now_ms);
        out
    }

    fn write(&self, out: &mut String, pool: &Pool, now_ms: u64) -> std::fmt::Result {
        writeln!(out, "# HELP epp_shim_decisions_total Picking decisions by outcome and reason.")?;
        writeln!(out, "# TYPE epp_shim_decisions_total counter")?;
        if let Ok(d) = self.decisions.lock() {
            for ((outcome, reason), n) in d.iter() {
                writeln!(out, "epp_shim_decisions_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}")?;
            }
        }
        writeln!(out, "# HELP epp_shim_decision_duration_seconds Time the core took to decide one request.")?;
        writeln!(out, "# TYPE epp_shim_decision_duration_seconds histogram")?;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            let n = count.load(Ordering::Relaxed);
            writeln!(out, "epp_shim_decision_duration_seconds_bucket{{le=\"{bound}\"}} {n}")?;
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        writeln!(out, "epp_shim_decision_duration_seconds_bucket{{le=\"+Inf\"}} {count}")?;
        let sum = self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        writeln!(out, "epp_shim_decision_duration_seconds_sum {sum}")?;
        writeln!(out, "epp_shim_decision_duration_seconds_count {count}")?;
        writeln!(out, "# HELP epp_shim_shed_total Requests refused with 429 (saturation, shedding).")?;
        writeln!(out, "# TYPE epp_shim_shed_total counter")?;
        writeln!(out, "epp_shim_shed_total {}", self.shed.load(Ordering::Relaxed))?;
        writeln!(out, "# HELP epp_shim_fallback_total Requests decided without usable metrics, by reason.")?;
        writeln!(out, "# TYPE epp_shim_fallback_total counter")?;
        if let Ok(f) = self.fallbacks.lock() {
            for (reason, n) in f.iter() {
                writeln!(out, "epp_shim_fallback_total{{reason=\"{reason}\"}} {n}")?;
            }
        }
        writeln!(out, "# HELP epp_shim_scrapes_total Model-server /metrics scrapes by result.")?;
        writeln!(out, "# TYPE epp_shim_scrapes_total counter")?;
        writeln!(out, "epp_shim_scrapes_total{{result=\"ok\"}} {}", self.scrapes_ok.load(Ordering::Relaxed))?;
        writeln!(
            out,
            "epp_shim_scrapes_total{{result=\"error\"}} {}",
            self.scrapes_failed.load(Ordering::Relaxed)
        )?;
        writeln!(
            out,
            "# HELP epp_shim_scrapes_missing_gauges_total Scrapes whose page lacked a core gauge (failed scrapes)."
        )?;
        writeln!(out, "# TYPE epp_shim_scrapes_missing_gauges_total counter")?;
        let missing = self.scrapes_missing_gauges.load(Ordering::Relaxed);
        writeln!(out, "epp_shim_scrapes_missing_gauges_total {missing}")?;
        writeln!(out, "# HELP epp_shim_usage_tokens_total Tokens reported in responses' usage.")?;
        writeln!(out, "# TYPE epp_shim_usage_tokens_total counter")?;
        writeln!(
            out,
            "epp_shim_usage_tokens_total{{kind=\"prompt\"}} {}",
            self.prompt_tokens.load(Ordering::Relaxed)
        )?;
        let completion = self.completion_tokens.load(Ordering::Relaxed);
        writeln!(out, "epp_shim_usage_tokens_total{{kind=\"completion\"}} {completion}")?;
        writeln!(
            out,
            "# HELP epp_shim_served_elsewhere_total Responses served by another endpoint than picked."
        )?;
        writeln!(out, "# TYPE epp_shim_served_elsewhere_total counter")?;
        writeln!(out, "epp_shim_served_elsewhere_total {}", self.served_elsewhere.load(Ordering::Relaxed))?;
        writeln!(out, "# HELP epp_shim_upstream_5xx_total Responses with status >= 500, by endpoint.")?;
        writeln!(out, "# TYPE epp_shim_upstream_5xx_total counter")?;
        if let Ok(m) = self.upstream_5xx.lock() {
            for (endpoint, n) in m.iter() {
                writeln!(out, "epp_shim_upstream_5xx_total{{endpoint=\"{endpoint}\"}} {n}")?;
            }
        }
        writeln!(out, "# HELP epp_shim_endpoint_ejections_total Endpoints ejected for failed requests.")?;
        writeln!(out, "# TYPE epp_shim_endpoint_ejections_total counter")?;
        writeln!(out, "epp_shim_endpoint_ejections_total {}", self.ejections.load(Ordering::Relaxed))?;
        writeln!(
            out,
            "# HELP epp_shim_endpoint_readmissions_total Ejected endpoints readmitted by a trial."
        )?;
        writeln!(out, "# TYPE epp_shim_endpoint_readmissions_total counter")?;
        writeln!(out, "epp_shim_endpoint_readmissions_total {}", self.readmissions.load(Ordering::Relaxed))?;
        writeln!(
            out,
            "# HELP epp_shim_first_byte_timeouts_total Requests with no response headers within \
             health.firstByteTimeoutMs (counted as gateway failures of their endpoints)."
        )?;
        writeln!(out, "# TYPE epp_shim_first_byte_timeouts_total counter")?;
        writeln!(
            out,
            "epp_shim_first_byte_timeouts_total {}",
            self.first_byte_timeouts.load(Ordering::Relaxed)
        )?;
        writeln!(
            out,
            "# HELP epp_shim_endpoint_usable 1 if the endpoint gets traffic, else 0 with the reason as a label."
        )?;
        writeln!(out, "# TYPE epp_shim_endpoint_usable gauge")?;
        if let Ok(h) = self.health.lock() {
            for (endpoint, verdict) in h.iter() {
                match verdict {
                    None => {
                        writeln!(out, "epp_shim_endpoint_usable{{endpoint=\"{endpoint}\",reason=\"\"}} 1")?
                    }
                    Some(v) => writeln!(
                        out,
                        "epp_shim_endpoint_usable{{endpoint=\"{endpoint}\",reason=\"{}\"}} 0",
                        v.as_str()
                    )?,
                }
            }
        }
        writeln!(out, "# HELP epp_shim_active_streams Open ext_proc streams.")?;
        writeln!(out, "# TYPE epp_shim_active_streams gauge")?;
        writeln!(out, "epp_shim_active_streams {}", self.active_streams.load(Ordering::Relaxed))?;
        writeln!(
            out,
            "# HELP epp_shim_endpoint_in_flight_requests Requests routed to an endpoint and not finished."
        )?;
        writeln!(out, "# TYPE epp_shim_endpoint_in_flight_requests gauge")?;
        if let Ok(f) = self.in_flight.lock() {
            for (endpoint, n) in f.iter() {
                writeln!(
                    out,
                    "epp_shim_endpoint_in_flight_requests{{endpoint=\"{endpoint}\"}} {}",
                    n.requests
                )?;
            }
        }
        if let Some(u) = self.prefix.lock().ok().and_then(|p| *p) {
            write_prefix_index(out, &u)?;
        }
        self.write_reference(out, pool)?;
        let Some(published) = pool.latest() else { return Ok(()) };
        let snap = &published.snapshot;
        writeln!(out, "# HELP epp_shim_pool_endpoints Endpoints in the published snapshot.")?;
        writeln!(out, "# TYPE epp_shim_pool_endpoints gauge")?;
        writeln!(out, "epp_shim_pool_endpoints {}", snap.endpoints.len())?;
        writeln!(out, "# HELP epp_shim_snapshot_generation Generation of the published snapshot.")?;
        writeln!(out, "# TYPE epp_shim_snapshot_generation gauge")?;
        writeln!(out, "epp_shim_snapshot_generation {}", snap.generation)?;
        writeln!(
            out,
            "# HELP epp_shim_endpoint_metrics_age_seconds Age of each endpoint's last good scrape."
        )?;
        writeln!(out, "# TYPE epp_shim_endpoint_metrics_age_seconds gauge")?;
        for e in &snap.endpoints {
            if let Some(m) = &e.metrics {
                let age = m.age_ms(now_ms) as f64 / 1e3;
                writeln!(out, "epp_shim_endpoint_metrics_age_seconds{{endpoint=\"{}\"}} {age}", e.address())?;
            }
        }
        Ok(())
    }

    /// The reference picker's names for what this process measures ([`reference`]).
    fn write_reference(&self, out: &mut String, pool: &Pool) -> std::fmt::Result {
        if let Ok(r) = self.requests.lock() {
            r.write(out)?;
        }
        let scheduler = self.scheduler.lock().ok().and_then(|h| h.clone());
        reference::write_scheduler(out, &scheduler.unwrap_or_else(|| Histogram::new(SCHEDULER_BUCKETS)))?;
        let failed = self.scrapes_failed.load(Ordering::Relaxed);
        let missing = self.scrapes_missing_gauges.load(Ordering::Relaxed);
        reference::write_datalayer(out, failed.saturating_sub(missing), missing)?;
        reference::write_streams(out, self.active_streams.load(Ordering::Relaxed))?;
        let flow = self.flow.lock().ok().and_then(|f| f.clone());
        if let Some(flow) = &flow {
            write_flow_control(out, pool.name(), flow)?;
            let name = "llm_d_epp_flow_control_revocations_total";
            writeln!(out, "# HELP {name} In-flight requests flow control's eviction ended (answered 429).")?;
            writeln!(out, "# TYPE {name} counter")?;
            let n = self.evicted.load(Ordering::Relaxed);
            writeln!(out, "{name}{{outcome=\"confirmed\",inference_pool=\"{}\"}} {n}", pool.name())?;
        }
        let Some(published) = pool.latest() else { return Ok(()) };
        // Ready: what the picker last judged usable. Without a picker (collector only) there is no such
        // judgement, and every endpoint with metrics counts.
        let usable: Option<Vec<String>> = self.health.lock().ok().filter(|h| !h.is_empty()).map(|h| {
            h.iter().filter(|(_, verdict)| verdict.is_none()).map(|(address, _)| address.clone()).collect()
        });
        let mut ready = Vec::new();
        let mut queues = Vec::new();
        for e in &published.snapshot.endpoints {
            let Some(m) = &e.metrics else { continue };
            queues.push((e.address().to_string(), m.waiting));
            if usable.as_ref().is_none_or(|u| u.iter().any(|a| a == e.address())) {
                ready.push(EndpointLoad { kv_usage: m.kv_usage, waiting: m.waiting, running: m.running });
            }
        }
        reference::write_pool(out, pool.name(), &ready, &queues)
    }
}

/// The prefix index's size next to the most it can hold, as the filter's `epp_memory_prefix_*` gauges
/// show its own (docs/metrics.md): the index is what grows with new prompts until it reaches its cap.
fn write_prefix_index(out: &mut String, u: &PrefixUsage) -> std::fmt::Result {
    for (name, help, value) in [
        (
            "entries",
            "(block hash, endpoint) entries in the prefix index: the sum of its per-endpoint LRUs.",
            u.entries,
        ),
        (
            "capacity",
            "The most entries the prefix index can hold now: the sum of its endpoints' LRU capacities.",
            u.capacity,
        ),
        ("hashes", "Distinct block hashes in the prefix index.", u.hashes),
        ("endpoints", "Endpoints the prefix index keeps an LRU for.", u.endpoints),
    ] {
        writeln!(out, "# HELP epp_shim_prefix_index_{name} {help}")?;
        writeln!(out, "# TYPE epp_shim_prefix_index_{name} gauge")?;
        writeln!(out, "epp_shim_prefix_index_{name} {value}")?;
    }
    Ok(())
}

/// llm-d's flow-control metrics (`llm_d_epp_flow_control_*`, and the legacy `inference_extension_*` names
/// of those that have one), per priority band: the flows inside a band are not told apart, so
/// `fairness_id` and the model labels are left out (docs/metrics.md).
fn write_flow_control(out: &mut String, pool: &str, flow: &FlowView) -> std::fmt::Result {
    let bands = &flow.stats.bands;
    for (prefix, legacy) in [("llm_d_epp", false), ("inference_extension", true)] {
        let dep = if legacy { "[Deprecated: use llm_d_epp_flow_control_queue_size] " } else { "" };
        writeln!(
            out,
            "# HELP {prefix}_flow_control_queue_size {dep}Requests waiting in the flow-control queue."
        )?;
        writeln!(out, "# TYPE {prefix}_flow_control_queue_size gauge")?;
        for b in bands {
            writeln!(
                out,
                "{prefix}_flow_control_queue_size{{priority=\"{}\",inference_pool=\"{pool}\"}} {}",
                b.priority, b.queued
            )?;
        }
        let dep = if legacy { "[Deprecated: use llm_d_epp_flow_control_queue_bytes] " } else { "" };
        writeln!(
            out,
            "# HELP {prefix}_flow_control_queue_bytes {dep}Body bytes waiting in the flow-control queue."
        )?;
        writeln!(out, "# TYPE {prefix}_flow_control_queue_bytes gauge")?;
        for b in bands {
            writeln!(
                out,
                "{prefix}_flow_control_queue_bytes{{priority=\"{}\",inference_pool=\"{pool}\"}} {}",
                b.priority, b.bytes
            )?;
        }
        let name = format!("{prefix}_flow_control_request_queue_duration_seconds");
        let dep = if legacy {
            "[Deprecated: use llm_d_epp_flow_control_request_queue_duration_seconds] "
        } else {
            ""
        };
        writeln!(
            out,
            "# HELP {name} {dep}Time requests spent in flow control, from enqueue to their outcome."
        )?;
        writeln!(out, "# TYPE {name} histogram")?;
        for b in bands {
            for outcome in QueueOutcome::ALL {
                let Some(h) = b.wait(outcome).filter(|h| h.count() > 0) else { continue };
                let labels = format!(
                    "priority=\"{}\",outcome=\"{}\",inference_pool=\"{pool}\"",
                    b.priority,
                    outcome.as_str()
                );
                let mut cumulative = 0u64;
                for (bound, n) in WAIT_BUCKETS_S.iter().zip(h.counts.iter()) {
                    cumulative += n;
                    writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}")?;
                }
                writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count())?;
                writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_ms as f64 / 1e3)?;
                writeln!(out, "{name}_count{{{labels}}} {}", h.count())?;
            }
        }
    }
    writeln!(
        out,
        "# HELP llm_d_epp_flow_control_requests_total Requests that left flow control, by outcome."
    )?;
    writeln!(out, "# TYPE llm_d_epp_flow_control_requests_total counter")?;
    for b in bands {
        for outcome in QueueOutcome::ALL {
            let n = b.count(outcome);
            if n > 0 {
                writeln!(
                    out,
                    "llm_d_epp_flow_control_requests_total{{outcome=\"{}\",priority=\"{}\",inference_pool=\"{pool}\"}} {n}",
                    outcome.as_str(),
                    b.priority
                )?;
            }
        }
    }
    for (what, idx) in [("requests", 0usize), ("bytes", 1usize)] {
        let name = format!("llm_d_epp_flow_control_capacity_utilization_{what}");
        writeln!(out, "# HELP {name} Share of each priority band's {what} capacity in use (0-1).")?;
        writeln!(out, "# TYPE {name} gauge")?;
        for (b, &(priority, max_requests, max_bytes)) in bands.iter().zip(&flow.capacity) {
            let (used, cap) = if idx == 0 { (b.queued, max_requests) } else { (b.bytes, max_bytes) };
            if cap > 0 {
                let ratio = used as f64 / cap as f64;
                writeln!(out, "{name}{{priority=\"{priority}\",inference_pool=\"{pool}\"}} {ratio}")?;
            }
        }
        let (cap, used) =
            if idx == 0 { (flow.global.0, flow.stats.queued()) } else { (flow.global.1, flow.stats.bytes()) };
        if cap > 0 {
            let name = format!("llm_d_epp_flow_control_global_capacity_utilization_{what}");
            writeln!(out, "# HELP {name} Share of the global {what} capacity in use (0-1).")?;
            writeln!(out, "# TYPE {name} gauge")?;
            writeln!(out, "{name}{{inference_pool=\"{pool}\"}} {}", used as f64 / cap as f64)?;
        }
    }
    writeln!(
        out,
        "# HELP epp_shim_flow_control_evicted_in_flight_total Sent requests in-flight eviction ended."
    )?;
    writeln!(out, "# TYPE epp_shim_flow_control_evicted_in_flight_total counter")?;
    writeln!(out, "epp_shim_flow_control_evicted_in_flight_total {}", flow.stats.evicted_in_flight())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_index_gauges_appear_once_the_picker_reported_them() {
        let (metrics, pool) = (Metrics::default(), Pool::new("p"));
        assert!(!metrics.render(&pool, 0).contains("epp_shim_prefix_index"), "no picker, no gauges");
        metrics.set_prefix_index(PrefixUsage { entries: 7, capacity: 12, hashes: 5, endpoints: 2 });
        let text = metrics.render(&pool, 0);
        for line in [
            "# TYPE epp_shim_prefix_index_entries gauge",
            "epp_shim_prefix_index_entries 7\n",
            "epp_shim_prefix_index_capacity 12\n",
            "epp_shim_prefix_index_hashes 5\n",
            "epp_shim_prefix_index_endpoints 2\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
