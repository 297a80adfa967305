//! Host calls answered with statuses the filter does not expect: each one must cost at most the feature it
//! serves, never the VM (a trap in Envoy takes down every request on that worker).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proxy_wasm_emulator::{Event, Fault, Host, Status, VmId};
use std::time::Duration;

/// Whether `call` was answered with an injected status (a fault nobody hit proves nothing).
fn fault_hit(host: &Host, call: &str) -> bool {
    host.transcript()
        .iter()
        .any(|e| matches!(e, Event::HostCall { name, injected: true, .. } if name == call))
}

/// Queue-weighted picking with the prefix index shared between workers, and `llama` rewritten to
/// `llama-v2`: a request then goes through every host call of the request and response paths.
const FULL_PATH: &str = r#""plugins": [{"type": "queue-scorer"}, {"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 4}}, {"type": "max-score-picker"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer", "weight": 10},
        {"pluginRef": "prefix-cache-scorer", "weight": 1}, {"pluginRef": "max-score-picker"}]}],
    "modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "llama"}}],
        "targets": [{"modelRewrite": "llama-v2", "weight": 1}]}]}]"#;

/// Long enough to fill prefix blocks, so routing it broadcasts the prefix to the other worker.
const LONG_CHAT: &str = r#"{"model": "llama", "messages": [{"role": "user", "content": "a long prompt that spans several prefix blocks"}]}"#;

/// Two workers and a singleton collector over two endpoints, endpoint 1 the idle one, both workers
/// already serving (they join the process on their first stream), a first and b after.
fn deployment() -> (Host, [VmId; 3]) {
    let mut host = host();
    let cfg = config(2, FULL_PATH);
    let a = host.start_vm(picker(&cfg)).unwrap();
    let b = host.start_vm(picker(&cfg)).unwrap();
    let c = host.start_vm(collector(&cfg)).unwrap();
    scrape_round(&mut host, &[0, 9]);
    assert!(published(&host).is_some(), "the collector published");
    for vm in [a, b] {
        let s = send(&mut host, vm, CHAT, &[]);
        assert_eq!(destination(&s), Some(addr(1).as_str()));
    }
    // Worker a learns of b from the directory on a tick; its next routed prefix resolves b's queue.
    host.advance(Duration::from_secs(2));
    assert_no_traps(&host);
    (host, [a, b, c])
}

/// Every host call a request (and its response, and the prefix broadcast to the other worker) goes
/// through. `Unimplemented` is not even in the SDK's status enum.
const REQUEST_PATH_CALLS: &[&str] = &[
    "proxy_get_header_map_pairs",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_get_property",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_current_time_nanoseconds",
];

#[test]
fn unexpected_statuses_during_requests_never_trap_the_vm() {
    for status in [Status::InternalFailure, Status::Unimplemented, Status::ParseFailure] {
        for &call in REQUEST_PATH_CALLS {
            let (mut host, [a, b, c]) = deployment();
            host.inject_fault(Fault::new(call, status));
            // A smuggled routing header (removed), a model rewrite (body and content-length written), a
            // JSON answer (served header set, content-length removed, model put back, usage read).
            let len = LONG_CHAT.len().to_string();
            let smuggled =
                [("x-gateway-destination-endpoint", "6.6.6.6:80"), ("content-length", len.as_str())];
            let s = chat(&mut host, a, LONG_CHAT, &smuggled);
            if host.stream(s).upstream_request.is_some() {
                let answer = br#"{"model":"llama-v2","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
                host.response_headers(s, &[(":status", "200"), ("content-type", "application/json")], false)
                    .unwrap();
                host.response_body(s, answer, true).unwrap();
            }
            host.advance(Duration::from_secs(2));
            assert!(fault_hit(&host, call), "{call} was never called");
            for vm in [a, b, c] {
                assert!(!host.vm_failed(vm), "{call} answering {status:?} killed {vm:?}");
            }
            assert!(host.traps().is_empty(), "{call} answering {status:?}: {:?}", host.traps());
            // Once the host behaves again, so does routing.
            host.clear_faults();
            scrape_round(&mut host, &[0, 9]);
            let s = send(&mut host, a, CHAT, &[]);
            assert_eq!(destination(&s), Some(addr(1).as_str()), "after {call} answered {status:?}");
        }
    }
}

#[test]
fn a_local_reply_the_proxy_refuses_does_not_trap() {
    let (mut host, [worker, ..]) = deployment();
    host.inject_fault(Fault::new("proxy_send_local_response", Status::InternalFailure).in_vm(worker));
    let s = send(&mut host, worker, "not json", &[]);
    assert!(s.upstream_request.is_none(), "an unparsable body never goes upstream");
    assert!(!host.vm_failed(worker));
    assert!(host.traps().is_empty(), "{:?}", host.traps());
    assert!(host
        .logs_at(proxy_wasm_emulator::LogLevel::Warn)
        .iter()
        .any(|l| l.contains("local reply 400 not sent")));
}

#[test]
fn the_collector_survives_unexpected_statuses_on_its_tick() {
    for call in [
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_http_call",
        "proxy_get_buffer_bytes",
        "proxy_define_metric",
    ] {
        let mut host = host();
        let cfg = config(2, "");
        host.start_vm(picker(&cfg)).unwrap();
        let collector_vm = host.start_vm(collector(&cfg)).unwrap();
        host.inject_fault(Fault::new(call, Status::InternalFailure).in_vm(collector_vm));
        scrape_round(&mut host, &[0, 9]);
        host.advance(Duration::from_secs(1));
        assert!(fault_hit(&host, call), "{call} was never called");
        assert!(!host.vm_failed(collector_vm), "{call} killed the collector");
        assert!(host.traps().is_empty(), "{call}: {:?}", host.traps());
        host.clear_faults();
        scrape_round(&mut host, &[0, 9]);
        scrape_round(&mut host, &[0, 9]);
        assert!(published(&host).is_some(), "the collector publishes again after {call} recovered");
    }
}

#[test]
fn a_configuration_the_proxy_will_not_hand_over_is_refused_not_a_trap() {
    for (call, status) in [
        ("proxy_get_buffer_bytes", Status::InternalFailure),
        ("proxy_get_property", Status::Unimplemented),
        ("proxy_set_tick_period_milliseconds", Status::InternalFailure),
    ] {
        let mut host = host();
        host.inject_fault(Fault::new(call, status));
        let started = host.start_vm(picker(&config(2, "")));
        assert!(fault_hit(&host, call), "{call} was never called");
        assert!(host.traps().is_empty(), "{call}: {:?}", host.traps());
        if call == "proxy_get_buffer_bytes" {
            assert_eq!(started.unwrap_err(), proxy_wasm_emulator::StartError::ConfigurationRejected);
            let errors = host.logs_at(proxy_wasm_emulator::LogLevel::Error);
            assert!(errors.iter().any(|l| l.contains("configuration: not readable")), "{errors:?}");
        } else {
            assert!(started.is_ok(), "{call}: {started:?}");
        }
    }
}
