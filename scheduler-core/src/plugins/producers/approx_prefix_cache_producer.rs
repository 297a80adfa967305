//! `approx-prefix-cache-producer` (llm-d v0.10): owns an approximate prefix index with llm-d's hashing
//! settings and offers it to the plugins that read prefix matches.
//!
//! llm-d v0.10 split GIE's prefix scorer in two: this producer hashes the prompt, keeps the index and
//! records every pick, and `prefix-cache-scorer`, `prefix-cache-affinity-filter` and `no-hit-lru-scorer`
//! read its per-endpoint match through their `prefixMatchInfoProducerName` (by default the producer
//! named `approx-prefix-cache-producer`). Here the index is `crate::prefix`; this plugin produces it
//! under its own name (see `scheduling::factory`), so the readers share it, and records the picks.
//!
//! The settings are llm-d's, not GIE's: blocks of at least [`MIN_BLOCK_TOKENS`] tokens (whatever is
//! configured or reported), a cap of 131072 tokens (`maxPrefixTokensToMatch`, which wins over
//! `maxPrefixBlocksToMatch` when > 0), both caps 0 = the whole prompt, and the deprecated `blockSize`
//! counted in tokens. Tokens are estimated at 4 bytes each, as llm-d's default `estimate` tokenizer does.

use crate::config::params::ParamError;
use crate::prefix::{
    record_destination, PrefixConfig, PrefixHandle, PrefixIndex, BYTES_PER_TOKEN,
    DEFAULT_LRU_CAPACITY_PER_SERVER, MAX_LRU_CAPACITY_PER_SERVER,
};
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileRunResult, SchedulingContext, SectionRole,
};
use alloc::format;
use core::cell::Ref;
use serde::Deserialize;

pub const TYPE: &str = "approx-prefix-cache-producer";

/// llm-d's smallest block (its issue #1158): a smaller configured or reported block size is raised to
/// this, so the index holds one entry per 64 tokens at most.
pub const MIN_BLOCK_TOKENS: usize = 64;
/// llm-d's `blockSizeTokens` default (vLLM's block), raised to [`MIN_BLOCK_TOKENS`] when used.
const DEFAULT_BLOCK_SIZE_TOKENS: i64 = 16;
const DEFAULT_MAX_PREFIX_BLOCKS: i64 = 2048;
/// 128K tokens, the context window of large production models.
const DEFAULT_MAX_PREFIX_TOKENS: i64 = 131_072;

/// `parameters` of an `approx-prefix-cache-producer` entry: llm-d's names and defaults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ApproxPrefixCacheProducerParams {
    /// Block size and LRU capacity from the endpoints' `block_size` / `num_gpu_blocks` when reported.
    pub auto_tune: bool,
    /// Tokens per block when not auto-tuned (at least [`MIN_BLOCK_TOKENS`] in effect).
    pub block_size_tokens: i64,
    /// Deprecated: taken as `blockSizeTokens` (tokens, not characters) when that is left at 16.
    pub block_size: i64,
    /// Block cap, used only when `maxPrefixTokensToMatch` is 0; both 0 = the whole prompt.
    pub max_prefix_blocks_to_match: i64,
    /// Token cap; wins over the block cap when > 0.
    pub max_prefix_tokens_to_match: i64,
    /// Per-endpoint LRU capacity in blocks when not auto-tuned or not reported (≤ 0: 31250).
    pub lru_capacity_per_server: i64,
}

impl Default for ApproxPrefixCacheProducerParams {
    fn default() -> ApproxPrefixCacheProducerParams {
        ApproxPrefixCacheProducerParams {
            auto_tune: true,
            block_size_tokens: DEFAULT_BLOCK_SIZE_TOKENS,
            block_size: 0,
            max_prefix_blocks_to_match: DEFAULT_MAX_PREFIX_BLOCKS,
            max_prefix_tokens_to_match: DEFAULT_MAX_PREFIX_TOKENS,
            lru_capacity_per_server: DEFAULT_LRU_CAPACITY_PER_SERVER as i64,
        }
    }
}

