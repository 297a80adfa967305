//! Two schedulers stand in for two proxy worker threads: what one routes, the other learns through
//! `learn_prefix`, so a shared-prefix request follows its cache whichever worker it lands on.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use scheduler_core::admission::{admit, Decision};
use scheduler_core::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
use scheduler_core::request::{parse_request, RequestMeta};
use scheduler_core::rng::Rng;
use scheduler_core::scheduling::pipeline::Scheduler;

fn pool() -> PoolSnapshot {
    let mut pool = PoolSnapshot::default();
    for i in 1..=8 {
        let m = Metrics { waiting: 1, running: 4, kv_usage: 0.3, updated_at_ms: 1_000, ..Metrics::default() };
        pool.endpoints.push(EndpointState {
            metrics: Some(m),
            ..EndpointState::new(Endpoint::new(format!("10.0.0.{i}:8000")))
        });
    }
    pool
}

fn route(s: &mut Scheduler, pool: &PoolSnapshot, body: &[u8], seed: u64) -> (String, Vec<u64>) {
    let parsed = parse_request("/v1/chat/completions", body).unwrap();
    let meta = RequestMeta { request_id: "r", priority: 0, session_token: None, ..RequestMeta::default() };
    match admit(s, &parsed.scheduling_request(meta), pool, None, 1_010, &mut Rng::new(seed)) {
        Decision::Route { destination, prefix_hashes, .. } => (destination, prefix_hashes),
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn a_worker_learns_where_another_sent_a_prefix() {
    let pool = pool();
    let system = "You are a meticulous assistant. ".repeat(200);
    let body = |q: &str| {
        serde_json::json!({"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]})
            .to_string()
    };
    let (mut a, mut b) = (Scheduler::gie_default().unwrap(), Scheduler::gie_default().unwrap());
    let (dest, hashes) = route(&mut a, &pool, body("first question").as_bytes(), 1);
    assert!(hashes.len() > 50, "a ~6 KB system prompt spans many 64-byte blocks");

    // Without learning, worker B spreads the follow-ups over the equally loaded pool.
    let spread: std::collections::BTreeSet<String> = (0..16)
        .map(|i| route(&mut Scheduler::gie_default().unwrap(), &pool, body("second").as_bytes(), 100 + i).0)
        .collect();
    assert!(spread.len() > 1, "ties break randomly: {spread:?}");

    b.learn_prefix(&pool, &dest, &hashes);
    for seed in 0..16 {
        let (d, _) = route(&mut b, &pool, body(&format!("follow-up {seed}")).as_bytes(), seed);
        assert_eq!(d, dest, "worker B must follow worker A's cached prefix");
    }
}
