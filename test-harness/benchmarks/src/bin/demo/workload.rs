//! The demo's traffic: a seeded chat workload in which a few long system prompts are shared by many
//! requests (what prefix-aware routing exploits) and some requests ask for a LoRA adapter.

use scheduler_core::rng::Rng;
use serde_json::json;
use std::time::Duration;

/// The served base model and the adapter only the LoRA replica has.
pub const BASE_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
pub const ADAPTER: &str = "sql-lora";

/// Distinct system prompts of the base model, and their length range in tokens.
const SYSTEM_PROMPTS: u64 = 16;
const SYSTEM_TOKENS: (usize, usize) = (1500, 2500);
/// Share of requests for the adapter (they share one system prompt of their own).
const LORA_SHARE: f64 = 0.12;
const QUESTION_TOKENS: (usize, usize) = (30, 200);
const OUTPUT_TOKENS: (usize, usize) = (16, 96);
/// Bytes per token of model-sim's stand-in tokenizer.
const BYTES_PER_TOKEN: usize = 4;

/// One request of the trace.
pub struct Item {
    /// Arrival, in model time from the start of the run.
    pub at: Duration,
    /// The `/v1/chat/completions` body (streaming, with a usage chunk).
    pub body: String,
}

/// `n` requests with Poisson arrivals at `rate` requests per second of model time.
pub fn generate(n: usize, rate: f64, seed: u64) -> Vec<Item> {
    let mut rng = Rng::new(seed);
    let systems: Vec<String> = (0..=SYSTEM_PROMPTS)
        .map(|_| {
            let tokens = between(&mut rng, SYSTEM_TOKENS);
            text(rng.next_u64(), tokens)
        })
        .collect();
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            t += -(1.0 - rng.next_f64()).ln() / rate;
            let lora = rng.next_f64() < LORA_SHARE;
            // The adapter's system prompt is the last one.
            let system = if lora { SYSTEM_PROMPTS as usize } else { rng.below(SYSTEM_PROMPTS as usize) };
            let question = text(rng.next_u64() ^ i as u64, between(&mut rng, QUESTION_TOKENS));
            let body = json!({
                "model": if lora { ADAPTER } else { BASE_MODEL },
                "messages": [
                    {"role": "system", "content": systems.get(system).map_or("", String::as_str)},
                    {"role": "user", "content": question},
                ],
                "max_tokens": between(&mut rng, OUTPUT_TOKENS),
                "stream": true,
                "stream_options": {"include_usage": true},
            });
            Item { at: Duration::from_secs_f64(t), body: body.to_string() }
        })
        .collect()
}

fn between(rng: &mut Rng, (lo, hi): (usize, usize)) -> usize {
    lo + rng.below(hi - lo + 1)
}

/// `tokens` tokens of lower-case words determined by `seed`.
fn text(seed: u64, tokens: usize) -> String {
    let mut rng = Rng::new(seed);
    let len = tokens * BYTES_PER_TOKEN;
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let word = 2 + rng.below(7);
        for _ in 0..word {
            s.push(char::from(b'a' + rng.below(26) as u8));
        }
        s.push(' ');
    }
    s.truncate(len);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace_and_system_prompts_are_shared() {
        let a = generate(200, 10.0, 7);
        let b = generate(200, 10.0, 7);
        assert!(a.iter().zip(&b).all(|(x, y)| x.body == y.body && x.at == y.at));
        let systems: std::collections::HashSet<String> = a
            .iter()
            .map(|i| serde_json::from_str::<serde_json::Value>(&i.body).unwrap())
            .map(|v| v["messages"][0]["content"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(systems.len() as u64, SYSTEM_PROMPTS + 1);
        // Poisson at 10/s: 200 arrivals take about 20 s.
        let end = a.last().unwrap().at.as_secs_f64();
        assert!((14.0..26.0).contains(&end), "{end}");
    }
}
