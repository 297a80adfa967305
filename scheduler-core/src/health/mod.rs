//! Endpoint health: which endpoints of the pool a request may be sent to right now.
//!
//! Two kinds of evidence, both kept per endpoint address:
//! - **What the collector saw** (in the snapshot): scrapes failing in a row (refused, timed out, garbage,
//!   a core gauge missing) and the age of the last good metrics. An endpoint whose scrapes keep failing or
//!   whose metrics are older than `health.metricsMaxAgeMs` is not trusted: its load is unknown.
//! - **What the gateway saw** (reported by the request lifecycle): responses with status 502/503/504 (the
//!   proxy's own answer to a refused connection, a reset before the response or a timeout, or the server's)
//!   and other 5xx, in a row. Past `health.consecutiveGatewayFailure` / `health.consecutive5xx` the
//!   endpoint is ejected for `baseEjectionTimeMs` × 2^(ejections − 1), at most `maxEjectionTimeMs`; when the
//!   time is up one trial request may go there (half-open): a good answer readmits it, a failure ejects it
//!   again for longer. The back-off is remembered after a readmission and forgotten only after
//!   `maxEjectionTimeMs` without an ejection, so a flapping endpoint is ejected for longer each time
//!   instead of oscillating at the base period. No trial goes to an endpoint whose scrapes are failing, so a dead pod's back-off does
//!   not grow while it is down: once it is back, its first good scrape lets the trial through.
//!
//! **No first byte.** A request whose response headers have not come `health.firstByteTimeoutMs` after it
//! was sent counts as a gateway failure of its endpoint ([`HealthTracker::sweep`]), so a pod that accepts
//! connections and then answers nothing is ejected like one that refuses them, while its `/metrics` may
//! still answer. When the endpoint has answered nothing sent at or after that request's time either, one
//! such request ejects it at once: a hung pod may hold only one or two requests of a client that waits for
//! them, so a run of failures would never come. Streamed requests qualify at once: model servers (vLLM, SGLang) send a stream's headers
//! before generating, whatever their queue. A request that is not streamed is answered only when its
//! generation ends, so it qualifies only when the endpoint's metrics, scraped well after it was sent,
//! show nothing running or waiting (the server does not have it). The request itself is left alone (the
//! route's timeout ends it); what changes is where the next ones go.
//!
//! Never more than `health.maxEjectionPercent` of the pool is excluded (at least one endpoint may always
//! be): past that share the least certain exclusions are ignored. When no endpoint is usable at all, the
//! configuration's `failureMode` decides (the decision reports [`Unusable::AllUnhealthy`]).
//!
//! Names follow Envoy's outlier detection where they mean the same. The tracker is deterministic: time is
//! passed in, and its state changes only through the calls below.

#[cfg(test)]
mod tests;

pub use crate::config::health::HealthConfig;
use crate::model::{EndpointState, PoolSnapshot};
use alloc::string::String;
use alloc::vec::Vec;
use hashbrown::HashMap;

/// Why an endpoint gets no traffic now, most certain first (the order in which exclusions are kept when
/// the pool share caps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unusable {
    /// Its scrapes keep failing (refused, timed out, garbage, a core gauge missing).
    ScrapeFailing,
    /// The gateway's own requests to it failed in a row.
    Ejected,
    /// Its last good metrics are too old.
    StaleMetrics,
    /// No scrape of it has succeeded yet.
    NoMetrics,
    /// Every endpoint of the pool is unusable (reported for the decision, not for one endpoint).
    AllUnhealthy,
}

impl Unusable {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unusable::ScrapeFailing => "scrape_failing",
            Unusable::Ejected => "ejected",
            Unusable::StaleMetrics => "stale_metrics",
            Unusable::NoMetrics => "no_metrics",
            Unusable::AllUnhealthy => "all_unhealthy",
        }
    }

    pub const ALL: [Unusable; 5] = [
        Unusable::ScrapeFailing,
        Unusable::Ejected,
        Unusable::StaleMetrics,
        Unusable::NoMetrics,
        Unusable::AllUnhealthy,
    ];
}

/// What the gateway saw of one request it sent to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamResult {
    /// Response headers with a status below 500.
    Answered,
    /// 502, 503 or 504: the proxy could not reach the endpoint, it reset or timed out (or said so itself).
    GatewayFailure,
    /// Another status >= 500.
    ServerError,
}

impl UpstreamResult {
    pub fn of_status(status: u16) -> UpstreamResult {
        match status {
            502..=504 => UpstreamResult::GatewayFailure,
            500..=599 => UpstreamResult::ServerError,
            _ => UpstreamResult::Answered,
        }
    }
}

