//! `prefix-cache-affinity-filter` (llm-d): when some endpoints probably hold most of the prompt, keep
//! only those, so the scorers that follow balance load among cache-warm endpoints instead of trading
//! cache hits for load.
//!
//! It reads the same prefix match as `prefix-cache-scorer` (see `crate::prefix` for how the two share the
//! index); because filters run before scorers, it is usually the filter that computes the match and the
//! scorer that reuses it.
//!
//! Its index is the one named by `prefixMatchInfoProducerName` (an `approx-prefix-cache-producer`, or a
//! `prefix-cache-scorer` that owns its index), else the only one configured, else its own.
//!
//! Defaults are llm-d v0.10's (threshold 0.8, no exploration, TTFT gate at 18 s, 15928 prefill tokens/s).
//! Differences from llm-d, on purpose:
//! - Exploration (skipping the gate with probability `explorationProbability`) draws its coin from an
//!   xxHash64 of the request id, the clock and the prompt size instead of a global RNG: the `Filter`
//!   trait has no RNG, and this keeps a pick a pure function of (snapshot, request, clock). With
//!   distinct request ids (Envoy's `x-request-id`) the coin is uniform across requests.
//! - The TTFT gate's only source is `prefillThroughput`: an endpoint's TTFT is estimated as
//!   `in-flight tokens / peakPrefillThroughput`. llm-d counts the uncached input tokens of requests in
//!   flight until their first response byte; our in-flight tokens are the gateway's estimate (input +
//!   expected output, until the response ends), so the estimate leans high for endpoints with long
//!   outputs in flight and the gate opens somewhat sooner. `latencyPredictor` needs llm-d's
//!   latency-predictor sidecars and is refused.

use crate::config::params::ParamError;
use crate::plugins::scorers::prefix_cache_scorer::{follow, FollowedIndex};
use crate::prefix::{prefix_match, record_destination, PrefixHandle};
use crate::scheduling::{
    BuildContext, CycleState, Filter, Plugin, PluginFactory, ProfileRunResult, SchedulingContext,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use xxhash_rust::xxh64::Xxh64;

pub const TYPE: &str = "prefix-cache-affinity-filter";

/// The only TTFT source this build supports.
const TTFT_SOURCE_PREFILL_THROUGHPUT: &str = "prefillThroughput";
/// Separates the exploration coin from every other use of xxHash64 on the same bytes.
const EXPLORATION_SEED: u64 = 0x6578_706c_6f72_6521; // "explore!"

/// `parameters` of a `prefix-cache-affinity-filter` entry (llm-d's names).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixCacheAffinityFilterParams {
    /// Endpoints whose prefix score is at least this are "sticky". At most 1; ≤ 0 disables the filter.
    pub affinity_threshold: f64,
    /// Probability of keeping every candidate regardless of affinity. In [0, 1].
    pub exploration_probability: f64,
    /// Break stickiness when the best sticky endpoint's estimated TTFT is worse than the best other
    /// endpoint's by more than this (ms). 0 = never break.
    #[serde(rename = "maxTTFTPenaltyMs")]
    pub max_ttft_penalty_ms: f64,
    /// Prefill tokens per second one endpoint sustains (llm-d's default, calibrated on H100).
    pub peak_prefill_throughput: f64,
    /// Only `prefillThroughput` is available.
    pub ttft_source: Option<String>,
    /// Name of the plugin owning the prefix index to read; by default the only one configured.
    pub prefix_match_info_producer_name: Option<String>,
    /// llm-d: the predicted-latency-producer read with `ttftSource: latencyPredictor` (refused here);
    /// unused with `prefillThroughput`, as in llm-d.
    pub latency_prediction_info_producer_name: Option<String>,
    /// llm-d: the inflight-load-producer to read; here in-flight load is always the gateway's own count.
    pub in_flight_load_producer_name: Option<String>,
}

impl Default for PrefixCacheAffinityFilterParams {
    fn default() -> PrefixCacheAffinityFilterParams {
        PrefixCacheAffinityFilterParams {
            affinity_threshold: 0.80,
            exploration_probability: 0.0,
            max_ttft_penalty_ms: 18_000.0,
            peak_prefill_throughput: 15_928.0,
            ttft_source: None,
            prefix_match_info_producer_name: None,
            latency_prediction_info_producer_name: None,
            in_flight_load_producer_name: None,
        }
    }
}

