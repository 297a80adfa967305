use super::*;
use crate::model::{PoolSnapshot, Role};
use crate::prefix::PrefixHandle;
use crate::scheduling::test_support::{pool, pool_with_roles, registry, PRE_REQUEST_CALLS};
use crate::scheduling::SchedulingRequest;
use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use core::sync::atomic::Ordering;

fn build(json: &str) -> Scheduler {
    let cfg = EndpointPickerConfig::from_json(json).unwrap();
    Scheduler::from_config_with(&cfg, &registry()).unwrap_or_else(|e| panic!("{e}"))
}

/// The index the scheduler's `prefix-cache-scorer` produces.
fn prefix_scorer_handle(s: &Scheduler) -> PrefixHandle {
    s.shared().prefix_index("prefix-cache-scorer").unwrap().clone()
}

fn run(
    s: &mut Scheduler,
    pool: &PoolSnapshot,
    req: &SchedulingRequest<'_>,
    seed: u64,
) -> Result<SchedulingResult, ScheduleError> {
    let ctx = SchedulingContext { request: req, pool, now_ms: 0 };
    let all: Vec<usize> = (0..pool.endpoints.len()).collect();
    s.schedule(&ctx, &all, &mut Rng::new(seed))
}

/// Totals the scheduler computed, observed through a max-score picker returning every endpoint.
#[test]
fn weighted_sum_worked_example() {
    // Scorer A (weight 2) gives [0.5, 1.0, 1.7→1.0, -0.2→0.0]; scorer B (weight 3) gives [1.0, 0.2, 0.1, 0.9].
    // Totals: e0 = 2·0.5 + 3·1.0 = 4.0; e1 = 2·1.0 + 3·0.2 = 2.6; e2 = 2·1.0 + 3·0.1 = 2.3; e3 = 0 + 2.7 = 2.7.
    // Not normalized by the weight sum (that would give 0.8, 0.52, 0.46, 0.54 — same order, other scale).
    let mut s = build(
        r#"{"plugins": [
            {"name": "a", "type": "fixed-scorer", "parameters": {"scores": [0.5, 1.0, 1.7, -0.2]}},
            {"name": "b", "type": "fixed-scorer", "parameters": {"scores": [1.0, 0.2, 0.1, 0.9]}},
            {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 4}}],
          "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "a", "weight": 2}, {"pluginRef": "b", "weight": 3}, {"pluginRef": "max-score-picker"}]}]}"#,
    );
    let r = run(&mut s, &pool(4), &SchedulingRequest::default(), 1).unwrap();
    assert_eq!(r.targets, vec![0, 3, 1, 2]);

    // The exact totals, through the profile directly.
    let p = s.profiles.first().unwrap().clone();
    let pool = pool(4);
    let req = SchedulingRequest::default();
    let ctx = SchedulingContext { request: &req, pool: &pool, now_ms: 0 };
    let mut scratch = Scratch::default();
    p.run(
        &s.plugins,
        &ctx,
        &mut CycleState::default(),
        &[0, 1, 2, 3],
        (1, 4),
        &mut Rng::new(1),
        &mut scratch,
    );
    let mut totals: Vec<(usize, f64)> = scratch_totals(&scratch);
    totals.sort_by_key(|t| t.0);
    let want = [4.0, 2.6, 2.3, 2.7];
    for ((i, got), want) in totals.iter().zip(want) {
        assert!((got - want).abs() < 1e-9, "endpoint {i}: total {got}, want {want}");
    }
}

fn scratch_totals(s: &Scratch) -> Vec<(usize, f64)> {
    s.scored_for_tests().iter().map(|e| (e.index, e.score)).collect()
}

#[test]
fn nan_scores_count_as_zero() {
    let mut s = build(
        r#"{"plugins": [{"type": "nan-scorer"},
            {"name": "a", "type": "fixed-scorer", "parameters": {"scores": [0.1, 0.3, 0.2]}}],
          "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "nan-scorer", "weight": 5}, {"pluginRef": "a"}]}]}"#,
    );
    assert_eq!(run(&mut s, &pool(3), &SchedulingRequest::default(), 9).unwrap().targets, vec![1]);
}

