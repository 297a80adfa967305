//! The real `model-sim` binary on a loopback port, spoken to with plain HTTP/1.1 the way a gateway would.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{sample, Replica, Reply, FAST};
use serde_json::{json, Value};

#[test]
fn completion_round_trip_reports_usage_and_identity() {
    let r = Replica::start(&[&FAST[..], &["--replica-name", "pod-a", "--lora", "sql-lora"]].concat());
    let prompt = "a".repeat(800); // 200 tokens
    let reply = r.request(
        "POST",
        "/v1/completions",
        Some(&json!({"model": "sql-lora", "prompt": prompt, "max_tokens": 12})),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-model-sim-replica"), Some("pod-a"));
    let v = reply.json();
    assert_eq!(v["model"], "sql-lora");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 200);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 212);
    // The same prompt again: all but the last block comes from the prefix cache.
    let again = r.request(
        "POST",
        "/v1/completions",
        Some(&json!({"model": "sql-lora", "prompt": prompt, "max_tokens": 1})),
    );
    assert_eq!(again.json()["usage"]["prompt_tokens_details"]["cached_tokens"], 192);
    let text = r.metrics();
    assert_eq!(sample(&text, "vllm:prefix_cache_hits_total"), Some(192.0));
    assert_eq!(sample(&text, "vllm:time_to_first_token_seconds_count"), Some(2.0));
}

#[test]
fn chat_without_max_tokens_draws_a_length_and_stops() {
    let r = Replica::start(&[&FAST[..], &["--default-output-tokens", "10"]].concat());
    let reply = r.request(
        "POST",
        "/v1/chat/completions",
        Some(&json!({"messages": [{"role": "user", "content": "hi"}]})),
    );
    assert_eq!(reply.status, 200);
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((5..=15).contains(&n), "{n}");
    assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap().split_whitespace().count() as u64, n);
}

#[test]
fn sse_stream_is_well_formed_and_ends_with_usage_and_done() {
    let r = Replica::start(&FAST);
    let body = json!({
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [{"role": "user", "content": "stream please"}],
        "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true},
    });
    let reply = r.request("POST", "/v1/chat/completions", Some(&body));
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("text/event-stream"));
    assert!(!reply.truncated);
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"].get(0)).filter(|c| c["finish_reason"].is_null()).collect();
    assert_eq!(content.len(), 5);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");

    // Without include_usage, vLLM sends no usage chunk.
    let body = json!({"prompt": "plain", "max_tokens": 3, "stream": true});
    let events = r.request("POST", "/v1/completions", Some(&body)).events();
    assert_eq!(events.len(), 3 + 1 + 1);
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));
}

#[test]
fn metrics_show_a_queued_request_while_the_replica_is_busy() {
    // One sequence slot, taken by a background request that decodes for minutes.
    let r = Replica::start(&["--max-num-seqs", "1", "--busy", "1", "--busy-output-tokens", "100000"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The background request becomes visible after the API overhead (20 ms).
    let text = loop {
        let text = r.metrics();
        if sample(&text, "vllm:num_requests_running") == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "background request never ran:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(sample(&text, "vllm:num_requests_waiting"), Some(0.0));
    assert!(sample(&text, "vllm:kv_cache_usage_perc").unwrap() > 0.0);

    let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    let body = json!({"prompt": "queued behind the busy one", "max_tokens": 5}).to_string();
    write!(s, "POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    loop {
        let text = r.metrics();
        if sample(&text, "vllm:num_requests_waiting") == Some(1.0) {
            assert_eq!(sample(&text, "vllm:num_requests_running"), Some(1.0));
            break;
        }
        assert!(Instant::now() < deadline, "request never showed up as waiting:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A client that hangs up stops costing the replica anything: the queued request is aborted.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&r.metrics(), "vllm:num_requests_waiting") != Some(0.0) {
        assert!(Instant::now() < deadline, "abandoned request still queued");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sglang_mode_speaks_sglang_metric_names() {
    let r = Replica::start(&[&FAST[..], &["--engine", "sglang", "--num-gpu-blocks", "5000"]].concat());
    let text = r.metrics();
    assert_eq!(sample(&text, "sglang:num_queue_reqs"), Some(0.0));
    assert_eq!(sample(&text, "sglang:num_running_reqs"), Some(0.0));
    assert_eq!(sample(&text, "sglang:token_usage"), Some(0.0));
    assert!(text.contains("num_pages=\"5000\",page_size=\"16\""));
    assert!(!text.contains("vllm:"));
}

#[test]
fn models_health_and_errors() {
    let r = Replica::start(&[&FAST[..], &["--model", "base", "--lora", "a,b"]].concat());
    assert_eq!(r.request("GET", "/health", None).status, 200);
    let ids: Vec<String> = r.request("GET", "/v1/models", None).json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["base", "a", "b"]);
    let unknown = r.request("POST", "/v1/completions", Some(&json!({"model": "c", "prompt": "x"})));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["message"], "The model `c` does not exist.");
    let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{{bad}}"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let bad = Reply::parse(&raw);
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(r.request("GET", "/nope", None).status, 404);
    assert_eq!(r.request("GET", "/v1/completions", None).status, 405);
    let too_long =
        r.request("POST", "/v1/completions", Some(&json!({"prompt": "x", "max_tokens": 10_000_000})));
    assert_eq!(too_long.status, 400);
    assert!(too_long.json()["error"]["message"].as_str().unwrap().contains("maximum context length"));
}

#[test]
fn help_lists_flags_and_bad_flags_fail_fast() {
    let out = Command::new(env!("CARGO_BIN_EXE_model-sim")).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--time-scale"));
    let out = Command::new(env!("CARGO_BIN_EXE_model-sim")).arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag `--frobnicate`"));
}
