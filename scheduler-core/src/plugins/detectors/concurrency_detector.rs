//! `concurrency-detector` (GIE/llm-d): saturation from the gateway's own in-flight accounting,
//! `Σ in-flight / Σ capacity`, with a per-endpoint capacity of `maxConcurrency` requests or
//! `maxTokenConcurrency` tokens.
//!
//! It sees a burst the moment it is routed, where scraped metrics lag by a scrape interval, but it is
//! blind to what the server actually holds. Also a filter, as in llm-d.

use crate::config::params::ParamError;
use crate::model::{EndpointState, InFlight};
use crate::plugins::candidates::state;
use crate::scheduling::{
    BuildContext, CycleState, Filter, Plugin, PluginFactory, SaturationDetector, SchedulingContext,
};
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "concurrency-detector";

pub const DEFAULT_MAX_CONCURRENCY: i64 = 100;
pub const DEFAULT_MAX_TOKEN_CONCURRENCY: i64 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// `requests`, `tokens` or `hybrid` (per endpoint the larger ratio, averaged).
    pub concurrency_mode: String,
    /// Ideal requests in flight per endpoint.
    pub max_concurrency: i64,
    /// Ideal estimated tokens in flight per endpoint.
    pub max_token_concurrency: i64,
    /// Burst allowance above the capacity for the filter role, as a fraction.
    pub headroom: f64,
    /// Accepted for llm-d compatibility and ignored: there is one in-flight accounting here.
    pub in_flight_load_producer_name: Option<String>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            concurrency_mode: String::from("requests"),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_token_concurrency: DEFAULT_MAX_TOKEN_CONCURRENCY,
            headroom: 0.0,
            in_flight_load_producer_name: None,
        }
    }
}

/// What the detector counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Requests,
    Tokens,
    Hybrid,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "requests" => Some(Mode::Requests),
            "tokens" => Some(Mode::Tokens),
            "hybrid" => Some(Mode::Hybrid),
            _ => None,
        }
    }
}

/// Saturation detector and filter over `EndpointState::in_flight` (requests and estimated tokens the
/// gateway routed and has not seen finish). Needs no metrics, so missing or stale scrapes change
/// nothing here.
#[derive(Clone, Debug)]
pub struct ConcurrencyDetector {
    mode: Mode,
    max_requests: u64,
    max_tokens: u64,
    request_limit: u64,
    token_limit: u64,
}

impl PluginFactory for ConcurrencyDetector {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    /// Same rules as llm-d's.
    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<ConcurrencyDetector, ParamError> {
        let Some(mode) = Mode::parse(&params.concurrency_mode) else {
            return Err(ParamError::invalid(
                "concurrencyMode",
                "one of \"requests\", \"tokens\", \"hybrid\"",
            ));
        };
        let positive = |value: i64, field: &str| {
            u64::try_from(value)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| ParamError::invalid(field, "an integer > 0"))
        };
        let max_requests = positive(params.max_concurrency, "maxConcurrency")?;
        let max_tokens = positive(params.max_token_concurrency, "maxTokenConcurrency")?;
        if !(0.0..).contains(&params.headroom) {
            return Err(ParamError::invalid("headroom", "a number >= 0"));
        }
        // Truncated like llm-d's int64(float64(capacity) * (1 + headroom)); `as` saturates.
        let limit = |capacity: u64| (capacity as f64 * (1.0 + params.headroom)) as u64;
        Ok(ConcurrencyDetector {
            mode,
            max_requests,
            max_tokens,
            request_limit: limit(max_requests),
            token_limit: limit(max_tokens),
        })
    }
}

impl ConcurrencyDetector {
    fn admits(&self, load: InFlight) -> bool {
        let requests_ok = u64::from(load.requests) < self.request_limit;
        let tokens_ok = load.tokens < self.token_limit;
        match self.mode {
            Mode::Requests => requests_ok,
            Mode::Tokens => tokens_ok,
            Mode::Hybrid => requests_ok && tokens_ok,
        }
    }
}

impl Plugin for ConcurrencyDetector {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
    fn as_saturation_detector(&self) -> Option<&dyn SaturationDetector> {
        Some(self)
    }
}

impl SaturationDetector for ConcurrencyDetector {
    /// `requests`/`tokens`: Σ in-flight / (endpoints × capacity). `hybrid`: mean over endpoints of
    /// max(request ratio, token ratio), so endpoints saturated on different dimensions still show.
    /// An empty pool is saturated (1.0), as in llm-d.
    fn saturation(&self, ctx: &SchedulingContext<'_>) -> f64 {
        let endpoints = &ctx.pool.endpoints;
        let max_requests = self.max_requests as f64;
        let max_tokens = self.max_tokens as f64;
        let requests = |e: &EndpointState| f64::from(e.in_flight.requests) / max_requests;
        let tokens = |e: &EndpointState| e.in_flight.tokens as f64 / max_tokens;
        match self.mode {
            Mode::Requests => super::pool_mean(endpoints, requests),
            Mode::Tokens => super::pool_mean(endpoints, tokens),
            Mode::Hybrid => super::pool_mean(endpoints, |e| requests(e).max(tokens(e))),
        }
    }
}

