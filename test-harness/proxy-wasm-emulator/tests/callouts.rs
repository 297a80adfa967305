//! Tick-driven and request-driven HTTP callouts: recorded as made, answered, failed or timed out by the
//! test through the virtual clock.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{plugin, post_with};
use proxy_wasm_emulator::{CalloutResponse, CalloutState, Host, LogLevel};

#[test]
fn tick_driven_callout_cycle_publishes_into_shared_data() {
    let mut host = Host::builder().cluster("metrics").build();
    let collector = host.start_vm(plugin("collector")).unwrap();
    // The tick period is 1 s: nothing before that.
    host.advance(Duration::from_millis(999));
    assert!(host.callouts().is_empty());
    host.advance(Duration::from_millis(1));
    let calls = host.pending_callouts();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!((call.vm, call.cluster.as_str()), (collector, "metrics"));
    assert_eq!((call.header(":method"), call.header(":path")), (Some("GET"), Some("/metrics")));
    assert_eq!(call.timeout, Some(Duration::from_millis(500)));
    assert_eq!(call.dispatched_at, Duration::from_secs(1));

    host.answer_callout(call.id, CalloutResponse::new(200).body("kv_cache 0.5")).unwrap();
    let (value, cas) = host.shared_data("epp", "metrics").unwrap();
    assert_eq!((value.as_slice(), cas), (b"kv_cache 0.5".as_slice(), 1));
    assert!(host.logs_at(LogLevel::Info).iter().any(|l| l == "published 12 bytes of metrics (status 200)"));
    // Answering twice is a test bug, reported as such.
    assert!(host.answer_callout(call.id, CalloutResponse::new(200)).is_err());

    // Three more seconds: three more ticks, each with its own callout; unanswered ones time out after
    // 500 ms, so only the last is still pending.
    host.advance(Duration::from_secs(3));
    let states: Vec<_> = host.callouts().iter().map(|c| (c.dispatched_at.as_secs(), c.state)).collect();
    use CalloutState::*;
    assert_eq!(states, vec![(1, Answered), (2, TimedOut), (3, TimedOut), (4, Pending)]);
}

#[test]
fn unanswered_callout_times_out_with_envoys_504() {
    let mut host = Host::builder().cluster("metrics").build();
    host.start_vm(plugin("collector")).unwrap();
    host.advance(Duration::from_secs(1));
    let id = host.pending_callouts()[0].id;
    host.advance(Duration::from_millis(499));
    assert_eq!(host.callouts()[0].state, CalloutState::Pending);
    host.advance(Duration::from_millis(1));
    assert_eq!(host.callouts()[0].state, CalloutState::TimedOut);
    assert_eq!(host.shared_data("epp", "metrics").unwrap().0, b"upstream request timeout");
    assert!(host.answer_callout(id, CalloutResponse::new(200)).is_err());
}

#[test]
fn failed_callout_reaches_the_module_without_headers() {
    let mut host = Host::builder().cluster("metrics").build();
    host.start_vm(plugin("collector")).unwrap();
    host.advance(Duration::from_secs(1));
    let id = host.pending_callouts()[0].id;
    host.fail_callout(id).unwrap();
    assert_eq!(host.metric_value("fixture_callout_failures"), Some(1));
    assert_eq!(host.logs_at(LogLevel::Warn), vec!["metrics call failed".to_string()]);
    assert_eq!(host.shared_data("epp", "metrics"), None);
}

#[test]
fn unknown_cluster_is_bad_argument() {
    let mut host = Host::new();
    host.start_vm(plugin("collector")).unwrap();
    host.advance(Duration::from_secs(1));
    assert!(host.callouts().is_empty());
    assert_eq!(host.logs_at(LogLevel::Error), vec!["tick: dispatch refused: BadArgument".to_string()]);
}

#[test]
fn request_paused_on_a_callout_resumes_from_the_response() {
    let mut host = Host::builder().cluster("auth").build();
    let vm = host.start_vm(plugin("router")).unwrap();
    let s = host.start_request(vm, &post_with(&[("x-auth", "token")]), true).unwrap();
    assert!(host.stream(s).request_paused());
    let call = host.pending_callouts().remove(0);
    assert_eq!((call.cluster.as_str(), call.context_id), ("auth", host.stream(s).context_id.unwrap()));
    host.answer_callout(call.id, CalloutResponse::new(200)).unwrap();
    assert_eq!(host.stream(s).upstream_header("x-auth-ok"), Some("1"));

    // A denied check answers locally instead.
    let s2 = host.start_request(vm, &post_with(&[("x-auth", "bad")]), true).unwrap();
    let call = host.pending_callouts().remove(0);
    host.answer_callout(call.id, CalloutResponse::new(401)).unwrap();
    assert_eq!(host.stream(s2).response_status(), Some(403));
    assert_eq!(host.stream(s2).upstream_request, None);
}

#[test]
fn callouts_of_a_finished_stream_are_cancelled() {
    let mut host = Host::builder().cluster("auth").build();
    let vm = host.start_vm(plugin("router")).unwrap();
    let s = host.start_request(vm, &post_with(&[("x-auth", "token")]), true).unwrap();
    host.reset_stream(s).unwrap();
    assert_eq!(host.callouts()[0].state, CalloutState::Cancelled);
    assert!(host.stream(s).completed);
}

#[test]
fn callout_without_pseudo_headers_is_bad_argument_and_a_good_one_is_recorded_in_full() {
    let mut host = Host::builder().cluster("metrics").build();
    let vm = host.start_vm(plugin("shared")).unwrap();
    let call = |host: &mut Host, headers: &str| {
        let extra = [("x-op", "callout"), ("x-cluster", "metrics"), ("x-call-headers", headers)];
        let s = host.start_request(vm, &post_with(&extra), true).unwrap();
        String::from_utf8(host.stream(s).local_reply.unwrap().body).unwrap()
    };
    assert_eq!(call(&mut host, ":method=GET,:authority=pod"), "BadArgument");
    assert_eq!(call(&mut host, ":path=/,:authority=pod"), "BadArgument");
    assert_eq!(call(&mut host, ":method=GET,:path=/"), "BadArgument");
    // `host` stands in for `:authority`, as in Envoy.
    assert_eq!(call(&mut host, ":method=GET,:path=/load,host=pod"), "token=1");
    let recorded = host.callouts();
    assert_eq!(recorded.len(), 1);
    let c = &recorded[0];
    assert_eq!(
        (c.header(":path"), c.body.as_slice(), c.timeout),
        (Some("/load"), b"ping".as_slice(), Some(Duration::from_secs(2)))
    );
    let refused = host.host_calls("proxy_http_call");
    assert!(refused.first().unwrap().to_string().contains("needs :method, :path and :authority"));
}
