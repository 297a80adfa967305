//! Flow control: under overload, requests wait in the gateway — ordered by priority, fair between
//! tenants, bounded in count, bytes and time — and go to the pool as capacity frees, instead of being
//! shed or piled into the model servers' own queues. The semantics are llm-d's (`pkg/epp/flowcontrol`).
//!
//! - A request's **band** is its priority (the InferenceObjective's); bands are served in strict
//!   priority order. Within a band, requests are grouped in **flows** by their fairness id
//!   (`x-llm-d-inference-fairness-id`, or `x-gateway-inference-fairness-id`; `default-flow` without
//!   one); the band's fairness policy picks a flow (global-strict: the best head request of every flow;
//!   round-robin: flows in turn) and the flow's ordering policy its request (FCFS, or EDF).
//! - **Dispatch** happens while the saturation detector reads below the band's ceiling (the usage
//!   limit policy; 1.0 by default). A blocked band stops the cycle: lower bands never overtake it.
//! - **Capacity**: global and per-band caps on queued requests and bytes; a request over them is
//!   refused at once (429, or 503 while the pool has no endpoints).
//! - **TTL**: a request still waiting after `defaultRequestTTL` is answered 429 (503 after
//!   `noEndpointRequestTTL` while the pool has no endpoints); a regime change restarts the budget.
//! - **In-flight eviction** (`enableEviction`): when a band is blocked, sheddable requests already
//!   sent (priority < 0, strictly below the blocked band) are ended with 429, lowest priority and most
//!   recently dispatched first, at most 2 at a time and not again until those ended and 500 ms passed.
//!
//! This type is pure: no clock (`now_ms` is passed in), no I/O, no panics; its memory is bounded by the
//! capacity limits (every waiting request is counted in them) and by the in-flight requests the caller
//! reports finished. The request body never comes here: the caller keeps it (the filter in the host's
//! buffer, the shim in its stream) and gives it back at dispatch time
//! ([`crate::endpoint_picker::WaitingRequests`]). [`crate::endpoint_picker::EndpointPicker`] drives this
//! type; products call the picker.

pub mod config;
pub mod stats;

#[cfg(test)]
mod tests;

pub use config::{BandConfig, Fairness, FlowControlConfig, Ordering, UsageLimit};
pub use stats::{BandStats, FlowStats, QueueOutcome, WaitHistogram, WAIT_BUCKETS_S};

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

/// Identifies one request held by flow control: waiting, or (with eviction on) in flight as a lease.
/// Unique within one [`FlowController`] for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What flow control needs to know of a request to queue it.
#[derive(Clone, Copy, Debug)]
pub struct QueueRequest<'a> {
    pub priority: i32,
    /// Fairness id; empty means [`config::DEFAULT_FLOW`].
    pub flow: &'a str,
    /// Body bytes (counted against `maxBytes`).
    pub bytes: u64,
}

/// The pool as the dispatch gate sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    /// The saturation detector's reading; `None`: no reading (metrics unusable), so nothing is held back
    /// (the gateway fails open or closed by its own policy at decision time).
    pub saturation: Option<f64>,
    /// The pool has no endpoints (the queue is a scale-from-zero waiting room).
    pub no_endpoints: bool,
}

/// The answer to [`FlowController::admit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Nothing waits ahead and there is room: decide now.
    Now,
    /// Wait; the ticket ends through [`FlowController::next`], [`FlowController::expire`] or
    /// [`FlowController::cancel`].
    Queued(Ticket),
    /// Refused at the door (capacity): 429, or 503 when `no_endpoints`.
    Rejected(QueueOutcome),
}

/// A waiting request flow control let go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub ticket: Ticket,
    pub priority: i32,
    pub outcome: QueueOutcome,
    pub waited_ms: u64,
}

/// Queued requests of the other decision points of the same gateway process (the Wasm filter's other
/// workers, from shared data), counted in capacity and strict priority: a band here does not dispatch
/// while a higher band waits there. Stale by the caller's publication interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerQueues {
    /// `(priority, queued requests, queued bytes)`.
    pub bands: Vec<(i32, u64, u64)>,
}