/// The index settings these parameters mean in llm-d, with warnings for what llm-d only logs.
fn prefix_config(
    p: &ApproxPrefixCacheProducerParams,
    ctx: &mut BuildContext<'_>,
) -> Result<PrefixConfig, ParamError> {
    let mut block_tokens = p.block_size_tokens;
    if p.block_size > 0 {
        if block_tokens == DEFAULT_BLOCK_SIZE_TOKENS {
            block_tokens = p.block_size;
            ctx.warn("blockSize", "deprecated; taken as blockSizeTokens (in tokens), as llm-d does");
        } else {
            ctx.warn("blockSize", "deprecated and ignored: blockSizeTokens is set");
        }
    }
    if !p.auto_tune && block_tokens <= 0 {
        let got = Some(format!("{block_tokens}"));
        return Err(ParamError::new("blockSizeTokens", "an integer > 0 when autoTune is false", got));
    }
    if block_tokens > 0
        && (block_tokens as u64) < MIN_BLOCK_TOKENS as u64
        && block_tokens != DEFAULT_BLOCK_SIZE_TOKENS
    {
        let message = format!("{block_tokens} is raised to {MIN_BLOCK_TOKENS} tokens per block, as in llm-d");
        ctx.warn("blockSizeTokens", message);
    }
    let non_negative = |field: &str, v: i64| match usize::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => Err(ParamError::new(field, "an integer >= 0", Some(format!("{v}")))),
    };
    let max_tokens = non_negative("maxPrefixTokensToMatch", p.max_prefix_tokens_to_match)?;
    let max_blocks = non_negative("maxPrefixBlocksToMatch", p.max_prefix_blocks_to_match)?;
    let lru = match usize::try_from(p.lru_capacity_per_server) {
        Ok(0) | Err(_) => DEFAULT_LRU_CAPACITY_PER_SERVER,
        Ok(n) if n > MAX_LRU_CAPACITY_PER_SERVER => {
            let expected = format!("an integer <= {MAX_LRU_CAPACITY_PER_SERVER} (blocks per endpoint)");
            return Err(ParamError::new("lruCapacityPerServer", expected, Some(format!("{n}"))));
        }
        Ok(n) => n,
    };
    let block_bytes = usize::try_from(block_tokens).unwrap_or(0).saturating_mul(BYTES_PER_TOKEN);
    Ok(PrefixConfig {
        block_bytes,
        // Both caps 0: the whole prompt.
        max_blocks: if max_blocks == 0 { usize::MAX } else { max_blocks },
        max_prefix_bytes: max_tokens.saturating_mul(BYTES_PER_TOKEN),
        lru_capacity_per_server: lru,
        auto_tune: p.auto_tune,
        min_block_bytes: MIN_BLOCK_TOKENS * BYTES_PER_TOKEN,
    })
}

/// Owns one prefix index (see the module documentation).
pub struct ApproxPrefixCacheProducer {
    handle: PrefixHandle,
}

impl PluginFactory for ApproxPrefixCacheProducer {
    const TYPE: &'static str = TYPE;
    /// Built before its readers, which find its index by its name.
    const PRODUCER: bool = true;
    type Params = ApproxPrefixCacheProducerParams;

    /// A scheduler keeps one prefix index (one match per request in the cycle state), so a second
    /// producer is an error rather than an index nobody reads consistently. (Producers are built before
    /// the scorers that may own an index, see `PluginFactory::READS_PRODUCERS`.)
    fn build(
        params: ApproxPrefixCacheProducerParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<ApproxPrefixCacheProducer, ParamError> {
        let config = prefix_config(&params, ctx)?;
        if !matches!(ctx.prefix_index(None), Ok(None)) {
            return Err(ParamError::new(
                "",
                "the only approx-prefix-cache-producer of the configuration (wasm-epp keeps one prefix index \
                 per scheduler)",
                Some(format!("{:?}, a second one", ctx.name())),
            ));
        }
        let handle = PrefixHandle::new(config);
        ctx.produce_prefix_index(handle.clone());
        Ok(ApproxPrefixCacheProducer { handle })
    }
}

impl ApproxPrefixCacheProducer {
    /// The index this producer owns.
    pub fn handle(&self) -> &PrefixHandle {
        &self.handle
    }

    /// Read access to the index (stats, tests). `None` only while it is mutably borrowed.
    pub fn index(&self) -> Option<Ref<'_, PrefixIndex>> {
        self.handle.index()
    }
}

impl Plugin for ApproxPrefixCacheProducer {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn section_role(&self) -> Option<SectionRole> {
        Some(SectionRole::DataProducer)
    }

    /// llm-d's PreRequest: the primary pick and the prefill pick now hold the prompt's blocks. The match
    /// was computed by whichever reader ran first this cycle; with no reader there is nothing to record.
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
    use crate::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
    use crate::plugins::test_support::{build_err, built, try_build_with};
    use crate::prefix::prefix_match;
    use crate::scheduling::{SchedulingRequest, SharedState};
    use alloc::string::{String, ToString};
    use alloc::vec;

