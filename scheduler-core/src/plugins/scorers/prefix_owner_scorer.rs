//! `prefix-owner-scorer` (ours, not in GIE/llm-d): the decision points of many gateways name the same
//! owner for a prompt without sharing any state, by rendezvous (highest-random-weight) hashing of a key
//! taken from the prompt's block-hash chain, with consistent hashing's bounded loads on top.
//!
//! Every proxy worker of every gateway replica picks on its own, and its prefix index only holds what its
//! own Envoy routed. `prefix-cache-scorer` then places a prefix that is new to one decision point wherever
//! that point's load scorers say, so one system prompt or conversation is computed on several pods, one
//! per gateway, and a conversation's next turn through another gateway lands on a pod that never saw it.
//! This scorer gives the decision points something to agree on.
//!
//! # Formula
//!
//! 1. The chain: the request's block hashes `h_1 … h_n` and this decision point's per-endpoint match,
//!    exactly those of its prefix index (the `prefix-cache-scorer` named by
//!    `prefixMatchInfoProducerName`, or the only one; without one the scorer keeps an index of its own,
//!    with GIE's default hashing, as `prefix-cache-affinity-filter` does). A prompt shorter than one
//!    block has no key: every candidate scores 0.
//! 2. The shared prefix `s`: the `sharedBy`-th longest per-endpoint match over the whole pool, i.e. the
//!    blocks this decision point has routed to at least `sharedBy` endpoints (0 if fewer hold any).
//! 3. The key `h_d`: with `T` = `keyStepTokens` in blocks, `d` = the first multiple of `T` past `s`, or
//!    `n` when the prompt ends before it; when the whole prompt is shared (`s ≥ n`), `d = min(T, n)`.
//!    `h_d` covers the model and `cache_salt` (they seed the chain).
//! 4. Rank: endpoint `e` weighs `xxh64(address(e), seed = h_d)`; the candidates by descending weight are
//!    the key's rank order. Removing an endpoint moves only the keys it owned; adding one takes only the
//!    keys it now wins (~1/N of them).
//! 5. Bounded loads: `L(e) = max(running + waiting, in_flight)`, the server's last report or, when this
//!    gateway has sent more than the report shows, its own count (`inflight-aware-queue-scorer`'s estimate,
//!    running requests added); `in_flight` alone without metrics. With `k` candidates, `e` is eligible when
//!    `L(e) − loadSlack + 1 ≤ ⌈(1 + ε)·(ΣL + 1) / k⌉` (Mirrokni et al.'s capacity after adding this
//!    request, ε = `loadBound`); the least loaded candidate always is.
//! 6. The owner: among the eligible, the one this decision point has already sent the key block to
//!    (`preferKeyHolders`; the longest match wins, then the rank), else the first in rank order.
//! 7. Score: the owner scores `min(1, hashed prompt tokens / fullScoreTokens)` (1 when `fullScoreTokens`
//!    is 0), every other candidate 0.
//!
//! Decision points that have seen the same shared prefixes compute the same key and the same rank order,
//! and they read the same scraped loads (they differ by their own in-flight requests only), so they name
//! the same owner and, when it is overloaded, spill to the same next one.
//!
//! # Which key: where on the chain
//!
//! The depth decides what "the same prefix" means. The first block (or any small fixed depth) puts
//! everything that shares a system prompt, or just a chat template's first 64 bytes
//! (`[{"role":"system","content":"You are`), on one owner; the whole prompt moves a conversation on every
//! turn, because turn n+1 extends turn n and its last block, and so its owner, is new.
//!
//! Depths computed from the prompt alone, which every decision point agrees on by construction, were
//! built first (a fixed 1,024-token key; a ladder `256·g^j ≤ n` tokens capped at 4,096, for g = 2 and 4)
//! and measured in the quality simulator's `--quick` workloads with a throwaway four-gateway policy (each
//! request through one of four independent pickers at random, each seeing only its own in-flight
//! requests; not the suite's multi-gateway evaluation). Any such depth fails one of two ways, and no
//! choice of depth avoids both:
//! - a shared prefix longer than the key depth makes a hot key: all conversations under a 2,000- or
//!   2,500-token system prompt had one owner, bounded loads spilled their turns by load, the turns lost
//!   their pods, and p90 TTFT rose to 9–17 s at a load one decision point served in 0.2–0.35 s;
//! - a depth that grows with the prompt moves the conversation when it crosses a step, and each move
//!   recomputes the whole history (ratio 2: 70 % prefix-cache hits on multi-turn instead of 79 % with a
//!   key that did not move there).
//!
//! So the key has to start past the shared part, and only traffic says where that ends. The scorer reads
//! it from its own index, in the one form that is the same at every decision point: the depth held by at
//! least two endpoints. A prefix that many conversations share (a system prompt, tool definitions, a chat
//! template) reaches every decision point and, once its conversations have owners of their own, sits on
//! several pods in every index, so every point computes the same `s`; the step grid absorbs small
//! differences (a tail block evicted in one index). A conversation's own turns sit on one pod, its owner,
//! so `s` does not grow with it, and turn n+1 gets the key of turn n: the key does not depend on the
//! prompt's length once the prompt is a step past `s`. Measured the same way, four pickers with this key
//! matched one decision point with `recommended.json` on multi-turn (80.7 % vs 80.0 % hits, p90 TTFT
//! 57 ms both), and with a 2,500-token system prompt kept 89 % hits at a lower p90 TTFT (71 vs 96 ms).
//!
//! What it costs:
//! - a prefix no index has seen on two pods yet is keyed inside itself, at the first step, so all its
//!   requests share one owner: the new prefix is computed once, on one pod, by every decision point
//!   (what the owner is for), until load spills it to a second pod; from then on it counts as shared and
//!   each conversation under it gets a key of its own, so the conversations begun before move once;
//! - decision points that have not seen a prefix spread (warm-up, a restarted worker) key inside it, and
//!   one that spilled a conversation to a second pod keys that conversation's next turns deeper, which
//!   moves them; `sharedBy` 3 makes that rarer and the warm-up longer (measured worse: 73.5 % hits on
//!   multi-turn instead of 78.3 %, both without `loadSlack`);
//! - a conversation whose first turn ends within a step past `s` is keyed whole, so its second turn moves
//!   (64 tokens by default: a short first message).
//!
//! When the whole hashed prompt is shared (a repeated prompt, a document longer than the hashed prefix)
//! there is nothing past `s` to key on: the first step keys it, so every request with that hashed prefix
//! has one owner, and the key does not change when the prefix becomes shared.
//!
//! # With the other scorers
//!
//! The owner is a vote. It decides where nothing else is known: a new prefix, or a conversation whose
//! earlier turns went through another gateway. Its weight should beat the load scorers' spread under the
//! bound (the bound is the load control) and the evidence of a shared system prompt alone, which
//! `prefix-cache-scorer` gives every pod holding it (`3 × 0.89` for a 1,000-token system prompt in a
//! 1,120-token first turn): a new conversation then goes to its owner, where the other gateways will send
//! its next turns, and from then on the owner also holds the conversation and both scorers agree.
//! `prefix-cache-affinity-filter`, which keeps only endpoints holding ≥ 80 % of the prompt, would take
//! the owner out of that first turn: leave it out of such profiles. `fullScoreTokens` weakens the vote for
//! short prompts, whose prefix is cheap to recompute, so that load and LoRA residency decide them (a
//! 200-token prompt gets 0.19); LoRA residency still needs a weight above the owner's (×8 against ×4 in
//! `envoy-config/scheduling/recommended.json`: at ×4, presumably by loading adapters where they were not
//! running, p99 TTFT on the multi-LoRA workload rose from 60 ms to 1.2 s). `loadSlack` keeps small loads
//! from spilling on noise: at 6 QPS of the shared-prefix workload, four pickers with ε = 0.25 alone had
//! 16 points less hit rate than one decision point, with 4 requests of slack 4 points less.
//!
//! How it differs from consistent hashing with bounded loads as published: the rank is rendezvous hashing
//! over the candidates (no ring, no virtual nodes, nothing to keep in step with the pool), the key depth comes from the decision point's index, the load is what the gateway
//! can see rather than a count kept by one balancer, and it scores rather than picks.

