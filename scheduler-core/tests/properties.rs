//! Whole-core properties over the public API: any pool and any request body give a decision without
//! panicking, a routed decision names endpoints the caller may use, and a fixed seed gives the same
//! decisions (what lets the Wasm filter, the shim and the simulator agree).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;
use scheduler_core::admission::{admit, Decision};
use scheduler_core::model::{Endpoint, EndpointState, InFlight, Metrics, PoolSnapshot, Role};
use scheduler_core::request::{parse_request, RequestMeta};
use scheduler_core::rng::Rng;
use scheduler_core::scheduling::pipeline::Scheduler;
use scheduler_core::scheduling::SchedulingRequest;

/// Configurations exercising every part of the pipeline: GIE default, legacy filters, llm-d scorers,
/// prefix affinity gate, P/D disaggregation, random pickers with fallbacks.
const CONFIGS: &[&str] = &[
    "",
    r#"{"plugins": [{"type": "low-queue-filter"}, {"type": "lora-affinity-filter"},
                    {"type": "least-queue-filter"}, {"type": "least-kv-cache-filter"},
                    {"type": "random-picker", "parameters": {"maxNumOfEndpoints": 3}}]}"#,
    r#"{"plugins": [{"type": "prefix-cache-affinity-filter"}, {"type": "prefix-cache-scorer"},
                    {"type": "load-aware-scorer"}, {"type": "active-request-scorer"},
                    {"type": "session-affinity-scorer"}, {"type": "token-load-scorer"},
                    {"type": "lora-affinity-scorer"}, {"type": "running-requests-size-scorer"},
                    {"type": "lora-slot-scorer"},
                    {"type": "weighted-random-picker", "parameters": {"maxNumOfEndpoints": 2}}]}"#,
    r#"{"plugins": [{"type": "prefill-filter"}, {"type": "decode-filter"}, {"type": "prefix-cache-scorer"},
                    {"type": "queue-scorer"}, {"type": "max-score-picker"},
                    {"type": "pd-profile-handler", "parameters": {"threshold": 0}}],
        "schedulingProfiles": [
          {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "queue-scorer"},
                                          {"pluginRef": "max-score-picker"}]},
          {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}, {"pluginRef": "prefix-cache-scorer"},
                                         {"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}]}"#,
    r#"{"plugins": [{"type": "utilization-detector", "parameters": {"headroom": 0.2}},
                    {"type": "concurrency-detector"}, {"type": "queue-scorer"},
                    {"type": "kv-cache-utilization-scorer"}, {"type": "inflight-aware-queue-scorer"},
                    {"type": "lora-slot-scorer", "parameters": {"baseModels": ["m"]}}],
        "saturationDetector": {"pluginRef": "concurrency-detector"},
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "utilization-detector"},
            {"pluginRef": "queue-scorer", "weight": 2.5}, {"pluginRef": "kv-cache-utilization-scorer"},
            {"pluginRef": "inflight-aware-queue-scorer", "weight": 0.5},
            {"pluginRef": "lora-slot-scorer", "weight": 4}]}]}"#,
];

fn metrics_strategy() -> impl Strategy<Value = Option<Metrics>> {
    let adapters = prop::collection::vec(prop::sample::select(vec!["a", "b", "m", "sql-lora"]), 0..3);
    let metrics = (
        (0u32..300, 0u32..300, prop_oneof![Just(f64::NAN), -1.0f64..2.0, 0.0f64..1.0]),
        (adapters.clone(), adapters, proptest::option::of(0u32..4)),
        (proptest::option::of(prop_oneof![Just(0u32), 1u32..64]), proptest::option::of(0u32..50_000)),
        0u64..2_000,
    )
        .prop_map(|((waiting, running, kv), (run, wait, max_lora), (block_size, blocks), t)| Metrics {
            waiting,
            running,
            kv_usage: kv,
            running_loras: run.into_iter().map(String::from).collect(),
            waiting_loras: wait.into_iter().map(String::from).collect(),
            max_lora,
            block_size,
            num_gpu_blocks: blocks,
            updated_at_ms: t,
        });
    proptest::option::of(metrics)
}

fn pool_strategy() -> impl Strategy<Value = PoolSnapshot> {
    prop::collection::vec((metrics_strategy(), 0u8..3, 0u32..20, 0u64..100_000, 0u32..3), 0..12).prop_map(
        |eps| {
            let mut pool = PoolSnapshot { generation: 1, published_at_ms: 1_000, ..Default::default() };
            for (i, (metrics, role, reqs, tokens, fails)) in eps.into_iter().enumerate() {
                let mut e = Endpoint::new(format!("10.0.{}.{}:8000", i / 200, i % 200 + 1));
                e.role = [Role::Both, Role::Prefill, Role::Decode][usize::from(role)];
                pool.endpoints.push(EndpointState {
                    endpoint: e,
                    metrics,
                    consecutive_scrape_failures: fails,
                    in_flight: InFlight { requests: reqs, tokens, ..InFlight::default() },
                });
            }
            pool.sort();
            pool
        },
    )
}

fn body_strategy() -> impl Strategy<Value = (String, Vec<u8>)> {
    let text = "[a-zA-Z \\n\"\\\\é]{0,400}";
    prop_oneof![
        (prop::sample::select(vec!["m", "a", "b", "unknown"]), text, text).prop_map(|(model, sys, q)| {
            let body = serde_json::json!({"model": model, "messages": [
                {"role": "system", "content": sys}, {"role": "user", "content": q}], "max_tokens": 64});
            (String::from("/v1/chat/completions"), body.to_string().into_bytes())
        }),
        (prop::sample::select(vec!["m", "a"]), text).prop_map(|(model, p)| {
            let body = serde_json::json!({"model": model, "prompt": p, "cache_salt": "t1"});
            (String::from("/v1/completions"), body.to_string().into_bytes())
        }),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (String::from("/v1/chat/completions"), b)),
    ]
}

