use super::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::{HeaderMutation, ProtocolConfiguration};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};
use scheduler_core::endpoint_picker::EndpointPicker;
use scheduler_core::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
use std::sync::Arc;

const NOW: u64 = 1_000_000;
const CHAT: &str = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":10}"#;

fn settings(max_body_bytes: usize) -> Arc<StreamSettings> {
    let config =
        GatewayConfig::from_json(&format!(r#"{{"limits": {{"maxBodyBytes": {max_body_bytes}}}}}"#)).unwrap();
    Arc::new(StreamSettings::new(&config, BodyMode::FullDuplex, None))
}

/// Three fresh endpoints; endpoint 2 has the shortest queue.
fn pool() -> PoolSnapshot {
    let mut p = PoolSnapshot { generation: 1, published_at_ms: NOW, ..PoolSnapshot::default() };
    for (i, w) in [5u32, 0, 5].iter().enumerate() {
        let m = Metrics { waiting: *w, kv_usage: 0.1, updated_at_ms: NOW, ..Metrics::default() };
        p.endpoints.push(EndpointState {
            metrics: Some(m),
            ..EndpointState::new(Endpoint::new(format!("10.0.0.{}:8000", i + 1)))
        });
    }
    p
}

/// The real core, in-thread, with the given configuration and snapshot (`None`: no snapshot yet).
struct Harness {
    picker: EndpointPicker,
    snapshot: Option<PoolSnapshot>,
    machine: Machine,
    steps: Vec<Step>,
}

impl Harness {
    fn new(config: &str, max_body_bytes: usize) -> Harness {
        Harness {
            picker: EndpointPicker::from_json(config).unwrap(),
            snapshot: Some(pool()),
            machine: Machine::new(settings(max_body_bytes)),
            steps: Vec::new(),
        }
    }

    fn default() -> Harness {
        Harness::new("", 4 * 1024 * 1024)
    }

    /// Feeds one message; picks are answered by the core at once. Returns the responses it produced.
    fn send(&mut self, msg: ProcessingRequest) -> Vec<ProcessingResponse> {
        let mut out = Vec::new();
        for step in self.machine.on_message(msg).unwrap() {
            match step {
                Step::Send(r) => out.push(r),
                Step::Decide(input) => {
                    let subset = input.facts.subset_refs();
                    let info = input.facts.info(subset.as_deref());
                    let view = self.picker.view(self.snapshot.as_ref(), false, NOW);
                    let outcome = self.picker.decide(&info, input.body.as_deref(), view, NOW, 7);
                    out.extend(self.machine.on_outcome(outcome));
                }
                other => self.steps.push(other),
            }
        }
        out
    }
}

fn raw(key: &str, value: &str) -> HeaderValue {
    HeaderValue { key: key.into(), value: String::new(), raw_value: value.as_bytes().to_vec() }
}

fn request_headers(extra: Vec<HeaderValue>, end_of_stream: bool) -> ProcessingRequest {
    let mut headers =
        vec![raw(":method", "POST"), raw(":path", "/v1/chat/completions"), raw("x-request-id", "req-1")];
    headers.extend(extra);
    ProcessingRequest {
        request: Some(In::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn with_mode(mut msg: ProcessingRequest, mode: BodySendMode) -> ProcessingRequest {
    msg.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: mode as i32,
        response_body_mode: mode as i32,
        ..ProtocolConfiguration::default()
    });
    msg
}

fn with_metadata(mut msg: ProcessingRequest, ns: &str, key: &str, kind: Kind) -> ProcessingRequest {
    let s = Struct { fields: [(key.to_string(), Value { kind: Some(kind) })].into() };
    msg.metadata_context =
        Some(Metadata { filter_metadata: [(ns.to_string(), s)].into(), ..Metadata::default() });
    msg
}

fn request_body(body: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::RequestBody(HttpBody {
            body: body.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn response_headers(content_type: &str) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![raw(":status", "200"), raw("content-type", content_type)],
            }),
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn response_body(body: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::ResponseBody(HttpBody {
            body: body.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn set_header<'m>(m: &'m HeaderMutation, name: &str) -> Option<&'m str> {
    m.set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| std::str::from_utf8(&h.raw_value).unwrap())
}

fn common(r: &ProcessingResponse) -> &CommonResponse {
    match r.response.as_ref().unwrap() {
        Out::RequestHeaders(h) | Out::ResponseHeaders(h) => h.response.as_ref().unwrap(),
        Out::RequestBody(b) | Out::ResponseBody(b) => b.response.as_ref().unwrap(),
        other => panic!("no common response in {other:?}"),
    }
}

fn mutation(r: &ProcessingResponse) -> &HeaderMutation {
    common(r).header_mutation.as_ref().unwrap()
}

fn lb_metadata(r: &ProcessingResponse) -> Option<String> {
    let ns = r.dynamic_metadata.as_ref()?.fields.get("envoy.lb")?;
    let Some(Kind::StructValue(s)) = &ns.kind else { return None };
    match &s.fields.get("x-gateway-destination-endpoint")?.kind {
        Some(Kind::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

/// (bytes, end_of_stream) of a streamed body mutation.
fn streamed_part(r: &ProcessingResponse) -> (Vec<u8>, bool) {
    match &common(r).body_mutation.as_ref().unwrap().mutation {
        Some(BodyMut::StreamedResponse(s)) => (s.body.clone(), s.end_of_stream),
        other => panic!("expected a streamed mutation, got {other:?}"),
    }
}

fn immediate_of(r: &ProcessingResponse) -> (i32, serde_json::Value) {
    match r.response.as_ref().unwrap() {
        Out::ImmediateResponse(i) => {
            (i.status.unwrap().code, serde_json::from_slice(&i.body).expect("the error body is JSON"))
        }
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

#[test]
fn full_duplex_holds_headers_until_the_body_ends_then_headers_body_in_order() {
    let mut h = Harness::default();
    assert!(h
        .send(request_headers(vec![raw("x-gateway-destination-endpoint", "6.6.6.6:1")], false))
        .is_empty());
    let (a, b) = CHAT.as_bytes().split_at(20);
    assert!(h.send(request_body(a, false)).is_empty(), "nothing may precede the headers response");
    let out = h.send(request_body(b, true));
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0].response, Some(Out::RequestHeaders(_))));
    assert!(common(&out[0]).clear_route_cache);
    let m = mutation(&out[0]);
    assert_eq!(
        set_header(m, "x-gateway-destination-endpoint"),
        Some("10.0.0.2:8000"),
        "client value replaced"
    );
    assert_eq!(set_header(m, "content-length"), Some(CHAT.len().to_string().as_str()));
    assert_eq!(lb_metadata(&out[0]).as_deref(), Some("10.0.0.2:8000"));
    assert_eq!(streamed_part(&out[1]), (CHAT.as_bytes().to_vec(), true));
    assert_eq!(
        h.machine.in_flight(),
        Some(InFlight { address: "10.0.0.2:8000".into(), tokens: 11, awaiting: 1 }),
        "1 prompt token + max_tokens 10; the prompt awaits its first token"
    );
}

#[test]
fn large_bodies_go_back_in_chunks_of_at_most_62000_bytes_byte_exact() {
    let mut h = Harness::default();
    let prompt: String = (0..300_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let body = format!(r#"{{"model":"llama","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    h.send(with_mode(request_headers(vec![], false), BodySendMode::FullDuplexStreamed));
    let mut out = Vec::new();
    for piece in body.as_bytes().chunks(16_384) {
        out.extend(h.send(request_body(piece, false)));
    }
    out.extend(h.send(request_body(b"", true)));
    let parts: Vec<(Vec<u8>, bool)> = out[1..].iter().map(streamed_part).collect();
    assert_eq!(parts.len(), body.len().div_ceil(62_000));
    assert!(parts.iter().all(|(p, _)| p.len() <= 62_000));
    assert_eq!(parts.iter().filter(|(_, eos)| *eos).count(), 1);
    assert!(parts.last().unwrap().1, "end of stream on the last chunk");
    assert_eq!(parts.into_iter().flat_map(|(p, _)| p).collect::<Vec<u8>>(), body.as_bytes());
}

#[test]
fn buffered_mode_continues_at_headers_and_routes_at_the_body() {
    let mut h = Harness::default();
    let out = h.send(with_mode(request_headers(vec![], false), BodySendMode::Buffered));
    assert_eq!(out.len(), 1);
    assert!(common(&out[0]).clear_route_cache);
    assert!(common(&out[0]).header_mutation.is_none());
    let out = h.send(request_body(CHAT.as_bytes(), true));
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0].response, Some(Out::RequestBody(_))));
    assert_eq!(set_header(mutation(&out[0]), "x-gateway-destination-endpoint"), Some("10.0.0.2:8000"));
    assert_eq!(lb_metadata(&out[0]).as_deref(), Some("10.0.0.2:8000"));
    assert!(common(&out[0]).body_mutation.is_none(), "an unchanged body is not resent");
}

#[test]
fn header_only_requests_are_answered_at_the_headers() {
    let mut h = Harness::default();
    let out = h.send(request_headers(vec![raw(":method", "GET"), raw(":path", "/v1/models")], true));
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0].response, Some(Out::RequestHeaders(_))));
    assert!(set_header(mutation(&out[0]), "x-gateway-destination-endpoint").is_some());
    assert!(set_header(mutation(&out[0]), "content-length").is_none());
}

#[test]
fn nginx_style_value_only_headers_are_read() {
    let mut h = Harness::default();
    let value_only = |k: &str, v: &str| HeaderValue { key: k.into(), value: v.into(), raw_value: vec![] };
    let msg = ProcessingRequest {
        request: Some(In::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    value_only(":path", "/v1/chat/completions"),
                    value_only("x-request-id", "n-1"),
                    value_only("x-gateway-model-name-rewrite", "llama-v2"),
                ],
            }),
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    };
    h.send(msg);
    let out = h.send(request_body(CHAT.as_bytes(), true));
    let (sent, _) = streamed_part(&out[1]);
    let expected = CHAT.replace("\"llama\"", "\"llama-v2\"");
    assert_eq!(String::from_utf8(sent).unwrap(), expected, "the rewrite header (value only) took effect");
    assert_eq!(set_header(mutation(&out[0]), "content-length"), Some(expected.len().to_string().as_str()));
}