#[test]
fn fallbacks_in_score_order_and_caller_cap() {
    let json = r#"{"plugins": [
            {"name": "a", "type": "fixed-scorer", "parameters": {"scores": [0.1, 0.9, 0.4, 0.7, 0.8]}},
            {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 3}}]}"#;
    let mut s = build(json);
    let r = run(&mut s, &pool(5), &SchedulingRequest::default(), 3).unwrap();
    assert_eq!(r.targets, vec![1, 4, 3], "primary, then fallbacks by descending score");
    assert_eq!(r.destination(), Some(1));
    s.set_max_endpoints(1);
    assert_eq!(run(&mut s, &pool(5), &SchedulingRequest::default(), 3).unwrap().targets, vec![1]);
}

#[test]
fn a_filter_that_empties_the_set_fails_the_profile() {
    let mut s = build(
        r#"{"plugins": [{"type": "drop-all-filter"}, {"type": "fixed-scorer"}],
            "schedulingProfiles": [{"name": "only", "plugins": [{"pluginRef": "drop-all-filter"}, {"pluginRef": "fixed-scorer"}]}]}"#,
    );
    assert_eq!(
        run(&mut s, &pool(3), &SchedulingRequest::default(), 1),
        Err(ScheduleError::AllFiltered { profile: String::from("only") })
    );
}

#[test]
fn pre_request_runs_once_per_successful_decision() {
    let mut s = build(r#"{"plugins": [{"type": "recorder"}, {"type": "fixed-scorer"}]}"#);
    let before = PRE_REQUEST_CALLS.load(Ordering::SeqCst);
    run(&mut s, &pool(2), &SchedulingRequest::default(), 1).unwrap();
    run(&mut s, &pool(2), &SchedulingRequest::default(), 2).unwrap();
    assert!(PRE_REQUEST_CALLS.load(Ordering::SeqCst) >= before + 2);
}

const PD: &str = r#"{"plugins": [
    {"type": "pd-profile-handler", "parameters": {"threshold": 100}},
    {"type": "prefill-filter"}, {"type": "decode-filter"},
    {"type": "prefix-stub", "parameters": {"totalBlocks": 10, "matched": [[1, 9]]}},
    {"name": "load", "type": "fixed-scorer", "parameters": {"scores": [0.9, 0.5, 0.1, 0.2]}}],
  "schedulingProfiles": [
    {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "load"}]},
    {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}, {"pluginRef": "prefix-stub"}, {"pluginRef": "load"}]}]}"#;

#[test]
fn pd_disaggregates_long_uncached_prompts() {
    // e0 prefill, e1 decode (90 % of the prompt cached), e2 decode, e3 prefill.
    let pool = pool_with_roles(&[Role::Prefill, Role::Decode, Role::Decode, Role::Prefill]);
    let mut s = build(PD);
    // 4000 bytes = 1000 tokens; decode pick e1 has 90 % cached → 100 uncached ≥ threshold 100.
    let req = SchedulingRequest { prompt_bytes: 4000, ..SchedulingRequest::default() };
    let r = run(&mut s, &pool, &req, 1).unwrap();
    assert_eq!(r.destination(), Some(1), "decode target is the destination");
    assert_eq!(r.prefill, Some(0), "best prefill pod goes into x-prefiller-host-port");
    assert_eq!(r.profiles.iter().map(|p| p.profile.as_str()).collect::<Vec<_>>(), ["decode", "prefill"]);

    // 3000 bytes = 750 tokens, 75 uncached < 100: prefill stays on the decode pod.
    let req = SchedulingRequest { prompt_bytes: 3000, ..SchedulingRequest::default() };
    let r = run(&mut s, &pool, &req, 1).unwrap();
    assert_eq!((r.destination(), r.prefill), (Some(1), None));
    assert_eq!(r.profiles.len(), 1, "the prefill profile did not run");
}

