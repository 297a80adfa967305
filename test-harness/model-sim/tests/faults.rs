//! Every fault knob of the real `model-sim` binary, switched over HTTP (or set on the command line) and
//! observed the way a gateway would see it: over real loopback sockets.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{sample, Replica, FAST};
use serde_json::{json, Value};

/// A new connection to `port` is refused (nobody listens), as after `kill -9`.
fn refused(port: u16) -> bool {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => true,
        Err(e) => panic!("connecting to {port}: {e}"),
    }
}

/// Reads until the end of a response head; what came.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("response head cut short ({other:?}): {:?}", String::from_utf8_lossy(&head)),
        }
    }
    String::from_utf8(head).unwrap()
}

fn completion(max_tokens: u32) -> Value {
    json!({"prompt": "fault", "max_tokens": max_tokens})
}

#[test]
fn refuse_connections_closes_the_port_until_cleared_on_the_control_port() {
    let r = Replica::start(&[&FAST[..], &["--control-port", "0"]].concat());
    let port = r.port;
    // A kept-alive connection, like the ones a proxy pools.
    let mut pooled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    pooled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(pooled, "GET /health HTTP/1.1\r\nhost: sim\r\n\r\n").unwrap();
    assert!(read_head(&mut pooled).starts_with("HTTP/1.1 200"));
    // The control port serves the knobs and nothing else.
    assert_eq!(r.control("GET", "/metrics", None).status, 404);
    assert_eq!(r.control("GET", "/admin/faults", None).json()["refuse_connections"], false);

    let set = r.control("POST", "/admin/faults", Some(&json!({"refuse_connections": true})));
    assert_eq!(set.status, 200);
    assert_eq!(set.json()["refuse_connections"], true);
    // Once the answer is in, the port is closed: new connections are refused...
    assert!(refused(port));
    // ...and the open one was closed.
    let mut buf = [0u8; 16];
    match pooled.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the pooled connection should be closed, got {other:?}"),
    }
    // It stays closed until told otherwise.
    std::thread::sleep(Duration::from_millis(300));
    assert!(refused(port));
    assert_eq!(r.control("GET", "/admin/faults", None).json()["refuse_connections"], true);

    let clear = r.control("POST", "/admin/faults", Some(&json!({"refuse_connections": false})));
    assert_eq!(clear.status, 200);
    assert_eq!(clear.json()["refuse_connections"], false);
    // Once that answer is in, the same port accepts and serves again.
    let reply = r.request("POST", "/v1/completions", Some(&completion(2)));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 2);
    // The main port still has the knobs too.
    assert_eq!(r.request("GET", "/admin/faults", None).json()["refuse_connections"], false);
}

#[test]
fn refuse_for_ms_closes_the_port_and_reopens_it_by_itself() {
    let r = Replica::start(&FAST);
    let port = r.port;
    let asked = Instant::now();
    // Set on the very port it closes: the answer still comes back.
    let set = r.request("POST", "/admin/faults", Some(&json!({"refuse_for_ms": 800})));
    assert_eq!(set.status, 200);
    assert_eq!(set.json()["refuse_connections"], true);
    assert_eq!(set.json()["refuse_for_ms"], 800);
    assert!(refused(port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused(port) {
        assert!(Instant::now() < deadline, "the port never re-opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(asked.elapsed() >= Duration::from_millis(800), "re-opened early: {:?}", asked.elapsed());
    let faults = r.request("GET", "/admin/faults", None).json();
    assert_eq!(
        (faults["refuse_connections"].clone(), faults["refuse_for_ms"].clone()),
        (json!(false), json!(0))
    );
    assert_eq!(r.request("POST", "/v1/completions", Some(&completion(1))).status, 200);

    // Without a control port, a refusal with no end is refused: nothing could switch it back.
    let bad = r.request("POST", "/admin/faults", Some(&json!({"refuse_connections": true})));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "refuse_connections");
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("--control-port"));
    assert!(!refused(port));
}

#[test]
fn refusal_can_start_with_the_replica_and_end_early_on_the_control_port() {
    let r = Replica::start(&[&FAST[..], &["--control-port", "0", "--refuse-for-ms", "60000"]].concat());
    assert!(refused(r.port));
    assert_eq!(r.control("GET", "/admin/faults", None).json()["refuse_for_ms"], 60000);
    let clear = r.control("POST", "/admin/faults", Some(&json!({"refuse_for_ms": 0})));
    assert_eq!(clear.status, 200);
    assert_eq!(r.request("GET", "/health", None).status, 200);

    let r = Replica::start(&[&FAST[..], &["--control-port", "0", "--refuse-connections"]].concat());
    assert!(refused(r.port));
    assert_eq!(r.control("POST", "/admin/faults", Some(&json!({"refuse_connections": false}))).status, 200);
    assert_eq!(r.request("GET", "/health", None).status, 200);
}

#[test]
fn completions_hang_reads_the_request_and_never_answers() {
    let r = Replica::start(&FAST);
    let set = r.request("POST", "/admin/faults", Some(&json!({"completions_hang": true})));
    assert_eq!(set.json()["completions_hang"], true);
    let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let body = completion(1).to_string();
    write!(s, "POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let mut buf = [0u8; 1];
    match s.read(&mut buf) {
        // The connection stays open and silent: the client has to give up.
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence on an open connection, got {other:?}"),
    }
    let chat = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "stream": true});
    let hung = r.send("POST", "/v1/chat/completions", Some(&chat), Duration::from_millis(300));
    assert_eq!((hung.status, hung.body.len()), (0, 0));
    // Only completions hang: /metrics (a knob of its own) and the rest still answer.
    assert!(sample(&r.metrics(), "vllm:num_requests_running").is_some());
    assert_eq!(r.request("GET", "/health", None).status, 200);

    r.request("POST", "/admin/faults", Some(&json!({"completions_hang": false})));
    assert_eq!(r.request("POST", "/v1/completions", Some(&completion(1))).status, 200);
    // A request that was hanging stays hung.
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected the hung request to stay silent, got {other:?}"),
    }
}

