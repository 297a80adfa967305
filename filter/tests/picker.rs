//! The picker through the host emulator, against the built module: routing, local replies, failure
//! modes, the response path and in-flight accounting.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proxy_wasm_emulator::{Event, LocalReplySource};
use std::time::Duration;

/// A worker and a singleton collector over `n` endpoints, with one scrape round published.
fn deployment(
    n: usize,
    extra: &str,
    queues: &[u32],
) -> (proxy_wasm_emulator::Host, proxy_wasm_emulator::VmId) {
    let mut host = host();
    let cfg = config(n, extra);
    let worker = host.start_vm(picker(&cfg)).unwrap();
    host.start_vm(collector(&cfg)).unwrap();
    scrape_round(&mut host, queues);
    assert!(published(&host).is_some(), "the collector published");
    (host, worker)
}

#[test]
fn routing_follows_the_scraped_queues() {
    let (mut host, worker) = deployment(3, "", &[7, 0, 7]);
    let s = chat(&mut host, worker, CHAT, &[]);
    assert_eq!(destination(&host.stream(s)), Some(addr(2).as_str()));
    host.respond(s, 200, b"{}").unwrap();
    // The queues move: so does routing (the snapshot is re-read because its generation changed).
    scrape_round(&mut host, &[0, 9, 9]);
    let s = chat(&mut host, worker, CHAT, &[]);
    assert_eq!(destination(&host.stream(s)), Some(addr(1).as_str()));
    assert_eq!(host.metric_value("epp_decisions_routed"), Some(2));
    assert_no_traps(&host);
}

