//! `prefill-backlog-scorer` (ours, not in GIE/llm-d): prefers the endpoint where this request's first
//! token would come soonest, judged by the prompt tokens queued for prefill ahead of it.
//!
//! A server computes a prompt's KV cache (prefill) before it produces the first token, and it works
//! through its queued prompts in turn, so a request's time to first token grows with the prompt tokens
//! still waiting there. Request counts hide that: one 30,000-token prompt weighs as much as one 300-token
//! question. The gateway knows those tokens for what it sent: every request it routed carries its prompt
//! estimate until its first token comes back (its first streamed response chunk; a response that is not
//! streamed only when it is complete, see `InFlight::awaiting_first_token`). Across decision points
//! the count is as fresh as the in-flight counts (other workers about a millisecond late, a first token
//! with that worker's next write, within its 50 ms tick; other gateway replicas not at all); what other
//! gateways send shows only in the next scrape, through the load scorers.
//!
//! # Formula
//!
//! For each candidate `e`:
//! - `backlog(e)`: the prompt tokens this gateway has sent to `e` that await their first token, each
//!   request counted less the prefix the prefix index said `e` held when it was routed (its `uncached`
//!   term below, as the picker decided it; the whole prompt without a prefix plugin);
//! - with `uncached`, plus this request's own prefill there, `max(0, input − cached(e))`: its estimated
//!   prompt tokens (bytes / 4) less the prefix this decision point's prefix index says `e` holds (the
//!   index of the `prefix-cache-scorer` named by `prefixMatchInfoProducerName`, or the only one; without
//!   one, an index of the scorer's own with GIE's default hashing, as `prefix-owner-scorer` keeps);
//! - `cost(e)` is their sum; with `T` = `thresholdTokens`:
//!   - `relative` (default): `score = 1 − min(1, (cost(e) − min cost) / T)`: the cheapest candidate
//!     scores 1 and a candidate `T` tokens behind it scores 0, so the scorer separates candidates even
//!     when every one of them is busy;
//!   - otherwise `score = 1 − min(cost(e), T) / T`: an idle endpoint scores 1 and one with `T` tokens to
//!     prefill scores 0.
//!
//! A candidate without an endpoint state scores 0.
//!
//! # Measured
//!
//! In the quality simulator's many-gateway grid (`docs/bench/many-gateways.md`), adding this scorer at
//! weight 4 to `envoy-config/scheduling/recommended.json` with `T` = 32,768 cut p90 TTFT on trace replay
//! by 21–27 % with one decision point and 1–9 % with four gateways of four workers, and up to 59 % with a
//! slowed pod, leaving even pods on the synthetic workloads level. A term for queued requests the gateway
//! did not send (the server's `waiting` count less its own) did not help, and needs the queued prompt
//! lengths, which vLLM does not report: it is not offered.

use crate::config::params::{positive_count, ParamError};
use crate::plugins::candidates::state;
use crate::plugins::scorers::prefix_cache_scorer::{follow, FollowedIndex};
use crate::prefix::{prefix_match, record_destination, PrefixHandle};
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileRunResult, SchedulingContext, Scorer,
};
use alloc::string::String;
use serde::Deserialize;

pub const TYPE: &str = "prefill-backlog-scorer";

/// `parameters` of a `prefill-backlog-scorer` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefillBacklogScorerParams {
    /// Prompt tokens of prefill at which a candidate scores 0: behind the cheapest candidate with
    /// `relative`, in all otherwise. An integer > 0. Default 32768.
    #[serde(deserialize_with = "positive_count")]
    pub threshold_tokens: usize,
    /// Score the cost above the cheapest candidate's rather than the cost itself. Default true.
    pub relative: bool,
    /// Add this request's own uncached prompt tokens on each candidate (prefix index). Default true.
    pub uncached: bool,
    /// With `uncached`: name of the `prefix-cache-scorer` (or `approx-prefix-cache-producer`) whose
    /// index to read; by default the only one configured.
    pub prefix_match_info_producer_name: Option<String>,
}

impl Default for PrefillBacklogScorerParams {
    fn default() -> PrefillBacklogScorerParams {
        PrefillBacklogScorerParams {
            threshold_tokens: 32_768,
            relative: true,
            uncached: true,
            prefix_match_info_producer_name: None,
        }
    }
}

/// Scores candidates by the prompt tokens they must prefill before this request's first token (see the
/// module documentation).
pub struct PrefillBacklogScorer {
    params: PrefillBacklogScorerParams,
    /// With `uncached`: the prefix index read, and whether the scorer owns it (and so records picks).
    index: Option<FollowedIndex>,
}

impl PluginFactory for PrefillBacklogScorer {
    const TYPE: &'static str = TYPE;
    type Params = PrefillBacklogScorerParams;

