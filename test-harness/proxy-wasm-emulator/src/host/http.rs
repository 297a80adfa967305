//! The HTTP stream as Envoy's filter manager sees it, for one request through one Wasm filter: what the
//! filter may touch at each moment, what was forwarded upstream and downstream, and the local reply.

use std::collections::BTreeMap;

use super::abi::{header_value, Headers};
use super::VmId;

/// Identifies one HTTP stream within a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub usize);

/// Headers and body that crossed the filter (to the upstream, or back to the client).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub headers: Headers,
    pub body: Vec<u8>,
    /// True once the last byte went through.
    pub end_of_stream: bool,
}

impl Message {
    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The `:status` pseudo-header as a number.
    pub fn status(&self) -> Option<u16> {
        self.header(":status")?.parse().ok()
    }
}

/// Why a local reply was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalReplySource {
    /// `proxy_send_local_response` from the module.
    Filter,
    /// The body outgrew the buffer limit while the filter was buffering it (Envoy's 413 / 500).
    BufferLimit,
    /// The VM crashed and the plugin fails closed (Envoy's 503 `wasm_fail_stream`).
    VmFailure,
}

/// A response Envoy generated instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub body: Vec<u8>,
    /// The headers the module added (the full downstream headers are in [`HttpStream::response`]).
    pub headers: Headers,
    pub details: String,
    pub grpc_status: Option<i32>,
    pub source: LocalReplySource,
}

/// Where one direction (request or response) of a stream stands inside the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Headers not seen yet.
    #[default]
    Idle,
    /// The filter paused on headers. With `allow_on_headers_stop_iteration` the filter still sees the body
    /// (Envoy's `StopIteration`); without it Envoy holds the body back until the filter resumes
    /// (`StopAllIterationAndWatermark`).
    HeadersPaused { body_reaches_filter: bool },
    /// The filter paused on the body; Envoy buffers it (subject to the buffer limit) and hands the filter
    /// everything buffered so far on each new chunk.
    BodyBuffering,
    /// Flowing: what the filter saw has been forwarded.
    Continued,
    /// Nothing more will flow (local reply or reset).
    Closed,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Direction {
    pub headers: Headers,
    /// Envoy's header-map pointer: cleared once the filter continues.
    pub headers_available: bool,
    /// Envoy's body-buffer pointer: set in body callbacks, cleared on continue.
    pub body_available: bool,
    pub phase: Phase,
    /// The body the filter currently sees (one chunk, or everything buffered).
    pub buffer: Vec<u8>,
    /// Body Envoy holds back while the filter paused headers without stop-iteration support.
    pub held: Vec<u8>,
    pub held_end_of_stream: bool,
    pub end_of_stream: bool,
    pub headers_forwarded: bool,
}

/// One HTTP stream: its state inside the filter and what reached each side.
#[derive(Debug, Clone)]
pub struct HttpStream {
    pub id: StreamId,
    pub vm: VmId,
    /// The filter's context id, once Envoy created it (lazily, on the first callback).
    pub context_id: Option<u32>,
    pub(crate) generation: u32,
    pub(crate) req: Direction,
    pub(crate) resp: Direction,
    /// What the upstream received (None while the request is held by the filter).
    pub upstream_request: Option<Message>,
    /// What the client received.
    pub response: Option<Message>,
    pub local_reply: Option<LocalReply>,
    /// on_log/on_done/on_delete ran (or the stream ended without a live filter).
    pub completed: bool,
    /// Reset by the module (`proxy_close_stream`) or by the test.
    pub reset: bool,
    /// The filter is out of the picture (its VM crashed and the plugin fails open).
    pub bypassed: bool,
    /// Properties the module set, and ones the test set for this stream (dotted paths, encoded values).
    pub properties: BTreeMap<String, Vec<u8>>,
    /// `upstream.address`: set by the test, or taken from the routing header when the host emulates an
    /// ORIGINAL_DST cluster.
    pub upstream_address: Option<String>,
    pub(crate) in_log_phase: bool,
    pub(crate) sending_local_reply: bool,
}

impl HttpStream {
    pub(crate) fn new(id: StreamId, vm: VmId) -> HttpStream {
        HttpStream {
            id,
            vm,
            context_id: None,
            generation: 0,
            req: Direction::default(),
            resp: Direction::default(),
            upstream_request: None,
            response: None,
            local_reply: None,
            completed: false,
            reset: false,
            bypassed: false,
            properties: BTreeMap::new(),
            upstream_address: None,
            in_log_phase: false,
            sending_local_reply: false,
        }
    }

    /// A header as the upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_request.as_ref()?.header(name)
    }

    /// The status the client received (upstream's or a local reply's).
    pub fn response_status(&self) -> Option<u16> {
        self.response.as_ref()?.status()
    }

    /// Where the request stands inside the filter.
    pub fn request_phase(&self) -> Phase {
        self.req.phase
    }

    /// Where the response stands inside the filter.
    pub fn response_phase(&self) -> Phase {
        self.resp.phase
    }

    /// True while the filter holds the request back (paused and neither forwarded nor answered).
    pub fn request_paused(&self) -> bool {
        matches!(self.req.phase, Phase::HeadersPaused { .. } | Phase::BodyBuffering)
            && self.local_reply.is_none()
            && !self.reset
    }

    /// Request headers as Envoy's stream info knows them (the filter's working copy).
    pub(crate) fn request_headers_for_properties(&self) -> &Headers {
        &self.req.headers
    }

    pub(crate) fn dir(&self, d: Dir) -> &Direction {
        match d {
            Dir::Request => &self.req,
            Dir::Response => &self.resp,
        }
    }

    pub(crate) fn dir_mut(&mut self, d: Dir) -> &mut Direction {
        match d {
            Dir::Request => &mut self.req,
            Dir::Response => &mut self.resp,
        }
    }

    /// The message a direction forwards into (upstream request, or response to the client).
    pub(crate) fn sink_mut(&mut self, d: Dir) -> &mut Option<Message> {
        match d {
            Dir::Request => &mut self.upstream_request,
            Dir::Response => &mut self.response,
        }
    }
}

/// Request (decoder) or response (encoder) side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Request,
    Response,
}

impl Dir {
    pub(crate) fn headers_callback(self) -> &'static str {
        match self {
            Dir::Request => "proxy_on_request_headers",
            Dir::Response => "proxy_on_response_headers",
        }
    }

    pub(crate) fn body_callback(self) -> &'static str {
        match self {
            Dir::Request => "proxy_on_request_body",
            Dir::Response => "proxy_on_response_body",
        }
    }
}
