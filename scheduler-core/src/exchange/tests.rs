use super::*;
use crate::endpoint_picker::{Admission, Route};
use crate::flow_control::Ticket;
use crate::plugins::scorers::session_affinity_scorer;
use crate::response::Usage;
use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::vec;

struct Map(BTreeMap<String, String>);

impl HeaderLookup for Map {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }
}

fn map(pairs: &[(&str, &str)]) -> Map {
    Map(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
}

fn settings(json: &str) -> ExchangeSettings {
    ExchangeSettings::new(&GatewayConfig::from_json(json).unwrap())
}

fn no_id() -> String {
    panic!("the request had an id")
}

fn route(destination: &str) -> Route {
    Route {
        header_value: destination.to_owned(),
        destination: destination.to_owned(),
        prefill: None,
        rewritten_model: None,
        body: None,
        client_model: None,
        estimated_tokens: 40,
        prompt_tokens: 16,
        prefix_hashes: Vec::new(),
        streaming: false,
    }
}

/// An exchange past its decision, routed to `10.0.0.1:8000` (the client asked for `client_model`).
fn routed(s: &ExchangeSettings, client_model: Option<&str>) -> Exchange {
    let mut x = Exchange::new();
    let h = map(&[(":path", "/v1/completions"), ("x-request-id", "r1")]);
    x.on_request_headers(s, Some(&h), None, false, &mut no_id);
    assert_eq!(x.on_request_body(s, 10, true), RequestStep::Decide { with_body: true });
    let mut r = route("10.0.0.1:8000");
    if let Some(m) = client_model {
        r.rewritten_model = Some("served".to_owned());
        r.body = Some(b"{\"model\":\"served\"}".to_vec());
        r.client_model = Some(m.to_owned());
    }
    assert!(matches!(x.on_outcome(s, Outcome::Route(r)), Decided::Forward(_)));
    x
}

fn head<'a>(status: u16, content_type: &'a str, upstream: Option<&'a str>) -> ResponseHead<'a> {
    ResponseHead { status: Some(status), content_type: Some(content_type), upstream, end_of_stream: false }
}

#[test]
fn only_the_routing_headers_present_are_removed_and_all_when_the_map_is_unreadable() {
    let s = settings(r#"{"routing": {"destinationHeader": "x-my-dest"}}"#);
    let mut x = Exchange::new();
    let h = map(&[("x-request-id", "r"), ("x-my-dest", "1.2.3.4:80"), ("x-prefiller-host-port", "p")]);
    let step = x.on_request_headers(&s, Some(&h), None, false, &mut no_id);
    assert_eq!(step.remove, vec!["x-my-dest".to_owned(), "x-prefiller-host-port".to_owned()]);
    assert_eq!(step.next, RequestStep::Wait);

    let mut blind = Exchange::new();
    let step = blind.on_request_headers(&s, None, None, false, &mut || "gen".to_owned());
    assert_eq!(step.remove, s.strip);
    // The configured name and all four protocol defaults.
    assert_eq!(s.strip.len(), 5);
}

#[test]
fn a_request_without_an_id_gets_one_on_the_forwarded_request() {
    let s = settings("");
    for h in [map(&[(":path", "/v1/completions")]), map(&[("x-request-id", "")])] {
        let mut x = Exchange::new();
        let step = x.on_request_headers(&s, Some(&h), None, true, &mut || "fresh-1".to_owned());
        assert_eq!(step.set, vec![("x-request-id".to_owned(), "fresh-1".to_owned())]);
        assert_eq!(x.facts().request_id, "fresh-1");
        assert_eq!(step.next, RequestStep::Decide { with_body: false });
    }
}

#[test]
fn the_headers_give_the_decision_its_facts() {
    let s = settings("");
    let mut x = Exchange::new();
    let h = map(&[
        (":path", "/v1/chat/completions"),
        ("x-request-id", "abc"),
        ("x-gateway-inference-objective", "batch"),
        ("x-gateway-model-name-rewrite", "m2"),
        ("x-session-token", ""),
        ("content-length", "12"),
    ]);
    x.on_request_headers(&s, Some(&h), Some(vec!["10.0.0.1".to_owned()]), false, &mut no_id);
    let f = x.facts();
    assert_eq!((f.path.as_str(), f.request_id.as_str()), ("/v1/chat/completions", "abc"));
    assert_eq!((f.objective.as_deref(), f.model_rewrite.as_deref()), (Some("batch"), Some("m2")));
    assert_eq!(f.session_token, None, "an empty header is no header");
    assert!(f.content_length);
    let subset = f.subset_refs();
    assert_eq!(f.info(subset.as_deref()).subset, Some(&["10.0.0.1"][..]));
    assert_eq!((f.content_type.as_deref(), f.content_encoding.as_deref()), (None, None));
}

#[test]
fn the_body_type_and_encoding_reach_the_decision() {
    let s = settings("");
    let mut x = Exchange::new();
    let h = map(&[
        (":path", "/v1/audio/transcriptions"),
        ("x-request-id", "abc"),
        ("content-type", "multipart/form-data; boundary=XyZ"),
        ("content-encoding", "gzip"),
    ]);
    x.on_request_headers(&s, Some(&h), None, false, &mut no_id);
    let f = x.facts();
    assert_eq!(f.content_type.as_deref(), Some("multipart/form-data; boundary=XyZ"));
    assert_eq!(f.content_encoding.as_deref(), Some("gzip"));
    let info = f.info(None);
    assert_eq!(
        (info.content_type, info.content_encoding),
        (Some("multipart/form-data; boundary=XyZ"), Some("gzip"))
    );
}

#[test]
fn a_body_over_the_limit_is_answered_413_as_soon_as_it_passes_it() {
    let s = settings(r#"{"limits": {"maxBodyBytes": 100}}"#);
    let mut x = Exchange::new();
    x.on_request_headers(&s, Some(&map(&[("x-request-id", "r")])), None, false, &mut no_id);
    assert_eq!(x.on_request_body(&s, 100, false), RequestStep::Wait);
    let RequestStep::Reply(reply) = x.on_request_body(&s, 101, false) else { panic!("no 413") };
    assert_eq!((reply.status, reply.reason), (413, "body_too_large"));
    assert!(x.replied());
    assert_eq!(x.on_request_body(&s, 150, true), RequestStep::Pass);
    assert_eq!(x.on_stream_end(), None);
}

#[test]
fn trailers_end_the_body_and_an_empty_body_is_decided_without_one() {
    let s = settings("");
    let mut x = Exchange::new();
    x.on_request_headers(&s, Some(&map(&[("x-request-id", "r")])), None, false, &mut no_id);
    assert_eq!(x.on_request_body(&s, 30, false), RequestStep::Wait);
    assert_eq!(x.on_request_trailers(), RequestStep::Decide { with_body: true });
    assert_eq!(x.on_request_trailers(), RequestStep::Pass);

    let mut empty = Exchange::new();
    empty.on_request_headers(&s, Some(&map(&[("x-request-id", "r")])), None, false, &mut no_id);
    assert_eq!(empty.on_request_body(&s, 0, true), RequestStep::Decide { with_body: false });
}

#[test]
fn a_route_sets_the_routing_headers_and_a_rewritten_body_with_its_length() {
    let s = settings("");
    let mut x = Exchange::new();
    let h = map(&[("x-request-id", "r"), ("content-length", "20")]);
    x.on_request_headers(&s, Some(&h), None, false, &mut no_id);
    x.on_request_body(&s, 20, true);
    let mut r = route("10.0.0.1:8000");
    r.header_value = "10.0.0.1:8000,10.0.0.2:8000".to_owned();
    r.prefill = Some("10.0.0.9:8000".to_owned());
    r.body = Some(b"{\"model\":\"m2\"}".to_vec());
    r.client_model = Some("m".to_owned());
    let Decided::Forward(f) = x.on_outcome(&s, Outcome::Route(r)) else { panic!("not forwarded") };
    assert_eq!(
        f.set,
        vec![
            ("x-gateway-destination-endpoint".to_owned(), "10.0.0.1:8000,10.0.0.2:8000".to_owned()),
            ("x-prefiller-host-port".to_owned(), "10.0.0.9:8000".to_owned()),
            ("content-length".to_owned(), "14".to_owned()),
        ]
    );
    assert_eq!(f.body.as_deref(), Some(&b"{\"model\":\"m2\"}"[..]));
    let counted = InFlight { address: "10.0.0.1:8000".to_owned(), tokens: 40, awaiting: 16 };
    assert_eq!(x.in_flight(), Some(counted.clone()));
    assert_eq!(x.on_stream_end(), Some(counted), "ended before its first token: the prompt is released too");
    assert_eq!(x.on_stream_end(), None, "released once");
}

#[test]
fn a_chunked_request_gets_no_content_length_and_failing_open_unset_sets_nothing() {
    let s = settings("");
    let mut x = Exchange::new();
    x.on_request_headers(&s, Some(&map(&[("x-request-id", "r")])), None, false, &mut no_id);
    x.on_request_body(&s, 20, true);
    let mut r = route("10.0.0.1:8000");
    r.body = Some(b"{}".to_vec());
    let Decided::Forward(f) = x.on_outcome(&s, Outcome::Route(r)) else { panic!() };
    assert_eq!(f.set.len(), 1);

    let mut open = Exchange::new();
    open.on_request_headers(&s, Some(&map(&[("x-request-id", "r")])), None, true, &mut no_id);
    let outcome = Outcome::FailOpen { reason: crate::endpoint_picker::Fallback::NoSnapshot, route: None };
    assert_eq!(open.on_outcome(&s, outcome), Decided::Forward(Forward::default()));
    assert!(!open.wants_upstream_address(&s));
    assert_eq!(
        open.on_response_headers(&s, &head(200, "application/json", None)),
        ResponseHeadStep::default()
    );
    assert_eq!(open.on_stream_end(), None);
}

#[test]
fn an_unasked_outcome_routes_nothing() {
    let s = settings("");
    let mut x = Exchange::new();
    x.on_request_headers(&s, Some(&map(&[("x-request-id", "r")])), None, false, &mut no_id);
    assert_eq!(
        x.on_outcome(&s, Outcome::Route(route("10.0.0.1:8000"))),
        Decided::Forward(Forward::default())
    );
    assert_eq!(x.in_flight(), None);
}

#[test]
fn the_served_endpoint_is_the_proxys_report_and_moves_the_in_flight_count() {
    let s = settings("");
    let mut x = routed(&s, None);
    assert!(x.wants_upstream_address(&s));
    let step = x.on_response_headers(&s, &head(503, "application/json", Some("10.0.0.2:8000")));
    let served = "10.0.0.2:8000".to_owned();
    assert_eq!(step.served, Some(("x-gateway-destination-endpoint-served".to_owned(), served.clone())));
    let moved = Moved { from: "10.0.0.1:8000".to_owned(), to: served.clone(), tokens: 40, awaiting: 16 };
    assert_eq!(step.moved, Some(moved));
    assert_eq!(step.first_token, Some(16), "an error comes whole: its headers release the prompt");
    assert_eq!(x.counted_on(), Some(served.as_str()));
    assert_eq!(step.answered, Some((served.clone(), 503)));
    assert_eq!(x.on_stream_end().map(|f| f.address), Some(served));

    let trusting = settings(r#"{"routing": {"servedFrom": "destination"}}"#);
    let mut y = routed(&trusting, None);
    assert!(!y.wants_upstream_address(&trusting));
    let step = y.on_response_headers(&trusting, &head(200, "application/json", Some("10.0.0.2:8000")));
    assert_eq!(step.served.map(|(_, v)| v).as_deref(), Some("10.0.0.1:8000"));
    assert_eq!((step.moved, step.answered), (None, Some(("10.0.0.1:8000".to_owned(), 200))));
}

#[test]
fn json_usage_is_read_from_a_copy_up_to_the_limit() {
    let s = settings(r#"{"limits": {"maxResponseBodyBytes": 64}}"#);
    let body = br#"{"model":"m","usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
    let mut x = routed(&s, None);
    let step = x.on_response_headers(&s, &head(200, "application/json", None));
    assert!(!step.body_changes_length && !step.holds_body);
    let (a, b) = body.split_at(20);
    assert_eq!(x.on_response_body(&s, a, false), ResponseBodyStep { out: BodyOut::Pass, usage: None });
    let end = x.on_response_body(&s, b, true);
    assert_eq!(end.usage, Some(Usage { prompt_tokens: 5, completion_tokens: 2 }));
    assert!(!x.reads_response_body());

    let mut big = routed(&s, None);
    big.on_response_headers(&s, &head(200, "application/json", None));
    let mut padded = body.to_vec();
    padded.extend_from_slice(&[b' '; 10]);
    let step = big.on_response_body(&s, &padded, true);
    assert_eq!(step, ResponseBodyStep { out: BodyOut::Pass, usage: None });
}

#[test]
fn a_rewritten_json_answer_is_held_and_names_the_clients_model_again() {
    let s = settings("");
    let mut x = routed(&s, Some("client-m"));
    let step = x.on_response_headers(&s, &head(200, "application/json", None));
    assert!(step.body_changes_length && step.holds_body);
    let body = br#"{"model":"served","usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
    let (a, b) = body.split_at(12);
    assert_eq!(x.on_response_body(&s, a, false).out, BodyOut::Hold);
    let end = x.on_response_body(&s, b, true);
    let expected = br#"{"model":"client-m","usage":{"prompt_tokens":5,"completion_tokens":2}}"#.to_vec();
    assert_eq!(end.out, BodyOut::Release { body: expected, changed: true });
    assert_eq!(end.usage, Some(Usage { prompt_tokens: 5, completion_tokens: 2 }));
}

#[test]
fn a_held_answer_past_the_limit_or_cut_by_trailers_is_released_as_it_came() {
    let s = settings(r#"{"limits": {"maxResponseBodyBytes": 16}}"#);
    let mut x = routed(&s, Some("client-m"));
    x.on_response_headers(&s, &head(200, "application/json", None));
    assert_eq!(x.on_response_body(&s, b"{\"model\":", false).out, BodyOut::Hold);
    let step = x.on_response_body(&s, b"\"served\",\"x\":1}", false);
    assert_eq!(
        step.out,
        BodyOut::Release { body: b"{\"model\":\"served\",\"x\":1}".to_vec(), changed: false }
    );
    assert_eq!(x.on_response_body(&s, b"more", true).out, BodyOut::Pass);

    let mut y = routed(&s, Some("client-m"));
    y.on_response_headers(&s, &head(200, "application/json", None));
    y.on_response_body(&s, b"{\"a\":", false);
    assert_eq!(y.on_response_trailers().out, BodyOut::Release { body: b"{\"a\":".to_vec(), changed: false });

    let mut z = routed(&s, Some("client-m"));
    z.on_response_headers(&s, &head(200, "application/json", None));
    z.on_response_body(&s, b"{\"a\":", false);
    assert_eq!(
        z.response_body_unreadable().out,
        BodyOut::Release { body: b"{\"a\":".to_vec(), changed: false }
    );
    assert!(!z.reads_response_body());
}

#[test]
fn event_streams_are_rewritten_line_by_line_or_passed_through() {
    let s = settings("");
    let stream = "data: {\"model\":\"served\",\"choices\":[]}\n\ndata: {\"model\":\"served\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
    let (a, b) = stream.as_bytes().split_at(50);

    let mut x = routed(&s, Some("client-m"));
    let step = x.on_response_headers(&s, &head(200, "text/event-stream", None));
    assert!(step.body_changes_length && !step.holds_body);
    let mut out = Vec::new();
    for (chunk, eos) in [(a, false), (b, true)] {
        let step = x.on_response_body(&s, chunk, eos);
        let BodyOut::Replace(bytes) = step.out else { panic!("not rewritten") };
        out.extend(bytes);
        if eos {
            assert_eq!(step.usage, Some(Usage { prompt_tokens: 3, completion_tokens: 1 }));
        }
    }
    assert_eq!(String::from_utf8(out).unwrap(), stream.replace("served", "client-m"));

    let mut y = routed(&s, None);
    let step = y.on_response_headers(&s, &head(200, "text/event-stream", None));
    assert!(!step.body_changes_length);
    assert_eq!(y.on_response_body(&s, a, false).out, BodyOut::Pass);
    let end = y.on_response_body(&s, b, true);
    assert_eq!(
        end,
        ResponseBodyStep {
            out: BodyOut::Pass,
            usage: Some(Usage { prompt_tokens: 3, completion_tokens: 1 })
        }
    );
}

#[test]
fn a_local_reply_has_no_response_path() {
    let s = settings("");
    let mut x = Exchange::new();
    x.on_request_headers(&s, Some(&map(&[("x-request-id", "r")])), None, true, &mut no_id);
    let reply = crate::endpoint_picker::body_too_large(1);
    assert_eq!(x.on_outcome(&s, Outcome::Reply(reply.clone())), Decided::Reply(reply));
    assert!(x.replied() && x.decided());
    assert_eq!(x.on_response_headers(&s, &head(413, "application/json", None)), ResponseHeadStep::default());
    assert!(!x.reads_response_body());
}

const AFFINITY: &str = r#"{"plugins": [{"type": "session-affinity-scorer"}, {"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [
        {"pluginRef": "session-affinity-scorer", "weight": 10}, {"pluginRef": "queue-scorer"}]}]}"#;

#[test]
fn session_token_only_with_a_session_affinity_scorer_in_a_profile() {
    assert_eq!(settings("{}").session_token, None);
    assert_eq!(settings(AFFINITY).session_token, Some(SessionTokenOf::Served));
    // Declared but used by no profile: nothing would read the token.
    let unused = r#"{"plugins": [{"type": "session-affinity-scorer"}, {"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}]}"#;
    assert_eq!(settings(unused).session_token, None);
    // No profiles: the default profile takes every scorer.
    let implicit = r#"{"plugins": [{"name": "s", "type": "session-affinity-scorer"}]}"#;
    assert_eq!(settings(implicit).session_token, Some(SessionTokenOf::Served));

    let s = settings("{}");
    let mut x = routed(&s, None);
    assert_eq!(x.on_response_headers(&s, &head(200, "application/json", None)).session_token, None);
}

#[test]
fn the_session_token_names_the_served_endpoint() {
    let s = settings(AFFINITY);
    let mut x = routed(&s, None);
    let step = x.on_response_headers(&s, &head(200, "application/json", None));
    let token = step.session_token.clone();
    // base64("10.0.0.1:8000"), what the scorer decodes back to the endpoint's address.
    assert_eq!(token, Some(("x-session-token".to_owned(), "MTAuMC4wLjE6ODAwMA==".to_owned())));
    assert_eq!(
        token.and_then(|(_, v)| session_affinity_scorer::decode_session_token(&v)).as_deref(),
        Some("10.0.0.1:8000")
    );

    // Retried elsewhere: the endpoint that answered (and now holds the conversation) is named.
    let mut y = routed(&s, None);
    let step = y.on_response_headers(&s, &head(200, "text/event-stream", Some("10.0.0.2:8000")));
    assert_eq!(step.session_token.map(|(_, v)| v), Some(encode_session_token("10.0.0.2:8000")));

    // Headers-only responses carry it too; a local reply or a fail-open without a route does not.
    let mut z = routed(&s, None);
    let h = ResponseHead { end_of_stream: true, ..head(204, "application/json", None) };
    assert!(z.on_response_headers(&s, &h).session_token.is_some());
    let mut open = Exchange::new();
    let req = map(&[(":path", "/v1/completions"), ("x-request-id", "r2")]);
    open.on_request_headers(&s, Some(&req), None, true, &mut no_id);
    open.on_outcome(
        &s,
        Outcome::FailOpen { route: None, reason: crate::endpoint_picker::Fallback::NoUsableEndpoint },
    );
    assert_eq!(open.on_response_headers(&s, &head(200, "application/json", None)).session_token, None);
}

#[test]
fn a_prefill_profile_session_token_names_the_prefill_endpoint() {
    let pd = r#"{"plugins": [
        {"type": "pd-profile-handler", "parameters": {"prefillProfile": "pre"}},
        {"type": "session-affinity-scorer", "parameters": {"profileName": "pre"}},
        {"type": "queue-scorer"}],
      "schedulingProfiles": [
        {"name": "decode", "plugins": [{"pluginRef": "queue-scorer"}]},
        {"name": "pre", "plugins": [{"pluginRef": "session-affinity-scorer"}, {"pluginRef": "queue-scorer"}]}]}"#;
    let s = settings(pd);
    assert_eq!(s.session_token, Some(SessionTokenOf::Prefill));
    let mut x = Exchange::new();
    let h = map(&[(":path", "/v1/completions"), ("x-request-id", "r1")]);
    x.on_request_headers(&s, Some(&h), None, true, &mut no_id);
    let mut r = route("10.0.0.1:8000");
    r.prefill = Some("10.0.0.9:8000".to_owned());
    x.on_outcome(&s, Outcome::Route(r));
    let step = x.on_response_headers(&s, &head(200, "application/json", None));
    assert_eq!(step.session_token.map(|(_, v)| v), Some(encode_session_token("10.0.0.9:8000")));
    // Without a prefill step (short prompt), the decode endpoint is named.
    let y = &mut routed(&s, None);
    let step = y.on_response_headers(&s, &head(200, "application/json", None));
    assert_eq!(step.session_token.map(|(_, v)| v), Some(encode_session_token("10.0.0.1:8000")));
}

