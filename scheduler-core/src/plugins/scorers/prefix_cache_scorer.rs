//! `prefix-cache-scorer`: prefers endpoints that probably hold the longest part of the prompt in their
//! KV cache (GIE's approximate prefix scorer), and learns from every pick in `pre_request`.
//!
//! The index and the per-request match live in `crate::prefix`. The scorer produces the index (under
//! its plugin name, through the build context); `prefix-cache-affinity-filter` and `prefix-owner-scorer`
//! share it, finding it with [`follow`].

use crate::config::params::ParamError;
use crate::prefix::{
    prefix_match, record_destination, PrefixConfig, PrefixHandle, PrefixIndex, BYTES_PER_TOKEN,
    DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_LRU_CAPACITY_PER_SERVER, DEFAULT_MAX_PREFIX_BLOCKS,
    MAX_LRU_CAPACITY_PER_SERVER,
};
use crate::scheduling::{
    BuildContext, CycleState, LookupError, Plugin, PluginFactory, ProfileRunResult, SchedulingContext, Scorer,
};
use alloc::format;
use core::cell::{Ref, RefMut};
use serde::Deserialize;

pub const TYPE: &str = "prefix-cache-scorer";

/// `parameters` of a `prefix-cache-scorer` entry, GIE's names and defaults. As in GIE, a number ≤ 0
/// means "use the default".
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixCacheScorerParams {
    /// Take the block size (`block_size`) and the LRU capacity (`num_gpu_blocks`) from the metrics.
    pub auto_tune: bool,
    /// Tokens per hashed block (× 4 bytes per token). Default 16.
    pub block_size_tokens: Option<i64>,
    /// Legacy block size in characters (bytes), used only when `blockSizeTokens` is not given.
    pub block_size: Option<i64>,
    /// Blocks hashed at most. Default 256.
    pub max_prefix_blocks_to_match: i64,
    /// llm-d: tokens hashed at most; when > 0 it replaces `maxPrefixBlocksToMatch`.
    pub max_prefix_tokens_to_match: i64,
    /// Per-endpoint LRU capacity in blocks when the endpoint does not report `num_gpu_blocks`.
    pub lru_capacity_per_server: i64,
}

impl Default for PrefixCacheScorerParams {
    fn default() -> PrefixCacheScorerParams {
        PrefixCacheScorerParams {
            auto_tune: true,
            block_size_tokens: None,
            block_size: None,
            max_prefix_blocks_to_match: DEFAULT_MAX_PREFIX_BLOCKS as i64,
            max_prefix_tokens_to_match: 0,
            lru_capacity_per_server: DEFAULT_LRU_CAPACITY_PER_SERVER as i64,
        }
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
            max_blocks: positive(Some(p.max_prefix_blocks_to_match)).unwrap_or(DEFAULT_MAX_PREFIX_BLOCKS),
            max_prefix_bytes: positive(Some(p.max_prefix_tokens_to_match))
                .map_or(0, |t| t.saturating_mul(BYTES_PER_TOKEN)),
            lru_capacity_per_server: positive(Some(p.lru_capacity_per_server))
                .map_or(DEFAULT_LRU_CAPACITY_PER_SERVER, |c| c.min(MAX_LRU_CAPACITY_PER_SERVER)),
            auto_tune: p.auto_tune,
        }
    }
}

/// Score = matched blocks / prompt blocks (0 for a prompt shorter than one block).
pub struct PrefixCacheScorer {
    handle: PrefixHandle,
}

impl PluginFactory for PrefixCacheScorer {
    const TYPE: &'static str = TYPE;
    /// Its index is offered to the affinity filters, which may come first in the configuration.
    const PRODUCER: bool = true;
    type Params = PrefixCacheScorerParams;

    /// GIE's parameters need no check: a number ≤ 0 means "the default" (see [`PrefixConfig`]'s
    /// conversion), as in GIE.
    fn build(
        params: PrefixCacheScorerParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<PrefixCacheScorer, ParamError> {
        let handle = PrefixHandle::new(PrefixConfig::from(&params));
        ctx.produce_prefix_index(handle.clone());
        Ok(PrefixCacheScorer { handle })
    }
}

impl PrefixCacheScorer {
    /// The index this scorer produces.
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
}

/// The prefix index of a plugin that reads prefix matches without producing them
/// (`prefix-cache-affinity-filter`, `prefix-owner-scorer`); see [`follow`].
pub struct FollowedIndex {
    /// The index read: its producer's, or the reader's own.
    pub handle: PrefixHandle,
    /// True when the index is the reader's own (no prefix scorer configured), so that the reader must
    /// record its picks in it (`pre_request`); a producer records its own.
    pub records: bool,
}

/// At build time, the index a reader of prefix matches uses: the one of the `prefix-cache-scorer` named
/// `producer` (the reader's `prefixMatchInfoProducerName`), else of the only one configured; without a
/// prefix scorer, an index of the reader's own with GIE's default hashing, kept through `ctx` so that the
/// scheduler reaches it like the others.
///
/// A `producer` that no plugin of that name produces, or no name when several do, is an error on
/// `prefixMatchInfoProducerName`.
pub fn follow(ctx: &mut BuildContext<'_>, producer: Option<&str>) -> Result<FollowedIndex, ParamError> {
    match ctx.prefix_index(producer) {
        Ok(Some(shared)) => Ok(FollowedIndex { handle: shared, records: false }),
        Ok(None) => {
            let own = PrefixHandle::new(PrefixConfig::default());
            ctx.keep_prefix_index(own.clone());
            Ok(FollowedIndex { handle: own, records: true })
        }
        Err(LookupError::NotProduced) => Err(ParamError::new(
            "prefixMatchInfoProducerName",
            "the name of a prefix-cache-scorer plugin",
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
            *score = m.map_or(0.0, |m| m.score(c));
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
        record_destination(ctx, state, destination, &self.handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointState, PoolSnapshot};
    use crate::plugins::test_support::built;
    use crate::prefix::block_hashes;
    use crate::scheduling::SchedulingRequest;
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
    }

    #[test]
    fn plays_the_scorer_part_only() {
        let s = built::<PrefixCacheScorer>("{}");
        assert_eq!(s.type_name(), "prefix-cache-scorer");
        assert!(s.as_scorer().is_some() && s.as_filter().is_none());
    }
}
