//! `token-load-scorer`: prefers endpoints with fewer estimated tokens in flight from this gateway,
//! `1 − min(1, tokens / queueThresholdTokens)`.
//!
//! Reads the gateway's own in-flight accounting, so it reacts between scrapes and needs no metrics.

use crate::config::params::ParamError;
use crate::plugins::candidates::state;
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};
use alloc::string::String;
use serde::Deserialize;

pub const TYPE: &str = "token-load-scorer";

/// 128 requests of 32K tokens (llm-d's default).
pub const DEFAULT_QUEUE_THRESHOLD_TOKENS: i64 = 4_194_304;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// In-flight tokens at which the score reaches 0.
    pub queue_threshold_tokens: i64,
    /// Accepted for llm-d compatibility and ignored: there is one in-flight accounting here.
    pub in_flight_load_producer_name: Option<String>,
}

impl Default for Params {
    fn default() -> Params {
        Params { queue_threshold_tokens: DEFAULT_QUEUE_THRESHOLD_TOKENS, in_flight_load_producer_name: None }
    }
}

/// Scores by gateway in-flight tokens (`EndpointState::in_flight.tokens`: input + expected output of
/// requests routed there and not finished). llm-d also adds the current request's uncached tokens per
/// endpoint; that needs per-endpoint prefix state, so it is left out here (it is the same for every
/// endpoint when nothing is cached, so the ranking changes only through the clamp at the threshold).
#[derive(Clone, Debug)]
pub struct TokenLoadScorer {
    threshold: f64,
}

impl PluginFactory for TokenLoadScorer {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    /// llm-d silently replaces a non-positive threshold with the default; here it is an error so a
    /// typo does not go unnoticed (and the formula never divides by zero).
    /// As llm-d, a threshold ≤ 0 means the default (with a warning here).
    fn build(params: Params, ctx: &mut BuildContext<'_>) -> Result<TokenLoadScorer, ParamError> {
        let threshold = if params.queue_threshold_tokens <= 0 {
            let message = alloc::format!(
                "{} read as {DEFAULT_QUEUE_THRESHOLD_TOKENS}, as in llm-d",
                params.queue_threshold_tokens
            );
            ctx.warn("queueThresholdTokens", message);
            DEFAULT_QUEUE_THRESHOLD_TOKENS
        } else {
            params.queue_threshold_tokens
        };
        Ok(TokenLoadScorer { threshold: threshold as f64 })
    }
}

impl Plugin for TokenLoadScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for TokenLoadScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            *slot = match state(ctx, i) {
                Some(s) => 1.0 - (s.in_flight.tokens as f64).min(self.threshold) / self.threshold,
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
    use alloc::vec;

    #[test]
    fn in_flight_tokens_scale_linearly_to_the_threshold() {
        let s = built::<TokenLoadScorer>(r#"{"queueThresholdTokens": 1000}"#);
        let p = pool(vec![
            inflight(bare(1), 0, 0),
            inflight(bare(2), 3, 250),
            inflight(ep(3, 0, 0, 0.0), 9, 1000),
            inflight(bare(4), 9, 5000),
        ]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[1.0, 0.75, 0.0, 0.0]);
    }

    #[test]
    fn default_threshold_is_four_mebitokens() {
        let s = built::<TokenLoadScorer>("{}");
        let p = pool(vec![inflight(bare(1), 1, 1_048_576)]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.75]);
    }

    #[test]
    fn parameters() {
        let p: Params = params(r#"{"inFlightLoadProducerName": "x"}"#);
        assert_eq!(p.queue_threshold_tokens, DEFAULT_QUEUE_THRESHOLD_TOKENS);
        // ≤ 0: llm-d's default (the scheduler reports a warning).
        let s = built::<TokenLoadScorer>(r#"{"queueThresholdTokens": 0}"#);
        assert_eq!(s.threshold, DEFAULT_QUEUE_THRESHOLD_TOKENS as f64);
    }
}
