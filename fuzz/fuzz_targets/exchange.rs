//! The request lifecycle both products share (`scheduler-core/src/exchange/`): arbitrary sequences of
//! events (headers, body chunks, trailers, response parts, the stream's end, in any order) with arbitrary
//! bodies, decided by the real picker on a fresh pool. Checked: no panic; the in-flight count a routed
//! request takes is released exactly once; a response body nobody rewrites leaves as it came.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scheduler_core::endpoint_picker::EndpointPicker;
use scheduler_core::exchange::{
    BodyOut, Decided, Exchange, ExchangeSettings, HeaderLookup, RequestStep, ResponseBodyStep, ResponseHead,
};
use std::borrow::Cow;
use wasm_epp_fuzz::{
    pick, Chunk, CONFIGS, CONTENT_TYPES, HEADER_NAMES, NOW_MS, PATHS, REQUEST_BODIES, RESPONSE_BODIES,
    UPSTREAMS,
};

/// The request headers: always the first event, once (as every host delivers them).
#[derive(Arbitrary, Debug)]
struct RequestHeaders {
    path: u8,
    content_type: Option<u8>,
    known: Vec<(u8, String)>,
    other: Vec<(String, String)>,
    readable: bool,
    subset: Option<Vec<String>>,
    end_of_stream: bool,
}

/// What may follow, in any order (the exchange must cope with hosts that skip or repeat phases).
#[derive(Arbitrary, Debug)]
enum Event {
    RequestBody {
        chunk: Chunk,
        end_of_stream: bool,
    },
    RequestTrailers,
    ResponseHeaders {
        status: Option<u16>,
        content_type: Option<u8>,
        upstream: Option<u8>,
        end_of_stream: bool,
    },
    ResponseBody {
        chunk: Chunk,
        end_of_stream: bool,
    },
    ResponseUnreadable,
    ResponseTrailers,
    StreamEnd,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: u8,
    snapshot: bool,
    headers: RequestHeaders,
    events: Vec<Event>,
}

struct Headers(Vec<(String, String)>);

impl HeaderLookup for Headers {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| Cow::Borrowed(v.as_str()))
    }
}

/// The response body as it left, next to what arrived.
#[derive(Default)]
struct Response {
    arrived: Vec<u8>,
    left: Vec<u8>,
    held: Vec<u8>,
}

