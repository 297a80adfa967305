//! `prefix-owner-scorer` (ours, not in GIE/llm-d): every decision point names the same owner for a
//! prompt without sharing any state, by rendezvous (highest-random-weight) hashing of a key taken from the
//! prompt's block-hash chain, with consistent hashing's bounded loads on top.
//!
//! Many gateway replicas, each with several proxy workers, each pick on their own: their prefix indexes
//! only hold what they routed themselves. `prefix-cache-scorer` then places a prefix that is new to one
//! decision point wherever that point's load scorers say, so the same system prompt or conversation is
//! computed on several pods, one per gateway. This scorer gives those decision points something to agree
//! on: a function of the prompt alone.
//!
//! # Formula
//!
//! 1. The chain: the request's block hashes `h_1 … h_n`, exactly those the prefix index uses (the
//!    `prefix-cache-scorer` named by `prefixMatchInfoProducerName`, or the only one; without one, GIE's
//!    default hashing, block size auto-tuned from the pool). A prompt shorter than one block has no key:
//!    every candidate scores 0.
//! 2. The key `h_d`, at depth `d` (blocks): with `M` = `minKeyTokens` and `K` = `maxKeyTokens` in blocks,
//!    `d = n` when `n < M`, else `d = min(K, M·2^j)` for the largest `j` with `M·2^j ≤ n`. So the key is
//!    always at least half of the hashed prompt (or its first `K` blocks) and moves only when the prompt
//!    doubles. `h_d` already covers the model and `cache_salt` (they seed the chain).
//! 3. Rank: endpoint `e` weighs `xxh64(address(e), seed = h_d)`; the candidates in descending weight are
//!    the key's rank order. Removing an endpoint moves only the keys it owned; adding one takes only the
//!    keys it now wins (~1/N of them).
//! 4. Bounded loads: `L(e) = max(running + waiting, in_flight)` (the server's last report, or this gateway's
//!    own in-flight requests when they exceed it: the load `inflight-aware-queue-scorer` reads, with the
//!    running requests added); an unscraped endpoint has `L = in_flight`. With `k` candidates, `e` is
//!    eligible when `L(e) + 1 ≤ ⌈(1 + ε)·(ΣL + 1) / k⌉` (Mirrokni et al.'s capacity after adding this
//!    request; ε = `loadBound`). The least loaded candidate is always eligible.
//! 5. Score: the first eligible endpoint in rank order scores `min(1, hashed prompt tokens /
//!    fullScoreTokens)` (1 when `fullScoreTokens` is 0), every other candidate 0.
//!
//! Every decision point computes the same key and the same rank order; they see the same scraped loads
//! (and differ only by their own in-flight requests), so they name the same owner and, when it is
//! overloaded, spill to the same next one.
//!
//! # Which key: the chain depth
//!
//! The depth decides what "the same prefix" means, and both obvious answers are wrong:
//! - **the first block** (or any small fixed depth) puts everything that shares a system prompt, or
//!   just a chat template's first 64 bytes (`[{"role":"system","content":"You are`), on one pod: every
//!   conversation of a popular system prompt shares one owner and only the load bound spreads them;
//! - **the whole prompt** moves a conversation on every turn: turn n+1 extends turn n, so its last block
//!   hash is new, and so is its owner.
//!
//! Keys that depend on the decision point's own prefix index (the deepest block it has seen routed, or
//! the first one it has not, or the depth shared by two endpoints) were considered and rejected:
//! - they change between turns at the decision point that routed the previous turn (its index now holds
//!   that turn, so the "seen" depth jumps to its end), so the owner moves after every turn unless local
//!   evidence outvotes it; and if local evidence outvotes the owner, the first turn of a new conversation
//!   under a system prompt goes where the system prompt is rather than to its owner, which the other
//!   gateways do not know;
//! - they change when a bounded-load spill copies a conversation to a second pod, so a conversation that
//!   spilled once gets a new owner, and every spill is a move;
//! - decision points see different traffic, so during warm-up, after LRU evictions and after restarts
//!   they disagree on the depth, which is the one thing this scorer exists to agree on.
//!
//! So the key is a pure function of the prompt, and the depth is a ladder, `M·2^j` capped at `K`, which
//! bounds both failures instead of trading one for the other:
//! - a conversation's key moves only when its prompt doubles (turn 1 of 1,100 tokens keeps the 1,024-token
//!   key until the prompt passes 2,048): at most `log2(K/M)` moves in its life, none once it passes `K`;
//!   the hashed prompt stops at `maxPrefixBlocksToMatch` (4,096 tokens by default), so long conversations
//!   never move;
//! - the key covers at least half of the hashed prompt, so it falls inside a shared prefix only when that
//!   prefix is more than half of the prompt; the requests that then share an owner share most of their
//!   prompt (what an owner is for), and a turn placed by the shared part misses less than half its prompt;
//! - prompts shorter than `M` (256 tokens) hash whole: unique short prompts spread evenly, and a chat
//!   template or a short shared system prompt does not make a hot key;
//! - `minKeyTokens = maxKeyTokens = k` gives the plain "first k tokens" key, for comparison.
//!
//! # With the other scorers
//!
//! The owner is only a vote. Combined with `prefix-cache-scorer` (this decision point's own evidence of
//! where the prompt is cached) and a load scorer, it decides where nothing is known: a new prefix, or a
//! conversation whose earlier turns went through another gateway. Its weight should beat the load
//! scorers' spread between endpoints under the bound (the bound is the load control) and the evidence of
//! a shared system prompt alone (`3 × 0.89` for a 1,000-token system prompt in a 1,120-token first turn),
//! so that a new conversation goes to its owner, where the other gateways will send its next turns; then
//! the owner also holds the conversation and the two scorers agree. `prefix-cache-affinity-filter`, which
//! keeps only endpoints holding ≥ 80 % of the prompt, would take the owner out of that first turn: leave it
//! out of such profiles. `fullScoreTokens` weakens the vote for short prompts, whose prefix is cheap to
//! recompute, so load and LoRA residency decide them (a unique 200-token prompt gets 0.2).
//!
//! How it differs from consistent hashing with bounded loads as published: the rank is rendezvous
//! hashing over the candidates (no ring, no virtual nodes: with tens of endpoints its balance is better
//! and it needs no state), the load is what the gateway can see rather than a count kept by one balancer,
//! and it scores rather than picks.

