//! HTTP streams through the `router` fixture: the request/response lifecycle and Envoy's phase rules.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{plugin, post_with, POST};
use proxy_wasm_emulator::{Host, LocalReplySource, LogLevel, Phase, PropertyValue};

#[test]
fn full_request_lifecycle_routes_on_the_body_and_logs() {
    let mut host = Host::builder().original_dst_header("x-route-to").build();
    let vm = host.start_vm(plugin("router").allow_on_headers_stop_iteration(true)).unwrap();
    // A client-set routing header must be stripped before anything else.
    let s = host.start_request(vm, &post_with(&[("x-route-to", "evil:1")]), false).unwrap();
    assert!(host.stream(s).request_paused());
    assert_eq!(host.stream(s).upstream_request, None);

    // With stop-iteration allowed the filter sees each chunk, pausing until the end of the body.
    host.request_body(s, b"to:10.0.0.", false).unwrap();
    assert_eq!(host.stream(s).request_phase(), Phase::BodyBuffering);
    host.request_body(s, b"7:8000", true).unwrap();

    let stream = host.stream(s);
    let up = stream.upstream_request.as_ref().unwrap();
    assert_eq!(up.header("x-route-to"), Some("10.0.0.7:8000"));
    assert_eq!(up.header("x-body-len"), Some("16"));
    assert_eq!(up.body, b"to:10.0.0.7:8000");
    assert!(up.end_of_stream);
    assert_eq!(stream.upstream_address.as_deref(), Some("10.0.0.7:8000"));

    host.respond(s, 200, b"ok").unwrap();
    let stream = host.stream(s);
    let resp = stream.response.as_ref().unwrap();
    // The filter read `response.code` as an 8-byte little-endian integer.
    assert_eq!(resp.header("x-seen-status"), Some("200"));
    assert_eq!(resp.body, b"ok");
    assert!(stream.completed);

    assert_eq!(host.metric_value("fixture_requests_total"), Some(1));
    assert_eq!(host.metric_value("fixture_inflight"), Some(0));
    assert_eq!(host.metric("fixture_body_bytes").unwrap().samples, vec![16]);
    let info = host.logs_at(LogLevel::Info);
    assert!(info.iter().any(|l| l == "done /v1/completions via 10.0.0.7:8000"), "{info:?}");
    assert!(host.traps().is_empty());
}

#[test]
fn request_without_body_continues_from_headers() {
    let mut host = Host::new();
    let vm = host.start_vm(plugin("router")).unwrap();
    let s = host.start_request(vm, &POST, true).unwrap();
    assert_eq!(host.stream(s).upstream_header("x-route-to"), Some("no-body"));
    assert_eq!(host.stream(s).request_phase(), Phase::Continued);
}

#[test]
fn without_stop_iteration_the_body_waits_until_resume() {
    // Envoy's default: Pause on headers becomes StopAllIterationAndWatermark, so the filter never sees the
    // body before it resumes — here it never resumes, so nothing reaches the upstream.
    let mut host = Host::new();
    let vm = host.start_vm(plugin("router")).unwrap();
    let s = host.start_request(vm, &POST, false).unwrap();
    host.request_body(s, b"to:a", true).unwrap();
    let stream = host.stream(s);
    assert_eq!(stream.request_phase(), Phase::HeadersPaused { body_reaches_filter: false });
    assert_eq!(stream.upstream_request, None);
    let body_reads = host.host_calls("proxy_get_buffer_bytes");
    assert!(body_reads.iter().all(|e| !e.to_string().contains("type 0")), "{body_reads:?}");
    assert!(host.transcript().iter().all(|e| !e.to_string().contains("proxy_on_request_body")));
}

