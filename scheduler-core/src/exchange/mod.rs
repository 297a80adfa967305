//! One request's whole conversation with the gateway, as a state machine with no I/O: events in (request
//! headers, body progress, the decision, response headers, response body chunks, trailers, the end of
//! the stream), steps out (headers to remove or set, a body to send instead, a local reply, whether to
//! hold the body, what to count).
//!
//! The Wasm filter's HTTP context and the ext_proc shim's stream both drive an [`Exchange`] and only
//! translate its steps into host calls or protocol messages, so the two products behave alike: the same
//! routing headers stripped, the same 413 at the same size, the same reply bodies, the same served
//! header, the same response-body handling (usage counted, the client's model name put back after a
//! rewrite) under the same size limit.
//!
//! The decision itself is not made here. When the request is complete, a step says
//! [`RequestStep::Decide`]; the caller runs the core's [`EndpointPicker::decide`] (in the filter on the
//! spot; in the shim on the picker thread) with [`Exchange::facts`] and the body, and feeds the
//! [`Outcome`] back to [`Exchange::on_outcome`].
//!
//! [`EndpointPicker::decide`]: crate::endpoint_picker::EndpointPicker::decide
//!
//! # Choices both products share
//! - Client-supplied routing headers (the configured names and the protocol defaults) are removed
//!   before anything else; a request without `x-request-id` gets one, set on the request it forwards.
//! - A body over `limits.maxBodyBytes` is answered 413 as soon as the buffered length passes it.
//! - A model rewrite that cannot be applied to the body is answered 400 by the decision (never a
//!   request forwarded with the wrong model), before anything is counted in flight.
//! - The response body is read only up to `limits.maxResponseBodyBytes`: a JSON answer is held (to put
//!   the client's model name back) or copied (for usage) up to that size, and passes through untouched
//!   past it; server-sent events are filtered line by line whatever their length.
//! - A routed request's prompt tokens await its first token (per endpoint, beside the in-flight count)
//!   until the response shows it: the first response body chunk of a streamed response (vLLM and
//!   SGLang send a stream's headers before they generate), the response headers otherwise (a response
//!   that is not streamed, or an error, comes whole) or the end of the stream, whichever comes first,
//!   exactly once; a retry to another endpoint moves them with the in-flight count.

pub mod headers;
mod response;

#[cfg(test)]
mod tests;

use crate::config::gateway::{GatewayConfig, ServedFrom};
use crate::config::EndpointPickerConfig;
use crate::endpoint_picker::{Admission, Outcome, Reply, RequestInfo};
use crate::flow_control::Ticket;
use crate::plugins::profile_handlers::disagg_profile_handler::configured_prefill_profile;
use crate::plugins::profile_handlers::header_profile_handler;
use crate::plugins::scorers::header_label_affinity_scorer;
use crate::plugins::scorers::session_affinity_scorer::{self, encode_session_token};
use alloc::borrow::Cow;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
pub use response::{BodyOut, ResponseBodyStep, ResponseHead, ResponseHeadStep};

/// Per-deployment settings every exchange reads (built once from the configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeSettings {
    /// Where the chosen endpoint(s) go.
    pub destination_header: String,
    /// Where the prefill endpoint goes (disaggregated serving).
    pub prefill_header: String,
    /// Response header naming the endpoint that served the request.
    pub served_header: String,
    /// Trust the proxy's report of the upstream, or the picker's choice.
    pub served_from: ServedFrom,
    /// Lower-case names of every routing header a client could smuggle in (sorted, deduplicated).
    pub strip: Vec<String>,
    /// `limits.maxBodyBytes`.
    pub max_body_bytes: usize,
    /// `limits.maxResponseBodyBytes`.
    pub max_response_body_bytes: usize,
    /// Which endpoint the response's `x-session-token` names, when a profile uses the
    /// `session-affinity-scorer`; `None` (no token, no work) otherwise.
    pub session_token: Option<SessionTokenOf>,
    /// Lower-case names of the request headers configured plugins read while scheduling (kept in
    /// [`RequestFacts::headers`]); empty for most configurations.
    pub scheduling_headers: Vec<String>,
}

