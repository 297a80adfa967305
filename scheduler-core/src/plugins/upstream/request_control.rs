//! Request control (admitters, reporters, screeners, request-header plugins) and flow-control policies.
//!
//! In llm-d these are active by being declared in `plugins` (no section lists them; flow-control
//! policies are named from `flowControl`). `probabilistic-admitter` runs here as an [`Admitter`]; the
//! flow-control policies implemented (`crate::flow_control`) are built from the `flowControl` section
//! that names them, and are checked here; those not implemented and `agent-identity` are accepted with
//! a warning.

use super::{no_params, only_keys, Group, Mapped, Refused};
use crate::config::params::{json_repr, ParamError};
use crate::plugins::registry::Entry;
use crate::rng::Rng;
use crate::scheduling::{Admitter, BuildContext, Plugin, PluginFactory, SchedulingContext};
use alloc::format;
use alloc::string::String;
use serde_json::{Map, Value};

/// The warning of a flow-control policy that is not implemented.
const NOT_IMPLEMENTED: &str =
    "is not implemented: a flowControl band or usageLimitPolicyPluginRef naming it \
                               gets llm-d's default policy instead (see the warning there)";

fn warn_not_implemented(ctx: &mut BuildContext<'_>) {
    ctx.warn("", NOT_IMPLEMENTED);
}

/// `parameters` must be absent or an object; llm-d's factory reads none of them, so any given are
/// named in a warning.
fn ignored(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    match params {
        Value::Null => Ok(()),
        Value::Object(o) if o.is_empty() => Ok(()),
        Value::Object(o) => {
            let keys: alloc::vec::Vec<&str> = o.keys().map(String::as_str).collect();
            ctx.warn(
                "",
                format!("{} ignored, as in llm-d (this plugin type reads no parameters)", keys.join(", ")),
            );
            Ok(())
        }
        other => Err(ParamError::new("", "an object", Some(json_repr(other)))),
    }
}

/// `key`, when present, is a number accepted by `ok` (described by `expected`).
fn number(
    obj: &Map<String, Value>,
    key: &str,
    expected: &str,
    ok: fn(f64) -> bool,
) -> Result<(), ParamError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && ok(n) => Ok(()),
            _ => Err(ParamError::new(key, expected, Some(json_repr(v)))),
        },
    }
}

/// `key`, when present, is one of `values`.
fn one_of(obj: &Map<String, Value>, key: &str, values: &[&str]) -> Result<(), ParamError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if values.contains(&s.as_str()) => Ok(()),
        Some(v) => {
            let quoted: alloc::vec::Vec<String> = values.iter().map(|s| format!("{s:?}")).collect();
            Err(ParamError::new(key, format!("one of {}", quoted.join(", ")), Some(json_repr(v))))
        }
    }
}

fn check_program_aware(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    let keys = [
        "strategy",
        "evictionTtlSeconds",
        "evictionSweepSeconds",
        "lasWeightService",
        "lasWeightHeadWait",
        "lasDecayFactor",
        "lasHalfLifeSeconds",
    ];
    if let Some(obj) = only_keys(params, &keys)? {
        one_of(obj, "strategy", &["las"])?;
        number(obj, "evictionTtlSeconds", "a number of seconds >= 0", |n| n >= 0.0)?;
        number(obj, "evictionSweepSeconds", "a number of seconds >= 0", |n| n >= 0.0)?;
        number(obj, "lasWeightService", "a number >= 0", |n| n >= 0.0)?;
        number(obj, "lasWeightHeadWait", "a number >= 0", |n| n >= 0.0)?;
        number(obj, "lasDecayFactor", "a factor in (0, 1]", |n| n > 0.0 && n <= 1.0)?;
        number(obj, "lasHalfLifeSeconds", "a number of seconds >= 0", |n| n >= 0.0)?;
    }
    warn_not_implemented(ctx);
    Ok(())
}

fn check_static_usage_limit(params: &Value, _: &mut BuildContext<'_>) -> Result<(), ParamError> {
    if let Some(obj) = only_keys(params, &["threshold"])? {
        number(obj, "threshold", "a fraction in [0, 1]", |n| (0.0..=1.0).contains(&n))?;
    }
    Ok(())
}

