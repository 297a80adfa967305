//! One ext_proc stream as a state machine: messages in, protocol steps out, no I/O. Only the ext_proc
//! framing is here: what to strip, set, answer, hold and count is the core's request lifecycle
//! ([`Exchange`]), shared with the Wasm filter. The decision itself is not made here either: the machine
//! asks for one ([`Step::Decide`]) and the caller feeds the core's [`Outcome`] back with
//! [`Machine::on_outcome`].
//!
//! Order rules it enforces (from the GIE picker protocol): in FULL_DUPLEX_STREAMED mode the request
//! headers response is held until the body ends, then headers response (clear_route_cache, destination,
//! corrected Content-Length), then the body as streamed mutations of at most 62,000 bytes, then trailers.

use super::body::chunks;
use super::proto::{dynamic_metadata, header, immediate, served_endpoint, subset_hint, Mutation};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation as BodyMut;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeadersResponse, HttpBody, HttpHeaders, HttpTrailers,
    ProcessingRequest, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::endpoint_picker::Outcome;
use scheduler_core::exchange::headers::{CONTENT_LENGTH, CONTENT_TYPE, STATUS};
use scheduler_core::exchange::{
    BodyOut, Decided, Exchange, ExchangeSettings, HeaderLookup, InFlight, RequestFacts, RequestStep,
    ResponseHead,
};
use scheduler_core::response::Usage;
use std::borrow::Cow;
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
    /// What the request lifecycle reads (routing header names, body limits).
    pub exchange: ExchangeSettings,
    /// Used when the gateway does not say (`protocol_config` absent, e.g. older Envoy or NGINX's bridge).
    pub default_mode: BodyMode,
    /// Ignore `protocol_config` and use this mode.
    pub forced_mode: Option<BodyMode>,
}

impl StreamSettings {
    pub fn new(
        config: &GatewayConfig,
        default_mode: BodyMode,
        forced_mode: Option<BodyMode>,
    ) -> StreamSettings {
        StreamSettings { exchange: ExchangeSettings::new(config), default_mode, forced_mode }
    }
}

/// What the core needs to decide, owned so it can travel to the picker thread.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecisionInput {
    pub facts: RequestFacts,
    pub body: Option<Vec<u8>>,
}

/// One thing the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Send(ProcessingResponse),
    /// Ask the picker thread for a decision, then call [`Machine::on_outcome`] before handling the next message.
    Decide(DecisionInput),
    /// The gateway served the request elsewhere (a retry): move the in-flight count.
    Served {
        routed: String,
        served: String,
        tokens: u64,
        /// Prompt tokens awaiting the first token, moved with the count.
        awaiting: u64,
    },
    /// The request's first token came: its prompt tokens no longer await it on `endpoint`. With the
    /// response body in full duplex, at the first body chunk of a streamed response; in the other
    /// modes the gateway sends the body (if at all) only once complete, so the response headers stand
    /// for the first token of every response, streamed or not.
    FirstToken {
        endpoint: String,
        prompt_tokens: u64,
    },
    Usage(Usage),
    /// The request was answered before any decision (count it as a reply with this reason).
    EarlyReply(&'static str),
    /// This endpoint answered with this status (health records it; a 5xx also counts against it).
    Answered {
        endpoint: String,
        status: u16,
    },
}

/// A message that breaks the protocol; the stream is ended with this as the gRPC status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ext_proc protocol: {}", self.0)
    }
}

/// Where the request was when the decision was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecideAt {
    /// Headers carried end-of-stream: no body.
    Headers,
    /// The body ended.
    Body,
    /// Trailers ended the body (full duplex).
    Trailers,
}

/// The request headers as the core reads them.
struct ProtoHeaders<'m>(Option<&'m HeaderMap>);

impl HeaderLookup for ProtoHeaders<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        header(self.0, name).map(Cow::Borrowed)
    }
}

pub struct Machine {
    settings: std::sync::Arc<StreamSettings>,
    request_mode: Option<BodyMode>,
    response_mode: BodyMode,
    exchange: Exchange,
    headers_seen: bool,
    /// The request body buffered so far.
    body: Vec<u8>,
    /// Header changes owed to the first request headers response (client routing headers removed, a
    /// generated request id).
    head: Mutation,
    pending: Option<DecideAt>,
    /// A local reply ended the exchange.
    refused: bool,
    /// The response headers response, held with a held body (full duplex) until the body is released.
    response_head: Option<Mutation>,
}