/// The request headers the configured plugins read (`header-profile-handler`'s `headerName`,
/// `header-label-affinity-scorer`'s), lower-case, sorted, once each.
fn scheduling_headers(picker: &EndpointPickerConfig) -> Vec<String> {
    let mut names: Vec<String> = picker
        .plugins
        .iter()
        .filter_map(|p| match p.type_name.as_str() {
            header_profile_handler::TYPE => Some(header_profile_handler::header_name(&p.parameters)),
            header_label_affinity_scorer::TYPE => header_label_affinity_scorer::header_name(&p.parameters),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The endpoint a response's session token encodes (see [`ExchangeSettings::session_token`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionTokenOf {
    /// The endpoint that served the request (the served header's value).
    Served,
    /// The prefill endpoint, when the scorer's `profileName` is the P/D handler's prefill profile (the
    /// served endpoint when the request had no prefill step).
    Prefill,
}

impl SessionTokenOf {
    /// What the configuration asks for: the first `session-affinity-scorer` a profile uses (or any, when
    /// there are no profiles: the default profile takes every scorer).
    pub fn of(picker: &EndpointPickerConfig) -> Option<SessionTokenOf> {
        let used = |name: &str| {
            picker.scheduling_profiles.is_empty()
                || picker.scheduling_profiles.iter().any(|p| p.plugins.iter().any(|r| r.plugin_ref == name))
        };
        let scorer =
            picker.plugins.iter().find(|p| p.type_name == session_affinity_scorer::TYPE && used(&p.name))?;
        let profile = scorer.parameters.get("profileName").and_then(|v| v.as_str()).unwrap_or("");
        if profile.is_empty() {
            return Some(SessionTokenOf::Served);
        }
        // The handler's own parameters (and defaults); a configuration that built has valid ones.
        let prefill_profile = picker.plugins.iter().any(|p| {
            configured_prefill_profile(&p.type_name, &p.parameters).is_some_and(|pre| pre == profile)
        });
        Some(if prefill_profile { SessionTokenOf::Prefill } else { SessionTokenOf::Served })
    }
}

impl ExchangeSettings {
    pub fn new(config: &GatewayConfig) -> ExchangeSettings {
        let routing = &config.routing;
        let mut strip: Vec<String> =
            [&routing.destination_header, &routing.prefill_header, &routing.served_header]
                .into_iter()
                .cloned()
                .chain(headers::DEFAULT_ROUTING_HEADERS.iter().map(|s| String::from(*s)))
                .collect();
        strip.sort();
        strip.dedup();
        ExchangeSettings {
            destination_header: routing.destination_header.clone(),
            prefill_header: routing.prefill_header.clone(),
            served_header: routing.served_header.clone(),
            served_from: routing.served_from,
            strip,
            max_body_bytes: config.limits.max_body_bytes,
            max_response_body_bytes: config.limits.max_response_body_bytes,
            session_token: SessionTokenOf::of(&config.picker),
            scheduling_headers: scheduling_headers(&config.picker),
        }
    }
}

/// Read access to the request headers as the host holds them (names lower-case).
pub trait HeaderLookup {
    /// The value of `name`, if present and readable as text.
    fn get(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// What the decision needs from the request headers, owned (the headers are gone once the request
/// continues, and the shim sends these to its picker thread).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub path: String,
    /// Never empty once the headers were seen (the exchange supplies one when the client sent none).
    pub request_id: String,
    pub objective: Option<String>,
    /// The fairness id (flow control's flow), when the request names one.
    pub fairness_id: Option<String>,
    pub model_rewrite: Option<String>,
    pub session_token: Option<String>,
    /// The gateway's subset hint (`ip:port` or bare `ip` entries), when it sent one.
    pub subset: Option<Vec<String>>,
    /// The request declared its body length (a changed body must declare the new one).
    pub content_length: bool,
    /// `content-type`: how the body is read (JSON, `multipart/form-data`, anything else on load).
    pub content_type: Option<String>,
    /// `content-encoding`: a compressed body is answered 415.
    pub content_encoding: Option<String>,
    /// The headers of [`ExchangeSettings::scheduling_headers`] the request has (name, value).
    pub headers: Vec<(String, String)>,
}

impl RequestFacts {
    /// The borrowed form the decision takes. `subset` is the hint as string slices (see
    /// [`RequestFacts::subset_refs`]).
    pub fn info<'a>(&'a self, subset: Option<&'a [&'a str]>) -> RequestInfo<'a> {
        RequestInfo {
            path: &self.path,
            request_id: &self.request_id,
            objective: self.objective.as_deref(),
            fairness_id: self.fairness_id.as_deref(),
            model_rewrite: self.model_rewrite.as_deref(),
            session_token: self.session_token.as_deref(),
            subset,
            content_type: self.content_type.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            headers: &self.headers,
        }
    }

    /// The subset hint as slices, for [`RequestFacts::info`].
    pub fn subset_refs(&self) -> Option<Vec<&str>> {
        self.subset.as_ref().map(|s| s.iter().map(String::as_str).collect())
    }
}

