//! HTTP callouts (`proxy_http_call`): recorded as the module made them, then answered, failed or timed out
//! by the test, and delivered back through `proxy_on_http_call_response`.

use std::time::Duration;

use super::abi::{header_value, Headers};
use super::VmId;

/// Identifies one callout within a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CalloutId(pub usize);

/// Where a callout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutState {
    /// Waiting for the test to answer (or for the virtual clock to pass its timeout).
    Pending,
    Answered,
    /// Failed by the test: the module saw a response with no headers and no body (Envoy's `onFailure`).
    Failed,
    /// The timeout passed: the module saw Envoy's `504 upstream request timeout`.
    TimedOut,
    /// The context that made it was destroyed first; Envoy cancels such calls.
    Cancelled,
}

/// A callout as the module made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub id: CalloutId,
    pub vm: VmId,
    /// The context that dispatched it (root context for ticks, stream context for requests).
    pub context_id: u32,
    /// The token the module got back.
    pub token: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// `None` when the module passed 0 (Envoy: no timeout).
    pub timeout: Option<Duration>,
    /// Virtual time (since host start) when it was dispatched.
    pub dispatched_at: Duration,
    pub state: CalloutState,
}

impl Callout {
    /// First value of a request header, e.g. `:path`.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub(crate) fn deadline(&self) -> Option<Duration> {
        self.timeout.map(|t| self.dispatched_at + t)
    }
}

/// The answer a test gives to a callout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CalloutResponse {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

impl CalloutResponse {
    /// A response with `:status` set.
    pub fn new(status: u16) -> CalloutResponse {
        CalloutResponse { headers: vec![(":status".to_string(), status.to_string())], ..Default::default() }
    }

    /// Adds a header (name lower-cased).
    pub fn header(mut self, name: &str, value: &str) -> CalloutResponse {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the body (and a matching `content-length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> CalloutResponse {
        self.body = body.into();
        self.headers.retain(|(k, _)| k != "content-length");
        self.headers.push(("content-length".to_string(), self.body.len().to_string()));
        self
    }

    /// What Envoy's router produces when the callout's timeout passes.
    pub(crate) fn envoy_timeout() -> CalloutResponse {
        CalloutResponse::new(504).header("content-type", "text/plain").body("upstream request timeout")
    }
}
