//! `prefix-cache-scorer`: prefers endpoints that probably hold the longest part of the prompt in their
//! KV cache.
//!
//! Two generations of the same type, told apart by their parameters:
//! - llm-d v0.10: the scorer reads the index of an `approx-prefix-cache-producer`, the one named by
//!   `prefixMatchInfoProducerName`, or without that name the one named `approx-prefix-cache-producer`
//!   when configured; the producer records the picks. `matchLengthWeight` mixes in the absolute match
//!   length.
//! - GIE (and llm-d before v0.10): the scorer owns its index, hashed with its own parameters
//!   (`blockSizeTokens`...), and learns from every pick in `pre_request`. This is also what a bare
//!   `prefix-cache-scorer` does when no producer is configured, with GIE's defaults (16-token blocks, the
//!   first 256 blocks of the prompt); llm-d v0.10 would auto-create a producer with its own defaults
//!   (64-token blocks, up to 131072 tokens): declare `approx-prefix-cache-producer` to get those.
//!
//! The index and the per-request match live in `crate::prefix`. An index this scorer owns is offered to
//! the other readers (`prefix-cache-affinity-filter`, `prefix-owner-scorer`...), which find theirs with
//! [`follow`].

use crate::config::params::ParamError;
use crate::plugins::producers::approx_prefix_cache_producer::TYPE as DEFAULT_PRODUCER;
use crate::prefix::{
    prefix_match, record_destination, PrefixConfig, PrefixHandle, PrefixIndex, PrefixMatch, BYTES_PER_TOKEN,
    DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_LRU_CAPACITY_PER_SERVER, DEFAULT_MAX_PREFIX_BLOCKS,
    MAX_LRU_CAPACITY_PER_SERVER,
};
use crate::scheduling::{
    BuildContext, CycleState, LookupError, Plugin, PluginFactory, ProfileRunResult, SchedulingContext, Scorer,
};
use alloc::format;
use alloc::string::String;
use core::cell::{Ref, RefMut};
use serde::Deserialize;

pub const TYPE: &str = "prefix-cache-scorer";

/// llm-d's default `matchLengthScaleTokens`.
const DEFAULT_MATCH_LENGTH_SCALE_TOKENS: i64 = 8192;

/// `parameters` of a `prefix-cache-scorer` entry: llm-d v0.10's (which producer to read, how to score)
/// and GIE's hashing parameters for an index of its own. As in GIE, a hashing number ≤ 0 means "use the
/// default".
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixCacheScorerParams {
    /// llm-d: name of the `approx-prefix-cache-producer` whose index to read.
    pub prefix_match_info_producer_name: Option<String>,
    /// llm-d: share of the score given to the absolute match length, in [0, 1]. Default 0.
    pub match_length_weight: f64,
    /// llm-d: matched tokens at which the length part reaches 1. Default 8192; > 0 when used.
    pub match_length_scale_tokens: i64,
    /// Take the block size (`block_size`) and the LRU capacity (`num_gpu_blocks`) from the metrics.
    pub auto_tune: Option<bool>,
    /// Tokens per hashed block (× 4 bytes per token). Default 16.
    pub block_size_tokens: Option<i64>,
    /// Legacy block size in characters (bytes), used only when `blockSizeTokens` is not given.
    pub block_size: Option<i64>,
    /// Blocks hashed at most. Default 256.
    pub max_prefix_blocks_to_match: Option<i64>,
    /// llm-d before v0.10: tokens hashed at most; when > 0 it replaces `maxPrefixBlocksToMatch`.
    pub max_prefix_tokens_to_match: Option<i64>,
    /// Per-endpoint LRU capacity in blocks when the endpoint does not report `num_gpu_blocks`.
    pub lru_capacity_per_server: Option<i64>,
}

impl Default for PrefixCacheScorerParams {
    fn default() -> PrefixCacheScorerParams {
        PrefixCacheScorerParams {
            prefix_match_info_producer_name: None,
            match_length_weight: 0.0,
            match_length_scale_tokens: DEFAULT_MATCH_LENGTH_SCALE_TOKENS,
            auto_tune: None,
            block_size_tokens: None,
            block_size: None,
            max_prefix_blocks_to_match: None,
            max_prefix_tokens_to_match: None,
            lru_capacity_per_server: None,
        }
    }
}

