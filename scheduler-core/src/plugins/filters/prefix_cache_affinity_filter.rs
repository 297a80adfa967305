//! `prefix-cache-affinity-filter` (llm-d): when some endpoints probably hold most of the prompt, keep
//! only those, so the scorers that follow balance load among cache-warm endpoints instead of trading
//! cache hits for load.
//!
//! It reads the same prefix match as `prefix-cache-scorer` (see `crate::prefix` for how the two share the
//! index); because filters run before scorers, it is usually the filter that computes the match and the
//! scorer that reuses it.
//!
//! Differences from llm-d, on purpose:
//! - Exploration (skipping the gate with probability `explorationProbability`, default 0.01) draws its
//!   coin from an xxHash64 of the request id, the clock and the prompt size instead of a global RNG: the
//!   `Filter` trait has no RNG, and this keeps a pick a pure function of (snapshot, request, clock). With
//!   distinct request ids (Envoy's `x-request-id`) the coin is uniform across requests.
//! - The TTFT load gate is off by default: llm-d's latency-predictor source does not exist here. Setting
//!   `maxTTFTPenaltyMs` > 0 enables llm-d's `prefillThroughput` source, which estimates an endpoint's
//!   TTFT as `in-flight tokens / peakPrefillThroughput`; our in-flight tokens are the gateway's estimate
//!   (input + expected output), so the estimate leans high for endpoints with long outputs in flight.

use crate::prefix::{prefix_match, record_destination, PrefixConfig, PrefixHandle};
use crate::scheduling::{CycleState, Filter, Plugin, ProfileRunResult, SchedulingContext};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::Deserialize;
use xxhash_rust::xxh64::Xxh64;

/// Configuration `type` of this plugin.
pub const PREFIX_CACHE_AFFINITY_FILTER_TYPE: &str = "prefix-cache-affinity-filter";

/// The only TTFT source this build supports.
const TTFT_SOURCE_PREFILL_THROUGHPUT: &str = "prefillThroughput";
/// Separates the exploration coin from every other use of xxHash64 on the same bytes.
const EXPLORATION_SEED: u64 = 0x6578_706c_6f72_6521; // "explore!"

/// `parameters` of a `prefix-cache-affinity-filter` entry (llm-d's names).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixCacheAffinityFilterParams {
    /// Endpoints whose prefix score is at least this are "sticky". In [0, 1]; 0 disables the filter.
    pub affinity_threshold: f64,
    /// Probability of keeping every candidate regardless of affinity. In [0, 1].
    pub exploration_probability: f64,
    /// Break stickiness when the best sticky endpoint's estimated TTFT is worse than the best other
    /// endpoint's by more than this (ms). 0 = never break (the default here).
    #[serde(rename = "maxTTFTPenaltyMs")]
    pub max_ttft_penalty_ms: f64,
    /// Prefill tokens per second one endpoint sustains (llm-d's default, calibrated on H100).
    pub peak_prefill_throughput: f64,
    /// Only `prefillThroughput` is available.
    pub ttft_source: Option<String>,
    /// Name of the `prefix-cache-scorer` whose index to use; the loader resolves it.
    pub prefix_match_info_producer_name: Option<String>,
}

impl Default for PrefixCacheAffinityFilterParams {
    fn default() -> PrefixCacheAffinityFilterParams {
        PrefixCacheAffinityFilterParams {
            affinity_threshold: 0.80,
            exploration_probability: 0.01,
            max_ttft_penalty_ms: 0.0,
            peak_prefill_throughput: 15_928.0,
            ttft_source: None,
            prefix_match_info_producer_name: None,
        }
    }
}

/// A parameter of `prefix-cache-affinity-filter` out of range.
#[derive(Clone, Debug, PartialEq)]
pub struct AffinityParamsError {
    pub field: &'static str,
    pub expected: &'static str,
    pub got: String,
}

impl fmt::Display for AffinityParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX_CACHE_AFFINITY_FILTER_TYPE}: parameter `{}` must be {}, got {}",
            self.field, self.expected, self.got
        )
    }
}