/// What to do after the request headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeadStep {
    /// Client-supplied routing headers to remove, before anything else.
    pub remove: Vec<String>,
    /// Headers to set on the request (a generated `x-request-id`).
    pub set: Vec<(String, String)>,
    pub next: RequestStep,
}

/// What to do after a request event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestStep {
    /// Keep buffering the body.
    Wait,
    /// The request is complete: decide (with the buffered body, or without one when `with_body` is
    /// false) and call [`Exchange::on_outcome`].
    Decide { with_body: bool },
    /// Answer locally and count it as a decision answered with this status.
    Reply(Reply),
    /// Already decided: let the data pass.
    Pass,
}

/// The request, once decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decided {
    Forward(Forward),
    /// Answer locally (already counted by whoever decided).
    Reply(Reply),
}

/// How to forward the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forward {
    /// Headers to set (destination, prefill, a new content-length), replacing any value.
    pub set: Vec<(String, String)>,
    /// The request body to send instead of the buffered one (the model rewritten).
    pub body: Option<Vec<u8>>,
    /// The destination header's value, when the request was routed (for dynamic metadata).
    pub destination: Option<String>,
}

/// A routed request's in-flight count, to move or release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub address: String,
    pub tokens: u64,
    /// Prompt tokens still awaiting the first token (0 once released).
    pub awaiting: u64,
}

/// The gateway served the request on another endpoint than the one counted (a retry, a fallback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub from: String,
    pub to: String,
    pub tokens: u64,
    /// Prompt tokens awaiting the first token, moved with the count.
    pub awaiting: u64,
}

/// A routed request's first token came: its prompt tokens no longer await it on `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstToken<'a> {
    pub address: &'a str,
    pub prompt_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Before the request headers.
    #[default]
    Start,
    /// Buffering the body.
    Body,
    /// A decision was asked for and not yet applied.
    Deciding,
    /// Waiting in flow control's queue under this ticket.
    Waiting(Ticket),
    /// Forwarded upstream (routed or failing open).
    Forwarded,
    /// Answered locally.
    Replied,
}

/// What a routed request carries to the response path.
#[derive(Clone, Debug)]
struct Routed {
    /// Where the in-flight count sits now.
    accounted: String,
    tokens: u64,
    /// Prompt tokens awaiting the first token; 0 once released.
    awaiting: u64,
    /// The client asked for a streamed response: its first body chunk is the first token.
    streaming: bool,
    /// The model the client asked for, when the server was sent another one.
    client_model: Option<String>,
    /// The prefill endpoint (disaggregated serving), kept only for a prefill session token.
    prefill: Option<String>,
}

/// One request's lifecycle. Create one per stream; feed it every event in order.
#[derive(Debug, Default)]
pub struct Exchange {
    phase: Phase,
    facts: RequestFacts,
    /// Request body bytes buffered so far.
    body_len: usize,
    routed: Option<Routed>,
    /// Flow control tracks this request in flight (in-flight eviction): report its end.
    lease: Option<Ticket>,
    response: response::ResponseBody,
}

