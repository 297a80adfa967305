//! The routing policies compared: load-only baselines, GIE's two generations, two peers' cache-aware
//! routers re-implemented from their published rules, and our recommended default configuration; and,
//! for the many-gateway runs, a Kubernetes Service (kube-proxy's per-connection pick) and GIE as it is
//! deployed (one EPP for every gateway, reached over ext_proc).
//!
//! Everything that is ours to express runs through `scheduler-core` (`EndpointPicker`, or its legacy
//! filters for the GIE v0.3 tree); SGLang's and Dynamo's routers are written here because they are
//! peers' algorithms, not configurations of our plugins.

use scheduler_core::endpoint_picker::{EndpointPicker, Outcome, PoolView, RequestInfo};
use scheduler_core::model::PoolSnapshot;
use scheduler_core::plugins::registry::Registry;
use scheduler_core::prefix::{block_hashes, PrefixIndex};
use scheduler_core::rng::Rng;
use scheduler_core::scheduling::{CycleState, Plugin, SchedulingContext, SchedulingRequest};
use serde_json::Value;
use std::collections::HashMap;

/// What the gateway knows about one request when it decides.
#[derive(Clone, Copy, Debug)]
pub struct GatewayRequest<'a> {
    pub id: u64,
    /// The client connection the request came on (see `topology::Connections`).
    pub connection: usize,
    /// `x-request-id`.
    pub request_id: &'a str,
    pub model: &'a str,
    pub prompt: &'a str,
    /// The `/v1/completions` JSON body.
    pub body: &'a [u8],
    pub max_tokens: u32,
    /// What the gateway adds to the endpoint's in-flight tokens (input bytes / 4 + `max_tokens`).
    pub estimated_tokens: u64,
    /// `x-gateway-inference-objective` (the request's InferenceObjective, hence its priority).
    pub objective: Option<&'a str>,
    /// The fairness id header (the tenant), for flow control.
    pub fairness_id: Option<&'a str>,
}

/// What a decision point does with a request when it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it to this endpoint now.
    Route(usize),
    /// Answer it with this status (429 shed, 503, ...).
    Reject(u16),
    /// Keep it in the gateway's queue; [`Policy::poll`] releases it later.
    Hold,
}

/// A held request leaving the gateway's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Route {
        id: u64,
        endpoint: usize,
    },
    Reject {
        id: u64,
        status: u16,
    },
    /// A request already routed that the gateway ends now (flow control's in-flight eviction): the
    /// replica drops it, the client gets `status`.
    Abort {
        id: u64,
        status: u16,
    },
}

