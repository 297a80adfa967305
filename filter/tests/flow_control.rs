//! Flow control in the filter: requests that must wait stay paused and are resumed (or answered) by
//! the worker's root context; priority and capacity hold across worker VMs through shared data.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proxy_wasm_emulator::{Host, LogLevel, StreamId, VmId};
use std::time::Duration;

/// Two endpoints, each saturated at one request in flight (the concurrency detector): capacity 2.
fn fc_config(flow_control: &str) -> String {
    let sep = if flow_control.is_empty() { "" } else { ", " };
    config(
        2,
        &format!(
            r#""featureGates": ["flowControl"],
            "plugins": [{{"type": "queue-scorer"}}, {{"type": "max-score-picker"}},
                        {{"type": "concurrency-detector", "parameters": {{"maxConcurrency": 1}}}}],
            "schedulingProfiles": [{{"name": "default", "plugins": [{{"pluginRef": "queue-scorer"}}, {{"pluginRef": "max-score-picker"}}]}}],
            "flowControl": {{"saturationDetector": {{"pluginRef": "concurrency-detector"}}{sep}{flow_control}}},
            "objectives": [{{"name": "high", "priority": 10}}]"#
        ),
    )
}

fn workers(host: &mut Host, n: usize, flow_control: &str) -> Vec<VmId> {
    let cfg = fc_config(flow_control);
    let vms: Vec<VmId> = (0..n).map(|_| host.start_vm(picker(&cfg)).unwrap()).collect();
    write_snapshot(host, 1, &[0, 0]);
    vms
}

const HIGH: [(&str, &str); 1] = [("x-gateway-inference-objective", "high")];

fn body(i: usize) -> String {
    format!(
        r#"{{"model": "llama", "messages": [{{"role": "user", "content": "request {i}"}}], "max_tokens": 8}}"#
    )
}

fn sent(host: &Host, s: StreamId) -> bool {
    host.stream(s).upstream_request.is_some()
}

fn gauge(host: &Host, name: &str) -> i64 {
    host.metric_value(name).unwrap_or(0)
}

/// Every flow-control queue gauge of the process (all bands).
fn queued_total(host: &Host) -> i64 {
    host.metrics()
        .iter()
        .filter(|(k, _)| k.starts_with("epp_flow_control_queue_size."))
        .map(|(_, m)| m.value)
        .sum()
}

#[test]
fn a_burst_of_three_times_capacity_is_served_in_priority_order_across_workers() {
    let mut host = host();
    let vms = workers(&mut host, 2, "");
    // Six requests, three per worker, the low ones first: two go at once, four wait paused.
    let mut streams = Vec::new();
    for i in 0..6 {
        let vm = vms[i % 2];
        let high = i >= 3;
        let s = chat(&mut host, vm, &body(i), if high { &HIGH } else { &[] });
        streams.push((s, high));
        host.advance(Duration::from_millis(1));
    }
    let first: Vec<usize> = (0..6).filter(|&i| sent(&host, streams[i].0)).collect();
    assert_eq!(first, vec![0, 1], "capacity 2: the first two go, the rest wait");
    for (s, _) in &streams[2..] {
        assert!(host.stream(*s).request_paused() && host.stream(*s).local_reply.is_none());
    }
    assert_eq!(queued_total(&host), 4);
    assert_eq!(gauge(&host, "epp_flow_control_queue_size.band_10"), 3);

    // Each time a request ends, the next goes: every high one before the low one still waiting, whichever
    // worker holds it.
    let mut order = Vec::new();
    let mut running: Vec<usize> = first;
    for _ in 0..8 {
        let Some(done) = running.first().copied() else { break };
        running.remove(0);
        host.respond(streams[done].0, 200, b"{}").unwrap();
        host.advance(Duration::from_millis(12));
        host.advance(Duration::from_millis(12));
        for (i, (s, _)) in streams.iter().enumerate() {
            if sent(&host, *s) && !order.contains(&i) && i >= 2 {
                order.push(i);
                running.push(i);
            }
        }
    }
    assert_eq!(order.len(), 4, "every waiting request was served: {order:?}");
    let highs: Vec<bool> = order.iter().map(|&i| streams[i].1).collect();
    assert_eq!(highs, vec![true, true, true, false], "strict priority across workers: {order:?}");
    for &i in &running {
        host.respond(streams[i].0, 200, b"{}").unwrap();
    }
    host.advance(Duration::from_millis(60));
    for (s, _) in &streams {
        let st = host.stream(*s);
        assert_eq!(st.response_status(), Some(200), "nothing lost: {st:?}");
        assert!(st.local_reply.is_none());
        // The body went up as sent, with its destination (read back through the stream's context).
        let up = st.upstream_request.as_ref().unwrap();
        assert!(destination(&st).is_some());
        assert!(String::from_utf8_lossy(&up.body).contains("request"));
    }
    assert_eq!(queued_total(&host), 0);
    assert_eq!(gauge(&host, "epp_in_flight_requests"), 0);
    assert_eq!(in_flight_total(&host), 0);
    assert_eq!(gauge(&host, "epp_flow_control_requests.Dispatched"), 4);
    assert!(host.metric("epp_flow_control_queue_duration_ms").unwrap().samples.len() >= 4);
    assert!(
        !host.logs_at(LogLevel::Warn).iter().any(|l| l.contains("not readable")),
        "{:?}",
        host.logs_at(LogLevel::Warn)
    );
    assert_no_traps(&host);
}