impl PrefixCacheAffinityFilterParams {
    pub fn validate(&self) -> Result<(), AffinityParamsError> {
        let err =
            |field, expected, got: f64| Err(AffinityParamsError { field, expected, got: got.to_string() });
        if !(0.0..=1.0).contains(&self.affinity_threshold) {
            return err("affinityThreshold", "in [0, 1]", self.affinity_threshold);
        }
        if !(0.0..=1.0).contains(&self.exploration_probability) {
            return err("explorationProbability", "in [0, 1]", self.exploration_probability);
        }
        if !(self.max_ttft_penalty_ms >= 0.0 && self.max_ttft_penalty_ms.is_finite()) {
            return err("maxTTFTPenaltyMs", "a finite number >= 0", self.max_ttft_penalty_ms);
        }
        if !(self.peak_prefill_throughput > 0.0 && self.peak_prefill_throughput.is_finite()) {
            return err("peakPrefillThroughput", "a finite number > 0", self.peak_prefill_throughput);
        }
        match self.ttft_source.as_deref() {
            None | Some(TTFT_SOURCE_PREFILL_THROUGHPUT) => Ok(()),
            Some(other) => Err(AffinityParamsError {
                field: "ttftSource",
                expected: "\"prefillThroughput\" (no latency predictor in this build)",
                got: alloc::format!("{other:?}"),
            }),
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

impl PrefixCacheAffinityFilter {
    /// A filter over the index of a `prefix-cache-scorer` (which records the picks).
    pub fn new(
        params: PrefixCacheAffinityFilterParams,
        handle: PrefixHandle,
    ) -> Result<PrefixCacheAffinityFilter, AffinityParamsError> {
        params.validate()?;
        Ok(PrefixCacheAffinityFilter { params, handle, records: false })
    }

    /// A filter with its own index and GIE's default hashing, for configurations without a prefix
    /// scorer; it records the picks itself.
    pub fn standalone(
        params: PrefixCacheAffinityFilterParams,
    ) -> Result<PrefixCacheAffinityFilter, AffinityParamsError> {
        let mut f = PrefixCacheAffinityFilter::new(params, PrefixHandle::new(PrefixConfig::default()))?;
        f.records = true;
        Ok(f)
    }

    /// Switches to a prefix scorer's index (the loader's wiring step); the scorer then records picks.
    pub fn share_index(&mut self, handle: PrefixHandle) {
        self.handle = handle;
        self.records = false;
    }

    pub fn params(&self) -> &PrefixCacheAffinityFilterParams {
        &self.params
    }

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
        PREFIX_CACHE_AFFINITY_FILTER_TYPE
    }

    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn core::any::Any> {
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
    use crate::plugins::scorers::prefix_cache_scorer::{PrefixCacheScorer, PrefixCacheScorerParams};
    use crate::prefix::{block_hashes, PrefixMatch, PREFIX_MATCH_STATE_KEY};
    use crate::scheduling::{SchedulingRequest, Scorer};
    use alloc::format;
    use alloc::vec;

    const ADDRS: [&str; 3] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"];

    fn pool(in_flight_tokens: [u64; 3]) -> PoolSnapshot {
        let endpoints = ADDRS
            .iter()
            .zip(in_flight_tokens)
            .map(|(a, tokens)| EndpointState {
                in_flight: InFlight { requests: 1, tokens },
                ..EndpointState::new(Endpoint::new(*a))
            })
            .collect();
        PoolSnapshot { endpoints, ..PoolSnapshot::default() }
    }

    fn no_exploration() -> PrefixCacheAffinityFilterParams {
        PrefixCacheAffinityFilterParams { exploration_probability: 0.0, ..Default::default() }
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
        let f = PrefixCacheAffinityFilter::standalone(no_exploration()).unwrap();
        assert_eq!(run(&f, &pool([0; 3]), &req), [0, 1, 2]); // nothing cached: keep all
        warmed(f.handle(), &prompt);
        assert_eq!(run(&f, &pool([0; 3]), &req), [0, 1]);
        let strict = PrefixCacheAffinityFilterParams { affinity_threshold: 1.0, ..no_exploration() };
        let f2 = PrefixCacheAffinityFilter::new(strict, f.handle().clone()).unwrap();
        assert_eq!(run(&f2, &pool([0; 3]), &req), [0]);
        let off = PrefixCacheAffinityFilterParams { affinity_threshold: 0.0, ..no_exploration() };
        let f3 = PrefixCacheAffinityFilter::new(off, f.handle().clone()).unwrap();
        assert_eq!(run(&f3, &pool([0; 3]), &req), [0, 1, 2]);
    }

    #[test]
    fn keeps_all_when_no_endpoint_passes() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let f = PrefixCacheAffinityFilter::standalone(no_exploration()).unwrap();
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
        let f = PrefixCacheAffinityFilter::standalone(PrefixCacheAffinityFilterParams::default()).unwrap();
        warmed(f.handle(), &prompt);
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
        let always = PrefixCacheAffinityFilterParams { exploration_probability: 1.0, ..Default::default() };
        let f = PrefixCacheAffinityFilter::new(always, f.handle().clone()).unwrap();
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        assert_eq!(run(&f, &pool, &req), [0, 1, 2]);
    }

    #[test]
    fn ttft_gate_breaks_stickiness_only_when_enabled_and_exceeded() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let gated = PrefixCacheAffinityFilterParams {
            max_ttft_penalty_ms: 1000.0,
            peak_prefill_throughput: 1000.0,
            ..no_exploration()
        };
        let f = PrefixCacheAffinityFilter::standalone(gated).unwrap();
        warmed(f.handle(), &prompt);
        // Best sticky endpoint: 1500 ms of queued prefill; the cold one: 0 ms → 1500 > 1000, keep all.
        assert_eq!(run(&f, &pool([3000, 1500, 0]), &req), [0, 1, 2]);
        // 900 ms penalty is tolerated.
        assert_eq!(run(&f, &pool([3000, 900, 0]), &req), [0, 1]);
        // The default (gate off) sticks whatever the load.
        let f = PrefixCacheAffinityFilter::new(no_exploration(), f.handle().clone()).unwrap();
        assert_eq!(run(&f, &pool([3000, 1500, 0]), &req), [0, 1]);
    }

    #[test]
    fn filter_and_scorer_share_one_match_per_cycle() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let pool = pool([0; 3]);
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let mut scorer = PrefixCacheScorer::new(&PrefixCacheScorerParams::default());
        let mut filter = PrefixCacheAffinityFilter::new(no_exploration(), scorer.handle().clone()).unwrap();
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
        let mut f = PrefixCacheAffinityFilter::standalone(no_exploration()).unwrap();
        let mut state = CycleState::default();
        let mut c = vec![0, 1, 2];
        f.filter(&ctx, &mut state, &mut c);
        assert_eq!(c, [0, 1, 2]);
        let dest = [ProfileRunResult { profile: String::from("default"), targets: vec![2] }];
        f.pre_request(&ctx, &state, &dest);
        assert_eq!(run(&f, &pool, &req), [2]);
    }