impl Filter for ConcurrencyDetector {
    /// Keeps endpoints whose in-flight load is below `capacity·(1+headroom)` (truncated). Unlike the
    /// utilization detector it may leave nothing, as in llm-d: every endpoint is over its hard limit.
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| state(ctx, i).is_some_and(|s| self.admits(s.in_flight)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    fn detector(json: &str) -> ConcurrencyDetector {
        built::<ConcurrencyDetector>(json)
    }

    #[test]
    fn request_mode_is_total_in_flight_over_total_capacity() {
        // 150 + 50 + 0 requests over 3 × 100.
        let p = pool(vec![inflight(bare(1), 150, 0), inflight(ep(2, 0, 0, 0.0), 50, 0), bare(3)]);
        assert!((saturation(&detector("{}"), &p) - 200.0 / 300.0).abs() < 1e-9);
    }

    #[test]
    fn token_mode() {
        // 1.5M + 0.5M tokens over 2 × 1M.
        let p = pool(vec![inflight(bare(1), 1, 1_500_000), inflight(bare(2), 1, 500_000)]);
        assert!((saturation(&detector(r#"{"concurrencyMode": "tokens"}"#), &p) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn hybrid_mode_averages_each_endpoints_binding_dimension() {
        // Endpoint 1: requests 0.9, tokens 0.1 → 0.9. Endpoint 2: requests 0.1, tokens 0.9 → 0.9.
        // Aggregates would say 0.5 on both dimensions; hybrid says 0.9.
        let p = pool(vec![inflight(bare(1), 90, 100_000), inflight(bare(2), 10, 900_000)]);
        assert!((saturation(&detector(r#"{"concurrencyMode": "hybrid"}"#), &p) - 0.9).abs() < 1e-9);
        assert!((saturation(&detector(r#"{"concurrencyMode": "requests"}"#), &p) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn empty_pool_is_saturated() {
        assert_eq!(saturation(&detector("{}"), &pool(vec![])), 1.0);
    }

    #[test]
    fn filter_uses_the_limit_with_headroom() {
        let p = pool(vec![inflight(bare(1), 9, 0), inflight(bare(2), 10, 0), inflight(bare(3), 11, 0)]);
        // Limit 10: strictly below.
        assert_eq!(kept(&detector(r#"{"maxConcurrency": 10}"#), &p, &SchedulingRequest::default()), vec![0]);
        // Limit trunc(10 × 1.15) = 11.
        let d = detector(r#"{"maxConcurrency": 10, "headroom": 0.15}"#);
        assert_eq!(kept(&d, &p, &SchedulingRequest::default()), vec![0, 1]);
        // All over the limit: nothing kept.
        assert!(kept(&detector(r#"{"maxConcurrency": 5}"#), &p, &SchedulingRequest::default()).is_empty());
    }

    #[test]
    fn hybrid_filter_needs_both_dimensions_under_the_limit() {
        let p = pool(vec![inflight(bare(1), 1, 50), inflight(bare(2), 1, 150), inflight(bare(3), 20, 0)]);
        let d =
            detector(r#"{"concurrencyMode": "hybrid", "maxConcurrency": 10, "maxTokenConcurrency": 100}"#);
        assert_eq!(kept(&d, &p, &SchedulingRequest::default()), vec![0]);
        let d = detector(r#"{"concurrencyMode": "tokens", "maxTokenConcurrency": 100}"#);
        assert_eq!(kept(&d, &p, &SchedulingRequest::default()), vec![0, 2]);
    }

    #[test]
    fn parameters() {
        let p: Params = params(r#"{"inFlightLoadProducerName": "x"}"#);
        assert_eq!((p.max_concurrency, p.max_token_concurrency), (100, 1_000_000));
        for (json, field) in [
            (r#"{"concurrencyMode": "bytes"}"#, "concurrencyMode"),
            (r#"{"maxConcurrency": 0}"#, "maxConcurrency"),
            (r#"{"maxTokenConcurrency": -1}"#, "maxTokenConcurrency"),
            (r#"{"headroom": -1}"#, "headroom"),
        ] {
            assert_eq!(
                try_build::<ConcurrencyDetector>(json).map(|_| ()).map_err(|e| e.field),
                Err(String::from(field)),
                "{json}"
            );
        }
    }
}