#[test]
fn client_supplied_routing_headers_are_removed() {
    let (mut host, worker) = deployment(2, "", &[0, 9]);
    let smuggled = [
        ("x-gateway-destination-endpoint", "6.6.6.6:80"),
        ("x-prefiller-host-port", "6.6.6.6:81"),
        ("x-gateway-destination-endpoint-served", "6.6.6.6:82"),
    ];
    let s = send(&mut host, worker, CHAT, &smuggled);
    assert_eq!(destination(&s), Some(addr(1).as_str()));
    assert_eq!(s.upstream_header("x-prefiller-host-port"), None);
    assert_eq!(s.upstream_header("x-gateway-destination-endpoint-served"), None);
    // Also on a request decided without a body, and when failing open with the header left unset.
    let get = [(":method", "GET"), (":path", "/v1/models"), (":authority", "gw"), smuggled[0]];
    let s = send_headers(&mut host, worker, &get);
    assert_eq!(destination(&s), Some(addr(1).as_str()));
    let mut host2 = common::host();
    let w2 = host2.start_vm(picker(&config(1, r#""failOpen": {"strategy": "leave-unset"}"#))).unwrap();
    let s = send(&mut host2, w2, CHAT, &smuggled);
    assert_eq!(destination(&s), None);
    assert_eq!(host2.metric_value("epp_fallback_no_snapshot"), Some(1));
}

#[test]
fn bad_bodies_get_400_with_an_openai_error() {
    let (mut host, worker) = deployment(1, "", &[0]);
    for (body, needle) in [
        ("not json", "not valid JSON"),
        (r#"{"messages": []}"#, "model"),
        (r#"{"model": "llama", "messages": "hi"}"#, "messages"),
    ] {
        let s = send(&mut host, worker, body, &[]);
        assert_eq!(s.response_status(), Some(400), "{body}");
        // The headers the module asked for (Envoy sets them over its own text/plain).
        let added = &s.local_reply.as_ref().unwrap().headers;
        assert!(added.iter().any(|(k, v)| k == "content-type" && v == "application/json"), "{added:?}");
        // What the client gets: one content-type, the module's.
        let sent = &s.response.as_ref().unwrap().headers;
        let types: Vec<&str> = sent
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(types, ["application/json"], "{sent:?}");
        let v = reply_body(&s);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{v}");
        assert!(s.upstream_request.is_none());
    }
    assert_eq!(host.metric_value("epp_parse_errors"), Some(3));
    assert_no_traps(&host);
}

#[test]
fn bodies_over_the_limit_get_413_before_the_end_of_the_stream() {
    let (mut host, worker) = deployment(1, r#""limits": {"maxBodyBytes": 1000}"#, &[0]);
    let s = host.start_request(worker, &chat_headers(&[]), false).unwrap();
    host.request_body(s, &[b' '; 600], false).unwrap();
    assert!(host.stream(s).request_paused());
    host.request_body(s, &[b' '; 600], false).unwrap();
    let st = host.stream(s);
    assert_eq!(st.response_status(), Some(413));
    assert_eq!(st.local_reply.as_ref().unwrap().source, LocalReplySource::Filter, "ours, not Envoy's");
    assert!(reply_body(&st)["error"]["message"].as_str().unwrap().contains("1000 bytes"));
    assert_eq!(host.metric_value("epp_body_too_large"), Some(1));
}

#[test]
fn sheddable_requests_get_429_under_saturation_and_critical_ones_are_routed() {
    let (mut host, worker) = deployment(2, r#""objectives": [{"name": "batch", "priority": -1}]"#, &[80, 90]);
    let s = send(&mut host, worker, CHAT, &[("x-gateway-inference-objective", "batch")]);
    assert_eq!(s.response_status(), Some(429));
    assert_eq!(reply_body(&s)["error"]["code"], "saturated");
    assert_eq!(host.metric_value("epp_shed"), Some(1));
    let s = send(&mut host, worker, CHAT, &[]);
    assert_eq!(destination(&s), Some(addr(1).as_str()));
}

#[test]
fn an_empty_pool_gets_503() {
    let mut host = host();
    let worker = host.start_vm(picker(&config(0, ""))).unwrap();
    write_snapshot(&mut host, 1, &[]);
    let s = send(&mut host, worker, CHAT, &[]);
    assert_eq!(s.response_status(), Some(503));
    assert_eq!(reply_body(&s)["error"]["code"], "no_endpoints");
    assert_eq!(host.metric_value("epp_unavailable"), Some(1));
}

#[test]
fn without_a_snapshot_the_picker_fails_open_round_robin() {
    let mut host = host();
    let worker = host.start_vm(picker(&config(2, ""))).unwrap();
    let picks: Vec<String> =
        (0..4).map(|_| destination(&send(&mut host, worker, CHAT, &[])).unwrap().to_string()).collect();
    assert_eq!(picks, [addr(1), addr(2), addr(1), addr(2)]);
    assert_eq!(host.metric_value("epp_fallback_no_snapshot"), Some(4));
    assert_eq!(host.metric_value("epp_decisions_fail_open"), Some(4));
}

#[test]
fn fail_closed_answers_503_without_usable_metrics() {
    let mut host = host();
    let worker = host.start_vm(picker(&config(2, r#""failureMode": "FailClose""#))).unwrap();
    let s = send(&mut host, worker, CHAT, &[]);
    assert_eq!(s.response_status(), Some(503));
    assert_eq!(reply_body(&s)["error"]["code"], "metrics_unavailable");
    assert_eq!(host.metric_value("epp_fallback_no_snapshot"), Some(1));
}

#[test]
fn a_stale_snapshot_is_not_trusted() {
    let mut host = host();
    let worker = host.start_vm(picker(&config(2, r#""limits": {"snapshotMaxAgeMs": 1000}"#))).unwrap();
    write_snapshot(&mut host, 1, &[9, 0]);
    let s = send(&mut host, worker, CHAT, &[]);
    assert_eq!(destination(&s), Some(addr(2).as_str()));
    host.advance(Duration::from_millis(1001));
    // Round-robin over the endpoints of the last snapshot, and counted as stale.
    let a = destination(&send(&mut host, worker, CHAT, &[])).unwrap().to_string();
    let b = destination(&send(&mut host, worker, CHAT, &[])).unwrap().to_string();
    assert_ne!(a, b);
    assert_eq!(host.metric_value("epp_fallback_stale_snapshot"), Some(2));
}

#[test]
fn a_corrupt_snapshot_is_ignored_and_the_last_good_one_kept() {
    let mut host = host();
    let worker = host.start_vm(picker(&config(2, r#""failureMode": "FailClose""#))).unwrap();
    write_snapshot(&mut host, 1, &[9, 0]);
    assert_eq!(destination(&send(&mut host, worker, CHAT, &[])), Some(addr(2).as_str()));
    host.set_shared_data(VM_ID, "epp/pool/snapshot", b"WEPS\x01\x00truncated");
    host.set_shared_data(VM_ID, "epp/pool/generation", &2u64.to_le_bytes());
    host.advance(Duration::from_millis(1));
    let s = send(&mut host, worker, CHAT, &[]);
    assert_eq!(s.response_status(), Some(503), "fail closed on an undecodable snapshot");
    assert_eq!(host.metric_value("epp_fallback_undecodable_snapshot"), Some(1));
    assert!(host.logs().iter().any(|l| l.message.contains("published snapshot ignored")));
    // A good publication heals it.
    write_snapshot(&mut host, 3, &[0, 9]);
    assert_eq!(destination(&send(&mut host, worker, CHAT, &[])), Some(addr(1).as_str()));
    assert_no_traps(&host);
}

#[test]
fn model_rewrites_change_the_body_the_server_receives() {
    let (mut host, worker) = deployment(1, REWRITE_TO_V2, &[0]);
    let len = CHAT.len().to_string();
    let s = send(&mut host, worker, CHAT, &[("content-length", &len)]);
    let up = s.upstream_request.as_ref().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(body["model"], "llama-v2");
    assert_eq!(body["messages"][0]["content"], "hello there");
    assert_eq!(up.header("content-length"), Some(up.body.len().to_string().as_str()));
}

const REWRITE_TO_V2: &str = r#""modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "llama"}}],
    "targets": [{"modelRewrite": "llama-v2", "weight": 1}]}]}]"#;

#[test]
fn a_rewritten_model_is_named_as_asked_in_the_json_response_and_usage_is_counted() {
    let (mut host, worker) = deployment(1, REWRITE_TO_V2, &[0]);
    let s = chat(&mut host, worker, CHAT, &[]);
    let answer =
        br#"{"id":"c1","model":"llama-v2","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4}}"#;
    host.response_headers(s, &[(":status", "200"), ("content-type", "application/json")], false).unwrap();
    let (a, b) = answer.split_at(30);
    host.response_body(s, a, false).unwrap();
    host.response_body(s, b, true).unwrap();
    let got = host.stream(s).response.unwrap();
    assert_eq!(
        String::from_utf8(got.body).unwrap(),
        r#"{"id":"c1","model":"llama","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4}}"#
    );
    assert_eq!(got.headers.iter().find(|(k, _)| k == "content-length"), None, "the length changed");
    assert_eq!(host.metric_value("epp_usage_prompt_tokens"), Some(11));
    assert_eq!(host.metric_value("epp_usage_completion_tokens"), Some(4));
    assert_no_traps(&host);
}

#[test]
fn streamed_events_get_the_model_put_back_line_by_line_and_the_last_usage_counted() {
    let (mut host, worker) = deployment(1, REWRITE_TO_V2, &[0]);
    let s = chat(&mut host, worker, CHAT, &[]);
    let events = "data: {\"model\":\"llama-v2\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
        data: {\"model\":\"llama-v2\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
        data: [DONE]\n\n";
    host.response_headers(s, &[(":status", "200"), ("content-type", "text/event-stream")], false).unwrap();
    // Chunks cut inside events: a line is forwarded once it is complete.
    let bytes = events.as_bytes();
    for (i, piece) in bytes.chunks(23).enumerate() {
        host.response_body(s, piece, (i + 1) * 23 >= bytes.len()).unwrap();
    }
    let got = String::from_utf8(host.stream(s).response.unwrap().body).unwrap();
    assert_eq!(got, events.replace("llama-v2", "llama"));
    assert_eq!(host.metric_value("epp_usage_completion_tokens"), Some(2));
    assert_no_traps(&host);
}

#[test]
fn without_a_rewrite_responses_pass_unchanged_and_usage_is_still_counted() {
    let (mut host, worker) = deployment(1, "", &[0]);
    let s = chat(&mut host, worker, CHAT, &[]);
    let answer = br#"{"model":"llama","usage":{"prompt_tokens":3,"completion_tokens":9}}"#;
    let len = answer.len().to_string();
    host.response_headers(
        s,
        &[(":status", "200"), ("content-type", "application/json"), ("content-length", &len)],
        false,
    )
    .unwrap();
    host.response_body(s, answer, true).unwrap();
    let got = host.stream(s).response.unwrap();
    assert_eq!(got.body, answer);
    assert_eq!(got.header("content-length"), Some(len.as_str()));
    assert_eq!(host.metric_value("epp_usage_prompt_tokens"), Some(3));
    assert_eq!(host.metric_value("epp_usage_completion_tokens"), Some(9));
    // The same answer in two chunks and an empty last one (as Envoy often ends a body): still counted,
    // and the empty chunk is not read.
    let s = chat(&mut host, worker, CHAT, &[]);
    host.response_headers(s, &[(":status", "200"), ("content-type", "application/json")], false).unwrap();
    let reads = |host: &proxy_wasm_emulator::Host| host.host_calls("proxy_get_buffer_bytes").len();
    let before = reads(&host);
    let (head, tail) = answer.split_at(20);
    host.response_body(s, head, false).unwrap();
    host.response_body(s, tail, false).unwrap();
    host.response_body(s, b"", true).unwrap();
    assert_eq!(host.stream(s).response.unwrap().body, answer);
    assert_eq!(host.metric_value("epp_usage_prompt_tokens"), Some(6));
    assert_eq!(host.metric_value("epp_usage_completion_tokens"), Some(18));
    assert_eq!(reads(&host) - before, 2, "one read per non-empty chunk");
}

#[test]
fn served_header_and_upstream_failures_on_the_response() {
    // By default the module asks the proxy where the request went (`upstream.address`); with
    // `servedFrom: destination` it takes the endpoint it picked, without asking.
    for (extra, asks) in [("", 1), (r#""routing": {"servedFrom": "destination"}"#, 0)] {
        let (mut host, worker) = deployment(2, extra, &[0, 9]);
        let s = chat(&mut host, worker, CHAT, &[]);
        host.respond(s, 503, b"overloaded").unwrap();
        let st = host.stream(s);
        assert_eq!(
            st.response.as_ref().unwrap().header("x-gateway-destination-endpoint-served"),
            Some(addr(1).as_str())
        );
        assert_eq!(host.metric_value("epp_upstream_5xx"), Some(1));
        assert_eq!(host.metric_value("epp_upstream_5xx.10_0_0_1_8000"), Some(1));
        assert_eq!(upstream_address_reads(&host), asks, "{extra}");
        // Local replies carry no served header: nothing was served upstream.
        let s = send(&mut host, worker, "nope", &[]);
        assert_eq!(s.response.as_ref().unwrap().header("x-gateway-destination-endpoint-served"), None);
    }
}

/// How many times the module asked for `upstream.address`.
fn upstream_address_reads(host: &proxy_wasm_emulator::Host) -> usize {
    let calls = host.host_calls("proxy_get_property");
    calls
        .iter()
        .filter(|e| matches!(e, Event::HostCall { detail, .. } if detail == "upstream.address"))
        .count()
}

/// The worker's published in-flight total after a heartbeat: a worker alone writes its table only then
/// (a heartbeat is due a second after the last write, at the next tick after that).
fn in_flight_after_heartbeat(host: &mut proxy_wasm_emulator::Host) -> u32 {
    host.advance(std::time::Duration::from_millis(2001));
    in_flight_total(host)
}

#[test]
fn in_flight_returns_to_zero_however_the_stream_ends() {
    let (mut host, worker) = deployment(2, "", &[0, 0]);
    let done = chat(&mut host, worker, CHAT, &[]);
    let reset = chat(&mut host, worker, CHAT, &[]);
    let never_answered = chat(&mut host, worker, CHAT, &[]);
    // Alone, the worker does not write its table per request...
    assert_eq!(in_flight_total(&host), 0);
    // ...but with its heartbeat.
    assert_eq!(in_flight_after_heartbeat(&mut host), 3);
    host.respond(done, 200, b"{}").unwrap();
    assert_eq!(in_flight_after_heartbeat(&mut host), 2);
    host.reset_stream(reset).unwrap();
    assert_eq!(in_flight_after_heartbeat(&mut host), 1);
    // The client goes away mid-response.
    host.response_headers(never_answered, &[(":status", "200")], false).unwrap();
    host.reset_stream(never_answered).unwrap();
    assert_eq!(in_flight_after_heartbeat(&mut host), 0);
    // Local replies never count; a 413 mid-body neither.
    chat(&mut host, worker, "garbage", &[]);
    let s = host.start_request(worker, &chat_headers(&[]), false).unwrap();
    host.reset_stream(s).unwrap();
    assert_eq!(in_flight_after_heartbeat(&mut host), 0);
    assert_no_traps(&host);
}

#[test]
fn header_only_requests_are_decided_at_the_headers() {
    let (mut host, worker) = deployment(2, "", &[5, 0]);
    let get = [(":method", "GET"), (":path", "/v1/models"), (":authority", "gw")];
    let s = send_headers(&mut host, worker, &get);
    assert_eq!(destination(&s), Some(addr(2).as_str()));
    assert!(!s.request_paused());
}

#[test]
fn invalid_configuration_is_refused_naming_the_field() {
    let mut host = host();
    let err = host.start_vm(picker(r#"{"routing": {"maxEndpoints": 0}}"#)).unwrap_err();
    assert_eq!(err, proxy_wasm_emulator::StartError::ConfigurationRejected);
    let errors = host.logs_at(proxy_wasm_emulator::LogLevel::Error);
    assert!(errors.iter().any(|l| l.contains("routing.maxEndpoints")), "{errors:?}");
    let err = host.start_vm(picker(r#"{"plugins": [{"type": "no-such-plugin"}]}"#)).unwrap_err();
    assert_eq!(err, proxy_wasm_emulator::StartError::ConfigurationRejected);
    assert!(host.logs_at(proxy_wasm_emulator::LogLevel::Error).iter().any(|l| l.contains("plugins[0]")));
    let err = host.start_vm(collector("{")).unwrap_err();
    assert_eq!(err, proxy_wasm_emulator::StartError::ConfigurationRejected);
}

#[test]
fn configuration_warnings_are_logged_naming_what_is_ignored() {
    let mut host = host();
    host.start_vm(picker(&config(1, r#""featureGates": ["flowControl", "noSuchGate"]"#))).unwrap();
    let warnings = host.logs_at(proxy_wasm_emulator::LogLevel::Warn);
    for gate in ["flowControl", "noSuchGate"] {
        assert!(
            warnings.iter().any(|l| l.starts_with("configuration: ") && l.contains(gate)),
            "{warnings:?}"
        );
    }
}

#[test]
fn debug_logs_never_contain_the_prompt() {
    let (mut host, worker) = deployment(1, "", &[0]);
    let secret = r#"{"model": "llama", "messages": [{"role": "user", "content": "the secret is hunter2"}]}"#;
    chat(&mut host, worker, secret, &[]);
    chat(&mut host, worker, r#"{"model": 5, "messages": "hunter2"}"#, &[]);
    assert!(host.logs().iter().all(|l| !l.message.contains("hunter2")));
}

#[test]
fn failing_shared_data_writes_degrade_to_local_state_without_trapping() {
    let (mut host, worker) = deployment(2, "", &[0, 9]);
    // Every write this worker tries is refused (the collector VM is unaffected).
    host.inject_fault(
        proxy_wasm_emulator::Fault::new("proxy_set_shared_data", proxy_wasm_emulator::Status::CasMismatch)
            .in_vm(worker),
    );
    for _ in 0..3 {
        let s = chat(&mut host, worker, CHAT, &[]);
        assert_eq!(destination(&host.stream(s)), Some(addr(1).as_str()));
        host.respond(s, 200, b"{}").unwrap();
    }
    host.advance(Duration::from_secs(2)); // heartbeats fail too
                                          // The worker joins on its first stream: with writes refused it cannot register, and says its state
                                          // stays local (or, had it registered, that the in-flight table cannot be written).
    let warns = host.logs_at(proxy_wasm_emulator::LogLevel::Warn);
    assert!(warns.iter().any(|l| l.contains("stay local") || l.contains("in-flight table")), "{warns:?}");
    assert!(!host.vm_failed(worker));
    assert_no_traps(&host);
}

/// The worker's published prompt tokens awaiting a first token, after a heartbeat.
fn awaiting_after_heartbeat(host: &mut proxy_wasm_emulator::Host) -> u64 {
    host.advance(std::time::Duration::from_millis(2001));
    host.shared_data_all(VM_ID)
        .iter()
        .filter(|(k, _)| k.starts_with("epp/pool/inflight/"))
        .map(|(_, (v, _))| {
            let t = scheduler_core::shared_state::InFlightTable::decode(v).unwrap();
            t.iter().map(|(_, f)| f.awaiting_first_token).sum::<u64>()
        })
        .sum()
}

#[test]
fn a_prompt_awaits_its_first_token_until_a_streamed_chunk_a_whole_answer_or_the_end() {
    const STREAMED: &str = r#"{"model": "llama", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16, "stream": true}"#;
    let (mut host, worker) = deployment(2, "", &[0, 0]);
    let streamed = chat(&mut host, worker, STREAMED, &[]);
    let whole = chat(&mut host, worker, CHAT, &[]);
    let reset = chat(&mut host, worker, STREAMED, &[]);
    let all = awaiting_after_heartbeat(&mut host);
    assert!(all > 0 && all.is_multiple_of(3), "three prompts of the same length: {all}");
    let one = all / 3;
    // vLLM sends a stream's headers before it generates: they release nothing.
    host.response_headers(streamed, &[(":status", "200"), ("content-type", "text/event-stream")], false)
        .unwrap();
    assert_eq!(awaiting_after_heartbeat(&mut host), all);
    host.response_body(streamed, b"data: {\"choices\": []}\n\n", false).unwrap();
    assert_eq!(awaiting_after_heartbeat(&mut host), 2 * one, "the first chunk is the first token");
    host.response_body(streamed, b"data: [DONE]\n\n", true).unwrap();
    // An answer that is not streamed comes whole: its headers release it.
    host.respond(whole, 200, b"{}").unwrap();
    assert_eq!(awaiting_after_heartbeat(&mut host), one);
    // A stream that ends before its first token releases it with the count.
    host.reset_stream(reset).unwrap();
    assert_eq!(awaiting_after_heartbeat(&mut host), 0);
    assert_eq!(in_flight_total(&host), 0);
    assert_no_traps(&host);
}
