//! One ext_proc stream as a state machine: messages in, protocol steps out, no I/O. The decision
//! itself is not made here: the machine asks for one ([`Step::Pick`]) and the caller feeds the core's
//! [`Outcome`] back with [`Machine::on_outcome`].
//!
//! Order rules it enforces (from the GIE picker protocol): in FULL_DUPLEX_STREAMED mode the request
//! headers response is held until the body ends, then headers response (clear_route_cache, destination,
//! corrected Content-Length), then the body as streamed mutations of at most 62,000 bytes, then trailers.

use super::body::chunks;
use super::proto::{dynamic_metadata, header, immediate, served_endpoint, subset_hint, Mutation};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation as BodyMut;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeadersResponse, HttpBody, HttpHeaders, HttpTrailers,
    ProcessingRequest, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use scheduler_core::endpoint_picker::{Outcome, Route};
use scheduler_core::openai_error::OpenAiError;
use scheduler_core::request::rewrite_model;
use scheduler_core::response::{finish_json, is_event_stream, usage_of, SseFilter, Usage};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How the gateway sends one direction's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    /// FULL_DUPLEX_STREAMED: chunks as they come; we answer with streamed mutations.
    FullDuplex,
    /// BUFFERED (and BUFFERED_PARTIAL / classic STREAMED, handled the same way): one body message,
    /// answered with one body response.
    Buffered,
    /// No body is sent.
    None,
}

impl BodyMode {
    fn from_proto(mode: i32) -> BodyMode {
        match BodySendMode::try_from(mode) {
            Ok(BodySendMode::FullDuplexStreamed) => BodyMode::FullDuplex,
            Ok(BodySendMode::None) => BodyMode::None,
            _ => BodyMode::Buffered,
        }
    }

    pub fn parse(s: &str) -> Option<BodyMode> {
        match s {
            "full-duplex" | "FULL_DUPLEX_STREAMED" => Some(BodyMode::FullDuplex),
            "buffered" | "BUFFERED" => Some(BodyMode::Buffered),
            _ => None,
        }
    }
}

/// Per-deployment settings every stream reads.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub destination_header: String,
    pub prefill_header: String,
    pub served_header: String,
    /// The core's `limits.maxBodyBytes`: buffering stops past it and the core answers 413.
    pub max_body_bytes: usize,
    /// Used when the gateway does not say (`protocol_config` absent, e.g. older Envoy or NGINX's bridge).
    pub default_mode: BodyMode,
    /// Ignore `protocol_config` and use this mode.
    pub forced_mode: Option<BodyMode>,
}

/// Response bodies are copied (for usage) or held (to put the model name back) up to this size; past
/// it they pass through untouched.
const MAX_RESPONSE_COPY: usize = 8 * 1024 * 1024;

/// What the core needs to decide, owned so it can travel to the picker thread.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PickInput {
    pub path: String,
    pub request_id: String,
    pub objective: Option<String>,
    pub model_rewrite: Option<String>,
    pub session_token: Option<String>,
    pub subset: Option<Vec<String>>,
    pub body: Option<Vec<u8>>,
}

/// One thing the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Send(ProcessingResponse),
    /// Ask the picker, then call [`Machine::on_outcome`] before handling the next message.
    Pick(PickInput),
    /// The gateway served the request elsewhere (a retry): move the in-flight count.
    Served {
        routed: String,
        served: String,
        tokens: u64,
    },
    Usage(Usage),
}

/// A message that breaks the protocol; the stream is ended with this as the gRPC status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ext_proc protocol: {}", self.0)
    }
}

/// Where the request was when the pick was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PickAt {
    /// Headers carried end-of-stream: no body.
    Headers,
    /// The body ended (or passed the size limit).
    Body,
    /// Trailers ended the body (full duplex).
    Trailers,
}

/// What the routed request carries forward to the response path.
#[derive(Clone, Debug)]
struct Routed {
    /// Where the in-flight count currently sits.
    accounted: String,
    tokens: u64,
    /// The model the client asked for, when the gateway sent another one upstream.
    client_model: Option<String>,
}

