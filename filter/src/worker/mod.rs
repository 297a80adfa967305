//! One worker VM's picker: the configured `EndpointPicker` plus the process-wide state around it (snapshot
//! cache, in-flight tables, prefix exchange, worker directory). The HTTP glue asks it for a decision and
//! reports when a routed stream ends; everything here runs natively against the fake host in tests.

use crate::ejections::SharedEjections;
use crate::flow_share::{self, FlowShare};
use crate::host::Host;
use crate::inflight::{Count, InFlightState, Publish, HEARTBEAT_MS};
use crate::keys::Keys;
use crate::memory::{MemoryReported, Size};
use crate::prefix_sync::PrefixSync;
use crate::snapshot_cache::{Refresh, SnapshotCache};
use crate::stats::{self, Stats};
use crate::worker_directory;
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::config::ConfigError;
use scheduler_core::endpoint_picker::{
    read_body, request_seed, Admission, EndpointPicker, Fallback, Outcome, PoolView, ReadBody, Reply,
    RequestInfo, Revoked, Route, WaitingRequests,
};
use scheduler_core::exchange::{ExchangeSettings, InFlight, Moved};
use scheduler_core::flow_control::Ticket;
use scheduler_core::health::{HealthEvent, Unusable};
use scheduler_core::model::PoolSnapshot;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

/// Replies flow control gives (queue full, timed out, ...) carry reasons with this prefix.
const FLOW_REASON_PREFIX: &str = "flow_control";

/// What [`Worker::admit`] did with a complete request.
// Once per request, as `Outcome` is.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Admitted {
    /// Decided now: apply `outcome`. `routed` is counted in flight until [`Worker::finish`], `health`
    /// waits for the first byte ([`Worker::first_byte`]), `lease` is reported with
    /// [`Worker::flow_finished`].
    Decided { outcome: Outcome, routed: Option<InFlight>, health: Option<u64>, lease: Option<Ticket> },
    /// Waiting in flow control's queue: keep the stream paused under this ticket.
    Queued(Ticket),
}

/// A waiting request [`Worker::poll`] settled: decided now (a route, or a reply), or timed out.
#[derive(Debug)]
pub struct Dispatch {
    pub ticket: Ticket,
    pub outcome: Outcome,
    pub routed: Option<InFlight>,
    pub health: Option<u64>,
    pub lease: Option<Ticket>,
    pub waited_ms: u64,
}

/// What one [`Worker::poll`] released.
#[derive(Debug, Default)]
pub struct Polled {
    pub settled: Vec<Dispatch>,
    /// Requests in flight that eviction ends: answer each its reply now.
    pub revoked: Vec<Revoked>,
}

fn unusable_reason(view: PoolView<'_>) -> Option<Fallback> {
    match view {
        PoolView::Unusable { reason, .. } => Some(reason),
        PoolView::Fresh(_) => None,
    }
}

pub struct Worker {
    picker: EndpointPicker,
    keys: Keys,
    id: Option<u32>,
    cache: SnapshotCache,
    inflight: InFlightState,
    prefix: PrefixSync,
    ejections: SharedEjections,
    stats: Stats,
    /// Decisions made by this VM; varies the seed of requests that arrive without an id.
    decisions: u64,
    /// Ids given to requests that arrived without one.
    unnamed: u64,
    /// When the snapshot age and health stats were last reported.
    stats_reported_ms: Option<u64>,
    /// This worker's flow-control queue as the other workers see it, and theirs.
    flow_share: FlowShare,
    /// Flow-control stats as last reported to the proxy.
    flow_stats: stats::FlowReported,
    /// This worker's own queue for "a request ended while others wait" (see [`Worker::wake`]).
    wake_queue: Option<u32>,
    /// Set by the first `start_once` (the first HTTP stream this VM sees).
    started: bool,
    exchange: Rc<ExchangeSettings>,
    /// The worker directory as last read, and when: re-read once per heartbeat period rather than per
    /// request (workers join and leave rarely; a newcomer's counts start at zero).
    directory: Vec<u32>,
    directory_read_ms: Option<u64>,
    /// Memory gauges as this VM last reported them ([`crate::memory`]).
    memory: MemoryReported,
}