#[test]
fn a_request_that_ends_dispatches_the_next_at_once_without_waiting_for_the_tick() {
    let mut host = host();
    let vms = workers(&mut host, 1, "");
    let a = vms[0];
    let running: Vec<StreamId> = (0..2).map(|i| chat(&mut host, a, &body(i), &[])).collect();
    let waiting = chat(&mut host, a, &body(2), &[]);
    assert!(!sent(&host, waiting));
    // No time passes: the wake-up on the worker's own queue runs the dispatch round.
    host.respond(running[0], 200, b"{}").unwrap();
    assert!(sent(&host, waiting));
    assert!(host.shared_data_all(VM_ID).keys().all(|k| !k.contains("flow-wake")), "a queue, not shared data");
    assert_eq!(host.queue_len(VM_ID, "epp/pool/flow-wake/1"), Some(0), "drained");
    assert_no_traps(&host);
}

#[test]
fn a_worker_that_joins_sees_the_first_workers_requests_from_its_first_decision() {
    let mut host = host();
    let vms = workers(&mut host, 2, "");
    let (a, b) = (vms[0], vms[1]);
    // Worker a alone takes the whole capacity; b has not served anything yet.
    let running: Vec<StreamId> = (0..2).map(|i| chat(&mut host, a, &body(i), &[])).collect();
    assert!(running.iter().all(|s| sent(&host, *s)));
    host.advance(Duration::from_millis(2));
    // Decided at its headers (no body), in the very callback where b joins: before a can have heard of b.
    let first_at_b = host.start_request(b, &chat_headers(&[]), true).unwrap();
    let st = host.stream(first_at_b);
    assert!(st.upstream_request.is_none() && st.local_reply.is_none(), "b's first request must wait: {st:?}");
    host.respond(running[0], 200, b"{}").unwrap();
    host.advance(Duration::from_millis(12));
    let st = host.stream(first_at_b);
    assert!(st.upstream_request.is_some() || st.local_reply.is_some(), "settled once a place freed");
    assert_no_traps(&host);
}

#[test]
fn after_acting_on_a_waiting_stream_the_root_scrapes_as_itself() {
    // A picker that also collects (leader-elected): its scrape callouts in the tick that answered a
    // waiting stream must belong to the root, not to that stream (a stream's callouts die with it).
    let mut host = host();
    let cfg = fc_config(r#""defaultRequestTTL": "100ms""#).replacen(
        '{',
        r#"{"collector": {"mode": "leader-elected", "intervalMs": 50}, "#,
        1,
    );
    let a = host.start_vm(picker(&cfg)).unwrap();
    let pages = |_: &str| Some(proxy_wasm_emulator::CalloutResponse::new(200).body(vllm(0, 0.1)));
    for _ in 0..3 {
        host.advance(Duration::from_millis(50));
        answer_scrapes(&mut host, pages);
    }
    let _running: Vec<StreamId> = (0..2).map(|i| chat(&mut host, a, &body(i), &[])).collect();
    let late = chat(&mut host, a, &body(2), &[]);
    assert!(!sent(&host, late) && host.stream(late).local_reply.is_none());
    for _ in 0..20 {
        host.advance(Duration::from_millis(10));
        answer_scrapes(&mut host, pages);
    }
    assert_eq!(host.stream(late).response_status(), Some(429), "answered from the root's tick");
    let ctx = host.stream(late).context_id.unwrap();
    let callouts = host.callouts();
    assert!(callouts.len() > 6);
    assert!(callouts.iter().all(|c| c.context_id == 1), "a scrape was made as stream {ctx}: {callouts:?}");
    assert_no_traps(&host);
}

