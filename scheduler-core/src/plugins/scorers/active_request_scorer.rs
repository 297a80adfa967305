//! `active-request-scorer` (llm-d): prefers endpoints with fewer requests in flight from this gateway;
//! endpoints at or below `idleThreshold` score 1, busier ones `maxBusyScore · (max − n) / max`.
//!
//! Reads the gateway's in-flight counts (llm-d's in-flight load producer), so it needs no metrics.

use crate::config::params::ParamError;
use crate::plugins::candidates::state;
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};
use alloc::string::String;
use serde::Deserialize;

pub const TYPE: &str = "active-request-scorer";

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// In-flight requests at or below which an endpoint counts as idle and scores 1.0.
    pub idle_threshold: i64,
    /// Highest score a busy endpoint can get; below 1 it opens a gap between idle and busy endpoints.
    pub max_busy_score: f64,
    /// Deprecated in llm-d and ignored there too; accepted so older configurations still load.
    pub request_timeout: Option<String>,
    /// Accepted for llm-d compatibility and ignored: there is one in-flight accounting here.
    pub in_flight_load_producer_name: Option<String>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            idle_threshold: 0,
            max_busy_score: 1.0,
            request_timeout: None,
            in_flight_load_producer_name: None,
        }
    }
}

/// Scores by gateway in-flight requests (`EndpointState::in_flight.requests`); `max` is the largest
/// count among the candidates, so the busiest busy endpoint scores 0.
#[derive(Clone, Debug)]
pub struct ActiveRequestScorer {
    idle_threshold: u64,
    max_busy_score: f64,
}

impl PluginFactory for ActiveRequestScorer {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    /// As llm-d, out-of-range values fall back to the defaults (with a warning here), so a
    /// configuration means the same in both.
    fn build(params: Params, ctx: &mut BuildContext<'_>) -> Result<ActiveRequestScorer, ParamError> {
        let idle_threshold = u64::try_from(params.idle_threshold).unwrap_or_else(|_| {
            ctx.warn("idleThreshold", alloc::format!("{} read as 0, as in llm-d", params.idle_threshold));
            0
        });
        let max_busy_score = if (0.0..=1.0).contains(&params.max_busy_score) {
            params.max_busy_score
        } else {
            ctx.warn("maxBusyScore", alloc::format!("{} read as 1, as in llm-d", params.max_busy_score));
            1.0
        };
        if params.request_timeout.is_some() {
            ctx.warn("requestTimeout", "ignored, as in llm-d (deprecated)");
        }
        Ok(ActiveRequestScorer { idle_threshold, max_busy_score })
    }
}

impl Plugin for ActiveRequestScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for ActiveRequestScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let count = |i: usize| state(ctx, i).map(|s| u64::from(s.in_flight.requests));
        let max = candidates.iter().filter_map(|&i| count(i)).max().unwrap_or(0);
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            *slot = match count(i) {
                Some(n) if n <= self.idle_threshold => 1.0,
                // n > idle_threshold >= 0, so max >= n > 0: no division by zero.
                Some(n) => (max - n) as f64 / max as f64 * self.max_busy_score,
                None => 0.0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;

    fn pool_with(counts: &[u32]) -> crate::model::PoolSnapshot {
        pool(counts.iter().zip(1u8..).map(|(&n, i)| inflight(bare(i), n, 0)).collect())
    }

    #[test]
    fn idle_scores_one_busy_scale_against_the_busiest() {
        // Counts 0, 2, 4, 8 with defaults: idle → 1; (8−2)/8 = 0.75; (8−4)/8 = 0.5; 0.
        let s = built::<ActiveRequestScorer>("{}");
        assert_close(
            &scores(&s, &pool_with(&[0, 2, 4, 8]), &SchedulingRequest::default()),
            &[1.0, 0.75, 0.5, 0.0],
        );
    }

    #[test]
    fn idle_threshold_and_max_busy_score_open_a_gap() {
        // idleThreshold 2: 0 and 2 are idle; busy ones scaled into [0, 0.5]: (8−4)/8·0.5 = 0.25.
        let s = built::<ActiveRequestScorer>(r#"{"idleThreshold": 2, "maxBusyScore": 0.5}"#);
        assert_close(
            &scores(&s, &pool_with(&[0, 2, 4, 8]), &SchedulingRequest::default()),
            &[1.0, 1.0, 0.25, 0.0],
        );
    }

    #[test]
    fn all_idle_and_equal_busy() {
        let s = built::<ActiveRequestScorer>("{}");
        assert_close(&scores(&s, &pool_with(&[0, 0]), &SchedulingRequest::default()), &[1.0, 1.0]);
        // Equally busy endpoints are all "the busiest": 0 each, as in llm-d.
        assert_close(&scores(&s, &pool_with(&[3, 3]), &SchedulingRequest::default()), &[0.0, 0.0]);
    }

    #[test]
    fn parameters() {
        let p: Params = params(r#"{"requestTimeout": "2m", "inFlightLoadProducerName": "x"}"#);
        assert_eq!(p.idle_threshold, 0);
        // Out of range: llm-d's defaults (the scheduler reports a warning).
        let s = built::<ActiveRequestScorer>(r#"{"idleThreshold": -1, "maxBusyScore": 1.5}"#);
        assert_eq!((s.idle_threshold, s.max_busy_score), (0, 1.0));
        assert_eq!(build_err::<ActiveRequestScorer>(r#"{"idle": 1}"#).field, "idle");
    }
}
