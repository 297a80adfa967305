//! `utilization-detector` (GIE's default saturation detector, also usable as a filter): how full each
//! endpoint is by its scraped queue and KV cache, `max(q / queueDepthThreshold, kv / kvCacheUtilThreshold)`.
//!
//! As a detector it reports the pool mean (drives shedding); as a filter it drops endpoints past the
//! thresholds stretched by `headroom`, so affinity can still burst above the ideal load.

use crate::config::params::{parse_duration_ms, ParamError};
use crate::model::EndpointState;
use crate::plugins::candidates::state;
use crate::scheduling::{
    BuildContext, CycleState, Filter, Plugin, PluginFactory, SaturationDetector, SchedulingContext,
};
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "utilization-detector";

pub const DEFAULT_QUEUE_DEPTH_THRESHOLD: i64 = 5;
pub const DEFAULT_KV_CACHE_UTIL_THRESHOLD: f64 = 0.8;
pub const DEFAULT_METRICS_STALENESS_THRESHOLD: &str = "200ms";
pub const DEFAULT_HEADROOM: f64 = 0.0;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Waiting requests that make one endpoint "full" (ideal queue capacity).
    pub queue_depth_threshold: i64,
    /// KV-cache use (fraction) that makes one endpoint "full".
    pub kv_cache_util_threshold: f64,
    /// Metrics older than this (a duration string, e.g. `"200ms"`) count as fully saturated.
    pub metrics_staleness_threshold: String,
    /// Burst allowance above the thresholds for the filter role, as a fraction (0.2 = 20 %).
    pub headroom: f64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            queue_depth_threshold: DEFAULT_QUEUE_DEPTH_THRESHOLD,
            kv_cache_util_threshold: DEFAULT_KV_CACHE_UTIL_THRESHOLD,
            metrics_staleness_threshold: String::from(DEFAULT_METRICS_STALENESS_THRESHOLD),
            headroom: DEFAULT_HEADROOM,
        }
    }
}

/// Saturation detector and filter over scraped metrics.
///
/// Missing or stale metrics (older than `metricsStalenessThreshold` at the caller's clock) count as
/// 1.0 in the pool mean and fail the filter. That is GIE's deliberate fail-closed choice for the
/// detector: a server too busy to answer its scrape is likely the saturated one. The filter still
/// fails open as a whole: when no candidate passes, all are kept.
#[derive(Clone, Debug)]
pub struct UtilizationDetector {
    queue_depth_threshold: f64,
    kv_cache_util_threshold: f64,
    staleness_ms: u64,
    headroom: f64,
}

impl PluginFactory for UtilizationDetector {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    /// Same rules as GIE's.
    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<UtilizationDetector, ParamError> {
        if params.queue_depth_threshold <= 0 {
            return Err(ParamError::invalid("queueDepthThreshold", "an integer > 0"));
        }
        if !(params.kv_cache_util_threshold > 0.0 && params.kv_cache_util_threshold <= 1.0) {
            return Err(ParamError::invalid("kvCacheUtilThreshold", "a fraction in (0, 1]"));
        }
        let staleness_ms = match parse_duration_ms(&params.metrics_staleness_threshold) {
            Some(ms) if ms > 0 => ms,
            _ => {
                return Err(ParamError::invalid(
                    "metricsStalenessThreshold",
                    "a duration > 0 such as \"200ms\" or \"1s\"",
                ))
            }
        };
        if !(0.0..).contains(&params.headroom) {
            return Err(ParamError::invalid("headroom", "a number >= 0"));
        }
        Ok(UtilizationDetector {
            queue_depth_threshold: params.queue_depth_threshold as f64,
            kv_cache_util_threshold: params.kv_cache_util_threshold,
            staleness_ms,
            headroom: params.headroom,
        })
    }
}

impl UtilizationDetector {
    /// Saturation of one endpoint at `now_ms`; 1.0 when its metrics are missing or stale.
    pub fn endpoint_saturation(&self, endpoint: &EndpointState, now_ms: u64) -> f64 {
        match &endpoint.metrics {
            Some(m) if !endpoint.is_stale(now_ms, self.staleness_ms) => {
                let queue = f64::from(m.waiting) / self.queue_depth_threshold;
                let kv = m.kv_usage / self.kv_cache_util_threshold;
                queue.max(kv)
            }
            _ => 1.0,
        }
    }

    fn admits(&self, endpoint: &EndpointState, now_ms: u64) -> bool {
        let queue_limit = self.queue_depth_threshold * (1.0 + self.headroom);
        let kv_limit = self.kv_cache_util_threshold * (1.0 + self.headroom);
        match &endpoint.metrics {
            Some(m) if !endpoint.is_stale(now_ms, self.staleness_ms) => {
                f64::from(m.waiting) < queue_limit && m.kv_usage < kv_limit
            }
            _ => false,
        }
    }
}

