//! Reading model servers' `/metrics` pages: a tolerant Prometheus text parser and the per-engine mappings
//! onto `model::Metrics`. The collector (filter or shim) calls [`parse_metrics`] once per scrape.

mod engines;
pub mod prometheus;
mod scrape;

pub use engines::{parse_metrics, parse_metrics_bytes, MetricsError, ParsedMetrics};
pub use prometheus::ParseStats;
pub use scrape::{read_scrape, ScrapeFailure};