use crate::config::params::{non_negative_count, non_negative_number, positive_count, ParamError};
use crate::plugins::candidates::state;
use crate::plugins::scorers::prefix_cache_scorer::{follow, FollowedIndex};
use crate::prefix::{
    prefix_match, record_destination, PrefixHandle, PrefixMatch, BYTES_PER_TOKEN, PREFIX_MATCH_STATE_KEY,
};
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileRunResult, SchedulingContext, Scorer,
};
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;
use xxhash_rust::xxh64::xxh64;

pub const TYPE: &str = "prefix-owner-scorer";

/// `parameters` of a `prefix-owner-scorer` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixOwnerScorerParams {
    /// The key is taken at a multiple of this many tokens (rounded down to whole blocks, at least one
    /// block): the first one past the shared prefix. Default 64.
    #[serde(deserialize_with = "positive_count")]
    pub key_step_tokens: usize,
    /// A prefix counts as shared when this decision point's prefix index has seen it routed to at least
    /// this many endpoints. Default 2.
    #[serde(deserialize_with = "positive_count")]
    pub shared_by: usize,
    /// ε of the bounded loads: an endpoint is passed over when it would exceed (1 + ε) × the mean load.
    /// Default 0.25.
    #[serde(deserialize_with = "non_negative_number")]
    pub load_bound: f64,
    /// Requests an endpoint may have above the bound and still be eligible, so that small loads do not
    /// spill on noise. Default 4.
    #[serde(deserialize_with = "non_negative_count")]
    pub load_slack: u64,
    /// Hashed prompt tokens from which the owner scores 1 (less in proportion below); 0 = always 1.
    /// Default 1024.
    #[serde(deserialize_with = "non_negative_count")]
    pub full_score_tokens: u64,
    /// When this decision point's prefix index shows eligible candidates holding the key's block, the
    /// owner is the one of them holding the longest prefix (rank order among equals). Default true.
    pub prefer_key_holders: bool,
    /// Name of the `prefix-cache-scorer` whose index to read; by default the only one configured.
    pub prefix_match_info_producer_name: Option<String>,
}

