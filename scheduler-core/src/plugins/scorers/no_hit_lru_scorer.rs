//! `no-hit-lru-scorer` (llm-d): spreads cold requests, those whose prompt no candidate has cached, over
//! the endpoints that were least recently given one, so that new prefixes (each the start of a future
//! cache-warm conversation) do not pile up on the same endpoint while warm requests follow their cache.
//!
//! Score, for a cold request over `n` candidates: never-given endpoints first (candidate order), then
//! the others from least to most recently given; rank `r` scores `max(0, 1 − r / (n − 1))` (one
//! candidate: 1). A warm request (some candidate holds at least one block) scores 0.5 everywhere. After
//! a cold request, the first target of each profile result (the primary and, with P/D, the prefill pick)
//! becomes the most recently given.
//!
//! Which prompt is cached comes from the prefix index named by `prefixMatchInfoProducerName` (see
//! [`follow`]). Difference from llm-d: the recency list is per decision point (each Envoy worker keeps
//! its own), as llm-d's is per EPP replica.

use crate::config::params::ParamError;
use crate::plugins::scorers::prefix_cache_scorer::{follow, FollowedIndex};
use crate::prefix::{prefix_match, record_destination, PrefixHandle};
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileRunResult, SchedulingContext, Scorer,
};
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "no-hit-lru-scorer";

/// CycleState key: whether this cycle's request was cold when scored (read in `pre_request`).
const COLD_STATE_KEY: &str = "no-hit-lru/cold";
/// llm-d's default recency list size.
const DEFAULT_LRU_SIZE: usize = 1024;

/// `parameters` of a `no-hit-lru-scorer` entry (llm-d's names).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NoHitLruScorerParams {
    /// Endpoints remembered (≤ 0 or absent: 1024).
    pub lru_size: Option<i64>,
    /// The plugin owning the prefix index to read; by default the only one configured.
    pub prefix_match_info_producer_name: Option<String>,
    /// Legacy (llm-d before v0.10), ignored as in llm-d.
    pub prefix_plugin_type: Option<String>,
    /// Legacy (llm-d before v0.10), ignored as in llm-d.
    pub prefix_plugin_name: Option<String>,
}

/// See the module documentation.
pub struct NoHitLruScorer {
    handle: PrefixHandle,
    /// True when the index is this scorer's own (no index owner configured), so it records the picks.
    records: bool,
    capacity: usize,
    /// Endpoint addresses, least recently given a cold request first.
    recency: Vec<String>,
}

impl PluginFactory for NoHitLruScorer {
    const TYPE: &'static str = TYPE;
    type Params = NoHitLruScorerParams;

    fn build(params: NoHitLruScorerParams, ctx: &mut BuildContext<'_>) -> Result<NoHitLruScorer, ParamError> {
        for (field, given) in [
            ("prefixPluginType", params.prefix_plugin_type.is_some()),
            ("prefixPluginName", params.prefix_plugin_name.is_some()),
        ] {
            if given {
                let message =
                    "ignored, as in llm-d v0.10 (prefixMatchInfoProducerName names the prefix index)";
                ctx.warn(field, message);
            }
        }
        let capacity = match params.lru_size.map(usize::try_from) {
            Some(Ok(n)) if n > 0 => n,
            _ => DEFAULT_LRU_SIZE,
        };
        let FollowedIndex { handle, records } =
            follow(ctx, params.prefix_match_info_producer_name.as_deref())?;
        Ok(NoHitLruScorer { handle, records, capacity, recency: Vec::new() })
    }
}

impl NoHitLruScorer {
    /// The index this scorer reads.
    pub fn handle(&self) -> &PrefixHandle {
        &self.handle
    }

    fn given(&mut self, address: &str) {
        self.recency.retain(|a| a != address);
        self.recency.push(String::from(address));
        if self.recency.len() > self.capacity {
            let excess = self.recency.len() - self.capacity;
            self.recency.drain(..excess);
        }
    }
}