impl PeerQueues {
    fn totals(&self) -> (u64, u64) {
        self.bands.iter().fold((0, 0), |(n, b), &(_, ln, by)| (n.saturating_add(ln), b.saturating_add(by)))
    }

    fn band(&self, priority: i32) -> (u64, u64) {
        self.bands
            .iter()
            .filter(|(p, _, _)| *p == priority)
            .fold((0, 0), |(n, b), &(_, ln, by)| (n.saturating_add(ln), b.saturating_add(by)))
    }

    fn waits_above(&self, priority: i32) -> bool {
        self.bands.iter().any(|&(p, n, _)| p > priority && n > 0)
    }
}

#[derive(Clone, Debug)]
struct Waiting {
    priority: i32,
    flow: String,
    /// The flow's ordering key: (key, ticket).
    key: (u64, u64),
    bytes: u64,
    enqueued_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct Flow {
    /// (ordering key, ticket), best first.
    queue: BTreeSet<(u64, u64)>,
}

#[derive(Clone, Debug)]
struct Band {
    cfg: BandConfig,
    flows: BTreeMap<String, Flow>,
    len: u64,
    bytes: u64,
    /// Round-robin cursor: the flow served last.
    last_flow: Option<String>,
}

/// In-flight eviction's pacing (llm-d's reclamation controller, stop-and-wait).
#[derive(Clone, Debug, Default)]
struct Reclaim {
    /// Sheddable requests in flight: ticket → (priority, dispatched at).
    leases: BTreeMap<u64, (i32, u64)>,
    /// Evicted, not yet seen to end: (ticket, issued at).
    outstanding: Vec<(u64, u64)>,
    /// Ended evictions whose freed capacity may not show yet: until when.
    cooling: Vec<u64>,
    /// Evictions decided and not yet taken by the caller.
    revoked: Vec<(Ticket, i32)>,
}

/// llm-d's defaults for eviction pacing (not configurable there either).
const MAX_REVOCATIONS_PER_DECISION: usize = 2;
const EVICTION_CONFIRMATION_GRACE_MS: u64 = 500;
const EVICTION_CONFIRMATION_TIMEOUT_MS: u64 = 10_000;
/// Leases kept at most (a caller that never reports its requests finished cannot grow this forever).
const MAX_LEASES: usize = 65_536;

/// What a [`FlowController`] holds ([`FlowController::sizes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSizes {
    /// Requests waiting, and the most that can (the global cap, else the sum of the caps of the bands
    /// in use: bands exist per configured priority).
    pub waiting: usize,
    pub waiting_cap: u64,
    /// Fairness flows with requests waiting (a flow leaves with its last request: at most `waiting`).
    pub flows: usize,
    /// Sheddable requests in flight tracked for eviction, and the most kept.
    pub leases: usize,
    pub leases_cap: usize,
}

/// The queues of one decision point.
#[derive(Clone, Debug)]
pub struct FlowController {
    cfg: FlowControlConfig,
    /// By priority; iterated highest first.
    bands: BTreeMap<i32, Band>,
    waiting: hashbrown::HashMap<u64, Waiting>,
    next_ticket: u64,
    len: u64,
    bytes: u64,
    /// Whether the pool had no endpoints at the last look, and since when.
    empty_pool: (bool, u64),
    reclaim: Reclaim,
    peers: PeerQueues,
    stats: FlowStats,
    /// Scratch for the ceilings of one cycle.
    ceilings: Vec<f64>,
}

impl FlowController {
    pub fn new(cfg: FlowControlConfig) -> FlowController {
        let mut stats = FlowStats::default();
        for b in &cfg.bands {
            stats.band_mut(b.priority);
        }
        FlowController {
            cfg,
            bands: BTreeMap::new(),
            waiting: hashbrown::HashMap::new(),
            next_ticket: 0,
            len: 0,
            bytes: 0,
            empty_pool: (false, 0),
            reclaim: Reclaim::default(),
            peers: PeerQueues::default(),
            stats: FlowStats::default(),
            ceilings: Vec::new(),
        }
        .with_stats(stats)
    }

    fn with_stats(mut self, stats: FlowStats) -> FlowController {
        self.stats = stats;
        self
    }

    pub fn config(&self) -> &FlowControlConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &FlowStats {
        &self.stats
    }

