use super::*;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, HttpHeaders, HttpTrailers, ProtocolConfiguration,
};

const CHAT: &str = r#"{"model":"food-review","messages":[{"role":"user","content":"hi"}]}"#;

fn settings(mode: BodyMode, max_body_bytes: usize) -> Arc<BbrSettings> {
    let config = GatewayConfig::from_json(&format!(
        r#"{{"limits": {{"maxBodyBytes": {max_body_bytes}}}, "bbr": {{"unknownModels": "reject", "plugins": [
            {{"type": "body-field-to-header", "parameters": {{"fieldName": "model", "headerName": "X-Gateway-Model-Name"}}}},
            {{"type": "base-model-to-header", "parameters": {{"baseModels": [{{"baseModel": "qwen", "adapters": ["food-review"]}}]}}}}
        ]}}}}"#
    ))
    .unwrap();
    Arc::new(BbrSettings::new(&config, mode, None))
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool, mode: Option<BodySendMode>) -> ProcessingRequest {
    let headers = HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    };
    ProcessingRequest {
        request: Some(In::RequestHeaders(HttpHeaders {
            headers: Some(headers),
            end_of_stream,
            ..Default::default()
        })),
        protocol_config: mode
            .map(|m| ProtocolConfiguration { request_body_mode: m as i32, ..Default::default() }),
        ..Default::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn common(r: &ProcessingResponse) -> &CommonResponse {
    match &r.response {
        Some(Out::RequestHeaders(h)) => h.response.as_ref().unwrap(),
        Some(Out::RequestBody(b)) => b.response.as_ref().unwrap(),
        other => panic!("not a headers or body response: {other:?}"),
    }
}

fn set_headers(c: &CommonResponse) -> Vec<(String, String)> {
    c.header_mutation
        .iter()
        .flat_map(|m| &m.set_headers)
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), String::from_utf8(h.raw_value.clone()).unwrap())
        })
        .collect()
}

fn echoed(rs: &[ProcessingResponse]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut eos = false;
    for r in rs {
        let Some(Out::RequestBody(b)) = &r.response else { panic!("{r:?}") };
        let Some(body_mutation::Mutation::StreamedResponse(s)) =
            b.response.as_ref().and_then(|c| c.body_mutation.as_ref()).and_then(|m| m.mutation.as_ref())
        else {
            panic!("{r:?}")
        };
        out.extend_from_slice(&s.body);
        eos = s.end_of_stream;
    }
    (out, eos)
}

#[test]
fn full_duplex_holds_the_headers_then_sets_them_with_clear_route_cache_and_echoes_the_body() {
    let mut m = BbrMachine::new(settings(BodyMode::FullDuplex, 1 << 20));
    let h = headers(
        &[(":path", "/v1/chat/completions"), ("x-gateway-model-name", "steer")],
        false,
        Some(BodySendMode::FullDuplexStreamed),
    );
    assert!(m.on_message(h).unwrap().is_empty(), "headers response held until the body ends");
    let (a, b) = CHAT.as_bytes().split_at(10);
    assert!(m.on_message(body(a, false)).unwrap().is_empty());
    let out = m.on_message(body(b, true)).unwrap();
    let head = common(&out[0]);
    assert!(head.clear_route_cache);
    // The client's copy is overwritten (a set replaces the removal: see `Mutation::set`).
    assert!(head.header_mutation.as_ref().unwrap().remove_headers.is_empty());
    let set = set_headers(head);
    assert!(set.contains(&("x-gateway-model-name".into(), "food-review".into())), "{set:?}");
    assert!(set.contains(&("x-gateway-base-model-name".into(), "qwen".into())), "{set:?}");
    assert!(set.contains(&("content-length".into(), CHAT.len().to_string())), "{set:?}");
    assert_eq!(echoed(&out[1..]), (CHAT.as_bytes().to_vec(), true));
}