/// An exchange routed to `10.0.0.1:8000` for a client that asked for a streamed response.
fn routed_streaming(s: &ExchangeSettings) -> Exchange {
    let mut x = Exchange::new();
    x.on_request_headers(s, Some(&map(&[("x-request-id", "r")])), None, false, &mut no_id);
    x.on_request_body(s, 10, true);
    let mut r = route("10.0.0.1:8000");
    r.streaming = true;
    assert!(matches!(x.on_outcome(s, Outcome::Route(r)), Decided::Forward(_)));
    x
}

#[test]
fn a_streamed_response_releases_the_prompt_at_its_first_body_chunk_once() {
    let s = settings("");
    let mut x = routed_streaming(&s);
    let step = x.on_response_headers(&s, &head(200, "text/event-stream", None));
    assert_eq!(step.first_token, None, "stream headers come before the first token");
    assert_eq!(x.in_flight().map(|f| f.awaiting), Some(16));
    let first = x.on_response_data();
    assert_eq!(first, Some(FirstToken { address: "10.0.0.1:8000", prompt_tokens: 16 }));
    assert_eq!(x.on_response_data(), None, "released once");
    let end = x.on_stream_end().unwrap();
    assert_eq!((end.tokens, end.awaiting), (40, 0));
}

#[test]
fn a_response_not_streamed_or_failed_releases_the_prompt_at_its_headers() {
    let s = settings("");
    let mut x = routed(&s, None);
    assert_eq!(x.on_response_headers(&s, &head(200, "application/json", None)).first_token, Some(16));
    assert_eq!(x.on_response_data(), None);
    assert_eq!(x.on_stream_end().map(|f| f.awaiting), Some(0));

    let mut failed = routed_streaming(&s);
    let step = failed.on_response_headers(&s, &head(429, "application/json", None));
    assert_eq!(step.first_token, Some(16), "an error answer generates nothing after its headers");

    let mut empty = routed_streaming(&s);
    let headers_only = ResponseHead { end_of_stream: true, ..head(200, "text/event-stream", None) };
    assert_eq!(empty.on_response_headers(&s, &headers_only).first_token, Some(16));
}