/// What flow control must hear when a stream ends ([`Exchange::flow_at_end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    /// The request was still waiting: cancel its ticket (`EndpointPicker::cancel`).
    Cancel(Ticket),
    /// The request was in flight under a lease: `EndpointPicker::finished`.
    Finished(Ticket),
}

impl Exchange {
    pub fn new() -> Exchange {
        Exchange::default()
    }

    /// The request's facts (valid after [`Exchange::on_request_headers`]).
    pub fn facts(&self) -> &RequestFacts {
        &self.facts
    }

    /// True once the request was forwarded or answered.
    pub fn decided(&self) -> bool {
        matches!(self.phase, Phase::Forwarded | Phase::Replied)
    }

    /// Request body bytes buffered so far.
    pub fn request_body_len(&self) -> usize {
        self.body_len
    }

    /// True when the response concerns the gateway: the request was routed (not answered locally, not
    /// left to the proxy's own balancing). Otherwise the response events may be skipped.
    pub fn follows_response(&self) -> bool {
        self.phase == Phase::Forwarded && self.routed.is_some()
    }

    /// True once the request was answered locally (the response is our own reply).
    pub fn replied(&self) -> bool {
        self.phase == Phase::Replied
    }

    /// The request headers arrived. `headers` is `None` when the host could not read them: every
    /// routing header is then removed blindly. `subset` is the gateway's subset hint, if any.
    /// `new_request_id` is called only when the request carries no id.
    pub fn on_request_headers(
        &mut self,
        s: &ExchangeSettings,
        headers: Option<&dyn HeaderLookup>,
        subset: Option<Vec<String>>,
        end_of_stream: bool,
        new_request_id: &mut dyn FnMut() -> String,
    ) -> RequestHeadStep {
        let remove: Vec<String> = match headers {
            Some(h) => s.strip.iter().filter(|name| h.get(name).is_some()).cloned().collect(),
            None => s.strip.clone(),
        };
        let text =
            |name: &str| headers.and_then(|h| h.get(name)).filter(|v| !v.is_empty()).map(|v| v.into_owned());
        let mut set = Vec::new();
        let request_id = match text(headers::REQUEST_ID) {
            Some(id) => id,
            None => {
                let id = new_request_id();
                set.push((String::from(headers::REQUEST_ID), id.clone()));
                id
            }
        };
        self.facts = RequestFacts {
            path: text(headers::PATH).unwrap_or_default(),
            request_id,
            objective: text(headers::OBJECTIVE_LLM_D).or_else(|| text(headers::OBJECTIVE)),
            fairness_id: headers::FAIRNESS_ID.iter().find_map(|n| text(n)),
            model_rewrite: text(headers::MODEL_REWRITE),
            session_token: text(headers::SESSION_TOKEN),
            subset,
            content_length: headers.is_some_and(|h| h.get(headers::CONTENT_LENGTH).is_some()),
            content_type: text(headers::CONTENT_TYPE),
            content_encoding: text(headers::CONTENT_ENCODING),
            headers: s.scheduling_headers.iter().filter_map(|n| Some((n.clone(), text(n)?))).collect(),
        };
        let next = if end_of_stream {
            self.phase = Phase::Deciding;
            RequestStep::Decide { with_body: false }
        } else {
            self.phase = Phase::Body;
            RequestStep::Wait
        };
        RequestHeadStep { remove, set, next }
    }

    /// The request body grew to `buffered_len` bytes in all.
    pub fn on_request_body(
        &mut self,
        s: &ExchangeSettings,
        buffered_len: usize,
        end_of_stream: bool,
    ) -> RequestStep {
        if self.phase != Phase::Body {
            return RequestStep::Pass;
        }
        self.body_len = buffered_len;
        if buffered_len > s.max_body_bytes {
            self.phase = Phase::Replied;
            return RequestStep::Reply(crate::endpoint_picker::body_too_large(s.max_body_bytes));
        }
        if !end_of_stream {
            return RequestStep::Wait;
        }
        self.phase = Phase::Deciding;
        RequestStep::Decide { with_body: buffered_len > 0 }
    }

