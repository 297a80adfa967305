//! Body-based routing through the host emulator against the built module: the `bbr` root id alone (GIE's
//! Body-Based Router in the proxy), and a picker whose configuration has a `bbr` section (both in one
//! filter, the body read once).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proxy_wasm_emulator::{Host, Plugin, VmId};

const BBR: &str = r#""bbr": {"unknownModels": "reject", "plugins": [
  {"type": "body-field-to-header", "parameters": {"fieldName": "model", "headerName": "X-Gateway-Model-Name"}},
  {"type": "body-field-to-header", "parameters": {"fieldName": "user", "headerName": "x-user"}},
  {"type": "base-model-to-header", "parameters": {"baseModels": [
    {"baseModel": "llama", "adapters": ["sql-lora"]}, {"baseModel": "qwen", "adapters": []}]}}]}"#;

fn router(limits: &str) -> (Host, VmId) {
    let mut host = host();
    let cfg = format!("{{{BBR}{limits}}}");
    let vm = host
        .start_vm(
            Plugin::new(wasm())
                .root_id("bbr")
                .vm_id("bbr")
                .configuration(cfg.as_str())
                .allow_on_headers_stop_iteration(true),
        )
        .unwrap();
    (host, vm)
}

#[test]
fn the_router_promotes_the_model_and_its_base_model_and_leaves_the_body_alone() {
    let (mut host, vm) = router("");
    let body = r#"{"model": "sql-lora", "user": "ann",  "messages": [{"role": "user", "content": "hé"}]}"#;
    let s =
        chat(&mut host, vm, body, &[("x-gateway-model-name", "qwen"), ("x-gateway-base-model-name", "qwen")]);
    let st = host.stream(s);
    assert!(st.local_reply.is_none(), "{st:?}");
    assert_eq!(st.upstream_header("x-gateway-model-name"), Some("sql-lora"));
    assert_eq!(st.upstream_header("x-gateway-base-model-name"), Some("llama"));
    assert_eq!(st.upstream_header("x-user"), Some("ann"));
    let up = st.upstream_request.as_ref().unwrap();
    assert_eq!(up.body, body.as_bytes(), "the body passes unchanged");
    // Exactly one value each: the client's copies were removed, not appended to.
    assert_eq!(
        up.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("x-gateway-base-model-name")).count(),
        1
    );
    assert_no_traps(&host);
}

#[test]
fn the_router_refuses_what_the_picker_refuses_and_unknown_models() {
    let (mut host, vm) = router(r#", "limits": {"maxBodyBytes": 200}"#);
    for (body, status, code) in [
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}"#.to_string(),
            404,
            "model_not_found",
        ),
        (r#"{"model": "#.to_string(), 400, "invalid_json"),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#.to_string(),
            400,
            "missing_required_parameter",
        ),
        (
            format!(
                r#"{{"model": "qwen", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
                "x".repeat(300)
            ),
            413,
            "request_too_large",
        ),
    ] {
        let s = chat(&mut host, vm, &body, &[("x-gateway-model-name", "qwen")]);
        let st = host.stream(s);
        assert_eq!(st.response_status(), Some(status), "{body}: {st:?}");
        assert!(st.upstream_request.is_none());
        let v = reply_body(&st);
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    assert_eq!(host.metric_value("epp_unknown_model"), Some(1));
    assert_eq!(host.metric_value("epp_parse_errors"), Some(2));
    assert_eq!(host.metric_value("epp_body_too_large"), Some(1));
    // No body: nothing promoted, the client's header removed, the route table decides.
    let s = host
        .request(
            vm,
            &[
                (":method", "GET"),
                (":path", "/v1/models"),
                (":authority", "g"),
                ("x-gateway-model-name", "qwen"),
            ],
            b"",
        )
        .unwrap();
    let st = host.stream(s);
    assert!(st.local_reply.is_none());
    assert_eq!(st.upstream_header("x-gateway-model-name"), None);
    assert_eq!(host.metric_value("epp_bbr_nothing_promoted"), Some(1));
    assert_eq!(host.metric_value("epp_bbr_promoted").unwrap_or(0), 0);
    assert_no_traps(&host);
}

#[test]
fn a_picker_with_a_bbr_section_promotes_the_headers_and_picks_on_the_same_read() {
    let mut host = host();
    let cfg = config(3, BBR);
    let worker = host.start_vm(picker(&cfg)).unwrap();
    host.start_vm(collector(&cfg)).unwrap();
    scrape_round(&mut host, &[5, 0, 5]);
    let s = chat(
        &mut host,
        worker,
        r#"{"model": "sql-lora", "messages": [{"role": "user", "content": "hi"}]}"#,
        &[("x-gateway-base-model-name", "qwen")],
    );
    let st = host.stream(s);
    assert_eq!(destination(&st), Some(addr(2).as_str()));
    assert_eq!(st.upstream_header("x-gateway-model-name"), Some("sql-lora"));
    assert_eq!(st.upstream_header("x-gateway-base-model-name"), Some("llama"));
    // An unknown model is answered instead of being picked (counted as a reply, as the picker's 400s are).
    let s = chat(
        &mut host,
        worker,
        r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#,
        &[],
    );
    let st = host.stream(s);
    assert_eq!(st.response_status(), Some(404));
    assert_eq!(destination(&st), None);
    assert_eq!(host.metric_value("epp_decisions_routed"), Some(1), "only the first request was routed");
    assert_eq!(host.metric_value("epp_decisions_replied"), Some(1));
    // A client's copies go even when nothing replaces them (a request without a body).
    let s = host
        .request(
            worker,
            &[
                (":method", "GET"),
                (":path", "/v1/models"),
                (":authority", "g"),
                ("x-gateway-base-model-name", "qwen"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(host.stream(s).upstream_header("x-gateway-base-model-name"), None);
    // Without a bbr section a picker promotes nothing and leaves these headers alone.
    let mut plain = common::host();
    let w = plain.start_vm(picker(&config(1, ""))).unwrap();
    let s = chat(&mut plain, w, CHAT, &[("x-gateway-model-name", "kept")]);
    assert_eq!(plain.stream(s).upstream_header("x-gateway-model-name"), Some("kept"));
    assert_no_traps(&host);
}
