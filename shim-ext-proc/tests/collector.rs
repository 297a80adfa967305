//! Companion collector mode: the binary scrapes model-sim replicas and serves the core's snapshot
//! encoding over HTTP, the way the Wasm filters' discovery URL polls it.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{epp_shim, http, model_sim, wait_for};
use scheduler_core::snapshot_codec;

#[test]
fn collector_only_serves_a_decodable_snapshot_with_every_replica_scraped() {
    let (a, b) = (model_sim(&["--busy", "3"]), model_sim(&["--engine", "sglang"]));
    let (a_addr, b_addr) =
        (a.addr("model-sim listening").to_string(), b.addr("model-sim listening").to_string());
    let config = format!(
        r#"{{"pool": {{"name": "sim", "endpoints": ["{a_addr}", {{"address": "{b_addr}", "engine": "sglang"}}]}}}}"#
    );
    let (shim, _dir) = epp_shim(&config, &["--collector-only"]);
    assert!(!shim.lines.iter().any(|l| l.contains("ext_proc")), "no ext_proc in collector mode");
    let addr = shim.addr("epp-shim http");
    let (snap, generation) = wait_for(20, "a snapshot with both replicas scraped", || {
        let (status, headers, body) = http(addr, "GET", "/snapshot", &[], b"");
        if status != 200 {
            return None;
        }
        let snap = snapshot_codec::decode(&body).expect("the served bytes decode");
        let generation =
            headers.iter().find(|(k, _)| k == "x-epp-snapshot-generation").map(|(_, v)| v.clone())?;
        snap.endpoints.iter().all(|e| e.metrics.is_some()).then_some((snap, generation))
    });
    assert_eq!(snap.pool, "sim");
    assert_eq!(generation, snap.generation.to_string());
    let busy = snap.find(&a_addr).unwrap().metrics.as_ref().unwrap();
    assert!(busy.running + busy.waiting >= 1, "the busy replica's load is visible: {busy:?}");
    assert_eq!(snap.find(&b_addr).unwrap().endpoint.engine.as_str(), "sglang");

    // A poller that already has the current generation gets 304 and no body.
    let (status, headers, _) = http(addr, "GET", "/snapshot", &[], b"");
    let current = headers.iter().find(|(k, _)| k == "x-epp-snapshot-generation").unwrap().1.clone();
    let (again, _, body) = http(addr, "GET", "/snapshot", &[("x-epp-snapshot-generation", &current)], b"");
    assert_eq!(status, 200);
    assert!(again == 304 || again == 200, "304 unless a new generation was published in between");
    if again == 304 {
        assert!(body.is_empty());
    }
}