    /// The request ended with trailers (its body never saw end of stream): decide now.
    pub fn on_request_trailers(&mut self) -> RequestStep {
        if self.phase != Phase::Body {
            return RequestStep::Pass;
        }
        self.phase = Phase::Deciding;
        RequestStep::Decide { with_body: self.body_len > 0 }
    }

    /// Applies the answer of `EndpointPicker::decide_or_queue`: a decision (as
    /// [`Exchange::on_outcome`], `None` returned), or a ticket to wait under (`None`: hold the request
    /// until `EndpointPicker::poll` settles the ticket, then call [`Exchange::on_outcome`]).
    pub fn on_admission(&mut self, s: &ExchangeSettings, admission: Admission) -> Option<Decided> {
        match admission {
            Admission::Decided { outcome, lease } => {
                let decided = self.on_outcome(s, outcome);
                self.on_lease(lease);
                Some(decided)
            }
            Admission::Queued(ticket) => {
                if self.phase == Phase::Deciding {
                    self.phase = Phase::Waiting(ticket);
                }
                None
            }
        }
    }

    /// The ticket this request waits under, while it waits.
    pub fn waiting(&self) -> Option<Ticket> {
        match self.phase {
            Phase::Waiting(t) => Some(t),
            _ => None,
        }
    }

    /// Flow control tracks this forwarded request in flight under `lease` (from a settled ticket or
    /// an admission).
    pub fn on_lease(&mut self, lease: Option<Ticket>) {
        if self.phase == Phase::Forwarded && self.routed.is_some() {
            self.lease = lease;
        }
    }

    /// At the end of the stream: the ticket to cancel (still waiting) or the lease to report finished,
    /// once.
    pub fn flow_at_end(&mut self) -> Option<FlowEnd> {
        if let Phase::Waiting(t) = self.phase {
            self.phase = Phase::Replied;
            return Some(FlowEnd::Cancel(t));
        }
        self.lease.take().map(FlowEnd::Finished)
    }

    /// Applies the decision asked for by [`RequestStep::Decide`] (or the settled ticket of a request
    /// that waited).
    pub fn on_outcome(&mut self, s: &ExchangeSettings, outcome: Outcome) -> Decided {
        if !matches!(self.phase, Phase::Deciding | Phase::Waiting(_)) {
            // A decision nobody asked for: never route on it.
            return Decided::Forward(Forward::default());
        }
        let route = match outcome {
            Outcome::Reply(reply) => {
                self.phase = Phase::Replied;
                return Decided::Reply(reply);
            }
            Outcome::Route(route) | Outcome::FailOpen { route: Some(route), .. } => route,
            Outcome::FailOpen { route: None, .. } => {
                self.phase = Phase::Forwarded;
                return Decided::Forward(Forward::default());
            }
        };
        self.phase = Phase::Forwarded;
        let mut set = Vec::with_capacity(3);
        set.push((s.destination_header.clone(), route.header_value.clone()));
        if let Some(prefill) = &route.prefill {
            set.push((s.prefill_header.clone(), prefill.clone()));
        }
        if let (Some(body), true) = (&route.body, self.facts.content_length) {
            set.push((String::from(headers::CONTENT_LENGTH), body.len().to_string()));
        }
        self.routed = Some(Routed {
            accounted: route.destination,
            tokens: route.estimated_tokens,
            awaiting: route.prompt_tokens,
            streaming: route.streaming,
            client_model: route.client_model,
            prefill: route.prefill.filter(|_| s.session_token == Some(SessionTokenOf::Prefill)),
        });
        Decided::Forward(Forward { set, body: route.body, destination: Some(route.header_value) })
    }

    /// Where this request's in-flight count sits and how many tokens it holds.
    pub fn in_flight(&self) -> Option<InFlight> {
        self.routed.as_ref().map(|r| InFlight {
            address: r.accounted.clone(),
            tokens: r.tokens,
            awaiting: r.awaiting,
        })
    }

    /// The endpoint this request's in-flight count sits on, if routed.
    pub fn counted_on(&self) -> Option<&str> {
        self.routed.as_ref().map(|r| r.accounted.as_str())
    }