use crate::config::params::{non_negative_count, non_negative_number, positive_count, ParamError};
use crate::plugins::candidates::state;
use crate::prefix::{hash_blocks, prefix_match, PrefixConfig, PrefixHandle, BYTES_PER_TOKEN};
use crate::scheduling::{
    BuildContext, CycleState, LookupError, Plugin, PluginFactory, SchedulingContext, Scorer,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use xxhash_rust::xxh64::xxh64;

pub const TYPE: &str = "prefix-owner-scorer";

/// `parameters` of a `prefix-owner-scorer` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixOwnerScorerParams {
    /// Shortest key (tokens): prompts shorter than this are keyed whole; longer ones by the first
    /// `minKeyTokens · 2^j` tokens. Default 256.
    #[serde(deserialize_with = "positive_count")]
    pub min_key_tokens: usize,
    /// Longest key (tokens), at least `minKeyTokens`. Default 4096 (the default hashed prefix).
    #[serde(deserialize_with = "positive_count")]
    pub max_key_tokens: usize,
    /// ε of the bounded loads: an endpoint is passed over when it would exceed (1 + ε) × the mean load.
    /// Default 0.25.
    #[serde(deserialize_with = "non_negative_number")]
    pub load_bound: f64,
    /// Hashed prompt tokens from which the owner scores 1 (less in proportion below); 0 = always 1.
    /// Default 1024.
    #[serde(deserialize_with = "non_negative_count")]
    pub full_score_tokens: u64,
    /// Name of the `prefix-cache-scorer` whose block hashes to use; by default the only one configured.
    pub prefix_match_info_producer_name: Option<String>,
}