    /// Requests waiting now.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sizes of what this controller keeps, for memory accounting.
    pub fn sizes(&self) -> FlowSizes {
        let waiting_cap = if self.cfg.max_requests > 0 {
            self.cfg.max_requests
        } else {
            self.bands.values().map(|b| b.cfg.max_requests).fold(0u64, u64::saturating_add)
        };
        FlowSizes {
            waiting: self.waiting.len(),
            waiting_cap,
            flows: self.bands.values().map(|b| b.flows.len()).sum(),
            leases: self.reclaim.leases.len(),
            leases_cap: MAX_LEASES,
        }
    }

    /// Body bytes waiting now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `ticket` is waiting.
    pub fn is_waiting(&self, ticket: Ticket) -> bool {
        self.waiting.contains_key(&ticket.0)
    }

    /// In-flight requests tracked for eviction.
    pub fn leases(&self) -> usize {
        self.reclaim.leases.len()
    }

    /// What the other decision points have queued (see [`PeerQueues`]).
    pub fn set_peers(&mut self, peers: PeerQueues) {
        self.peers = peers;
    }

    fn observe(&mut self, gate: &Gate, now_ms: u64) {
        if gate.no_endpoints != self.empty_pool.0 {
            self.empty_pool = (gate.no_endpoints, now_ms);
        }
    }

    /// The priorities of every band known (configured or holding requests), highest first.
    fn priorities(&self) -> Vec<i32> {
        let mut p: Vec<i32> =
            self.cfg.bands.iter().map(|b| b.priority).chain(self.bands.keys().copied()).collect();
        p.sort_unstable_by(|a, b| b.cmp(a));
        p.dedup();
        p
    }

    fn ceiling_of(&mut self, priority: i32) -> f64 {
        let mut priorities = self.priorities();
        if let Err(i) = priorities.binary_search_by(|p| priority.cmp(p)) {
            priorities.insert(i, priority);
        }
        let mut ceilings = core::mem::take(&mut self.ceilings);
        self.cfg.usage_limit.ceilings(&priorities, &mut ceilings);
        let c = priorities.iter().position(|&p| p == priority).and_then(|i| ceilings.get(i).copied());
        self.ceilings = ceilings;
        c.unwrap_or(1.0)
    }

    /// A request is complete: go now, wait, or be refused ([`FlowController::goes_now`], then
    /// [`FlowController::enqueue`]).
    pub fn admit(&mut self, req: &QueueRequest<'_>, gate: &Gate, now_ms: u64) -> Admit {
        if self.goes_now(req, gate, now_ms) {
            return Admit::Now;
        }
        match self.enqueue(req, now_ms) {
            Ok(t) => Admit::Queued(t),
            Err(outcome) => Admit::Rejected(outcome),
        }
    }

    /// Whether `req` may be decided at once: no request of its band or a higher one waits (here or at
    /// a peer) and the gate is open for its band.
    pub fn goes_now(&mut self, req: &QueueRequest<'_>, gate: &Gate, now_ms: u64) -> bool {
        self.observe(gate, now_ms);
        let ahead = self.bands.range(req.priority..).any(|(_, b)| b.len > 0)
            || self.peers.waits_above(req.priority.saturating_sub(1));
        !ahead
            && match gate.saturation {
                None => true,
                Some(s) => s < self.ceiling_of(req.priority),
            }
    }

