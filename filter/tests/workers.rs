//! Two worker VMs of one proxy share in-flight counts and the prefix index through shared data and
//! queues.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use std::time::Duration;

const ACTIVE: &str = r#""plugins": [{"type": "active-request-scorer"}, {"type": "max-score-picker"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "active-request-scorer"}, {"pluginRef": "max-score-picker"}]}]"#;

const PREFIX: &str = r#""plugins": [{"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 4}}, {"type": "max-score-picker"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}]}]"#;

#[test]
fn in_flight_counts_are_process_wide() {
    let mut host = host();
    let cfg = config(2, ACTIVE);
    let a = host.start_vm(picker(&cfg)).unwrap();
    let b = host.start_vm(picker(&cfg)).unwrap();
    write_snapshot(&mut host, 1, &[0, 0]);
    let held = chat(&mut host, a, CHAT, &[]);
    let busy = destination(&host.stream(held)).unwrap().to_string();
    // Worker b never routed there itself, yet sees a's request and avoids that endpoint.
    for _ in 0..4 {
        let s = chat(&mut host, b, CHAT, &[]);
        assert_ne!(destination(&host.stream(s)), Some(busy.as_str()));
        host.respond(s, 200, b"{}").unwrap();
    }
    assert_eq!(in_flight_total(&host), 1);
    host.respond(held, 200, b"{}").unwrap();
    // Writes are coalesced to one per millisecond: a's last change goes out with its next tick.
    host.advance(Duration::from_millis(60));
    assert_eq!(in_flight_total(&host), 0);
    assert_no_traps(&host);
}

/// Two picker VMs with the prefix scorer over 4 endpoints, both past their first stream (workers join the
/// process on it; these stand for traffic both already served).
fn two_prefix_workers() -> (proxy_wasm_emulator::Host, proxy_wasm_emulator::VmId, proxy_wasm_emulator::VmId) {
    let mut host = host();
    let cfg = config(4, PREFIX);
    let a = host.start_vm(picker(&cfg)).unwrap();
    let b = host.start_vm(picker(&cfg)).unwrap();
    write_snapshot(&mut host, 1, &[0, 0, 0, 0]);
    for (vm, id) in [(a, "warm-a"), (b, "warm-b")] {
        let hi = r#"{"model": "llama", "messages": [{"content": "hi", "role": "user"}]}"#;
        send(&mut host, vm, hi, &[("x-request-id", id)]);
    }
    (host, a, b)
}

#[test]
fn a_prefix_routed_by_one_worker_is_known_to_the_other() {
    let (mut host, a, b) = two_prefix_workers();
    // The index varies in the first 16-byte block, so each prompt is its own prefix.
    let mut picks = Vec::new();
    for i in 0..8 {
        let body = format!(
            r#"{{"model": "llama", "messages": [{{"content": "{i} starts a conversation with a long prompt", "role": "user"}}]}}"#
        );
        // Distinct request ids: the seeds differ, so b cannot agree with a by drawing the same ties.
        let id = format!("a-{i}");
        // A worker shares its picks at most once per 10 ms; spaced so, each goes out at once.
        host.advance(Duration::from_millis(10));
        let dest = destination(&send(&mut host, a, &body, &[("x-request-id", &id)])).unwrap().to_string();
        picks.push((body, dest));
    }
    let spread: std::collections::BTreeSet<_> = picks.iter().map(|(_, d)| d.clone()).collect();
    assert!(spread.len() > 1, "ties are broken at random, so 8 prompts land on several endpoints");
    for (i, (body, dest)) in picks.iter().enumerate() {
        let id = format!("b-{i}");
        assert_eq!(destination(&send(&mut host, b, body, &[("x-request-id", &id)])), Some(dest.as_str()));
    }
    assert_no_traps(&host);
}

#[test]
fn prefixes_routed_in_a_burst_reach_the_other_worker_by_the_heartbeat() {
    let (mut host, a, b) = two_prefix_workers();
    host.advance(Duration::from_millis(5));
    // Eight picks at once: the first is shared at once, the others wait for a's next send.
    let mut picks = Vec::new();
    for i in 0..8 {
        let body = format!(
            r#"{{"model": "llama", "messages": [{{"content": "{i} opens a burst of long prompts", "role": "user"}}]}}"#
        );
        let id = format!("a-{i}");
        let dest = destination(&send(&mut host, a, &body, &[("x-request-id", &id)])).unwrap().to_string();
        picks.push((body, dest));
    }
    // The heartbeat sends them (the snapshot stays fresh enough: its limit is the default 5 s).
    host.advance(Duration::from_millis(1_000));
    for (i, (body, dest)) in picks.iter().enumerate() {
        let id = format!("b-{i}");
        assert_eq!(
            destination(&send(&mut host, b, body, &[("x-request-id", &id)])),
            Some(dest.as_str()),
            "prompt {i}"
        );
    }
    assert_no_traps(&host);
}

#[test]
fn a_vm_that_serves_no_streams_stays_out_of_the_directory() {
    // Envoy also configures the HTTP filter's root context on its main thread, which never serves a
    // request: such a VM must not be in the directory, or every routed prefix would be queued to it.
    let mut host = host();
    let cfg = config(2, PREFIX);
    let serving = host.start_vm(picker(&cfg)).unwrap();
    let _main_thread = host.start_vm(picker(&cfg)).unwrap();
    write_snapshot(&mut host, 1, &[0, 0]);
    let body =
        r#"{"model": "llama", "messages": [{"content": "a prompt long enough for blocks", "role": "user"}]}"#;
    send(&mut host, serving, body, &[("x-request-id", "r1")]);
    let (ids, _) = host.shared_data(VM_ID, "epp/pool/workers").expect("the serving worker registered");
    assert_eq!(ids.len(), 4, "exactly one worker id (u32) in the directory, got {} bytes", ids.len());
    assert_no_traps(&host);
}

#[test]
fn each_worker_reports_its_memory_and_a_stopped_vm_takes_its_share_back() {
    let (mut host, a, b) = two_prefix_workers();
    for i in 0..8 {
        let body = format!(
            r#"{{"model": "llama", "messages": [{{"content": "{i} is one more prompt with a few blocks", "role": "user"}}]}}"#
        );
        host.advance(Duration::from_millis(10));
        send(&mut host, a, &body, &[("x-request-id", &format!("m-{i}"))]);
    }
    // The gauges are reported once per heartbeat, from the root tick.
    host.advance(Duration::from_millis(1_100));
    let gauge = |host: &proxy_wasm_emulator::Host, name: &str| host.metric_value(name).unwrap_or(0);
    let linear = gauge(&host, "epp_wasm_memory_bytes");
    assert!(linear > 0 && linear % 65_536 == 0, "linear memory in whole pages, got {linear}");
    assert_eq!(gauge(&host, "epp_memory_pool_endpoints"), 8, "4 endpoints, counted by each of 2 workers");
    let (entries, cap) =
        (gauge(&host, "epp_memory_prefix_entries"), gauge(&host, "epp_memory_prefix_entries_cap"));
    assert!(entries >= 16 && entries <= cap, "both workers hold the prefixes: {entries} of {cap}");
    assert!(gauge(&host, "epp_memory_prefix_endpoints") <= gauge(&host, "epp_memory_prefix_endpoints_cap"));

    host.stop_vm(b).unwrap();
    assert_eq!(gauge(&host, "epp_memory_pool_endpoints"), 4, "b's share left with it");
    assert!(gauge(&host, "epp_wasm_memory_bytes") < linear);
    assert_no_traps(&host);
}