impl Default for PrefixOwnerScorerParams {
    fn default() -> PrefixOwnerScorerParams {
        PrefixOwnerScorerParams {
            min_key_tokens: 256,
            max_key_tokens: 4096,
            load_bound: 0.25,
            full_score_tokens: 1024,
            prefix_match_info_producer_name: None,
        }
    }
}

/// Scores the bounded-load rendezvous owner of the prompt's chain key (see the module documentation).
pub struct PrefixOwnerScorer {
    params: PrefixOwnerScorerParams,
    /// The prefix index whose hashes (and match) are shared; `None`: hash with GIE's defaults.
    handle: Option<PrefixHandle>,
}

impl PluginFactory for PrefixOwnerScorer {
    const TYPE: &'static str = TYPE;
    type Params = PrefixOwnerScorerParams;

    /// Reads the block hashes of the `prefix-cache-scorer` named by `prefixMatchInfoProducerName` (else
    /// of the only one); without one it hashes the prompt itself and keeps no index.
    fn build(
        params: PrefixOwnerScorerParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<PrefixOwnerScorer, ParamError> {
        if params.max_key_tokens < params.min_key_tokens {
            return Err(ParamError::new(
                "maxKeyTokens",
                format!("an integer >= minKeyTokens ({})", params.min_key_tokens),
                Some(format!("{}", params.max_key_tokens)),
            ));
        }
        let producer = params.prefix_match_info_producer_name.as_deref();
        let handle = match ctx.prefix_index(producer) {
            Ok(handle) => handle,
            Err(LookupError::NotProduced) => {
                return Err(ParamError::new(
                    "prefixMatchInfoProducerName",
                    "the name of a prefix-cache-scorer plugin",
                    Some(format!("{:?}", producer.unwrap_or_default())),
                ))
            }
            Err(LookupError::Ambiguous) => {
                return Err(ParamError::new(
                    "prefixMatchInfoProducerName",
                    "the name of the prefix-cache-scorer to follow (there are several)",
                    None,
                ))
            }
        };
        Ok(PrefixOwnerScorer { params, handle })
    }
}

/// The chain key of a request and how long its hashed prompt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainKey {
    /// `h_d`, the block hash the owner is derived from.
    pub key: u64,
    /// `d`, its depth in blocks (1-based).
    pub depth: usize,
    /// Hashed prompt length in tokens (`n` blocks × block size).
    pub hashed_tokens: u64,
}

/// The depth `d` of the key for a chain of `n` blocks, with the shortest and longest keys `min_blocks`
/// and `max_blocks` (see the module documentation). 0 only when `n` is 0.
pub fn key_depth(n: usize, min_blocks: usize, max_blocks: usize) -> usize {
    let min_blocks = min_blocks.max(1);
    if n < min_blocks {
        return n;
    }
    let mut d = min_blocks;
    while d <= n / 2 {
        d = d.saturating_mul(2);
    }
    d.min(max_blocks.max(min_blocks))
}

/// The rendezvous weight of `address` for `key`: higher wins.
pub fn rendezvous_weight(key: u64, address: &str) -> u64 {
    xxh64(address.as_bytes(), key)
}

/// Whole blocks in `tokens` tokens of `block_bytes` bytes (at least 1).
fn tokens_to_blocks(tokens: usize, block_bytes: usize) -> usize {
    (tokens.saturating_mul(BYTES_PER_TOKEN) / block_bytes.max(1)).max(1)
}

impl PrefixOwnerScorer {
    /// The key of the request in `ctx` (`None` for a prompt shorter than one block).
    pub fn chain_key(&self, ctx: &SchedulingContext<'_>, state: &mut CycleState) -> Option<ChainKey> {
        let own;
        let (hashes, block_bytes): (&[u64], usize) = match &self.handle {
            Some(handle) => {
                let m = prefix_match(ctx, state, handle)?;
                (&m.hashes, m.block_bytes)
            }
            None => {
                let config = PrefixConfig::default();
                let block_bytes = config.block_bytes_for(ctx.pool);
                let mut hashes = Vec::new();
                let r = ctx.request;
                let max_blocks = config.max_blocks_for(block_bytes);
                hash_blocks(r.model, r.cache_salt, r.prefix_input, block_bytes, max_blocks, &mut hashes);
                own = hashes;
                (&own, block_bytes)
            }
        };
        let n = hashes.len();
        let min_blocks = tokens_to_blocks(self.params.min_key_tokens, block_bytes);
        let max_blocks = tokens_to_blocks(self.params.max_key_tokens, block_bytes);
        let depth = key_depth(n, min_blocks, max_blocks);
        let key = *hashes.get(depth.checked_sub(1)?)?;
        let hashed_tokens = (n.saturating_mul(block_bytes) / BYTES_PER_TOKEN) as u64;
        Some(ChainKey { key, depth, hashed_tokens })
    }