#[derive(Debug, Default)]
enum ResponseBody {
    /// Forward chunks as they come; keep a bounded copy to read usage at the end.
    #[default]
    PassThrough,
    /// Server-sent events, line by line.
    Sse(SseFilter),
    /// JSON held until its end (full duplex) so the model name can be put back and Content-Length fixed.
    Held(Mutation),
}

pub struct Machine {
    settings: std::sync::Arc<StreamSettings>,
    request_mode: Option<BodyMode>,
    response_mode: BodyMode,
    facts: Option<PickInput>,
    generated_request_id: bool,
    body: Vec<u8>,
    body_too_large: bool,
    pending: Option<PickAt>,
    /// The request was answered (routed or refused); later request messages are protocol errors.
    decided: bool,
    refused: bool,
    routed: Option<Routed>,
    response: ResponseBody,
    response_copy: Vec<u8>,
}

impl Machine {
    pub fn new(settings: std::sync::Arc<StreamSettings>) -> Machine {
        Machine {
            settings,
            request_mode: None,
            response_mode: BodyMode::FullDuplex,
            facts: None,
            generated_request_id: false,
            body: Vec::new(),
            body_too_large: false,
            pending: None,
            decided: false,
            refused: false,
            routed: None,
            response: ResponseBody::PassThrough,
            response_copy: Vec::new(),
        }
    }

    /// Where this stream's in-flight count sits and how many tokens it holds (to release at the end).
    pub fn in_flight(&self) -> Option<(&str, u64)> {
        self.routed.as_ref().map(|r| (r.accounted.as_str(), r.tokens))
    }

    /// Records the start of in-flight work for a routed outcome (the picker counted it on the route's
    /// primary).
    fn route_taken(&mut self, route: &Route, client_model: Option<String>) {
        self.routed = Some(Routed {
            accounted: route.destination.clone(),
            tokens: route.estimated_tokens,
            client_model,
        });
    }

    pub fn on_message(&mut self, msg: ProcessingRequest) -> Result<Vec<Step>, ProtocolError> {
        if self.pending.is_some() {
            return Err(ProtocolError("a message arrived while a pick was outstanding".into()));
        }
        if self.refused {
            // A local reply ends the exchange; Envoy may still flush what it had queued.
            return Ok(Vec::new());
        }
        if self.request_mode.is_none() {
            let (req, resp) = match (&msg.protocol_config, self.settings.forced_mode) {
                (_, Some(forced)) => (forced, forced),
                (Some(pc), None) => {
                    (BodyMode::from_proto(pc.request_body_mode), BodyMode::from_proto(pc.response_body_mode))
                }
                (None, None) => (self.settings.default_mode, self.settings.default_mode),
            };
            self.request_mode = Some(req);
            self.response_mode = resp;
        }
        let md = msg.metadata_context.as_ref();
        match msg.request {
            Some(In::RequestHeaders(h)) => self.request_headers(h, md),
            Some(In::RequestBody(b)) => self.request_body(b),
            Some(In::RequestTrailers(t)) => self.request_trailers(t),
            Some(In::ResponseHeaders(h)) => Ok(self.response_headers(h, md)),
            Some(In::ResponseBody(b)) => Ok(self.response_body(b)),
            Some(In::ResponseTrailers(_)) => Ok(self.response_trailers()),
            None => Ok(Vec::new()),
        }
    }

    fn request_headers(&mut self, h: HttpHeaders, md: Option<&Metadata>) -> Result<Vec<Step>, ProtocolError> {
        if self.facts.is_some() {
            return Err(ProtocolError("request headers arrived twice".into()));
        }
        let map = h.headers.as_ref();
        let owned = |name: &str| header(map, name).filter(|v| !v.is_empty()).map(String::from);
        let request_id = match owned("x-request-id") {
            Some(id) => id,
            None => {
                self.generated_request_id = true;
                new_request_id()
            }
        };
        self.facts = Some(PickInput {
            path: owned(":path").unwrap_or_default(),
            request_id,
            objective: owned("x-gateway-inference-objective"),
            model_rewrite: owned("x-gateway-model-name-rewrite"),
            session_token: owned("x-session-token"),
            subset: subset_hint(md),
            body: None,
        });
        if h.end_of_stream {
            return Ok(self.ask(PickAt::Headers));
        }
        if self.request_mode == Some(BodyMode::FullDuplex) {
            // Held: nothing may reach Envoy before the headers response, and that needs the body.
            return Ok(Vec::new());
        }
        Ok(vec![Step::Send(response(Out::RequestHeaders(HeadersResponse {
            response: Some(CommonResponse { clear_route_cache: true, ..CommonResponse::default() }),
        })))])
    }

