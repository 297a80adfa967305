//! The shim's ext_proc stream (`shim-ext-proc/src/extproc/machine*`): arbitrary sequences of ext_proc
//! messages (any order, any body mode including unknown ones, subset hints in metadata) with arbitrary
//! bodies, decided by the real picker. Checked: no panic; a protocol error ends the stream; every
//! streamed body mutation stays within the gRPC message bound the machine promises.
#![no_main]

use arbitrary::Arbitrary;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation as BodyMut;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};
use libfuzzer_sys::fuzz_target;
use scheduler_core::endpoint_picker::EndpointPicker;
use std::sync::Arc;
use wasm_epp_fuzz::machine::{BodyMode, Machine, Step, StreamSettings};
use wasm_epp_fuzz::{
    pick, Chunk, CONFIGS, CONTENT_TYPES, HEADER_NAMES, NOW_MS, PATHS, REQUEST_BODIES, RESPONSE_BODIES,
};

/// The largest streamed body mutation the machine sends (its module doc).
const MAX_STREAMED_CHUNK: usize = 62_000;

#[derive(Arbitrary, Debug)]
enum Subset {
    Text(String),
    List(Vec<String>),
    Number(f64),
}

#[derive(Arbitrary, Debug)]
enum Msg {
    RequestHeaders {
        path: u8,
        content_type: Option<u8>,
        known: Vec<(u8, Vec<u8>)>,
        other: Vec<(String, Vec<u8>)>,
        text_values: bool,
        end_of_stream: bool,
        modes: Option<(i32, i32)>,
        subset: Option<Subset>,
    },
    RequestBody {
        chunk: Chunk,
        end_of_stream: bool,
    },
    RequestTrailers,
    ResponseHeaders {
        status: Option<Vec<u8>>,
        content_type: Option<u8>,
        end_of_stream: bool,
    },
    ResponseBody {
        chunk: Chunk,
        end_of_stream: bool,
    },
    ResponseTrailers,
    Nothing,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: u8,
    default_mode: u8,
    forced_mode: Option<u8>,
    snapshot: bool,
    messages: Vec<Msg>,
}

const MODES: [BodyMode; 3] = [BodyMode::FullDuplex, BodyMode::Buffered, BodyMode::None];

fn header(key: &str, value: Vec<u8>, text: bool) -> HeaderValue {
    if text {
        HeaderValue {
            key: key.into(),
            value: String::from_utf8_lossy(&value).into_owned(),
            raw_value: Vec::new(),
        }
    } else {
        HeaderValue { key: key.into(), value: String::new(), raw_value: value }
    }
}

fn message(msg: Msg) -> ProcessingRequest {
    let mut out = ProcessingRequest::default();
    out.request = match msg {
        Msg::RequestHeaders {
            path,
            content_type,
            known,
            other,
            text_values,
            end_of_stream,
            modes,
            subset,
        } => {
            let mut headers = vec![
                header(":method", b"POST".to_vec(), text_values),
                header(":path", pick(&PATHS, path).as_bytes().to_vec(), text_values),
            ];
            if let Some(ct) = content_type {
                headers.push(header(
                    "content-type",
                    pick(&CONTENT_TYPES, ct).as_bytes().to_vec(),
                    text_values,
                ));
            }
            headers.extend(known.into_iter().map(|(n, v)| header(pick(&HEADER_NAMES, n), v, text_values)));
            headers.extend(other.into_iter().map(|(n, v)| header(&n, v, text_values)));
            if let Some((request_body_mode, response_body_mode)) = modes {
                out.protocol_config = Some(ProtocolConfiguration {
                    request_body_mode,
                    response_body_mode,
                    ..Default::default()
                });
            }
            if let Some(s) = subset {
                let kind = match s {
                    Subset::Text(t) => Kind::StringValue(t),
                    Subset::List(l) => Kind::ListValue(ListValue {
                        values: l.into_iter().map(|v| Value { kind: Some(Kind::StringValue(v)) }).collect(),
                    }),
                    Subset::Number(n) => Kind::NumberValue(n),
                };
                let fields =
                    [("x-gateway-destination-endpoint-subset".to_owned(), Value { kind: Some(kind) })];
                let s = Struct { fields: fields.into() };
                out.metadata_context = Some(Metadata {
                    filter_metadata: [("envoy.lb.subset_hint".to_owned(), s)].into(),
                    ..Metadata::default()
                });
            }
            Some(In::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap { headers }),
                end_of_stream,
                ..HttpHeaders::default()
            }))
        }
        Msg::RequestBody { chunk, end_of_stream } => Some(In::RequestBody(HttpBody {
            body: chunk.bytes(&REQUEST_BODIES),
            end_of_stream,
            ..HttpBody::default()
        })),
        Msg::RequestTrailers => Some(In::RequestTrailers(HttpTrailers::default())),
        Msg::ResponseHeaders { status, content_type, end_of_stream } => {
            let mut headers = Vec::new();
            if let Some(s) = status {
                headers.push(header(":status", s, false));
            }
            if let Some(ct) = content_type {
                headers.push(header("content-type", pick(&CONTENT_TYPES, ct).as_bytes().to_vec(), false));
            }
            Some(In::ResponseHeaders(HttpHeaders {
                headers: Some(HeaderMap { headers }),
                end_of_stream,
                ..HttpHeaders::default()
            }))
        }
        Msg::ResponseBody { chunk, end_of_stream } => Some(In::ResponseBody(HttpBody {
            body: chunk.bytes(&RESPONSE_BODIES),
            end_of_stream,
            ..HttpBody::default()
        })),
        Msg::ResponseTrailers => Some(In::ResponseTrailers(HttpTrailers::default())),
        Msg::Nothing => None,
    };
    out
}

fn check(r: &ProcessingResponse) {
    let body = match &r.response {
        Some(Out::RequestBody(b) | Out::ResponseBody(b)) => b,
        _ => return,
    };
    let mutation =
        body.response.as_ref().and_then(|c| c.body_mutation.as_ref()).and_then(|m| m.mutation.as_ref());
    if let Some(BodyMut::StreamedResponse(s)) = mutation {
        assert!(s.body.len() <= MAX_STREAMED_CHUNK, "a streamed mutation of {} bytes", s.body.len());
    }
}

fuzz_target!(|input: Input| {
    let config = pick(&CONFIGS, input.config);
    let Ok(mut picker) = EndpointPicker::from_json(config) else { panic!("config {config}") };
    let settings = StreamSettings::new(
        picker.config(),
        pick(&MODES, input.default_mode),
        input.forced_mode.map(|m| pick(&MODES, m)),
    );
    let mut machine = Machine::new(Arc::new(settings));
    let pool = wasm_epp_fuzz::pool();
    for msg in input.messages {
        let Ok(steps) = machine.on_message(message(msg)) else { break };
        for step in steps {
            match step {
                Step::Send(r) => check(&r),
                Step::Decide(d) => {
                    let subset = d.facts.subset_refs();
                    let info = d.facts.info(subset.as_deref());
                    let view = picker.view(input.snapshot.then_some(&pool), false, NOW_MS);
                    let outcome = picker.decide(&info, d.body.as_deref(), view, NOW_MS, 7);
                    for r in machine.on_outcome(outcome) {
                        check(&r);
                    }
                }
                _ => {}
            }
        }
    }
    let _ = machine.in_flight();
});