    /// What the owner scores for a prompt of `hashed_tokens` tokens.
    fn strength(&self, hashed_tokens: u64) -> f64 {
        match self.params.full_score_tokens {
            0 => 1.0,
            full => (hashed_tokens as f64 / full as f64).min(1.0),
        }
    }

    /// Position in `candidates` of the key's bounded-load owner: the highest rendezvous weight among the
    /// eligible candidates. `None` only for no candidates.
    pub fn owner(&self, ctx: &SchedulingContext<'_>, candidates: &[usize], key: u64) -> Option<usize> {
        let loads: Vec<u64> = candidates.iter().map(|&i| load(ctx, i)).collect();
        let total: f64 = loads.iter().map(|&l| l as f64).sum();
        let k = candidates.len() as f64;
        // L + 1 ≤ ⌈x⌉ ⟺ L < x for an integer L, with x = (1 + ε)(ΣL + 1)/k; multiplied out by k.
        let limit = (1.0 + self.params.load_bound) * (total + 1.0);
        let eligible = |l: u64| (l as f64) * k < limit;
        let weight = |i: usize| state(ctx, i).map_or(0, |s| rendezvous_weight(key, s.address()));
        let best = |only_eligible: bool| {
            candidates
                .iter()
                .zip(&loads)
                .enumerate()
                .filter(|(_, (_, &l))| !only_eligible || eligible(l))
                .max_by_key(|(_, (&i, _))| weight(i))
                .map(|(pos, _)| pos)
        };
        // The least loaded candidate is always eligible; the fallback only guards float corner cases.
        best(true).or_else(|| best(false))
    }
}

/// The load bounded loads compare: requests at the endpoint as the server reported them, or as this
/// gateway counts them when it has sent more than the report shows.
fn load(ctx: &SchedulingContext<'_>, i: usize) -> u64 {
    let Some(s) = state(ctx, i) else { return 0 };
    let in_flight = u64::from(s.in_flight.requests);
    match &s.metrics {
        Some(m) => (u64::from(m.running) + u64::from(m.waiting)).max(in_flight),
        None => in_flight,
    }
}

impl Scorer for PrefixOwnerScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        scores.iter_mut().for_each(|s| *s = 0.0);
        let Some(key) = self.chain_key(ctx, state) else { return };
        let Some(owner) = self.owner(ctx, candidates, key.key) else { return };
        if let Some(s) = scores.get_mut(owner) {
            *s = self.strength(key.hashed_tokens);
        }
    }
}

