//! The discrete-event loop: one trace, N simulated replicas, one policy, all in virtual time.
//!
//! What the policy sees is what a gateway sees: metrics from a scrape every `scrape_interval_ms` (the
//! values at scrape time, stamped with it) and its own in-flight counts, incremented when it routes a
//! request (with the picker's token estimate) and decremented when the response ends.

use crate::policy::{GatewayRequest, Policy};
use crate::workload::{Arrival, BYTES_PER_TOKEN};
use model_sim::{Engine, EngineConfig, EngineMetrics, Event, EventKind, Prompt, Request, StepModel};
use scheduler_core::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
use std::fmt;

/// Shape of the simulated cluster.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub replicas: usize,
    pub engine: EngineConfig,
    pub scrape_interval_ms: u64,
}

impl SimConfig {
    pub fn h100(replicas: usize) -> SimConfig {
        SimConfig {
            replicas,
            engine: EngineConfig { emit_token_events: false, ..EngineConfig::h100_llama3_8b() },
            scrape_interval_ms: 50,
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
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::BadEngineConfig(e) => write!(f, "simulated replica: {e}"),
            SimError::Refused { id, reason } => write!(f, "request {id} refused by the replica: {reason}"),
            SimError::BadPick { id, index, replicas } => {
                write!(f, "request {id}: policy picked endpoint {index}, expected an index below {replicas}")
            }
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
    endpoint: usize,
    estimated_tokens: u64,
}

/// Replays `trace` through `policy` on a fresh cluster. Every routed request runs to completion.
pub fn run(trace: &[Arrival], policy: &mut dyn Policy, cfg: &SimConfig) -> Result<RunResult, SimError> {
    let mut engines = Vec::with_capacity(cfg.replicas);
    for i in 0..cfg.replicas {
        let engine_cfg = EngineConfig { seed: cfg.engine.seed ^ i as u64, ..cfg.engine.clone() };
        engines.push(Engine::new(engine_cfg).map_err(|e| SimError::BadEngineConfig(e.to_string()))?);
    }
    let mut pool = PoolSnapshot {
        pool: String::from("bench"),
        endpoints: (0..cfg.replicas).map(|i| EndpointState::new(Endpoint::new(replica_address(i)))).collect(),
        ..PoolSnapshot::default()
    };
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
    let mut next_scrape = 0u64;
    let mut next_arrival = 0usize;
    let mut events: Vec<Event> = Vec::new();
    let mut makespan = 0u64;

    loop {
        let engine_next =
            engines.iter().enumerate().filter_map(|(i, e)| Some((e.next_event_time()?, i))).min();
        let arrival_at = trace.get(next_arrival).map(|a| a.at_us);
        if engine_next.is_none() && arrival_at.is_none() {
            break;
        }
        let t = [engine_next.map(|(t, _)| t), arrival_at, Some(next_scrape)].into_iter().flatten().min();
        let Some(t) = t else { break };
        if let Some((te, i)) = engine_next.filter(|&(te, _)| te == t) {
            if let Some(e) = engines.get_mut(i) {
                events.clear();
                e.advance(te, &mut events);
            }
            settle(&events, i, &mut records, &pending, &mut pool, policy, &mut makespan);
            continue;
        }
        if next_scrape == t {
            for (i, e) in engines.iter_mut().enumerate() {
                events.clear();
                e.advance(t, &mut events);
                settle(&events, i, &mut records, &pending, &mut pool, policy, &mut makespan);
            }
            let now_ms = t / 1000;
            for (state, e) in pool.endpoints.iter_mut().zip(&engines) {
                state.metrics = Some(to_metrics(&e.metrics(), now_ms));
            }
            pool.generation += 1;
            pool.published_at_ms = now_ms;
            next_scrape += scrape_us;
            continue;
        }
        let Some(a) = trace.get(next_arrival) else { break };
        next_arrival += 1;
        let text = a.prompt_text();
        let model = a.model();
        let request_id = format!("req-{}", a.id);
        let body = format!(r#"{{"model":"{model}","prompt":"{text}","max_tokens":{}}}"#, a.output_tokens);
        let estimated_tokens =
            (text.len() as u64).div_ceil(BYTES_PER_TOKEN as u64) + u64::from(a.output_tokens);
        let req = GatewayRequest {
            id: a.id,
            request_id: &request_id,
            model: &model,
            prompt: &text,
            body: body.as_bytes(),
            max_tokens: a.output_tokens,
            estimated_tokens,
        };
        let Some(pick) = policy.pick(&req, &pool, t / 1000) else { continue };
        if pick >= engines.len() {
            return Err(SimError::BadPick { id: a.id, index: pick, replicas: engines.len() });
        }
        let prompt = Prompt::from_text(&text, cfg.engine.block_size);
        let engine_req = Request { id: a.id, prompt, max_tokens: a.output_tokens, lora: a.lora };
        if let Some(e) = engines.get_mut(pick) {
            e.submit(engine_req, t).map_err(|e| SimError::Refused { id: a.id, reason: e.to_string() })?;
        }
        if let Some(state) = pool.endpoints.get_mut(pick) {
            state.in_flight.add(estimated_tokens);
        }
        if let Some(p) = pending.get_mut(a.id as usize) {
            *p = Pending { endpoint: pick, estimated_tokens };
        }
        if let Some(r) = records.get_mut(a.id as usize) {
            r.endpoint = Some(pick);
        }
        if let Some(n) = per_replica.get_mut(pick) {
            *n += 1;
        }
    }
    Ok(RunResult { records, makespan_us: makespan, per_replica })
}

/// Applies one replica's events: latencies, the gateway's in-flight decrement at the end of a response.
fn settle(
    events: &[Event],
    replica: usize,
    records: &mut [RequestRecord],
    pending: &[Pending],
    pool: &mut PoolSnapshot,
    policy: &mut dyn Policy,
    makespan: &mut u64,
) {
    for ev in events {
        let Some(r) = records.get_mut(ev.id as usize) else { continue };
        match ev.kind {
            EventKind::FirstToken => {
                r.first_token_us = Some(ev.time_us);
                policy.on_first_token(replica, ev.id);
            }
            EventKind::Finished(usage) => {
                r.finish_us = Some(ev.time_us);
                r.cached_tokens = usage.cached_prompt_tokens;
                *makespan = (*makespan).max(ev.time_us);
                if let Some(p) = pending.get(ev.id as usize) {
                    if let Some(state) = pool.endpoints.get_mut(p.endpoint) {
                        state.in_flight.remove(p.estimated_tokens);
                    }
                }
                policy.on_finish(replica, ev.id);
            }
            EventKind::Preempted => r.preemptions += 1,
            EventKind::Token => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyKind;
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
        }
        impl Policy for Counting {
            fn pick(&mut self, r: &GatewayRequest<'_>, pool: &PoolSnapshot, now: u64) -> Option<usize> {
                let total: u32 = pool.endpoints.iter().map(|e| e.in_flight.requests).sum();
                self.max_in_flight = self.max_in_flight.max(total);
                self.last_pool_in_flight = total;
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
        };
        run(&t, &mut p, &small_cluster()).unwrap();
        let mut ids = p.finishes.clone();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), t.len());
        assert_eq!(p.finishes.len(), t.len());
        // Under a burst the gateway really had many requests in flight at once.
        assert!(p.max_in_flight > 10, "{}", p.max_in_flight);
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
}
