use super::*;
use crate::prompt::Segment;

/// A discrete-event loop the way the benchmark will drive the engine.
fn run(engine: &mut Engine, mut arrivals: Vec<(u64, Request)>) -> Vec<Event> {
    arrivals.sort_by_key(|a| a.0);
    let mut arrivals = arrivals.into_iter().peekable();
    let mut events = Vec::new();
    loop {
        let t = match (arrivals.peek().map(|a| a.0), engine.next_event_time()) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(e)) => e,
            (Some(a), Some(e)) => a.min(e),
        };
        engine.advance(t, &mut events);
        while arrivals.peek().is_some_and(|a| a.0 <= t) {
            let (at, req) = arrivals.next().unwrap();
            engine.submit(req, at).unwrap();
        }
    }
    events
}

fn req(id: u64, group: u64, prompt: u32, out: u32) -> Request {
    Request {
        id,
        prompt: Prompt::from_segments(&[Segment { group, len: prompt }], 16),
        max_tokens: out,
        lora: None,
    }
}

fn time_of(events: &[Event], id: u64, pred: impl Fn(&EventKind) -> bool) -> u64 {
    events.iter().find(|e| e.id == id && pred(&e.kind)).map(|e| e.time_us).unwrap()
}

fn first_token(events: &[Event], id: u64) -> u64 {
    time_of(events, id, |k| *k == EventKind::FirstToken)
}

fn finished(events: &[Event], id: u64) -> (u64, Usage) {
    events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Finished(u) if e.id == id => Some((e.time_us, u)),
            _ => None,
        })
        .unwrap()
}

#[test]
fn idle_ttft_of_a_204_token_prompt_matches_the_h100_calibration() {
    let mut e = Engine::new(EngineConfig::h100_llama3_8b()).unwrap();
    let events = run(&mut e, vec![(1_000, req(1, 1, 204, 1))]);
    // 20 ms API overhead + one 10.668 ms prefill step ≈ the measured 31 ms.
    assert_eq!(first_token(&events, 1) - 1_000, 30_668);
    let (_, usage) = finished(&events, 1);
    assert_eq!(usage, Usage { prompt_tokens: 204, completion_tokens: 1, cached_prompt_tokens: 0 });
}

#[test]
fn batch_one_decode_costs_about_7_9_ms_per_token() {
    let mut e = Engine::new(EngineConfig::h100_llama3_8b()).unwrap();
    let events = run(&mut e, vec![(0, req(1, 1, 200, 101))]);
    let per_token_ms = (finished(&events, 1).0 - first_token(&events, 1)) as f64 / 100.0 / 1000.0;
    // 7.9 ms + 0.00006 ms per token of context (200..300).
    assert!((7.91..7.92).contains(&per_token_ms), "{per_token_ms}");
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::Token).count(), 100);
}

/// ShareGPT-like load (220 in, 190 out) at a fixed rate for 30 virtual seconds.
fn throughput_at(rate_per_s: u64) -> (f64, f64) {
    let mut e = Engine::new(EngineConfig::h100_llama3_8b()).unwrap();
    let n = rate_per_s * 30;
    let gap = 1_000_000 / rate_per_s;
    let arrivals = (0..n).map(|i| (i * gap, req(i, i, 220, 190))).collect();
    let mut events = run(&mut e, arrivals);
    events.retain(|ev| matches!(ev.kind, EventKind::Finished(_) | EventKind::FirstToken));
    let done_by_30s =
        events.iter().filter(|ev| matches!(ev.kind, EventKind::Finished(_)) && ev.time_us <= 30_000_000);
    let tokens_per_s = done_by_30s.count() as f64 * 190.0 / 30.0;
    let ttft_sum: u64 =
        events.iter().filter(|ev| ev.kind == EventKind::FirstToken).map(|ev| ev.time_us - ev.id * gap).sum();
    let mean_ttft_ms = ttft_sum as f64 / n as f64 / 1000.0;
    (tokens_per_s, mean_ttft_ms)
}

#[test]
fn throughput_follows_load_then_saturates() {
    let (low, low_ttft) = throughput_at(10);
    let (mid, _) = throughput_at(30);
    let (high, _) = throughput_at(100);
    let (higher, higher_ttft) = throughput_at(200);
    // Below saturation (≈55 req/s for this shape) nearly everything offered is served by 30 s.
    assert!(low > 0.9 * 10.0 * 190.0, "{low}");
    assert!(mid > 0.9 * 30.0 * 190.0, "{mid}");
    // Past it, doubling the load buys no throughput, only queueing.
    assert!(higher < 1.05 * high, "{high} -> {higher}");
    assert!(higher < 0.5 * 200.0 * 190.0, "{higher}");
    assert!(low_ttft < 40.0, "{low_ttft}");
    assert!(higher_ttft > 5_000.0, "{higher_ttft}");
}