impl Plugin for PrefixOwnerScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint_picker::{EndpointPicker, Outcome, PoolView, RequestInfo};
    use crate::model::PoolSnapshot;
    use crate::plugins::scorers::prefix_cache_scorer::PrefixCacheScorer;
    use crate::plugins::test_support::*;
    use crate::rng::Rng;
    use crate::scheduling::{SchedulingRequest, SharedState};
    use alloc::string::ToString;
    use alloc::vec;

    /// The candidate configuration for many decision points, as shipped.
    const MANY_GATEWAYS: &str = include_str!("../../../../envoy-config/scheduling/many-gateways.json");

    /// `tokens × 4` bytes of text determined by `seed` (equal seeds, equal text).
    fn text(seed: u64, tokens: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..tokens * BYTES_PER_TOKEN).map(|_| b'a' + rng.below(26) as u8).collect()
    }

    fn idle_pool(n: u8) -> PoolSnapshot {
        pool((1..=n).map(|i| ep(i, 0, 0, 0.0)).collect())
    }

    fn request(prompt: &[u8]) -> SchedulingRequest<'_> {
        SchedulingRequest { model: "m", prefix_input: prompt, ..SchedulingRequest::default() }
    }

    /// The position of the candidate the scorer names (the only non-zero score), if any.
    fn owner_of(
        s: &PrefixOwnerScorer,
        p: &PoolSnapshot,
        prompt: &[u8],
        candidates: &[usize],
    ) -> Option<usize> {
        let out = scores_of(s, p, &request(prompt), candidates);
        let named: Vec<usize> = (0..out.len()).filter(|&i| out[i] > 0.0).collect();
        assert!(named.len() <= 1, "{out:?}");
        named.first().map(|&pos| candidates[pos])
    }

    fn all(p: &PoolSnapshot) -> Vec<usize> {
        (0..p.endpoints.len()).collect()
    }

    #[test]
    fn the_key_is_at_least_half_the_prompt_and_moves_only_when_it_doubles() {
        // M = 16 blocks (256 tokens of 64-byte blocks), K = 256 blocks.
        let d = |n| key_depth(n, 16, 256);
        assert_eq!([d(0), d(1), d(15)], [0, 1, 15], "shorter than M: the whole prompt");
        assert_eq!(
            [d(16), d(31), d(32), d(63), d(64), d(127), d(128), d(255), d(256), d(1000)],
            [16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
        );
        // M = K: the first K blocks, whatever follows.
        assert_eq!([key_depth(10, 64, 64), key_depth(64, 64, 64), key_depth(200, 64, 64)], [10, 64, 64]);
        // K that is not M·2^j caps the ladder.
        assert_eq!([key_depth(90, 16, 100), key_depth(250, 16, 100)], [64, 100]);
    }

    #[test]
    fn conversations_keep_their_owner_while_sharing_a_system_prompt() {
        let s = built::<PrefixOwnerScorer>("{}");
        let p = idle_pool(8);
        let system = text(1, 1000);
        let turn = |conversation: u64, turns: usize| {
            let mut prompt = system.clone();
            for t in 0..turns as u64 {
                prompt.extend(text(conversation * 100 + t, 120)); // question
                prompt.extend(text(conversation * 100 + 50 + t, 250)); // answer
            }
            prompt.extend(text(conversation * 100 + turns as u64, 120));
            prompt
        };
        let key = |prompt: &[u8]| {
            let req = request(prompt);
            let ctx = SchedulingContext { request: &req, pool: &p, now_ms: NOW };
            s.chain_key(&ctx, &mut CycleState::default()).unwrap()
        };
        // Turns 1–3 (1,120 to 1,860 tokens) are keyed by their first 1,024 tokens: the system prompt and
        // the start of the first question, the same in every turn and different in every conversation.
        let first = key(&turn(7, 0));
        assert_eq!((first.depth, first.hashed_tokens), (64, 1120));
        assert_eq!(key(&turn(7, 1)).key, first.key);
        assert_eq!(key(&turn(7, 2)).key, first.key);
        assert_ne!(key(&turn(8, 0)).key, first.key, "another conversation, another key");
        // Past 2,048 tokens the key doubles: the one move of this conversation until 4,096.
        assert_eq!(key(&turn(7, 3)).depth, 128);
        assert_eq!(key(&turn(7, 5)).key, key(&turn(7, 3)).key);
        assert_eq!(
            owner_of(&s, &p, &turn(7, 2), &all(&p)),
            owner_of(&s, &p, &turn(7, 0), &all(&p)),
            "same key, same owner"
        );
    }

    #[test]
    fn separate_decision_points_with_empty_indexes_agree() {
        // Two gateways built from the shipped configuration, each with its own (empty) prefix index,
        // each drawing its own coins: every prompt goes to the same endpoint through both.
        let mut a = EndpointPicker::from_json(MANY_GATEWAYS).unwrap();
        let mut b = EndpointPicker::from_json(MANY_GATEWAYS).unwrap();
        let mut p = idle_pool(8);
        p.published_at_ms = NOW;
        let mut seen = [0u32; 8];
        for i in 0..200u64 {
            let content = String::from_utf8(text(1000 + i, 1500)).unwrap();
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]})
                .to_string();
            let decide = |picker: &mut EndpointPicker, id: &str, seed: u64| {
                let info =
                    RequestInfo { path: "/v1/chat/completions", request_id: id, ..RequestInfo::default() };
                match picker.decide(&info, Some(body.as_bytes()), PoolView::Fresh(&p), NOW, seed) {
                    Outcome::Route(r) => r.destination,
                    other => panic!("{other:?}"),
                }
            };
            let at_a = decide(&mut a, "x", i);
            assert_eq!(at_a, decide(&mut b, "y", i.wrapping_mul(7919) ^ 0xfeed), "prompt {i}");
            seen[p.endpoints.iter().position(|e| e.address() == at_a).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "owners spread over the pool: {seen:?}");
    }

    #[test]
    fn distinct_prompts_spread_evenly() {
        let s = built::<PrefixOwnerScorer>("{}");
        let p = idle_pool(8);
        let mut counts = [0u32; 8];
        for i in 0..4000 {
            counts[owner_of(&s, &p, &text(i, 300), &all(&p)).unwrap()] += 1;
        }
        // 500 each expected; the binomial's standard deviation is ~21.
        assert!(counts.iter().all(|&c| (430..=570).contains(&c)), "{counts:?}");
    }

    #[test]
    fn an_overloaded_owner_loses_to_the_next_in_rank() {
        let s = built::<PrefixOwnerScorer>("{}");
        let idle = idle_pool(4);
        let prompt = text(42, 2000);
        let owner = owner_of(&s, &idle, &prompt, &all(&idle)).unwrap();
        // The rank order's second: the owner among the others.
        let others: Vec<usize> = all(&idle).into_iter().filter(|&i| i != owner).collect();
        let second = owner_of(&s, &idle, &prompt, &others).unwrap();

        // Loads 10 on the owner, 2 elsewhere: mean with this request 17/4, bound ⌈1.25 × 17/4⌉ = 6.
        let mut busy = idle.clone();
        for (i, e) in busy.endpoints.iter_mut().enumerate() {
            e.metrics.as_mut().unwrap().running = if i == owner { 10 } else { 2 };
        }
        assert_eq!(owner_of(&s, &busy, &prompt, &all(&busy)), Some(second));
        // At 3 it is within the bound again: ⌈1.25 × 10/4⌉ = 4 ≥ 3 + 1.
        busy.endpoints[owner].metrics.as_mut().unwrap().running = 3;
        assert_eq!(owner_of(&s, &busy, &prompt, &all(&busy)), Some(owner));
        // The gateway's own in-flight requests count when the report has not seen them: 9 + 1 > 4.
        let mut unseen = idle.clone();
        unseen.endpoints[owner] = inflight(unseen.endpoints[owner].clone(), 9, 0);
        assert_eq!(owner_of(&s, &unseen, &prompt, &all(&unseen)), Some(second));
        // ε = 3 tolerates it: ⌈4 × 10/4⌉ = 10.
        let loose = built::<PrefixOwnerScorer>(r#"{"loadBound": 3}"#);
        assert_eq!(owner_of(&loose, &unseen, &prompt, &all(&unseen)), Some(owner));
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let s = built::<PrefixOwnerScorer>("{}");
        let full = idle_pool(8);
        let gone = full.endpoints[3].address().to_string();
        let mut smaller = full.clone();
        smaller.endpoints.remove(3);
        let mut moved = 0;
        for i in 0..2000 {
            let prompt = text(i, 400);
            let before = full.endpoints[owner_of(&s, &full, &prompt, &all(&full)).unwrap()].address();
            let after = smaller.endpoints[owner_of(&s, &smaller, &prompt, &all(&smaller)).unwrap()].address();
            if before == gone {
                moved += 1;
            } else {
                assert_eq!(before, after, "prompt {i} moved although its owner stayed");
            }
        }
        assert!((180..=320).contains(&moved), "{moved} of 2000 keys were on the removed endpoint");
    }

    #[test]
    fn short_prompts_vote_less_and_sub_block_prompts_not_at_all() {
        let s = built::<PrefixOwnerScorer>("{}");
        let p = idle_pool(3);
        // 200 tokens = 12 whole 64-byte blocks = 192 hashed tokens: 192 / 1024.
        let out = scores(&s, &p, &request(&text(5, 200)));
        assert_close(&[out.iter().sum::<f64>()], &[192.0 / 1024.0]);
        assert_eq!(out.iter().filter(|&&x| x > 0.0).count(), 1);
        let long = scores(&s, &p, &request(&text(5, 2000)));
        assert_close(&[long.iter().sum::<f64>()], &[1.0]);
        assert_eq!(scores(&s, &p, &request(&text(5, 15))), [0.0, 0.0, 0.0], "under one block: no key");
        let always = built::<PrefixOwnerScorer>(r#"{"fullScoreTokens": 0}"#);
        assert_close(&[scores(&always, &p, &request(&text(5, 200))).iter().sum::<f64>()], &[1.0]);
    }

    #[test]
    fn it_reads_the_block_hashes_of_the_prefix_scorer() {
        // The producer cuts 32-token (128-byte) blocks: the key is in those blocks (M = 8 of them).
        let mut shared = SharedState::default();
        built_with::<PrefixCacheScorer>(r#"{"blockSizeTokens": 32, "autoTune": false}"#, &mut shared);
        let s = built_with::<PrefixOwnerScorer>("{}", &mut shared);
        let p = idle_pool(2);
        let prompt = text(9, 1100);
        let req = request(&prompt);
        let ctx = SchedulingContext { request: &req, pool: &p, now_ms: NOW };
        let mut state = CycleState::default();
        let key = s.chain_key(&ctx, &mut state).unwrap();
        assert_eq!((key.depth, key.hashed_tokens), (32, 1088));
        let m = state.get::<crate::prefix::PrefixMatch>(crate::prefix::PREFIX_MATCH_STATE_KEY).unwrap();
        assert_eq!(m.hashes[31], key.key, "the match is shared through the cycle state");
        // Alone it hashes GIE's default 64-byte blocks and keeps no index.
        let alone = built::<PrefixOwnerScorer>("{}");
        let key = alone.chain_key(&ctx, &mut CycleState::default()).unwrap();
        assert_eq!((key.depth, key.hashed_tokens), (64, 1088));
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let field = |json: &str| build_err::<PrefixOwnerScorer>(json).field;
        assert_eq!(field(r#"{"minKeyTokens": 0}"#), "minKeyTokens");
        assert_eq!(field(r#"{"maxKeyTokens": 2.5}"#), "maxKeyTokens");
        assert_eq!(field(r#"{"loadBound": -0.1}"#), "loadBound");
        assert_eq!(field(r#"{"fullScoreTokens": -1}"#), "fullScoreTokens");
        assert_eq!(field(r#"{"prefixMatchInfoProducerName": "nope"}"#), "prefixMatchInfoProducerName");
        assert_eq!(field(r#"{"keyTokens": 5}"#), "keyTokens");
        let err = build_err::<PrefixOwnerScorer>(r#"{"minKeyTokens": 512, "maxKeyTokens": 256}"#);
        assert_eq!(err.to_string(), "maxKeyTokens: expected an integer >= minKeyTokens (512), got 256");
    }

    #[test]
    fn the_many_gateways_configuration_builds() {
        let picker = EndpointPicker::from_json(MANY_GATEWAYS).unwrap();
        let scheduler = &picker.config().picker;
        assert_eq!(scheduler.warnings, vec![]);
        let built = picker.scheduler();
        assert!(built.plugin(TYPE).is_some());
        assert!(built.plugin(crate::plugins::pickers::near_best_picker::TYPE).is_some());
        assert_eq!(built.shared().prefix_indexes().count(), 1, "one prefix index, shared");
    }
}
