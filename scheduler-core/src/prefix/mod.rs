//! Approximate prefix-cache affinity (GIE/llm-d): hash the prompt into chained blocks, remember where
//! each block was sent, and tell the plugins how much of a new prompt each endpoint probably has cached.
//!
//! Sharing between plugins: `prefix-cache-scorer` and `prefix-cache-affinity-filter` are separate
//! `Box<dyn Plugin>`s, and the filter runs before any scorer of its profile, yet both need the same
//! index and the same per-request match. So the index lives in a [`PrefixHandle`] (`Rc<RefCell<_>>`:
//! the core is single-threaded per VM) that both plugins hold, and the per-request result lives in the
//! [`CycleState`] under [`PREFIX_MATCH_STATE_KEY`]: whichever plugin runs first computes it with
//! [`prefix_match`], the others read it, and `pre_request` (and the Wasm filter, which streams
//! `(endpoint, hashes)` records to the other workers) read the hashes from it.
//!
//! How the handle reaches them: the plugin that owns an index produces it under its plugin name through
//! the build context (`scheduling::factory`): an `approx-prefix-cache-producer` (llm-d v0.10, which
//! moved hashing out of the scorer), or a `prefix-cache-scorer` with no producer to read (GIE, and
//! llm-d before v0.10). Readers (`prefix-cache-scorer` following a producer,
//! `prefix-cache-affinity-filter`, `no-hit-lru-scorer`...) ask the context for the one named by their
//! `prefixMatchInfoProducerName` (or the only one). The owner records the picks (`pre_request`); a
//! reader that finds no index keeps one of its own and records them itself. The cycle state holds one
//! match per request, so a scheduler is meant to have one prefix index (scorers with separate indexes
//! would read whichever match was computed first); `approx-prefix-cache-producer` refuses to be a
//! second one.

pub mod hash;
pub mod index;

pub use hash::{
    block_hashes, hash_blocks, hash_blocks_with, BYTES_PER_TOKEN, DEFAULT_BLOCK_SIZE_TOKENS,
    DEFAULT_MAX_PREFIX_BLOCKS,
};
pub use index::{
    IndexStats, PoolMatch, PrefixIndex, DEFAULT_LRU_CAPACITY_PER_SERVER, MAX_LRU_CAPACITY_PER_SERVER,
};

use crate::model::{EndpointState, PoolSnapshot};
use crate::scheduling::{CycleState, ProfileRunResult, SchedulingContext};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Ref, RefCell, RefMut};

/// CycleState key of the request's [`PrefixMatch`]. Read it after scheduling to get the hashes that
/// were recorded on the destination.
pub const PREFIX_MATCH_STATE_KEY: &str = "prefix-cache/match";

/// How prompts are cut into blocks and how large each endpoint's LRU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixConfig {
    /// Block size in bytes when not auto-tuned (GIE: `blockSizeTokens × 4`, or the legacy `blockSize`).
    pub block_bytes: usize,
    /// Blocks hashed at most.
    pub max_blocks: usize,
    /// When non-zero, caps the hashed prefix at this many bytes instead of `max_blocks` blocks (llm-d's
    /// `maxPrefixTokensToMatch × 4`), so the cap does not move when the block size is auto-tuned.
    pub max_prefix_bytes: usize,
    /// LRU capacity of an endpoint that does not report `num_gpu_blocks` (or when not auto-tuning).
    pub lru_capacity_per_server: usize,
    /// Take the block size and LRU capacity from the endpoints' metrics when they report them.
    pub auto_tune: bool,
    /// Blocks are never smaller than this, whether configured or auto-tuned (llm-d v0.10 hashes at
    /// least 64 tokens per block, so that its index holds fewer entries); 0 for none (GIE).
    pub min_block_bytes: usize,
}