#[test]
fn full_duplex_echoes_large_bodies_in_62000_byte_pieces() {
    let mut m = BbrMachine::new(settings(BodyMode::FullDuplex, 1 << 20));
    let big =
        format!(r#"{{"model":"qwen","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(150_000));
    m.on_message(headers(&[(":path", "/v1/chat/completions")], false, None)).unwrap();
    let out = m.on_message(body(big.as_bytes(), true)).unwrap();
    assert_eq!(out.len(), 1 + 3);
    assert_eq!(echoed(&out[1..]), (big.into_bytes(), true));
}

#[test]
fn buffered_answers_headers_at_once_and_the_body_with_the_mutation() {
    let mut m = BbrMachine::new(settings(BodyMode::Buffered, 1 << 20));
    let out = m
        .on_message(headers(
            &[(":path", "/v1/chat/completions"), ("X-Gateway-Base-Model-Name", "x")],
            false,
            Some(BodySendMode::Buffered),
        ))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        common(&out[0]).header_mutation.as_ref().unwrap().remove_headers,
        vec![String::from("x-gateway-base-model-name")]
    );
    let out = m.on_message(body(CHAT.as_bytes(), true)).unwrap();
    assert_eq!(out.len(), 1);
    let c = common(&out[0]);
    assert!(c.clear_route_cache);
    assert!(c.body_mutation.is_none(), "the body is not changed");
    assert_eq!(
        set_headers(c),
        vec![
            ("x-gateway-model-name".into(), "food-review".into()),
            ("x-gateway-base-model-name".into(), "qwen".into())
        ]
    );
}

fn immediate_of(out: &[ProcessingResponse]) -> (i32, serde_json::Value) {
    let Some(Out::ImmediateResponse(i)) = &out[0].response else { panic!("{out:?}") };
    (i.status.as_ref().unwrap().code, serde_json::from_slice(&i.body).unwrap())
}

#[test]
fn refusals_are_openai_shaped_immediate_responses() {
    for (bytes, status, code) in [
        (&b"{\"model\": "[..], 400, "invalid_json"),
        (br#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#, 404, "model_not_found"),
    ] {
        let mut m = BbrMachine::new(settings(BodyMode::FullDuplex, 1 << 20));
        m.on_message(headers(&[(":path", "/v1/chat/completions")], false, None)).unwrap();
        let (got, v) = immediate_of(&m.on_message(body(bytes, true)).unwrap());
        assert_eq!(got, status);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        if status == 404 {
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        }
        // A refused stream ignores what Envoy still flushes.
        assert!(m.on_message(body(b"", true)).unwrap().is_empty());
    }
    let mut m = BbrMachine::new(settings(BodyMode::FullDuplex, 16));
    m.on_message(headers(&[(":path", "/v1/chat/completions")], false, None)).unwrap();
    assert_eq!(immediate_of(&m.on_message(body(CHAT.as_bytes(), false)).unwrap()).0, 413);
}

#[test]
fn no_body_is_answered_at_the_headers_and_trailers_end_a_full_duplex_body() {
    let mut m = BbrMachine::new(settings(BodyMode::FullDuplex, 1 << 20));
    let out =
        m.on_message(headers(&[(":path", "/v1/models"), ("x-gateway-model-name", "a")], true, None)).unwrap();
    assert_eq!(out.len(), 1);
    assert!(common(&out[0]).clear_route_cache);
    assert!(set_headers(common(&out[0])).is_empty());

    let mut m = BbrMachine::new(settings(BodyMode::FullDuplex, 1 << 20));
    m.on_message(headers(&[(":path", "/v1/chat/completions")], false, None)).unwrap();
    assert!(m.on_message(body(CHAT.as_bytes(), false)).unwrap().is_empty());
    let trailers = ProcessingRequest {
        request: Some(In::RequestTrailers(HttpTrailers::default())),
        ..Default::default()
    };
    let out = m.on_message(trailers).unwrap();
    assert_eq!(echoed(&out[1..out.len() - 1]), (CHAT.as_bytes().to_vec(), false));
    assert!(matches!(out.last().unwrap().response, Some(Out::RequestTrailers(_))));
}

#[test]
fn protocol_errors_are_named() {
    let mut m = BbrMachine::new(settings(BodyMode::FullDuplex, 1 << 20));
    assert!(m.on_message(body(b"{}", true)).unwrap_err().0.contains("before request headers"));
}