fn check_priority_holdback(params: &Value, _: &mut BuildContext<'_>) -> Result<(), ParamError> {
    if let Some(obj) = only_keys(params, &["shape", "domain", "minCeiling", "maxCeiling"])? {
        for key in ["shape", "domain"] {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null() && !v.is_string()) {
                return Err(ParamError::new(key, "a string", Some(json_repr(v))));
            }
        }
        number(obj, "minCeiling", "a fraction in [0, 1)", |n| (0.0..1.0).contains(&n))?;
        number(obj, "maxCeiling", "a fraction in (0, 1]", |n| n > 0.0 && n <= 1.0)?;
        one_of(obj, "shape", &["linear"])?;
        one_of(obj, "domain", &["rank", "value"])?;
    }
    Ok(())
}

fn check_soft_reflective_ceiling(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    no_params(params, ctx)?;
    warn_not_implemented(ctx);
    Ok(())
}

/// An implemented policy without parameters (global-strict, round-robin, FCFS, EDF, and the eviction
/// filter and order, which in-flight eviction always applies).
fn check_flow_policy(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    ignored(params, ctx)
}

fn check_unimplemented_flow_policy(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    ignored(params, ctx)?;
    warn_not_implemented(ctx);
    Ok(())
}

fn check_agent_identity(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    if let Some(obj) = only_keys(params, &["additionalSessionHeaders"])? {
        if let Some(v) = obj.get("additionalSessionHeaders").filter(|v| !v.is_null()) {
            let ok = v
                .as_array()
                .is_some_and(|list| list.iter().all(|h| h.as_str().is_some_and(|s| !s.trim().is_empty())));
            if !ok {
                return Err(ParamError::new(
                    "additionalSessionHeaders",
                    "a list of header names",
                    Some(json_repr(v)),
                ));
            }
        }
    }
    ctx.warn(
        "",
        "has no effect: the fairness id comes from the x-llm-d-inference-fairness-id (or \
         x-gateway-inference-fairness-id) header only; deriving it from an agent identity is not implemented",
    );
    Ok(())
}

crate::upstream_mapped_plugin!(
    /// `program-aware-fairness`: a flow-control fairness policy (least attained service between programs).
    ProgramAwareFairness,
    "program-aware-fairness",
    None,
    check_program_aware
);
crate::upstream_mapped_plugin!(
    /// `soft-reflective-ceiling-policy`: a flow-control usage limit (priority-graduated dispatch ceiling).
    SoftReflectiveCeilingPolicy,
    "soft-reflective-ceiling-policy",
    None,
    check_soft_reflective_ceiling
);
crate::upstream_mapped_plugin!(
    /// `static-usage-limit-policy`: a flow-control usage limit (fixed saturation ceiling).
    StaticUsageLimitPolicy,
    "static-usage-limit-policy",
    None,
    check_static_usage_limit
);
crate::upstream_mapped_plugin!(
    /// `priority-holdback-policy`: a flow-control usage limit (per-priority ceilings).
    PriorityHoldbackPolicy,
    "priority-holdback-policy",
    None,
    check_priority_holdback
);
crate::upstream_mapped_plugin!(
    /// `global-strict-fairness-policy`: a flow-control fairness policy.
    GlobalStrictFairnessPolicy,
    "global-strict-fairness-policy",
    None,
    check_flow_policy
);
crate::upstream_mapped_plugin!(
    /// `round-robin-fairness-policy`: a flow-control fairness policy.
    RoundRobinFairnessPolicy,
    "round-robin-fairness-policy",
    None,
    check_flow_policy
);
crate::upstream_mapped_plugin!(
    /// `fcfs-ordering-policy`: a flow-control queue order.
    FcfsOrderingPolicy,
    "fcfs-ordering-policy",
    None,
    check_flow_policy
);
crate::upstream_mapped_plugin!(
    /// `edf-ordering-policy`: a flow-control queue order.
    EdfOrderingPolicy,
    "edf-ordering-policy",
    None,
    check_flow_policy
);
crate::upstream_mapped_plugin!(
    /// `slo-deadline-ordering-policy`: a flow-control queue order.
    SloDeadlineOrderingPolicy,
    "slo-deadline-ordering-policy",
    None,
    check_unimplemented_flow_policy
);
crate::upstream_mapped_plugin!(
    /// `sheddable-eviction-filter`: which queued requests flow control may evict.
    SheddableEvictionFilter,
    "sheddable-eviction-filter",
    None,
    check_flow_policy
);
crate::upstream_mapped_plugin!(
    /// `priority-then-time-eviction-order-policy`: the order flow control evicts queued requests in.
    PriorityThenTimeEvictionOrderPolicy,
    "priority-then-time-eviction-order-policy",
    None,
    check_flow_policy
);
crate::upstream_mapped_plugin!(
    /// `agent-identity`: a request-header plugin naming the flow (fairness id) of agent sessions.
    AgentIdentity,
    "agent-identity",
    None,
    check_agent_identity
);

