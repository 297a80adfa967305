//! The discrete-event loop: one trace, N simulated replicas, the policy at every decision point, all in
//! virtual time.
//!
//! What a decision point sees is what one worker of a gateway sees: metrics from its gateway's scrape
//! every `scrape_interval_ms` (the values at scrape time, stamped with it), its own in-flight counts,
//! incremented when it routes a request (with the picker's token estimate) and decremented when the
//! response ends, and its sibling workers' counts `topology.inflight_delay_us` late. A sibling's routed
//! prefix reaches it `topology.prefix_delay_us` after the decision ([`Policy::on_peer_routed`]).
//! Gateway replicas share nothing: each scrapes on its own phase. With one gateway of one worker (the
//! default) this is exactly the single-gateway loop the suite always ran.

use crate::policy::{Admission, GatewayRequest, Policy, Release};
use crate::topology::{Connections, Pods, Topology};
use crate::workload::{Arrival, BYTES_PER_TOKEN};
use model_sim::{Engine, EngineConfig, EngineMetrics, Event, EventKind, Prompt, Request, StepModel};
use scheduler_core::model::{Endpoint, EndpointState, InFlight, Metrics, PoolSnapshot};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::rc::Rc;

/// Shape of the simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub replicas: usize,
    pub engine: EngineConfig,
    pub scrape_interval_ms: u64,
    /// Gateway replicas × workers and the client connections (default 1 × 1).
    pub topology: Topology,
    /// Replica speeds and slow-down windows (default: all calibrated).
    pub pods: Pods,
}

impl SimConfig {
    pub fn h100(replicas: usize) -> SimConfig {
        SimConfig {
            replicas,
            engine: EngineConfig { emit_token_events: false, ..EngineConfig::h100_llama3_8b() },
            scrape_interval_ms: 50,
            topology: Topology::default(),
            pods: Pods::default(),
        }
    }

    /// GIE's benchmark replica as far as the calibration allows: H100 step times, but Llama-2-7B's
    /// multi-head KV (4× Llama-3-8B's bytes per token): ≈110k tokens of KV and a 4× context term.
    pub fn h100_llama2_7b_kv(replicas: usize) -> SimConfig {
        let mut cfg = SimConfig::h100(replicas);
        cfg.engine.num_gpu_blocks = 6875;
        if let StepModel::Linear { per_context_ms, .. } = &mut cfg.engine.step_model {
            *per_context_ms *= 4.0;
        }
        cfg
    }

    /// KV tokens of the whole cluster.
    pub fn cluster_kv_tokens(&self) -> u64 {
        self.replicas as u64 * u64::from(self.engine.num_gpu_blocks) * u64::from(self.engine.block_size)
    }
}

/// What happened to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestRecord {
    pub arrival_us: u64,
    /// `None` when the policy rejected the request.
    pub endpoint: Option<usize>,
    pub first_token_us: Option<u64>,
    pub finish_us: Option<u64>,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub cached_tokens: u32,
    pub preemptions: u32,
    /// When the gateway held the request in its flow-control queue (`None`: decided on arrival).
    pub queued_us: Option<u64>,
    /// When a held request left the gateway's queue for its endpoint.
    pub dispatched_us: Option<u64>,
    /// When the gateway answered the request itself instead of routing it (429, 503, ...).
    pub rejected_us: Option<u64>,
    /// The status of that answer.
    pub reject_status: Option<u16>,
}

impl RequestRecord {
    pub fn ttft_ms(&self) -> Option<f64> {
        Some(self.first_token_us?.checked_sub(self.arrival_us)? as f64 / 1000.0)
    }

    pub fn e2e_ms(&self) -> Option<f64> {
        Some(self.finish_us?.checked_sub(self.arrival_us)? as f64 / 1000.0)
    }

    /// End-to-end latency per output token (GIE's "per output token latency").
    pub fn ntpot_ms(&self) -> Option<f64> {
        Some(self.e2e_ms()? / f64::from(self.output_tokens.max(1)))
    }

    /// Time per output token after the first.
    pub fn tpot_ms(&self) -> Option<f64> {
        if self.output_tokens < 2 {
            return None;
        }
        Some((self.e2e_ms()? - self.ttft_ms()?) / f64::from(self.output_tokens - 1))
    }
}

/// A run's outcome, one record per trace entry (indexed by request id).
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub records: Vec<RequestRecord>,
    /// Last finish time (µs from the start of the trace).
    pub makespan_us: u64,
    /// Requests routed to each replica.
    pub per_replica: Vec<u64>,
}

/// A run that could not be completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    BadEngineConfig(String),
    /// The engine refused a request (e.g. too long for one replica's KV).
    Refused {
        id: u64,
        reason: String,
    },
    /// The policy returned an endpoint index outside the pool.
    BadPick {
        id: u64,
        index: usize,
        replicas: usize,
    },
    /// Neither one policy nor one per decision point of the topology.
    BadTopology {
        policies: usize,
        decision_points: usize,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::BadEngineConfig(e) => write!(f, "simulated replica: {e}"),
            SimError::Refused { id, reason } => write!(f, "request {id} refused by the replica: {reason}"),
            SimError::BadPick { id, index, replicas } => {
                write!(f, "request {id}: policy picked endpoint {index}, expected an index below {replicas}")
            }
            SimError::BadTopology { policies, decision_points } => write!(
                f,
                "{policies} policies for {decision_points} decision points: expected one per decision point, or one"
            ),
        }
    }
}

impl std::error::Error for SimError {}

/// `ip:port` of replica `i`; ports keep the address order equal to the index order.
pub fn replica_address(i: usize) -> String {
    format!("10.0.0.1:{}", 8100 + i)
}

fn to_metrics(m: &EngineMetrics, now_ms: u64) -> Metrics {
    Metrics {
        waiting: u32::try_from(m.num_requests_waiting).unwrap_or(u32::MAX),
        running: u32::try_from(m.num_requests_running).unwrap_or(u32::MAX),
        kv_usage: m.kv_cache_usage,
        running_loras: m.running_lora_adapters.iter().map(|&a| crate::workload::lora_name(a)).collect(),
        waiting_loras: m.waiting_lora_adapters.iter().map(|&a| crate::workload::lora_name(a)).collect(),
        max_lora: Some(m.max_lora),
        block_size: Some(m.block_size),
        num_gpu_blocks: Some(m.num_gpu_blocks),
        updated_at_ms: now_ms,
    }
}

