//! The plain-HTTP port (9090 by default): `/metrics` (Prometheus), `/snapshot` (the collector's
//! encoded snapshot) and `/healthz` (readiness), on one small hyper server.

use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::snapshot_server::{self, plain};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, pool: Arc<Pool>, metrics: Arc<Metrics>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("http accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (pool, metrics) = (Arc::clone(&pool), Arc::clone(&metrics));
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = route(&req, &pool, &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(req: &Request<Incoming>, pool: &Pool, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let text = metrics.render(pool, crate::unix_ms());
            let mut r = Response::new(Full::new(Bytes::from(text)));
            if let Ok(v) = hyper::header::HeaderValue::from_str("text/plain; version=0.0.4") {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        "/snapshot" => snapshot_server::respond(pool, req.headers()),
        "/healthz" | "/readyz" => {
            if pool.is_synced() {
                plain(StatusCode::OK, "ok\n")
            } else {
                plain(StatusCode::SERVICE_UNAVAILABLE, "endpoints not synced\n")
            }
        }
        _ => plain(StatusCode::NOT_FOUND, "not found: try /metrics, /snapshot or /healthz\n"),
    }
}