    fn request_body(&mut self, b: HttpBody) -> Result<Vec<Step>, ProtocolError> {
        if self.facts.is_none() {
            return Err(ProtocolError("request body arrived before request headers".into()));
        }
        if self.decided {
            return Err(ProtocolError("request body arrived after the request ended".into()));
        }
        self.body.extend_from_slice(&b.body);
        if self.body.len() > self.settings.max_body_bytes {
            // Stop buffering: the core answers an over-limit body with 413.
            self.body_too_large = true;
            return Ok(self.ask(PickAt::Body));
        }
        // Buffered modes send one body message (without end-of-stream when trailers follow, or when
        // BUFFERED_PARTIAL cut it): that message is the body we decide on.
        if b.end_of_stream || self.request_mode != Some(BodyMode::FullDuplex) {
            return Ok(self.ask(PickAt::Body));
        }
        Ok(Vec::new())
    }

    fn request_trailers(&mut self, _t: HttpTrailers) -> Result<Vec<Step>, ProtocolError> {
        if self.facts.is_none() {
            return Err(ProtocolError("request trailers arrived before request headers".into()));
        }
        if !self.decided {
            return Ok(self.ask(PickAt::Trailers));
        }
        Ok(vec![Step::Send(response(Out::RequestTrailers(TrailersResponse::default())))])
    }

    fn ask(&mut self, at: PickAt) -> Vec<Step> {
        self.pending = Some(at);
        let mut input = self.facts.clone().unwrap_or_default();
        input.body = (at != PickAt::Headers).then(|| self.body.clone());
        vec![Step::Pick(input)]
    }

    /// Applies the core's decision to the outstanding pick.
    pub fn on_outcome(&mut self, outcome: Outcome) -> Vec<ProcessingResponse> {
        let Some(at) = self.pending.take() else { return Vec::new() };
        self.decided = true;
        let route = match outcome {
            Outcome::Reply(reply) => {
                self.refused = true;
                return vec![response(Out::ImmediateResponse(immediate(
                    reply.status,
                    &reply.body,
                    reply.reason,
                )))];
            }
            Outcome::Route(route) | Outcome::FailOpen { route: Some(route), .. } => Some(route),
            Outcome::FailOpen { route: None, .. } => None,
        };
        if self.body_too_large {
            // The core refuses every over-limit body; never forward a truncated one if that changed.
            self.refused = true;
            let body = OpenAiError::body_too_large(self.settings.max_body_bytes).body();
            return vec![response(Out::ImmediateResponse(immediate(413, &body, "body_too_large")))];
        }
        let s = std::sync::Arc::clone(&self.settings);
        let mut mutation = Mutation::default();
        let mut metadata = None;
        match &route {
            Some(r) => {
                mutation.set(&s.destination_header, &r.header_value);
                match &r.prefill {
                    Some(p) => mutation.set(&s.prefill_header, p),
                    None => mutation.remove(&s.prefill_header),
                };
                metadata = Some(dynamic_metadata("envoy.lb", &s.destination_header, &r.header_value));
            }
            // Failing open without a destination: drop any client-supplied one so the cluster decides.
            None => {
                mutation.remove(&s.destination_header).remove(&s.prefill_header);
            }
        }
        if self.generated_request_id {
            if let Some(f) = &self.facts {
                mutation.set("x-request-id", &f.request_id);
            }
        }
        let body = std::mem::take(&mut self.body);
        let (body, client_model) = match route.as_ref().and_then(|r| r.rewritten_model.as_deref()) {
            Some(target) if at != PickAt::Headers => match rewrite_model(&body, target) {
                Ok(r) => (r.body, Some(r.previous_model)),
                Err(_) => (body, None),
            },
            _ => (body, None),
        };
        if let Some(r) = &route {
            self.route_taken(r, client_model);
        }
        let mut out = Vec::new();
        match (at, self.request_mode) {
            (PickAt::Headers, _) => {
                let mut first = response(Out::RequestHeaders(headers_response(mutation)));
                first.dynamic_metadata = metadata;
                out.push(first);
            }
            (PickAt::Body | PickAt::Trailers, Some(BodyMode::FullDuplex)) => {
                mutation.set("content-length", &body.len().to_string());
                let mut first = response(Out::RequestHeaders(headers_response(mutation)));
                first.dynamic_metadata = metadata;
                out.push(first);
                let trailers_follow = at == PickAt::Trailers;
                out.extend(streamed_chunks(&body, !trailers_follow, true));
                if trailers_follow {
                    out.push(response(Out::RequestTrailers(TrailersResponse::default())));
                }
            }
            (PickAt::Body | PickAt::Trailers, _) => {
                mutation.set("content-length", &body.len().to_string());
                let common = CommonResponse {
                    header_mutation: mutation.into_option(),
                    body_mutation: client_model_changed(&self.routed)
                        .then_some(BodyMutation { mutation: Some(BodyMut::Body(body)) }),
                    clear_route_cache: true,
                    ..CommonResponse::default()
                };
                let mut first = response(Out::RequestBody(BodyResponse { response: Some(common) }));
                first.dynamic_metadata = metadata;
                out.push(first);
            }
        }
        out
    }

