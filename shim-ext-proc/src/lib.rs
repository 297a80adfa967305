//! epp-shim: the GIE Endpoint Picker protocol (Envoy ext_proc) on `scheduler-core`, for gateways that
//! cannot load the Wasm filter, and the companion collector that scrapes pods once for many proxies.
//!
//! Decisions are the core's ([`scheduler_core::endpoint_picker::EndpointPicker`]); this crate is I/O:
//! the gRPC stream, discovery, scraping, and the HTTP/health/metrics endpoints.

pub mod app;
pub mod bbr;
pub mod config;
pub mod endpoints;
pub mod extproc;
pub mod health;
pub mod http_server;
pub mod logging;
pub mod metrics;
pub mod pick_server;
pub mod picker;
pub mod pool;
pub mod scrape;
pub mod snapshot_server;
pub mod tls;

/// Wall-clock milliseconds since the Unix epoch: the clock snapshots, metrics and picks share.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