#[test]
fn in_flight_eviction_answers_a_sheddable_request_already_sent_429() {
    let mut host = host();
    let cfg = fc_config(r#""enableEviction": true"#).replace(
        r#""objectives": [{"name": "high", "priority": 10}]"#,
        r#""objectives": [{"name": "high", "priority": 10}, {"name": "low", "priority": -1}]"#,
    );
    let a = host.start_vm(picker(&cfg)).unwrap();
    write_snapshot(&mut host, 1, &[0, 0]);
    let normal = chat(&mut host, a, &body(0), &[]);
    let low = chat(&mut host, a, &body(1), &[("x-gateway-inference-objective", "low")]);
    assert!(sent(&host, normal) && sent(&host, low), "room for both");
    // The pool is full when a high request comes: the sheddable one in flight makes room.
    let high = chat(&mut host, a, &body(2), &HIGH);
    for _ in 0..80 {
        host.advance(Duration::from_millis(10));
    }
    let st = host.stream(low);
    assert_eq!(st.response_status(), Some(429), "{st:?}");
    assert!(reply_body(&st)["error"]["message"].as_str().unwrap().contains("evicted"));
    assert!(sent(&host, high), "the high request took its place");
    assert!(host.stream(normal).local_reply.is_none(), "priority 0 is never evicted");
    assert_eq!(gauge(&host, "epp_flow_control_revocations"), 1);
    host.respond(normal, 200, b"{}").unwrap();
    host.respond(high, 200, b"{}").unwrap();
    host.advance(Duration::from_millis(60));
    assert_eq!(gauge(&host, "epp_in_flight_requests"), 0);
    assert_eq!(in_flight_total(&host), 0);
    assert_no_traps(&host);
}

#[test]
fn a_full_queue_refuses_with_429_and_an_openai_error() {
    let mut host = host();
    let vms = workers(&mut host, 2, r#""maxRequests": 2"#);
    let mut streams = Vec::new();
    for i in 0..4 {
        streams.push(chat(&mut host, vms[i % 2], &body(i), &[]));
        host.advance(Duration::from_millis(2));
    }
    // Two in flight, two waiting (one per worker): the global limit counts both workers' queues.
    assert!(streams.iter().all(|s| host.stream(*s).local_reply.is_none()));
    let refused = chat(&mut host, vms[0], &body(9), &[]);
    let refused = host.stream(refused);
    assert_eq!(refused.response_status(), Some(429));
    let err = reply_body(&refused);
    assert!(err["error"]["message"].as_str().unwrap().contains("queue is full"), "{err}");
    assert_eq!(
        refused
            .local_reply
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str()),
        Some("application/json")
    );
    assert_eq!(gauge(&host, "epp_flow_control_requests.RejectedCapacity"), 1);
    assert_eq!(gauge(&host, "epp_shed"), 0, "a queue refusal is not counted as shedding");
    assert_no_traps(&host);
}