    fn response_headers(&mut self, h: HttpHeaders, md: Option<&Metadata>) -> Vec<Step> {
        let s = std::sync::Arc::clone(&self.settings);
        let mut steps = Vec::new();
        let mut mutation = Mutation::default();
        let mut client_model = None;
        if let Some(r) = &mut self.routed {
            let served = served_endpoint(md, &s.served_header).unwrap_or_else(|| r.accounted.clone());
            if served != r.accounted {
                steps.push(Step::Served {
                    routed: r.accounted.clone(),
                    served: served.clone(),
                    tokens: r.tokens,
                });
                r.accounted = served.clone();
            }
            mutation.set(&s.served_header, &served);
            client_model = r.client_model.clone();
        }
        let map = h.headers.as_ref();
        let sse = header(map, "content-type").is_some_and(is_event_stream);
        if sse {
            if client_model.is_some() {
                mutation.remove("content-length");
            }
            self.response = ResponseBody::Sse(SseFilter::new(client_model));
        } else if client_model.is_some() && !h.end_of_stream && self.response_mode == BodyMode::FullDuplex {
            self.response = ResponseBody::Held(mutation);
            return steps;
        }
        steps.push(Step::Send(response(Out::ResponseHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: mutation.into_option(),
                ..CommonResponse::default()
            }),
        }))));
        steps
    }

    fn response_body(&mut self, b: HttpBody) -> Vec<Step> {
        let client_model = self.routed.as_ref().and_then(|r| r.client_model.clone());
        if self.response_mode != BodyMode::FullDuplex {
            return self.buffered_response_body(b, client_model.as_deref());
        }
        let mut steps = Vec::new();
        match &mut self.response {
            ResponseBody::Sse(filter) => {
                let out = filter.push(&b.body, b.end_of_stream);
                if b.end_of_stream {
                    steps.extend(filter.usage().map(Step::Usage));
                }
                if !out.is_empty() || b.end_of_stream {
                    steps.push(Step::Send(streamed(out, b.end_of_stream, false)));
                }
            }
            ResponseBody::Held(_) => {
                self.response_copy.extend_from_slice(&b.body);
                if b.end_of_stream || self.response_copy.len() > MAX_RESPONSE_COPY {
                    steps.extend(self.flush_held(b.end_of_stream, client_model.as_deref()));
                }
            }
            ResponseBody::PassThrough => {
                if self.response_copy.len() < MAX_RESPONSE_COPY {
                    self.response_copy.extend_from_slice(&b.body);
                }
                if b.end_of_stream {
                    steps.extend(usage_of(&self.response_copy).map(Step::Usage));
                }
                steps.push(Step::Send(streamed(b.body, b.end_of_stream, false)));
            }
        }
        steps
    }

    /// Sends the held response headers and body (model put back when it all arrived).
    fn flush_held(&mut self, end_of_stream: bool, client_model: Option<&str>) -> Vec<Step> {
        let ResponseBody::Held(mut mutation) = std::mem::take(&mut self.response) else { return Vec::new() };
        let held = std::mem::take(&mut self.response_copy);
        let mut steps = Vec::new();
        let body = if end_of_stream {
            let (replaced, usage) = finish_json(&held, client_model);
            steps.extend(usage.map(Step::Usage));
            let body = replaced.unwrap_or(held);
            mutation.set("content-length", &body.len().to_string());
            body
        } else {
            // Too large or cut by trailers: give up on rewriting, forward as is from here on.
            held
        };
        steps.push(Step::Send(response(Out::ResponseHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: mutation.into_option(),
                ..CommonResponse::default()
            }),
        }))));
        steps.extend(streamed_chunks(&body, end_of_stream, false).into_iter().map(Step::Send));
        steps
    }

    fn buffered_response_body(&mut self, b: HttpBody, client_model: Option<&str>) -> Vec<Step> {
        let mut steps = Vec::new();
        let sse = matches!(self.response, ResponseBody::Sse(_));
        let (replaced, usage) = if sse {
            let mut f = SseFilter::new(client_model.map(String::from));
            let out = f.push(&b.body, true);
            let changed = out != b.body;
            (changed.then_some(out), f.usage())
        } else {
            finish_json(&b.body, client_model)
        };
        steps.extend(usage.map(Step::Usage));
        let mut common = CommonResponse::default();
        if let Some(new) = replaced {
            let mut m = Mutation::default();
            m.set("content-length", &new.len().to_string());
            common.header_mutation = m.into_option();
            common.body_mutation = Some(BodyMutation { mutation: Some(BodyMut::Body(new)) });
        }
        steps.push(Step::Send(response(Out::ResponseBody(BodyResponse { response: Some(common) }))));
        steps
    }

    fn response_trailers(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        if matches!(self.response, ResponseBody::Held(_)) {
            steps.extend(self.flush_held(false, None));
        } else if let ResponseBody::Sse(filter) = &mut self.response {
            let rest = filter.push(&[], true);
            steps.extend(filter.usage().map(Step::Usage));
            if !rest.is_empty() {
                steps.push(Step::Send(streamed(rest, false, false)));
            }
        }
        steps.push(Step::Send(response(Out::ResponseTrailers(TrailersResponse::default()))));
        steps
    }
}