/// The gateway's record of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    consecutive_gateway: u32,
    consecutive_5xx: u32,
    /// Ejections in a row (for the back-off); forgotten `maxEjectionTimeMs` after the last readmission.
    pub ejections: u32,
    /// When a trial request last readmitted the endpoint.
    readmitted_at_ms: Option<u64>,
    /// Ejected until this time (ms), if ejected.
    pub ejected_until_ms: Option<u64>,
    /// When the ejection began.
    pub ejected_at_ms: u64,
    /// A trial request was sent at this time and has not been answered.
    probe_since_ms: Option<u64>,
}

/// A change worth counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthEvent {
    Ejected { address: String, for_ms: u64 },
    Readmitted { address: String },
}

/// A request sent to an endpoint whose response headers have not come.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Awaiting {
    address: String,
    since_ms: u64,
    streaming: bool,
}

/// Requests waited for at once, at most (a host that never reports headers cannot grow the table past it).
pub const MAX_AWAITING: usize = 1 << 16;

/// What a [`HealthTracker`] holds ([`HealthTracker::sizes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthSizes {
    pub records: usize,
    pub answered: usize,
    pub awaiting: usize,
    pub awaiting_cap: usize,
}

/// Per-endpoint health as one decision point knows it.
#[derive(Clone, Debug, Default)]
pub struct HealthTracker {
    config: HealthConfig,
    /// Default for `metrics_max_age_ms` (the gateway's `limits.snapshotMaxAgeMs`).
    metrics_max_age_ms: u64,
    records: HashMap<String, Record>,
    events: Vec<HealthEvent>,
    /// Requests sent and not yet answered, by the caller's ticket.
    awaiting: HashMap<u64, Awaiting>,
    /// Per endpoint, the latest send time of a request it answered (it was alive after then).
    answered_sent_at: HashMap<String, u64>,
}

/// The exclusions of one decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    /// Per endpoint index of the snapshot: why it is excluded, if it is.
    pub excluded: Vec<Option<Unusable>>,
    /// How many are excluded.
    pub count: usize,
    /// Every endpoint is unusable (nothing is excluded then: `failureMode` decides).
    pub all_unusable: bool,
}

impl Exclusions {
    pub fn is_excluded(&self, index: usize) -> bool {
        self.excluded.get(index).is_some_and(Option::is_some)
    }
}