impl Default for PrefixConfig {
    fn default() -> PrefixConfig {
        PrefixConfig {
            block_bytes: DEFAULT_BLOCK_SIZE_TOKENS * BYTES_PER_TOKEN,
            max_blocks: DEFAULT_MAX_PREFIX_BLOCKS,
            max_prefix_bytes: 0,
            lru_capacity_per_server: DEFAULT_LRU_CAPACITY_PER_SERVER,
            auto_tune: true,
            min_block_bytes: 0,
        }
    }
}

impl PrefixConfig {
    /// Block size in bytes for this pool. Auto-tuned (GIE style) from the KV block size of the first
    /// endpoint, in address order, that reports one: the pool serves one model on one engine config.
    /// Never below `min_block_bytes`.
    pub fn block_bytes_for(&self, pool: &PoolSnapshot) -> usize {
        let reported = match self.auto_tune {
            true => pool.endpoints.iter().filter_map(|e| e.metrics.as_ref()?.block_size).find(|&b| b > 0),
            false => None,
        };
        let bytes =
            reported.map_or(self.block_bytes, |tokens| (tokens as usize).saturating_mul(BYTES_PER_TOKEN));
        bytes.max(self.min_block_bytes)
    }

    /// Blocks hashed at most for a given block size.
    pub fn max_blocks_for(&self, block_bytes: usize) -> usize {
        match (self.max_prefix_bytes, block_bytes) {
            (0, _) | (_, 0) => self.max_blocks,
            (bytes, block) => bytes / block,
        }
    }

    /// LRU capacity for an endpoint: its `num_gpu_blocks` when auto-tuning and reported, else the default.
    pub fn capacity_for(&self, endpoint: &EndpointState) -> usize {
        let reported = endpoint.metrics.as_ref().and_then(|m| m.num_gpu_blocks).filter(|&n| n > 0);
        match reported {
            Some(n) if self.auto_tune => n as usize,
            _ => self.lru_capacity_per_server,
        }
    }
}

/// The prefix index plus the configuration that produced its hashes.
#[derive(Debug, Default)]
pub struct PrefixState {
    pub config: PrefixConfig,
    pub index: PrefixIndex,
}

/// Shared handle to one [`PrefixState`]; clones point at the same index.
///
/// Borrows are taken with `try_borrow*` and never held across calls, so a conflicting borrow cannot
/// happen in practice; if one ever did, the caller gets `None` (no affinity) instead of a panic.
#[derive(Clone, Debug, Default)]
pub struct PrefixHandle(Rc<RefCell<PrefixState>>);

impl PrefixHandle {
    pub fn new(config: PrefixConfig) -> PrefixHandle {
        PrefixHandle(Rc::new(RefCell::new(PrefixState { config, index: PrefixIndex::new() })))
    }

    pub fn config(&self) -> Option<PrefixConfig> {
        self.0.try_borrow().ok().map(|s| s.config)
    }

    pub fn index(&self) -> Option<Ref<'_, PrefixIndex>> {
        self.0.try_borrow().ok().map(|s| Ref::map(s, |s| &s.index))
    }

    pub fn index_mut(&self) -> Option<RefMut<'_, PrefixIndex>> {
        self.0.try_borrow_mut().ok().map(|s| RefMut::map(s, |s| &mut s.index))
    }

    /// True when both handles share one index.
    pub fn same_index(&self, other: &PrefixHandle) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// The prefix match of one request against the pool, computed once per scheduling cycle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefixMatch {
    /// The request's block hashes, first block first (empty for prompts shorter than one block).
    pub hashes: Vec<u64>,
    /// Matched blocks per endpoint, indexed like `pool.endpoints`.
    pub matched_blocks: Vec<u32>,
    /// Block size (bytes) the hashes were cut with.
    pub block_bytes: usize,
}

impl PrefixMatch {
    pub fn total_blocks(&self) -> usize {
        self.hashes.len()
    }

    pub fn matched(&self, endpoint: usize) -> u32 {
        self.matched_blocks.get(endpoint).copied().unwrap_or(0)
    }

    /// Estimated prompt tokens `endpoint` holds: its matched blocks' bytes over `BYTES_PER_TOKEN`.
    pub fn matched_tokens(&self, endpoint: usize) -> u64 {
        let bytes = (self.matched(endpoint) as usize).saturating_mul(self.block_bytes);
        (bytes / BYTES_PER_TOKEN) as u64
    }