fn client_model_changed(routed: &Option<Routed>) -> bool {
    routed.as_ref().is_some_and(|r| r.client_model.is_some())
}

fn response(r: Out) -> ProcessingResponse {
    ProcessingResponse { response: Some(r), ..ProcessingResponse::default() }
}

fn headers_response(mutation: Mutation) -> HeadersResponse {
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: mutation.into_option(),
            clear_route_cache: true,
            ..CommonResponse::default()
        }),
    }
}

/// One streamed body mutation for the request (`request == true`) or response direction.
fn streamed(body: Vec<u8>, end_of_stream: bool, request: bool) -> ProcessingResponse {
    let common = CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(BodyMut::StreamedResponse(StreamedBodyResponse {
                body,
                end_of_stream,
                ..StreamedBodyResponse::default()
            })),
        }),
        ..CommonResponse::default()
    };
    let r = BodyResponse { response: Some(common) };
    response(if request { Out::RequestBody(r) } else { Out::ResponseBody(r) })
}

/// The body as streamed mutations of at most 62,000 bytes; end-of-stream on the last when `eos`.
fn streamed_chunks(body: &[u8], eos: bool, request: bool) -> Vec<ProcessingResponse> {
    let pieces = chunks(body);
    let last = pieces.len().saturating_sub(1);
    pieces.into_iter().enumerate().map(|(i, c)| streamed(c.to_vec(), eos && i == last, request)).collect()
}

/// A process-unique request id for requests that arrive without one.
fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let a = xxhash_rust::xxh64::xxh64(&n.to_le_bytes(), nanos);
    let b = xxhash_rust::xxh64::xxh64(&nanos.to_le_bytes(), n);
    format!("{a:016x}{b:016x}")
}

#[cfg(test)]
mod tests;
