//! The response side of the exchange: the served header, and what is done with the body (usage read,
//! the client's model name put back after a rewrite) within one size limit.

use crate::response::{finish_json, is_event_stream, usage_of, SseFilter, Usage};
use alloc::string::String;
use alloc::vec::Vec;

/// What the host reports when the response headers arrive.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseHead<'a> {
    /// `:status`, when readable.
    pub status: Option<u16>,
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// The upstream the proxy says served the request (`ip:port`), when it says.
    pub upstream: Option<&'a str>,
    pub end_of_stream: bool,
}

/// What to do with the response headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeadStep {
    /// The served header to set: (name, endpoint).
    pub served: Option<(String, String)>,
    /// `x-session-token` to set: (name, base64 of the endpoint's `ip:port`), when a profile uses the
    /// `session-affinity-scorer` (its next request carrying it scores that endpoint 1).
    pub session_token: Option<(String, String)>,
    /// Move the in-flight count: the request was served elsewhere. The proxy retries only an attempt
    /// that failed before the response (a refused connection, a reset): health counts that as a gateway
    /// failure of `moved.from`.
    pub moved: Option<super::Moved>,
    /// The endpoint that answered and the status (health records it; a 5xx also counts against it).
    /// Absent when the status could not be read.
    pub answered: Option<(String, u16)>,
    /// The body will change length (the model name is put back): a `content-length` sent before the
    /// body cannot stay; a host that holds the headers sets the new length instead.
    pub body_changes_length: bool,
    /// The body is held until its end (a host that can should hold the headers with it).
    pub holds_body: bool,
    /// The headers mark the request's first token: release these prompt tokens from awaiting it, on the
    /// endpoint the request is counted on ([`Exchange::counted_on`](super::Exchange::counted_on), after
    /// `moved`). A response that is not streamed comes whole, so its first token is counted as awaited
    /// until then: the backlog is over-counted by its decode time.
    pub first_token: Option<u64>,
}

/// What to do with one response body chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyOut {
    /// Forward the chunk as it came.
    Pass,
    /// Forward these bytes instead of the chunk (after trailers: send them before the trailers).
    Replace(Vec<u8>),
    /// Keep the chunk back (the exchange has a copy): the body is held until its end.
    Hold,
    /// Forward the whole held body now (every chunk held so far and this one). `changed` is false when it
    /// is exactly what arrived (too large, cut by trailers, or the model could not be put back).
    Release { body: Vec<u8>, changed: bool },
}

/// One response body step: the bytes, and the usage the body reported (once, at its end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseBodyStep {
    pub out: BodyOut,
    pub usage: Option<Usage>,
}

impl ResponseBodyStep {
    fn pass() -> ResponseBodyStep {
        ResponseBodyStep { out: BodyOut::Pass, usage: None }
    }
}

/// What the response path does with the upstream body.
#[derive(Debug, Default)]
pub(super) enum ResponseBody {
    /// Not ours to read (no route, headers-only response, past the limit, or finished).
    #[default]
    Ignored,
    /// JSON passed on chunk by chunk; a copy is kept to read `usage` at the end.
    Copied(Vec<u8>),
    /// JSON whose `model` must be put back (`client_model`): held until the end.
    Held { body: Vec<u8>, client_model: String },
    /// Server-sent events, filtered line by line. An incomplete last line is held back until its newline
    /// or the end of the body.
    Events(SseFilter),
}

impl ResponseBody {
    pub(super) fn plan(content_type: Option<&str>, client_model: Option<String>) -> ResponseBody {
        let events = content_type.is_some_and(is_event_stream);
        match (client_model, events) {
            (client_model, true) => ResponseBody::Events(SseFilter::new(client_model)),
            (Some(client_model), false) => ResponseBody::Held { body: Vec::new(), client_model },
            (None, false) => ResponseBody::Copied(Vec::new()),
        }
    }

    pub(super) fn holds(&self) -> bool {
        matches!(self, ResponseBody::Held { .. })
    }

    pub(super) fn reads(&self) -> bool {
        !matches!(self, ResponseBody::Ignored)
    }

    pub(super) fn push(&mut self, chunk: &[u8], end_of_stream: bool, limit: usize) -> ResponseBodyStep {
        let step = match self {
            ResponseBody::Ignored => ResponseBodyStep::pass(),
            ResponseBody::Copied(copy) => {
                if copy.len().saturating_add(chunk.len()) > limit {
                    *self = ResponseBody::Ignored;
                    return ResponseBodyStep::pass();
                }
                copy.extend_from_slice(chunk);
                ResponseBodyStep {
                    out: BodyOut::Pass,
                    usage: end_of_stream.then(|| usage_of(copy)).flatten(),
                }
            }
            ResponseBody::Held { body: held, client_model } => {
                held.extend_from_slice(chunk);
                if held.len() > limit {
                    let body = core::mem::take(held);
                    *self = ResponseBody::Ignored;
                    return ResponseBodyStep { out: BodyOut::Release { body, changed: false }, usage: None };
                }
                if !end_of_stream {
                    return ResponseBodyStep { out: BodyOut::Hold, usage: None };
                }
                let body = core::mem::take(held);
                let (replaced, usage) = finish_json(&body, Some(client_model.as_str()));
                let out = match replaced {
                    Some(new) => BodyOut::Release { body: new, changed: true },
                    None => BodyOut::Release { body, changed: false },
                };
                ResponseBodyStep { out, usage }
            }
            ResponseBody::Events(filter) => {
                let out = filter.push(chunk, end_of_stream);
                let usage = if end_of_stream { filter.usage() } else { None };
                let out = if filter.rewrites() { BodyOut::Replace(out) } else { BodyOut::Pass };
                ResponseBodyStep { out, usage }
            }
        };
        if end_of_stream {
            *self = ResponseBody::Ignored;
        }
        step
    }

    /// The body could not be read: stop, releasing a held body unchanged.
    pub(super) fn abandon(&mut self) -> ResponseBodyStep {
        match core::mem::take(self) {
            ResponseBody::Held { body, .. } => {
                ResponseBodyStep { out: BodyOut::Release { body, changed: false }, usage: None }
            }
            _ => ResponseBodyStep::pass(),
        }
    }

    /// Trailers ended the body: a held body goes as it came; an unfinished event line is flushed.
    pub(super) fn trailers(&mut self) -> ResponseBodyStep {
        match core::mem::take(self) {
            ResponseBody::Held { body, .. } => {
                ResponseBodyStep { out: BodyOut::Release { body, changed: false }, usage: None }
            }
            ResponseBody::Events(mut filter) => {
                let rest = filter.push(&[], true);
                let out = if rest.is_empty() { BodyOut::Pass } else { BodyOut::Replace(rest) };
                ResponseBodyStep { out, usage: filter.usage() }
            }
            ResponseBody::Copied(copy) => ResponseBodyStep { out: BodyOut::Pass, usage: usage_of(&copy) },
            ResponseBody::Ignored => ResponseBodyStep::pass(),
        }
    }
}
