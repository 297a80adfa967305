//! The thread that owns the core's [`EndpointPicker`] and the gateway-side in-flight table. The
//! picker's prefix index is single-threaded by design (as in one proxy worker), so streams send it
//! requests over a channel and await the answer: no lock is shared, none is held across an await.

use crate::extproc::machine::DecisionInput;
use crate::metrics::Metrics;
use crate::pool::Pool;
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::config::ConfigError;
use scheduler_core::endpoint_picker::{
    request_seed, Admission, EndpointPicker, Outcome, Reply, RequestInfo, WaitingRequests,
};
use scheduler_core::flow_control::Ticket;
use scheduler_core::health::HealthEvent;
use scheduler_core::model::PoolSnapshot;
use scheduler_core::openai_error::OpenAiError;
use scheduler_core::shared_state::inflight_table::InFlightTable;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

enum Command {
    Decide {
        /// Boxed: the request's facts are large next to the other commands.
        input: Box<DecisionInput>,
        reply: oneshot::Sender<Answer>,
    },
    Finish {
        address: String,
        tokens: u64,
        /// Prompt tokens still awaiting a first token.
        awaiting: u64,
    },
    Move {
        from: String,
        to: String,
        tokens: u64,
        awaiting: u64,
    },
    /// The first token of a request routed to `address` came.
    FirstToken {
        address: String,
        prompt_tokens: u64,
    },
    Answered {
        address: String,
        status: u16,
    },
    /// The response headers of the request sent under this ticket came, or its stream ended.
    FirstByte {
        ticket: u64,
        alive: bool,
    },
    /// Periodic: requests past `health.firstByteTimeoutMs` without response headers count as failures.
    Sweep,
    /// Flow control's tick (and a nudge when a waiting stream went away): answer expired requests,
    /// forget those whose stream is gone, dispatch while the pool has room.
    Poll,
    /// A request flow control tracked in flight (for eviction) ended.
    LeaseEnded(Ticket),
}

/// How often the picker thread looks for requests past `health.firstByteTimeoutMs` (the filter's tick).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// Flow control's tick: how often waiting requests are looked at when nothing else happens (a request
/// finishing, a new one arriving, a waiting client leaving also trigger a look).
const POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Why the picker could not start.
#[derive(Debug)]
pub enum SpawnError {
    Config(ConfigError),
    Thread(std::io::Error),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Config(e) => write!(f, "picker configuration: {e}"),
            SpawnError::Thread(e) => write!(f, "cannot start the picker thread: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Unix time in milliseconds, as the picker reads it for each decision.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Cheap to clone; every stream holds one.
#[derive(Clone, Debug)]
pub struct PickerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Decide { .. } => "Decide",
            Command::Finish { .. } => "Finish",
            Command::FirstToken { .. } => "FirstToken",
            Command::Move { .. } => "Move",
            Command::Answered { .. } => "Answered",
            Command::FirstByte { .. } => "FirstByte",
            Command::Sweep => "Sweep",
            Command::Poll => "Poll",
            Command::LeaseEnded(_) => "LeaseEnded",
        })
    }
}

impl PickerHandle {
    /// Builds the picker from `config` on its own thread (the core's picker is not `Send`: its
    /// plugins share the prefix index by `Rc`) and starts serving. It ends when every handle is dropped.
    pub fn spawn(
        config: GatewayConfig,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
    ) -> Result<PickerHandle, SpawnError> {
        PickerHandle::spawn_with_clock(config, pool, metrics, Arc::new(crate::unix_ms))
    }

