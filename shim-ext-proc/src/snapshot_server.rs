//! `GET /snapshot`: the published pool snapshot in the core's binary encoding, for the Wasm filters'
//! discovery URL (`pool.discoveryUrl`), so many proxies poll one collector instead of every pod.
//! The generation travels in a header so a poller can tell "nothing new" without decoding.
//!
//! A poller names the newest snapshot format it reads in `x-epp-snapshot-version`; without it, it is taken
//! for a build that reads version 1 only and gets the snapshot without the pool's InferenceObjective /
//! InferenceModelRewrite resources (which need version 2), so filters older than the collector keep routing.

use crate::pool::Pool;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use scheduler_core::snapshot_codec;
use std::sync::atomic::{AtomicBool, Ordering};

pub const GENERATION_HEADER: &str = "x-epp-snapshot-generation";
/// Request: the newest format version the poller reads. Response: the version served.
pub const VERSION_HEADER: &str = "x-epp-snapshot-version";
pub const CONTENT_TYPE: &str = "application/vnd.wasm-epp.snapshot";

/// The response for one poll. A `GENERATION_HEADER` naming the generation the poller already has is
/// answered 304 with no body.
pub fn respond(pool: &Pool, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let if_generation = header(GENERATION_HEADER).and_then(|v| v.parse::<u64>().ok());
    let reads = match header(VERSION_HEADER).map(|v| v.trim().parse::<u16>()) {
        None => 1,
        Some(Ok(v)) if v >= 1 => v,
        Some(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "x-epp-snapshot-version: expected the newest snapshot format version the poller reads (1 or more)\n",
            )
        }
    };
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
        let version = snapshot_codec::peek_version(&published.encoded).unwrap_or(1);
        let (body, version) = if version <= reads {
            (published.encoded, version)
        } else {
            warn_old_poller();
            (Bytes::from(snapshot_codec::encode_v1(&published.snapshot)), 1)
        };
        builder
            .header("content-type", CONTENT_TYPE)
            .header(VERSION_HEADER, version.to_string())
            .body(Full::new(body))
    };
    resp.unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot build the response\n"))
}

/// Once per process: an old filter does not get the pool's Kubernetes resources.
fn warn_old_poller() {
    static TOLD: AtomicBool = AtomicBool::new(false);
    if !TOLD.swap(true, Ordering::Relaxed) {
        log::warn!(
            "a snapshot poller reads format version 1 only: it gets the pool without its InferenceObjective / \
             InferenceModelRewrite resources (upgrade that Wasm filter to apply them)"
        );
    }
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use scheduler_core::config::objectives::ObjectivePriorities;
    use scheduler_core::model::{Endpoint, PoolResources};

    async fn poll(pool: &Pool, headers: &[(&'static str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        let r = respond(pool, &map);
        let (parts, body) = r.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn pollers_get_the_newest_format_they_read() {
        let pool = Pool::new("p");
        pool.set_endpoints(&[Endpoint::new("10.0.0.1:8000")]);
        pool.set_resources(PoolResources {
            objectives: ObjectivePriorities::from_json(r#"[{"name": "batch", "priority": -1}]"#).unwrap(),
            ..PoolResources::default()
        });
        pool.publish(1_000);

        // A current filter asks for version 2 and gets the resources.
        let (status, headers, body) = poll(&pool, &[(VERSION_HEADER, "2")]).await;
        assert_eq!((status, headers[VERSION_HEADER].to_str().unwrap()), (StatusCode::OK, "2"));
        let snap = snapshot_codec::decode(&body).unwrap();
        assert_eq!(snap.resources.objectives.get("batch"), Some(-1));

        // An older filter says nothing: version 1, the same endpoints, no resources; it still decodes
        // with a reader of version 1 only (the header says 1).
        let (status, headers, body) = poll(&pool, &[]).await;
        assert_eq!((status, headers[VERSION_HEADER].to_str().unwrap()), (StatusCode::OK, "1"));
        assert_eq!(snapshot_codec::peek_version(&body), Some(1));
        let old = snapshot_codec::decode(&body).unwrap();
        assert_eq!(old.endpoints, snap.endpoints);
        assert!(old.resources.is_empty());

        // Same generation: 304 whatever the version.
        let generation = snap.generation.to_string();
        let (status, _, body) = poll(&pool, &[(GENERATION_HEADER, &generation)]).await;
        assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));

        let (status, _, body) = poll(&pool, &[(VERSION_HEADER, "two")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body).starts_with("x-epp-snapshot-version: expected"));
    }
}