impl Plugin for UtilizationDetector {
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

impl SaturationDetector for UtilizationDetector {
    /// Mean endpoint saturation over the whole pool; an empty pool is saturated (1.0), as in GIE.
    fn saturation(&self, ctx: &SchedulingContext<'_>) -> f64 {
        super::pool_mean(&ctx.pool.endpoints, |e| self.endpoint_saturation(e, ctx.now_ms))
    }
}

impl Filter for UtilizationDetector {
    /// Keeps endpoints with fresh metrics and `q < queueDepthThreshold·(1+headroom)` and
    /// `kv < kvCacheUtilThreshold·(1+headroom)`; all candidates when none qualifies.
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        let admits = |i: usize| state(ctx, i).is_some_and(|s| self.admits(s, ctx.now_ms));
        if candidates.iter().any(|&i| admits(i)) {
            candidates.retain(|&i| admits(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::string::ToString;
    use alloc::vec;

    fn detector(json: &str) -> UtilizationDetector {
        built::<UtilizationDetector>(json)
    }

    #[test]
    fn pool_saturation_is_the_mean_of_the_binding_resource() {
        // Defaults 5 / 0.8: q 5 → 1.0; kv 0.4 → 0.5 (queue 1 → 0.2 is lower); q 10, kv 0.8 → 2.0; idle → 0.
        let p = pool(vec![ep(1, 5, 0, 0.0), ep(2, 1, 0, 0.4), ep(3, 10, 0, 0.8), ep(4, 0, 0, 0.0)]);
        let d = detector("{}");
        assert!((saturation(&d, &p) - (1.0 + 0.5 + 2.0 + 0.0) / 4.0).abs() < 1e-9);
    }

    #[test]
    fn missing_and_stale_metrics_count_as_saturated() {
        // 200 ms is still fresh; 201 ms is stale.
        let d = detector("{}");
        let p =
            pool(vec![aged(ep(1, 0, 0, 0.0), 200), aged(ep(2, 0, 0, 0.0), 201), bare(3), ep(4, 0, 0, 0.0)]);
        assert!((saturation(&d, &p) - 2.0 / 4.0).abs() < 1e-9);
        // A longer staleness threshold makes the 201 ms-old endpoint count by its metrics.
        let d = detector(r#"{"metricsStalenessThreshold": "1s"}"#);
        assert!((saturation(&d, &p) - 1.0 / 4.0).abs() < 1e-9);
    }

    #[test]
    fn empty_pool_is_saturated() {
        assert_eq!(saturation(&detector("{}"), &pool(vec![])), 1.0);
    }

    #[test]
    fn custom_thresholds() {
        // q 4 / 10 = 0.4 vs kv 0.45 / 0.9 = 0.5 → 0.5.
        let d = detector(r#"{"queueDepthThreshold": 10, "kvCacheUtilThreshold": 0.9}"#);
        assert!((saturation(&d, &pool(vec![ep(1, 4, 0, 0.45)])) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn filter_keeps_endpoints_under_the_limits() {
        let p = pool(vec![
            ep(1, 4, 0, 0.5),             // under both
            ep(2, 5, 0, 0.1),             // queue at the limit: out (strict <)
            ep(3, 0, 0, 0.8),             // KV at the limit: out
            aged(ep(4, 0, 0, 0.0), 1000), // stale: out
            bare(5),                      // missing: out
        ]);
        assert_eq!(kept(&detector("{}"), &p, &SchedulingRequest::default()), vec![0]);
        // 20 % headroom: limits 6 requests and 0.96 KV.
        assert_eq!(kept(&detector(r#"{"headroom": 0.2}"#), &p, &SchedulingRequest::default()), vec![0, 1, 2]);
    }

    #[test]
    fn filter_keeps_all_when_none_pass() {
        let p = pool(vec![ep(1, 50, 0, 0.0), bare(2), aged(ep(3, 0, 0, 0.0), 5000)]);
        assert_eq!(kept(&detector("{}"), &p, &SchedulingRequest::default()), vec![0, 1, 2]);
    }

    #[test]
    fn parameters_are_validated_like_gie() {
        let cases = [
            (r#"{"queueDepthThreshold": 0}"#, "queueDepthThreshold"),
            (r#"{"kvCacheUtilThreshold": 0}"#, "kvCacheUtilThreshold"),
            (r#"{"kvCacheUtilThreshold": 1.2}"#, "kvCacheUtilThreshold"),
            (r#"{"metricsStalenessThreshold": "0s"}"#, "metricsStalenessThreshold"),
            (r#"{"metricsStalenessThreshold": "soon"}"#, "metricsStalenessThreshold"),
            (r#"{"headroom": -0.1}"#, "headroom"),
        ];
        for (json, field) in cases {
            assert_eq!(
                try_build::<UtilizationDetector>(json).map(|_| ()).map_err(|e| e.field),
                Err(String::from(field)),
                "{json}"
            );
        }
        assert_eq!(
            build_err::<UtilizationDetector>(r#"{"queueDepthThreshold": -3}"#).to_string(),
            "queueDepthThreshold: expected an integer > 0"
        );
        assert!(try_build::<UtilizationDetector>(r#"{"threshold": 1}"#).is_err());
    }
}
