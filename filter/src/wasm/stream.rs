//! The HTTP context: the proxy's state machine around one request (strip, pause, buffer, decide, apply,
//! resume; then the response path and the end of the stream). Decisions are the worker's.

use super::abi;
use super::headers;
use super::host_impl::ProxyHost;
use crate::header_map::HeaderMap;
use crate::host::Host;
use crate::worker::{Routed, Worker};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use scheduler_core::config::gateway::ServedFrom;
use scheduler_core::endpoint_picker::{Outcome, Reply, RequestInfo, Route};
use scheduler_core::openai_error::OpenAiError;
use scheduler_core::request::rewrite_model;
use scheduler_core::response::{finish_json, is_event_stream, usage_of, SseFilter};
use std::cell::RefCell;
use std::rc::Rc;

/// Request headers the picker reads (GIE protocol).
const OBJECTIVE: &str = "x-gateway-inference-objective";
const MODEL_REWRITE: &str = "x-gateway-model-name-rewrite";
const SESSION_TOKEN: &str = "x-session-token";
const REQUEST_ID: &str = "x-request-id";

/// Largest response body copied (for usage) or held (to put the client's model name back). Copies live in
/// the VM's memory for every open stream, and held bodies count against Envoy's buffer limit; an OpenAI
/// JSON answer is a few KiB, so larger ones simply pass through unread.
const MAX_RESPONSE_COPY: usize = 256 * 1024;

/// What the response path does with the upstream body.
#[derive(Debug, Default)]
enum ResponseBody {
    /// Not ours to read (local reply, fail open without a route, or grown past the copy limit).
    #[default]
    Ignored,
    /// JSON passed on chunk by chunk; a copy is kept to read `usage` at the end.
    Copied(Vec<u8>),
    /// JSON whose `model` must be put back: Envoy buffers it until the end.
    Held,
    /// Server-sent events, filtered line by line. An incomplete last line is held back until its newline
    /// or the end of the body; a stream ending in trailers instead would lose it, which OpenAI-style
    /// streams (always ending `data: [DONE]\n\n`) never do.
    Events(SseFilter),
}

/// The header facts of one request, owned (header maps are gone once the request continues).
#[derive(Default)]
struct Facts {
    path: String,
    request_id: String,
    objective: Option<String>,
    model_rewrite: Option<String>,
    session_token: Option<String>,
    content_length: bool,
}

impl Facts {
    fn from_headers(h: &HeaderMap) -> Facts {
        let text = |name: &str| h.get_str(name).map(|v| v.into_owned());
        Facts {
            path: text(":path").unwrap_or_default(),
            request_id: text(REQUEST_ID).unwrap_or_default(),
            objective: text(OBJECTIVE),
            model_rewrite: text(MODEL_REWRITE),
            session_token: text(SESSION_TOKEN),
            content_length: h.contains("content-length"),
        }
    }

    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            path: &self.path,
            request_id: &self.request_id,
            objective: self.objective.as_deref(),
            model_rewrite: self.model_rewrite.as_deref(),
            session_token: self.session_token.as_deref(),
            subset: None,
        }
    }
}

pub struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    host: Rc<ProxyHost>,
    facts: Facts,
    /// The decision was made (at headers or at end of body): later callbacks only pass data on.
    decided: bool,
    /// We answered locally: the response path is our own reply.
    replied: bool,
    /// In flight until the stream ends; taken exactly once.
    routed: Option<Routed>,
    /// Body bytes buffered so far (for a request that ends with trailers).
    buffered: usize,
    /// The model the client asked for, when the body was rewritten to another one.
    client_model: Option<String>,
    response: ResponseBody,
}

fn set_request_header(name: &str, value: &str) -> bool {
    match abi::replace_header(MapType::HttpRequestHeaders, name, value.as_bytes()) {
        Ok(()) => true,
        Err(s) => {
            log::warn!("request header {name} not set: {s}");
            false
        }
    }
}

impl Stream {
    pub fn new(worker: Option<Rc<RefCell<Worker>>>, host: Rc<ProxyHost>) -> Stream {
        Stream {
            worker,
            host,
            facts: Facts::default(),
            decided: false,
            replied: false,
            routed: None,
            buffered: 0,
            client_model: None,
            response: ResponseBody::Ignored,
        }
    }