/// A routing policy at one decision point (one worker of one gateway). `pool` carries the last scrape
/// of its gateway and the in-flight counts it knows: its own, and its sibling workers' as they were a
/// moment ago.
pub trait Policy {
    /// Index into `pool.endpoints`, or `None` when the policy rejects the request.
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Option<usize>;
    /// The request arrives: route it, answer it, or hold it. By default what `pick` says (a refusal is
    /// a 429).
    fn admit(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Admission {
        match self.pick(req, pool, now_ms) {
            Some(i) => Admission::Route(i),
            None => Admission::Reject(429),
        }
    }
    /// Requests held earlier that leave the queue now (routed or answered), appended to `out`. The
    /// loop calls it on every tick and whenever a request this decision point routed finishes.
    fn poll(&mut self, _pool: &PoolSnapshot, _now_ms: u64, _out: &mut Vec<Release>) {}
    /// How many requests this decision point holds.
    fn holding(&self) -> usize {
        0
    }
    /// The period of the tick that polls the queue while requests are held.
    fn tick_interval_us(&self) -> Option<u64> {
        None
    }
    /// The first token streamed back (the gateway sees it on the response path).
    fn on_first_token(&mut self, _endpoint: usize, _id: u64) {}
    fn on_finish(&mut self, _endpoint: usize, _id: u64) {}
    /// Called right after a `pick` that routed: the prefix block hashes this decision recorded on its
    /// endpoint, which the filter sends to the gateway's other workers. `None`: nothing to share.
    fn take_routed_prefix(&mut self) -> Option<Vec<u64>> {
        None
    }
    /// Called when request `id` is routed (at once, or released from a queue): the prompt tokens the
    /// gateway counts as awaiting its first token on the endpoint (the picker's `Route::prompt_tokens`).
    /// `None`: the whole prompt.
    fn take_routed_prompt_tokens(&mut self, _id: u64) -> Option<u64> {
        None
    }
    /// A sibling worker's routed prefix reaches this decision point (the filter's prefix sync):
    /// `endpoint` now holds `hashes`.
    fn on_peer_routed(&mut self, _endpoint: usize, _hashes: &[u64], _pool: &PoolSnapshot) {}
    /// Time between the gateway receiving the request and the request leaving for its endpoint, beyond
    /// the in-proxy decision (an ext_proc round trip).
    fn decision_latency_us(&self, _req: &GatewayRequest<'_>) -> u64 {
        0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    RoundRobin,
    Random,
    LeastRequest,
    GieV03,
    GieDefault,
    SglangCacheAware,
    DynamoCost,
    Ours,
    /// A Kubernetes Service: kube-proxy picks a pod at random per connection, and clients keep their
    /// connections alive, so every connection stays on its pod.
    K8sService,
    /// GIE as deployed: its default configuration in ONE endpoint picker (a single active EPP) that
    /// every gateway worker asks over ext_proc, each request paying the ext_proc round trip.
    GieReference,
    /// Ours with endpoint health blind to the collector: failing scrapes and old metrics never exclude an
    /// endpoint, which is then scheduled on its last metrics and the gateway's in-flight count (the
    /// alternative to excluding it, for `--pods metrics-lost`).
    OursTrustStale,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastRequest,
        PolicyKind::GieV03,
        PolicyKind::GieDefault,
        PolicyKind::SglangCacheAware,
        PolicyKind::DynamoCost,
        PolicyKind::Ours,
    ];

    /// Policies for the many-gateway comparison, not run by default (the default suite stays as it was).
    pub const EXTRA: [PolicyKind; 3] =
        [PolicyKind::K8sService, PolicyKind::GieReference, PolicyKind::OursTrustStale];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::K8sService => "k8s-service",
            PolicyKind::GieReference => "gie-reference",
            PolicyKind::OursTrustStale => "ours-trust-stale",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastRequest => "least-request",
            PolicyKind::GieV03 => "gie-v0.3",
            PolicyKind::GieDefault => "gie-default",
            PolicyKind::SglangCacheAware => "sglang-cache-aware",
            PolicyKind::DynamoCost => "dynamo-cost",
            PolicyKind::Ours => "ours",
        }
    }

    pub fn parse(s: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().chain(PolicyKind::EXTRA).find(|p| p.name() == s)
    }

    /// How late a worker sees its sibling workers' in-flight changes under this policy: the filter
    /// shares its counts through shared data (`topology.inflight_delay_us`); Envoy's least-request
    /// compares each host's `rq_active`, a gauge every worker updates in place, so at once.
    pub fn sibling_inflight_delay_us(self, topology: &crate::topology::Topology) -> u64 {
        if self == PolicyKind::LeastRequest {
            0
        } else {
            topology.inflight_delay_us
        }
    }

    /// One decision point whatever the topology: GIE's single active EPP.
    pub fn single_decision_point(self) -> bool {
        self == PolicyKind::GieReference
    }

    /// One policy per decision point of `topology` (one in all for a single-decision-point policy),
    /// each with its own seed and state; decision point 0 gets `seed` itself, so a 1×1 topology runs
    /// exactly what `build(seed)` runs. Round-robin cursors start at the decision point's number.
    pub fn build_decision_points(
        self,
        seed: u64,
        topology: &crate::topology::Topology,
    ) -> Result<Vec<Box<dyn Policy>>, String> {
        let n = if self.single_decision_point() { 1 } else { topology.decision_points() };
        (0..n)
            .map(|k| {
                if self == PolicyKind::RoundRobin {
                    return Ok(Box::new(RoundRobin { next: k }) as Box<dyn Policy>);
                }
                let seed = if k == 0 { seed } else { seed ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93) };
                self.build(seed)
            })
            .collect()
    }

    pub fn build(self, seed: u64) -> Result<Box<dyn Policy>, String> {
        Ok(match self {
            PolicyKind::K8sService => Box::new(K8sService { pinned: HashMap::new(), rng: Rng::new(seed) }),
            PolicyKind::GieReference => {
                Box::new(GieReference { picker: Picker::new(GIE_DEFAULT_CONFIG, seed)? })
            }
            PolicyKind::RoundRobin => Box::new(RoundRobin { next: 0 }),
            PolicyKind::Random => Box::new(RandomPick { rng: Rng::new(seed) }),
            PolicyKind::LeastRequest => Box::new(LeastRequest { rng: Rng::new(seed) }),
            PolicyKind::GieV03 => Box::new(GieV03::new(seed)?),
            PolicyKind::GieDefault => Box::new(Picker::new(GIE_DEFAULT_CONFIG, seed)?),
            PolicyKind::SglangCacheAware => Box::new(SglangCacheAware::new(seed)),
            PolicyKind::DynamoCost => Box::new(DynamoCost::new(seed)),
            PolicyKind::Ours => Box::new(Picker::new(ours_config(), seed)?),
            PolicyKind::OursTrustStale => {
                Box::new(Picker::new(&trusting_stale_metrics(ours_config())?, seed)?)
            }
        })
    }
}