pub const PROBABILISTIC_ADMITTER: &str = "probabilistic-admitter";

/// `probabilistic-admitter` (llm-d): sheds sheddable requests (priority < 0) with a probability that
/// grows steeply with the candidates' load, instead of all of them at one threshold.
///
/// Load = mean over the candidates of `max(waiting / queueDepthThreshold, kv / kvCacheUtilThreshold)`,
/// an endpoint never scraped counting 1.0; a request is refused with probability `min(load^power × k, 1)`
/// (the defaults shed about 2 % at load 0.15 and everything from about 0.34). Requests with priority
/// ≥ 0 always pass. Refused requests get 429 (llm-d's error code says "resource exhausted").
#[derive(Clone, Debug, PartialEq)]
pub struct ProbabilisticAdmitter {
    queue_depth_threshold: f64,
    kv_cache_util_threshold: f64,
    power: f64,
    k: f64,
}

impl ProbabilisticAdmitter {
    /// The candidates' mean load (see the type's documentation).
    pub fn load(&self, ctx: &SchedulingContext<'_>, candidates: &[usize]) -> f64 {
        let mut total = 0.0;
        let mut n = 0usize;
        for e in candidates.iter().filter_map(|&i| ctx.pool.endpoints.get(i)) {
            n += 1;
            total += match &e.metrics {
                Some(m) => (f64::from(m.waiting) / self.queue_depth_threshold)
                    .max(m.kv_usage / self.kv_cache_util_threshold),
                None => 1.0,
            };
        }
        if n == 0 {
            0.0
        } else {
            total / n as f64
        }
    }

    /// The probability of refusing a sheddable request at `load`.
    pub fn refusal_probability(&self, load: f64) -> f64 {
        let p = pow(load, self.power) * self.k;
        if p.is_nan() {
            1.0
        } else {
            p.clamp(0.0, 1.0)
        }
    }
}

/// `base^e` for `base >= 0`, `e > 0`, as `exp(e ln base)` (no float library in no_std; relative error
/// around 1e-14, far below what a random draw can tell).
fn pow(base: f64, e: f64) -> f64 {
    if base <= 0.0 || base.is_nan() {
        return 0.0;
    }
    exp(e * ln(base))
}

/// Natural log for x > 0: x = m·2^k with m in [1, 2), ln m by the atanh series.
fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let k = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let (mut term, mut sum, mut n) = (t, 0.0, 1.0);
    while n < 40.0 {
        sum += term / n;
        term *= t2;
        n += 2.0;
    }
    2.0 * sum + k as f64 * core::f64::consts::LN_2
}

/// e^x: x = n·ln 2 + r with |r| <= ln 2 / 2, e^r by its series, times 2^n.
fn exp(x: f64) -> f64 {
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -708.0 {
        return 0.0;
    }
    let n = (x / core::f64::consts::LN_2 + if x < 0.0 { -0.5 } else { 0.5 }) as i64;
    let r = x - n as f64 * core::f64::consts::LN_2;
    let (mut term, mut sum) = (1.0, 1.0);
    for i in 1..24 {
        term *= r / f64::from(i);
        sum += term;
    }
    sum * f64::from_bits(((n + 1023) as u64) << 52)
}

impl Admitter for ProbabilisticAdmitter {
    fn admit(&self, ctx: &SchedulingContext<'_>, candidates: &[usize], rng: &mut Rng) -> Result<(), String> {
        if ctx.request.priority >= 0 || candidates.is_empty() {
            return Ok(());
        }
        let load = self.load(ctx, candidates);
        let p = self.refusal_probability(load);
        if rng.next_f64() < p {
            return Err(format!(
                "the request is sheddable and was shed (load {load:.3}, shedding probability {p:.2})"
            ));
        }
        Ok(())
    }
}

impl Plugin for ProbabilisticAdmitter {
    fn type_name(&self) -> &'static str {
        PROBABILISTIC_ADMITTER
    }
    fn as_admitter(&self) -> Option<&dyn Admitter> {
        Some(self)
    }
}

impl PluginFactory for ProbabilisticAdmitter {
    const TYPE: &'static str = PROBABILISTIC_ADMITTER;
    type Params = Value;