impl Default for PrefixOwnerScorerParams {
    fn default() -> PrefixOwnerScorerParams {
        PrefixOwnerScorerParams {
            key_step_tokens: 64,
            shared_by: 2,
            load_bound: 0.25,
            load_slack: 4,
            full_score_tokens: 1024,
            prefer_key_holders: true,
            prefix_match_info_producer_name: None,
        }
    }
}

/// Scores the bounded-load rendezvous owner of the prompt's chain key (see the module documentation).
pub struct PrefixOwnerScorer {
    params: PrefixOwnerScorerParams,
    /// The prefix index read: its producer's, or its own.
    handle: PrefixHandle,
    /// True when the scorer owns its index (no prefix scorer configured) and so must learn from picks.
    records: bool,
}

impl PluginFactory for PrefixOwnerScorer {
    const TYPE: &'static str = TYPE;
    type Params = PrefixOwnerScorerParams;

    /// Reads the index of the `prefix-cache-scorer` named by `prefixMatchInfoProducerName` (else of the
    /// only one); without a prefix scorer it keeps an index of its own, with GIE's default hashing, and
    /// records the picks itself.
    fn build(
        params: PrefixOwnerScorerParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<PrefixOwnerScorer, ParamError> {
        let producer = params.prefix_match_info_producer_name.as_deref();
        let FollowedIndex { handle, records } = follow(ctx, producer)?;
        Ok(PrefixOwnerScorer { params, handle, records })
    }
}

/// The chain key of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainKey {
    /// `h_d`, the block hash the owner is derived from.
    pub key: u64,
    /// `d`, its depth in blocks (1-based).
    pub depth: usize,
    /// `s`, the shared prefix in blocks (see [`shared_depth`]).
    pub shared: usize,
    /// Hashed prompt length in tokens (`n` blocks × block size).
    pub hashed_tokens: u64,
}