#[test]
fn a_streamed_request_reset_before_its_first_token_releases_the_prompt_with_the_count() {
    let s = settings("");
    let mut x = routed_streaming(&s);
    // Retried on another endpoint: the prompt awaits its first token there now.
    let step = x.on_response_headers(&s, &head(200, "text/event-stream", Some("10.0.0.2:8000")));
    assert_eq!(step.moved.map(|m| m.awaiting), Some(16));
    assert_eq!(step.first_token, None);
    let end = x.on_stream_end().unwrap();
    assert_eq!((end.address.as_str(), end.awaiting), ("10.0.0.2:8000", 16));
    assert_eq!(x.on_response_data(), None);
    assert_eq!(x.on_stream_end(), None);
}

#[test]
fn a_queued_request_waits_then_takes_its_outcome_and_a_stream_end_cancels_it_once() {
    let s = settings("{}");
    let start = |fairness: Option<&str>| {
        let mut x = Exchange::new();
        let mut pairs = vec![(":path", "/v1/completions"), ("x-request-id", "r1")];
        if let Some(f) = fairness {
            pairs.push(("x-gateway-inference-fairness-id", f));
        }
        x.on_request_headers(&s, Some(&map(&pairs)), None, false, &mut no_id);
        assert_eq!(x.on_request_body(&s, 10, true), RequestStep::Decide { with_body: true });
        x
    };
    let mut x = start(Some("tenant-a"));
    assert_eq!(x.facts().fairness_id.as_deref(), Some("tenant-a"));
    assert_eq!(x.facts().info(None).fairness_id, Some("tenant-a"));
    assert_eq!(x.on_admission(&s, Admission::Queued(Ticket(7))), None, "nothing to apply yet");
    assert_eq!(x.waiting(), Some(Ticket(7)));
    assert!(!x.decided());
    // Dispatched: the outcome applies as to any decided request, and a lease is kept for its end.
    assert!(matches!(x.on_outcome(&s, Outcome::Route(route("10.0.0.1:8000"))), Decided::Forward(_)));
    x.on_lease(Some(Ticket(7)));
    assert_eq!(x.waiting(), None);
    assert_eq!(x.flow_at_end(), Some(FlowEnd::Finished(Ticket(7))));
    assert_eq!(x.flow_at_end(), None, "reported once");

    // llm-d's current header names the objective too, and wins over the older one.
    let mut y = Exchange::new();
    let h = map(&[
        ("x-request-id", "r"),
        ("x-gateway-inference-objective", "old"),
        ("x-llm-d-inference-objective", "new"),
    ]);
    y.on_request_headers(&s, Some(&h), None, false, &mut no_id);
    assert_eq!(y.facts().objective.as_deref(), Some("new"));

    // The client leaves while waiting: cancel, once; a late outcome is never routed on.
    let mut x = start(None);
    assert_eq!(x.facts().fairness_id, None);
    x.on_admission(&s, Admission::Queued(Ticket(8)));
    assert_eq!(x.flow_at_end(), Some(FlowEnd::Cancel(Ticket(8))));
    assert_eq!(x.flow_at_end(), None);
    assert_eq!(
        x.on_outcome(&s, Outcome::Route(route("10.0.0.1:8000"))),
        Decided::Forward(Forward::default())
    );
    assert_eq!(x.in_flight(), None);

    // Decided at once: applied on the spot, the lease remembered.
    let mut x = start(None);
    let d = x.on_admission(
        &s,
        Admission::Decided { outcome: Outcome::Route(route("10.0.0.2:8000")), lease: None },
    );
    assert!(matches!(d, Some(Decided::Forward(_))));
    assert_eq!(x.flow_at_end(), None);
}