    /// [`PickerHandle::spawn`] with the decision clock (unix ms) supplied: some plugins draw from the
    /// clock, so a test that compares decisions with another product must give both the same time.
    pub fn spawn_with_clock(
        config: GatewayConfig,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<PickerHandle, SpawnError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let flow_control = config.picker.flow_control.is_some();
        std::thread::Builder::new()
            .name("epp-picker".into())
            .spawn(move || {
                let mut picker = match EndpointPicker::new(config) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(SpawnError::Config(e)));
                        return;
                    }
                };
                for warning in picker.scheduler().warnings() {
                    log::warn!("configuration: {warning}");
                }
                picker.scheduler_mut().set_prefix_table_seed(table_seed());
                let _ = ready_tx.send(Ok(()));
                let mut worker = Worker {
                    picker,
                    pool,
                    metrics,
                    clock,
                    table: InFlightTable::default(),
                    working: None,
                    health_reported_ms: None,
                    tickets: 0,
                    waiting: HashMap::new(),
                    queued: None,
                    leases: HashMap::new(),
                };
                while let Some(cmd) = rx.blocking_recv() {
                    worker.handle(cmd);
                }
            })
            .map_err(SpawnError::Thread)?;
        // The sweep's clock: holds the channel weakly, so it stops once every handle is dropped.
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("epp-sweep".into())
            .spawn(move || loop {
                std::thread::sleep(SWEEP_EVERY);
                match weak.upgrade() {
                    Some(tx) if tx.send(Command::Sweep).is_ok() => {}
                    _ => return,
                }
            })
            .map_err(SpawnError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(SpawnError::Thread(std::io::Error::other(
                    "the picker thread exited while starting",
                )))
            }
        }
        if flow_control {
            let weak = tx.downgrade();
            std::thread::Builder::new()
                .name("epp-flow-tick".into())
                .spawn(move || loop {
                    std::thread::sleep(POLL_EVERY);
                    match weak.upgrade() {
                        Some(tx) if tx.send(Command::Poll).is_ok() => {}
                        _ => return,
                    }
                })
                .map_err(SpawnError::Thread)?;
        }
        Ok(PickerHandle { tx })
    }

    /// Decides for one request. If the picker thread is gone the answer is a 503, never a hang. A routed
    /// request comes with its ticket: the picker waits for its response headers until
    /// [`PickerHandle::first_byte`] (see `health.firstByteTimeoutMs`).
    ///
    /// With flow control on, the answer may wait while the request is queued; dropping this future (the
    /// client went away) takes the request out of the queue. A request that in-flight eviction may end
    /// is not evictable through this call (its lease ends at once): see [`PickerHandle::decide_leased`].
    pub async fn decide(&self, input: DecisionInput) -> (Outcome, Option<u64>) {
        let (outcome, ticket, _lease) = self.decide_leased(input).await;
        (outcome, ticket)
    }

    /// [`PickerHandle::decide`], with the request's [`Lease`] when flow control's in-flight eviction
    /// tracks it: hold it while the request is in flight (dropping it says the request ended) and
    /// answer the client with the reply that arrives on it, if one does.
    pub async fn decide_leased(&self, input: DecisionInput) -> (Outcome, Option<u64>, Option<Lease>) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Decide { input: Box::new(input), reply }).is_ok() {
            let mut wait = Waiting { rx, tx: &self.tx, done: false };
            if let Ok((outcome, ticket, lease)) = (&mut wait.rx).await {
                wait.done = true;
                let lease = lease.map(|(ticket, evicted)| Lease { ticket, evicted, tx: self.tx.clone() });
                return (outcome, ticket, lease);
            }
            wait.done = true;
        }
        let down = Outcome::Reply(Reply {
            status: 503,
            body: OpenAiError::service_unavailable("the endpoint picker is not running", Some("picker_down"))
                .body(),
            reason: "picker_down",
        });
        (down, None, None)
    }

    /// The response headers of the request decided under `ticket` came (`alive`: from the server it was
    /// sent to, status below 500), or its stream ended (`alive` false).
    pub fn first_byte(&self, ticket: u64, alive: bool) {
        let _ = self.tx.send(Command::FirstByte { ticket, alive });
    }

    /// The request routed to `address` ended, `awaiting` of its prompt tokens still awaiting a first
    /// token (0 once [`PickerHandle::first_token`] released them).
    pub fn finish(&self, address: &str, tokens: u64, awaiting: u64) {
        let _ = self.tx.send(Command::Finish { address: address.to_string(), tokens, awaiting });
    }

    /// The first token of a request routed to `address` came: its `prompt_tokens` no longer await it.
    pub fn first_token(&self, address: &str, prompt_tokens: u64) {
        let _ = self.tx.send(Command::FirstToken { address: address.to_string(), prompt_tokens });
    }

    /// `address` answered with `status` (the gateway's own 502/503/504 included).
    pub fn answered(&self, address: &str, status: u16) {
        let _ = self.tx.send(Command::Answered { address: address.to_string(), status });
    }

    /// The gateway served the request on `to` rather than `from` (`awaiting`: its prompt tokens still
    /// awaiting a first token, moved with it).
    pub fn moved(&self, from: &str, to: &str, tokens: u64, awaiting: u64) {
        let (from, to) = (from.to_string(), to.to_string());
        let _ = self.tx.send(Command::Move { from, to, tokens, awaiting });
    }
}