impl Scorer for NoHitLruScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let cold = prefix_match(ctx, state, &self.handle).is_none_or(|m| m.is_cold(candidates));
        state.insert(COLD_STATE_KEY, cold);
        if !cold {
            scores.iter_mut().for_each(|s| *s = 0.5);
            return;
        }
        let n = candidates.len();
        if n <= 1 {
            scores.iter_mut().for_each(|s| *s = 1.0);
            return;
        }
        let position = |c: usize| {
            let address = ctx.pool.endpoints.get(c).map(|e| e.address())?;
            self.recency.iter().position(|a| a == address)
        };
        let never_given = candidates.iter().filter(|&&c| position(c).is_none()).count();
        let mut next_never_given = 0;
        for (score, &c) in scores.iter_mut().zip(candidates) {
            let rank = match position(c) {
                Some(p) => never_given + p,
                None => {
                    next_never_given += 1;
                    next_never_given - 1
                }
            };
            *score = (1.0 - rank as f64 / (n - 1) as f64).max(0.0);
        }
    }
}

impl Plugin for NoHitLruScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }

    fn pre_request(
        &mut self,
        ctx: &SchedulingContext<'_>,
        state: &CycleState,
        destination: &[ProfileRunResult],
    ) {
        if state.get::<bool>(COLD_STATE_KEY) == Some(&true) {
            for i in destination.iter().filter_map(|r| r.targets.first().copied()) {
                if let Some(e) = ctx.pool.endpoints.get(i) {
                    self.given(e.address());
                }
            }
        }
        if self.records {
            record_destination(ctx, state, destination, &self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointState, PoolSnapshot};
    use crate::plugins::producers::approx_prefix_cache_producer::ApproxPrefixCacheProducer;
    use crate::plugins::test_support::{build_err, built, built_with};
    use crate::scheduling::{SchedulingRequest, SharedState};
    use alloc::vec;

    const ADDRS: [&str; 4] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"];

    fn pool() -> PoolSnapshot {
        PoolSnapshot {
            endpoints: ADDRS.iter().map(|a| EndpointState::new(Endpoint::new(*a))).collect(),
            ..PoolSnapshot::default()
        }
    }

    /// Scores the request, then routes it to `pick` (as primary), as the scheduler would.
    fn route(s: &mut NoHitLruScorer, pool: &PoolSnapshot, prompt: &[u8], pick: usize) -> Vec<f64> {
        let req = SchedulingRequest { model: "m", prefix_input: prompt, ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &req, pool, now_ms: 0 };
        let mut state = CycleState::default();
        let mut scores = vec![-1.0; 4];
        s.score(&ctx, &mut state, &[0, 1, 2, 3], &mut scores);
        s.pre_request(
            &ctx,
            &state,
            &[ProfileRunResult { profile: String::from("default"), targets: vec![pick] }],
        );
        scores
    }

    #[test]
    fn cold_requests_go_round_the_least_recently_given() {
        let pool = pool();
        let mut s = built::<NoHitLruScorer>("{}");
        let third = 1.0 / 3.0;
        // Nothing given yet: candidate order.
        assert_eq!(route(&mut s, &pool, &[b'a'; 64], 2), [1.0, 1.0 - third, 1.0 - 2.0 * third, 0.0]);
        // 2 is now the most recent: never-given 0, 1, 3 first.
        let after = route(&mut s, &pool, &[b'b'; 64], 0);
        assert_eq!(after[2], 0.0);
        assert_eq!(after[0], 1.0);
        // Given 2 then 0: 1 and 3 never given, then 2 (older), then 0.
        let scores = route(&mut s, &pool, &[b'c'; 64], 1);
        assert_eq!(scores[1], 1.0);
        assert_eq!(scores[3], 1.0 - third);
        assert_eq!(scores[2], 1.0 - 2.0 * third);
        assert_eq!(scores[0], 0.0);
    }

    #[test]
    fn warm_requests_score_neutral_and_are_not_remembered() {
        let pool = pool();
        let mut s = built::<NoHitLruScorer>("{}");
        let prompt = [b'w'; 64 * 2];
        route(&mut s, &pool, &prompt, 3); // cold: recorded in the scorer's own index, 3 most recent
        assert_eq!(route(&mut s, &pool, &prompt, 3), [0.5; 4], "3 now holds the prompt");
        assert_eq!(s.recency, ["10.0.0.4:8000"]);
    }

    #[test]
    fn reads_the_producers_index_without_recording_in_it() {
        let mut shared = SharedState::default();
        let producer = built_with::<ApproxPrefixCacheProducer>("{}", &mut shared);
        let s = built_with::<NoHitLruScorer>(r#"{"lruSize": 2048}"#, &mut shared);
        assert!(s.handle().same_index(producer.handle()) && !s.records);
        assert_eq!(s.capacity, 2048);
        let named = r#"{"prefixMatchInfoProducerName": "approx-prefix-cache-producer"}"#;
        assert!(built_with::<NoHitLruScorer>(named, &mut shared).handle().same_index(producer.handle()));
        let err = crate::plugins::test_support::try_build_with::<NoHitLruScorer>(
            r#"{"prefixMatchInfoProducerName": "nope"}"#,
            &mut shared,
        );
        assert_eq!(err.err().map(|e| e.field), Some(String::from("prefixMatchInfoProducerName")));
    }

    #[test]
    fn recency_list_is_bounded_and_legacy_params_are_accepted() {
        let pool = pool();
        let mut s = built::<NoHitLruScorer>(
            r#"{"lruSize": 2, "prefixPluginType": "prefix-cache-scorer", "prefixPluginName": "x"}"#,
        );
        for (i, p) in [b'a', b'b', b'c'].iter().enumerate() {
            route(&mut s, &pool, &[*p; 8], i);
        }
        assert_eq!(s.recency, ["10.0.0.2:8000", "10.0.0.3:8000"]);
        assert_eq!(built::<NoHitLruScorer>(r#"{"lruSize": 0}"#).capacity, 1024);
        assert_eq!(build_err::<NoHitLruScorer>(r#"{"lruSizes": 1}"#).field, "lruSizes");
    }

    #[test]
    fn a_single_candidate_scores_one() {
        let pool = pool();
        let s = built::<NoHitLruScorer>("{}");
        let req = SchedulingRequest { model: "m", prefix_input: b"x", ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let mut scores = [0.0];
        s.score(&ctx, &mut CycleState::default(), &[2], &mut scores);
        assert_eq!(scores, [1.0]);
    }

    /// llm-d's perf optimized-baseline: new prompts go round the idle endpoints instead of piling up on
    /// one, and a repeated prompt follows its cache.
    #[test]
    fn with_an_llm_d_configuration_new_prompts_spread_and_repeats_stick() {
        use crate::rng::Rng;
        use crate::scheduling::pipeline::Scheduler;
        let mut s = Scheduler::from_json(
            r#"{"plugins": [{"type": "approx-prefix-cache-producer", "parameters": {"maxPrefixTokensToMatch": 100000}},
                            {"type": "prefix-cache-scorer"}, {"type": "no-hit-lru-scorer"}],
                "schedulingProfiles": [{"name": "default", "plugins": [
                    {"pluginRef": "prefix-cache-scorer", "weight": 3}, {"pluginRef": "no-hit-lru-scorer", "weight": 2}]}]}"#,
        )
        .unwrap();
        let pool = pool();
        let prompts: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 1024]).collect();
        let mut picks = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let req = SchedulingRequest { model: "m", prefix_input: prompt, ..SchedulingRequest::default() };
            let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
            let r = s.schedule(&ctx, &[0, 1, 2, 3], &mut Rng::new(i as u64)).unwrap();
            picks.push(r.targets.first().copied().unwrap());
        }
        picks.sort_unstable();
        assert_eq!(picks, [0, 1, 2, 3], "four new prompts, four endpoints");
        let req = SchedulingRequest { model: "m", prefix_input: &prompts[2], ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let first = s.schedule(&ctx, &[0, 1, 2, 3], &mut Rng::new(9)).unwrap().targets;
        let again = s.schedule(&ctx, &[0, 1, 2, 3], &mut Rng::new(10)).unwrap().targets;
        assert_eq!(first.first(), again.first());
    }
}