impl PrefixCacheScorerParams {
    /// The first hashing parameter given, if any: they configure an index of the scorer's own.
    fn hashing_param(&self) -> Option<&'static str> {
        [
            ("autoTune", self.auto_tune.is_some()),
            ("blockSizeTokens", self.block_size_tokens.is_some()),
            ("blockSize", self.block_size.is_some()),
            ("maxPrefixBlocksToMatch", self.max_prefix_blocks_to_match.is_some()),
            ("maxPrefixTokensToMatch", self.max_prefix_tokens_to_match.is_some()),
            ("lruCapacityPerServer", self.lru_capacity_per_server.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }
}

/// `Some(n)` for a positive value that fits a `usize`.
fn positive(v: Option<i64>) -> Option<usize> {
    v.filter(|&v| v > 0).and_then(|v| usize::try_from(v).ok())
}

impl From<&PrefixCacheScorerParams> for PrefixConfig {
    fn from(p: &PrefixCacheScorerParams) -> PrefixConfig {
        let block_bytes = match (positive(p.block_size_tokens), positive(p.block_size)) {
            (Some(tokens), _) => tokens.saturating_mul(BYTES_PER_TOKEN),
            (None, Some(chars)) => chars,
            (None, None) => DEFAULT_BLOCK_SIZE_TOKENS * BYTES_PER_TOKEN,
        };
        PrefixConfig {
            block_bytes,
            max_blocks: positive(p.max_prefix_blocks_to_match).unwrap_or(DEFAULT_MAX_PREFIX_BLOCKS),
            max_prefix_bytes: positive(p.max_prefix_tokens_to_match)
                .map_or(0, |t| t.saturating_mul(BYTES_PER_TOKEN)),
            lru_capacity_per_server: positive(p.lru_capacity_per_server)
                .map_or(DEFAULT_LRU_CAPACITY_PER_SERVER, |c| c.min(MAX_LRU_CAPACITY_PER_SERVER)),
            auto_tune: p.auto_tune.unwrap_or(true),
            min_block_bytes: 0,
        }
    }
}

/// Score = `w × min(1, matched tokens / scale)² + (1 − w) × matched blocks / prompt blocks` (llm-d v0.10;
/// `w` = `matchLengthWeight`, 0 by default, which is GIE's score); 0 for a prompt shorter than a block.
pub struct PrefixCacheScorer {
    handle: PrefixHandle,
    /// True when the index is the scorer's own, so it records the picks.
    records: bool,
    match_length_weight: f64,
    match_length_scale_tokens: f64,
}

impl PluginFactory for PrefixCacheScorer {
    const TYPE: &'static str = TYPE;
    /// Its own index is offered to the affinity filters, which may come first in the configuration;
    /// it may read a producer's index instead, so it is built after the plain producers.
    const PRODUCER: bool = true;
    const READS_PRODUCERS: bool = true;
    type Params = PrefixCacheScorerParams;

    /// Reads the producer named by `prefixMatchInfoProducerName` (an error if there is none), else the
    /// one named `approx-prefix-cache-producer`, else owns an index hashed with GIE's parameters.
    /// Hashing parameters beside a producer are an error: the producer's settings rule.
    fn build(
        params: PrefixCacheScorerParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<PrefixCacheScorer, ParamError> {
        let weight = params.match_length_weight;
        if !(0.0..=1.0).contains(&weight) {
            return Err(ParamError::new(
                "matchLengthWeight",
                "a number in [0, 1]",
                Some(format!("{weight}")),
            ));
        }
        let scale = params.match_length_scale_tokens;
        if weight > 0.0 && scale <= 0 {
            let expected = "an integer > 0 when matchLengthWeight > 0";
            return Err(ParamError::new("matchLengthScaleTokens", expected, Some(format!("{scale}"))));
        }
        let named = params.prefix_match_info_producer_name.as_deref().filter(|n| !n.is_empty());
        let producer = named.unwrap_or(DEFAULT_PRODUCER);
        let (handle, records) = match ctx.prefix_index(Some(producer)) {
            Ok(Some(shared)) => {
                if let Some(field) = params.hashing_param() {
                    let expected = format!(
                        "no hashing parameter on a prefix-cache-scorer that reads producer {producer:?} (set it \
                         on that producer)"
                    );
                    return Err(ParamError::new(field, expected, None));
                }
                (shared, false)
            }
            _ if named.is_some() => {
                return Err(ParamError::new(
                    "prefixMatchInfoProducerName",
                    "the name of an approx-prefix-cache-producer plugin",
                    Some(format!("{producer:?}")),
                ))
            }
            _ => {
                let own = PrefixHandle::new(PrefixConfig::from(&params));
                ctx.produce_prefix_index(own.clone());
                (own, true)
            }
        };
        Ok(PrefixCacheScorer {
            handle,
            records,
            match_length_weight: weight,
            match_length_scale_tokens: scale.max(1) as f64,
        })
    }
}

impl PrefixCacheScorer {
    /// The index this scorer reads: its own, or its producer's.
    pub fn handle(&self) -> &PrefixHandle {
        &self.handle
    }

