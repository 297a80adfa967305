//! Bodies that are not JSON, through the host emulator against the built module: a transcription form
//! is routed on load, another type is never refused, and a compressed body is answered 415.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proxy_wasm_emulator::LocalReplySource;

fn deployment(queues: &[u32]) -> (proxy_wasm_emulator::Host, proxy_wasm_emulator::VmId) {
    let mut host = host();
    let cfg = config(queues.len(), "");
    let worker = host.start_vm(picker(&cfg)).unwrap();
    host.start_vm(collector(&cfg)).unwrap();
    scrape_round(&mut host, queues);
    (host, worker)
}

fn post<'a>(path: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![(":method", "POST"), (":path", path), (":authority", "gateway")];
    h.extend_from_slice(extra);
    h
}

#[test]
fn a_transcription_form_is_routed_on_load_and_passed_on_unchanged() {
    let (mut host, worker) = deployment(&[7, 0, 7]);
    let body: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n\
RIFF\x00\xff\r\n--XyZ--\r\n";
    let headers = post("/v1/audio/transcriptions", &[("content-type", "multipart/form-data; boundary=XyZ")]);
    let s = host.request(worker, &headers, body).unwrap();
    let st = host.stream(s);
    assert!(st.local_reply.is_none(), "{st:?}");
    assert_eq!(destination(&st), Some(addr(2).as_str()));
    // Binary of another type is not refused either.
    let headers = post("/v1/audio/translations", &[("content-type", "application/octet-stream")]);
    let s = host.request(worker, &headers, b"\x00\x01\x02").unwrap();
    assert_eq!(destination(&host.stream(s)), Some(addr(2).as_str()));
    assert_eq!(host.metric_value("epp_parse_errors").unwrap_or(0), 0);
    assert_no_traps(&host);
}

#[test]
fn a_gzip_body_is_answered_415_naming_the_encoding() {
    let (mut host, worker) = deployment(&[0]);
    let headers =
        post("/v1/chat/completions", &[("content-type", "application/json"), ("content-encoding", "gzip")]);
    let s = host.request(worker, &headers, b"\x1f\x8b\x08\x00\x00\x00\x00\x00").unwrap();
    let st = host.stream(s);
    assert_eq!(st.response_status(), Some(415));
    assert_eq!(st.local_reply.as_ref().unwrap().source, LocalReplySource::Filter);
    assert!(st.upstream_request.is_none());
    let v = reply_body(&st);
    assert_eq!(v["error"]["code"], "unsupported_content_encoding");
    assert!(v["error"]["param"].is_null());
    assert!(v["error"]["message"].as_str().unwrap().contains("\"gzip\""), "{v}");
    assert_eq!(host.metric_value("epp_decisions_replied"), Some(1));
    assert_eq!(host.metric_value("epp_unsupported_encoding"), Some(1));
    assert_eq!(host.metric_value("epp_unavailable").unwrap_or(0), 0, "not counted as unavailable");
    assert_no_traps(&host);
}