/// `s`: the prefix (in blocks) that at least `shared_by` endpoints hold, i.e. the `shared_by`-th largest
/// per-endpoint match; 0 when fewer endpoints match at all.
pub fn shared_depth(matched_blocks: &[u32], shared_by: usize) -> usize {
    let mut held: Vec<u32> = matched_blocks.iter().copied().filter(|&m| m > 0).collect();
    let Some(nth) = shared_by.checked_sub(1).filter(|&i| i < held.len()) else { return 0 };
    let (_, &mut s, _) = held.select_nth_unstable_by(nth, |a, b| b.cmp(a));
    s as usize
}

/// The depth `d` of the key of a chain of `n` blocks whose first `shared` blocks are shared, for
/// a key step of `step` blocks: the first multiple of `step` past `shared`, or the whole chain if it ends
/// before that; for a chain shared all along, the first step. 0 only when `n` is 0.
pub fn key_depth(n: usize, shared: usize, step: usize) -> usize {
    let step = step.max(1);
    if shared >= n {
        return step.min(n);
    }
    let next = (shared / step).saturating_add(1).saturating_mul(step);
    next.min(n)
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
        let m = prefix_match(ctx, state, &self.handle)?;
        let n = m.hashes.len();
        let step = tokens_to_blocks(self.params.key_step_tokens, m.block_bytes);
        let shared = shared_depth(&m.matched_blocks, self.params.shared_by);
        let depth = key_depth(n, shared, step);
        let key = *m.hashes.get(depth.checked_sub(1)?)?;
        let hashed_tokens = (n.saturating_mul(m.block_bytes) / BYTES_PER_TOKEN) as u64;
        Some(ChainKey { key, depth, shared, hashed_tokens })
    }

    /// What the owner scores for a prompt of `hashed_tokens` tokens.
    fn strength(&self, hashed_tokens: u64) -> f64 {
        match self.params.full_score_tokens {
            0 => 1.0,
            full => (hashed_tokens as f64 / full as f64).min(1.0),
        }
    }

    /// For each candidate, the prefix blocks this decision point has seen routed there when that
    /// includes the key's block, else `None` (all `None` when not preferring key holders).
    fn key_holders(
        &self,
        ctx: &SchedulingContext<'_>,
        state: &CycleState,
        candidates: &[usize],
        key: u64,
    ) -> Vec<Option<u32>> {
        let found = match (self.params.prefer_key_holders, state.get::<PrefixMatch>(PREFIX_MATCH_STATE_KEY)) {
            (true, Some(m)) => self.handle.index().map(|index| (m, index)),
            _ => None,
        };
        let Some((m, index)) = found else { return candidates.iter().map(|_| None).collect() };
        candidates.iter().map(|&i| index.contains(address(ctx, i)?, key).then(|| m.matched(i))).collect()
    }

    /// Position in `candidates` of the key's bounded-load owner: among the eligible candidates, the key
    /// holder with the longest prefix (`holders`, indexed like `candidates`), else the highest rendezvous
    /// weight. `None` only for no candidates.
    pub fn owner(
        &self,
        ctx: &SchedulingContext<'_>,
        candidates: &[usize],
        key: u64,
        holders: &[Option<u32>],
    ) -> Option<usize> {
        let loads: Vec<u64> = candidates.iter().map(|&i| load(ctx, i)).collect();
        let total: f64 = loads.iter().map(|&l| l as f64).sum();
        let k = candidates.len() as f64;
        // L + 1 ≤ ⌈x⌉ ⟺ L < x for an integer L, with x = (1 + ε)(ΣL + 1)/k; multiplied out by k.
        let limit = (1.0 + self.params.load_bound) * (total + 1.0);
        let slack = self.params.load_slack;
        let eligible =
            |p: &usize| loads.get(*p).is_some_and(|&l| (l.saturating_sub(slack) as f64) * k < limit);
        let weight = |p: usize| {
            candidates.get(p).and_then(|&i| address(ctx, i)).map_or(0, |a| rendezvous_weight(key, a))
        };
        let held = |p: usize| holders.get(p).copied().flatten();
        let positions = 0..candidates.len();
        let holder = positions.clone().filter(eligible).filter_map(|p| Some((held(p)?, weight(p), p))).max();
        if let Some((_, _, p)) = holder {
            return Some(p);
        }
        // The least loaded candidate is always eligible; the fallback only guards float corner cases.
        let by_weight = |p: &usize| weight(*p);
        positions.clone().filter(eligible).max_by_key(by_weight).or_else(|| positions.max_by_key(by_weight))
    }
}