impl Worker {
    pub fn new(config: GatewayConfig) -> Result<Worker, ConfigError> {
        let keys = Keys::new(&config.pool.name);
        let exchange = Rc::new(ExchangeSettings::new(&config));
        Ok(Worker {
            picker: EndpointPicker::new(config)?,
            keys,
            id: None,
            cache: SnapshotCache::default(),
            inflight: InFlightState::default(),
            prefix: PrefixSync::default(),
            ejections: SharedEjections::default(),
            stats: Stats::default(),
            decisions: 0,
            unnamed: 0,
            stats_reported_ms: None,
            flow_share: FlowShare::default(),
            flow_stats: stats::FlowReported::default(),
            wake_queue: None,
            started: false,
            exchange,
            directory: Vec::new(),
            directory_read_ms: None,
            memory: MemoryReported::default(),
        })
    }

    /// Joins the process: a worker id, a directory entry, an in-flight key and a prefix queue. On failure
    /// the worker still picks, with counts and prefixes local to this VM.
    pub fn start(&mut self, host: &dyn Host) {
        match worker_directory::register(host, &self.keys) {
            Ok(id) => {
                self.id = Some(id);
                let now_ms = host.now_ms();
                self.inflight.heartbeat(host, &self.keys, self.id, now_ms);
                if let Err(e) = self.prefix.register(host, &self.keys, id) {
                    log::warn!("worker {id}: prefix queue not registered, prefixes stay local: {e}");
                }
                if self.flow_enabled() {
                    match host.queue_register(&self.keys.flow_wake(id)) {
                        Ok(q) => self.wake_queue = Some(q),
                        Err(e) => {
                            log::warn!("worker {id}: no wake-up queue, waiting requests go on the tick: {e}")
                        }
                    }
                }
                // The workers already listed re-read the directory once per heartbeat: tell them now, so
                // they count this worker's requests and send it their prefixes from its first request.
                if self.read_directory(host, now_ms) {
                    self.prefix.announce(host, &self.keys, &self.directory, id);
                }
                log::info!("worker {id} joined pool {:?}", self.picker.config().pool.name);
            }
            Err(e) => log::warn!("no worker id (in-flight and prefixes stay local to this VM): {e}"),
        }
    }

    /// Names this worker's metrics after its pool (`pool.<name>.epp_…`): one of several pools in one VM.
    pub fn label_stats_by_pool(&mut self) {
        self.stats = Stats::for_pool(&self.picker.config().pool.name);
    }

    /// Lays the prefix index's table out by `seed`: a secret drawn once per VM, so clients cannot aim
    /// block hashes at one bucket. Decisions do not depend on it.
    pub fn set_prefix_table_seed(&mut self, seed: u64) {
        self.picker.scheduler_mut().set_prefix_table_seed(seed);
    }