/// Narrows candidates to the cache-warm ones (see the module documentation).
pub struct PrefixCacheAffinityFilter {
    params: PrefixCacheAffinityFilterParams,
    handle: PrefixHandle,
    /// True when the filter owns its index (no prefix scorer configured) and so must learn from picks.
    records: bool,
}

impl PluginFactory for PrefixCacheAffinityFilter {
    const TYPE: &'static str = TYPE;
    type Params = PrefixCacheAffinityFilterParams;

    /// Shares the index owned by the plugin named `prefixMatchInfoProducerName` (else the only one),
    /// which records the picks; without an index owner it keeps an index of its own, with GIE's default
    /// hashing, and records the picks itself.
    fn build(
        params: PrefixCacheAffinityFilterParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<PrefixCacheAffinityFilter, ParamError> {
        check(&params)?;
        let producer = params.prefix_match_info_producer_name.as_deref();
        let FollowedIndex { handle, records } = follow(ctx, producer)?;
        Ok(PrefixCacheAffinityFilter { params, handle, records })
    }
}

/// The ranges serde does not check (llm-d's rules).
fn check(p: &PrefixCacheAffinityFilterParams) -> Result<(), ParamError> {
    let err =
        |field: &str, expected: &str, got: f64| Err(ParamError::new(field, expected, Some(format!("{got}"))));
    if p.affinity_threshold > 1.0 {
        return err("affinityThreshold", "a number <= 1 (<= 0 disables the filter)", p.affinity_threshold);
    }
    if !(0.0..=1.0).contains(&p.exploration_probability) {
        return err("explorationProbability", "a number in [0, 1]", p.exploration_probability);
    }
    if !(p.max_ttft_penalty_ms >= 0.0 && p.max_ttft_penalty_ms.is_finite()) {
        return err("maxTTFTPenaltyMs", "a finite number >= 0", p.max_ttft_penalty_ms);
    }
    if !(p.peak_prefill_throughput >= 0.0 && p.peak_prefill_throughput.is_finite()) {
        return err("peakPrefillThroughput", "a finite number >= 0", p.peak_prefill_throughput);
    }
    if p.max_ttft_penalty_ms > 0.0 && p.peak_prefill_throughput == 0.0 {
        return err(
            "peakPrefillThroughput",
            "a number > 0 when maxTTFTPenaltyMs > 0",
            p.peak_prefill_throughput,
        );
    }
    match p.ttft_source.as_deref() {
        None | Some(TTFT_SOURCE_PREFILL_THROUGHPUT) => Ok(()),
        Some(other) => Err(ParamError::new(
            "ttftSource",
            "\"prefillThroughput\" (\"latencyPredictor\" needs llm-d's latency-predictor sidecars, which \
             wasm-epp does not run)",
            Some(format!("{other:?}")),
        )),
    }
}

impl PrefixCacheAffinityFilter {
    /// The index this filter reads: its producer's, or its own.
    pub fn handle(&self) -> &PrefixHandle {
        &self.handle
    }

    /// Estimated TTFT (ms) of an endpoint from the work the gateway has in flight there.
    fn ttft_ms(&self, ctx: &SchedulingContext<'_>, endpoint: usize) -> f64 {
        let tokens = ctx.pool.endpoints.get(endpoint).map_or(0, |e| e.in_flight.tokens);
        tokens as f64 / self.params.peak_prefill_throughput * 1000.0
    }

    fn best_ttft_ms(&self, ctx: &SchedulingContext<'_>, endpoints: &[usize]) -> f64 {
        endpoints.iter().map(|&e| self.ttft_ms(ctx, e)).fold(f64::INFINITY, f64::min)
    }
}

/// A uniform number in [0, 1) determined by the request and the clock (see the module documentation).
pub fn exploration_roll(ctx: &SchedulingContext<'_>) -> f64 {
    let mut h = Xxh64::new(EXPLORATION_SEED);
    h.update(ctx.request.request_id.as_bytes());
    h.update(&ctx.now_ms.to_le_bytes());
    h.update(&(ctx.request.prompt_bytes as u64).to_le_bytes());
    (h.digest() >> 11) as f64 / (1u64 << 53) as f64
}

impl Filter for PrefixCacheAffinityFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, state: &mut CycleState, candidates: &mut Vec<usize>) {
        let threshold = self.params.affinity_threshold;
        if candidates.len() <= 1 || threshold <= 0.0 {
            return;
        }
        if exploration_roll(ctx) < self.params.exploration_probability {
            return;
        }
        let Some(m) = prefix_match(ctx, state, &self.handle) else { return };
        let (sticky, other): (Vec<usize>, Vec<usize>) =
            candidates.iter().partition(|&&c| m.score(c) >= threshold);
        if sticky.is_empty() {
            return;
        }
        let max_penalty = self.params.max_ttft_penalty_ms;
        if max_penalty > 0.0
            && !other.is_empty()
            && self.best_ttft_ms(ctx, &sticky) - self.best_ttft_ms(ctx, &other) > max_penalty
        {
            return;
        }
        *candidates = sticky;
    }
}