#[test]
fn pd_without_prefill_pods_serves_aggregated() {
    let pool = pool_with_roles(&[Role::Both, Role::Decode, Role::Both]);
    let mut s = build(PD);
    let req = SchedulingRequest { prompt_bytes: 40_000, ..SchedulingRequest::default() };
    let r = run(&mut s, &pool, &req, 1).unwrap();
    assert_eq!(r.destination(), Some(0), "unlabelled pods serve decode");
    assert_eq!(r.prefill, None, "no prefill pod: no prefill header, request still served");
}

#[test]
fn pd_threshold_zero_always_disaggregates_and_decode_failure_fails() {
    let json = PD.replace(r#""threshold": 100"#, r#""threshold": 0"#);
    let mut s = build(&json);
    let pool = pool_with_roles(&[Role::Prefill, Role::Decode]);
    let r = run(&mut s, &pool, &SchedulingRequest::default(), 1).unwrap();
    assert_eq!((r.destination(), r.prefill), (Some(1), Some(0)));
    let only_prefill = pool_with_roles(&[Role::Prefill, Role::Prefill]);
    assert_eq!(
        run(&mut s, &only_prefill, &SchedulingRequest::default(), 1),
        Err(ScheduleError::AllFiltered { profile: String::from("decode") })
    );
}

#[test]
fn same_seed_same_decision() {
    let mut s = build(
        r#"{"plugins": [{"type": "fixed-scorer", "parameters": {"scores": [1, 1, 1, 1, 1, 1, 1, 1]}}]}"#,
    );
    let p = pool(8);
    let req = SchedulingRequest::default();
    let picks: Vec<usize> = (0..50).map(|seed| run(&mut s, &p, &req, seed).unwrap().targets[0]).collect();
    let again: Vec<usize> = (0..50).map(|seed| run(&mut s, &p, &req, seed).unwrap().targets[0]).collect();
    assert_eq!(picks, again);
    let distinct = (0..8).filter(|i| picks.contains(i)).count();
    assert!(distinct >= 6, "ties spread over endpoints: {picks:?}");
}

#[test]
fn affinity_filter_shares_the_prefix_scorers_index() {
    // The filter comes first in the configuration; the scorer producing the index is built first. The
    // profile leaves the scorer out, so only the filter can make the pick follow the index.
    let mut s = Scheduler::from_json(
        r#"{"plugins": [{"type": "prefix-cache-affinity-filter", "parameters": {"explorationProbability": 0}},
                        {"type": "prefix-cache-scorer"}, {"type": "max-score-picker"}],
            "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "prefix-cache-affinity-filter"},
                {"pluginRef": "max-score-picker"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        s.plugin_names(),
        [
            "prefix-cache-affinity-filter",
            "prefix-cache-scorer",
            "max-score-picker",
            "single-profile-handler",
            "utilization-detector"
        ],
        "configuration order is kept"
    );
    assert_eq!(s.shared().prefix_indexes().count(), 1, "filter and scorer read one index");
    assert!(s.shared().prefix_index("prefix-cache-affinity-filter").is_none());

    let p = pool(3);
    let prompt = vec![b'w'; 64 * 10];
    let hashes = crate::prefix::block_hashes("m", None, &prompt, 64, 256);
    prefix_scorer_handle(&s).index_mut().unwrap().record(p.endpoints[2].address(), &hashes, 100);
    let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
    for seed in 0..20 {
        assert_eq!(run(&mut s, &p, &req, seed).unwrap().targets, vec![2], "seed {seed}");
    }
}

#[test]
fn an_affinity_filter_without_a_prefix_scorer_keeps_its_own_index() {
    let s = Scheduler::from_json(
        r#"{"plugins": [{"type": "prefix-cache-affinity-filter"}, {"name": "f2", "type": "prefix-cache-affinity-filter"}]}"#,
    )
    .unwrap();
    let own = |name| s.shared().prefix_index(name).unwrap().clone();
    assert!(!own("prefix-cache-affinity-filter").same_index(&own("f2")));
    assert_eq!(s.shared().prefix_indexes().count(), 2, "both reached by learn_prefix and the table seed");
}

#[test]
fn affinity_filter_with_an_unknown_producer_is_a_config_error() {
    let err = Scheduler::from_json(
        r#"{"plugins": [{"type": "prefix-cache-affinity-filter",
                         "parameters": {"prefixMatchInfoProducerName": "nope"}},
                        {"type": "prefix-cache-scorer"}]}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugins[0].parameters.prefixMatchInfoProducerName: expected the name of an approx-prefix-cache-producer or prefix-cache-scorer plugin that owns a prefix index, got \"nope\""
    );
}