#[test]
fn raw_value_wins_over_value() {
    let mut h = Harness::default();
    let both = HeaderValue {
        key: ":path".into(),
        value: "/v1/nonsense".into(),
        raw_value: b"/v1/chat/completions".to_vec(),
    };
    h.send(request_headers(vec![both], false));
    let out = h.send(request_body(CHAT.as_bytes(), true));
    assert!(matches!(out[0].response, Some(Out::RequestHeaders(_))), "chat body accepted on the raw path");
}

fn subset_request(kind: Kind) -> ProcessingRequest {
    with_metadata(
        request_headers(vec![], false),
        "envoy.lb.subset_hint",
        "x-gateway-destination-endpoint-subset",
        kind,
    )
}

#[test]
fn subset_hint_limits_the_pick_and_empty_means_503() {
    // Endpoint 2 is the best in the pool, but the hint allows only 1 and 3.
    let allowed = Kind::ListValue(ListValue {
        values: ["10.0.0.1:8000", "10.0.0.3:8000"]
            .iter()
            .map(|s| Value { kind: Some(Kind::StringValue(s.to_string())) })
            .collect(),
    });
    let mut h = Harness::default();
    h.send(subset_request(allowed));
    let out = h.send(request_body(CHAT.as_bytes(), true));
    let dest = set_header(mutation(&out[0]), "x-gateway-destination-endpoint").unwrap();
    assert!(dest == "10.0.0.1:8000" || dest == "10.0.0.3:8000", "{dest}");

    let mut h = Harness::default();
    h.send(subset_request(Kind::StringValue("10.0.0.3:8000".into())));
    let out = h.send(request_body(CHAT.as_bytes(), true));
    assert_eq!(set_header(mutation(&out[0]), "x-gateway-destination-endpoint"), Some("10.0.0.3:8000"));

    let mut h = Harness::default();
    h.send(subset_request(Kind::ListValue(ListValue::default())));
    let out = h.send(request_body(CHAT.as_bytes(), true));
    assert_eq!(out.len(), 1);
    let (status, body) = immediate_of(&out[0]);
    assert_eq!(status, 503);
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(h.machine.in_flight(), None);
}