/// Ours: the very file `envoy-config/scheduling/recommended.json`, which is also what the picker runs with
/// no scheduling configuration (`scheduler_core::config::DEFAULT_SCHEDULING`). BENCHMARKS.md, "Many
/// gateways" and "Scheduling quality", has the measurements behind it:
/// - `prefix-owner-scorer` ×4: the prompt's owner by rendezvous hashing with bounded loads, so independent
///   decision points (every proxy worker of every gateway replica) send a new prefix to the same pod;
/// - `prefix-cache-scorer` ×3: this decision point's own evidence of where the prompt is cached;
/// - `inflight-aware-queue-scorer` ×2 and `kv-cache-utilization-scorer` ×2: load on fresh-as-possible
///   signals (requests this gateway sent since the last scrape count as queued);
/// - `lora-slot-scorer` ×8: keeps each adapter where it runs (×4 beside the owner let p99 TTFT on
///   multi-LoRA rise to 1.2 s);
/// - `near-best-picker` (margin 0.5): a random draw among the endpoints within half a point of the best,
///   so decision points reading the same stale metrics do not all take the same endpoint.
pub const OURS_CONFIG: &str = include_str!("../../../envoy-config/scheduling/recommended.json");

/// A configuration run as `ours` instead of [`OURS_CONFIG`] (`quality-bench --ours-config`, for trying
/// a candidate default on the same cells); set at most once, before any policy is built.
static OURS_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes `ours` run `config` in this process; an error if another was set before.
pub fn override_ours_config(config: String) -> Result<(), String> {
    EndpointPicker::from_json(&config).map_err(|e| format!("--ours-config: {e}"))?;
    OURS_OVERRIDE.set(config).map_err(|_| String::from("--ours-config given twice"))
}

/// What `ours` runs: [`OURS_CONFIG`] unless [`override_ours_config`] said otherwise.
fn ours_config() -> &'static str {
    OURS_OVERRIDE.get().map_or(OURS_CONFIG, String::as_str)
}

/// GIE's default profile, spelled out (an empty configuration no longer gets it here): the file
/// `envoy-config/scheduling/gie-default.json`, queue ×2, KV-cache utilization ×2, prefix cache ×3,
/// max-score picker.
pub const GIE_DEFAULT_CONFIG: &str = include_str!("../../../envoy-config/scheduling/gie-default.json");

/// `config` with a `health` section under which no scrape failure or metrics age excludes an endpoint.
fn trusting_stale_metrics(config: &str) -> Result<String, String> {
    let mut v: Value = serde_json::from_str(config).map_err(|e| format!("picker config: {e}"))?;
    let Some(o) = v.as_object_mut() else { return Err(String::from("picker config: not a JSON object")) };
    o.insert(
        String::from("health"),
        serde_json::json!({"consecutiveScrapeFailures": u32::MAX, "metricsMaxAgeMs": u64::MAX / 4}),
    );
    o.insert(String::from("limits"), serde_json::json!({"snapshotMaxAgeMs": u64::MAX / 4}));
    Ok(v.to_string())
}

struct RoundRobin {
    next: usize,
}

impl Policy for RoundRobin {
    fn pick(&mut self, _: &GatewayRequest<'_>, pool: &PoolSnapshot, _: u64) -> Option<usize> {
        let n = pool.endpoints.len();
        let pick = self.next % n.max(1);
        self.next = self.next.wrapping_add(1);
        (n > 0).then_some(pick)
    }
}

struct RandomPick {
    rng: Rng,
}

impl Policy for RandomPick {
    fn pick(&mut self, _: &GatewayRequest<'_>, pool: &PoolSnapshot, _: u64) -> Option<usize> {
        let n = pool.endpoints.len();
        (n > 0).then(|| self.rng.below(n))
    }
}

/// The endpoint with the fewest gateway in-flight requests (ties at random), like Envoy's
/// least-request with full scan: no metrics at all, only what the gateway itself sent. Envoy compares
/// each host's `rq_active`, a gauge all workers of the process share, so with several workers this
/// reads the pool's in-flight counts (this worker's own, its siblings' a millisecond late), and nothing
/// of the other gateway replicas.
struct LeastRequest {
    rng: Rng,
}

impl Policy for LeastRequest {
    fn pick(&mut self, _: &GatewayRequest<'_>, pool: &PoolSnapshot, _: u64) -> Option<usize> {
        let min = pool.endpoints.iter().map(|e| e.in_flight.requests).min()?;
        let loads: Vec<u32> = pool.endpoints.iter().map(|e| e.in_flight.requests).collect();
        random_of(&positions(&loads, |&l| l == min), &mut self.rng)
    }
}

