//! A root context acting on paused streams (`proxy_set_effective_context`), through the `parking`
//! fixture: resumed or answered from the tick, streams that end while parked, and a VM that stops with
//! streams parked.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{plugin, post_with, POST};
use proxy_wasm_emulator::{Event, HarnessError, Host, LogLevel, Phase, Status};

fn parking(host: &mut Host) -> proxy_wasm_emulator::VmId {
    host.start_vm(plugin("parking").allow_on_headers_stop_iteration(true)).unwrap()
}

/// `proxy_set_effective_context` calls: (calling context, target, status).
fn effective_calls(host: &Host) -> Vec<(u32, String, Option<Status>)> {
    host.host_calls("proxy_set_effective_context")
        .into_iter()
        .filter_map(|e| match e {
            Event::HostCall { context_id, detail, status, .. } => Some((context_id, detail, status)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_root_resumes_a_parked_stream_from_its_tick_with_the_streams_maps() {
    let mut host = Host::new();
    let vm = parking(&mut host);
    let s = host.request(vm, &POST, b"twelve bytes").unwrap();
    // Paused after its whole body: nothing went upstream.
    assert_eq!(host.stream(s).request_phase(), Phase::BodyBuffering);
    assert_eq!(host.stream(s).upstream_request, None);

    host.advance(Duration::from_millis(10));
    let stream = host.stream(s);
    let up = stream.upstream_request.as_ref().expect("resumed by the tick");
    // The root read the stream's buffered body and wrote its headers before continuing it.
    assert_eq!(up.header("x-resumed-by"), Some("tick"));
    assert_eq!(up.header("x-body-seen"), Some("12"));
    assert_eq!(up.body, b"twelve bytes");
    assert!(up.end_of_stream);
    let ctx = stream.context_id.unwrap();
    assert_eq!(effective_calls(&host), vec![(1, format!("ctx {ctx}"), Some(Status::Ok))]);
    assert!(host.traps().is_empty());
}

#[test]
fn a_stream_without_a_body_is_resumed_from_its_headers() {
    let mut host = Host::new();
    let vm = parking(&mut host);
    let s = host.start_request(vm, &POST, true).unwrap();
    assert!(host.stream(s).request_paused());
    host.advance(Duration::from_millis(10));
    let up = host.stream(s).upstream_request.unwrap();
    // No body: Envoy has no request body buffer for the effective context (NotFound, read as empty).
    assert_eq!((up.header("x-resumed-by"), up.header("x-body-seen")), (Some("tick"), Some("0")));
    assert!(up.end_of_stream && up.body.is_empty());
}

#[test]
fn the_root_can_answer_a_parked_stream_instead() {
    let mut host = Host::new();
    let vm = parking(&mut host);
    let s = host.request(vm, &post_with(&[("x-park", "reply")]), b"x").unwrap();
    host.advance(Duration::from_millis(10));
    let stream = host.stream(s);
    assert_eq!(stream.upstream_request, None);
    assert_eq!(stream.response_status(), Some(429));
    assert_eq!(stream.response.as_ref().unwrap().header("x-from"), Some("tick"));
    assert!(stream.completed);
}

#[test]
fn a_stream_that_ends_while_parked_is_never_touched_again() {
    let mut host = Host::new();
    let vm = parking(&mut host);
    let s = host.request(vm, &POST, b"x").unwrap();
    host.reset_stream(s).unwrap();
    host.advance(Duration::from_millis(30));
    // It unparked itself in on_done: the root never targeted it.
    assert!(effective_calls(&host).is_empty());
    assert!(host.stream(s).reset && host.stream(s).upstream_request.is_none());
}

#[test]
fn a_context_that_is_gone_is_a_bad_argument_not_a_crash() {
    let mut host = Host::new();
    let vm = parking(&mut host);
    // This stream stays in the root's list after it ended.
    let s = host.request(vm, &post_with(&[("x-park", "forget")]), b"x").unwrap();
    let ctx = host.stream(s).context_id.unwrap();
    host.reset_stream(s).unwrap();
    host.advance(Duration::from_millis(10));
    assert_eq!(effective_calls(&host), vec![(1, format!("ctx {ctx}"), Some(Status::BadArgument))]);
    let warned = host.logs_at(LogLevel::Warn);
    assert!(warned.iter().any(|l| l.contains(&format!("parked context {ctx} is gone"))), "{warned:?}");
    assert!(host.traps().is_empty() && !host.vm_failed(vm));
}

#[test]
fn streams_of_other_vms_are_not_a_roots_to_resume() {
    // Context ids are per VM: the same number in another VM names nothing here.
    let mut host = Host::new();
    let a = parking(&mut host);
    let b = host.start_vm(plugin("router").allow_on_headers_stop_iteration(true)).unwrap();
    let other = host.start_request(b, &POST, false).unwrap();
    let s = host.request(a, &POST, b"x").unwrap();
    host.advance(Duration::from_millis(10));
    assert!(host.stream(s).upstream_request.is_some());
    assert_eq!(host.stream(other).upstream_request, None, "the router's own stream is still paused");
}

#[test]
fn a_stopping_vm_answers_its_parked_streams_and_takes_no_more() {
    let mut host = Host::new();
    let vm = parking(&mut host);
    let parked = host.request(vm, &POST, b"x").unwrap();
    let waiting_for_body = host.start_request(vm, &POST, false).unwrap();
    host.stop_vm(vm).unwrap();

    // on_done answered the parked stream through its context.
    let stream = host.stream(parked);
    assert_eq!(stream.response_status(), Some(503));
    assert_eq!(stream.response.as_ref().unwrap().header("x-from"), Some("root-done"));
    assert!(stream.completed && !stream.reset);
    // The stream the root did not know of was reset at shutdown, after its own on_done.
    assert!(host.stream(waiting_for_body).reset);
    let root_done = host
        .transcript()
        .into_iter()
        .any(|e| matches!(e, Event::Callback { name: "proxy_on_done", context_id: 1, result: Some(1), .. }));
    assert!(root_done);
    assert!(host.logs_at(LogLevel::Info).iter().any(|l| l == "root done"));
    assert!(host.vm_stopped(vm));
    assert_eq!(host.start_request(vm, &POST, true), Err(HarnessError::VmStopped(vm)));
    // No tick runs any more.
    let ticks_before = host.transcript().len();
    host.advance(Duration::from_millis(50));
    assert_eq!(host.transcript().len(), ticks_before);
    assert!(host.traps().is_empty());
}
