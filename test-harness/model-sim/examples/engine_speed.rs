//! How fast the engine runs in virtual time (what bounds the discrete-event benchmark).
//!
//! `cargo run -p model-sim --release --example engine_speed` prints one line per workload.

use std::time::Instant;

use model_sim::{Engine, EngineConfig, Event, Prompt, Request, Segment};
use scheduler_core::rng::Rng;

fn run(name: &str, rate_per_s: f64, n: u64, make: impl Fn(u64, &mut Rng) -> (Vec<Segment>, u32)) {
    let cfg = EngineConfig { emit_token_events: false, ..EngineConfig::h100_llama3_8b() };
    let mut engine = match Engine::new(cfg) {
        Ok(e) => e,
        Err(e) => return eprintln!("{e}"),
    };
    let mut rng = Rng::new(1);
    let mut events: Vec<Event> = Vec::new();
    let mut next_arrival = 0u64;
    let mut submitted = 0u64;
    let mut finished = 0u64;
    let wall = Instant::now();
    while finished < n {
        let t = match engine.next_event_time() {
            Some(e) if submitted >= n || e < next_arrival => e,
            _ if submitted < n => next_arrival,
            Some(e) => e,
            None => break,
        };
        events.clear();
        engine.advance(t, &mut events);
        finished +=
            events.iter().filter(|e| matches!(e.kind, model_sim::EventKind::Finished(_))).count() as u64;
        if submitted < n && next_arrival <= t {
            let (segments, out) = make(submitted, &mut rng);
            let prompt = Prompt::from_segments(&segments, 16);
            let req = Request { id: submitted, prompt, max_tokens: out, lora: None };
            if let Err(e) = engine.submit(req, t) {
                return eprintln!("{e}");
            }
            submitted += 1;
            // Exponential inter-arrival times (Poisson arrivals).
            let gap = -(1.0 - rng.next_f64()).ln() / rate_per_s * 1e6;
            next_arrival = t + gap as u64;
        }
    }
    let secs = wall.elapsed().as_secs_f64();
    let m = engine.metrics();
    println!(
        "{name:<28} {n:>7} requests  {:>9} steps  {:>7.1} virtual s  {:>6.2} wall s  {:>9.0} steps/s  hit rate {:.2}",
        m.steps,
        engine.clock() as f64 / 1e6,
        secs,
        m.steps as f64 / secs,
        m.prefix_cache_hits as f64 / m.prefix_cache_queries.max(1) as f64,
    );
}

fn main() {
    run("sharegpt-like 40 req/s", 40.0, 50_000, |i, rng| {
        (vec![Segment { group: i, len: 200 + rng.below(50) as u32 }], 180 + rng.below(20) as u32)
    });
    run("shared prefix 6000+1200 3/s", 3.0, 3_000, |i, rng| {
        let system = Segment { group: rng.below(150) as u64, len: 6000 };
        (vec![system, Segment { group: 1_000_000 + i, len: 1200 }], 1000)
    });
}