    /// Read access to the index (stats, tests). `None` only while it is mutably borrowed.
    pub fn index(&self) -> Option<Ref<'_, PrefixIndex>> {
        self.handle.index()
    }

    /// Write access, e.g. to apply `(endpoint, hashes)` records from other workers or drop endpoints
    /// that left the pool.
    pub fn index_mut(&self) -> Option<RefMut<'_, PrefixIndex>> {
        self.handle.index_mut()
    }

    fn score_of(&self, m: &PrefixMatch, endpoint: usize) -> f64 {
        let ratio = m.score(endpoint);
        let w = self.match_length_weight;
        if w <= 0.0 || m.total_blocks() == 0 || m.block_tokens() == 0 {
            return ratio;
        }
        let tokens = f64::from(m.matched(endpoint)) * m.block_tokens() as f64;
        let length = (tokens / self.match_length_scale_tokens).min(1.0);
        w * length * length + (1.0 - w) * ratio
    }
}

/// The prefix index of a plugin that reads prefix matches without owning them
/// (`prefix-cache-affinity-filter`, `prefix-owner-scorer`, `no-hit-lru-scorer`); see [`follow`].
pub struct FollowedIndex {
    /// The index read: its producer's, or the reader's own.
    pub handle: PrefixHandle,
    /// True when the index is the reader's own (no index owner configured), so that the reader must
    /// record its picks in it (`pre_request`); an owner records its own.
    pub records: bool,
}

/// At build time, the index a reader of prefix matches uses: the one owned by the plugin named
/// `producer` (the reader's `prefixMatchInfoProducerName`: an `approx-prefix-cache-producer`, or a
/// `prefix-cache-scorer` that owns its index), else the only one configured; without any, an index of
/// the reader's own with GIE's default hashing, kept through `ctx` so that the scheduler reaches it like
/// the others.
///
/// A `producer` that no plugin of that name owns, or no name when several do, is an error on
/// `prefixMatchInfoProducerName`.
pub fn follow(ctx: &mut BuildContext<'_>, producer: Option<&str>) -> Result<FollowedIndex, ParamError> {
    let producer = producer.filter(|p| !p.is_empty());
    match ctx.prefix_index(producer) {
        Ok(Some(shared)) => Ok(FollowedIndex { handle: shared, records: false }),
        Ok(None) => {
            let own = PrefixHandle::new(PrefixConfig::default());
            ctx.keep_prefix_index(own.clone());
            Ok(FollowedIndex { handle: own, records: true })
        }
        Err(LookupError::NotProduced) => Err(ParamError::new(
            "prefixMatchInfoProducerName",
            "the name of an approx-prefix-cache-producer or prefix-cache-scorer plugin that owns a prefix index",
            Some(format!("{:?}", producer.unwrap_or_default())),
        )),
        Err(LookupError::Ambiguous) => Err(ParamError::new(
            "prefixMatchInfoProducerName",
            "the name of the prefix-cache-scorer to follow (there are several)",
            None,
        )),
    }
}

impl Scorer for PrefixCacheScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let m = prefix_match(ctx, state, &self.handle);
        for (score, &c) in scores.iter_mut().zip(candidates) {
            *score = m.map_or(0.0, |m| self.score_of(m, c));
        }
    }
}

impl Plugin for PrefixCacheScorer {
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
    use crate::plugins::test_support::{build_err, built, built_with, try_build_with};
    use crate::prefix::block_hashes;
    use crate::scheduling::{SchedulingRequest, SharedState};
    use alloc::string::{String, ToString};
    use alloc::vec;
    use alloc::vec::Vec;

    const ADDRS: [&str; 3] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"];

    fn pool() -> PoolSnapshot {
        PoolSnapshot {
            endpoints: ADDRS.iter().map(|a| EndpointState::new(Endpoint::new(*a))).collect(),
            ..PoolSnapshot::default()
        }
    }

    fn params(json: &str) -> Result<PrefixCacheScorerParams, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn scores(s: &PrefixCacheScorer, pool: &PoolSnapshot, req: &SchedulingRequest<'_>) -> Vec<f64> {
        let ctx = SchedulingContext { request: req, pool, now_ms: 0 };
        let mut out = vec![-1.0; 3];
        s.score(&ctx, &mut CycleState::default(), &[0, 1, 2], &mut out);
        out
    }