#[test]
fn response_delay_holds_back_the_response_headers() {
    let r = Replica::start(&[&FAST[..], &["--response-delay-ms", "400"]].concat());
    let t = Instant::now();
    let reply = r.request("POST", "/v1/completions", Some(&completion(1)));
    assert_eq!(reply.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());

    // A stream's headers wait too.
    let set = r.request("POST", "/admin/faults", Some(&json!({"response_delay_ms": 300})));
    assert_eq!(set.json()["response_delay_ms"], 300);
    let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = json!({"prompt": "x", "max_tokens": 1, "stream": true}).to_string();
    let t = Instant::now();
    write!(s, "POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 200"));
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    // /metrics is not delayed by it (metrics_delay_ms is its own knob): the scrape is not held back.
    r.request("POST", "/admin/faults", Some(&json!({"response_delay_ms": 86400000})));
    assert_eq!(r.send("GET", "/metrics", None, Duration::from_secs(20)).status, 200);
}

#[test]
fn error_status_chooses_the_status_of_injected_errors() {
    let r = Replica::start(&[&FAST[..], &["--error-rate", "1", "--error-status", "503"]].concat());
    let reply = r.request("POST", "/v1/completions", Some(&completion(1)));
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "ServiceUnavailableError");
    assert_eq!(reply.json()["error"]["code"], 503);
    let set = r.request("POST", "/admin/faults", Some(&json!({"error_status": 500})));
    assert_eq!(set.json()["error_status"], 500);
    assert_eq!(
        r.request(
            "POST",
            "/v1/chat/completions",
            Some(&json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
        )
        .status,
        500
    );
    let bad = r.request("POST", "/admin/faults", Some(&json!({"error_status": 404})));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "error_status");
    assert_eq!(r.request("GET", "/admin/faults", None).json()["error_status"], 500);
}

#[test]
fn metrics_frozen_serves_the_last_page_until_thawed() {
    let r = Replica::start(&FAST);
    let before = r.metrics();
    assert_eq!(sample(&before, "vllm:request_success_total"), Some(0.0));
    let set = r.request("POST", "/admin/faults", Some(&json!({"metrics_frozen": true})));
    assert_eq!(set.json()["metrics_frozen"], true);
    assert_eq!(r.request("POST", "/v1/completions", Some(&completion(3))).status, 200);
    std::thread::sleep(Duration::from_millis(20));
    // Byte for byte the page served before: counters, queues and the adapters' timestamp all stand still.
    assert_eq!(r.metrics(), before);
    assert_eq!(r.metrics(), before);
    r.request("POST", "/admin/faults", Some(&json!({"metrics_frozen": false})));
    let after = r.metrics();
    assert_eq!(sample(&after, "vllm:request_success_total"), Some(1.0));
    assert_eq!(sample(&after, "vllm:generation_tokens_total"), Some(3.0));

    // Frozen from the start: the first page rendered is the one served from then on.
    let r = Replica::start(&[&FAST[..], &["--metrics-frozen"]].concat());
    let first = r.metrics();
    assert_eq!(r.request("POST", "/v1/completions", Some(&completion(2))).status, 200);
    assert_eq!(r.metrics(), first);
}