/// Per-request bookkeeping the loop needs until the response ends.
#[derive(Clone, Copy, Default)]
struct Pending {
    decision_point: usize,
    endpoint: usize,
    estimated_tokens: u64,
    /// Prompt tokens awaiting the first token (0 once it came).
    awaiting: u64,
}

/// A change to one endpoint's gateway in-flight count, as the filter makes it. Every simulated client
/// streams, so the first token is the response's first body chunk, where the filter releases the
/// prompt tokens awaiting it.
#[derive(Clone, Copy, Debug)]
enum Change {
    Routed { tokens: u64, prompt_tokens: u64 },
    FirstToken { prompt_tokens: u64 },
    Finished { tokens: u64, awaiting: u64 },
}

impl Change {
    fn apply(self, f: &mut InFlight) {
        match self {
            Change::Routed { tokens, prompt_tokens } => {
                f.add(tokens);
                f.await_first_token(prompt_tokens);
            }
            Change::FirstToken { prompt_tokens } => f.first_token(prompt_tokens),
            Change::Finished { tokens, awaiting } => {
                f.remove(tokens);
                f.first_token(awaiting);
            }
        }
    }
}

/// Something that happens later than the moment it was decided.
enum Deferred {
    /// A decision point learns of a sibling's in-flight change.
    InFlight { decision_point: usize, endpoint: usize, change: Change },
    /// A decision point learns of a sibling's routed prefix.
    PeerRouted { decision_point: usize, endpoint: usize, hashes: Rc<Vec<u64>> },
    /// A request leaves the gateway for its endpoint after an ext_proc round trip.
    Submit { endpoint: usize, request: Request },
    /// A replica's noisy neighbour arrives (factor > 1) or leaves (1).
    Slowdown { replica: usize, factor: f64 },
}

struct Queued {
    at: u64,
    seq: u64,
    what: Deferred,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Queued) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Queued) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Queued) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Deferred work in time order (equal times in the order they were queued).
#[derive(Default)]
struct Later {
    heap: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    /// Submits waiting: the run is not over while there are any.
    submits: usize,
}

impl Later {
    fn push(&mut self, at: u64, what: Deferred) {
        if matches!(what, Deferred::Submit { .. }) {
            self.submits += 1;
        }
        self.seq += 1;
        self.heap.push(Reverse(Queued { at, seq: self.seq, what }));
    }

    fn next_time(&self) -> Option<u64> {
        self.heap.peek().map(|q| q.0.at)
    }

    fn pop(&mut self) -> Option<Queued> {
        let q = self.heap.pop()?.0;
        if matches!(q.what, Deferred::Submit { .. }) {
            self.submits -= 1;
        }
        Some(q)
    }
}

/// Who decides where: decision points are numbered gateway-major (dp / workers is the gateway);
/// `siblings[dp]` are the other decision points of dp's gateway.
struct Layout {
    siblings: Vec<Vec<usize>>,
    /// Decision points of each gateway.
    members: Vec<Vec<usize>>,
}

impl Layout {
    fn new(topology: &Topology, decision_points: usize) -> Result<Layout, SimError> {
        let (gateways, workers) = if decision_points == 1 {
            (1, 1)
        } else if decision_points == topology.decision_points() {
            (topology.gateways, topology.workers)
        } else {
            return Err(SimError::BadTopology {
                policies: decision_points,
                decision_points: topology.decision_points(),
            });
        };
        let members: Vec<Vec<usize>> =
            (0..gateways).map(|g| (g * workers..(g + 1) * workers).collect()).collect();
        let siblings = (0..gateways * workers)
            .map(|dp| {
                let gateway = members.get(dp / workers).map_or(&[][..], Vec::as_slice);
                gateway.iter().copied().filter(|&s| s != dp).collect()
            })
            .collect();
        Ok(Layout { siblings, members })
    }

    fn siblings(&self, dp: usize) -> &[usize] {
        self.siblings.get(dp).map_or(&[], Vec::as_slice)
    }
}

/// Replays `trace` through one `policy` on a fresh cluster: a single decision point that every client
/// connection reaches, whatever `cfg.topology` says. Every routed request runs to completion.
pub fn run(trace: &[Arrival], policy: &mut dyn Policy, cfg: &SimConfig) -> Result<RunResult, SimError> {
    run_decision_points(trace, &mut [policy], cfg)
}

/// [`run_decision_points`] for policies as [`crate::policy::PolicyKind::build_decision_points`] builds them.
pub fn run_boxed(
    trace: &[Arrival],
    policies: &mut [Box<dyn Policy>],
    cfg: &SimConfig,
) -> Result<RunResult, SimError> {
    let mut refs: Vec<&mut dyn Policy> = Vec::with_capacity(policies.len());
    for p in policies.iter_mut() {
        refs.push(p.as_mut());
    }
    run_decision_points(trace, &mut refs, cfg)
}