    /// Queues `req`, or refuses it when a capacity limit would be passed (counted as rejected).
    pub fn enqueue(&mut self, req: &QueueRequest<'_>, now_ms: u64) -> Result<Ticket, QueueOutcome> {
        if let Some(outcome) = self.over_capacity(req) {
            self.stats.ended(req.priority, outcome, 0);
            return Err(outcome);
        }
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let cfg = self.cfg.band(req.priority);
        let ttl = self.cfg.request_ttl_ms;
        let key = match cfg.ordering {
            Ordering::Fcfs => now_ms,
            Ordering::Edf if ttl == 0 => u64::MAX,
            Ordering::Edf => now_ms.saturating_add(ttl),
        };
        let flow = if req.flow.is_empty() { config::DEFAULT_FLOW } else { req.flow };
        let band = self.bands.entry(req.priority).or_insert_with(|| Band {
            cfg,
            flows: BTreeMap::new(),
            len: 0,
            bytes: 0,
            last_flow: None,
        });
        band.flows.entry(String::from(flow)).or_default().queue.insert((key, ticket));
        band.len = band.len.saturating_add(1);
        band.bytes = band.bytes.saturating_add(req.bytes);
        self.len = self.len.saturating_add(1);
        self.bytes = self.bytes.saturating_add(req.bytes);
        self.waiting.insert(
            ticket,
            Waiting {
                priority: req.priority,
                flow: String::from(flow),
                key: (key, ticket),
                bytes: req.bytes,
                enqueued_ms: now_ms,
            },
        );
        if let Some(s) = self.stats.band_mut(req.priority) {
            s.queued = s.queued.saturating_add(1);
            s.bytes = s.bytes.saturating_add(req.bytes);
        }
        Ok(Ticket(ticket))
    }

    /// Whether `req` fits: global caps first, then its band's (llm-d's `hasCapacity`).
    fn over_capacity(&self, req: &QueueRequest<'_>) -> Option<QueueOutcome> {
        let (peer_len, peer_bytes) = self.peers.totals();
        let (len, bytes) = (self.len.saturating_add(peer_len), self.bytes.saturating_add(peer_bytes));
        let band_cfg = self.cfg.band(req.priority);
        let (band_len, band_bytes) = self.bands.get(&req.priority).map_or((0, 0), |b| (b.len, b.bytes));
        let (pl, pb) = self.peers.band(req.priority);
        let (band_len, band_bytes) = (band_len.saturating_add(pl), band_bytes.saturating_add(pb));
        let full = (self.cfg.max_bytes > 0 && bytes.saturating_add(req.bytes) > self.cfg.max_bytes)
            || (self.cfg.max_requests > 0 && len.saturating_add(1) > self.cfg.max_requests)
            || (band_bytes.saturating_add(req.bytes) > band_cfg.max_bytes)
            || (band_len.saturating_add(1) > band_cfg.max_requests);
        full.then_some(if self.empty_pool.0 {
            QueueOutcome::RejectedNoEndpoints
        } else {
            QueueOutcome::RejectedCapacity
        })
    }

    /// Removes a waiting request (no stats).
    fn remove(&mut self, ticket: u64) -> Option<Waiting> {
        let w = self.waiting.remove(&ticket)?;
        if let Some(band) = self.bands.get_mut(&w.priority) {
            if let Some(flow) = band.flows.get_mut(&w.flow) {
                flow.queue.remove(&w.key);
                if flow.queue.is_empty() {
                    band.flows.remove(&w.flow);
                }
            }
            band.len = band.len.saturating_sub(1);
            band.bytes = band.bytes.saturating_sub(w.bytes);
            if band.len == 0 {
                self.bands.remove(&w.priority);
            }
        }
        self.len = self.len.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(w.bytes);
        if let Some(s) = self.stats.band_mut(w.priority) {
            s.queued = s.queued.saturating_sub(1);
            s.bytes = s.bytes.saturating_sub(w.bytes);
        }
        Some(w)
    }

    fn release(&mut self, ticket: u64, outcome: QueueOutcome, now_ms: u64) -> Option<Released> {
        let w = self.remove(ticket)?;
        let waited_ms = now_ms.saturating_sub(w.enqueued_ms);
        self.stats.ended(w.priority, outcome, waited_ms);
        Some(Released { ticket: Ticket(ticket), priority: w.priority, outcome, waited_ms })
    }

    /// The client went away: the request leaves the queue. False if it was not waiting (already
    /// released, or never queued): every ticket ends once.
    pub fn cancel(&mut self, ticket: Ticket, now_ms: u64) -> bool {
        self.release(ticket.0, QueueOutcome::EvictedContextCancelled, now_ms).is_some()
    }