    fn config(json: &str) -> PrefixConfig {
        built::<ApproxPrefixCacheProducer>(json).handle().config().unwrap()
    }

    fn pool(block_size: Option<u32>) -> PoolSnapshot {
        let endpoints = ["10.0.0.1:8000", "10.0.0.2:8000"]
            .iter()
            .map(|a| EndpointState {
                metrics: Some(Metrics { block_size, ..Metrics::default() }),
                ..EndpointState::new(Endpoint::new(*a))
            })
            .collect();
        PoolSnapshot { endpoints, ..PoolSnapshot::default() }
    }

    #[test]
    fn defaults_are_llm_d_v0_10s() {
        let c = config("{}");
        let p = pool(None);
        // 16 tokens configured, 64 in effect; 131072 tokens = 2048 blocks of 64 tokens.
        assert_eq!(c.block_bytes_for(&p), 256);
        assert_eq!(c.max_blocks_for(256), 2048);
        assert_eq!((c.lru_capacity_per_server, c.auto_tune), (31_250, true));
        // Auto-tuned from vLLM's reported block size, still at least 64 tokens.
        assert_eq!(c.block_bytes_for(&pool(Some(16))), 256);
        assert_eq!(c.block_bytes_for(&pool(Some(128))), 512);
        assert_eq!(c.max_blocks_for(512), 1024);
    }