/// Indices of the items that satisfy `keep`.
fn positions<T>(items: &[T], keep: impl Fn(&T) -> bool) -> Vec<usize> {
    items.iter().enumerate().filter(|(_, x)| keep(x)).map(|(i, _)| i).collect()
}

/// A uniformly chosen element of `items` (tie-breaking).
fn random_of(items: &[usize], rng: &mut Rng) -> Option<usize> {
    items.get(rng.below(items.len())).copied()
}

/// Index of the endpoint whose address the picker chose.
fn index_of(pool: &PoolSnapshot, address: &str) -> Option<usize> {
    pool.endpoints.iter().position(|e| e.address() == address)
}

/// A configuration run through `EndpointPicker`, exactly the call the Wasm filter makes.
pub(crate) struct Picker {
    picker: EndpointPicker,
    seed: u64,
    /// The prefix hashes the last decision recorded (`Route::prefix_hashes`, what the filter sends to
    /// its other workers).
    routed_prefix: Vec<u64>,
    /// The prompt tokens the last decision counts as awaiting the first token (`Route::prompt_tokens`).
    routed_prompt_tokens: Option<u64>,
}

impl Picker {
    pub(crate) fn new(config: &str, seed: u64) -> Result<Picker, String> {
        let picker = EndpointPicker::from_json(config).map_err(|e| format!("picker config: {e}"))?;
        Ok(Picker { picker, seed, routed_prefix: Vec::new(), routed_prompt_tokens: None })
    }
}

impl Policy for Picker {
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Option<usize> {
        match self.admit(req, pool, now_ms) {
            Admission::Route(i) => Some(i),
            Admission::Reject(_) | Admission::Hold => None,
        }
    }

    /// The picker's answer: a route, or its local reply's status (a sheddable request 429 while the
    /// pool is saturated, when the request names a sheddable objective).
    fn admit(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Admission {
        let info = RequestInfo {
            path: "/v1/completions",
            request_id: req.request_id,
            objective: req.objective,
            ..RequestInfo::default()
        };
        let seed = self.seed ^ req.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let route = match self.picker.decide(&info, Some(req.body), PoolView::Fresh(pool), now_ms, seed) {
            Outcome::Route(r) | Outcome::FailOpen { route: Some(r), .. } => r,
            Outcome::FailOpen { route: None, .. } => return Admission::Reject(503),
            Outcome::Reply(reply) => return Admission::Reject(reply.status),
        };
        let Some(pick) = index_of(pool, &route.destination) else { return Admission::Reject(503) };
        self.routed_prefix = route.prefix_hashes;
        self.routed_prompt_tokens = Some(route.prompt_tokens);
        Admission::Route(pick)
    }

    fn take_routed_prefix(&mut self) -> Option<Vec<u64>> {
        let hashes = std::mem::take(&mut self.routed_prefix);
        (!hashes.is_empty()).then_some(hashes)
    }

    fn take_routed_prompt_tokens(&mut self, _id: u64) -> Option<u64> {
        self.routed_prompt_tokens.take()
    }

    /// What the filter's worker does with a sibling's update: `Scheduler::learn_prefix`.
    fn on_peer_routed(&mut self, endpoint: usize, hashes: &[u64], pool: &PoolSnapshot) {
        if let Some(e) = pool.endpoints.get(endpoint) {
            self.picker.scheduler_mut().learn_prefix(pool, e.address(), hashes);
        }
    }
}

/// kube-proxy behind a Service: the first request on a connection opens it to a uniformly random pod,
/// and every later request on that connection goes to the same pod.
struct K8sService {
    pinned: HashMap<usize, usize>,
    rng: Rng,
}

impl Policy for K8sService {
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, _: u64) -> Option<usize> {
        let n = pool.endpoints.len();
        if n == 0 {
            return None;
        }
        let pod = match self.pinned.get(&req.connection) {
            Some(&p) if p < n => p,
            _ => {
                let p = self.rng.below(n);
                self.pinned.insert(req.connection, p);
                p
            }
        };
        Some(pod)
    }
}

/// The ext_proc round trip of one request: what the ext_proc shim (our scheduler behind ext_proc, the
/// same hop GIE's EPP sits behind) added to Envoy's median latency with 4 KiB bodies in the overhead run
/// recorded in docs/bench/overhead.md (Envoy with 1 worker: p50 2.523 ms against plain Envoy's 0.840).
/// That run drove Envoy at its limit with 8 connections, so the figure includes some queueing in the
/// shim. The same run measured more with larger bodies (5.0 ms at 128 KiB, 7.2 ms at 220 KiB), but the
/// simulator gives no policy any body transfer time, and a hop that grows with the body reorders the
/// requests a trace sends in the same millisecond, shortest first, which flattered the reference by 2×
/// at p50 TTFT on the Mooncake trace. So every request pays the small-body figure.
pub const EXT_PROC_HOP_US: u64 = 1_683;