#[test]
fn with_several_prefix_scorers_the_affinity_filter_names_one() {
    let two_scorers =
        r#"{"name": "a", "type": "prefix-cache-scorer"}, {"name": "b", "type": "prefix-cache-scorer"}"#;
    let err = Scheduler::from_json(&format!(
        r#"{{"plugins": [{{"type": "prefix-cache-affinity-filter"}}, {two_scorers}]}}"#
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugins[0].parameters.prefixMatchInfoProducerName: expected the name of the prefix-cache-scorer to follow (there are several)"
    );
    let s = Scheduler::from_json(&format!(
        r#"{{"plugins": [{{"type": "prefix-cache-affinity-filter", "parameters": {{"prefixMatchInfoProducerName": "b"}}}},
                         {two_scorers}]}}"#
    ))
    .unwrap();
    assert_eq!(s.shared().prefix_indexes().count(), 2, "the filter reads b's index, not one of its own");
}

/// Proxy workers lay their prefix tables out by different secret seeds, yet must pick alike: the
/// seed moves buckets, never matches or evictions.
#[test]
fn prefix_table_seed_does_not_change_decisions() {
    // A small LRU so that the run evicts; ties among equally warm endpoints go to the request's rng.
    let config = r#"{"plugins": [{"type": "prefix-cache-scorer",
                                  "parameters": {"autoTune": false, "lruCapacityPerServer": 40}},
                                 {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "prefix-cache-scorer"},
                                                         {"pluginRef": "max-score-picker"}]}]}"#;
    let mut fixed = Scheduler::from_json(config).unwrap();
    let mut seeded = Scheduler::from_json(config).unwrap();
    seeded.set_prefix_table_seed(0x5ec2_e7f0_0d15_ea5e);
    let p = pool(6);
    let mut rng = Rng::new(9);
    let mut sent_to = vec![Vec::new(); 8];
    for i in 0..300u64 {
        // Eight system prompts of 3-10 blocks, each followed by a fresh user turn of two blocks.
        let system = rng.below(8);
        let mut prompt: Vec<u8> = (0..64 * (3 + system)).map(|j| (j * 31 + system * 7) as u8).collect();
        prompt.extend((0..128).map(|j| (i * 13 + j) as u8));
        let req = SchedulingRequest { model: "m", prefix_input: &prompt, ..SchedulingRequest::default() };
        let a = run(&mut fixed, &p, &req, i).unwrap();
        assert_eq!(run(&mut seeded, &p, &req, i).unwrap(), a, "request {i}");
        if !sent_to[system].contains(&a.targets[0]) {
            sent_to[system].push(a.targets[0]);
        }
    }
    // Not vacuous: prompts stuck to the endpoints that had them (random ties would use all six), and
    // every endpoint that served filled its LRU, so both sides evicted.
    assert!(sent_to.iter().all(|e| e.len() <= 2), "{sent_to:?}");
    let scorer = prefix_scorer_handle(&fixed);
    let index = scorer.index().unwrap();
    for &e in sent_to.iter().flatten() {
        assert_eq!(index.endpoint_len(p.endpoints[e].address()), Some(40), "endpoint {e}");
    }
}