/// Replays `trace` through `policies`, one per decision point of `cfg.topology` (gateway-major: the
/// workers of gateway 0, then of gateway 1, ...), or a single one that every connection reaches.
pub fn run_decision_points(
    trace: &[Arrival],
    policies: &mut [&mut dyn Policy],
    cfg: &SimConfig,
) -> Result<RunResult, SimError> {
    let layout = Layout::new(&cfg.topology, policies.len())?;
    let mut connections = Connections::new(&cfg.topology, policies.len());
    let mut engines = Vec::with_capacity(cfg.replicas);
    for i in 0..cfg.replicas {
        let engine_cfg = EngineConfig {
            seed: cfg.engine.seed ^ i as u64,
            speed: cfg.engine.speed * cfg.pods.speed(i),
            ..cfg.engine.clone()
        };
        engines.push(Engine::new(engine_cfg).map_err(|e| SimError::BadEngineConfig(e.to_string()))?);
    }
    let empty_pool = PoolSnapshot {
        pool: String::from("bench"),
        endpoints: (0..cfg.replicas).map(|i| EndpointState::new(Endpoint::new(replica_address(i)))).collect(),
        ..PoolSnapshot::default()
    };
    let mut pools: Vec<PoolSnapshot> = vec![empty_pool; policies.len()];
    let mut records: Vec<RequestRecord> = trace
        .iter()
        .map(|a| RequestRecord {
            arrival_us: a.at_us,
            prompt_tokens: a.prompt_tokens(),
            output_tokens: a.output_tokens,
            ..RequestRecord::default()
        })
        .collect();
    let mut pending: Vec<Pending> = vec![Pending::default(); trace.len()];
    let mut per_replica = vec![0u64; cfg.replicas];
    let scrape_us = cfg.scrape_interval_ms.max(1) * 1000;
    let mut next_scrape = cfg.topology.scrape_phases(layout.members.len(), scrape_us);
    let mut later = Later::default();
    for w in &cfg.pods.windows {
        later.push(w.start_us, Deferred::Slowdown { replica: w.replica, factor: w.factor });
        later.push(w.end_us, Deferred::Slowdown { replica: w.replica, factor: 1.0 });
    }
    let mut next_arrival = 0usize;
    let mut events: Vec<Event> = Vec::new();
    let mut makespan = 0u64;
    let inflight_delay = cfg.topology.inflight_delay_us;
    // Held requests: each one's client connection, the decision points a finish just woke, the next
    // tick of the decision points' queues (`None` while none holds anything).
    let mut connection_of = vec![0usize; trace.len()];
    let mut woken: Vec<usize> = Vec::new();
    let mut released: Vec<Release> = Vec::new();
    let mut next_tick: Option<u64> = None;
    let mut last_t = 0u64;

    loop {
        if !woken.is_empty() {
            // A request finished: its decision point may dispatch what it holds, at the same instant.
            let mut dps = std::mem::take(&mut woken);
            dps.sort_unstable();
            dps.dedup();
            let now = last_t;
            let mut gw = Gateway {
                engines: &mut engines,
                pools: &mut pools,
                later: &mut later,
                layout: &layout,
                pending: &mut pending,
                records: &mut records,
                per_replica: &mut per_replica,
                cfg,
            };
            gw.poll(dps, now, trace, &connection_of, policies, &mut released)?;
        }
        let engine_next =
            engines.iter().enumerate().filter_map(|(i, e)| Some((e.next_event_time()?, i))).min();
        let arrival_at = trace.get(next_arrival).map(|a| a.at_us);
        let holding = policies.iter().any(|p| p.holding() > 0);
        if !holding {
            next_tick = None;
        }
        if engine_next.is_none() && arrival_at.is_none() && later.submits == 0 && !holding {
            break;
        }
        let scrape = next_scrape.iter().enumerate().map(|(g, &t)| (t, g)).min();
        let t =
            [engine_next.map(|(t, _)| t), arrival_at, scrape.map(|(t, _)| t), later.next_time(), next_tick]
                .into_iter()
                .flatten()
                .min();
        let Some(t) = t else { break };
        last_t = t;
        let mut done = Done {
            records: &mut records,
            pending: &mut pending,
            pools: &mut pools,
            layout: &layout,
            woken: &mut woken,
        };
        if let Some((te, i)) = engine_next.filter(|&(te, _)| te == t) {
            if let Some(e) = engines.get_mut(i) {
                events.clear();
                e.advance(te, &mut events);
            }
            done.settle(&events, i, policies, &mut later, inflight_delay, &mut makespan);
            continue;
        }
        if let Some((_, g)) = scrape.filter(|&(ts, _)| ts == t) {
            for (i, e) in engines.iter_mut().enumerate() {
                events.clear();
                e.advance(t, &mut events);
                done.settle(&events, i, policies, &mut later, inflight_delay, &mut makespan);
            }
            let now_ms = t / 1000;
            for &dp in layout.members.get(g).map_or(&[][..], Vec::as_slice) {
                let Some(pool) = pools.get_mut(dp) else { continue };
                for (i, (state, e)) in pool.endpoints.iter_mut().zip(&engines).enumerate() {
                    if cfg.pods.scrape_lost(i, t) {
                        // The last good metrics stay, aging; the collector counts the failure.
                        state.consecutive_scrape_failures =
                            state.consecutive_scrape_failures.saturating_add(1);
                        continue;
                    }
                    state.consecutive_scrape_failures = 0;
                    state.metrics = Some(to_metrics(&e.metrics(), now_ms));
                }
                pool.generation += 1;
                pool.published_at_ms = now_ms;
            }
            if let Some(n) = next_scrape.get_mut(g) {
                *n += scrape_us;
            }
            continue;
        }
        if next_tick == Some(t) {
            let holders: Vec<usize> =
                policies.iter().enumerate().filter(|(_, p)| p.holding() > 0).map(|(dp, _)| dp).collect();
            let mut gw = Gateway {
                engines: &mut engines,
                pools: &mut pools,
                later: &mut later,
                layout: &layout,
                pending: &mut pending,
                records: &mut records,
                per_replica: &mut per_replica,
                cfg,
            };
            gw.poll(holders, t, trace, &connection_of, policies, &mut released)?;
            next_tick = tick_after(policies, t);
            continue;
        }
        if later.next_time() == Some(t) {
            let Some(q) = later.pop() else { break };
            match q.what {
                Deferred::InFlight { decision_point, endpoint, change } => {
                    if let Some(s) = pools.get_mut(decision_point).and_then(|p| p.endpoints.get_mut(endpoint))
                    {
                        change.apply(&mut s.in_flight);
                    }
                }
                Deferred::PeerRouted { decision_point, endpoint, hashes } => {
                    if let (Some(p), Some(pool)) =
                        (policies.get_mut(decision_point), pools.get(decision_point))
                    {
                        p.on_peer_routed(endpoint, &hashes, pool);
                    }
                }
                Deferred::Submit { endpoint, request } => {
                    let id = request.id;
                    if let Some(e) = engines.get_mut(endpoint) {
                        e.submit(request, t).map_err(|e| SimError::Refused { id, reason: e.to_string() })?;
                    }
                }
                Deferred::Slowdown { replica, factor } => {
                    if let Some(e) = engines.get_mut(replica) {
                        e.set_slowdown(factor);
                    }
                }
            }
            continue;
        }
        let Some(a) = trace.get(next_arrival) else { break };
        next_arrival += 1;
        let (connection, dp) = connections.next_request();
        if let Some(c) = connection_of.get_mut(a.id as usize) {
            *c = connection;
        }
        let parts = Parts::of(a, connection);
        let (Some(policy), Some(pool)) = (policies.get_mut(dp), pools.get(dp)) else { continue };
        let admission = policy.admit(&parts.gateway_request(), pool, t / 1000);
        let mut gw = Gateway {
            engines: &mut engines,
            pools: &mut pools,
            later: &mut later,
            layout: &layout,
            pending: &mut pending,
            records: &mut records,
            per_replica: &mut per_replica,
            cfg,
        };
        match admission {
            Admission::Route(pick) => gw.route(&parts, dp, pick, t, policies)?,
            Admission::Reject(status) => gw.reject(a.id, status, t),
            Admission::Hold => {
                if let Some(r) = gw.records.get_mut(a.id as usize) {
                    r.queued_us = Some(t);
                }
                if next_tick.is_none() {
                    next_tick = tick_after(policies, t);
                }
            }
        }
    }
    Ok(RunResult { records, makespan_us: makespan, per_replica })
}