    /// Requests whose queue-wait budget is spent (the budget in force is re-read from the gate: a pool
    /// with no endpoints uses `noEndpointRequestTTL`, and each change of regime restarts the budget).
    pub fn expire(&mut self, gate: &Gate, now_ms: u64) -> Vec<Released> {
        self.observe(gate, now_ms);
        let (empty, since) = self.empty_pool;
        let (budget, outcome) = if empty {
            (self.cfg.no_endpoint_request_ttl_ms, QueueOutcome::EvictedNoEndpoints)
        } else {
            (self.cfg.request_ttl_ms, QueueOutcome::EvictedTtl)
        };
        if budget == 0 || self.len == 0 {
            return Vec::new();
        }
        // Within a flow, requests are ordered by arrival (FCFS, or EDF with one TTL for all), so the
        // expired ones are a prefix of each flow: only heads are looked at.
        let mut expired: Vec<u64> = Vec::new();
        for band in self.bands.values() {
            for flow in band.flows.values() {
                for &(_, t) in &flow.queue {
                    let due = self.waiting.get(&t).map(|w| w.enqueued_ms.max(since).saturating_add(budget));
                    if due.is_none_or(|d| now_ms < d) {
                        break;
                    }
                    expired.push(t);
                }
            }
        }
        let mut out: Vec<Released> =
            expired.into_iter().filter_map(|t| self.release(t, outcome, now_ms)).collect();
        out.sort_unstable_by_key(|r| r.ticket);
        out
    }

    /// The next request to dispatch under `gate`, highest band first; `None` when nothing waits or the
    /// highest band that waits is blocked (no lower band overtakes it). Call again after each one (the
    /// caller's saturation moves with what it sent). A blocked band may trigger in-flight eviction
    /// ([`FlowController::take_revoked`]); `in_flight` is the pool's gateway-side request count.
    pub fn next(&mut self, gate: &Gate, in_flight: u64, now_ms: u64) -> Option<Released> {
        self.observe(gate, now_ms);
        if self.len == 0 {
            return None;
        }
        let priorities = self.priorities();
        let mut ceilings = core::mem::take(&mut self.ceilings);
        self.cfg.usage_limit.ceilings(&priorities, &mut ceilings);
        let mut chosen = None;
        for (i, &priority) in priorities.iter().enumerate() {
            let ceiling = ceilings.get(i).copied().unwrap_or(1.0);
            let queued_here = self.bands.get(&priority).is_some_and(|b| b.len > 0);
            // A higher band waiting at a peer holds this one (strict priority across the process).
            let peer_above = self.peers.waits_above(priority);
            let blocked = gate.saturation.is_some_and(|s| s >= ceiling);
            if blocked {
                if self.cfg.enable_eviction {
                    if let Some(s) = gate.saturation {
                        self.maybe_reclaim(s, &priorities, &ceilings, i, in_flight, now_ms);
                    }
                }
                break;
            }
            if peer_above && queued_here {
                break;
            }
            if !queued_here {
                continue;
            }
            chosen = self.select(priority);
            if chosen.is_some() {
                break;
            }
        }
        self.ceilings = ceilings;
        let ticket = chosen?;
        self.release(ticket, QueueOutcome::Dispatched, now_ms)
    }

    /// The band's fairness policy picks a flow, the flow's order its head.
    fn select(&mut self, priority: i32) -> Option<u64> {
        let band = self.bands.get_mut(&priority)?;
        match band.cfg.fairness {
            Fairness::GlobalStrict => {
                band.flows.values().filter_map(|f| f.queue.first()).min().map(|&(_, t)| t)
            }
            Fairness::RoundRobin => {
                let after = band.last_flow.as_deref();
                let next = match after {
                    Some(last) => band
                        .flows
                        .range::<str, _>((core::ops::Bound::Excluded(last), core::ops::Bound::Unbounded))
                        .find(|(_, f)| !f.queue.is_empty())
                        .or_else(|| band.flows.iter().find(|(_, f)| !f.queue.is_empty())),
                    None => band.flows.iter().find(|(_, f)| !f.queue.is_empty()),
                };
                let (name, flow) = next?;
                let ticket = flow.queue.first().map(|&(_, t)| t)?;
                band.last_flow = Some(name.clone());
                Some(ticket)
            }
        }
    }