    /// llm-d's defaults and rules: every parameter > 0.
    fn build(params: Value, _: &mut BuildContext<'_>) -> Result<ProbabilisticAdmitter, ParamError> {
        let mut a = ProbabilisticAdmitter {
            queue_depth_threshold: 5.0,
            kv_cache_util_threshold: 0.8,
            power: 5.0,
            k: 300.0,
        };
        let Some(obj) = only_keys(&params, &["queueDepthThreshold", "kvCacheUtilThreshold", "power", "k"])?
        else {
            return Ok(a);
        };
        let positive = |key: &str, integer: bool| -> Result<Option<f64>, ParamError> {
            let Some(v) = obj.get(key).filter(|v| !v.is_null()) else { return Ok(None) };
            let n = if integer { v.as_i64().map(|n| n as f64) } else { v.as_f64() };
            match n {
                Some(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
                _ => Err(ParamError::new(
                    key,
                    if integer { "an integer > 0" } else { "a number > 0" },
                    Some(json_repr(v)),
                )),
            }
        };
        if let Some(n) = positive("queueDepthThreshold", true)? {
            a.queue_depth_threshold = n;
        }
        if let Some(n) = positive("kvCacheUtilThreshold", false)? {
            a.kv_cache_util_threshold = n;
        }
        if let Some(n) = positive("power", false)? {
            a.power = n;
        }
        if let Some(n) = positive("k", false)? {
            a.k = n;
        }
        Ok(a)
    }
}

const FLOW_CONTROL_DONE_BY: &str =
    "flow control (scheduler-core/src/flow_control), when a flowControl band (fairness, ordering) or \
     usageLimitPolicyPluginRef (usage limit) names it and the flowControl feature gate is on";
const NOT_DONE_BY: &str = "nothing: not implemented; a flowControl reference to it gets llm-d's default \
                           policy, with a warning";

const fn flow(type_name: &'static str) -> Mapped {
    Mapped { type_name, role: None, done_by: FLOW_CONTROL_DONE_BY }
}

const EVICTION_DONE_BY: &str = "flow control's in-flight eviction (flowControl.enableEviction with the flowControl \
                                feature gate), which always evicts sheddable requests only, lowest priority and \
                                most recently dispatched first";

const fn not_done(type_name: &'static str) -> Mapped {
    Mapped { type_name, role: None, done_by: NOT_DONE_BY }
}

pub const GROUP: Group = Group {
    entries: &[
        Entry::of::<ProbabilisticAdmitter>(),
        Entry::of::<AgentIdentity>(),
        Entry::of::<ProgramAwareFairness>(),
        Entry::of::<SoftReflectiveCeilingPolicy>(),
        Entry::of::<StaticUsageLimitPolicy>(),
        Entry::of::<PriorityHoldbackPolicy>(),
        Entry::of::<GlobalStrictFairnessPolicy>(),
        Entry::of::<RoundRobinFairnessPolicy>(),
        Entry::of::<FcfsOrderingPolicy>(),
        Entry::of::<EdfOrderingPolicy>(),
        Entry::of::<SloDeadlineOrderingPolicy>(),
        Entry::of::<SheddableEvictionFilter>(),
        Entry::of::<PriorityThenTimeEvictionOrderPolicy>(),
    ],
    mapped: &[
        Mapped {
            type_name: PROBABILISTIC_ADMITTER,
            role: None,
            done_by: "admission: after the saturation check, a sheddable request is refused (429) with \
                      probability min(load^power × k, 1) over its candidates' queue and KV-cache load, with \
                      llm-d's parameters and defaults (llm-d v0.10 answers 500 for the same refusal)",
        },
        Mapped {
            type_name: "agent-identity",
            role: None,
            done_by: "nothing: the fairness id comes from its header only; accepted with a warning \
                      (additionalSessionHeaders checked)",
        },
        not_done("program-aware-fairness"),
        not_done("soft-reflective-ceiling-policy"),
        flow("static-usage-limit-policy"),
        flow("priority-holdback-policy"),
        flow("global-strict-fairness-policy"),
        flow("round-robin-fairness-policy"),
        flow("fcfs-ordering-policy"),
        flow("edf-ordering-policy"),
        not_done("slo-deadline-ordering-policy"),
        Mapped { type_name: "sheddable-eviction-filter", role: None, done_by: EVICTION_DONE_BY },
        Mapped {
            type_name: "priority-then-time-eviction-order-policy",
            role: None,
            done_by: EVICTION_DONE_BY,
        },
    ],
    refused: &[
        Refused {
            type_name: "latency-slo-admitter",
            why: "it admits sheddable requests by the TTFT/TPOT predictions of llm-d's latency-predictor \
                  sidecars, which wasm-epp does not use; remove it (utilization-detector or \
                  probabilistic-admitter shed sheddable requests by load)",
        },
        Refused {
            type_name: "request-attribute-reporter",
            why: "returning a CEL-computed usage attribute as dynamic metadata (for token-based rate \
                  limiting) is not implemented, and a Wasm filter cannot set Envoy dynamic metadata at all; \
                  remove it and rate-limit on the response's usage by other means",
        },
        Refused {
            type_name: "disaggregatedset-rollout-screener",
            why: "pinning requests to one DisaggregatedSet revision during a rollout is not implemented; \
                  route each revision through its own InferencePool while rolling out",
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
    use crate::scheduling::SchedulingRequest;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn build(params: Value) -> Result<ProbabilisticAdmitter, ParamError> {
        let mut shared = crate::scheduling::SharedState::default();
        ProbabilisticAdmitter::build(params, &mut BuildContext::new("a", &mut shared))
    }

    fn pool(loads: &[Option<(u32, f64)>]) -> PoolSnapshot {
        let endpoints = loads
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut e = EndpointState::new(Endpoint::new(format!("10.0.0.{}:8000", i + 1)));
                e.metrics = l.map(|(waiting, kv_usage)| Metrics { waiting, kv_usage, ..Metrics::default() });
                e
            })
            .collect();
        PoolSnapshot { endpoints, ..PoolSnapshot::default() }
    }

    #[test]
    fn defaults_and_parameter_errors() {
        let a = build(Value::Null).unwrap();
        assert_eq!(
            (a.queue_depth_threshold, a.kv_cache_util_threshold, a.power, a.k),
            (5.0, 0.8, 5.0, 300.0)
        );
        let b = build(serde_json::json!({"queueDepthThreshold": 10, "k": 1.5})).unwrap();
        assert_eq!((b.queue_depth_threshold, b.k), (10.0, 1.5));
        let e = |v| build(v).unwrap_err().to_string();
        assert_eq!(e(serde_json::json!({"power": 0})), "power: expected a number > 0, got 0");
        assert_eq!(
            e(serde_json::json!({"queueDepthThreshold": 2.5})),
            "queueDepthThreshold: expected an integer > 0, got 2.5"
        );
        assert!(e(serde_json::json!({"kvThreshold": 1}))
            .starts_with("kvThreshold: expected one of the parameters"));
    }

    #[test]
    fn sheds_only_sheddable_requests_with_llm_d_probabilities() {
        let a = build(Value::Null).unwrap();
        // Load 0.15 → 0.15^5 × 300 ≈ 0.0228; from ≈ 0.34 on, 1.
        assert!((a.refusal_probability(0.15) - 0.022_781).abs() < 1e-5);
        assert_eq!(a.refusal_probability(0.35), 1.0);
        assert_eq!(a.refusal_probability(0.0), 0.0);
        for (b, e) in [(0.2, 5.0), (0.37, 2.5), (3.0, 0.5), (1e-3, 7.25), (12.0, 3.0)] {
            let want = f64::powf(b, e);
            assert!((pow(b, e) - want).abs() <= want * 1e-12, "{b}^{e}");
        }

        // Queue 5 of 5 on one endpoint (1.0), KV 0.4 of 0.8 on the other (0.5), one never scraped (1.0).
        let p = pool(&[Some((5, 0.1)), Some((0, 0.4)), None]);
        let all: Vec<usize> = (0..3).collect();
        let sheddable = SchedulingRequest { priority: -1, ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &sheddable, pool: &p, now_ms: 0 };
        assert!((a.load(&ctx, &all) - 2.5 / 3.0).abs() < 1e-9);
        assert!((a.load(&ctx, &[1]) - 0.5).abs() < 1e-9, "over the candidates only");
        let mut rng = Rng::new(7);
        assert!(a.admit(&ctx, &all, &mut rng).unwrap_err().contains("shed"));

        let normal = SchedulingRequest { priority: 0, ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &normal, pool: &p, now_ms: 0 };
        assert_eq!(a.admit(&ctx, &all, &mut rng), Ok(()));

        // Idle pool: nothing shed.
        let idle = pool(&[Some((0, 0.0)), Some((0, 0.0))]);
        let ctx = SchedulingContext { request: &sheddable, pool: &idle, now_ms: 0 };
        assert_eq!(a.admit(&ctx, &[0, 1], &mut rng), Ok(()));

        // In between, the share shed follows the probability.
        let mid = pool(&[Some((1, 0.0))]); // load 0.2 → p = 0.096
        let ctx = SchedulingContext { request: &sheddable, pool: &mid, now_ms: 0 };
        let shed = (0..10_000).filter(|_| a.admit(&ctx, &[0], &mut rng).is_err()).count();
        assert!((800..1_150).contains(&shed), "{shed}");
    }
}