/// The first tick after `t` of the decision points that hold requests (one tick period for all: the
/// smallest any of them asks for).
fn tick_after(policies: &[&mut dyn Policy], t: u64) -> Option<u64> {
    let period = policies.iter().filter_map(|p| p.tick_interval_us()).min()?.max(1);
    Some((t / period + 1) * period)
}

/// What the gateway sends for one trace entry.
struct Parts<'a> {
    a: &'a Arrival,
    /// The client connection it came on.
    connection: usize,
    text: String,
    model: String,
    request_id: String,
    body: String,
    /// The scorers' prompt estimate (`SchedulingRequest::estimated_input_tokens`).
    prompt_tokens: u64,
    estimated_tokens: u64,
}

impl<'a> Parts<'a> {
    fn of(a: &'a Arrival, connection: usize) -> Parts<'a> {
        let text = a.prompt_text();
        let model = a.model();
        let request_id = format!("req-{}", a.id);
        let body = format!(r#"{{"model":"{model}","prompt":"{text}","max_tokens":{}}}"#, a.output_tokens);
        let prompt_tokens = (text.len() as u64).div_ceil(BYTES_PER_TOKEN as u64);
        let estimated_tokens = prompt_tokens + u64::from(a.output_tokens);
        Parts { a, connection, text, model, request_id, body, prompt_tokens, estimated_tokens }
    }

    fn gateway_request(&self) -> GatewayRequest<'_> {
        let (a, connection) = (self.a, self.connection);
        GatewayRequest {
            id: a.id,
            connection,
            request_id: &self.request_id,
            model: &self.model,
            prompt: &self.text,
            body: self.body.as_bytes(),
            max_tokens: a.output_tokens,
            estimated_tokens: self.estimated_tokens,
            objective: a.class.map(|c| c.band.objective()),
            fairness_id: a.class.map(|c| c.tenant_name()),
        }
    }
}

/// The cluster as the request path changes it: routing a request to a replica, or answering it.
struct Gateway<'a> {
    engines: &'a mut Vec<Engine>,
    pools: &'a mut Vec<PoolSnapshot>,
    later: &'a mut Later,
    layout: &'a Layout,
    pending: &'a mut Vec<Pending>,
    records: &'a mut Vec<RequestRecord>,
    per_replica: &'a mut Vec<u64>,
    cfg: &'a SimConfig,
}