#[test]
fn buffered_body_over_the_limit_gets_envoys_413() {
    let mut host = Host::builder().buffer_limit(8).build();
    let vm = host.start_vm(plugin("router").allow_on_headers_stop_iteration(true)).unwrap();
    let s = host.start_request(vm, &POST, false).unwrap();
    host.request_body(s, b"12345", false).unwrap();
    host.request_body(s, b"67890", false).unwrap();
    let stream = host.stream(s);
    let reply = stream.local_reply.as_ref().unwrap();
    assert_eq!((reply.status, reply.body.as_slice()), (413, b"Payload Too Large".as_slice()));
    assert_eq!(reply.source, LocalReplySource::BufferLimit);
    assert_eq!(stream.response_status(), Some(413));
    assert_eq!(stream.upstream_request, None);
    // Later chunks are dropped; the stream is over and on_log ran.
    host.request_body(s, b"x", true).unwrap();
    assert!(host.stream(s).completed);
    assert_eq!(host.metric_value("fixture_requests_total"), Some(1));
}

#[test]
fn local_reply_is_deferred_and_passes_through_the_response_callbacks() {
    let mut host = Host::new();
    let vm = host.start_vm(plugin("router")).unwrap();
    let s = host.start_request(vm, &post_with(&[("x-local-reply", "429")]), true).unwrap();
    let stream = host.stream(s);
    assert_eq!(stream.local_reply.as_ref().map(|r| r.status), Some(429));
    let resp = stream.response.as_ref().unwrap();
    assert_eq!(resp.status(), Some(429));
    assert_eq!(resp.header("x-from"), Some("fixture"));
    assert_eq!(resp.body, b"local reply");
    // Envoy sends local replies through the encoder path: the filter saw its own 429.
    assert_eq!(resp.header("x-seen-status"), Some("429"));
    assert_eq!(stream.upstream_request, None);
    assert!(stream.completed);
}

#[test]
fn header_map_is_gone_after_continue_even_in_the_same_callback() {
    let mut host = Host::new();
    let vm = host.start_vm(plugin("resume-then-read")).unwrap();
    let s = host.start_request(vm, &POST, true).unwrap();
    let reads = host.host_calls("proxy_get_header_map_value");
    assert!(reads.last().unwrap().to_string().ends_with("BadArgument(2)"), "{reads:?}");
    // The SDK panics on BadArgument; the VM dies and the plugin fails closed.
    let trap = &host.traps()[0];
    assert!(trap.panic_message.as_deref().unwrap().contains("unexpected status: 2"), "{trap}");
    assert_eq!(host.stream(s).response_status(), Some(503));
}

#[test]
fn empty_header_value_reaches_the_module_as_empty_not_missing() {
    let mut host = Host::new();
    let vm = host.start_vm(plugin("router")).unwrap();
    let s = host.start_request(vm, &post_with(&[("x-empty", "")]), true).unwrap();
    assert_eq!(host.stream(s).upstream_header("x-empty-seen"), Some("len=0"));
    let read = host.host_calls("proxy_get_header_map_value");
    assert!(read.iter().any(|e| e.to_string().contains("x-empty") && e.to_string().ends_with("Ok(0)")));
}

#[test]
fn body_rewrite_replaces_what_the_upstream_receives() {
    let mut host = Host::new();
    let vm = host.start_vm(plugin("router").allow_on_headers_stop_iteration(true)).unwrap();
    let s = host.request(vm, &POST, b"please rewrite me").unwrap();
    assert_eq!(host.stream(s).upstream_request.unwrap().body, b"rewritten");
}

#[test]
fn configuration_and_properties_reach_the_module() {
    let mut host = Host::builder().property("node.id", PropertyValue::from("node-1")).build();
    let vm = host.start_vm(plugin("router").configuration("cfg-7")).unwrap();
    let s = host.start_request(vm, &POST, true).unwrap();
    assert_eq!(host.stream(s).upstream_header("x-config"), Some("cfg-7"));
    // Rejected configuration fails the start, as Envoy rejects the listener.
    let err = host.start_vm(plugin("router").configuration("reject")).err().unwrap();
    assert_eq!(err, proxy_wasm_emulator::StartError::ConfigurationRejected);
    assert!(host.logs_at(LogLevel::Error).contains(&"configuration rejected".to_string()));
}