    fn build(
        params: PrefillBacklogScorerParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<PrefillBacklogScorer, ParamError> {
        let index = match params.uncached {
            true => Some(follow(ctx, params.prefix_match_info_producer_name.as_deref())?),
            false => None,
        };
        Ok(PrefillBacklogScorer { params, index })
    }
}

impl PrefillBacklogScorer {
    /// `cost(e)` of pool endpoint `i`: its backlog plus, given `own(i)`, this request's prefill there;
    /// `None` without an endpoint state.
    fn cost(&self, ctx: &SchedulingContext<'_>, i: usize, own: &impl Fn(usize) -> u64) -> Option<u64> {
        let s = state(ctx, i)?;
        Some(s.in_flight.awaiting_first_token.saturating_add(own(i)))
    }
}

impl Scorer for PrefillBacklogScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        cycle: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let input = ctx.request.estimated_input_tokens();
        let handle: Option<&PrefixHandle> = self.index.as_ref().map(|f| &f.handle);
        let found = match handle {
            Some(h) => prefix_match(ctx, cycle, h),
            None => None,
        };
        let own = |i: usize| -> u64 {
            match (handle, found) {
                (None, _) => 0,
                (Some(_), None) => input,
                (Some(_), Some(m)) => input.saturating_sub(m.matched_tokens(i)),
            }
        };
        let threshold = self.params.threshold_tokens as f64;
        let floor = match self.params.relative {
            true => candidates.iter().filter_map(|&i| self.cost(ctx, i, &own)).min().unwrap_or(0),
            false => 0,
        };
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            *slot = match self.cost(ctx, i, &own) {
                Some(c) => 1.0 - (c.saturating_sub(floor) as f64 / threshold).min(1.0),
                None => 0.0,
            };
        }
    }
}

impl Plugin for PrefillBacklogScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }

    fn pre_request(
        &mut self,
        ctx: &SchedulingContext<'_>,
        cycle: &CycleState,
        destination: &[ProfileRunResult],
    ) {
        if let Some(FollowedIndex { handle, records: true }) = &self.index {
            record_destination(ctx, cycle, destination, handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::params::parse_params;
    use crate::model::PoolSnapshot;
    use crate::plugins::test_support::*;
    use crate::prefix::{block_hashes, BYTES_PER_TOKEN};
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;
    use alloc::vec::Vec;
    use serde_json::json;

    fn scorer(params: serde_json::Value) -> PrefillBacklogScorer {
        let params: PrefillBacklogScorerParams = parse_params(&params).unwrap();
        let mut shared = crate::scheduling::SharedState::default();
        let mut ctx = BuildContext::new(TYPE, &mut shared);
        PrefillBacklogScorer::build(params, &mut ctx).unwrap()
    }

    /// A pool of idle endpoints, endpoint `i` with `awaiting[i]` prompt tokens awaiting a first token.
    fn pool_awaiting(awaiting: &[u64]) -> PoolSnapshot {
        let mut p = pool((1..=awaiting.len() as u8).map(|i| ep(i, 0, 0, 0.0)).collect());
        for (e, &a) in p.endpoints.iter_mut().zip(awaiting) {
            e.in_flight.await_first_token(a);
        }
        p
    }

    fn scores(s: &PrefillBacklogScorer, p: &PoolSnapshot, prompt: &[u8]) -> Vec<f64> {
        let req = SchedulingRequest {
            model: "m",
            prefix_input: prompt,
            prompt_bytes: prompt.len(),
            ..SchedulingRequest::default()
        };
        let all: Vec<usize> = (0..p.endpoints.len()).collect();
        scores_of(s, p, &req, &all)
    }

    #[test]
    fn relative_scores_the_cost_above_the_cheapest_candidate() {
        let s = scorer(json!({"thresholdTokens": 1000, "uncached": false}));
        let p = pool_awaiting(&[5000, 5500, 7000]);
        assert_eq!(scores(&s, &p, b"hi"), vec![1.0, 0.5, 0.0]);
    }

    #[test]
    fn absolute_scores_the_cost_itself() {
        let s = scorer(json!({"thresholdTokens": 1000, "relative": false, "uncached": false}));
        let p = pool_awaiting(&[0, 250, 5000]);
        assert_eq!(scores(&s, &p, b"hi"), vec![1.0, 0.75, 0.0]);
    }

    #[test]
    fn uncached_adds_the_prompt_tokens_an_endpoint_does_not_hold() {
        let s = scorer(json!({"thresholdTokens": 1000}));
        let p = pool_awaiting(&[0, 0]);
        // 4,096 bytes = 1,024 tokens; endpoint 0 holds the first 512 tokens (8 of 16 64-token blocks).
        let prompt: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 23) as u8).collect();
        let hashes = block_hashes("m", None, &prompt, 16 * BYTES_PER_TOKEN, 256);
        let index = &s.index.as_ref().unwrap().handle;
        let half = hashes.len() / 2;
        index.index_mut().unwrap().record(p.endpoints[0].address(), &hashes[..half], 10_000);
        let got = scores(&s, &p, &prompt);
        // Costs: endpoint 0 prefills the 512 tokens it does not hold, endpoint 1 all 1,024.
        assert_eq!(half, 32);
        assert_eq!(got[0], 1.0);
        assert!((got[1] - (1.0 - 512.0 / 1000.0)).abs() < 1e-9, "{got:?}");
    }

    #[test]
    fn an_idle_pool_scores_every_candidate_alike() {
        let s = scorer(json!({}));
        assert_eq!(scores(&s, &pool_awaiting(&[0, 0, 0]), b"short prompt"), vec![1.0; 3]);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        for (params, field) in [
            (json!({"thresholdTokens": 0}), "thresholdTokens"),
            (json!({"thresholdTokens": -5}), "thresholdTokens"),
            (json!({"thresholdTokens": "many"}), "thresholdTokens"),
            (json!({"relative": 1}), "relative"),
            (json!({"others": false}), "others"),
        ] {
            let err = parse_params::<PrefillBacklogScorerParams>(&params).unwrap_err();
            assert_eq!(err.field, field, "{params}: {err}");
        }
    }
}