impl Plugin for PrefixCacheAffinityFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }

    fn pre_request(
        &mut self,
        ctx: &SchedulingContext<'_>,
        state: &CycleState,
        destination: &[ProfileRunResult],
    ) {
        if self.records {
            record_destination(ctx, state, destination, &self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointState, InFlight, PoolSnapshot};
    use crate::plugins::scorers::prefix_cache_scorer::PrefixCacheScorer;
    use crate::plugins::test_support::{build_err, built, built_with};
    use crate::prefix::{block_hashes, PrefixMatch, PREFIX_MATCH_STATE_KEY};
    use crate::scheduling::{SchedulingRequest, Scorer, SharedState};
    use alloc::string::ToString;
    use alloc::vec;

    const ADDRS: [&str; 3] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"];
    const NO_EXPLORATION: &str = r#"{"explorationProbability": 0}"#;

    fn pool(in_flight_tokens: [u64; 3]) -> PoolSnapshot {
        let endpoints = ADDRS
            .iter()
            .zip(in_flight_tokens)
            .map(|(a, tokens)| EndpointState {
                in_flight: InFlight { requests: 1, tokens, ..InFlight::default() },
                ..EndpointState::new(Endpoint::new(*a))
            })
            .collect();
        PoolSnapshot { endpoints, ..PoolSnapshot::default() }
    }

    /// A prefix scorer built into `shared`: every filter built from `shared` after it reads its index.
    fn producer(shared: &mut SharedState) -> PrefixCacheScorer {
        built_with::<PrefixCacheScorer>("{}", shared)
    }

    /// Prompt of 10 blocks; endpoint 0 holds all, 1 holds 9 (0.9), 2 holds 5 (0.5).
    fn warmed(handle: &PrefixHandle, prompt: &[u8]) {
        let hashes = block_hashes("m", None, prompt, 64, 256);
        let mut ix = handle.index_mut().unwrap();
        ix.record(ADDRS[0], &hashes, 1000);
        ix.record(ADDRS[1], &hashes[..9], 1000);
        ix.record(ADDRS[2], &hashes[..5], 1000);
    }

    fn run(f: &PrefixCacheAffinityFilter, pool: &PoolSnapshot, req: &SchedulingRequest<'_>) -> Vec<usize> {
        let ctx = SchedulingContext { request: req, pool, now_ms: 7 };
        let mut c = vec![0, 1, 2];
        f.filter(&ctx, &mut CycleState::default(), &mut c);
        c
    }

    #[test]
    fn keeps_endpoints_at_or_above_the_threshold() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let f = built::<PrefixCacheAffinityFilter>(NO_EXPLORATION);
        assert_eq!(run(&f, &pool([0; 3]), &req), [0, 1, 2]); // nothing cached: keep all
        warmed(f.handle(), &prompt);
        assert_eq!(run(&f, &pool([0; 3]), &req), [0, 1]);

        let mut shared = SharedState::default();
        let scorer = producer(&mut shared);
        warmed(scorer.handle(), &prompt);
        let strict = r#"{"affinityThreshold": 1, "explorationProbability": 0}"#;
        let f2 = built_with::<PrefixCacheAffinityFilter>(strict, &mut shared);
        assert_eq!(run(&f2, &pool([0; 3]), &req), [0]);
        let off = r#"{"affinityThreshold": 0, "explorationProbability": 0}"#;
        let f3 = built_with::<PrefixCacheAffinityFilter>(off, &mut shared);
        assert_eq!(run(&f3, &pool([0; 3]), &req), [0, 1, 2]);
    }

    #[test]
    fn keeps_all_when_no_endpoint_passes() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let f = built::<PrefixCacheAffinityFilter>(NO_EXPLORATION);
        let hashes = block_hashes("m", None, &prompt, 64, 256);
        f.handle().index_mut().unwrap().record(ADDRS[1], &hashes[..7], 1000); // 0.7 < 0.8
        assert_eq!(run(&f, &pool([0; 3]), &req), [0, 1, 2]);
        // A short prompt has no blocks, so no endpoint is sticky.
        let short = SchedulingRequest { prefix_input: b"hi", ..req };
        assert_eq!(run(&f, &pool([0; 3]), &short), [0, 1, 2]);
    }

    #[test]
    fn exploration_skips_the_gate_for_about_one_request_in_a_hundred() {
        let prompt = vec![b'x'; 640];
        let mut shared = SharedState::default();
        let scorer = producer(&mut shared);
        warmed(scorer.handle(), &prompt);
        let f = built_with::<PrefixCacheAffinityFilter>(r#"{"explorationProbability": 0.01}"#, &mut shared);
        let pool = pool([0; 3]);
        let mut skipped = 0;
        for i in 0..10_000 {
            let id = format!("req-{i}");
            let req = SchedulingRequest {
                request_id: &id,
                model: "m",
                prefix_input: &prompt,
                ..Default::default()
            };
            let first = run(&f, &pool, &req);
            assert_eq!(run(&f, &pool, &req), first, "same request and clock, same decision");
            if first.len() == 3 {
                skipped += 1;
            }
        }
        assert!((60..=140).contains(&skipped), "{skipped} of 10000 explored");
        let f = built_with::<PrefixCacheAffinityFilter>(r#"{"explorationProbability": 1}"#, &mut shared);
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        assert_eq!(run(&f, &pool, &req), [0, 1, 2]);
    }

    #[test]
    fn ttft_gate_breaks_stickiness_only_when_enabled_and_exceeded() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let mut shared = SharedState::default();
        let scorer = producer(&mut shared);
        warmed(scorer.handle(), &prompt);
        let gated =
            r#"{"maxTTFTPenaltyMs": 1000, "peakPrefillThroughput": 1000, "explorationProbability": 0}"#;
        let f = built_with::<PrefixCacheAffinityFilter>(gated, &mut shared);
        // Best sticky endpoint: 1500 ms of queued prefill; the cold one: 0 ms → 1500 > 1000, keep all.
        assert_eq!(run(&f, &pool([3000, 1500, 0]), &req), [0, 1, 2]);
        // 900 ms penalty is tolerated.
        assert_eq!(run(&f, &pool([3000, 900, 0]), &req), [0, 1]);
        // With the gate off it sticks whatever the load; llm-d's default gate (18 s at 15928 tokens/s)
        // tolerates 94 ms.
        let off = r#"{"maxTTFTPenaltyMs": 0, "explorationProbability": 0}"#;
        let f = built_with::<PrefixCacheAffinityFilter>(off, &mut shared);
        assert_eq!(run(&f, &pool([3000, 1500, 0]), &req), [0, 1]);
        let f = built_with::<PrefixCacheAffinityFilter>("{}", &mut shared);
        assert_eq!(run(&f, &pool([3000, 1500, 0]), &req), [0, 1]);
    }

    #[test]
    fn filter_and_scorer_share_one_match_per_cycle() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let pool = pool([0; 3]);
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let mut shared = SharedState::default();
        let mut scorer = producer(&mut shared);
        let mut filter = built_with::<PrefixCacheAffinityFilter>(NO_EXPLORATION, &mut shared);
        assert!(filter.handle().same_index(scorer.handle()));
        assert_eq!(shared.prefix_indexes().count(), 1, "one index, reached once");
        warmed(scorer.handle(), &prompt);

        let mut state = CycleState::default();
        let mut candidates = vec![0, 1, 2];
        filter.filter(&ctx, &mut state, &mut candidates);
        assert_eq!(candidates, [0, 1]);
        assert_eq!(state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY).unwrap().matched_blocks, [10, 9, 5]);
        let mut scores = [0.0; 2];
        scorer.score(&ctx, &mut state, &candidates, &mut scores);
        assert_eq!(scores, [1.0, 0.9]);

        // Only the scorer learns from the pick; the filter sharing its index does not record twice.
        let dest = [ProfileRunResult { profile: String::from("default"), targets: vec![2] }];
        filter.pre_request(&ctx, &state, &dest);
        assert!(!scorer.index().unwrap().contains(ADDRS[2], state_hash(&state, 9)));
        scorer.pre_request(&ctx, &state, &dest);
        assert!(scorer.index().unwrap().contains(ADDRS[2], state_hash(&state, 9)));
    }

    fn state_hash(state: &CycleState, i: usize) -> u64 {
        state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY).unwrap().hashes[i]
    }

    #[test]
    fn standalone_filter_learns_from_picks() {
        let prompt = vec![b'y'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let pool = pool([0; 3]);
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let mut shared = SharedState::default();
        let mut f = built_with::<PrefixCacheAffinityFilter>(NO_EXPLORATION, &mut shared);
        assert!(
            shared.prefix_index(TYPE).is_some_and(|own| own.same_index(f.handle())),
            "kept for the scheduler"
        );
        let mut state = CycleState::default();
        let mut c = vec![0, 1, 2];
        f.filter(&ctx, &mut state, &mut c);
        assert_eq!(c, [0, 1, 2]);
        let dest = [ProfileRunResult { profile: String::from("default"), targets: vec![2] }];
        f.pre_request(&ctx, &state, &dest);
        assert_eq!(run(&f, &pool, &req), [2]);
    }

    #[test]
    fn producers_are_found_by_name_or_as_the_only_one() {
        let mut shared = SharedState::default();
        built_with::<PrefixCacheScorer>("{}", &mut shared);
        let named = r#"{"prefixMatchInfoProducerName": "prefix-cache-scorer"}"#;
        let f = built_with::<PrefixCacheAffinityFilter>(named, &mut shared);
        assert!(shared.prefix_index("prefix-cache-scorer").is_some_and(|h| h.same_index(f.handle())));
        let unknown = r#"{"prefixMatchInfoProducerName": "nope"}"#;
        let err =
            crate::plugins::test_support::try_build_with::<PrefixCacheAffinityFilter>(unknown, &mut shared);
        assert_eq!(
            err.err().map(|e| e.to_string()).as_deref(),
            Some(
                r#"prefixMatchInfoProducerName: expected the name of an approx-prefix-cache-producer or prefix-cache-scorer plugin that owns a prefix index, got "nope""#
            )
        );
    }

    #[test]
    fn params_are_checked_with_a_message_naming_the_field() {
        let f = built::<PrefixCacheAffinityFilter>(
            r#"{"affinityThreshold": 0.9, "explorationProbability": 0, "maxTTFTPenaltyMs": 5000,
                "peakPrefillThroughput": 20000, "ttftSource": "prefillThroughput"}"#,
        );
        assert_eq!(f.params.max_ttft_penalty_ms, 5000.0);
        assert_eq!(
            built::<PrefixCacheAffinityFilter>("{}").params,
            PrefixCacheAffinityFilterParams::default()
        );
        assert_eq!(
            build_err::<PrefixCacheAffinityFilter>(r#"{"affinityThreshold": 1.5}"#).to_string(),
            "affinityThreshold: expected a number <= 1 (<= 0 disables the filter), got 1.5"
        );
        let err = build_err::<PrefixCacheAffinityFilter>(r#"{"ttftSource": "latencyPredictor"}"#);
        assert_eq!(
            err.to_string(),
            r#"ttftSource: expected "prefillThroughput" ("latencyPredictor" needs llm-d's latency-predictor sidecars, which wasm-epp does not run), got "latencyPredictor""#
        );
        // As in llm-d: a throughput of 0 is an error only when the gate needs it; a negative threshold
        // disables the filter.
        let err = build_err::<PrefixCacheAffinityFilter>(r#"{"peakPrefillThroughput": 0}"#);
        assert_eq!(
            err.to_string(),
            "peakPrefillThroughput: expected a number > 0 when maxTTFTPenaltyMs > 0, got 0"
        );
        built::<PrefixCacheAffinityFilter>(r#"{"peakPrefillThroughput": 0, "maxTTFTPenaltyMs": 0}"#);
        built::<PrefixCacheAffinityFilter>(r#"{"affinityThreshold": -1}"#);
        // llm-d's producer names for the other inputs are accepted.
        built::<PrefixCacheAffinityFilter>(
            r#"{"latencyPredictionInfoProducerName": "p", "inFlightLoadProducerName": "q"}"#,
        );
        assert_eq!(build_err::<PrefixCacheAffinityFilter>(r#"{"threshold": 1}"#).field, "threshold");
    }

    #[test]
    fn a_single_candidate_is_left_alone() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let pool = pool([0; 3]);
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let f = built::<PrefixCacheAffinityFilter>(NO_EXPLORATION);
        let mut state = CycleState::default();
        let mut c = vec![2];
        f.filter(&ctx, &mut state, &mut c);
        assert_eq!(c, [2]);
    }
}
