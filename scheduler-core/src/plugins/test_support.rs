//! Small pools and one-call runners for plugin tests, so each test reads as a worked example.

use crate::config::params::{parse_params, ParamError};
use crate::model::{Endpoint, EndpointState, InFlight, Metrics, PoolSnapshot};
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, SchedulingRequest, SharedState,
};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// Test clock: metrics stamped `NOW` are fresh.
pub const NOW: u64 = 1_000_000;

/// An endpoint `10.0.0.<n>:8000` with fresh metrics.
pub fn ep(n: u8, waiting: u32, running: u32, kv: f64) -> EndpointState {
    let mut s = bare(n);
    s.metrics = Some(Metrics { waiting, running, kv_usage: kv, updated_at_ms: NOW, ..Metrics::default() });
    s
}

/// An endpoint `10.0.0.<n>:8000` that has never been scraped.
pub fn bare(n: u8) -> EndpointState {
    EndpointState::new(Endpoint::new(addr(n)))
}

pub fn addr(n: u8) -> String {
    alloc::format!("10.0.0.{n}:8000")
}

/// Same endpoint with its metrics `age_ms` old at `NOW`.
pub fn aged(mut s: EndpointState, age_ms: u64) -> EndpointState {
    if let Some(m) = s.metrics.as_mut() {
        m.updated_at_ms = NOW - age_ms;
    }
    s
}

/// Same endpoint with LoRA state.
pub fn lora(
    mut s: EndpointState,
    running: &[&str],
    waiting: &[&str],
    max_lora: Option<u32>,
) -> EndpointState {
    if let Some(m) = s.metrics.as_mut() {
        m.running_loras = running.iter().map(|a| a.to_string()).collect();
        m.waiting_loras = waiting.iter().map(|a| a.to_string()).collect();
        m.max_lora = max_lora;
    }
    s
}

/// Six servers, each in one state for the adapter "sql": 1 runs it (and is full), 2 has a free slot,
/// 3 has it waiting (and is full), 4 is full without it, 5 has LoRA off (no `max_lora`), 6 was never
/// scraped.
pub fn lora_tiers_pool() -> PoolSnapshot {
    pool(vec![
        lora(ep(1, 0, 0, 0.0), &["sql", "chat"], &[], Some(2)),
        lora(ep(2, 0, 0, 0.0), &["chat"], &[], Some(4)),
        lora(ep(3, 0, 0, 0.0), &["chat"], &["sql"], Some(2)),
        lora(ep(4, 0, 0, 0.0), &["a", "b"], &[], Some(2)),
        lora(ep(5, 0, 0, 0.0), &[], &[], None),
        bare(6),
    ])
}

/// Same endpoint with gateway in-flight work.
pub fn inflight(mut s: EndpointState, requests: u32, tokens: u64) -> EndpointState {
    s.in_flight = InFlight { requests, tokens, ..InFlight::default() };
    s
}

pub fn pool(endpoints: Vec<EndpointState>) -> PoolSnapshot {
    PoolSnapshot { endpoints, ..PoolSnapshot::default() }
}

fn all(pool: &PoolSnapshot) -> Vec<usize> {
    (0..pool.endpoints.len()).collect()
}

/// Scores every endpoint of `pool` (candidates in pool order).
pub fn scores(plugin: &dyn Plugin, pool: &PoolSnapshot, request: &SchedulingRequest<'_>) -> Vec<f64> {
    scores_of(plugin, pool, request, &all(pool))
}

pub fn scores_of(
    plugin: &dyn Plugin,
    pool: &PoolSnapshot,
    request: &SchedulingRequest<'_>,
    candidates: &[usize],
) -> Vec<f64> {
    let scorer = plugin.as_scorer().expect("plays the scorer part");
    let ctx = SchedulingContext { request, pool, now_ms: NOW };
    let mut out = vec![f64::NAN; candidates.len()];
    scorer.score(&ctx, &mut CycleState::default(), candidates, &mut out);
    out
}

/// Filters every endpoint of `pool` and returns the kept indices.
pub fn kept(plugin: &dyn Plugin, pool: &PoolSnapshot, request: &SchedulingRequest<'_>) -> Vec<usize> {
    kept_of(plugin, pool, request, all(pool))
}

pub fn kept_of(
    plugin: &dyn Plugin,
    pool: &PoolSnapshot,
    request: &SchedulingRequest<'_>,
    mut candidates: Vec<usize>,
) -> Vec<usize> {
    let filter = plugin.as_filter().expect("plays the filter part");
    let ctx = SchedulingContext { request, pool, now_ms: NOW };
    filter.filter(&ctx, &mut CycleState::default(), &mut candidates);
    candidates
}

pub fn saturation(plugin: &dyn Plugin, pool: &PoolSnapshot) -> f64 {
    let detector = plugin.as_saturation_detector().expect("plays the detector part");
    let request = SchedulingRequest::default();
    detector.saturation(&SchedulingContext { request: &request, pool, now_ms: NOW })
}