    /// Block size in (estimated) tokens, as llm-d's `PrefixCacheMatchInfo` reports it.
    pub fn block_tokens(&self) -> usize {
        self.block_bytes / BYTES_PER_TOKEN
    }

    /// True when no endpoint in `candidates` holds even the first block (llm-d's "cold" request).
    pub fn is_cold(&self, candidates: &[usize]) -> bool {
        candidates.iter().all(|&c| self.matched(c) == 0)
    }

    /// GIE's prefix score: matched / total blocks, 0 when the prompt has no whole block.
    pub fn score(&self, endpoint: usize) -> f64 {
        match self.total_blocks() {
            0 => 0.0,
            total => f64::from(self.matched(endpoint)) / total as f64,
        }
    }
}

/// Hashes the request and walks the index for every endpoint of the pool. `None` only if the index is
/// borrowed elsewhere (see [`PrefixHandle`]).
pub fn compute_match(ctx: &SchedulingContext<'_>, handle: &PrefixHandle) -> Option<PrefixMatch> {
    let state = handle.0.try_borrow().ok()?;
    let req = ctx.request;
    let block_bytes = state.config.block_bytes_for(ctx.pool);
    let max_blocks = state.config.max_blocks_for(block_bytes);
    // Hash and walk in one pass: the walk's table lookups fill the gaps of the latency-bound chain.
    let mut hashes = Vec::new();
    let mut walk = state.index.pool_match();
    let (model, salt, input) = (req.model, req.cache_salt, req.prefix_input);
    hash_blocks_with(model, salt, input, block_bytes, max_blocks, &mut hashes, |h| {
        walk.push(h);
    });
    let matched_blocks = walk.counts(ctx.pool);
    Some(PrefixMatch { hashes, matched_blocks, block_bytes })
}

/// The request's [`PrefixMatch`]: read from the cycle state, or computed and stored there first.
pub fn prefix_match<'s>(
    ctx: &SchedulingContext<'_>,
    state: &'s mut CycleState,
    handle: &PrefixHandle,
) -> Option<&'s PrefixMatch> {
    if state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY).is_none() {
        let m = compute_match(ctx, handle)?;
        state.insert(PREFIX_MATCH_STATE_KEY, m);
    }
    state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY)
}

/// Records the request's hashes on the first target of every profile result in `destination`: the
/// primary (decode) endpoint and, for P/D, the prefill endpoint, which computed the KV. Each endpoint's
/// LRU capacity follows its current metrics. Does nothing when no match was computed this cycle, or when
/// it was cut into blocks of another size than this index's (computed on another index).
pub fn record_destination(
    ctx: &SchedulingContext<'_>,
    state: &CycleState,
    destination: &[ProfileRunResult],
    handle: &PrefixHandle,
) {
    let Some(m) = state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY) else { return };
    if m.hashes.is_empty() {
        return;
    }
    let Ok(mut s) = handle.0.try_borrow_mut() else { return };
    let PrefixState { config, index } = &mut *s;
    if config.block_bytes_for(ctx.pool) != m.block_bytes {
        return;
    }
    for ep in destination_endpoints(ctx, destination) {
        index.record(ep.address(), &m.hashes, config.capacity_for(ep));
    }
}