    /// Tracks a dispatched sheddable request for in-flight eviction (only with `enableEviction`).
    /// Returns the lease to report finished, if one is kept.
    pub fn lease(&mut self, ticket: Option<Ticket>, priority: i32, now_ms: u64) -> Option<Ticket> {
        if !self.cfg.enable_eviction || priority >= 0 || self.reclaim.leases.len() >= MAX_LEASES {
            return None;
        }
        let t = match ticket {
            Some(t) => t,
            None => {
                let t = Ticket(self.next_ticket);
                self.next_ticket = self.next_ticket.wrapping_add(1);
                t
            }
        };
        self.reclaim.leases.insert(t.0, (priority, now_ms));
        Some(t)
    }

    /// A leased request ended (answered, reset, or evicted and now gone).
    pub fn finished(&mut self, lease: Ticket, now_ms: u64) {
        self.reclaim.leases.remove(&lease.0);
        if let Some(i) = self.reclaim.outstanding.iter().position(|&(t, _)| t == lease.0) {
            self.reclaim.outstanding.swap_remove(i);
            self.reclaim.cooling.push(now_ms.saturating_add(EVICTION_CONFIRMATION_GRACE_MS));
        }
    }

    /// In-flight requests eviction chose since the last call, with their priority: end each (429).
    pub fn take_revoked(&mut self) -> Vec<(Ticket, i32)> {
        core::mem::take(&mut self.reclaim.revoked)
    }

    fn gate_open(&mut self, now_ms: u64) -> bool {
        let r = &mut self.reclaim;
        let mut timed_out = 0;
        r.outstanding.retain(|&(_, issued)| {
            let keep = now_ms.saturating_sub(issued) < EVICTION_CONFIRMATION_TIMEOUT_MS;
            if !keep {
                timed_out += 1;
            }
            keep
        });
        for _ in 0..timed_out {
            r.cooling.push(now_ms.saturating_add(EVICTION_CONFIRMATION_GRACE_MS));
        }
        r.cooling.retain(|&until| now_ms < until);
        r.outstanding.is_empty() && r.cooling.is_empty()
    }

    /// The victim order: lowest priority first, then the most recently dispatched.
    fn victims(&self, below: i32) -> Vec<(u64, i32)> {
        let mut v: Vec<(u64, i32, u64)> = self
            .reclaim
            .leases
            .iter()
            .filter(|(_, &(p, _))| p < below)
            .map(|(&t, &(p, at))| (t, p, at))
            .collect();
        v.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(b.0.cmp(&a.0)));
        v.into_iter().map(|(t, p, _)| (t, p)).collect()
    }

    /// llm-d's trigger: a blocked band `j ≥ i` with waiting requests, above the next victim's priority
    /// and with a ceiling > 0 it could reach, gets `max(1, ⌈(saturation − ceiling) / credit⌉)`
    /// evictions (credit = saturation / in-flight), at most 2.
    fn maybe_reclaim(
        &mut self,
        saturation: f64,
        priorities: &[i32],
        ceilings: &[f64],
        i: usize,
        in_flight: u64,
        now_ms: u64,
    ) {
        if !self.gate_open(now_ms) {
            return;
        }
        let Some(victim_priority) = self.victims(i32::MAX).first().map(|&(_, p)| p) else { return };
        for (j, &priority) in priorities.iter().enumerate().skip(i) {
            if priority <= victim_priority {
                return;
            }
            let ceiling = ceilings.get(j).copied().unwrap_or(1.0);
            let waits = self.bands.get(&priority).is_some_and(|b| b.len > 0);
            if ceiling <= 0.0 || saturation < ceiling || !waits {
                continue;
            }
            let in_flight = in_flight.max(self.reclaim.leases.len() as u64).max(1);
            let credit = saturation / in_flight as f64;
            if !(credit.is_finite() && credit > 0.0) {
                return;
            }
            let target = saturation - ceiling;
            let mut n = (target / credit) as usize;
            if (n as f64) < target / credit {
                n = n.saturating_add(1);
            }
            let n = n.clamp(1, MAX_REVOCATIONS_PER_DECISION);
            for (t, p) in self.victims(priority).into_iter().take(n) {
                self.reclaim.leases.remove(&t);
                self.reclaim.outstanding.push((t, now_ms));
                self.reclaim.revoked.push((Ticket(t), p));
                if let Some(s) = self.stats.band_mut(p) {
                    s.evicted_in_flight = s.evicted_in_flight.saturating_add(1);
                }
            }
            return;
        }
    }
}