/// GIE's default configuration in one EPP that every gateway asks over ext_proc.
struct GieReference {
    picker: Picker,
}

impl Policy for GieReference {
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Option<usize> {
        let pick = self.picker.pick(req, pool, now_ms);
        // One EPP: nobody to share its prefixes with.
        self.picker.routed_prefix.clear();
        pick
    }

    fn decision_latency_us(&self, _: &GatewayRequest<'_>) -> u64 {
        EXT_PROC_HOP_US
    }
}

/// GIE v0.3's decision tree for critical requests, built from scheduler-core's legacy filters:
/// low-queue (< 128) → on success LoRA affinity (kept only if it leaves someone) → least-queue band →
/// least-KV band; when no endpoint has a short queue, straight to least-queue → least-KV. Then uniform
/// random, as GIE's tree ended.
struct GieV03 {
    low_queue: Box<dyn Plugin>,
    lora_affinity: Box<dyn Plugin>,
    least_queue: Box<dyn Plugin>,
    least_kv: Box<dyn Plugin>,
    rng: Rng,
}

impl GieV03 {
    fn new(seed: u64) -> Result<GieV03, String> {
        let registry = Registry::builtin();
        let build = |t: &str, params: Value| {
            let plugin = registry.build(t, &params).map_err(|e| format!("{t}: {e}"))?;
            if plugin.as_filter().is_none() {
                return Err(format!("{t} is not a filter"));
            }
            Ok(plugin)
        };
        Ok(GieV03 {
            // GIE v0.3 kept pods with queue < 128; the filter keeps q ≤ threshold.
            low_queue: build("low-queue-filter", serde_json::json!({"threshold": 127}))?,
            lora_affinity: build("lora-affinity-filter", Value::Null)?,
            least_queue: build("least-queue-filter", Value::Null)?,
            least_kv: build("least-kv-cache-filter", Value::Null)?,
            rng: Rng::new(seed),
        })
    }
}

/// Runs `plugin` as a filter on a copy of `candidates`.
fn filtered(plugin: &dyn Plugin, ctx: &SchedulingContext<'_>, candidates: &[usize]) -> Vec<usize> {
    let mut c = candidates.to_vec();
    if let Some(f) = plugin.as_filter() {
        f.filter(ctx, &mut CycleState::default(), &mut c);
    }
    c
}

impl Policy for GieV03 {
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, now_ms: u64) -> Option<usize> {
        let request = SchedulingRequest {
            request_id: req.request_id,
            model: req.model,
            prompt_bytes: req.prompt.len(),
            max_output_tokens: Some(u64::from(req.max_tokens)),
            ..SchedulingRequest::default()
        };
        let ctx = SchedulingContext { request: &request, pool, now_ms };
        let all: Vec<usize> = (0..pool.endpoints.len()).collect();
        let low = filtered(self.low_queue.as_ref(), &ctx, &all);
        let mut c = if low.is_empty() {
            all
        } else {
            let affine = filtered(self.lora_affinity.as_ref(), &ctx, &low);
            if affine.is_empty() {
                low
            } else {
                affine
            }
        };
        for f in [&self.least_queue, &self.least_kv] {
            let next = filtered(f.as_ref(), &ctx, &c);
            if !next.is_empty() {
                c = next;
            }
        }
        random_of(&c, &mut self.rng)
    }
}

/// Bytes per hashed block for the peers' own prefix trackers (16 tokens × 4 bytes, the engine's block).
const PEER_BLOCK_BYTES: usize = 64;

fn address_list(pool: &PoolSnapshot) -> Vec<&str> {
    pool.endpoints.iter().map(|e| e.address()).collect()
}

/// SGLang router `cache_aware` (defaults: cache_threshold 0.3, balance_abs_threshold 64,
/// balance_rel_threshold 1.5). Its approximate radix tree over characters is modelled as per-worker
/// sets of 64-character block-chain hashes, which answer the same question (longest matched prefix per
/// worker) at block granularity. Load is the router's own count of requests in flight per worker. The
/// tree's size cap (2^26 characters per worker) is far above what the simulated KV holds, so, as with
/// the real router in a short run, nothing is ever evicted from it.
struct SglangCacheAware {
    tree: PrefixIndex,
    rng: Rng,
}