#[test]
fn bad_json_is_a_400_with_an_openai_error() {
    let mut h = Harness::default();
    h.send(request_headers(vec![], false));
    let out = h.send(request_body(b"{\"messages\": [", true));
    let (status, body) = immediate_of(&out[0]);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(h.send(request_body(b"late", true)).is_empty(), "nothing after a local reply");
}

#[test]
fn over_limit_bodies_get_413_without_buffering_the_rest() {
    let mut h = Harness::new(r#"{"limits":{"maxBodyBytes":100}}"#, 100);
    h.send(request_headers(vec![], false));
    let out = h.send(request_body(&[b' '; 150], false));
    assert_eq!(immediate_of(&out[0]).0, 413);
}

#[test]
fn fail_closed_without_metrics_is_503_and_fail_open_routes_blind() {
    let mut h = Harness::new(r#"{"failureMode":"FailClose"}"#, 1 << 20);
    h.snapshot = None;
    h.send(request_headers(vec![], false));
    assert_eq!(immediate_of(&h.send(request_body(CHAT.as_bytes(), true))[0]).0, 503);

    let mut h = Harness::new(r#"{"failOpen":{"strategy":"leave-unset"}}"#, 1 << 20);
    h.snapshot = None;
    h.send(request_headers(vec![raw("x-gateway-destination-endpoint", "6.6.6.6:1")], false));
    let out = h.send(request_body(CHAT.as_bytes(), true));
    let m = mutation(&out[0]);
    assert!(m.remove_headers.contains(&"x-gateway-destination-endpoint".to_string()), "client value dropped");
    assert!(lb_metadata(&out[0]).is_none());
}

#[test]
fn a_missing_request_id_is_generated_and_sent_upstream() {
    let mut h = Harness::default();
    let msg = request_headers(vec![], false);
    let Some(In::RequestHeaders(mut hh)) = msg.request else { unreachable!() };
    hh.headers.as_mut().unwrap().headers.retain(|h| h.key != "x-request-id");
    h.send(ProcessingRequest { request: Some(In::RequestHeaders(hh)), ..ProcessingRequest::default() });
    let out = h.send(request_body(CHAT.as_bytes(), true));
    assert_eq!(set_header(mutation(&out[0]), "x-request-id").map(str::len), Some(32));
}

#[test]
fn trailers_end_a_full_duplex_body() {
    let mut h = Harness::default();
    h.send(request_headers(vec![], false));
    assert!(h.send(request_body(CHAT.as_bytes(), false)).is_empty());
    let trailers = ProcessingRequest {
        request: Some(In::RequestTrailers(HttpTrailers::default())),
        ..ProcessingRequest::default()
    };
    let out = h.send(trailers);
    assert_eq!(out.len(), 3);
    assert_eq!(
        streamed_part(&out[1]),
        (CHAT.as_bytes().to_vec(), false),
        "trailers follow: no end of stream"
    );
    assert!(matches!(out[2].response, Some(Out::RequestTrailers(_))));
}

const REWRITE: &str = r#"{"modelRewrites":[{"rules":[{"matches":[{"model":{"type":"Exact","value":"llama"}}],"targets":[{"modelRewrite":"llama-v2","weight":1}]}]}]}"#;

#[test]
fn model_rewrite_is_undone_in_a_json_response_with_usage_and_served_endpoint() {
    let mut h = Harness::new(REWRITE, 1 << 20);
    h.send(request_headers(vec![], false));
    let out = h.send(request_body(CHAT.as_bytes(), true));
    assert!(String::from_utf8(streamed_part(&out[1]).0).unwrap().contains("\"model\":\"llama-v2\""));

    // The gateway retried on endpoint 3 and says so in the response metadata.
    let served = with_metadata(
        response_headers("application/json"),
        "envoy.lb",
        "x-gateway-destination-endpoint-served",
        Kind::StringValue("10.0.0.3:8000".into()),
    );
    assert!(h.send(served).is_empty(), "JSON response headers held until the body is rewritten");
    assert_eq!(
        h.steps,
        vec![
            Step::Answered { endpoint: "10.0.0.2:8000".into(), status: 503 },
            Step::Served {
                routed: "10.0.0.2:8000".into(),
                served: "10.0.0.3:8000".into(),
                tokens: 11,
                awaiting: 1
            },
            Step::Answered { endpoint: "10.0.0.3:8000".into(), status: 200 },
            // Not streamed: the answer comes whole, its headers mark the first token.
            Step::FirstToken { endpoint: "10.0.0.3:8000".into(), prompt_tokens: 1 },
        ]
    );
    assert_eq!(
        h.machine.in_flight(),
        Some(InFlight { address: "10.0.0.3:8000".into(), tokens: 11, awaiting: 0 })
    );
    let reply =
        br#"{"id":"c1","model":"llama-v2","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9}}"#;
    assert!(h.send(response_body(&reply[..30], false)).is_empty());
    let out = h.send(response_body(&reply[30..], true));
    let expected =
        br#"{"id":"c1","model":"llama","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9}}"#;
    let m = mutation(&out[0]);
    assert_eq!(set_header(m, "content-length"), Some(expected.len().to_string().as_str()));
    assert_eq!(set_header(m, "x-gateway-destination-endpoint-served"), Some("10.0.0.3:8000"));
    assert_eq!(streamed_part(&out[1]), (expected.to_vec(), true));
    assert_eq!(h.steps.last(), Some(&Step::Usage(Usage { prompt_tokens: 4, completion_tokens: 9 })));
}

#[test]
fn sse_responses_stream_through_with_the_model_put_back() {
    let mut h = Harness::new(REWRITE, 1 << 20);
    h.send(request_headers(vec![], false));
    h.send(request_body(CHAT.as_bytes(), true));
    let out = h.send(response_headers("text/event-stream"));
    let m = mutation(&out[0]);
    assert_eq!(set_header(m, "x-gateway-destination-endpoint-served"), Some("10.0.0.2:8000"));
    assert!(m.remove_headers.contains(&"content-length".to_string()));
    let first = h.send(response_body(b"data: {\"model\":\"llama-v2\",\"choices\":[]}\n\ndata: {\"mo", false));
    assert_eq!(streamed_part(&first[0]), (b"data: {\"model\":\"llama\",\"choices\":[]}\n\n".to_vec(), false));
    let last = h.send(response_body(
        b"del\":\"llama-v2\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        true,
    ));
    let (bytes, eos) = streamed_part(&last[0]);
    assert!(eos);
    assert!(String::from_utf8(bytes).unwrap().starts_with("data: {\"model\":\"llama\",\"usage\""));
    assert_eq!(h.steps.last(), Some(&Step::Usage(Usage { prompt_tokens: 1, completion_tokens: 2 })));
}

#[test]
fn responses_without_rewrite_pass_through_chunk_by_chunk() {
    let mut h = Harness::default();
    h.send(request_headers(vec![], false));
    h.send(request_body(CHAT.as_bytes(), true));
    assert_eq!(h.send(response_headers("application/json")).len(), 1, "answered at once");
    let out = h.send(response_body(b"{\"usage\":{\"prompt_tokens\":3,", false));
    assert_eq!(streamed_part(&out[0]), (b"{\"usage\":{\"prompt_tokens\":3,".to_vec(), false));
    h.send(response_body(b"\"completion_tokens\":1}}", true));
    assert_eq!(h.steps.last(), Some(&Step::Usage(Usage { prompt_tokens: 3, completion_tokens: 1 })));
}

#[test]
fn protocol_errors_are_reported_not_panicked() {
    let mut h = Harness::default();
    assert!(h.machine.on_message(request_body(b"x", true)).is_err());
    let mut h = Harness::default();
    h.send(request_headers(vec![], true));
    assert!(h.machine.on_message(request_headers(vec![], true)).is_err());
}

#[test]
fn session_affinity_sets_the_token_and_honours_it() {
    const AFFINITY: &str = r#"{"plugins": [{"type": "session-affinity-scorer"}, {"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "session-affinity-scorer", "weight": 10}, {"pluginRef": "queue-scorer"}]}]}"#;
    let config = GatewayConfig::from_json(AFFINITY).unwrap();
    let settings = Arc::new(StreamSettings::new(&config, BodyMode::FullDuplex, None));
    let harness = |settings: &Arc<StreamSettings>| Harness {
        picker: EndpointPicker::from_json(AFFINITY).unwrap(),
        snapshot: Some(pool()),
        machine: Machine::new(Arc::clone(settings)),
        steps: Vec::new(),
    };
    let served_and_token = |h: &mut Harness, extra: Vec<HeaderValue>| {
        h.send(request_headers(extra, false));
        h.send(request_body(CHAT.as_bytes(), true));
        let out = h.send(response_headers("application/json"));
        let m = mutation(&out[0]);
        let get = |name| set_header(m, name).map(str::to_owned);
        (get("x-gateway-destination-endpoint-served"), get("x-session-token"))
    };

    // No token: the shortest queue (10.0.0.2), and the token naming it.
    let (served, token) = served_and_token(&mut harness(&settings), vec![]);
    assert_eq!(served.as_deref(), Some("10.0.0.2:8000"));
    assert_eq!(token.as_deref(), Some("MTAuMC4wLjI6ODAwMA=="), "base64(\"10.0.0.2:8000\")");

    // A token naming a busier endpoint wins over the queue.
    let to_3 = "MTAuMC4wLjM6ODAwMA=="; // base64("10.0.0.3:8000")
    let (served, token) = served_and_token(&mut harness(&settings), vec![raw("x-session-token", to_3)]);
    assert_eq!(served.as_deref(), Some("10.0.0.3:8000"));
    assert_eq!(token.as_deref(), Some(to_3));

    // Without the scorer configured, no token is set.
    let mut plain = Harness::default();
    let (served, token) = served_and_token(&mut plain, vec![]);
    assert_eq!((served.as_deref(), token), (Some("10.0.0.2:8000"), None));
}

const STREAMED_CHAT: &str =
    r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":10,"stream":true}"#;

fn first_tokens(steps: &[Step]) -> Vec<(String, u64)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::FirstToken { endpoint, prompt_tokens } => Some((endpoint.clone(), *prompt_tokens)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_streamed_response_releases_the_prompt_at_its_first_body_chunk_in_full_duplex() {
    let mut h = Harness::default();
    h.send(request_headers(vec![], false));
    h.send(request_body(STREAMED_CHAT.as_bytes(), true));
    assert_eq!(h.machine.in_flight().map(|f| f.awaiting), Some(1));
    h.send(response_headers("text/event-stream"));
    assert!(first_tokens(&h.steps).is_empty(), "stream headers come before the first token");
    h.send(response_body(b"data: {\"choices\":[]}\n\n", false));
    h.send(response_body(b"data: [DONE]\n\n", true));
    assert_eq!(first_tokens(&h.steps), vec![("10.0.0.2:8000".to_string(), 1)], "once");
    assert_eq!(h.machine.in_flight().map(|f| f.awaiting), Some(0));
}

#[test]
fn without_streamed_response_bodies_the_headers_release_the_prompt() {
    let config = GatewayConfig::from_json("").unwrap();
    let buffered = Arc::new(StreamSettings::new(&config, BodyMode::Buffered, Some(BodyMode::Buffered)));
    let mut h = Harness::default();
    h.machine = Machine::new(buffered);
    h.send(request_headers(vec![], false));
    h.send(request_body(STREAMED_CHAT.as_bytes(), true));
    h.send(response_headers("text/event-stream"));
    assert_eq!(first_tokens(&h.steps), vec![("10.0.0.2:8000".to_string(), 1)]);
    h.send(response_body(b"data: [DONE]\n\n", true));
    assert_eq!(first_tokens(&h.steps).len(), 1, "once");
}