#[test]
fn repeated_prompt_hits_the_prefix_cache_and_prefills_faster() {
    let mut e = Engine::new(EngineConfig::h100_llama3_8b()).unwrap();
    let events = run(&mut e, vec![(0, req(1, 9, 2000, 1)), (1_000_000, req(2, 9, 2000, 1))]);
    let cold = first_token(&events, 1);
    let warm = first_token(&events, 2) - 1_000_000;
    // Cold: 20 ms + 7.9 + 0.0265·1900 + 0.00006·2000 = 78.37 ms. Warm: all but the last 16 tokens hit
    // (the last block is always recomputed), so only the fixed cost remains: 20 + 7.9 + 0.12 = 28.02 ms.
    assert_eq!(cold, 78_370);
    assert_eq!(warm, 28_020);
    assert_eq!(finished(&events, 2).1.cached_prompt_tokens, 1984);
    let m = e.metrics();
    assert_eq!((m.prefix_cache_queries, m.prefix_cache_hits), (4000, 1984));
    // Finished requests hold nothing, yet their blocks stay cached: usage 0, hits still possible.
    assert_eq!(m.kv_cache_usage, 0.0);
}

#[test]
fn lora_requests_never_hit_base_model_blocks() {
    let mut e = Engine::new(EngineConfig::h100_llama3_8b()).unwrap();
    let mut lora = req(2, 9, 2000, 1);
    lora.lora = Some(3);
    let events = run(&mut e, vec![(0, req(1, 9, 2000, 1)), (1_000_000, lora)]);
    assert_eq!(finished(&events, 2).1.cached_prompt_tokens, 0);
}