#[test]
fn drop_gauges_leaves_families_off_the_page() {
    let r = Replica::start(&[&FAST[..], &["--drop-gauges", "vllm:num_requests_waiting"]].concat());
    let text = r.metrics();
    assert!(!text.contains("vllm:num_requests_waiting"), "{text}");
    assert_eq!(sample(&text, "vllm:kv_cache_usage_perc"), Some(0.0));
    // A patch replaces the list.
    let set = r.request("POST", "/admin/faults", Some(&json!({"drop_gauges": ["vllm:kv_cache_usage_perc"]})));
    assert_eq!(set.json()["drop_gauges"], json!(["vllm:kv_cache_usage_perc"]));
    let text = r.metrics();
    assert!(!text.contains("vllm:kv_cache_usage_perc"), "{text}");
    assert_eq!(sample(&text, "vllm:num_requests_waiting"), Some(0.0));
    assert_eq!(sample(&text, "vllm:num_requests_running"), Some(0.0));
    // A name the page does not have is a mistake, not a silent no-op.
    let bad =
        r.request("POST", "/admin/faults", Some(&json!({"drop_gauges": ["vllm:kv_cache_usage_percent"]})));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "drop_gauges");
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("`vllm:kv_cache_usage_percent`"));
    r.request("POST", "/admin/faults", Some(&json!({"drop_gauges": []})));
    let text = r.metrics();
    assert!(
        sample(&text, "vllm:kv_cache_usage_perc").is_some()
            && sample(&text, "vllm:num_requests_waiting").is_some()
    );
}

#[test]
fn bad_knob_values_are_refused_naming_the_knob_and_change_nothing() {
    let r = Replica::start(&[&FAST[..], &["--control-port", "0"]].concat());
    let before = r.request("GET", "/admin/faults", None).json();
    for (patch, knob) in [
        (json!({"refuse_for_ms": -1}), "refuse_for_ms"),
        (json!({"refuse_for_ms": 86_400_001}), "refuse_for_ms"),
        (json!({"refuse_for_ms": 5, "refuse_connections": true}), "refuse_for_ms"),
        (json!({"refuse_connections": "yes"}), "refuse_connections"),
        (json!({"completions_hang": 1}), "completions_hang"),
        (json!({"response_delay_ms": 1e30}), "response_delay_ms"),
        (json!({"error_rate": 1.01, "metrics_hang": true}), "error_rate"),
        (json!({"error_status": 200}), "error_status"),
        (json!({"drop_after_chunks": -3}), "drop_after_chunks"),
        (json!({"metrics_delay_ms": "1s"}), "metrics_delay_ms"),
        (json!({"metrics_frozen": null}), "metrics_frozen"),
        (json!({"drop_gauges": "vllm:kv_cache_usage_perc"}), "drop_gauges"),
    ] {
        for reply in [
            r.request("POST", "/admin/faults", Some(&patch)),
            r.control("POST", "/admin/faults", Some(&patch)),
        ] {
            assert_eq!(reply.status, 400, "{patch}");
            assert_eq!(reply.json()["error"]["param"], knob, "{patch}");
            let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(message.starts_with(&format!("fault knob `{knob}`: ")), "{patch}: {message}");
        }
    }
    for body in ["", "[]", "{\"metrics_hung\": true}", "{\"error_rate\":", "\u{1}\u{2}"] {
        let reply = send_raw(r.port, body.as_bytes());
        assert_eq!(reply.status, 400, "{body:?}");
        assert!(
            reply.json()["error"]["message"].as_str().unwrap().starts_with("fault patch")
                || body.contains("hung")
        );
    }
    assert_eq!(send_raw(r.port, b"\xff\xfe{").status, 400);
    assert_eq!(r.request("GET", "/admin/faults", None).json(), before);
    assert_eq!(r.request("POST", "/v1/completions", Some(&completion(1))).status, 200);

    // The same checks on the command line: exit 2 and a message naming the flag.
    for (args, needle) in [
        (&["--error-status", "404"][..], "flag `--error-status`: `404` is not an HTTP 5xx status"),
        (&["--refuse-connections"][..], "flag `--refuse-connections`: needs --control-port"),
        (&["--drop-gauges", "vllm:nope"][..], "flag `--drop-gauges`: `vllm:nope` is not a metric family"),
        (&["--response-delay-ms", "-1"][..], "flag `--response-delay-ms`: `-1` is not milliseconds"),
        (
            &["--refuse-for-ms", "99999999999"][..],
            "flag `--refuse-for-ms`: `99999999999` is not milliseconds",
        ),
        (&["--control-port", "70000"][..], "flag `--control-port`: `70000` is not a port number"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_model-sim")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// POSTs raw bytes to /admin/faults.
fn send_raw(port: u16, body: &[u8]) -> common::Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /admin/faults HTTP/1.1\r\nhost: sim\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    common::Reply::parse(&raw)
}

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
    // Completions still answer (completions_hang is a knob of its own).
    assert_eq!(r.request("POST", "/v1/completions", Some(&completion(1))).status, 200);
}