    /// Decides with `body` (None: the request has none) and applies the outcome.
    fn decide(&mut self, w: &mut Worker, body: Option<(&[u8], usize)>) -> Action {
        self.decided = true;
        let host: &dyn Host = &*self.host;
        let (outcome, routed) = w.decide(host, &self.facts.info(), body.map(|(b, _)| b));
        self.routed = routed;
        let id = &self.facts.request_id;
        match outcome {
            Outcome::Route(route) | Outcome::FailOpen { route: Some(route), .. } => {
                log::debug!("request {id:?} routed to {}", route.header_value);
                self.apply_route(w, &route, body)
            }
            Outcome::FailOpen { reason, route: None } => {
                log::debug!("request {id:?}: {}, destination left to the cluster", reason.as_str());
                Action::Continue
            }
            Outcome::Reply(reply) => {
                log::debug!("request {id:?} answered {} ({})", reply.status, reply.reason);
                self.reply(&reply)
            }
        }
    }

    /// Sets the routing headers (and rewrites the body's model) before continuing: host calls on the
    /// request are refused once it continued.
    fn apply_route(&mut self, w: &mut Worker, route: &Route, body: Option<(&[u8], usize)>) -> Action {
        let routing = w.routing();
        set_request_header(&routing.destination_header, &route.header_value);
        if let Some(prefill) = &route.prefill {
            set_request_header(&routing.prefill_header, prefill);
        }
        if let (Some(model), Some((bytes, size))) = (&route.rewritten_model, body) {
            match rewrite_model(bytes, model) {
                Ok(rewritten) => {
                    let new = rewritten.body;
                    if let Err(s) = abi::set_buffer(BufferType::HttpRequestBody, 0, size, &new) {
                        log::warn!("request body not rewritten: {s}");
                    } else {
                        self.client_model = Some(rewritten.previous_model);
                        if self.facts.content_length {
                            set_request_header("content-length", &new.len().to_string());
                        }
                    }
                }
                Err(e) => {
                    let reply = Reply {
                        status: 400,
                        body: OpenAiError::invalid_request(&e).body(),
                        reason: "bad_request",
                    };
                    w.stats().reply(&*self.host, 400);
                    return self.reply(&reply);
                }
            }
        }
        Action::Continue
    }

    fn reply(&mut self, reply: &Reply) -> Action {
        self.replied = true;
        let headers: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
        if let Err(s) = abi::send_local_response(u32::from(reply.status), &headers, reply.body.as_bytes()) {
            log::warn!("local reply {} not sent: {s}", reply.status);
        }
        Action::Pause
    }

    /// Decides on the body buffered so far (none at all: from the headers alone).
    fn decide_on_body(&mut self, w: &mut Worker) -> Action {
        if self.buffered == 0 {
            return self.decide(w, None);
        }
        let size = self.buffered;
        let body = match abi::get_buffer(BufferType::HttpRequestBody, 0, size) {
            Ok(b) => b,
            Err(s) => {
                log::warn!("request body not readable ({s}): picking from headers alone");
                return self.decide(w, None);
            }
        };
        self.decide(w, Some((&body, size)))
    }