    #[test]
    fn scores_are_the_matched_fraction_of_the_prompt() {
        let pool = pool();
        let prompt = vec![b'a'; 64 * 8 + 10]; // 8 whole blocks
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
        let scorer = built::<PrefixCacheScorer>("{}");
        assert_eq!(scores(&scorer, &pool, &req), [0.0, 0.0, 0.0]);

        let hashes = block_hashes("m", None, &prompt, 64, 256);
        {
            let mut ix = scorer.index_mut().unwrap();
            ix.record(ADDRS[0], &hashes, 1000); // whole prompt
            ix.record(ADDRS[2], &hashes[..2], 1000); // first 2 blocks
        }
        assert_eq!(scores(&scorer, &pool, &req), [1.0, 0.0, 0.25]);

        // Another tenant's salt shares nothing.
        let salted = SchedulingRequest { cache_salt: Some("t2"), ..req.clone() };
        assert_eq!(scores(&scorer, &pool, &salted), [0.0, 0.0, 0.0]);
        // A prompt shorter than a block scores 0 everywhere.
        let short = SchedulingRequest { prefix_input: &prompt[..63], ..req };
        assert_eq!(scores(&scorer, &pool, &short), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_picked_endpoint_is_warm_for_the_next_request() {
        let pool = pool();
        let prompt = vec![b'q'; 64 * 4];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let mut scorer = built::<PrefixCacheScorer>("{}");
        let mut state = CycleState::default();
        let mut out = [0.0; 3];
        scorer.score(&ctx, &mut state, &[0, 1, 2], &mut out);
        let dest = [ProfileRunResult { profile: String::from("default"), targets: vec![1, 0] }];
        scorer.pre_request(&ctx, &state, &dest);
        // Only the primary target is recorded, not the fallback.
        assert_eq!(scores(&scorer, &pool, &req), [0.0, 1.0, 0.0]);
        assert_eq!(scorer.index().unwrap().stats().entries, 4);
    }

    #[test]
    fn params_use_gie_names_and_defaults() {
        let d = params("{}").unwrap();
        assert_eq!(d, PrefixCacheScorerParams::default());
        let c = PrefixConfig::from(&d);
        assert_eq!(
            (c.block_bytes, c.max_blocks, c.lru_capacity_per_server, c.auto_tune),
            (64, 256, 31_250, true)
        );

        let p = params(
            r#"{"blockSizeTokens": 32, "maxPrefixBlocksToMatch": 10, "lruCapacityPerServer": 500,
                "autoTune": false}"#,
        )
        .unwrap();
        let c = PrefixConfig::from(&p);
        assert_eq!(
            (c.block_bytes, c.max_blocks, c.lru_capacity_per_server, c.auto_tune),
            (128, 10, 500, false)
        );

        // Legacy `blockSize` is in characters; `blockSizeTokens` wins when both are given.
        assert_eq!(PrefixConfig::from(&params(r#"{"blockSize": 100}"#).unwrap()).block_bytes, 100);
        let both = params(r#"{"blockSize": 100, "blockSizeTokens": 8}"#).unwrap();
        assert_eq!(PrefixConfig::from(&both).block_bytes, 32);
        // Non-positive numbers fall back to the defaults, as in GIE.
        let zero =
            params(r#"{"blockSizeTokens": 0, "maxPrefixBlocksToMatch": -1, "lruCapacityPerServer": 0}"#)
                .unwrap();
        assert_eq!(PrefixConfig::from(&zero), PrefixConfig::from(&d));
        let tokens = params(r#"{"maxPrefixTokensToMatch": 1024}"#).unwrap();
        assert_eq!(PrefixConfig::from(&tokens).max_blocks_for(64), 64);
    }

    #[test]
    fn unknown_or_mistyped_params_are_rejected_with_the_field_name() {
        let err = params(r#"{"blockSizeToken": 16}"#).unwrap_err().to_string();
        assert!(err.contains("blockSizeToken"), "{err}");
        let err = params(r#"{"autoTune": "yes"}"#).unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
        assert_eq!(build_err::<PrefixCacheScorer>(r#"{"lruCapacity": 1}"#).field, "lruCapacity");
    }

    #[test]
    fn plays_the_scorer_part_only() {
        let s = built::<PrefixCacheScorer>("{}");
        assert_eq!(s.type_name(), "prefix-cache-scorer");
        assert!(s.as_scorer().is_some() && s.as_filter().is_none());
    }

    fn build_named<F: PluginFactory>(
        name: &str,
        json: &str,
        shared: &mut SharedState,
    ) -> Result<F, ParamError> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let params: F::Params = crate::config::params::parse_params(&value)?;
        F::build(params, &mut BuildContext::new(name, shared))
    }

    #[test]
    fn match_length_weight_mixes_in_the_absolute_match() {
        let pool = pool();
        let prompt = vec![b'a'; 64 * 8]; // 8 blocks of 16 tokens
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
        let scorer =
            built::<PrefixCacheScorer>(r#"{"matchLengthWeight": 0.5, "matchLengthScaleTokens": 64}"#);
        let hashes = block_hashes("m", None, &prompt, 64, 256);
        {
            let mut ix = scorer.index_mut().unwrap();
            ix.record(ADDRS[0], &hashes, 1000); // 128 tokens: length part saturates at 1
            ix.record(ADDRS[2], &hashes[..2], 1000); // 32 tokens: (32/64)² = 0.25
        }
        // 0.5 × 1 + 0.5 × 1; 0; 0.5 × 0.25 + 0.5 × 0.25
        assert_eq!(scores(&scorer, &pool, &req), [1.0, 0.0, 0.25]);
    }

    #[test]
    fn llm_d_scoring_params_are_checked() {
        let err = build_err::<PrefixCacheScorer>(r#"{"matchLengthWeight": 1.5}"#);
        assert_eq!(err.to_string(), "matchLengthWeight: expected a number in [0, 1], got 1.5");
        let err =
            build_err::<PrefixCacheScorer>(r#"{"matchLengthWeight": 0.2, "matchLengthScaleTokens": 0}"#);
        assert_eq!(
            err.to_string(),
            "matchLengthScaleTokens: expected an integer > 0 when matchLengthWeight > 0, got 0"
        );
        // Unused without a weight, as in llm-d.
        built::<PrefixCacheScorer>(r#"{"matchLengthScaleTokens": 0}"#);
    }

    #[test]
    fn reads_the_named_or_default_producer_and_leaves_recording_to_it() {
        let mut shared = SharedState::default();
        let producer = built_with::<ApproxPrefixCacheProducer>("{}", &mut shared);
        let bare = built_with::<PrefixCacheScorer>("{}", &mut shared);
        assert!(bare.handle().same_index(producer.handle()) && !bare.records);
        let named = r#"{"prefixMatchInfoProducerName": "approx-prefix-cache-producer"}"#;
        let s = built_with::<PrefixCacheScorer>(named, &mut shared);
        assert!(s.handle().same_index(producer.handle()) && !s.records);
        assert_eq!(shared.prefix_indexes().count(), 1, "readers add no index");

        // A custom name (the scheduler builds producers before the scorers that read them).
        let mut shared = SharedState::default();
        build_named::<ApproxPrefixCacheProducer>("gpu", "{}", &mut shared).unwrap();
        let s = built_with::<PrefixCacheScorer>(r#"{"prefixMatchInfoProducerName": "gpu"}"#, &mut shared);
        assert!(!s.records);
        // Without the name, a producer not named by default is not read: the scorer owns its index.
        let own = built_with::<PrefixCacheScorer>("{}", &mut SharedState::default());
        assert!(own.records);
    }

    #[test]
    fn producer_references_are_checked() {
        let mut shared = SharedState::default();
        let err =
            try_build_with::<PrefixCacheScorer>(r#"{"prefixMatchInfoProducerName": "nope"}"#, &mut shared);
        assert_eq!(
            err.err().map(|e| e.to_string()).as_deref(),
            Some(
                r#"prefixMatchInfoProducerName: expected the name of an approx-prefix-cache-producer plugin, got "nope""#
            )
        );
        built_with::<ApproxPrefixCacheProducer>("{}", &mut shared);
        let err =
            try_build_with::<PrefixCacheScorer>(r#"{"blockSizeTokens": 32}"#, &mut shared).err().unwrap();
        assert_eq!(
            err.to_string(),
            r#"blockSizeTokens: expected no hashing parameter on a prefix-cache-scorer that reads producer "approx-prefix-cache-producer" (set it on that producer)"#
        );
    }

    #[test]
    fn a_scorer_owning_its_index_is_offered_to_readers() {
        let mut shared = SharedState::default();
        let s = built_with::<PrefixCacheScorer>(r#"{"blockSizeTokens": 32}"#, &mut shared);
        assert!(s.records);
        assert!(shared.prefix_index(TYPE).is_some_and(|h| h.same_index(s.handle())));
        let followed = follow(&mut BuildContext::new("f", &mut shared), None).ok().unwrap();
        assert!(followed.handle.same_index(s.handle()) && !followed.records);
    }
}