    /// [`Worker::start`] the first time only (called for every new HTTP stream).
    pub fn start_once(&mut self, host: &dyn Host) {
        if !self.started {
            self.started = true;
            self.start(host);
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.id
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn config(&self) -> &GatewayConfig {
        self.picker.config()
    }

    /// What every request's [`scheduler_core::exchange::Exchange`] reads.
    pub fn exchange_settings(&self) -> Rc<ExchangeSettings> {
        Rc::clone(&self.exchange)
    }

    pub fn stats(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Counts a request answered before any decision was asked for (a 413 while buffering).
    pub fn count_reply(&mut self, host: &dyn Host, reply: &Reply) {
        self.stats.count(host, stats::DECISIONS_REPLIED);
        self.stats.reply(host, reply.status);
    }

    /// An id for a request that arrived without one: unique per VM (worker id, a counter) and across
    /// restarts (the host's clock).
    pub fn new_request_id(&mut self, host: &dyn Host) -> String {
        self.unnamed = self.unnamed.wrapping_add(1);
        let worker = self.id.unwrap_or(0);
        std::format!("epp-{worker:x}-{:x}-{:x}", host.now_us(), self.unnamed)
    }

    /// Decides for one request now, never queueing it (flow control's queue is bypassed: see
    /// [`Worker::admit`]); a route is counted in flight until [`Worker::finish`], and waited for under the
    /// returned ticket until [`Worker::first_byte`] (see `health.firstByteTimeoutMs`).
    pub fn decide(
        &mut self,
        host: &dyn Host,
        info: &RequestInfo<'_>,
        body: Option<&[u8]>,
    ) -> (Outcome, Option<InFlight>, Option<u64>) {
        let read = read_body(self.picker.config(), info, body);
        self.decide_read(host, info, read)
    }

    /// [`Worker::decide`] on a body already read (or refused) by [`read_body`]: the filter reads it once
    /// when it also routes on the body.
    pub fn decide_read(
        &mut self,
        host: &dyn Host,
        info: &RequestInfo<'_>,
        read: Result<ReadBody<'_>, Reply>,
    ) -> (Outcome, Option<InFlight>, Option<u64>) {
        let started_us = host.now_us();
        let started_ms = started_us / 1_000;
        let live_others = self.refresh(host, started_ms);
        let undecodable = self.cache.undecodable();
        let view = self.picker.view(self.cache.snapshot(), undecodable, started_ms);
        let unusable = unusable_reason(view);
        self.decisions = self.decisions.wrapping_add(1);
        let seed = seed_for(info.request_id, self.decisions);
        let outcome = match read {
            Ok(read) => self.picker.decide_read(info, read, view, started_ms, seed),
            Err(reply) => Outcome::Reply(reply),
        };
        let (routed, ticket) = self.account(host, &outcome, unusable, &live_others, started_ms);
        let elapsed_us = host.now_us().saturating_sub(started_us);
        self.stats.histogram(host, stats::DECISION_TIME_US, elapsed_us);
        (outcome, routed, ticket)
    }

    /// Admits a complete request: decided now (as [`Worker::decide`]), or, with flow control on and no
    /// room in the pool, queued under a ticket until [`Worker::poll`] settles it or
    /// [`Worker::cancel`] withdraws it. The other workers' queues count (see [`crate::flow_share`]).
    pub fn admit(&mut self, host: &dyn Host, info: &RequestInfo<'_>, body: Option<&[u8]>) -> Admitted {
        if self.picker.flow_control().is_none() {
            let (outcome, routed, health) = self.decide(host, info, body);
            return Admitted::Decided { outcome, routed, health, lease: None };
        }
        let started_us = host.now_us();
        let started_ms = started_us / 1_000;
        let live_others = self.refresh(host, started_ms);
        self.read_peers(host, started_ms);
        let undecodable = self.cache.undecodable();
        let view = self.picker.view(self.cache.snapshot(), undecodable, started_ms);
        let unusable = unusable_reason(view);
        self.decisions = self.decisions.wrapping_add(1);
        let seed = seed_for(info.request_id, self.decisions);
        let admission = self.picker.decide_or_queue(info, body, view, started_ms, seed);
        let admitted = match admission {
            Admission::Queued(ticket) => Admitted::Queued(ticket),
            Admission::Decided { outcome, lease } => {
                let (routed, health) = self.account(host, &outcome, unusable, &live_others, started_ms);
                Admitted::Decided { outcome, routed, health, lease }
            }
        };
        self.flow_changed(host, started_ms);
        let elapsed_us = host.now_us().saturating_sub(started_us);
        self.stats.histogram(host, stats::DECISION_TIME_US, elapsed_us);
        admitted
    }

    /// Lets flow control go on (on a tick, and when a request ends): requests whose time ran out are
    /// answered, and waiting requests are decided, best first, while the pool has room. `waiting`
    /// gives back each request's facts and body. Every route is counted in flight as in
    /// [`Worker::decide`].
    pub fn poll(&mut self, host: &dyn Host, waiting: &mut dyn WaitingRequests) -> Polled {
        let mut out = Polled::default();
        if self.picker.flow_control().is_none_or(|fc| fc.is_empty()) {
            return out;
        }
        let now_ms = host.now_ms();
        let live_others = self.refresh(host, now_ms);
        self.read_peers(host, now_ms);
        let undecodable = self.cache.undecodable();
        let polled = self.picker.poll(self.cache.snapshot_mut(), undecodable, now_ms, waiting);
        let unusable = unusable_reason(self.picker.view(self.cache.snapshot(), undecodable, now_ms));
        for s in polled.settled {
            self.stats.histogram(host, stats::FLOW_QUEUE_DURATION_MS, s.waited_ms);
            let (routed, health) = self.account(host, &s.outcome, unusable, &live_others, now_ms);
            out.settled.push(Dispatch {
                ticket: s.ticket,
                outcome: s.outcome,
                routed,
                health,
                lease: s.lease,
                waited_ms: s.waited_ms,
            });
        }
        out.revoked = polled.revoked;
        self.flow_changed(host, now_ms);
        out
    }

    /// The client of a waiting request went away (or the VM is ending): the request leaves the queue.
    /// False if `ticket` was not waiting.
    pub fn cancel(&mut self, host: &dyn Host, ticket: Ticket, waited_ms: u64) -> bool {
        let now_ms = host.now_ms();
        let cancelled = self.picker.cancel(ticket, now_ms);
        if cancelled {
            self.stats.histogram(host, stats::FLOW_QUEUE_DURATION_MS, waited_ms);
            self.flow_changed(host, now_ms);
        }
        cancelled
    }

    /// A request flow control tracked in flight under `lease` ended.
    pub fn flow_finished(&mut self, host: &dyn Host, lease: Ticket) {
        self.picker.finished(lease, host.now_ms());
    }

    /// Whether requests wait in this worker's queue (the glue ticks faster meanwhile).
    pub fn flow_waiting(&self) -> bool {
        self.picker.flow_control().is_some_and(|fc| !fc.is_empty())
    }

    /// A request ended while others wait here: asks for a dispatch round in an event of its own (a
    /// message on this worker's own shared queue; the proxy delivers it to the root context after the
    /// current callback, never nested in the ending stream's teardown). The tick covers a refusal.
    pub fn wake(&self, host: &dyn Host) {
        if let (Some(q), true) = (self.wake_queue, self.flow_waiting()) {
            if let Err(e) = host.queue_enqueue(q, b"w") {
                log::debug!("wake-up not queued ({e}): the next tick dispatches");
            }
        }
    }

    /// True (after emptying it) if `queue` is this worker's wake-up queue.
    pub fn take_wake(&mut self, host: &dyn Host, queue: u32) -> bool {
        if self.wake_queue != Some(queue) {
            return false;
        }
        // Bounded: wake-ups are one per request end.
        for _ in 0..100_000 {
            match host.queue_dequeue(queue) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        true
    }

    /// Whether flow control is on.
    pub fn flow_enabled(&self) -> bool {
        self.picker.flow_control().is_some()
    }

    /// Refreshes what a decision reads: the snapshot, the directory (once per heartbeat), ejections, and
    /// every worker's in-flight counts merged into the snapshot. Returns the live other workers.
    fn refresh(&mut self, host: &dyn Host, now_ms: u64) -> Vec<u32> {
        match self.cache.refresh(host, &self.keys, now_ms) {
            Refresh::Undecodable(why) => log::warn!("published snapshot ignored: {why}"),
            Refresh::HostError(why) => log::warn!("snapshot not refreshed: {why}"),
            Refresh::Reloaded | Refresh::Unchanged | Refresh::Missing => {}
        }
        if self.directory_read_ms.is_none_or(|t| now_ms.saturating_sub(t) >= HEARTBEAT_MS) {
            self.read_directory(host, now_ms);
        }
        self.ejections.read(host, &self.keys, self.picker.health_mut(), now_ms);
        let mut live_others: Vec<u32> = Vec::new();
        if let Some(pool) = self.cache.snapshot_mut() {
            match self.inflight.merge_into(host, &self.keys, self.id, &self.directory, pool, now_ms) {
                Ok(others) => {
                    live_others = others.live;
                    if !others.long_dead.is_empty()
                        && worker_directory::prune(host, &self.keys, &others.long_dead).is_ok()
                    {
                        self.directory.retain(|id| !others.long_dead.contains(id));
                    }
                }
                Err(e) => log::debug!("other workers' in-flight counts not read: {e}"),
            }
        }
        live_others
    }

    /// Hands flow control the other workers' queues (when another worker is listed).
    fn read_peers(&mut self, host: &dyn Host, now_ms: u64) {
        if !self.directory.iter().any(|id| Some(*id) != self.id) {
            return;
        }
        match self.flow_share.peers(host, &self.keys, self.id, &self.directory, now_ms) {
            Ok(peers) => {
                if let Some(fc) = self.picker.flow_control_mut() {
                    fc.set_peers(peers);
                }
            }
            Err(e) => log::debug!("other workers' queues not read, the last reading stays: {e}"),
        }
    }

    /// Counts a decision and records a route in flight (and with health). Flow control's own answers
    /// (queue full, time out) are counted by [`Worker::flow_changed`], not as shed or unavailable.
    fn account(
        &mut self,
        host: &dyn Host,
        outcome: &Outcome,
        unusable: Option<Fallback>,
        live_others: &[u32],
        now_ms: u64,
    ) -> (Option<InFlight>, Option<u64>) {
        let routed = match outcome {
            Outcome::Route(route) => {
                self.stats.count(host, stats::DECISIONS_ROUTED);
                Some(self.after_route(host, route, live_others, now_ms))
            }
            Outcome::FailOpen { reason, route } => {
                self.stats.count(host, stats::DECISIONS_FAIL_OPEN);
                self.stats.fallback(host, *reason);
                route.as_ref().map(|r| self.after_route(host, r, &[], now_ms))
            }
            Outcome::Reply(reply) if reply.reason.starts_with(FLOW_REASON_PREFIX) => None,
            Outcome::Reply(reply) => {
                self.stats.count(host, stats::DECISIONS_REPLIED);
                self.stats.reply(host, reply.status);
                match unusable {
                    // Failing closed is a fallback too (a 400 while metrics are missing is not).
                    Some(reason) if reply.reason == reason.as_str() => self.stats.fallback(host, reason),
                    // Failing closed because no endpoint is usable.
                    None if reply.reason == Fallback::NoUsableEndpoint.as_str() => {
                        self.stats.fallback(host, Fallback::NoUsableEndpoint)
                    }
                    _ => {}
                }
                None
            }
        };
        let ticket = match outcome {
            Outcome::Route(r) | Outcome::FailOpen { route: Some(r), .. } => {
                self.picker.health_mut().sent(self.decisions, &r.destination, r.streaming, now_ms);
                Some(self.decisions)
            }
            _ => None,
        };
        if routed.is_some() {
            self.stats.gauge_add(host, stats::IN_FLIGHT, 1);
        }
        (routed, ticket)
    }

    /// After anything that may have changed flow control's queue: publishes this worker's queue for
    /// the others and moves the Envoy stats (gauges by difference, so every worker's share adds up
    /// in the process-wide stat).
    fn flow_changed(&mut self, host: &dyn Host, now_ms: u64) {
        let Some(fc) = self.picker.flow_control() else { return };
        let flow = fc.stats();
        let bands: flow_share::Bands =
            flow.bands.iter().filter(|b| b.queued > 0).map(|b| (b.priority, b.queued, b.bytes)).collect();
        self.flow_share.update(host, &self.keys, self.id, bands, now_ms);
        self.flow_stats.report(host, &mut self.stats, flow);
    }

    /// The VM is ending: this worker's queue no longer counts for the others.
    pub fn flow_shutdown(&mut self, host: &dyn Host) {
        let now_ms = host.now_ms();
        self.flow_changed(host, now_ms);
        self.flow_share.clear(host, &self.keys, self.id, now_ms);
    }

    /// The response headers of the request sent under `ticket` came (`alive`: from the server it was
    /// sent to, status below 500), or its stream ended (`alive` false).
    pub fn first_byte(&mut self, ticket: u64, alive: bool) {
        self.picker.health_mut().first_byte(ticket, alive);
    }

    fn after_route(&mut self, host: &dyn Host, route: &Route, share_with: &[u32], now_ms: u64) -> InFlight {
        let to = publish(&self.keys, self.id, &self.directory, self.picker.flow_control().is_some());
        let (address, tokens, awaiting) =
            (route.destination.as_str(), route.estimated_tokens, route.prompt_tokens);
        self.inflight.start(host, to, Count { address, tokens, awaiting }, now_ms);
        self.prefix.broadcast(host, &self.keys, share_with, &route.destination, &route.prefix_hashes, now_ms);
        InFlight { address: route.destination.clone(), tokens, awaiting }
    }

    /// The first token of a routed request came (see `Exchange::on_response_data`): its `prompt_tokens`
    /// no longer await it at `address`.
    pub fn first_token(&mut self, address: &str, prompt_tokens: u64) {
        let to = publish(&self.keys, self.id, &self.directory, self.picker.flow_control().is_some());
        self.inflight.first_token(to, address, prompt_tokens);
    }

    /// The routed stream ended (completed, reset or answered locally).
    pub fn finish(&mut self, host: &dyn Host, routed: &InFlight) {
        let now_ms = host.now_ms();
        let to = publish(&self.keys, self.id, &self.directory, self.picker.flow_control().is_some());
        let count = Count { address: &routed.address, tokens: routed.tokens, awaiting: routed.awaiting };
        self.inflight.finish(host, to, count, now_ms);
        self.stats.gauge_add(host, stats::IN_FLIGHT, -1);
        self.prefix.flush_if_due(host, &self.keys, now_ms);
    }

    /// `address` answered the request with `status` (the proxy's own 502/503/504 included: a refused
    /// connection, a reset, a timeout). Health records it; an ejection is shared with the other workers.
    pub fn answered(&mut self, host: &dyn Host, address: &str, status: u16) {
        if status >= 500 {
            self.stats.upstream_5xx(host, address);
        } else if !self.picker.health().answer_is_news(address) {
            // The usual answer: nothing to record, no clock read on the response path.
            return;
        }
        let now_ms = host.now_ms();
        self.picker.record_upstream(address, status, now_ms);
        self.health_events(host, now_ms);
    }

    /// Counts and logs what health learned; an ejection is shared with the other workers.
    fn health_events(&mut self, host: &dyn Host, now_ms: u64) {
        let mut ejected = false;
        for event in self.picker.health_mut().take_events() {
            match event {
                HealthEvent::Ejected { address, for_ms } => {
                    log::warn!("endpoint {address} ejected for {for_ms} ms after failed requests");
                    self.stats.count(host, stats::EJECTIONS);
                    ejected = true;
                }
                HealthEvent::Readmitted { address } => {
                    log::info!("endpoint {address} readmitted: a trial request succeeded");
                    self.stats.count(host, stats::READMISSIONS);
                }
            }
        }
        if ejected {
            self.ejections.publish(host, &self.keys, self.picker.health(), now_ms);
        }
    }

    /// The proxy served the request on `m.to` rather than where it was counted (a retry, a fallback).
    pub fn moved(&mut self, host: &dyn Host, m: &Moved) {
        let now_ms = host.now_ms();
        let (tokens, awaiting) = (m.tokens, m.awaiting);
        let publish_to = publish(&self.keys, self.id, &self.directory, self.picker.flow_control().is_some());
        self.inflight.finish(host, publish_to, Count { address: &m.from, tokens, awaiting }, now_ms);
        let publish_to = publish(&self.keys, self.id, &self.directory, self.picker.flow_control().is_some());
        self.inflight.start(host, publish_to, Count { address: &m.to, tokens, awaiting }, now_ms);
    }

    /// Heartbeat: sends prefixes still waiting, keeps this worker's table alive, its directory entry
    /// present and its copy of the directory fresh; reports how old the snapshot in use is.
    pub fn on_tick(&mut self, host: &dyn Host) {
        let Some(id) = self.id else { return };
        let now_ms = host.now_ms();
        // Prefixes routed at the end of a burst, when no decision or stream end came after them.
        self.prefix.flush(host, &self.keys, now_ms);
        self.flow_share.tick(host, &self.keys, self.id, now_ms);
        if self.stats_reported_ms.is_none_or(|t| now_ms.saturating_sub(t) >= HEARTBEAT_MS) {
            self.stats_reported_ms = Some(now_ms);
            self.report(host, now_ms);
        }
        // Requests that got no response headers in time count against their endpoints (after the report,
        // which refreshes an idle worker's snapshot: a request not streamed is judged on fresh metrics).
        let late = self.picker.health_mut().sweep(self.cache.snapshot(), now_ms);
        if late > 0 {
            self.stats.add(host, stats::FIRST_BYTE_TIMEOUTS, late as u64);
            self.health_events(host, now_ms);
        }
        // The directory is checked only with the heartbeat (ticks can be as fast as the collector's).
        if !self.inflight.heartbeat(host, &self.keys, self.id, now_ms) {
            return;
        }
        if self.read_directory(host, now_ms) && !self.directory.contains(&id) {
            let _ = worker_directory::ensure_listed(host, &self.keys, id);
        }
    }

    /// Reports this VM's memory (once per heartbeat period; see [`crate::memory`]): `linear_bytes`, its
    /// Wasm linear memory, and the sizes of what it keeps, `glue` for the tables the proxy glue owns.
    /// A VM that serves no requests (no worker id: Envoy's main thread) reports nothing.
    pub fn report_memory(&mut self, host: &dyn Host, linear_bytes: u64, glue: &[Size]) {
        if self.id.is_none() {
            return;
        }
        let mut sizes = self.memory_sizes();
        sizes.extend_from_slice(glue);
        self.memory.report(host, &mut self.stats, linear_bytes, &sizes);
    }

    /// Flow control's sizes (all zero when it is off).
    pub fn flow_sizes(&self) -> scheduler_core::flow_control::FlowSizes {
        self.picker.flow_control().map(|fc| fc.sizes()).unwrap_or_default()
    }

    /// The VM is ending: its memory shares leave the process-wide gauges.
    pub fn clear_memory(&mut self, host: &dyn Host) {
        self.memory.clear(host, &mut self.stats);
    }

    /// Every table this worker keeps that grows with traffic, with the most it can hold. Tables keyed
    /// by endpoint are bounded by the pool (pruned on each new snapshot).
    pub fn memory_sizes(&self) -> Vec<Size> {
        let pool = self.cache.snapshot().map_or(0, |s| s.endpoints.len()) as u64;
        let prefix = self.picker.scheduler().prefix_usage();
        let health = self.picker.health().sizes();
        let (pending, queues) = self.prefix.sizes();
        let mut sizes = std::vec![
            Size::new("pool_endpoints", pool as usize, pool),
            Size::new("prefix_entries", prefix.entries, prefix.capacity as u64),
            Size::new("prefix_hashes", prefix.hashes, prefix.capacity as u64),
            Size::new("prefix_endpoints", prefix.endpoints, pool),
            Size::new("health_records", health.records, pool),
            Size::new("health_answered", health.answered, pool),
            Size::new("health_awaiting", health.awaiting, health.awaiting_cap as u64),
            Size::new("inflight_endpoints", self.inflight.table().iter().count(), pool),
            Size::new("prefix_sync_pending", pending, crate::prefix_sync::MAX_BATCH as u64),
            Size::new("prefix_sync_queues", queues, self.directory.len() as u64),
            Size::new("metrics_defined", self.stats.defined(), stats::MAX_DEFINED as u64),
        ];
        if self.picker.flow_control().is_some() {
            let flow = self.flow_sizes();
            sizes.push(Size::new("flow_waiting", flow.waiting, flow.waiting_cap));
            sizes.push(Size::new("flow_flows", flow.flows, flow.waiting_cap));
            sizes.push(Size::new("flow_leases", flow.leases, flow.leases_cap as u64));
        }
        sizes
    }

    /// Snapshot age and endpoint health stats, once per heartbeat period whether or not requests come
    /// (the snapshot is refreshed here too, so they stay true while Envoy is idle).
    fn report(&mut self, host: &dyn Host, now_ms: u64) {
        // Only when no request read it lately: a tick must not take a request's read of this millisecond.
        if self.cache.checked_ms().is_none_or(|t| now_ms.saturating_sub(t) >= HEARTBEAT_MS) {
            if let Refresh::Undecodable(why) = self.cache.refresh(host, &self.keys, now_ms) {
                log::warn!("published snapshot ignored: {why}");
            }
        }
        self.ejections.read(host, &self.keys, self.picker.health_mut(), now_ms);
        if let Some(s) = self.cache.snapshot() {
            self.stats.gauge(host, stats::SNAPSHOT_AGE_MS, now_ms.saturating_sub(s.published_at_ms));
            let health = self.picker.health();
            let mut unusable = [0u64; Unusable::ALL.len()];
            let verdicts: Vec<(String, Option<Unusable>)> =
                s.endpoints.iter().map(|e| (String::from(e.address()), health.verdict(e, now_ms))).collect();
            for (address, verdict) in &verdicts {
                let code =
                    verdict.map_or(0, |v| Unusable::ALL.iter().position(|u| *u == v).map_or(0, |i| i + 1));
                self.stats.endpoint_gauge(host, stats::ENDPOINT_HEALTH, address, code as u64);
                if let Some(slot) = verdict.and_then(|v| Unusable::ALL.iter().position(|u| *u == v)) {
                    if let Some(n) = unusable.get_mut(slot) {
                        *n += 1;
                    }
                }
            }
            for (reason, n) in Unusable::ALL.iter().zip(unusable) {
                if *reason != Unusable::AllUnhealthy {
                    let name = std::format!("{}.{}", stats::ENDPOINTS_UNUSABLE, reason.as_str());
                    self.stats.gauge(host, &name, n);
                }
            }
            // Pool load over the usable endpoints (what the reference picker's pool gauges average).
            let (mut ready, mut queue, mut running, mut kv_permille) = (0u64, 0u64, 0u64, 0u64);
            for (e, (address, verdict)) in s.endpoints.iter().zip(&verdicts) {
                let Some(m) = &e.metrics else { continue };
                self.stats.endpoint_gauge(host, stats::ENDPOINT_QUEUE_SIZE, address, u64::from(m.waiting));
                if verdict.is_none() {
                    ready += 1;
                    queue += u64::from(m.waiting);
                    running += u64::from(m.running);
                    kv_permille += (m.kv_usage.clamp(0.0, 1.0) * 1000.0).round() as u64;
                }
            }
            self.stats.gauge(host, stats::POOL_READY_ENDPOINTS, ready);
            self.stats.gauge(host, stats::POOL_QUEUE_SIZE, queue);
            self.stats.gauge(host, stats::POOL_RUNNING_REQUESTS, running);
            self.stats.gauge(host, stats::POOL_KV_CACHE_PERMILLE, kv_permille);
        }
    }

    /// Re-reads the worker directory; on a refused read the last copy stays in use. True if read.
    fn read_directory(&mut self, host: &dyn Host, now_ms: u64) -> bool {
        match worker_directory::read(host, &self.keys) {
            Ok(ids) => {
                self.directory = ids;
                self.directory_read_ms = Some(now_ms);
                true
            }
            Err(e) => {
                log::debug!("worker directory not read, the last copy stays in use: {e}");
                false
            }
        }
    }

    /// Applies other workers' prefix picks arriving on this worker's queue. False if not our queue.
    pub fn on_queue_ready(&mut self, host: &dyn Host, queue: u32) -> bool {
        if !self.prefix.owns(queue) {
            return false;
        }
        let empty = PoolSnapshot::default();
        let pool = self.cache.snapshot().unwrap_or(&empty);
        let scheduler = self.picker.scheduler_mut();
        let drained = self.prefix.drain(host, queue, |u| scheduler.learn_prefix(pool, &u.address, &u.hashes));
        if drained.unreadable > 0 {
            log::warn!("{} unreadable prefix updates dropped", drained.unreadable);
        }
        if !drained.joined.is_empty() {
            // Re-read the directory now (and at the next decision, should this read be refused), and
            // show the newcomer this worker's requests (alone, it wrote its table only with the heartbeat).
            self.directory_read_ms = None;
            let now_ms = host.now_ms();
            self.read_directory(host, now_ms);
            let to = publish(&self.keys, self.id, &self.directory, self.picker.flow_control().is_some());
            self.inflight.publish_now(host, to, now_ms);
        }
        true
    }

    /// In-flight requests this worker counts right now, per endpoint (for tests and debugging).
    pub fn local_in_flight(&self) -> Vec<(String, u32)> {
        self.inflight.table().iter().map(|(a, f)| (String::from(a), f.requests)).collect()
    }
}

/// The core's [`request_seed`], so this filter, other replicas and the ext_proc shim decide a request
/// alike. Envoy always sets `x-request-id`; a request without one (a host that strips it) would otherwise
/// draw the same coins as every other id-less request, so those mix in this VM's decision counter and are
/// deliberately not reproducible.
fn seed_for(request_id: &str, n: u64) -> u64 {
    let seed = request_seed(request_id);
    if request_id.is_empty() {
        seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    } else {
        seed
    }
}

/// Where worker `me`'s in-flight changes go: written at once only if another worker is listed in its
/// copy of the directory.
fn publish<'k>(keys: &'k Keys, me: Option<u32>, directory: &[u32], eager: bool) -> Publish<'k> {
    Publish { keys, me, others: directory.iter().any(|id| Some(*id) != me), eager }
}

#[cfg(test)]
mod tests;