#[test]
fn running_out_of_kv_preempts_the_newest_and_everyone_still_finishes() {
    let cfg = EngineConfig { num_gpu_blocks: 100, api_overhead_us: 0, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    // Each needs 600 tokens = 38 blocks at the end; four of them cannot coexist in 100 blocks.
    let arrivals = (0..4).map(|i| (0, req(i, 100 + i, 300, 300))).collect();
    let events = run(&mut e, arrivals);
    let preempted: Vec<u64> =
        events.iter().filter(|ev| ev.kind == EventKind::Preempted).map(|ev| ev.id).collect();
    assert!(!preempted.is_empty());
    // Admission order 0,1,2,3: the newest running one is always the victim, never request 0.
    assert!(!preempted.contains(&0));
    for i in 0..4 {
        assert_eq!(finished(&events, i).1.completion_tokens, 300);
    }
    // A preempted request does not announce its first token twice.
    for i in 0..4 {
        assert_eq!(events.iter().filter(|ev| ev.id == i && ev.kind == EventKind::FirstToken).count(), 1);
    }
    let m = e.metrics();
    assert_eq!(m.num_preemptions, preempted.len() as u64);
    assert_eq!((m.free_blocks, m.num_requests_running, m.num_requests_waiting), (100, 0, 0));
}

#[test]
fn waiting_count_includes_preempted_requests() {
    let cfg = EngineConfig { num_gpu_blocks: 40, api_overhead_us: 0, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    let mut events = Vec::new();
    e.submit(req(1, 1, 200, 400), 0).unwrap();
    e.submit(req(2, 2, 200, 400), 0).unwrap();
    let mut t = 0;
    while !events.iter().any(|ev: &Event| ev.kind == EventKind::Preempted) {
        t = e.next_event_time().unwrap();
        e.advance(t, &mut events);
    }
    e.advance(t, &mut events);
    assert_eq!((e.num_requests_running(), e.num_requests_waiting()), (1, 1));
}

#[test]
fn max_lora_limits_resident_adapters_and_others_wait_for_a_slot() {
    let cfg = EngineConfig { max_lora: 1, api_overhead_us: 0, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    let with = |id, adapter| Request { lora: Some(adapter), ..req(id, id, 100, 50) };
    e.submit(with(1, 1), 0).unwrap();
    e.submit(with(2, 2), 0).unwrap();
    e.submit(req(3, 3, 100, 50), 0).unwrap(); // base model: needs no slot, overtakes request 2
    let mut events = Vec::new();
    e.advance(0, &mut events);
    let m = e.metrics();
    assert_eq!(m.running_lora_adapters, vec![1]);
    assert_eq!(m.waiting_lora_adapters, vec![2]);
    assert_eq!((m.num_requests_running, m.num_requests_waiting, m.max_lora), (2, 1, 1));
    while let Some(t) = e.next_event_time() {
        e.advance(t, &mut events);
    }
    assert!(first_token(&events, 2) >= finished(&events, 1).0);
    assert!(first_token(&events, 3) < finished(&events, 1).0);
}

#[test]
fn a_resident_adapter_costs_kv_in_the_a100_profile() {
    let cfg = EngineConfig { api_overhead_us: 0, ..EngineConfig::a100_llama2_7b() };
    let mut e = Engine::new(cfg).unwrap();
    e.submit(Request { lora: Some(1), ..req(1, 1, 160, 10) }, 0).unwrap();
    e.advance(0, &mut Vec::new());
    // 100 blocks for the adapter + 10 for the 160 prompt tokens being computed, of 2810.
    assert_eq!(e.metrics().free_blocks, 2810 - 100 - 10);
    let mut events = Vec::new();
    while let Some(t) = e.next_event_time() {
        e.advance(t, &mut events);
    }
    assert_eq!(e.metrics().free_blocks, 2810);
    // A100 prefill floor: 40 ms for a small prompt.
    assert_eq!(first_token(&events, 1), 40_000);
}

#[test]
fn long_prompts_are_chunked_and_running_decodes_keep_going() {
    let cfg = EngineConfig { api_overhead_us: 0, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    let events = run(&mut e, vec![(0, req(1, 1, 100, 400)), (50_000, req(2, 2, 20_000, 1))]);
    // 20000 tokens at 8192 per step → three steps; each also carries request 1's decode.
    let ttft = first_token(&events, 2) - 50_000;
    assert!(ttft > 2 * 200_000 && ttft < 700_000, "{ttft}");
    // Request 1 never stalls longer than one chunk step while request 2 prefills.
    let tokens: Vec<u64> = events.iter().filter(|ev| ev.id == 1).map(|ev| ev.time_us).collect();
    let max_gap = tokens.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(max_gap < 230_000, "{max_gap}");
}

#[test]
fn max_num_seqs_bounds_the_batch() {
    let cfg = EngineConfig { max_num_seqs: 4, api_overhead_us: 0, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    for i in 0..10 {
        e.submit(req(i, i, 50, 20), 0).unwrap();
    }
    e.advance(0, &mut Vec::new());
    assert_eq!((e.num_requests_running(), e.num_requests_waiting()), (4, 6));
}

#[test]
fn same_seed_same_timeline_different_seed_different_timeline() {
    let go = |seed| {
        let cfg = EngineConfig { step_jitter: 0.1, seed, ..EngineConfig::h100_llama3_8b() };
        let mut e = Engine::new(cfg).unwrap();
        let arrivals = (0..200).map(|i| (i * 7_000, req(i, i % 5, 500 + (i as u32 % 7) * 100, 50))).collect();
        run(&mut e, arrivals)
    };
    assert_eq!(go(1), go(1));
    assert_ne!(go(1), go(2));
}

#[test]
fn abort_frees_the_request_wherever_it_is() {
    let cfg = EngineConfig { max_num_seqs: 1, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    let mut events = Vec::new();
    e.submit(req(1, 1, 100, 1000), 0).unwrap();
    e.submit(req(2, 2, 100, 1000), 0).unwrap();
    e.submit(req(3, 3, 100, 1000), 30_000).unwrap();
    e.advance(25_000, &mut events);
    assert!(e.abort(3)); // still in the API server
    assert!(e.abort(2)); // waiting
    assert!(e.abort(1)); // running, inside the step in flight
    assert!(!e.abort(1) || e.num_requests_in_engine() == 1);
    while let Some(t) = e.next_event_time() {
        e.advance(t, &mut events);
    }
    assert_eq!(e.num_requests_in_engine(), 0);
    assert_eq!(e.metrics().free_blocks, e.config().num_gpu_blocks);
    assert!(!events.iter().any(|ev| matches!(ev.kind, EventKind::Finished(_))));
}

#[test]
fn impossible_requests_are_refused_with_the_reason() {
    let cfg = EngineConfig { num_gpu_blocks: 10, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    let err = e.submit(req(1, 1, 150, 20), 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "request 1: prompt + max_tokens = 170 tokens, but this replica's KV cache holds at most 160 tokens \
         for one request"
    );
    assert_eq!(e.submit(req(2, 1, 0, 20), 0), Err(SubmitError::EmptyPrompt { id: 2 }));
    assert_eq!(e.submit(req(3, 1, 10, 0), 0), Err(SubmitError::ZeroMaxTokens { id: 3 }));
    e.submit(req(4, 1, 10, 10), 0).unwrap();
    assert_eq!(e.submit(req(4, 1, 10, 10), 0), Err(SubmitError::DuplicateId { id: 4 }));
    let mut e = Engine::new(EngineConfig { max_lora: 0, ..EngineConfig::h100_llama3_8b() }).unwrap();
    let lora = Request { lora: Some(1), ..req(5, 1, 10, 10) };
    assert_eq!(e.submit(lora, 0), Err(SubmitError::LoraDisabled { id: 5 }));
}

#[test]
fn a_long_mixed_run_conserves_blocks_and_finishes_everything() {
    let cfg = EngineConfig { num_gpu_blocks: 3000, max_num_seqs: 128, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    let mut rng = Rng::new(42);
    let arrivals = (0..5_000u64)
        .map(|i| {
            let system = Segment { group: rng.below(20) as u64, len: 1000 };
            let question = Segment { group: 1_000 + i, len: 20 + rng.below(400) as u32 };
            let prompt = Prompt::from_segments(&[system, question], 16);
            let lora = if rng.below(4) == 0 { Some(rng.below(3) as u32) } else { None };
            (i * 3_000, Request { id: i, prompt, max_tokens: 1 + rng.below(300) as u32, lora })
        })
        .collect();
    let events = run(&mut e, arrivals);
    let done = events.iter().filter(|ev| matches!(ev.kind, EventKind::Finished(_))).count();
    assert_eq!(done, 5_000);
    let m = e.metrics();
    assert_eq!((m.free_blocks, m.num_requests_running, m.num_requests_waiting), (3000, 0, 0));
    assert!(m.prefix_cache_hits > m.prefix_cache_queries / 2, "{m:?}");
    assert!(m.running_lora_adapters.is_empty());
}

#[test]
fn a_half_speed_replica_takes_twice_the_step_time() {
    // The same requests on a calibrated replica and on one at 0.5× speed: every step takes twice as long,
    // so the time from the API server's hand-off to the first token and to the end doubles.
    let timeline = |speed: f64| {
        let cfg = EngineConfig { speed, api_overhead_us: 0, ..EngineConfig::h100_llama3_8b() };
        let mut e = Engine::new(cfg).unwrap();
        let arrivals = (0..20).map(|i| (i * 5_000, req(i, i, 300 + i as u32 * 50, 40))).collect();
        let events = run(&mut e, arrivals);
        let last = (0..20).map(|i| finished(&events, i).0).max().unwrap();
        (first_token(&events, 0), last, e.metrics().steps)
    };
    let (fast_ttft, fast_end, fast_steps) = timeline(1.0);
    let (slow_ttft, slow_end, _) = timeline(0.5);
    // One prefill step of 300 tokens: 7.9 + 0.0265·200 + 0.00006·300 = 13.218 ms, 26.436 ms at half speed.
    assert_eq!((fast_ttft, slow_ttft), (13_218, 26_436));
    // Later arrivals batch differently on the slower replica, so the whole run is close to, not exactly, 2×.
    let ratio = slow_end as f64 / fast_end as f64;
    assert!((1.8..2.1).contains(&ratio), "{ratio} over {fast_steps} steps");
}

#[test]
fn a_slowdown_applies_to_the_steps_that_start_after_it_and_ends_when_reset() {
    let cfg = EngineConfig { api_overhead_us: 0, ..EngineConfig::h100_llama3_8b() };
    let mut e = Engine::new(cfg).unwrap();
    let mut events = Vec::new();
    // Batch-1 decode of a 100-token prompt: ≈7.9 ms steps.
    e.submit(req(1, 1, 100, 30), 0).unwrap();
    e.advance(0, &mut events);
    let step = |e: &Engine| e.next_event_time().unwrap() - e.clock();
    let normal = step(&e);
    e.set_slowdown(3.0);
    assert_eq!(step(&e), normal, "the step in flight keeps its duration");
    let t = e.next_event_time().unwrap();
    e.advance(t, &mut events);
    let slowed = step(&e);
    assert!((slowed as f64 / normal as f64 - 3.0).abs() < 0.01, "{slowed} vs {normal}");
    e.set_slowdown(f64::NAN);
    assert_eq!(e.slowdown(), 3.0, "an invalid factor is ignored");
    e.set_slowdown(1.0);
    let t = e.next_event_time().unwrap();
    e.advance(t, &mut events);
    assert!(step(&e).abs_diff(normal) <= 2, "back to normal");
}