fn address<'a>(ctx: &SchedulingContext<'a>, i: usize) -> Option<&'a str> {
    state(ctx, i).map(|s| s.address())
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
        let holders = self.key_holders(ctx, state, candidates, key.key);
        let Some(owner) = self.owner(ctx, candidates, key.key, &holders) else { return };
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
    use crate::endpoint_picker::{EndpointPicker, Outcome, PoolView, RequestInfo};
    use crate::model::PoolSnapshot;
    use crate::plugins::scorers::prefix_cache_scorer::PrefixCacheScorer;
    use crate::plugins::test_support::*;
    use crate::prefix::block_hashes;
    use crate::rng::Rng;
    use crate::scheduling::{SchedulingRequest, SharedState};
    use alloc::string::ToString;
    use alloc::vec;

    /// The candidate configuration for many decision points, as shipped.
    const MANY_GATEWAYS: &str = include_str!("../../../../envoy-config/scheduling/recommended.json");

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

    fn all(p: &PoolSnapshot) -> Vec<usize> {
        (0..p.endpoints.len()).collect()
    }

    /// The candidate the scorer names (the only non-zero score), if any.
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

    fn key_of(s: &PrefixOwnerScorer, p: &PoolSnapshot, prompt: &[u8]) -> ChainKey {
        let req = request(prompt);
        let ctx = SchedulingContext { request: &req, pool: p, now_ms: NOW };
        s.chain_key(&ctx, &mut CycleState::default()).unwrap()
    }

    /// Records `prompt` as routed to endpoint `i` of `p` in the index `s` reads.
    fn routed(s: &PrefixOwnerScorer, p: &PoolSnapshot, i: usize, prompt: &[u8]) {
        let hashes = block_hashes("m", None, prompt, 64, 256);
        s.handle.index_mut().unwrap().record(p.endpoints[i].address(), &hashes, 10_000);
    }

    /// A conversation under `system`: `turns` earlier turns (question and answer), then a new question.
    fn conversation(system: &[u8], id: u64, turns: u64) -> Vec<u8> {
        let mut prompt = system.to_vec();
        for t in 0..turns {
            prompt.extend(text(id * 100 + t, 120)); // question
            prompt.extend(text(id * 100 + 50 + t, 250)); // answer
        }
        prompt.extend(text(id * 100 + turns, 120));
        prompt
    }

    #[test]
    fn the_key_is_the_first_step_past_the_shared_prefix() {
        // Steps of 4 blocks.
        assert_eq!([key_depth(0, 0, 4), key_depth(3, 0, 4), key_depth(10, 0, 4)], [0, 3, 4]);
        assert_eq!([key_depth(70, 62, 4), key_depth(200, 62, 4), key_depth(63, 62, 4)], [64, 64, 63]);
        assert_eq!([key_depth(64, 64, 4), key_depth(64, 80, 4), key_depth(2, 5, 4)], [4, 4, 2], "all shared");
        // The shared depth is the sharedBy-th longest match.
        assert_eq!(shared_depth(&[0, 62, 70, 62, 3], 2), 62);
        assert_eq!(shared_depth(&[0, 62, 70, 62, 3], 3), 62);
        assert_eq!(shared_depth(&[0, 62, 70, 62, 3], 4), 3);
        assert_eq!(shared_depth(&[0, 62, 70, 0, 0], 3), 0);
        assert_eq!(shared_depth(&[9], 1), 9);
    }

    #[test]
    fn conversations_get_their_own_owner_once_the_system_prompt_is_shared() {
        let s = built::<PrefixOwnerScorer>("{}");
        let p = idle_pool(8);
        let system = text(1, 1000); // 62.5 blocks
                                    // Nothing seen yet: every conversation under the system prompt is keyed at its first step (64
                                    // tokens): one owner for the new prefix, whichever decision point sees it.
        let cold = key_of(&s, &p, &conversation(&system, 7, 0));
        assert_eq!((cold.shared, cold.depth, cold.hashed_tokens), (0, 4, 1120));
        assert_eq!(key_of(&s, &p, &conversation(&system, 8, 0)).key, cold.key);

        // Two conversations under it went to two pods: the system prompt is shared. Every conversation
        // now has a key of its own, 64 blocks in (the first step past 62), the same in every turn.
        routed(&s, &p, 0, &conversation(&system, 1, 0));
        routed(&s, &p, 5, &conversation(&system, 2, 1));
        let first = key_of(&s, &p, &conversation(&system, 7, 0));
        assert_eq!((first.shared, first.depth), (62, 64));
        for turns in 1..5 {
            assert_eq!(key_of(&s, &p, &conversation(&system, 7, turns)).key, first.key, "turn {turns}");
        }
        assert_ne!(key_of(&s, &p, &conversation(&system, 8, 0)).key, first.key, "another conversation");
        // The conversation's own turns, routed to its owner, do not make it shared.
        let owner = owner_of(&s, &p, &conversation(&system, 7, 0), &all(&p)).unwrap();
        routed(&s, &p, owner, &conversation(&system, 7, 0));
        routed(&s, &p, owner, &conversation(&system, 7, 1));
        assert_eq!(key_of(&s, &p, &conversation(&system, 7, 2)).key, first.key);
        assert_eq!(owner_of(&s, &p, &conversation(&system, 7, 2), &all(&p)), Some(owner));
    }

    #[test]
    fn separate_decision_points_with_empty_indexes_agree() {
        // Two gateways built from the shipped configuration, each with its own prefix index (empty at
        // first), each drawing its own coins: every prompt goes to the same endpoint through both.
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
        let s = built::<PrefixOwnerScorer>(r#"{"loadSlack": 0}"#);
        let idle = idle_pool(4);
        let prompt = text(42, 2000);
        let owner = owner_of(&s, &idle, &prompt, &all(&idle)).unwrap();
        // The rank order's second: the owner among the others.
        let others: Vec<usize> = all(&idle).into_iter().filter(|&i| i != owner).collect();
        let second = owner_of(&s, &idle, &prompt, &others).unwrap();

        // Loads 10 on the owner, 2 elsewhere: capacity ⌈1.25 × 17/4⌉ = 6 < 10 + 1.
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
        // ε = 3 tolerates it (⌈4 × 10/4⌉ = 10), and so do 6 requests of slack (9 − 6 + 1 ≤ 4).
        let loose = built::<PrefixOwnerScorer>(r#"{"loadBound": 3, "loadSlack": 0}"#);
        assert_eq!(owner_of(&loose, &unseen, &prompt, &all(&unseen)), Some(owner));
        let slack = built::<PrefixOwnerScorer>(r#"{"loadSlack": 6}"#);
        assert_eq!(owner_of(&slack, &unseen, &prompt, &all(&unseen)), Some(owner));
        // The default slack, 4, does not: 9 − 4 + 1 > 4.
        assert_eq!(
            owner_of(&built::<PrefixOwnerScorer>("{}"), &unseen, &prompt, &all(&unseen)),
            Some(second)
        );
    }

    #[test]
    fn a_key_already_placed_here_stays_where_it_was_placed() {
        let s = built::<PrefixOwnerScorer>(r#"{"loadSlack": 0}"#);
        let p = idle_pool(4);
        let prompt = text(77, 1200);
        let owner = owner_of(&s, &p, &prompt, &all(&p)).unwrap();
        // This decision point once spilled the prompt to another pod: it keeps sending it there.
        let elsewhere = (owner + 1) % 4;
        routed(&s, &p, elsewhere, &prompt);
        assert_eq!(owner_of(&s, &p, &prompt, &all(&p)), Some(elsewhere));
        // Held at both: the longer match wins.
        let mut longer = prompt.clone();
        longer.extend(text(78, 300));
        routed(&s, &p, owner, &longer);
        assert_eq!(owner_of(&s, &p, &longer, &all(&p)), Some(owner));
        // Unless that holder is over the bound: then the other holder.
        let mut busy = p.clone();
        busy.endpoints[owner].metrics.as_mut().unwrap().running = 20;
        assert_eq!(owner_of(&s, &busy, &longer, &all(&busy)), Some(elsewhere));
        // Without preferKeyHolders, the rank alone.
        let plain = built::<PrefixOwnerScorer>(r#"{"preferKeyHolders": false}"#);
        routed(&plain, &p, elsewhere, &prompt);
        assert_eq!(owner_of(&plain, &p, &prompt, &all(&p)), Some(owner));
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
    fn it_reads_the_index_of_the_prefix_scorer_or_keeps_its_own() {
        // The producer cuts 32-token (128-byte) blocks: steps of 64 tokens are 2 of them.
        let mut shared = SharedState::default();
        let producer =
            built_with::<PrefixCacheScorer>(r#"{"blockSizeTokens": 32, "autoTune": false}"#, &mut shared);
        let s = built_with::<PrefixOwnerScorer>("{}", &mut shared);
        assert!(s.handle.same_index(producer.handle()) && !s.records);
        let p = idle_pool(2);
        let key = key_of(&s, &p, &text(9, 1100));
        assert_eq!((key.depth, key.hashed_tokens), (2, 1088));

        // Alone, it hashes GIE's default 64-byte blocks into an index of its own and learns the picks.
        let mut alone = built::<PrefixOwnerScorer>("{}");
        assert!(alone.records);
        let prompt = text(9, 1100);
        let req = request(&prompt);
        let ctx = SchedulingContext { request: &req, pool: &p, now_ms: NOW };
        let mut state = CycleState::default();
        let key = alone.chain_key(&ctx, &mut state).unwrap();
        assert_eq!((key.depth, key.hashed_tokens), (4, 1088));
        let dest = [ProfileRunResult { profile: String::from("default"), targets: vec![1] }];
        alone.pre_request(&ctx, &state, &dest);
        assert!(alone.handle.index().unwrap().contains(p.endpoints[1].address(), key.key));
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let field = |json: &str| build_err::<PrefixOwnerScorer>(json).field;
        assert_eq!(field(r#"{"keyStepTokens": 0}"#), "keyStepTokens");
        assert_eq!(field(r#"{"sharedBy": 1.5}"#), "sharedBy");
        assert_eq!(field(r#"{"loadBound": -0.1}"#), "loadBound");
        assert_eq!(field(r#"{"loadSlack": -1}"#), "loadSlack");
        assert_eq!(field(r#"{"fullScoreTokens": "all"}"#), "fullScoreTokens");
        assert_eq!(field(r#"{"preferKeyHolders": 1}"#), "preferKeyHolders");
        assert_eq!(field(r#"{"prefixMatchInfoProducerName": "nope"}"#), "prefixMatchInfoProducerName");
        assert_eq!(field(r#"{"keyTokens": 5}"#), "keyTokens");
        let err = build_err::<PrefixOwnerScorer>(r#"{"loadBound": -1}"#);
        assert_eq!(err.to_string(), "loadBound: expected a number ≥ 0, got -1");
    }

    #[test]
    fn the_many_gateways_configuration_builds() {
        let picker = EndpointPicker::from_json(MANY_GATEWAYS).unwrap();
        assert_eq!(picker.config().picker.warnings, vec![]);
        let built = picker.scheduler();
        assert!(built.plugin(TYPE).is_some());
        assert!(built.plugin(crate::plugins::pickers::near_best_picker::TYPE).is_some());
        assert_eq!(built.shared().prefix_indexes().count(), 1, "one prefix index, shared");
    }
}