    fn finish(&mut self) {
        let Some(routed) = self.routed.take() else { return };
        let Some(worker) = &self.worker else { return };
        match worker.try_borrow_mut() {
            Ok(mut w) => w.finish(&*self.host, &routed),
            Err(_) => log::warn!("in-flight count for {} not released (worker busy)", routed.destination),
        }
    }
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        // on_log normally ran first; this covers a host that skips it.
        self.finish();
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        // One read of the whole map (one copy into the VM rather than one per header).
        let request_headers = headers::read(MapType::HttpRequestHeaders)
            .map_err(|e| {
                log::warn!("request headers not readable, removing every routing header blindly: {e}")
            })
            .ok();
        // First, before anything can fail: a client-set routing header would route anywhere. Only the
        // ones present are removed (the usual case is none); an unreadable map removes them all.
        for name in w.headers_to_strip() {
            if request_headers.as_ref().is_none_or(|h| h.contains(name)) {
                if let Err(s) = abi::remove_header(MapType::HttpRequestHeaders, name) {
                    log::warn!("client header {name} not removed: {s}");
                }
            }
        }
        self.facts = Facts::from_headers(&request_headers.unwrap_or_default());
        if end_of_stream {
            return self.decide(&mut w, None);
        }
        // Wait for the body. With `allow_on_headers_stop_iteration` Envoy keeps feeding it to us.
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.decided {
            return Action::Continue;
        }
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        if let Some(reply) = w.body_too_large(&*self.host, body_size) {
            self.decided = true;
            return self.reply(&reply);
        }
        self.buffered = body_size;
        if !end_of_stream {
            return Action::Pause;
        }
        self.decide_on_body(&mut w)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // A body that ended with trailers never saw end_of_stream: decide now, or it would wait forever.
        if self.decided {
            return Action::Continue;
        }
        let Some(worker) = self.worker.clone() else { return Action::Continue };
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        self.decide_on_body(&mut w)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        let (Some(routed), Some(worker)) = (&self.routed, self.worker.clone()) else {
            return Action::Continue;
        };
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        // Where the request really went (after retries), when the proxy says; else where we sent it.
        let served = match w.routing().served_from {
            ServedFrom::Destination => routed.destination.clone(),
            ServedFrom::Proxy => match abi::get_property(&["upstream", "address"]) {
                Ok(Some(bytes)) if !bytes.is_empty() => {
                    String::from_utf8(bytes).unwrap_or_else(|_| routed.destination.clone())
                }
                _ => routed.destination.clone(),
            },
        };
        let served_header = w.routing().served_header.clone();
        if let Err(s) = abi::replace_header(MapType::HttpResponseHeaders, &served_header, served.as_bytes()) {
            log::warn!("response header {served_header} not set: {s}");
        }
        let headers = headers::read(MapType::HttpResponseHeaders).unwrap_or_else(|e| {
            log::debug!("response headers not readable: {e}");
            HeaderMap::default()
        });
        let status = headers.get_str(":status").and_then(|s| s.parse::<u16>().ok());
        if status.is_some_and(|s| s >= 500) {
            w.stats().upstream_5xx(&*self.host, &served);
        }
        if end_of_stream {
            return Action::Continue;
        }
        let events = headers.get_str("content-type").is_some_and(|c| is_event_stream(&c));
        self.response = match (&self.client_model, events) {
            (client_model, true) => ResponseBody::Events(SseFilter::new(client_model.clone())),
            (Some(_), false) => ResponseBody::Held,
            (None, false) => ResponseBody::Copied(Vec::new()),
        };
        if self.client_model.is_some() {
            // The body changes length; headers leave before it does, so no length rather than a wrong one.
            if let Err(s) = abi::remove_header(MapType::HttpResponseHeaders, "content-length") {
                log::warn!("response content-length not removed: {s}");
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if matches!(self.response, ResponseBody::Ignored) {
            return Action::Continue;
        }
        if matches!(self.response, ResponseBody::Held) && !end_of_stream {
            if body_size > MAX_RESPONSE_COPY {
                log::debug!("response over {MAX_RESPONSE_COPY} bytes: model name not put back");
                self.response = ResponseBody::Ignored;
                return Action::Continue;
            }
            return Action::Pause;
        }
        // The end of a body often comes as an empty last chunk: nothing to copy out of the proxy.
        let read = if body_size == 0 {
            Ok(Vec::new())
        } else {
            abi::get_buffer(BufferType::HttpResponseBody, 0, body_size)
        };
        let chunk = match read {
            Ok(b) => b,
            Err(s) => {
                log::debug!("response body not readable: {s}");
                self.response = ResponseBody::Ignored;
                return Action::Continue;
            }
        };
        let (replacement, usage) = match &mut self.response {
            ResponseBody::Ignored => (None, None),
            ResponseBody::Held => finish_json(&chunk, self.client_model.as_deref()),
            ResponseBody::Copied(copy) => {
                if copy.len().saturating_add(chunk.len()) > MAX_RESPONSE_COPY {
                    self.response = ResponseBody::Ignored;
                    return Action::Continue;
                }
                copy.extend_from_slice(&chunk);
                (None, end_of_stream.then(|| usage_of(copy)).flatten())
            }
            ResponseBody::Events(filter) => {
                let out = filter.push(&chunk, end_of_stream);
                let usage = if end_of_stream { filter.usage() } else { None };
                (self.client_model.is_some().then_some(out), usage)
            }
        };
        if let Some(new) = replacement {
            if let Err(s) = abi::set_buffer(BufferType::HttpResponseBody, 0, body_size, &new) {
                log::warn!("response body not rewritten: {s}");
            }
        }
        if let (Some(u), Some(worker)) = (usage, &self.worker) {
            if let Ok(mut w) = worker.try_borrow_mut() {
                w.stats().usage(&*self.host, u);
            }
        }
        if end_of_stream {
            self.response = ResponseBody::Ignored;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish();
    }
}