/// A decision being awaited. Dropped before its answer (the stream or HTTP request went away while it
/// was queued), it nudges the picker thread, which then sees the closed channel and cancels the ticket
/// at once rather than at the next tick.
struct Waiting<'a> {
    rx: oneshot::Receiver<Answer>,
    tx: &'a mpsc::UnboundedSender<Command>,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rx.close();
            let _ = self.tx.send(Command::Poll);
        }
    }
}

/// What the picker thread answers: the outcome, the health ticket of a routed request, and the lease
/// (ticket, where an eviction reply would come) when in-flight eviction tracks it.
type Answer = (Outcome, Option<u64>, Option<(Ticket, oneshot::Receiver<Reply>)>);

/// A request flow control tracks in flight for eviction. Dropping it tells the picker the request ended.
#[derive(Debug)]
pub struct Lease {
    ticket: Ticket,
    /// Eviction's reply (429), when it ends this request.
    pub evicted: oneshot::Receiver<Reply>,
    tx: mpsc::UnboundedSender<Command>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::LeaseEnded(self.ticket));
    }
}

/// A request waiting in flow control: what it gave to be decided, and where the answer goes.
struct Waiter {
    input: DecisionInput,
    reply: oneshot::Sender<Answer>,
}

/// The waiting requests, as the core asks for them at dispatch time.
struct Queue<'a>(&'a mut HashMap<Ticket, Waiter>);

impl WaitingRequests for Queue<'_> {
    fn with_request(&mut self, t: Ticket, f: &mut dyn FnMut(&RequestInfo<'_>, Option<&[u8]>)) -> bool {
        let Some(w) = self.0.get(&t) else { return false };
        let subset = w.input.facts.subset_refs();
        let info = w.input.facts.info(subset.as_deref());
        f(&info, w.input.body.as_deref());
        true
    }
}

/// A secret seed for the prefix index's table, new for every process: std keys each `RandomState` from
/// the OS random generator.
fn table_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u64)
}

struct Worker {
    picker: EndpointPicker,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    clock: Clock,
    table: InFlightTable,
    /// The published snapshot this thread last copied, with in-flight merged in on every pick.
    working: Option<PoolSnapshot>,
    /// When the endpoints' health was last given to the metrics (at most once a second, and on changes).
    health_reported_ms: Option<u64>,
    /// Routed requests so far: the next ticket.
    tickets: u64,
    /// Requests waiting in flow control, by ticket.
    waiting: HashMap<Ticket, Waiter>,
    /// The ticket [`Worker::decide`] just queued a request under.
    queued: Option<Ticket>,
    /// Requests in flight that eviction may end: where to send the reply.
    leases: HashMap<Ticket, oneshot::Sender<Reply>>,
}