const SGLANG_CACHE_THRESHOLD: f64 = 0.3;
const SGLANG_BALANCE_ABS: u32 = 64;
const SGLANG_BALANCE_REL: f64 = 1.5;
const SGLANG_MAX_TREE_BLOCKS: usize = (1 << 26) / PEER_BLOCK_BYTES;

impl SglangCacheAware {
    fn new(seed: u64) -> SglangCacheAware {
        SglangCacheAware { tree: PrefixIndex::new(), rng: Rng::new(seed) }
    }
}

impl Policy for SglangCacheAware {
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, _: u64) -> Option<usize> {
        let n = pool.endpoints.len();
        if n == 0 {
            return None;
        }
        let loads: Vec<u32> = pool.endpoints.iter().map(|e| e.in_flight.requests).collect();
        let (min_load, max_load) = (*loads.iter().min()?, *loads.iter().max()?);
        let hashes = block_hashes(req.model, None, req.prompt.as_bytes(), PEER_BLOCK_BYTES, usize::MAX);
        let addresses = address_list(pool);
        let imbalanced = max_load - min_load > SGLANG_BALANCE_ABS
            && f64::from(max_load) > SGLANG_BALANCE_REL * f64::from(min_load);
        let pick = if imbalanced {
            loads.iter().position(|&l| l == min_load)?
        } else {
            let matched = self.tree.match_counts(&hashes, &addresses);
            let best = *matched.iter().max()?;
            let rate = (best as usize * PEER_BLOCK_BYTES) as f64 / req.prompt.len().max(1) as f64;
            if rate > SGLANG_CACHE_THRESHOLD {
                random_of(&positions(&matched, |&m| m == best), &mut self.rng)?
            } else {
                // The worker with the smallest tree: least cached, so most room.
                let sizes: Vec<usize> =
                    addresses.iter().map(|a| self.tree.endpoint_len(a).unwrap_or(0)).collect();
                let smallest = *sizes.iter().min()?;
                random_of(&positions(&sizes, |&s| s == smallest), &mut self.rng)?
            }
        };
        self.tree.record(addresses.get(pick)?, &hashes, SGLANG_MAX_TREE_BLOCKS);
        Some(pick)
    }
}

/// Dynamo's KV router cost with temperature 0: per worker
/// `prefill_load_scale · max(prefill_blocks − overlap_credit · overlap, 0) + decode_blocks`, lowest
/// wins (ties at random). Dynamo learns overlaps from the engines' KV events; the simulated engine does
/// not publish them, so this runs Dynamo's approximate mode: an index of what was routed where, with a
/// per-worker LRU as large as the worker's KV (`num_gpu_blocks`). Prefill blocks are the new request's
/// plus those of requests routed to the worker that have not produced a first token yet; decode blocks
/// are the new request's plus every in-flight request's (prompt + expected output) blocks.
struct DynamoCost {
    index: PrefixIndex,
    rng: Rng,
    /// Request id → (worker, prompt blocks, total blocks, still prefilling).
    active: HashMap<u64, (usize, u64, u64, bool)>,
    prefill_blocks: Vec<u64>,
    decode_blocks: Vec<u64>,
}

const DYNAMO_PREFILL_LOAD_SCALE: f64 = 1.0;
const DYNAMO_OVERLAP_CREDIT: f64 = 1.0;

impl DynamoCost {
    fn new(seed: u64) -> DynamoCost {
        DynamoCost {
            index: PrefixIndex::new(),
            rng: Rng::new(seed),
            active: HashMap::new(),
            prefill_blocks: Vec::new(),
            decode_blocks: Vec::new(),
        }
    }
}

impl Policy for DynamoCost {
    fn pick(&mut self, req: &GatewayRequest<'_>, pool: &PoolSnapshot, _: u64) -> Option<usize> {
        let n = pool.endpoints.len();
        self.prefill_blocks.resize(n, 0);
        self.decode_blocks.resize(n, 0);
        let hashes = block_hashes(req.model, None, req.prompt.as_bytes(), PEER_BLOCK_BYTES, usize::MAX);
        let addresses = address_list(pool);
        let overlap = self.index.match_counts(&hashes, &addresses);
        let prompt_blocks = (req.prompt.len() as u64).div_ceil(PEER_BLOCK_BYTES as u64);
        let total_blocks = prompt_blocks + u64::from(req.max_tokens).div_ceil(16);
        let costs: Vec<f64> = self
            .prefill_blocks
            .iter()
            .zip(&self.decode_blocks)
            .zip(&overlap)
            .map(|((&prefill, &decode), &overlap)| {
                let prefill = (prefill + prompt_blocks) as f64 - DYNAMO_OVERLAP_CREDIT * f64::from(overlap);
                DYNAMO_PREFILL_LOAD_SCALE * prefill.max(0.0) + (decode + total_blocks) as f64
            })
            .collect();
        let best = costs.iter().copied().fold(f64::INFINITY, f64::min);
        let pick = random_of(&positions(&costs, |&c| c <= best), &mut self.rng)?;
        let capacity = pool
            .endpoints
            .get(pick)
            .and_then(|e| e.metrics.as_ref()?.num_gpu_blocks)
            .map_or(scheduler_core::prefix::DEFAULT_LRU_CAPACITY_PER_SERVER, |b| b as usize);
        self.index.record(addresses.get(pick)?, &hashes, capacity);
        if let (Some(p), Some(d)) = (self.prefill_blocks.get_mut(pick), self.decode_blocks.get_mut(pick)) {
            *p += prompt_blocks;
            *d += total_blocks;
        }
        self.active.insert(req.id, (pick, prompt_blocks, total_blocks, true));
        Some(pick)
    }

