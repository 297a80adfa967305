//! Every fault knob of the real `model-sim` binary, switched over HTTP (or set on the command line) and
//! observed the way a gateway would see it: over real loopback sockets.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{sample, Replica, FAST};
use serde_json::json;

#[test]
fn garbage_metrics_knob_flips_at_runtime() {
    let r = Replica::start(&FAST);
    assert!(sample(&r.metrics(), "vllm:num_requests_waiting").is_some());
    let set = r.request("POST", "/admin/faults", Some(&json!({"metrics_garbage": true})));
    assert_eq!(set.status, 200);
    assert_eq!(set.json()["metrics_garbage"], true);
    let garbage = r.request("GET", "/metrics", None);
    assert_eq!(garbage.status, 200);
    assert!(std::str::from_utf8(&garbage.body).is_err(), "garbage must not even be UTF-8");
    r.request("POST", "/admin/faults", Some(&json!({"metrics_garbage": false})));
    assert!(sample(&r.metrics(), "vllm:num_requests_waiting").is_some());
    let bad = r.request("POST", "/admin/faults", Some(&json!({"metrics_hung": true})));
    assert_eq!(bad.status, 400);
}

#[test]
fn error_rate_knob_answers_500_in_openai_shape() {
    let r = Replica::start(&[&FAST[..], &["--error-rate", "1"]].concat());
    let body = json!({"prompt": "x", "max_tokens": 1});
    let reply = r.request("POST", "/v1/completions", Some(&body));
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "InternalServerError");
    r.request("POST", "/admin/faults", Some(&json!({"error_rate": 0.5})));
    let statuses: Vec<u16> =
        (0..30).map(|_| r.request("POST", "/v1/completions", Some(&body)).status).collect();
    assert!(statuses.contains(&200) && statuses.contains(&500), "{statuses:?}");
    r.request("POST", "/admin/faults", Some(&json!({"error_rate": 0.0})));
    assert_eq!(r.request("POST", "/v1/completions", Some(&body)).status, 200);
}

#[test]
fn drop_fault_cuts_the_stream_after_n_chunks() {
    let r = Replica::start(&[&FAST[..], &["--drop-after-chunks", "2"]].concat());
    let body = json!({"prompt": "x", "max_tokens": 10, "stream": true});
    let reply = r.request("POST", "/v1/completions", Some(&body));
    assert_eq!(reply.status, 200);
    assert!(reply.truncated);
    assert_eq!(reply.events().len(), 2);
    assert!(!String::from_utf8_lossy(&reply.body).contains("[DONE]"));
}

#[test]
fn slow_metrics_knob_delays_the_scrape() {
    let r = Replica::start(&[&FAST[..], &["--metrics-delay-ms", "300"]].concat());
    let t = Instant::now();
    let _ = r.metrics();
    assert!(t.elapsed() >= Duration::from_millis(300));
    r.request("POST", "/admin/faults", Some(&json!({"metrics_delay_ms": 0, "metrics_hang": true})));
    let hung = r.send("GET", "/metrics", None, Duration::from_millis(300));
    assert_eq!(hung.status, 0, "a hanging /metrics must not answer");
}
