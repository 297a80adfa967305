//! `GET /snapshot`: the published pool snapshot in the core's binary encoding, for the Wasm filters'
//! discovery URL (`pool.discoveryUrl`), so many proxies poll one collector instead of every pod.
//! The generation travels in a header so a poller can tell "nothing new" without decoding.

use crate::pool::Pool;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

pub const GENERATION_HEADER: &str = "x-epp-snapshot-generation";
pub const CONTENT_TYPE: &str = "application/vnd.wasm-epp.snapshot";

/// The response for one poll. `if_generation` is the generation the poller already has: the same one
/// answers 304 with no body.
pub fn respond(pool: &Pool, if_generation: Option<u64>) -> Response<Full<Bytes>> {
    let Some(published) = pool.latest() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot published yet: endpoints not discovered\n",
        );
    };
    let generation = published.snapshot.generation;
    let builder = Response::builder().header(GENERATION_HEADER, generation.to_string());
    let resp = if if_generation == Some(generation) {
        builder.status(StatusCode::NOT_MODIFIED).body(Full::new(Bytes::new()))
    } else {
        builder.header("content-type", CONTENT_TYPE).body(Full::new(published.encoded))
    };
    resp.unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot build the response\n"))
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}