/// The endpoints that now hold the request's KV blocks: the first target of each profile result. The
/// Wasm filter streams `(address, hashes)` for exactly these to the other workers.
pub fn destination_endpoints<'p>(
    ctx: &SchedulingContext<'p>,
    destination: &'p [ProfileRunResult],
) -> impl Iterator<Item = &'p EndpointState> + 'p {
    let pool = ctx.pool;
    destination.iter().filter_map(move |r| r.targets.first().and_then(|&i| pool.endpoints.get(i)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Metrics};
    use crate::scheduling::SchedulingRequest;
    use alloc::string::String;
    use alloc::vec;

    fn pool(block_size: Option<u32>, gpu_blocks: Option<u32>) -> PoolSnapshot {
        let endpoints = ["10.0.0.1:8000", "10.0.0.2:8000"]
            .iter()
            .map(|a| EndpointState {
                metrics: Some(Metrics { block_size, num_gpu_blocks: gpu_blocks, ..Metrics::default() }),
                ..EndpointState::new(Endpoint::new(*a))
            })
            .collect();
        PoolSnapshot { endpoints, ..PoolSnapshot::default() }
    }

    #[test]
    fn auto_tune_takes_block_size_and_capacity_from_metrics() {
        let cfg = PrefixConfig::default();
        assert_eq!(cfg.block_bytes_for(&pool(None, None)), 64);
        assert_eq!(cfg.block_bytes_for(&pool(Some(32), None)), 128);
        assert_eq!(cfg.block_bytes_for(&pool(Some(0), None)), 64);
        let off = PrefixConfig { auto_tune: false, ..cfg };
        assert_eq!(off.block_bytes_for(&pool(Some(32), None)), 64);
        // llm-d's floor applies to the configured and the reported size alike.
        let floor = PrefixConfig { min_block_bytes: 256, ..cfg };
        assert_eq!(floor.block_bytes_for(&pool(None, None)), 256);
        assert_eq!(floor.block_bytes_for(&pool(Some(16), None)), 256);
        assert_eq!(floor.block_bytes_for(&pool(Some(128), None)), 512);
        let p = pool(None, Some(900));
        assert_eq!(cfg.capacity_for(&p.endpoints[0]), 900);
        assert_eq!(off.capacity_for(&p.endpoints[0]), 31_250);
        assert_eq!(cfg.capacity_for(&pool(None, Some(0)).endpoints[0]), 31_250);
    }

    #[test]
    fn token_cap_overrides_block_cap() {
        let cfg = PrefixConfig { max_prefix_bytes: 4 * 1024, ..PrefixConfig::default() };
        assert_eq!(cfg.max_blocks_for(64), 64);
        assert_eq!(cfg.max_blocks_for(128), 32);
        assert_eq!(PrefixConfig::default().max_blocks_for(128), 256);
    }

    #[test]
    fn match_is_computed_once_and_recorded_on_primary_and_prefill() {
        let pool = pool(None, Some(50));
        let prompt = vec![b'p'; 64 * 3];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let handle = PrefixHandle::new(PrefixConfig::default());
        let mut state = CycleState::default();
        let m = prefix_match(&ctx, &mut state, &handle).unwrap().clone();
        assert_eq!((m.total_blocks(), m.matched_blocks.as_slice()), (3, &[0, 0][..]));
        let dest = [
            ProfileRunResult { profile: String::from("decode"), targets: vec![1] },
            ProfileRunResult { profile: String::from("prefill"), targets: vec![0] },
            ProfileRunResult { profile: String::from("failed"), targets: vec![] },
        ];
        let warm: Vec<&str> = destination_endpoints(&ctx, &dest).map(EndpointState::address).collect();
        assert_eq!(warm, ["10.0.0.2:8000", "10.0.0.1:8000"]);
        record_destination(&ctx, &state, &dest, &handle);
        // The stored match is reused within the cycle; a new cycle sees both endpoints warm.
        assert_eq!(prefix_match(&ctx, &mut state, &handle).unwrap().score(1), 0.0);
        let m = compute_match(&ctx, &handle).unwrap();
        assert_eq!((m.score(0), m.score(1)), (1.0, 1.0));
        assert_eq!(handle.index().unwrap().endpoint_capacity("10.0.0.1:8000"), Some(50));

        // A match cut for another index (other block size) is not recorded in this one.
        let other =
            PrefixHandle::new(PrefixConfig { block_bytes: 128, auto_tune: false, ..PrefixConfig::default() });
        record_destination(&ctx, &state, &dest, &other);
        assert_eq!(other.index().unwrap().stats().entries, 0);
    }
}