    #[test]
    fn params_are_checked_with_a_message_naming_the_field() {
        let p: PrefixCacheAffinityFilterParams = serde_json::from_str(
            r#"{"affinityThreshold": 0.9, "explorationProbability": 0, "maxTTFTPenaltyMs": 5000,
                "peakPrefillThroughput": 20000, "ttftSource": "prefillThroughput",
                "prefixMatchInfoProducerName": "prefix"}"#,
        )
        .unwrap();
        assert!(p.validate().is_ok());
        assert_eq!(p.max_ttft_penalty_ms, 5000.0);
        assert_eq!(
            serde_json::from_str::<PrefixCacheAffinityFilterParams>("{}").unwrap(),
            PrefixCacheAffinityFilterParams::default()
        );
        let bad = PrefixCacheAffinityFilterParams { affinity_threshold: 1.5, ..Default::default() };
        let msg = PrefixCacheAffinityFilter::standalone(bad).err().unwrap().to_string();
        assert_eq!(
            msg,
            "prefix-cache-affinity-filter: parameter `affinityThreshold` must be in [0, 1], got 1.5"
        );
        let bad = PrefixCacheAffinityFilterParams {
            ttft_source: Some(String::from("latencyPredictor")),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("ttftSource"));
        let bad = PrefixCacheAffinityFilterParams { peak_prefill_throughput: 0.0, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "peakPrefillThroughput");
        assert!(serde_json::from_str::<PrefixCacheAffinityFilterParams>(r#"{"threshold": 1}"#).is_err());
    }

    #[test]
    fn a_single_candidate_is_left_alone() {
        let prompt = vec![b'x'; 640];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..Default::default() };
        let pool = pool([0; 3]);
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let f = PrefixCacheAffinityFilter::standalone(no_exploration()).unwrap();
        let mut state = CycleState::default();
        let mut c = vec![2];
        f.filter(&ctx, &mut state, &mut c);
        assert_eq!(c, [2]);
    }
}