/// Asserts two float slices are equal to 1e-9.
pub fn assert_close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-9, "{actual:?} vs {expected:?}");
    }
}

/// Parses `Params` from JSON (serde only, nothing checked: to read the defaults).
pub fn params<T: serde::de::DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).expect("valid params JSON")
}

/// Builds plugin `F` from its `parameters` JSON as the scheduler does (parse, then the factory's
/// `build`), with `shared` holding what the plugins built before it produced.
pub fn try_build_with<F: PluginFactory>(json: &str, shared: &mut SharedState) -> Result<F, ParamError> {
    let value: serde_json::Value = serde_json::from_str(json).expect("valid params JSON");
    let params: F::Params = parse_params(&value)?;
    F::build(params, &mut BuildContext::new(F::TYPE, shared))
}

/// [`try_build_with`] alone, with no other plugins.
pub fn try_build<F: PluginFactory>(json: &str) -> Result<F, ParamError> {
    try_build_with(json, &mut SharedState::default())
}

pub fn built_with<F: PluginFactory>(json: &str, shared: &mut SharedState) -> F {
    try_build_with(json, shared).unwrap_or_else(|e| panic!("{}: {e}", F::TYPE))
}

pub fn built<F: PluginFactory>(json: &str) -> F {
    built_with(json, &mut SharedState::default())
}

/// The error building `F` from `json` (panics if it builds).
pub fn build_err<F: PluginFactory>(json: &str) -> ParamError {
    match try_build::<F>(json) {
        Ok(_) => panic!("{} built from {json}", F::TYPE),
        Err(e) => e,
    }
}

/// A picker returning at most `max` endpoints.
pub fn picker<F: PluginFactory>(max: usize) -> F {
    built(&alloc::format!(r#"{{"maxNumOfEndpoints": {max}}}"#))
}

/// Every built-in plugin, with default parameters, on arbitrary pools: no panic, scores in [0, 1], filters
/// return an order-preserving subset, saturation finite and non-negative.
mod robustness {
    use super::*;
    use crate::plugins::registry::Registry;
    use alloc::boxed::Box;
    use proptest::prelude::*;

    /// Every built-in type, built with its defaults as a configuration entry without parameters is
    /// (except those that require a parameter).
    fn all_plugins() -> Vec<Box<dyn Plugin>> {
        let registry = Registry::builtin();
        let build = |t| match registry.build(t, &serde_json::Value::Null) {
            Err(e) if e.to_string().contains("(this parameter is required)") => None,
            built => Some(built.unwrap()),
        };
        registry.types().into_iter().filter_map(build).collect()
    }

    fn endpoint() -> impl Strategy<Value = EndpointState> {
        let metrics =
            (any::<u32>(), any::<u32>(), 0.0..=1.0f64, 0u64..=NOW, proptest::option::of(0u32..4), 0usize..3);
        (1u8..=250, proptest::option::of(metrics), any::<u32>(), any::<u64>()).prop_map(|(n, m, req, tok)| {
            let mut s = inflight(bare(n), req, tok);
            if let Some((waiting, running, kv, at, max_lora, loras)) = m {
                s.metrics =
                    Some(Metrics { waiting, running, kv_usage: kv, updated_at_ms: at, ..Metrics::default() });
                let names = ["a", "b", "c"];
                s = lora(s, names.get(..loras).unwrap_or(&[]), names.get(loras..).unwrap_or(&[]), max_lora);
            }
            s
        })
    }

    proptest! {
        #[test]
        fn plugins_behave_on_any_pool(
            endpoints in proptest::collection::vec(endpoint(), 0..6),
            candidates in proptest::collection::vec(0usize..8, 0..8),
            model in "[abc]?",
            token in proptest::option::of("[A-Za-z0-9+/=_-]{0,24}"),
        ) {
            let p = pool(endpoints);
            let request = SchedulingRequest {
                model: &model,
                request_id: "id",
                session_token: token.as_deref(),
                ..SchedulingRequest::default()
            };
            for plugin in all_plugins() {
                if plugin.as_scorer().is_some() {
                    for s in scores_of(plugin.as_ref(), &p, &request, &candidates) {
                        prop_assert!((0.0..=1.0).contains(&s), "{} gave {s}", plugin.type_name());
                    }
                }
                if plugin.as_filter().is_some() {
                    let out = kept_of(plugin.as_ref(), &p, &request, candidates.clone());
                    let mut rest = candidates.iter();
                    prop_assert!(out.iter().all(|k| rest.any(|c| c == k)), "{} not a subsequence", plugin.type_name());
                }
                if plugin.as_saturation_detector().is_some() {
                    let s = saturation(plugin.as_ref(), &p);
                    prop_assert!(s.is_finite() && s >= 0.0, "{} gave {s}", plugin.type_name());
                }
            }
        }
    }
}