#[test]
fn a_client_that_leaves_while_waiting_frees_its_place_at_once() {
    let mut host = host();
    let vms = workers(&mut host, 1, "");
    let a = vms[0];
    let running: Vec<StreamId> = (0..2).map(|i| chat(&mut host, a, &body(i), &[])).collect();
    let waiting = chat(&mut host, a, &body(2), &[]);
    let behind = chat(&mut host, a, &body(3), &[]);
    assert_eq!(queued_total(&host), 2);
    host.reset_stream(waiting).unwrap();
    assert_eq!(queued_total(&host), 1, "gauge back at once");
    assert_eq!(gauge(&host, "epp_flow_control_requests.EvictedContextCancelled"), 1);
    // Room frees: the request behind goes, the one that left never does.
    host.respond(running[0], 200, b"{}").unwrap();
    host.advance(Duration::from_millis(20));
    assert!(sent(&host, behind));
    assert!(!sent(&host, waiting));
    host.respond(running[1], 200, b"{}").unwrap();
    host.respond(behind, 200, b"{}").unwrap();
    host.advance(Duration::from_millis(60));
    assert_eq!(queued_total(&host), 0);
    assert_eq!(gauge(&host, "epp_in_flight_requests"), 0);
    assert_eq!(in_flight_total(&host), 0);
    assert_no_traps(&host);
}

#[test]
fn a_request_that_waits_past_its_ttl_is_answered_429() {
    let mut host = host();
    let vms = workers(&mut host, 1, r#""defaultRequestTTL": "100ms""#);
    let a = vms[0];
    for i in 0..2 {
        chat(&mut host, a, &body(i), &[]);
    }
    let late = chat(&mut host, a, &body(2), &[]);
    host.advance(Duration::from_millis(60));
    assert!(host.stream(late).local_reply.is_none());
    host.advance(Duration::from_millis(60));
    let st = host.stream(late);
    assert_eq!(st.response_status(), Some(429));
    assert!(reply_body(&st)["error"]["message"].as_str().unwrap().contains("timed out"));
    assert_eq!(gauge(&host, "epp_flow_control_requests.EvictedTTL"), 1);
    assert_eq!(queued_total(&host), 0);
    assert_no_traps(&host);
}

#[test]
fn a_vm_that_ends_answers_its_waiting_streams_and_leaves_shared_counts_clean() {
    let mut host = host();
    let vms = workers(&mut host, 2, "");
    let (a, b) = (vms[0], vms[1]);
    chat(&mut host, a, &body(0), &[]);
    host.advance(Duration::from_millis(2));
    chat(&mut host, a, &body(1), &[]);
    host.advance(Duration::from_millis(2));
    let waiting: Vec<StreamId> = (2..4).map(|i| chat(&mut host, a, &body(i), &HIGH)).collect();
    host.advance(Duration::from_millis(2));
    // Worker b sees a's high band waiting: its own default request waits behind it.
    let at_b = chat(&mut host, b, &body(5), &[]);
    assert!(!sent(&host, at_b));
    host.stop_vm(a).unwrap();
    for s in &waiting {
        let st = host.stream(*s);
        assert_eq!(st.response_status(), Some(503), "{st:?}");
        assert!(reply_body(&st)["error"]["message"].as_str().unwrap().contains("shutting down"));
    }
    // a's queue no longer counts for b, and its gauges are back to zero.
    let flow_a = host.shared_data(VM_ID, "epp/pool/flow/1").unwrap().0;
    assert_eq!(&flow_a[8..12], &[0, 0, 0, 0], "no band listed");
    assert_eq!(gauge(&host, "epp_flow_control_queue_size.band_10"), 0);
    assert_eq!(queued_total(&host), 1, "only b's request");
    // a's in-flight requests were reset at shutdown (their ends released them); b dispatches.
    host.advance(Duration::from_millis(100));
    assert!(sent(&host, at_b));
    host.respond(at_b, 200, b"{}").unwrap();
    host.advance(Duration::from_millis(60));
    assert_eq!(queued_total(&host), 0);
    assert_eq!(gauge(&host, "epp_in_flight_requests"), 0);
    assert_no_traps(&host);
}

#[test]
fn without_flow_control_nothing_waits() {
    let mut host = host();
    let cfg = config(2, "");
    let a = host.start_vm(picker(&cfg)).unwrap();
    write_snapshot(&mut host, 1, &[0, 0]);
    let streams: Vec<StreamId> = (0..6).map(|i| chat(&mut host, a, &body(i), &[])).collect();
    assert!(streams.iter().all(|s| sent(&host, *s)));
    assert_eq!(queued_total(&host), 0);
}
