//! `prefill-backlog-detector` (ours, not an llm-d type): saturation from the gateway's own in-flight
//! accounting, in two dimensions — the requests in flight (as `concurrency-detector`'s `requests`
//! mode) and the prompt tokens routed that still await their first token (the pods' prefill backlog,
//! the same count `prefill-backlog-scorer` reads):
//!
//! `max(Σ requests / (endpoints × maxConcurrency), Σ awaiting / (endpoints × maxPrefillTokens))`.
//!
//! Made for flow control's dispatch gate. Counting requests alone lets the gate fill the pods' batches
//! and queues up to `maxConcurrency`: the pods keep a long prefill queue, and a request of the highest
//! band, though first out of the gateway's queue, waits behind it. Holding requests while the backlog
//! is above `maxPrefillTokens` per pod keeps each pod fed but its prefill queue short, so what leaves the
//! gateway reaches a prefill soon; the requests bound still caps the batch. Like
//! `concurrency-detector`, it moves the moment a request is sent, produces its first token or finishes,
//! needs no scrape, and is blind to what the server holds that the gateway did not send.

use crate::config::params::ParamError;
use crate::scheduling::{BuildContext, Plugin, PluginFactory, SaturationDetector, SchedulingContext};
use serde::Deserialize;

pub const TYPE: &str = "prefill-backlog-detector";

pub const DEFAULT_MAX_CONCURRENCY: i64 = 100;
pub const DEFAULT_MAX_PREFILL_TOKENS: i64 = 8192;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Requests in flight per endpoint at which the pool counts as full (as `concurrency-detector`).
    pub max_concurrency: i64,
    /// Prompt tokens routed and awaiting their first token, per endpoint, at which the pool counts as
    /// full.
    pub max_prefill_tokens: i64,
}

impl Default for Params {
    fn default() -> Params {
        Params { max_concurrency: DEFAULT_MAX_CONCURRENCY, max_prefill_tokens: DEFAULT_MAX_PREFILL_TOKENS }
    }
}

/// Saturation detector over `EndpointState::in_flight`: requests and prompt tokens awaiting the first
/// token.
#[derive(Clone, Debug)]
pub struct PrefillBacklogDetector {
    max_requests: f64,
    max_prefill_tokens: f64,
}

impl PluginFactory for PrefillBacklogDetector {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<PrefillBacklogDetector, ParamError> {
        let positive = |value: i64, field: &str| {
            u32::try_from(value)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| ParamError::invalid(field, "an integer from 1 to 4294967295"))
        };
        let max_requests = positive(params.max_concurrency, "maxConcurrency")?;
        let max_prefill_tokens = positive(params.max_prefill_tokens, "maxPrefillTokens")?;
        Ok(PrefillBacklogDetector {
            max_requests: f64::from(max_requests),
            max_prefill_tokens: f64::from(max_prefill_tokens),
        })
    }
}

impl Plugin for PrefillBacklogDetector {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_saturation_detector(&self) -> Option<&dyn SaturationDetector> {
        Some(self)
    }
}

impl SaturationDetector for PrefillBacklogDetector {
    /// The larger of the pool's request ratio and prefill-backlog ratio. An empty pool is saturated
    /// (1.0), as with llm-d's detectors.
    fn saturation(&self, ctx: &SchedulingContext<'_>) -> f64 {
        let endpoints = &ctx.pool.endpoints;
        let by_requests =
            super::pool_mean(endpoints, |e| f64::from(e.in_flight.requests) / self.max_requests);
        let by_backlog = super::pool_mean(endpoints, |e| {
            e.in_flight.awaiting_first_token as f64 / self.max_prefill_tokens
        });
        by_requests.max(by_backlog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use alloc::string::String;
    use alloc::vec;

    fn detector(json: &str) -> PrefillBacklogDetector {
        built::<PrefillBacklogDetector>(json)
    }

    fn awaiting(mut s: crate::model::EndpointState, tokens: u64) -> crate::model::EndpointState {
        s.in_flight.await_first_token(tokens);
        s
    }

    #[test]
    fn the_larger_of_the_request_and_backlog_ratios() {
        let d = detector(r#"{"maxConcurrency": 100, "maxPrefillTokens": 1000}"#);
        // 60 + 20 requests over 2 × 100 = 0.4; 300 + 100 awaiting tokens over 2 × 1000 = 0.2.
        let p = pool(vec![awaiting(inflight(bare(1), 60, 0), 300), awaiting(inflight(bare(2), 20, 0), 100)]);
        assert!((saturation(&d, &p) - 0.4).abs() < 1e-9);
        // The same requests with 1500 + 900 awaiting: the backlog binds, 2400 / 2000.
        let p = pool(vec![awaiting(inflight(bare(1), 60, 0), 1500), awaiting(inflight(bare(2), 20, 0), 900)]);
        assert!((saturation(&d, &p) - 1.2).abs() < 1e-9);
    }

    #[test]
    fn first_tokens_lower_it_without_any_request_ending() {
        let d = detector(r#"{"maxConcurrency": 1000, "maxPrefillTokens": 500}"#);
        let mut e = awaiting(inflight(bare(1), 4, 0), 800);
        assert!(saturation(&d, &pool(vec![e.clone()])) >= 1.0);
        e.in_flight.first_token(400);
        assert!((saturation(&d, &pool(vec![e])) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn empty_pool_is_saturated_and_idle_pool_is_not() {
        assert_eq!(saturation(&detector("{}"), &pool(vec![])), 1.0);
        assert_eq!(saturation(&detector("{}"), &pool(vec![bare(1), bare(2)])), 0.0);
    }

    #[test]
    fn parameters() {
        let p: Params = params("{}");
        assert_eq!((p.max_concurrency, p.max_prefill_tokens), (100, 8192));
        for (json, field) in [
            (r#"{"maxConcurrency": 0}"#, "maxConcurrency"),
            (r#"{"maxPrefillTokens": -1}"#, "maxPrefillTokens"),
            (r#"{"maxPrefillTokens": 5000000000}"#, "maxPrefillTokens"),
        ] {
            assert_eq!(
                try_build::<PrefillBacklogDetector>(json).map(|_| ()).map_err(|e| e.field),
                Err(String::from(field)),
                "{json}"
            );
        }
        assert!(try_build::<PrefillBacklogDetector>(r#"{"headroom": 0.1}"#).is_err());
    }
}