    fn on_first_token(&mut self, _endpoint: usize, id: u64) {
        if let Some((w, prompt, _, prefilling)) = self.active.get_mut(&id) {
            if *prefilling {
                *prefilling = false;
                if let Some(p) = self.prefill_blocks.get_mut(*w) {
                    *p = p.saturating_sub(*prompt);
                }
            }
        }
    }

    fn on_finish(&mut self, endpoint: usize, id: u64) {
        self.on_first_token(endpoint, id);
        if let Some((w, _, total, _)) = self.active.remove(&id) {
            if let Some(d) = self.decode_blocks.get_mut(w) {
                *d = d.saturating_sub(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scheduler_core::model::{Endpoint, EndpointState, Metrics};

    const NOW: u64 = 10_000;

    #[test]
    fn a_bad_ours_config_is_refused_and_leaves_the_default() {
        let err = override_ours_config(String::from(r#"{"plugins": [{"type": "no-such-scorer"}]}"#));
        assert!(err.is_err_and(|e| e.contains("--ours-config") && e.contains("no-such-scorer")));
        assert_eq!(ours_config(), OURS_CONFIG);
    }

    /// `(waiting, running adapters, max_lora)` per server, fresh metrics, nothing else different.
    fn pool(servers: &[(u32, &[&str], u32)]) -> PoolSnapshot {
        let endpoints = servers
            .iter()
            .enumerate()
            .map(|(i, (waiting, running, max_lora))| {
                let mut s = EndpointState::new(Endpoint::new(format!("10.0.0.{}:8000", i + 1)));
                s.metrics = Some(Metrics {
                    waiting: *waiting,
                    running: 4,
                    kv_usage: 0.3,
                    running_loras: running.iter().map(|a| a.to_string()).collect(),
                    max_lora: Some(*max_lora),
                    updated_at_ms: NOW,
                    ..Metrics::default()
                });
                s
            })
            .collect();
        PoolSnapshot { endpoints, ..PoolSnapshot::default() }
    }

    fn pick(policy: &mut dyn Policy, pool: &PoolSnapshot, model: &str) -> Option<usize> {
        let body = format!(r#"{{"model":"{model}","prompt":"a prompt of no shared prefix","max_tokens":8}}"#);
        let req = GatewayRequest {
            id: 1,
            connection: 0,
            request_id: "r1",
            model,
            prompt: "a prompt of no shared prefix",
            body: body.as_bytes(),
            max_tokens: 8,
            estimated_tokens: 15,
            objective: None,
            fairness_id: None,
        };
        policy.pick(&req, pool, NOW)
    }

    #[test]
    fn shipped_recommended_file_builds_and_uses_the_lora_slot_scorer() {
        let picker = EndpointPicker::from_json(OURS_CONFIG).unwrap();
        assert!(picker.config().picker.plugin("lora-slot-scorer").is_some());
        assert_eq!(picker.config().picker.warnings, vec![]);
    }

    #[test]
    fn ours_keeps_an_adapter_where_it_runs_and_base_traffic_on_the_idle_full_server() {
        let mut ours = PolicyKind::Ours.build(7).unwrap();
        // Equal load; "adapter-3" runs on server 2 only: it goes there, not to the server with room.
        let p = pool(&[(0, &["a", "b"], 4), (0, &["adapter-3"], 4), (0, &["a", "b", "c", "d"], 4)]);
        for _ in 0..20 {
            assert_eq!(pick(ours.as_mut(), &p, "adapter-3"), Some(1));
        }
        // A base-model request: server 1 has every adapter slot taken but an empty queue, server 2 has
        // free slots and 3 queued. GIE's lora-affinity-scorer would score server 1 at 0 and send every
        // such request to server 2; ours only nudges (0.8 vs 1.0, ×8) against the queue (×2), so the two
        // are near-equal and share the traffic: base requests are not pushed off a full-slot server.
        let p = pool(&[(0, &["a", "b", "c", "d"], 4), (3, &["a"], 4)]);
        let to_full = (0..40)
            .filter(|i| {
                let mut ours = PolicyKind::Ours.build(100 + i).unwrap();
                pick(ours.as_mut(), &p, "llama-3.1-8b") == Some(0)
            })
            .count();
        assert!((10..=40).contains(&to_full), "{to_full} of 40 to the idle full-slot server");
    }

    #[test]
    fn a_picker_learns_a_siblings_routed_prefix_as_if_it_had_routed_it() {
        let system = "you are a careful assistant who answers in full sentences ".repeat(60);
        let ask = |p: &mut dyn Policy, pool: &PoolSnapshot, id: u64| {
            let prompt = format!("{system}question {id}");
            let body = format!(r#"{{"model":"m","prompt":"{prompt}","max_tokens":8}}"#);
            let request_id = format!("r{id}");
            let req = GatewayRequest {
                id,
                connection: 0,
                request_id: &request_id,
                model: "m",
                prompt: &prompt,
                body: body.as_bytes(),
                max_tokens: 8,
                estimated_tokens: 10,
                objective: None,
                fairness_id: None,
            };
            p.pick(&req, pool, NOW)
        };
        let p = pool(&[(0, &[], 4), (0, &[], 4), (0, &[], 4), (0, &[], 4)]);
        // GIE's default: only its own prefix index says where a prompt is.
        let mut a = PolicyKind::GieDefault.build(1).unwrap();
        let first = ask(a.as_mut(), &p, 1).unwrap();
        let hashes = a.take_routed_prefix().unwrap();
        assert!(hashes.len() > 40, "{} blocks", hashes.len());
        assert_eq!(a.take_routed_prefix(), None, "taken once");
        // A sibling that has not heard of it spreads the same prefix over the idle pool ...
        let fresh: std::collections::BTreeSet<usize> = (0..24)
            .map(|s| ask(PolicyKind::GieDefault.build(s).unwrap().as_mut(), &p, 100 + s).unwrap())
            .collect();
        assert!(fresh.len() > 1, "{fresh:?}");
        // (Ours names the prompt's owner without having heard of it: every fresh picker agrees.)
        let owners: std::collections::BTreeSet<usize> =
            (0..24).map(|s| ask(PolicyKind::Ours.build(s).unwrap().as_mut(), &p, 100 + s).unwrap()).collect();
        assert_eq!(owners.len(), 1, "{owners:?}");
        // ... one that learned it follows it.
        let mut b = PolicyKind::GieDefault.build(2).unwrap();
        b.on_peer_routed(first, &hashes, &p);
        for id in 200..216 {
            assert_eq!(ask(b.as_mut(), &p, id), Some(first));
        }
        // Policies that share nothing ignore it; the reference EPP has no siblings to tell.
        let mut rr = PolicyKind::RoundRobin.build(0).unwrap();
        rr.on_peer_routed(first, &hashes, &p);
        assert_eq!(rr.take_routed_prefix(), None);
        let mut reference = PolicyKind::GieReference.build(1).unwrap();
        assert!(ask(reference.as_mut(), &p, 300).is_some());
        assert_eq!(reference.take_routed_prefix(), None);
    }

    #[test]
    fn decision_points_get_their_own_seeds_and_round_robin_cursors() {
        let t = crate::topology::Topology::new(2, 3);
        assert_eq!(PolicyKind::Ours.build_decision_points(1, &t).unwrap().len(), 6);
        assert_eq!(PolicyKind::GieReference.build_decision_points(1, &t).unwrap().len(), 1);
        let p = pool(&[(0, &[], 4), (0, &[], 4), (0, &[], 4), (0, &[], 4)]);
        let mut rr = PolicyKind::RoundRobin.build_decision_points(0, &t).unwrap();
        let firsts: Vec<Option<usize>> = rr.iter_mut().map(|x| pick(x.as_mut(), &p, "m")).collect();
        assert_eq!(firsts, vec![Some(0), Some(1), Some(2), Some(3), Some(0), Some(1)]);
        let mut random = PolicyKind::Random.build_decision_points(5, &t).unwrap();
        let draws: Vec<Vec<Option<usize>>> =
            random.iter_mut().map(|x| (0..8).map(|_| pick(x.as_mut(), &p, "m")).collect()).collect();
        assert_ne!(draws[0], draws[1]);
        // Decision point 0 is what `build(seed)` gives.
        let mut alone = PolicyKind::Random.build(5).unwrap();
        assert_eq!(draws[0], (0..8).map(|_| pick(alone.as_mut(), &p, "m")).collect::<Vec<_>>());
    }
}