    /// A response body chunk arrived (whatever is done with its bytes): the first one releases the
    /// prompt tokens awaiting the first token, if the headers did not. Call it before reading the chunk.
    pub fn on_response_data(&mut self) -> Option<FirstToken<'_>> {
        if self.phase != Phase::Forwarded {
            return None;
        }
        let r = self.routed.as_mut()?;
        match core::mem::take(&mut r.awaiting) {
            0 => None,
            prompt_tokens => Some(FirstToken { address: r.accounted.as_str(), prompt_tokens }),
        }
    }

    /// True when the response path wants the proxy's report of the upstream address (it was routed and
    /// `routing.servedFrom` is `proxy`): ask the host only then.
    pub fn wants_upstream_address(&self, s: &ExchangeSettings) -> bool {
        self.routed.is_some() && s.served_from == ServedFrom::Proxy && self.phase == Phase::Forwarded
    }

    /// The response headers arrived.
    pub fn on_response_headers(&mut self, s: &ExchangeSettings, head: &ResponseHead<'_>) -> ResponseHeadStep {
        let mut step = ResponseHeadStep::default();
        if self.phase != Phase::Forwarded {
            return step;
        }
        let client_model = match &mut self.routed {
            Some(r) => {
                let reported = match s.served_from {
                    ServedFrom::Proxy => head.upstream.filter(|a| !a.is_empty()),
                    ServedFrom::Destination => None,
                };
                let served = reported.map_or_else(|| r.accounted.clone(), String::from);
                if served != r.accounted {
                    step.moved = Some(Moved {
                        from: r.accounted.clone(),
                        to: served.clone(),
                        tokens: r.tokens,
                        awaiting: r.awaiting,
                    });
                    r.accounted = served.clone();
                }
                if let Some(status) = head.status {
                    step.answered = Some((served.clone(), status));
                }
                // Only a successful stream generates after its headers; anything else comes whole.
                let whole = !r.streaming
                    || head.end_of_stream
                    || head.status.is_some_and(|s| !(200..300).contains(&s));
                if whole && r.awaiting > 0 {
                    step.first_token = Some(core::mem::take(&mut r.awaiting));
                }
                step.session_token = s.session_token.map(|of| {
                    let endpoint = match (of, &r.prefill) {
                        (SessionTokenOf::Prefill, Some(prefill)) => prefill.as_str(),
                        _ => served.as_str(),
                    };
                    (String::from(headers::SESSION_TOKEN), encode_session_token(endpoint))
                });
                step.served = Some((s.served_header.clone(), served));
                r.client_model.clone()
            }
            // Failing open without a destination: the proxy chose; nothing to report or read.
            None => return step,
        };
        if head.end_of_stream {
            return step;
        }
        let changes = client_model.is_some();
        self.response = response::ResponseBody::plan(head.content_type, client_model);
        step.body_changes_length = changes;
        step.holds_body = self.response.holds();
        step
    }

    /// True while the response body is read (the caller may skip reading it otherwise).
    pub fn reads_response_body(&self) -> bool {
        self.response.reads()
    }

    /// One response body chunk (the bytes new since the last call) arrived.
    pub fn on_response_body(
        &mut self,
        s: &ExchangeSettings,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> ResponseBodyStep {
        self.response.push(chunk, end_of_stream, s.max_response_body_bytes)
    }

    /// The response body could not be read: stop reading it (a held body is released as it is).
    pub fn response_body_unreadable(&mut self) -> ResponseBodyStep {
        self.response.abandon()
    }

    /// The response ended with trailers: release what is held or pending.
    pub fn on_response_trailers(&mut self) -> ResponseBodyStep {
        self.response.trailers()
    }

    /// The stream ended (completed, reset or answered locally): the in-flight count to release, once,
    /// with the prompt tokens still awaiting a first token (a stream that ended without one).
    pub fn on_stream_end(&mut self) -> Option<InFlight> {
        self.response = response::ResponseBody::default();
        self.routed.take().map(|r| InFlight { address: r.accounted, tokens: r.tokens, awaiting: r.awaiting })
    }
}