impl Machine {
    pub fn new(settings: std::sync::Arc<StreamSettings>) -> Machine {
        Machine {
            settings,
            request_mode: None,
            response_mode: BodyMode::FullDuplex,
            exchange: Exchange::new(),
            headers_seen: false,
            body: Vec::new(),
            head: Mutation::default(),
            pending: None,
            refused: false,
            response_head: None,
        }
    }

    /// Where this stream's in-flight count sits and how many tokens it holds (to release at the end).
    pub fn in_flight(&self) -> Option<InFlight> {
        self.exchange.in_flight()
    }

    pub fn on_message(&mut self, msg: ProcessingRequest) -> Result<Vec<Step>, ProtocolError> {
        if self.pending.is_some() {
            return Err(ProtocolError("a message arrived while a decision was outstanding".into()));
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
        if self.headers_seen {
            return Err(ProtocolError("request headers arrived twice".into()));
        }
        self.headers_seen = true;
        let step = self.exchange.on_request_headers(
            &self.settings.exchange,
            Some(&ProtoHeaders(h.headers.as_ref())),
            subset_hint(md),
            h.end_of_stream,
            &mut new_request_id,
        );
        for name in &step.remove {
            self.head.remove(name);
        }
        for (name, value) in &step.set {
            self.head.set(name, value);
        }
        match step.next {
            RequestStep::Decide { .. } => Ok(self.ask(DecideAt::Headers, false)),
            // Held: nothing may reach Envoy before the headers response, and that needs the body.
            _ if self.request_mode == Some(BodyMode::FullDuplex) => Ok(Vec::new()),
            _ => {
                let mutation = std::mem::take(&mut self.head);
                Ok(vec![Step::Send(response(Out::RequestHeaders(headers_response(mutation))))])
            }
        }
    }

    fn request_body(&mut self, b: HttpBody) -> Result<Vec<Step>, ProtocolError> {
        if !self.headers_seen {
            return Err(ProtocolError("request body arrived before request headers".into()));
        }
        if self.exchange.decided() {
            return Err(ProtocolError("request body arrived after the request ended".into()));
        }
        self.body.extend_from_slice(&b.body);
        // Buffered modes send one body message (without end-of-stream when trailers follow, or when
        // BUFFERED_PARTIAL cut it): that message is the body we decide on.
        let complete = b.end_of_stream || self.request_mode != Some(BodyMode::FullDuplex);
        let step = self.exchange.on_request_body(&self.settings.exchange, self.body.len(), complete);
        Ok(self.request_step(step, DecideAt::Body))
    }

    fn request_trailers(&mut self, _t: HttpTrailers) -> Result<Vec<Step>, ProtocolError> {
        if !self.headers_seen {
            return Err(ProtocolError("request trailers arrived before request headers".into()));
        }
        if !self.exchange.decided() {
            let step = self.exchange.on_request_trailers();
            return Ok(self.request_step(step, DecideAt::Trailers));
        }
        Ok(vec![Step::Send(response(Out::RequestTrailers(TrailersResponse::default())))])
    }

    fn request_step(&mut self, step: RequestStep, at: DecideAt) -> Vec<Step> {
        match step {
            RequestStep::Wait | RequestStep::Pass => Vec::new(),
            RequestStep::Decide { with_body } => self.ask(at, with_body),
            RequestStep::Reply(reply) => {
                self.refused = true;
                vec![
                    Step::EarlyReply(reply.reason),
                    Step::Send(response(Out::ImmediateResponse(immediate(
                        reply.status,
                        &reply.body,
                        reply.reason,
                    )))),
                ]
            }
        }
    }

    fn ask(&mut self, at: DecideAt, with_body: bool) -> Vec<Step> {
        self.pending = Some(at);
        let facts = self.exchange.facts().clone();
        vec![Step::Decide(DecisionInput { facts, body: with_body.then(|| self.body.clone()) })]
    }

    /// Applies the core's decision to the outstanding request for one.
    /// Flow control's in-flight eviction ended this request: the local reply that makes the gateway
    /// drop the upstream request and answer the client (llm-d sends the same ImmediateResponse).
    pub fn evicted(&mut self, reply: &scheduler_core::endpoint_picker::Reply) -> ProcessingResponse {
        self.refused = true;
        response(Out::ImmediateResponse(immediate(reply.status, &reply.body, reply.reason)))
    }

    pub fn on_outcome(&mut self, outcome: Outcome) -> Vec<ProcessingResponse> {
        let Some(at) = self.pending.take() else { return Vec::new() };
        let s = std::sync::Arc::clone(&self.settings);
        let forward = match self.exchange.on_outcome(&s.exchange, outcome) {
            Decided::Reply(reply) => {
                self.refused = true;
                return vec![response(Out::ImmediateResponse(immediate(
                    reply.status,
                    &reply.body,
                    reply.reason,
                )))];
            }
            Decided::Forward(f) => f,
        };
        let mut mutation = std::mem::take(&mut self.head);
        for (name, value) in &forward.set {
            mutation.set(name, value);
        }
        let metadata = forward
            .destination
            .as_deref()
            .map(|d| dynamic_metadata("envoy.lb", &s.exchange.destination_header, d));
        let changed = forward.body.is_some();
        let body = forward.body.unwrap_or_else(|| std::mem::take(&mut self.body));
        let mut out = Vec::new();
        match (at, self.request_mode) {
            (DecideAt::Headers, _) => {
                let mut first = response(Out::RequestHeaders(headers_response(mutation)));
                first.dynamic_metadata = metadata;
                out.push(first);
            }
            (DecideAt::Body | DecideAt::Trailers, Some(BodyMode::FullDuplex)) => {
                // The body is sent again as streamed mutations: its length must be declared as sent.
                mutation.set(CONTENT_LENGTH, &body.len().to_string());
                let mut first = response(Out::RequestHeaders(headers_response(mutation)));
                first.dynamic_metadata = metadata;
                out.push(first);
                let trailers_follow = at == DecideAt::Trailers;
                out.extend(streamed_chunks(&body, !trailers_follow, true));
                if trailers_follow {
                    out.push(response(Out::RequestTrailers(TrailersResponse::default())));
                }
            }
            (DecideAt::Body | DecideAt::Trailers, _) => {
                let common = CommonResponse {
                    header_mutation: mutation.into_option(),
                    body_mutation: changed.then_some(BodyMutation { mutation: Some(BodyMut::Body(body)) }),
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
        let map = h.headers.as_ref();
        let upstream = served_endpoint(md, &s.exchange.served_header);
        let head = ResponseHead {
            status: header(map, STATUS).and_then(|v| v.parse().ok()),
            content_type: header(map, CONTENT_TYPE),
            upstream: upstream.as_deref(),
            end_of_stream: h.end_of_stream,
        };
        let step = self.exchange.on_response_headers(&s.exchange, &head);
        let mut steps = Vec::new();
        if let Some(m) = step.moved {
            // The gateway retried elsewhere: the first attempt failed before any response.
            steps.push(Step::Answered { endpoint: m.from.clone(), status: 503 });
            steps.push(Step::Served { routed: m.from, served: m.to, tokens: m.tokens, awaiting: m.awaiting });
        }
        steps.extend(step.answered.map(|(endpoint, status)| Step::Answered { endpoint, status }));
        let first_token = match self.response_mode {
            BodyMode::FullDuplex => step.first_token,
            // No body chunk will come as it is generated: the headers are the first sign of an answer.
            BodyMode::Buffered | BodyMode::None => {
                step.first_token.or_else(|| self.exchange.on_response_data().map(|f| f.prompt_tokens))
            }
        };
        steps.extend(self.first_token(first_token));
        let mut mutation = Mutation::default();
        for (name, value) in step.served.iter().chain(&step.session_token) {
            mutation.set(name, value);
        }
        if step.holds_body && self.response_mode == BodyMode::FullDuplex {
            // Sent with the body, once its length is known.
            self.response_head = Some(mutation);
            return steps;
        }
        if step.body_changes_length && !step.holds_body {
            mutation.remove(CONTENT_LENGTH);
        }
        steps.push(Step::Send(response(Out::ResponseHeaders(HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: mutation.into_option(),
                ..CommonResponse::default()
            }),
        }))));
        steps
    }

    /// The step releasing `prompt_tokens` from awaiting the first token where the request is counted.
    fn first_token(&self, prompt_tokens: Option<u64>) -> Option<Step> {
        let endpoint = self.exchange.counted_on()?.to_string();
        Some(Step::FirstToken { endpoint, prompt_tokens: prompt_tokens? })
    }

    fn response_body(&mut self, b: HttpBody) -> Vec<Step> {
        let s = std::sync::Arc::clone(&self.settings);
        let first = self.exchange.on_response_data().map(|f| f.prompt_tokens);
        let first = self.first_token(first);
        if self.response_mode != BodyMode::FullDuplex {
            // One body message is the whole body (trailers, if any, come after it).
            let step = self.exchange.on_response_body(&s.exchange, &b.body, true);
            let mut steps: Vec<Step> = first.into_iter().chain(step.usage.map(Step::Usage)).collect();
            let replaced = match step.out {
                BodyOut::Replace(bytes) if bytes != b.body => Some(bytes),
                BodyOut::Release { body, changed: true } => Some(body),
                _ => None,
            };
            let mut common = CommonResponse::default();
            if let Some(new) = replaced {
                let mut m = Mutation::default();
                m.set(CONTENT_LENGTH, &new.len().to_string());
                common.header_mutation = m.into_option();
                common.body_mutation = Some(BodyMutation { mutation: Some(BodyMut::Body(new)) });
            }
            steps.push(Step::Send(response(Out::ResponseBody(BodyResponse { response: Some(common) }))));
            return steps;
        }
        let step = self.exchange.on_response_body(&s.exchange, &b.body, b.end_of_stream);
        let mut steps: Vec<Step> = first.into_iter().chain(step.usage.map(Step::Usage)).collect();
        match step.out {
            BodyOut::Pass => steps.push(Step::Send(streamed(b.body, b.end_of_stream, false))),
            BodyOut::Replace(bytes) => {
                if !bytes.is_empty() || b.end_of_stream {
                    steps.push(Step::Send(streamed(bytes, b.end_of_stream, false)));
                }
            }
            BodyOut::Hold => {}
            BodyOut::Release { body, changed } => steps.extend(self.release(body, changed, b.end_of_stream)),
        }
        steps
    }

    /// Sends the held response headers, then the held body.
    fn release(&mut self, body: Vec<u8>, changed: bool, end_of_stream: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        if let Some(mut mutation) = self.response_head.take() {
            if changed {
                mutation.set(CONTENT_LENGTH, &body.len().to_string());
            }
            steps.push(Step::Send(response(Out::ResponseHeaders(HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: mutation.into_option(),
                    ..CommonResponse::default()
                }),
            }))));
        }
        steps.extend(streamed_chunks(&body, end_of_stream, false).into_iter().map(Step::Send));
        steps
    }

    fn response_trailers(&mut self) -> Vec<Step> {
        let step = self.exchange.on_response_trailers();
        let mut steps: Vec<Step> = step.usage.map(Step::Usage).into_iter().collect();
        match step.out {
            BodyOut::Release { body, changed } => steps.extend(self.release(body, changed, false)),
            BodyOut::Replace(rest) if self.response_mode == BodyMode::FullDuplex && !rest.is_empty() => {
                steps.push(Step::Send(streamed(rest, false, false)));
            }
            _ => {}
        }
        steps.push(Step::Send(response(Out::ResponseTrailers(TrailersResponse::default()))));
        steps
    }
}

pub(crate) fn response(r: Out) -> ProcessingResponse {
    ProcessingResponse { response: Some(r), ..ProcessingResponse::default() }
}

pub(crate) fn headers_response(mutation: Mutation) -> HeadersResponse {
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: mutation.into_option(),
            clear_route_cache: true,
            ..CommonResponse::default()
        }),
    }
}

/// One streamed body mutation for the request (`request == true`) or response direction.
pub(crate) fn streamed(body: Vec<u8>, end_of_stream: bool, request: bool) -> ProcessingResponse {
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
pub(crate) fn streamed_chunks(body: &[u8], eos: bool, request: bool) -> Vec<ProcessingResponse> {
    let pieces = chunks(body);
    let last = pieces.len().saturating_sub(1);
    pieces.into_iter().enumerate().map(|(i, c)| streamed(c.to_vec(), eos && i == last, request)).collect()
}

/// A process-unique request id for requests that arrive without one.
pub(crate) fn new_request_id() -> String {
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