impl HealthTracker {
    pub fn new(config: HealthConfig, snapshot_max_age_ms: u64) -> HealthTracker {
        let metrics_max_age_ms = config.metrics_max_age_ms.unwrap_or(snapshot_max_age_ms);
        HealthTracker {
            config,
            metrics_max_age_ms,
            records: HashMap::new(),
            events: Vec::new(),
            awaiting: HashMap::new(),
            answered_sent_at: HashMap::new(),
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Why `e` gets no traffic at `now_ms`, from the collector's evidence and the gateway's record.
    pub fn verdict(&self, e: &EndpointState, now_ms: u64) -> Option<Unusable> {
        if e.consecutive_scrape_failures >= self.config.consecutive_scrape_failures {
            return Some(Unusable::ScrapeFailing);
        }
        if let Some(r) = self.records.get(e.address()) {
            if let Some(until) = r.ejected_until_ms {
                let probing =
                    r.probe_since_ms.is_some_and(|t| now_ms.saturating_sub(t) < self.probe_timeout());
                if now_ms < until || probing {
                    return Some(Unusable::Ejected);
                }
            }
        }
        match &e.metrics {
            None => Some(Unusable::NoMetrics),
            Some(m) if m.age_ms(now_ms) > self.metrics_max_age_ms => Some(Unusable::StaleMetrics),
            Some(_) => None,
        }
    }

    /// The endpoints of `pool` a decision at `now_ms` must leave out.
    pub fn exclusions(&self, pool: &PoolSnapshot, now_ms: u64) -> Exclusions {
        // The usual case, a healthy pool, allocates nothing.
        if pool.endpoints.iter().all(|e| self.verdict(e, now_ms).is_none()) {
            return Exclusions::default();
        }
        let verdicts: Vec<Option<Unusable>> =
            pool.endpoints.iter().map(|e| self.verdict(e, now_ms)).collect();
        let count = verdicts.iter().filter(|v| v.is_some()).count();
        if count == pool.endpoints.len() {
            return Exclusions { excluded: Vec::new(), count: 0, all_unusable: true };
        }
        let n = pool.endpoints.len();
        let cap = (n.saturating_mul(self.config.max_ejection_percent as usize) / 100).max(1);
        if count <= cap {
            return Exclusions { excluded: verdicts, count, all_unusable: false };
        }
        // Keep the most certain exclusions (then the lowest addresses, for a stable choice).
        let mut order: Vec<usize> =
            (0..n).filter(|&i| verdicts.get(i).is_some_and(Option::is_some)).collect();
        order.sort_by_key(|&i| {
            (verdicts.get(i).copied().flatten(), pool.endpoints.get(i).map(EndpointState::address))
        });
        let mut excluded: Vec<Option<Unusable>> = alloc::vec![None; n];
        for &i in order.iter().take(cap) {
            if let (Some(slot), Some(v)) = (excluded.get_mut(i), verdicts.get(i)) {
                *slot = *v;
            }
        }
        Exclusions { excluded, count: cap, all_unusable: false }
    }

    /// A request was routed to `address` (a trial, if it was ejected and its time is up).
    pub fn routed(&mut self, address: &str, now_ms: u64) {
        if let Some(r) = self.records.get_mut(address) {
            if r.ejected_until_ms.is_some_and(|until| now_ms >= until) && r.probe_since_ms.is_none() {
                r.probe_since_ms = Some(now_ms);
            }
        }
    }

    /// What the gateway saw of a request to `address`.
    pub fn record(&mut self, address: &str, result: UpstreamResult, now_ms: u64) {
        let config = self.config;
        let r = match self.records.get_mut(address) {
            Some(r) => r,
            None if result == UpstreamResult::Answered => return,
            None => self.records.entry(String::from(address)).or_default(),
        };
        match result {
            UpstreamResult::Answered => {
                let was_ejected = r.ejected_until_ms.is_some();
                let remembered = r.ejections > 0
                    && (was_ejected
                        || r.readmitted_at_ms
                            .is_some_and(|t| now_ms.saturating_sub(t) < config.max_ejection_time_ms));
                if remembered {
                    // Readmitted, keeping the back-off for a while.
                    let readmitted_at_ms = if was_ejected { Some(now_ms) } else { r.readmitted_at_ms };
                    *r = Record { ejections: r.ejections, readmitted_at_ms, ..Record::default() };
                } else {
                    self.records.remove(address);
                }
                if was_ejected {
                    self.events.push(HealthEvent::Readmitted { address: String::from(address) });
                }
                return;
            }
            UpstreamResult::GatewayFailure => {
                r.consecutive_gateway = r.consecutive_gateway.saturating_add(1);
                r.consecutive_5xx = r.consecutive_5xx.saturating_add(1);
            }
            UpstreamResult::ServerError => {
                r.consecutive_gateway = 0;
                r.consecutive_5xx = r.consecutive_5xx.saturating_add(1);
            }
        }
        self.trip_if_due(address, false, now_ms);
    }

    /// Ejects `address` when its failures in a row, a failed trial or `force` say so (and it is not
    /// ejected already).
    fn trip_if_due(&mut self, address: &str, force: bool, now_ms: u64) {
        let config = self.config;
        let Some(r) = self.records.get_mut(address) else { return };
        let trial_failed = r.probe_since_ms.is_some();
        let trips = force
            || r.consecutive_gateway >= config.consecutive_gateway_failure
            || r.consecutive_5xx >= config.consecutive_5xx;
        let currently_ejected = r.ejected_until_ms.is_some_and(|until| now_ms < until);
        if (trips || trial_failed) && !currently_ejected {
            if r.readmitted_at_ms.is_some_and(|t| now_ms.saturating_sub(t) >= config.max_ejection_time_ms) {
                r.ejections = 0;
            }
            r.ejections = r.ejections.saturating_add(1);
            let shift = r.ejections.saturating_sub(1).min(20);
            let for_ms =
                config.base_ejection_time_ms.saturating_mul(1u64 << shift).min(config.max_ejection_time_ms);
            r.ejected_until_ms = Some(now_ms.saturating_add(for_ms));
            r.ejected_at_ms = now_ms;
            r.probe_since_ms = None;
            r.consecutive_gateway = 0;
            r.consecutive_5xx = 0;
            self.events.push(HealthEvent::Ejected { address: String::from(address), for_ms });
        }
    }

    /// Adopts another decision point's ejection of `address` (workers of one proxy share them), unless
    /// this one already knows a later one.
    pub fn adopt(&mut self, address: &str, ejected_at_ms: u64, ejected_until_ms: u64, ejections: u32) {
        let r = self.records.entry(String::from(address)).or_default();
        if r.ejected_until_ms.is_some_and(|u| u >= ejected_until_ms) {
            return;
        }
        r.ejected_until_ms = Some(ejected_until_ms);
        r.ejected_at_ms = ejected_at_ms;
        r.ejections = r.ejections.max(ejections);
        r.probe_since_ms = None;
    }

    /// The ejections this decision point knows (address, began, until, ejections in a row), to share.
    pub fn ejections(&self) -> impl Iterator<Item = (&str, u64, u64, u32)> + '_ {
        self.records
            .iter()
            .filter_map(|(a, r)| r.ejected_until_ms.map(|u| (a.as_str(), r.ejected_at_ms, u, r.ejections)))
    }

    /// Sizes of what the tracker keeps, for memory accounting: per-endpoint records and answer times
    /// (pruned to the pool on each new snapshot), and requests awaiting their first byte (at most
    /// [`MAX_AWAITING`]).
    pub fn sizes(&self) -> HealthSizes {
        HealthSizes {
            records: self.records.len(),
            answered: self.answered_sent_at.len(),
            awaiting: self.awaiting.len(),
            awaiting_cap: MAX_AWAITING,
        }
    }

    /// True when a good answer from `address` would change nothing (no failure or ejection on record):
    /// callers may skip recording it (and reading the clock for it).
    pub fn answer_is_news(&self, address: &str) -> bool {
        self.records.contains_key(address)
    }

    /// A request was sent to `address` at `now_ms`; `ticket` names it until [`HealthTracker::first_byte`]
    /// (unique among the caller's requests in flight).
    pub fn sent(&mut self, ticket: u64, address: &str, streaming: bool, now_ms: u64) {
        if self.awaiting.len() < MAX_AWAITING {
            self.awaiting
                .insert(ticket, Awaiting { address: String::from(address), since_ms: now_ms, streaming });
        }
    }

    /// The response headers of `ticket` came from the endpoint it was sent to (`alive`: with a status
    /// the server itself may have sent, below 500), or its stream ended (`alive` false): it is no longer
    /// waited for.
    pub fn first_byte(&mut self, ticket: u64, alive: bool) {
        if self.awaiting.is_empty() {
            return;
        }
        if let Some(a) = self.awaiting.remove(&ticket) {
            if alive {
                let t = self.answered_sent_at.entry(a.address).or_insert(a.since_ms);
                *t = (*t).max(a.since_ms);
            }
        }
    }

    /// Requests sent and not yet answered.
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
    }