impl Response {
    fn apply(&mut self, chunk: &[u8], step: &ResponseBodyStep) {
        self.arrived.extend_from_slice(chunk);
        match &step.out {
            BodyOut::Pass => self.left.extend_from_slice(chunk),
            BodyOut::Replace(b) => self.left.extend_from_slice(b),
            BodyOut::Hold => self.held.extend_from_slice(chunk),
            BodyOut::Release { body, changed } => {
                if !changed {
                    let mut all = std::mem::take(&mut self.held);
                    all.extend_from_slice(chunk);
                    assert_eq!(&all, body, "an unchanged release is not what was held");
                }
                self.held.clear();
                self.left.extend_from_slice(body);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let config_text = pick(&CONFIGS, input.config);
    let Ok(mut picker) = EndpointPicker::from_json(config_text) else { panic!("config {config_text}") };
    let settings = ExchangeSettings::new(picker.config());
    let rewrites = config_text.contains("modelRewrites");
    let pool = wasm_epp_fuzz::pool();
    let mut x = Exchange::new();
    let mut body: Vec<u8> = Vec::new();
    let mut response = Response::default();
    let mut response_is_events = false;
    let mut response_headers_seen = false;
    let mut released = 0u32;
    let mut ids = 0u32;

    let RequestHeaders { path, content_type, known, other, readable, subset, end_of_stream } = input.headers;
    let mut h: Vec<(String, String)> = vec![(":path".into(), pick(&PATHS, path).into())];
    if let Some(ct) = content_type {
        h.push(("content-type".into(), pick(&CONTENT_TYPES, ct).into()));
    }
    h.extend(known.into_iter().map(|(n, v)| (pick(&HEADER_NAMES, n).to_owned(), v)));
    h.extend(other);
    let headers = Headers(h);
    let lookup: Option<&dyn HeaderLookup> = if readable { Some(&headers) } else { None };
    let step = x.on_request_headers(&settings, lookup, subset, end_of_stream, &mut || {
        ids += 1;
        format!("generated-{ids}")
    });
    if !readable {
        assert_eq!(step.remove, settings.strip, "unreadable headers: every routing header goes");
    }
    assert!(!x.facts().request_id.is_empty());
    let mut decider =
        Decider { picker: &mut picker, settings: &settings, pool: &pool, fresh: input.snapshot, taken: 0 };
    decider.decide_if_asked(&mut x, &body, step.next);

    for event in input.events {
        match event {
            Event::RequestBody { chunk, end_of_stream } => {
                body.extend_from_slice(&chunk.bytes(&REQUEST_BODIES));
                let step = x.on_request_body(&settings, body.len(), end_of_stream);
                if let RequestStep::Reply(r) = &step {
                    assert_eq!(r.status, 413);
                    assert!(body.len() > settings.max_body_bytes);
                }
                decider.decide_if_asked(&mut x, &body, step);
            }
            Event::RequestTrailers => {
                let step = x.on_request_trailers();
                decider.decide_if_asked(&mut x, &body, step);
            }
            // Hosts send response headers once (Envoy keeps 1xx headers from the filters); a second
            // set would have the exchange plan a second body, which no host asks of it.
            Event::ResponseHeaders { .. } if response_headers_seen => {}
            Event::ResponseHeaders { status, content_type, upstream, end_of_stream } => {
                response_headers_seen = true;
                let content_type = content_type.map(|c| pick(&CONTENT_TYPES, c));
                response_is_events = content_type == Some("text/event-stream");
                let head = ResponseHead {
                    status,
                    content_type,
                    upstream: upstream.map(|u| pick(&UPSTREAMS, u)),
                    end_of_stream,
                };
                let step = x.on_response_headers(&settings, &head);
                if let Some(m) = &step.moved {
                    assert_ne!(m.from, m.to);
                }
            }
            Event::ResponseBody { chunk, end_of_stream } => {
                let bytes = chunk.bytes(&RESPONSE_BODIES);
                let step = x.on_response_body(&settings, &bytes, end_of_stream);
                response.apply(&bytes, &step);
                if end_of_stream && !rewrites && !response_is_events {
                    assert_eq!(response.left, response.arrived, "a body nobody rewrites changed");
                }
            }
            Event::ResponseUnreadable => {
                let step = x.response_body_unreadable();
                response.apply(&[], &step);
            }
            Event::ResponseTrailers => {
                let step = x.on_response_trailers();
                response.apply(&[], &step);
            }
            Event::StreamEnd => break,
        }
    }
    // Every stream ends (completed, reset or answered locally).
    if x.on_stream_end().is_some() {
        released += 1;
    }
    assert!(x.in_flight().is_none());
    assert_eq!(x.on_stream_end(), None, "an in-flight count released twice");
    let taken = decider.taken;
    assert_eq!(taken, released, "in-flight taken {taken} times, released {released}");
});

/// Decides a request whenever the exchange asks, counting the in-flight counts it takes.
struct Decider<'a> {
    picker: &'a mut EndpointPicker,
    settings: &'a ExchangeSettings,
    pool: &'a scheduler_core::model::PoolSnapshot,
    /// Whether the picker sees the pool's metrics as fresh.
    fresh: bool,
    taken: u32,
}

impl Decider<'_> {
    fn decide_if_asked(&mut self, x: &mut Exchange, body: &[u8], step: RequestStep) {
        let RequestStep::Decide { with_body } = step else { return };
        let had = x.in_flight().is_some();
        let facts = x.facts().clone();
        let subset = facts.subset_refs();
        let info = facts.info(subset.as_deref());
        let view = self.picker.view(self.fresh.then_some(self.pool), false, NOW_MS);
        let outcome = self.picker.decide(&info, with_body.then_some(body), view, NOW_MS, 7);
        match x.on_outcome(self.settings, outcome) {
            Decided::Forward(f) => {
                if f.destination.is_some() {
                    assert!(f.set.iter().any(|(k, _)| *k == self.settings.destination_header));
                }
            }
            Decided::Reply(r) => assert!(r.status >= 400, "a local reply with status {}", r.status),
        }
        if !had && x.in_flight().is_some() {
            self.taken += 1;
        }
    }
}