fn subset_strategy() -> impl Strategy<Value = Option<Vec<String>>> {
    proptest::option::of(prop::collection::vec(
        prop_oneof![
            (0usize..14).prop_map(|i| format!("10.0.0.{}:8000", i + 1)),
            (0usize..14).prop_map(|i| format!("10.0.0.{}", i + 1)),
            Just(String::from("garbage")),
        ],
        0..4,
    ))
}

/// What arrives with a request besides its body.
struct Call<'a> {
    priority: i32,
    subset: Option<&'a [String]>,
    now_ms: u64,
    seed: u64,
}

/// Runs one request through parse + decide the way the filter does; `None` when the body is rejected.
fn run_one(
    scheduler: &mut Scheduler,
    pool: &PoolSnapshot,
    path: &str,
    body: &[u8],
    call: Call<'_>,
) -> Option<Decision> {
    let Call { priority, subset, now_ms, seed } = call;
    let parsed = parse_request(path, body).ok()?;
    let meta = RequestMeta { request_id: "req-1", priority, session_token: None, ..RequestMeta::default() };
    let req: SchedulingRequest<'_> = parsed.scheduling_request(meta);
    let subset_refs: Option<Vec<&str>> = subset.map(|s| s.iter().map(String::as_str).collect());
    Some(admit(scheduler, &req, pool, subset_refs.as_deref(), now_ms, &mut Rng::new(seed)))
}

fn allowed_by_subset(addr: &str, subset: Option<&[String]>) -> bool {
    match subset {
        None => true,
        Some(s) => s.iter().any(|e| e == addr || addr.rsplit_once(':').map(|(ip, _)| ip) == Some(e.as_str())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn any_pool_any_request_gives_a_sound_decision(
        config in 0usize..CONFIGS.len(),
        pool in pool_strategy(),
        requests in prop::collection::vec((body_strategy(), -2i32..2, subset_strategy()), 1..6),
        now_ms in 0u64..3_000,
        seed in any::<u64>(),
    ) {
        let cfg = CONFIGS[config];
        let mut s = if cfg.is_empty() { Scheduler::gie_default() } else { Scheduler::from_json(cfg) }
            .expect("test configurations are valid");
        for ((path, body), priority, subset) in &requests {
            let Some(d) = run_one(&mut s, &pool, path, body, Call { priority: *priority, subset: subset.as_deref(), now_ms, seed }) else {
                continue;
            };
            match d {
                Decision::Route { destination, fallbacks, prefill, .. } => {
                    let ep = pool.find(&destination);
                    prop_assert!(ep.is_some(), "destination {destination} not in the pool");
                    prop_assert!(allowed_by_subset(&destination, subset.as_deref()), "{destination} outside the subset");
                    let mut seen = vec![destination.clone()];
                    for f in &fallbacks {
                        prop_assert!(pool.find(f).is_some(), "fallback {f} not in the pool");
                        prop_assert!(allowed_by_subset(f, subset.as_deref()));
                        prop_assert!(!seen.contains(f), "fallback {f} repeated");
                        seen.push(f.clone());
                    }
                    if let Some(p) = prefill {
                        let pe = pool.find(&p);
                        prop_assert!(pe.is_some(), "prefill {p} not in the pool");
                        prop_assert_ne!(pe.map(|e| e.endpoint.role), Some(Role::Decode));
                    }
                }
                Decision::Reject { status, message, .. } => {
                    prop_assert!(status == 429 || status == 503, "status {status}");
                    prop_assert!(!message.is_empty());
                }
            }
        }
    }

    #[test]
    fn same_seed_same_decisions(
        config in 0usize..CONFIGS.len(),
        pool in pool_strategy(),
        requests in prop::collection::vec((body_strategy(), -1i32..1), 1..8),
        seed in any::<u64>(),
    ) {
        let cfg = CONFIGS[config];
        let build = || if cfg.is_empty() { Scheduler::gie_default() } else { Scheduler::from_json(cfg) };
        let (mut a, mut b) = (build().unwrap(), build().unwrap());
        for (i, ((path, body), priority)) in requests.iter().enumerate() {
            let s = seed.wrapping_add(i as u64);
            let da = run_one(&mut a, &pool, path, body, Call { priority: *priority, subset: None, now_ms: 500, seed: s });
            let db = run_one(&mut b, &pool, path, body, Call { priority: *priority, subset: None, now_ms: 500, seed: s });
            prop_assert_eq!(da, db);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(path in "[/a-z.?=]{0,30}", body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_request(&path, &body);
    }
}

#[test]
fn empty_pool_is_503_and_subset_outside_pool_is_503() {
    let mut s = Scheduler::gie_default().unwrap();
    let body = br#"{"model": "m", "prompt": "hello"}"#;
    let empty = PoolSnapshot::default();
    let d = run_one(
        &mut s,
        &empty,
        "/v1/completions",
        body,
        Call { priority: 0, subset: None, now_ms: 0, seed: 1 },
    )
    .unwrap();
    assert!(matches!(d, Decision::Reject { status: 503, .. }), "{d:?}");

    let mut pool = PoolSnapshot::default();
    pool.endpoints.push(EndpointState::new(Endpoint::new("10.0.0.1:8000")));
    let subset = vec![String::from("10.9.9.9:8000")];
    let d = run_one(
        &mut s,
        &pool,
        "/v1/completions",
        body,
        Call { priority: 0, subset: Some(&subset), now_ms: 0, seed: 1 },
    )
    .unwrap();
    assert!(matches!(d, Decision::Reject { status: 503, .. }), "{d:?}");
}