impl Gateway<'_> {
    fn reject(&mut self, id: u64, status: u16, t: u64) {
        if let Some(r) = self.records.get_mut(id as usize) {
            r.rejected_us = Some(t);
            r.reject_status = Some(status);
        }
    }

    /// Ends routed request `id` at `t` (in-flight eviction): the replica drops it, the gateway's
    /// in-flight counts release it as if it had finished, and its decision point hears that it ended.
    /// Nothing happens to a request that already finished.
    fn abort(&mut self, id: u64, status: u16, t: u64, policies: &mut [&mut dyn Policy]) {
        let Some(r) = self.records.get(id as usize) else { return };
        if r.finish_us.is_some() || r.rejected_us.is_some() {
            return;
        }
        let Some(p) = self.pending.get_mut(id as usize) else { return };
        let dropped = self.engines.get_mut(p.endpoint).is_some_and(|e| e.abort(id));
        if !dropped {
            return;
        }
        let awaiting = std::mem::take(&mut p.awaiting);
        let p = *p;
        let change = Change::Finished { tokens: p.estimated_tokens, awaiting };
        spread(self.pools, self.layout, p, change, t, self.later, self.cfg.topology.inflight_delay_us);
        self.reject(id, status, t);
        if let Some(policy) = policies.get_mut(p.decision_point) {
            policy.on_finish(p.endpoint, id);
        }
    }

    /// Sends request `a`, decided at decision point `dp` at `t`, to replica `pick`: the decision point's
    /// in-flight count at once, its siblings' (and their prefix indexes) late, the replica after the
    /// policy's decision latency.
    fn route(
        &mut self,
        parts: &Parts<'_>,
        dp: usize,
        pick: usize,
        t: u64,
        policies: &mut [&mut dyn Policy],
    ) -> Result<(), SimError> {
        let a = parts.a;
        if pick >= self.engines.len() {
            return Err(SimError::BadPick { id: a.id, index: pick, replicas: self.engines.len() });
        }
        let Some(policy) = policies.get_mut(dp) else { return Ok(()) };
        let siblings = self.layout.siblings(dp);
        let (inflight_delay, prefix_delay) =
            (self.cfg.topology.inflight_delay_us, self.cfg.topology.prefix_delay_us);
        if let Some(hashes) = policy.take_routed_prefix().filter(|_| !siblings.is_empty()) {
            let hashes = Rc::new(hashes);
            for &s in siblings {
                let what =
                    Deferred::PeerRouted { decision_point: s, endpoint: pick, hashes: Rc::clone(&hashes) };
                self.later.push(t + prefix_delay, what);
            }
        }
        let prompt_tokens = policy.take_routed_prompt_tokens(a.id).unwrap_or(parts.prompt_tokens);
        let hop = policy.decision_latency_us(&parts.gateway_request());
        let prompt = Prompt::from_text(&parts.text, self.cfg.engine.block_size);
        let engine_req = Request { id: a.id, prompt, max_tokens: a.output_tokens, lora: a.lora };
        if hop > 0 {
            self.later.push(t + hop, Deferred::Submit { endpoint: pick, request: engine_req });
        } else if let Some(e) = self.engines.get_mut(pick) {
            e.submit(engine_req, t).map_err(|e| SimError::Refused { id: a.id, reason: e.to_string() })?;
        }
        let estimated_tokens = parts.estimated_tokens;
        let change = Change::Routed { tokens: estimated_tokens, prompt_tokens };
        if let Some(state) = self.pools.get_mut(dp).and_then(|p| p.endpoints.get_mut(pick)) {
            change.apply(&mut state.in_flight);
        }
        for &s in siblings {
            self.later
                .push(t + inflight_delay, Deferred::InFlight { decision_point: s, endpoint: pick, change });
        }
        if let Some(p) = self.pending.get_mut(a.id as usize) {
            *p = Pending { decision_point: dp, endpoint: pick, estimated_tokens, awaiting: prompt_tokens };
        }
        if let Some(r) = self.records.get_mut(a.id as usize) {
            r.endpoint = Some(pick);
            if r.queued_us.is_some() {
                r.dispatched_us = Some(t);
            }
        }
        if let Some(n) = self.per_replica.get_mut(pick) {
            *n += 1;
        }
        Ok(())
    }

    /// Asks every decision point in `dps` for the requests it releases from its queue at `t`, and
    /// routes or answers them.
    fn poll(
        &mut self,
        dps: impl IntoIterator<Item = usize>,
        t: u64,
        trace: &[Arrival],
        connection_of: &[usize],
        policies: &mut [&mut dyn Policy],
        released: &mut Vec<Release>,
    ) -> Result<(), SimError> {
        for dp in dps {
            released.clear();
            let (Some(policy), Some(pool)) = (policies.get_mut(dp), self.pools.get(dp)) else { continue };
            if policy.holding() == 0 {
                continue;
            }
            policy.poll(pool, t / 1000, released);
            for r in std::mem::take(released) {
                match r {
                    Release::Reject { id, status } => self.reject(id, status, t),
                    Release::Abort { id, status } => self.abort(id, status, t, policies),
                    Release::Route { id, endpoint } => {
                        let Some(a) = trace.get(id as usize) else { continue };
                        let connection = connection_of.get(id as usize).copied().unwrap_or(0);
                        self.route(&Parts::of(a, connection), dp, endpoint, t, policies)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the response path updates: latencies, and the in-flight counts of the decision point that
/// routed the request (at once) and of its siblings (late).
struct Done<'a> {
    records: &'a mut [RequestRecord],
    pending: &'a mut [Pending],
    pools: &'a mut [PoolSnapshot],
    layout: &'a Layout,
    /// Decision points whose requests finished (they may dispatch what they hold).
    woken: &'a mut Vec<usize>,
}

/// Applies `change` to the count of `p`'s endpoint at the decision point that routed `p` at once, and
/// at its siblings `inflight_delay` after `at`.
fn spread(
    pools: &mut [PoolSnapshot],
    layout: &Layout,
    p: Pending,
    change: Change,
    at: u64,
    later: &mut Later,
    inflight_delay: u64,
) {
    let own = pools.get_mut(p.decision_point).and_then(|pool| pool.endpoints.get_mut(p.endpoint));
    if let Some(state) = own {
        change.apply(&mut state.in_flight);
    }
    for &s in layout.siblings(p.decision_point) {
        let what = Deferred::InFlight { decision_point: s, endpoint: p.endpoint, change };
        later.push(at + inflight_delay, what);
    }
}

impl Done<'_> {
    /// Applies one replica's events.
    fn settle(
        &mut self,
        events: &[Event],
        replica: usize,
        policies: &mut [&mut dyn Policy],
        later: &mut Later,
        inflight_delay: u64,
        makespan: &mut u64,
    ) {
        for ev in events {
            let Some(r) = self.records.get_mut(ev.id as usize) else { continue };
            let Some(pending) = self.pending.get_mut(ev.id as usize) else { continue };
            let p = *pending;
            match ev.kind {
                EventKind::FirstToken => {
                    r.first_token_us = Some(ev.time_us);
                    let prompt_tokens = std::mem::take(&mut pending.awaiting);
                    let change = Change::FirstToken { prompt_tokens };
                    spread(self.pools, self.layout, p, change, ev.time_us, later, inflight_delay);
                    if let Some(policy) = policies.get_mut(p.decision_point) {
                        policy.on_first_token(replica, ev.id);
                    }
                }
                EventKind::Finished(usage) => {
                    r.finish_us = Some(ev.time_us);
                    r.cached_tokens = usage.cached_prompt_tokens;
                    *makespan = (*makespan).max(ev.time_us);
                    // A request that ends without a first token releases its prompt here.
                    let awaiting = std::mem::take(&mut pending.awaiting);
                    let change = Change::Finished { tokens: p.estimated_tokens, awaiting };
                    spread(self.pools, self.layout, p, change, ev.time_us, later, inflight_delay);
                    if let Some(policy) = policies.get_mut(p.decision_point) {
                        policy.on_finish(replica, ev.id);
                    }
                    self.woken.push(p.decision_point);
                }
                EventKind::Preempted => r.preemptions += 1,
                EventKind::Token => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyKind;
    use crate::topology::Topology;
    use crate::workload::{generate, SharedPrefixShape, TraceSpec, WorkloadKind};

    fn small_cluster() -> SimConfig {
        // Small KV so that the tests exercise preemption and queueing in debug builds.
        let mut cfg = SimConfig::h100(3);
        cfg.engine.num_gpu_blocks = 2000;
        cfg
    }

    fn trace(kind: WorkloadKind, qps: f64, n: usize, seed: u64) -> Vec<Arrival> {
        let shape = SharedPrefixShape {
            groups: 6,
            prompts_per_group: 3,
            system_tokens: 600,
            question_tokens: 100,
            output_tokens: 50,
        };
        generate(&TraceSpec { kind, qps, requests: n, seed, shared_prefix: shape })
    }

    #[test]
    fn every_request_finishes_exactly_once_for_every_policy() {
        let t = trace(WorkloadKind::ShareGpt, 60.0, 300, 1);
        for kind in PolicyKind::ALL {
            let mut p = kind.build(3).unwrap();
            let r = run(&t, p.as_mut(), &small_cluster()).unwrap();
            assert_eq!(r.records.len(), t.len());
            for (rec, a) in r.records.iter().zip(&t) {
                assert!(rec.endpoint.is_some(), "{kind:?} dropped request {}", a.id);
                let (ttft, e2e) = (rec.ttft_ms().unwrap(), rec.e2e_ms().unwrap());
                assert!(ttft > 0.0 && e2e >= ttft, "{kind:?} request {}: ttft {ttft} e2e {e2e}", a.id);
            }
            assert_eq!(r.per_replica.iter().sum::<u64>(), t.len() as u64);
            assert!(r.makespan_us >= t.last().unwrap().at_us);
        }
    }

    #[test]
    fn in_flight_returns_to_zero_and_finishes_are_not_double_counted() {
        // A policy that records every finish it is told about.
        struct Counting {
            inner: Box<dyn Policy>,
            finishes: Vec<u64>,
            max_in_flight: u32,
            last_pool_in_flight: u32,
            max_awaiting: u64,
        }
        impl Policy for Counting {
            fn pick(&mut self, r: &GatewayRequest<'_>, pool: &PoolSnapshot, now: u64) -> Option<usize> {
                let total: u32 = pool.endpoints.iter().map(|e| e.in_flight.requests).sum();
                self.max_in_flight = self.max_in_flight.max(total);
                self.last_pool_in_flight = total;
                let awaiting: u64 = pool.endpoints.iter().map(|e| e.in_flight.awaiting_first_token).sum();
                let tokens: u64 = pool.endpoints.iter().map(|e| e.in_flight.tokens).sum();
                assert!(awaiting <= tokens, "awaiting {awaiting} of {tokens} in-flight tokens");
                self.max_awaiting = self.max_awaiting.max(awaiting);
                self.inner.pick(r, pool, now)
            }
            fn on_finish(&mut self, _: usize, id: u64) {
                self.finishes.push(id);
            }
        }
        let t = trace(WorkloadKind::Bursty, 80.0, 400, 2);
        let mut p = Counting {
            inner: PolicyKind::Random.build(1).unwrap(),
            finishes: vec![],
            max_in_flight: 0,
            last_pool_in_flight: 0,
            max_awaiting: 0,
        };
        run(&t, &mut p, &small_cluster()).unwrap();
        let mut ids = p.finishes.clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), t.len());
        assert_eq!(p.finishes.len(), t.len());
        // Under a burst the gateway really had many requests in flight at once.
        assert!(p.max_in_flight > 10, "{}", p.max_in_flight);
        assert!(p.max_awaiting > 0, "prompts awaiting their first token were counted");
    }

    /// Holds every request and lets at most `limit` be in flight, oldest first; a request that waited
    /// longer than `ttl_ms` is answered 503 instead.
    struct Gate {
        inner: Box<dyn Policy>,
        limit: usize,
        ttl_ms: u64,
        queue: std::collections::VecDeque<(u64, u64, Vec<u8>)>,
        in_flight: usize,
        max_in_flight: usize,
        polls: usize,
    }

    impl Policy for Gate {
        fn pick(&mut self, _: &GatewayRequest<'_>, _: &PoolSnapshot, _: u64) -> Option<usize> {
            None
        }
        fn admit(&mut self, req: &GatewayRequest<'_>, _: &PoolSnapshot, now_ms: u64) -> Admission {
            self.queue.push_back((req.id, now_ms, req.body.to_vec()));
            Admission::Hold
        }
        fn poll(&mut self, pool: &PoolSnapshot, now_ms: u64, out: &mut Vec<Release>) {
            self.polls += 1;
            while let Some(&(id, at, _)) = self.queue.front() {
                if now_ms.saturating_sub(at) > self.ttl_ms {
                    self.queue.pop_front();
                    out.push(Release::Reject { id, status: 503 });
                    continue;
                }
                if self.in_flight >= self.limit {
                    break;
                }
                let Some((id, _, body)) = self.queue.pop_front() else { break };
                let req = GatewayRequest {
                    id,
                    connection: 0,
                    request_id: "r",
                    model: "m",
                    prompt: "",
                    body: &body,
                    max_tokens: 1,
                    estimated_tokens: 1,
                    objective: None,
                    fairness_id: None,
                };
                let endpoint = self.inner.pick(&req, pool, now_ms).unwrap_or(0);
                self.in_flight += 1;
                self.max_in_flight = self.max_in_flight.max(self.in_flight);
                out.push(Release::Route { id, endpoint });
            }
        }
        fn on_finish(&mut self, _: usize, _: u64) {
            self.in_flight -= 1;
        }
        fn holding(&self) -> usize {
            self.queue.len()
        }
        fn tick_interval_us(&self) -> Option<u64> {
            Some(10_000)
        }
    }

    #[test]
    fn held_requests_are_dispatched_from_polls_or_answered_and_each_ends_once() {
        let t = trace(WorkloadKind::Bursty, 80.0, 400, 2);
        let gate = |limit, ttl_ms| Gate {
            inner: PolicyKind::RoundRobin.build(0).unwrap(),
            limit,
            ttl_ms,
            queue: Default::default(),
            in_flight: 0,
            max_in_flight: 0,
            polls: 0,
        };
        let mut g = gate(6, u64::MAX / 2);
        let r = run(&t, &mut g, &small_cluster()).unwrap();
        assert_eq!(g.max_in_flight, 6);
        assert!(g.queue.is_empty() && g.in_flight == 0 && g.polls > 400);
        for (rec, a) in r.records.iter().zip(&t) {
            assert_eq!(rec.queued_us, Some(a.at_us));
            let sent = rec.dispatched_us.unwrap();
            assert!(sent >= a.at_us && rec.first_token_us.unwrap() > sent && rec.finish_us.is_some());
            assert_eq!((rec.rejected_us, rec.reject_status), (None, None));
        }
        // Some waited for a finish, some were sent at once (a poll at their arrival's next tick).
        assert!(r.records.iter().any(|x| x.dispatched_us.unwrap() > x.arrival_us + 100_000));
        // With a 50 ms time-to-live the backlog is answered instead, on a tick after its deadline.
        let mut g = gate(2, 50);
        let r = run(&t, &mut g, &small_cluster()).unwrap();
        let answered: Vec<&RequestRecord> = r.records.iter().filter(|x| x.rejected_us.is_some()).collect();
        assert!(answered.len() > 50, "{}", answered.len());
        for x in &r.records {
            assert_ne!(x.rejected_us.is_some(), x.finish_us.is_some(), "each request ends exactly once");
        }
        for x in answered {
            let waited = x.rejected_us.unwrap() - x.arrival_us;
            assert!(x.reject_status == Some(503) && waited > 50_000 && waited <= 61_000, "{waited}");
            assert_eq!(x.endpoint, None);
        }
    }

    #[test]
    fn runs_are_deterministic_per_seed_and_policies_see_the_same_trace() {
        let t = trace(WorkloadKind::SharedPrefix, 20.0, 200, 5);
        let once = |kind: PolicyKind, seed| {
            let mut p = kind.build(seed).unwrap();
            run(&t, p.as_mut(), &small_cluster()).unwrap().records
        };
        assert_eq!(once(PolicyKind::GieDefault, 9), once(PolicyKind::GieDefault, 9));
        assert_eq!(once(PolicyKind::Random, 9), once(PolicyKind::Random, 9));
        assert_ne!(once(PolicyKind::Random, 9), once(PolicyKind::Random, 10));
        // Same arrivals, prompts and outputs whatever the policy; only where and how fast differ.
        let (a, b) = (once(PolicyKind::RoundRobin, 1), once(PolicyKind::Ours, 1));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.arrival_us, x.prompt_tokens, x.output_tokens),
                (y.arrival_us, y.prompt_tokens, y.output_tokens)
            );
        }
        assert_ne!(a, b);
    }

    #[test]
    fn round_robin_spreads_evenly_and_prefix_aware_policies_get_cache_hits() {
        let t = trace(WorkloadKind::SharedPrefix, 10.0, 240, 4);
        let mut rr = PolicyKind::RoundRobin.build(0).unwrap();
        let r = run(&t, rr.as_mut(), &small_cluster()).unwrap();
        assert_eq!(r.per_replica, vec![80, 80, 80]);
        let hits = |res: &RunResult| res.records.iter().map(|r| u64::from(r.cached_tokens)).sum::<u64>();
        let mut ours = PolicyKind::Ours.build(0).unwrap();
        let o = run(&t, ours.as_mut(), &small_cluster()).unwrap();
        assert!(hits(&o) > hits(&r), "ours {} vs round-robin {}", hits(&o), hits(&r));
    }

    #[test]
    fn the_policy_sees_metrics_no_fresher_than_the_last_scrape() {
        struct Watch {
            worst_age: u64,
            saw_metrics: bool,
        }
        impl Policy for Watch {
            fn pick(&mut self, _: &GatewayRequest<'_>, pool: &PoolSnapshot, now: u64) -> Option<usize> {
                for e in &pool.endpoints {
                    if let Some(m) = &e.metrics {
                        self.saw_metrics = true;
                        self.worst_age = self.worst_age.max(m.age_ms(now));
                        assert!(m.updated_at_ms % 50 == 0 && m.updated_at_ms <= now);
                    }
                }
                Some(0)
            }
        }
        let mut w = Watch { worst_age: 0, saw_metrics: false };
        run(&trace(WorkloadKind::ShareGpt, 50.0, 200, 3), &mut w, &small_cluster()).unwrap();
        assert!(w.saw_metrics && w.worst_age < 50 && w.worst_age >= 40, "{}", w.worst_age);
    }

    /// What one decision point saw, in the order things happened across all of them.
    #[derive(Clone, Debug, PartialEq)]
    enum Seen {
        /// (decision point, request id, connection, arrival ms, in-flight requests it saw in total)
        Pick(usize, u64, usize, u64, u32),
        /// (decision point, request id whose prefix arrived)
        Peer(usize, u64),
    }

    /// Sends everything to endpoint 0, shares the request id as its "prefix", logs what it sees.
    struct Probe {
        dp: usize,
        log: std::rc::Rc<std::cell::RefCell<Vec<Seen>>>,
        last: Option<u64>,
    }

    impl Policy for Probe {
        fn pick(&mut self, r: &GatewayRequest<'_>, pool: &PoolSnapshot, now: u64) -> Option<usize> {
            let seen = pool.endpoints.iter().map(|e| e.in_flight.requests).sum();
            self.log.borrow_mut().push(Seen::Pick(self.dp, r.id, r.connection, now, seen));
            self.last = Some(r.id);
            Some(0)
        }
        fn take_routed_prefix(&mut self) -> Option<Vec<u64>> {
            self.last.take().map(|id| vec![id])
        }
        fn on_peer_routed(&mut self, endpoint: usize, hashes: &[u64], _: &PoolSnapshot) {
            assert_eq!(endpoint, 0);
            self.log.borrow_mut().push(Seen::Peer(self.dp, hashes[0]));
        }
    }

    /// Runs probes on `gateways` × `workers`: 60 requests 0.5 ms apart that all stay in flight.
    fn probe_run(gateways: usize, workers: usize) -> Vec<Seen> {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut cfg = small_cluster();
        cfg.topology = Topology::new(gateways, workers);
        let mut probes: Vec<Probe> =
            (0..gateways * workers).map(|dp| Probe { dp, log: log.clone(), last: None }).collect();
        let mut policies: Vec<&mut dyn Policy> = probes.iter_mut().map(|p| p as &mut dyn Policy).collect();
        let t: Vec<Arrival> = (0..60)
            .map(|i| Arrival {
                id: i,
                at_us: 500 * i,
                pieces: vec![crate::workload::Piece { seed: i, tokens: 50 }],
                output_tokens: 2000,
                lora: None,
                class: None,
            })
            .collect();
        run_decision_points(&t, &mut policies, &cfg).unwrap();
        let out = log.borrow().clone();
        out
    }

    fn picks(log: &[Seen]) -> Vec<(usize, u64, usize, u64, u32)> {
        log.iter()
            .filter_map(|s| match *s {
                Seen::Pick(dp, id, c, at, seen) => Some((dp, id, c, at, seen)),
                Seen::Peer(..) => None,
            })
            .collect()
    }

    #[test]
    fn connections_stay_on_their_decision_point_and_every_worker_decides() {
        let log = probe_run(2, 2);
        let p = picks(&log);
        assert_eq!(p.len(), 60);
        let mut pinned = std::collections::HashMap::new();
        for &(dp, _, c, _, _) in &p {
            assert_eq!(*pinned.entry(c).or_insert(dp), dp, "connection {c} moved");
        }
        let used: std::collections::BTreeSet<usize> = p.iter().map(|x| x.0).collect();
        assert_eq!(used.len(), 4, "{used:?}");
    }

    #[test]
    fn a_worker_sees_a_siblings_decisions_only_after_the_delays() {
        let log = probe_run(1, 2);
        let p = picks(&log);
        // Request i arrives at 0.5·i ms.
        let at = |id: u64| 500 * id;
        for (k, s) in log.iter().enumerate() {
            match *s {
                // In flight: its own picks at once, the sibling's once they are 1 ms old (nothing ends).
                Seen::Pick(dp, id, _, _, seen) => {
                    let own = p.iter().filter(|x| x.0 == dp && x.1 < id).count();
                    let sibling = p.iter().filter(|x| x.0 != dp && at(x.1) + 1_000 <= at(id)).count();
                    assert_eq!(seen as usize, own + sibling, "decision point {dp}, request {id}");
                }
                // The prefix: after every pick of the receiver earlier than 10 ms after the sibling's
                // decision, before every later one.
                Seen::Peer(dp, id) => {
                    let due = at(id) + 10_000;
                    let (before, after) = log.split_at(k);
                    assert!(picks(after).iter().all(|x| x.0 != dp || at(x.1) >= due));
                    assert!(picks(before).iter().all(|x| x.0 != dp || at(x.1) < due));
                    assert_ne!(p.iter().find(|x| x.1 == id).unwrap().0, dp, "only siblings learn");
                }
            }
        }
        // Each of the 60 prefixes reached the one sibling (the last few after the last arrival).
        assert_eq!(log.iter().filter(|s| matches!(s, Seen::Peer(..))).count(), 60);
    }

    #[test]
    fn gateway_replicas_share_nothing_but_the_pods() {
        let log = probe_run(2, 1);
        let p = picks(&log);
        assert!(!log.iter().any(|s| matches!(s, Seen::Peer(..))));
        for &(dp, id, _, _, seen) in &p {
            let own = p.iter().filter(|x| x.0 == dp && x.1 < id).count();
            assert_eq!(seen as usize, own);
        }
    }

    #[test]
    fn a_kubernetes_service_keeps_each_connection_on_one_pod() {
        struct Watch {
            inner: Box<dyn Policy>,
            seen: Vec<(usize, usize)>,
        }
        impl Policy for Watch {
            fn pick(&mut self, r: &GatewayRequest<'_>, pool: &PoolSnapshot, now: u64) -> Option<usize> {
                let pick = self.inner.pick(r, pool, now)?;
                self.seen.push((r.connection, pick));
                Some(pick)
            }
        }
        let t = trace(WorkloadKind::ShareGpt, 30.0, 600, 6);
        let mut w = Watch { inner: PolicyKind::K8sService.build(3).unwrap(), seen: vec![] };
        let r = run(&t, &mut w, &small_cluster()).unwrap();
        let mut pod_of = std::collections::HashMap::new();
        for &(c, pod) in &w.seen {
            assert_eq!(*pod_of.entry(c).or_insert(pod), pod, "connection {c} changed pods");
        }
        assert_eq!(pod_of.len(), 64, "every connection was used");
        // 64 connections on 3 pods at random: every pod has some, not as evenly as round-robin.
        assert!(r.per_replica.iter().all(|&n| n > 100), "{:?}", r.per_replica);
        assert_ne!(r.per_replica, vec![200, 200, 200]);
    }

    #[test]
    fn the_reference_epp_is_one_decision_point_and_costs_the_ext_proc_hop() {
        let mut cfg = SimConfig::h100(4);
        cfg.topology = Topology::new(4, 4);
        // Light load: each request meets an idle replica, so TTFT is the hop plus the same prefill.
        let t = trace(WorkloadKind::ShareGpt, 0.5, 40, 8);
        let mut reference = PolicyKind::GieReference.build_decision_points(1, &cfg.topology).unwrap();
        assert_eq!(reference.len(), 1);
        let with_hop = run_boxed(&t, &mut reference, &cfg).unwrap();
        let mut plain = PolicyKind::GieDefault.build(1).unwrap();
        let without = run(&t, plain.as_mut(), &cfg).unwrap();
        let extra: Vec<f64> = with_hop
            .records
            .iter()
            .zip(&without.records)
            .map(|(a, b)| a.ttft_ms().unwrap() - b.ttft_ms().unwrap())
            .collect();
        let hop = crate::policy::EXT_PROC_HOP_US as f64 / 1000.0;
        let near_hop = extra.iter().filter(|&&d| (d - hop).abs() < 0.01).count();
        assert!(near_hop >= 36, "{extra:?}");
        // Policies built for every decision point must match the topology (or be one).
        let mut two: Vec<Box<dyn Policy>> = (0..2).map(|_| PolicyKind::Random.build(1).unwrap()).collect();
        assert!(matches!(
            run_boxed(&t, &mut two, &cfg),
            Err(SimError::BadTopology { policies: 2, decision_points: 16 })
        ));
    }

    #[test]
    fn a_straggler_pod_serves_the_same_requests_twice_as_slowly() {
        let mut cfg = SimConfig::h100(2);
        cfg.pods = crate::topology::PodsKind::Straggler.build(2, 0, 0);
        // One request at a time: 20 prompts of 200–770 tokens, 5 s apart, 50 tokens out.
        let t: Vec<Arrival> = (0..20)
            .map(|i| Arrival {
                id: i,
                at_us: 5_000_000 * i,
                pieces: vec![crate::workload::Piece { seed: i, tokens: 200 + 30 * i as u32 }],
                output_tokens: 50,
                lora: None,
                class: None,
            })
            .collect();
        let mut rr = PolicyKind::RoundRobin.build(0).unwrap();
        let r = run(&t, rr.as_mut(), &cfg).unwrap();
        let mut even = PolicyKind::RoundRobin.build(0).unwrap();
        let e = run(&t, even.as_mut(), &SimConfig::h100(2)).unwrap();
        // Round-robin sends the same requests to the same replica; on the straggler (replica 1) the
        // engine time doubles, on replica 0 nothing changes. (The 20 ms API overhead is not a step.)
        for (a, b) in r.records.iter().zip(&e.records) {
            let (slow, fast) = (a.ttft_ms().unwrap() - 20.0, b.ttft_ms().unwrap() - 20.0);
            if a.endpoint == Some(1) {
                assert!((slow / fast - 2.0).abs() < 0.01, "{slow} vs {fast}");
            } else {
                assert_eq!(slow, fast);
            }
        }
    }

    #[test]
    fn noisy_windows_slow_a_replica_down_while_they_last() {
        let mut cfg = SimConfig::h100(1);
        cfg.pods.windows = vec![crate::topology::SlowWindow {
            replica: 0,
            start_us: 10_000_000,
            end_us: 20_000_000,
            factor: 3.0,
        }];
        let t = trace(WorkloadKind::ShareGpt, 0.3, 12, 10);
        let mut p = PolicyKind::RoundRobin.build(0).unwrap();
        let slowed = run(&t, p.as_mut(), &cfg).unwrap();
        let mut p = PolicyKind::RoundRobin.build(0).unwrap();
        let normal = run(&t, p.as_mut(), &SimConfig::h100(1)).unwrap();
        let (mut inside_n, mut outside_n) = (0, 0);
        for (a, b) in slowed.records.iter().zip(&normal.records) {
            let ratio = a.e2e_ms().unwrap() / b.e2e_ms().unwrap();
            let inside = (10_000_000..19_000_000).contains(&a.arrival_us) && a.finish_us < Some(20_000_000);
            let outside = a.finish_us < Some(10_000_000) || a.arrival_us > 20_000_000;
            if inside {
                inside_n += 1;
                assert!(ratio > 2.0, "{ratio}");
            } else if outside {
                outside_n += 1;
                assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
            }
        }
        assert!(inside_n > 0 && outside_n > 4, "{inside_n} inside, {outside_n} outside");
    }
}