    /// Counts every request past `health.firstByteTimeoutMs` without response headers as a gateway failure
    /// of its endpoint (see the module documentation for which qualify; `pool` holds the endpoints'
    /// metrics) and stops waiting for it. Call it periodically; returns how many were counted.
    pub fn sweep(&mut self, pool: Option<&PoolSnapshot>, now_ms: u64) -> usize {
        if self.awaiting.is_empty() {
            return 0;
        }
        let bound = self.config.first_byte_timeout_ms;
        let idle_since = |a: &Awaiting| {
            let metrics = pool.and_then(|p| p.find(&a.address)).and_then(|e| e.metrics.as_ref());
            metrics.is_some_and(|m| {
                m.updated_at_ms >= a.since_ms.saturating_add(bound / 2) && m.running == 0 && m.waiting == 0
            })
        };
        let late: Vec<(u64, String)> = self
            .awaiting
            .iter()
            .filter(|(_, a)| now_ms.saturating_sub(a.since_ms) >= bound && (a.streaming || idle_since(a)))
            .map(|(t, a)| (*t, a.address.clone()))
            .collect();
        for (ticket, address) in &late {
            let Some(a) = self.awaiting.remove(ticket) else { continue };
            self.record(address, UpstreamResult::GatewayFailure, now_ms);
            // Nothing sent since was answered either: the endpoint is not answering at all.
            let silent = self.answered_sent_at.get(address).is_none_or(|&t| t < a.since_ms);
            if silent {
                self.trip_if_due(address, true, now_ms);
            }
        }
        late.len()
    }

    /// Forgets endpoints that left the pool.
    pub fn retain(&mut self, pool: &PoolSnapshot) {
        if !self.records.is_empty() {
            self.records.retain(|a, _| pool.find(a).is_some());
        }
        if !self.answered_sent_at.is_empty() {
            self.answered_sent_at.retain(|a, _| pool.find(a).is_some());
        }
    }

    /// Takes the changes since the last call (for counters and logs).
    pub fn take_events(&mut self) -> Vec<HealthEvent> {
        core::mem::take(&mut self.events)
    }

    /// A trial request that got no answer for this long no longer holds the endpoint back.
    fn probe_timeout(&self) -> u64 {
        self.config.base_ejection_time_ms.max(self.metrics_max_age_ms)
    }
}