impl Worker {
    /// Gives the metrics each endpoint's health (its verdict now), at most once a second unless it changed.
    /// The prefix index's sizes go with it (O(endpoints), no walk over the hashes).
    fn report_health(&mut self) {
        let now = (self.clock)();
        if self.health_reported_ms.is_some_and(|t| now.saturating_sub(t) < 1_000) {
            return;
        }
        self.metrics.set_prefix_index(self.picker.scheduler().prefix_usage());
        let Some(w) = &self.working else { return };
        self.health_reported_ms = Some(now);
        let health = self.picker.health();
        self.metrics
            .set_health(w.endpoints.iter().map(|e| (e.address().to_string(), health.verdict(e, now))));
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Decide { input, reply } => match self.decide(&input) {
                Some((outcome, lease)) => self.answer(outcome, lease, reply),
                None => {
                    if let Some(ticket) = self.queued.take() {
                        self.waiting.insert(ticket, Waiter { input: *input, reply });
                    }
                    self.metrics.set_flow_control(self.picker.flow_control());
                    return;
                }
            },
            Command::Poll => {
                self.poll();
                return;
            }
            Command::LeaseEnded(lease) => {
                self.leases.remove(&lease);
                self.picker.finished(lease, (self.clock)());
                return;
            }
            Command::FirstByte { ticket, alive } => {
                self.picker.health_mut().first_byte(ticket, alive);
                return;
            }
            Command::Sweep => {
                let now = (self.clock)();
                let late = self.picker.health_mut().sweep(self.working.as_ref(), now);
                if late == 0 {
                    // The in-flight table is as last published; health is refreshed (once a second),
                    // so the gauges stay true while no request comes.
                    self.report_health();
                    return;
                }
                self.metrics.record_first_byte_timeouts(late as u64);
                self.health_events();
            }
            Command::Finish { address, tokens, awaiting } => {
                self.table.finish(&address, tokens, awaiting);
                // A place may have freed: waiting requests go now, not at the next tick.
                if !self.waiting.is_empty() {
                    self.poll();
                }
            }
            Command::FirstToken { address, prompt_tokens } => self.table.first_token(&address, prompt_tokens),
            Command::Move { from, to, tokens, awaiting } => {
                self.table.finish(&from, tokens, awaiting);
                self.table.start(&to, tokens, awaiting);
            }
            Command::Answered { address, status } => {
                let now = (self.clock)();
                self.picker.record_upstream(&address, status, now);
                self.health_events();
            }
        }
        self.report_health();
        self.metrics.set_in_flight(self.table.iter().map(|(a, f)| (a.to_string(), f)));
        if self.picker.flow_control().is_some() {
            self.metrics.set_flow_control(self.picker.flow_control());
        }
    }

    /// Counts and logs what health learned.
    fn health_events(&mut self) {
        for event in self.picker.health_mut().take_events() {
            match event {
                HealthEvent::Ejected { address, for_ms } => {
                    log::warn!("endpoint {address} ejected for {for_ms} ms after failed requests");
                    self.metrics.record_ejection();
                }
                HealthEvent::Readmitted { address } => {
                    log::info!("endpoint {address} readmitted: a trial request succeeded");
                    self.metrics.record_readmission();
                }
            }
            self.health_reported_ms = None;
        }
    }

    /// The published snapshot, copied when it changed, with the gateway's in-flight counts merged in.
    fn refresh(&mut self) {
        let latest = self.pool.latest();
        let current = self.working.as_ref().map(|w| w.generation);
        if let Some(p) = &latest {
            if current != Some(p.snapshot.generation) {
                self.working = Some((*p.snapshot).clone());
            }
        }
        if let Some(w) = &mut self.working {
            for e in &mut w.endpoints {
                e.in_flight = self.table.get(&e.endpoint.address);
            }
        }
    }

    /// Decides now (`Some`: the outcome and the flow-control lease, if any), or queues the request
    /// (`None`: it waits in [`Worker::waiting`] once the caller stores it — see [`Worker::handle`]).
    fn decide(&mut self, input: &DecisionInput) -> Option<(Outcome, Option<Ticket>)> {
        let now = (self.clock)();
        self.refresh();
        let subset = input.facts.subset_refs();
        let info = input.facts.info(subset.as_deref());
        let started = Instant::now();
        // The id is never empty here: the stream generates one when the gateway sent none.
        let view = self.picker.view(self.working.as_ref(), false, now);
        let seed = request_seed(&input.facts.request_id);
        match self.picker.decide_or_queue(&info, input.body.as_deref(), view, now, seed) {
            Admission::Decided { outcome, lease } => {
                self.metrics.record_decision(&outcome, started.elapsed());
                Some((outcome, lease))
            }
            Admission::Queued(ticket) => {
                self.queued = Some(ticket);
                None
            }
        }
    }

    /// Sends a decision to whoever awaits it, counting a routed one in flight. If they are gone, the
    /// count and the health wait are undone at once (no stream is left to release them).
    fn answer(&mut self, outcome: Outcome, lease: Option<Ticket>, reply: oneshot::Sender<Answer>) {
        let now = (self.clock)();
        let lease = lease.map(|l| {
            let (tx, rx) = oneshot::channel();
            self.leases.insert(l, tx);
            (l, rx)
        });
        let leased = lease.as_ref().map(|(l, _)| *l);
        let mut ticket = None;
        let mut counted = None;
        if let Outcome::Route(r) | Outcome::FailOpen { route: Some(r), .. } = &outcome {
            self.table.start(&r.destination, r.estimated_tokens, r.prompt_tokens);
            self.tickets = self.tickets.wrapping_add(1);
            self.picker.health_mut().sent(self.tickets, &r.destination, r.streaming, now);
            ticket = Some(self.tickets);
            counted = Some((r.destination.clone(), r.estimated_tokens, r.prompt_tokens));
        }
        if reply.send((outcome, ticket, lease)).is_err() {
            // The stream is gone: nobody will report its headers or its end.
            if let Some(l) = leased {
                self.leases.remove(&l);
                self.picker.finished(l, now);
            }
            if let Some(t) = ticket {
                self.picker.health_mut().first_byte(t, false);
            }
            if let Some((address, tokens, awaiting)) = counted {
                self.table.finish(&address, tokens, awaiting);
            }
        }
    }

    /// Flow control's turn: cancels the requests whose stream went away, then lets the core answer
    /// expired requests and dispatch while there is room.
    fn poll(&mut self) {
        let now = (self.clock)();
        let gone: Vec<Ticket> =
            self.waiting.iter().filter(|(_, w)| w.reply.is_closed()).map(|(t, _)| *t).collect();
        for t in gone {
            self.waiting.remove(&t);
            self.picker.cancel(t, now);
        }
        if self.picker.flow_control().is_some_and(|f| !f.is_empty()) {
            self.refresh();
            let mut queue = Queue(&mut self.waiting);
            let poll = self.picker.poll(self.working.as_mut(), false, now, &mut queue);
            // The gauges say what the queue holds before anyone waiting hears its answer.
            self.metrics.set_flow_control(self.picker.flow_control());
            for settled in poll.settled {
                let Some(w) = self.waiting.remove(&settled.ticket) else { continue };
                self.metrics.record_queued_decision(&settled.outcome);
                self.answer(settled.outcome, settled.lease, w.reply);
            }
            for revoked in poll.revoked {
                // The stream answers the client and Envoy drops the upstream request; its lease ends
                // with the stream, which confirms the eviction.
                if let Some(tx) = self.leases.remove(&revoked.lease) {
                    let _ = tx.send(revoked.reply);
                }
            }
        }
        self.metrics.set_flow_control(self.picker.flow_control());
        self.metrics.set_in_flight(self.table.iter().map(|(a, f)| (a.to_string(), f)));
    }
}