    #[test]
    fn parameters_carry_over_with_llm_d_meanings() {
        let c = config(
            r#"{"autoTune": false, "blockSizeTokens": 128, "maxPrefixTokensToMatch": 16384,
                "lruCapacityPerServer": 500}"#,
        );
        assert_eq!(c.block_bytes_for(&pool(Some(16))), 512, "not auto-tuned");
        assert_eq!((c.max_blocks_for(512), c.lru_capacity_per_server), (128, 500));
        // The block cap applies only without a token cap; both 0 hash the whole prompt.
        let blocks = config(r#"{"maxPrefixTokensToMatch": 0, "maxPrefixBlocksToMatch": 10}"#);
        assert_eq!(blocks.max_blocks_for(256), 10);
        let whole = config(r#"{"maxPrefixTokensToMatch": 0, "maxPrefixBlocksToMatch": 0}"#);
        assert_eq!(whole.max_blocks_for(256), usize::MAX);
        // Deprecated blockSize is tokens, used when blockSizeTokens is left at its default.
        assert_eq!(config(r#"{"autoTune": false, "blockSize": 100}"#).block_bytes_for(&pool(None)), 400);
        let both = r#"{"autoTune": false, "blockSize": 100, "blockSizeTokens": 80}"#;
        assert_eq!(config(both).block_bytes_for(&pool(None)), 320);
        // lruCapacityPerServer <= 0 means the default, as in llm-d.
        assert_eq!(config(r#"{"lruCapacityPerServer": 0}"#).lru_capacity_per_server, 31_250);
    }

    #[test]
    fn values_it_cannot_honour_are_errors_naming_the_field() {
        let err = build_err::<ApproxPrefixCacheProducer>(r#"{"autoTune": false, "blockSizeTokens": 0}"#);
        assert_eq!(err.to_string(), "blockSizeTokens: expected an integer > 0 when autoTune is false, got 0");
        assert_eq!(
            build_err::<ApproxPrefixCacheProducer>(r#"{"maxPrefixTokensToMatch": -1}"#).field,
            "maxPrefixTokensToMatch"
        );
        assert_eq!(
            build_err::<ApproxPrefixCacheProducer>(r#"{"maxPrefixBlocksToMatch": -1}"#).field,
            "maxPrefixBlocksToMatch"
        );
        assert_eq!(
            build_err::<ApproxPrefixCacheProducer>(r#"{"lruCapacityPerServer": 1e12}"#).field,
            "lruCapacityPerServer"
        );
        // GIE-era scorer knobs that llm-d v0.10 does not have are unknown here too.
        assert_eq!(build_err::<ApproxPrefixCacheProducer>(r#"{"hashSeed": "1"}"#).field, "hashSeed");
    }

    #[test]
    fn small_block_sizes_are_raised_with_a_warning() {
        let mut shared = SharedState::default();
        let mut ctx = BuildContext::new(TYPE, &mut shared);
        let p = ApproxPrefixCacheProducerParams { block_size_tokens: 5, ..Default::default() };
        let c = prefix_config(&p, &mut ctx).unwrap();
        assert_eq!(c.block_bytes_for(&pool(None)), 256);
        let warnings = ctx.take_warnings();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].field, "blockSizeTokens");
    }

    #[test]
    fn a_second_prefix_index_is_an_error() {
        let mut shared = SharedState::default();
        try_build_with::<ApproxPrefixCacheProducer>("{}", &mut shared).unwrap();
        let mut second = BuildContext::new("tier2", &mut shared);
        let err = ApproxPrefixCacheProducer::build(Default::default(), &mut second).err().unwrap();
        assert!(err.to_string().contains("the only approx-prefix-cache-producer"), "{err}");
    }

    #[test]
    fn records_the_primary_and_prefill_picks_of_the_match_its_readers_computed() {
        let pool = pool(None);
        let prompt = vec![b'z'; 256 * 3];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let mut producer = built::<ApproxPrefixCacheProducer>("{}");
        let mut state = CycleState::default();
        // Nothing computed this cycle: nothing to record.
        producer.pre_request(
            &ctx,
            &state,
            &[ProfileRunResult { profile: String::from("d"), targets: vec![0] }],
        );
        assert_eq!(producer.index().unwrap().stats().entries, 0);
        let m = prefix_match(&ctx, &mut state, producer.handle()).unwrap();
        assert_eq!((m.total_blocks(), m.block_tokens()), (3, 64));
        let dest = [
            ProfileRunResult { profile: String::from("decode"), targets: vec![1] },
            ProfileRunResult { profile: String::from("prefill"), targets: vec![0] },
        ];
        producer.pre_request(&ctx, &state, &dest);
        let mut next = CycleState::default();
        let m = prefix_match(&ctx, &mut next, producer.handle()).unwrap();
        assert_eq!(m.matched_blocks, [3, 3]);
        assert_eq!(producer.section_role(), Some(SectionRole::DataProducer));
        assert!(producer.as_scorer().is_none() && producer.as_filter().is_none());
    }

    /// llm-d's deploy/config/sim-epp-config.yaml, also with its producer listed after the scorer.
    #[test]
    fn an_llm_d_configuration_schedules_on_the_producers_index() {
        use crate::rng::Rng;
        use crate::scheduling::pipeline::Scheduler;
        let sim = r#"{"plugins": [
            {"type": "approx-prefix-cache-producer",
             "parameters": {"maxPrefixTokensToMatch": 16384, "lruCapacityPerServer": 31250}},
            {"type": "prefix-cache-scorer"}, {"type": "decode-filter"}, {"type": "max-score-picker"},
            {"type": "single-profile-handler"}],
          "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "decode-filter"},
            {"pluginRef": "max-score-picker"}, {"pluginRef": "prefix-cache-scorer", "weight": 2}]}]}"#;
        let mut s = Scheduler::from_json(sim).unwrap();
        assert_eq!(s.shared().prefix_indexes().count(), 1);
        let handle = s.shared().prefix_index(TYPE).unwrap().clone();
        assert_eq!(handle.config().unwrap().max_prefix_bytes, 16384 * 4);

        let pool = pool(None);
        let prompt = vec![b'p'; 256 * 4];
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
        let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
        let first = s.schedule(&ctx, &[0, 1], &mut Rng::new(1)).unwrap();
        assert_eq!(first.prefix_hashes.len(), 4, "64-token blocks");
        // Whatever the tie-break, the next request with the prompt goes where the first went.
        for seed in 2..10 {
            let next = s.schedule(&ctx, &[0, 1], &mut Rng::new(seed)).unwrap();
            assert_eq!(next.targets.first(), first.targets.first());
        }

        let reversed = sim.replacen(r#"{"type": "prefix-cache-scorer"}, "#, "", 1).replacen(
            r#"{"plugins": ["#,
            r#"{"plugins": [{"type": "prefix-cache-scorer"}, "#,
            1,
        );
        let s = Scheduler::from_json(&reversed).unwrap();
        assert_eq!(s.shared().prefix_indexes().count(), 1, "the scorer reads the producer listed after it");
        let tiered = sim.replacen(
            r#"{"type": "prefix-cache-scorer"}"#,
            r#"{"type": "prefix-cache-scorer"}, {"name": "cpu", "type": "approx-prefix-cache-producer"}"#,
            1,
        );
        let err = Scheduler::from_json(&tiered).err().unwrap().to_string();
        assert!(
            err.starts_with("plugins[2].parameters: expected the only approx-prefix-cache-producer"),
            "{err}"
        );
    }
}
