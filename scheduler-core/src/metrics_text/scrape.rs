//! One scrape of a model server's `/metrics`, as both collectors (the filter's in-proxy one and the
//! shim's) fold it into the pool: the answer read into metrics or a reason it failed, and the endpoint's
//! state updated the same way (a good scrape replaces its metrics; a failed one counts one more failure
//! in a row and leaves the old metrics to age).

use super::{parse_metrics_bytes, MetricsError, ParsedMetrics};
use crate::model::{EndpointState, Engine, Metrics};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Why a scrape gave no metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum ScrapeFailure {
    /// The server answered with a status other than 200.
    Status(u16),
    /// No HTTP answer: refused, reset, or the transport failed (the host's words).
    Unreachable(String),
    /// No answer within the collector's timeout.
    TimedOut { after_ms: u64 },
    /// A 200 whose body is not this engine's metrics.
    Unreadable(MetricsError),
    /// A 200 lacking some of the engine's core gauges (waiting, running, KV cache): reading the missing
    /// ones as 0 would make the endpoint look idle.
    MissingGauges(Vec<&'static str>),
}

impl fmt::Display for ScrapeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScrapeFailure::Status(s) => write!(f, "HTTP {s}"),
            ScrapeFailure::Unreachable(why) => write!(f, "no answer: {why}"),
            ScrapeFailure::TimedOut { after_ms } => write!(f, "no answer within {after_ms} ms"),
            ScrapeFailure::Unreadable(e) => write!(f, "{e}"),
            ScrapeFailure::MissingGauges(names) => {
                write!(f, "the page lacks the core gauge(s) {}", names.join(", "))
            }
        }
    }
}

/// Reads one answer to `GET /metrics`: `status` is `None` when no HTTP answer came (then `body` is
/// ignored and the failure is [`ScrapeFailure::Unreachable`]).
pub fn read_scrape(
    engine: Engine,
    status: Option<u16>,
    body: &[u8],
    now_ms: u64,
) -> Result<ParsedMetrics, ScrapeFailure> {
    match status {
        Some(200) => match parse_metrics_bytes(engine, body, now_ms) {
            Ok(parsed) if !parsed.missing.is_empty() => Err(ScrapeFailure::MissingGauges(parsed.missing)),
            Ok(parsed) => Ok(parsed),
            Err(e) => Err(ScrapeFailure::Unreadable(e)),
        },
        Some(s) => Err(ScrapeFailure::Status(s)),
        None => Err(ScrapeFailure::Unreachable(String::from("connection failed or reset"))),
    }
}

impl EndpointState {
    /// Folds one scrape in: metrics replace the old ones and clear the failure count; a failure counts
    /// one more in a row and keeps the old metrics, aging.
    pub fn record_scrape<E>(&mut self, result: Result<Metrics, E>) {
        match result {
            Ok(metrics) => {
                self.metrics = Some(metrics);
                self.consecutive_scrape_failures = 0;
            }
            Err(_) => self.consecutive_scrape_failures = self.consecutive_scrape_failures.saturating_add(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;
    use alloc::string::ToString;

    const VLLM: &[u8] =
        b"vllm:num_requests_waiting 3\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.5\n";

    #[test]
    fn a_good_scrape_replaces_the_metrics_and_a_failure_keeps_them_aging() {
        let mut e = EndpointState::new(Endpoint::new("10.0.0.1:8000"));
        e.record_scrape(read_scrape(Engine::Vllm, Some(200), VLLM, 1_000).map(|p| p.metrics));
        assert_eq!(e.metrics.as_ref().map(|m| (m.waiting, m.updated_at_ms)), Some((3, 1_000)));
        for (status, body) in [(Some(503), VLLM), (None, VLLM), (Some(200), &b"<html>oops</html>"[..])] {
            e.record_scrape(read_scrape(Engine::Vllm, status, body, 2_000).map(|p| p.metrics));
        }
        assert_eq!(e.consecutive_scrape_failures, 3);
        assert_eq!(e.metrics.as_ref().map(|m| m.updated_at_ms), Some(1_000));
        e.record_scrape(read_scrape(Engine::Vllm, Some(200), VLLM, 3_000).map(|p| p.metrics));
        assert_eq!(e.consecutive_scrape_failures, 0);
    }

    #[test]
    fn failures_say_what_happened() {
        let s = |status, body: &[u8]| read_scrape(Engine::Vllm, status, body, 0).unwrap_err().to_string();
        assert_eq!(s(Some(503), b""), "HTTP 503");
        assert_eq!(s(None, b""), "no answer: connection failed or reset");
        assert!(
            s(Some(200), b"garbage").contains("vllm:num_requests_waiting"),
            "{}",
            s(Some(200), b"garbage")
        );
        assert_eq!(ScrapeFailure::TimedOut { after_ms: 250 }.to_string(), "no answer within 250 ms");
        // A page without the KV gauge is a failed scrape, never an idle endpoint.
        let no_kv = b"vllm:num_requests_waiting 3\nvllm:num_requests_running 1\n";
        assert_eq!(s(Some(200), no_kv), "the page lacks the core gauge(s) vllm:kv_cache_usage_perc");
        assert!(matches!(
            read_scrape(Engine::Vllm, Some(200), no_kv, 0),
            Err(ScrapeFailure::MissingGauges(_))
        ));
    }
}
