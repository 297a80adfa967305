//! The demo's traffic: a seeded chat workload in which a few long system prompts are shared by many
//! requests (what prefix-aware routing exploits) and some requests ask for a LoRA adapter; or, with
//! `--trace`, a Mooncake-format trace replayed on its own schedule (`benchmarks::trace`).

use benchmarks::trace;
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

/// The two OpenAI endpoints the demo sends to.
pub const CHAT: &str = "/v1/chat/completions";
pub const COMPLETIONS: &str = "/v1/completions";

/// One request of the trace.
#[derive(Debug)]
pub struct Item {
    /// Arrival, in model time from the start of the run.
    pub at: Duration,
    /// [`CHAT`] or [`COMPLETIONS`].
    pub path: &'static str,
    /// The request body (streaming, with a usage chunk).
    pub body: String,
    /// Prompt plus output tokens, as far as the workload knows them (what a replica must have room for).
    pub tokens: u64,
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
            Item { at: Duration::from_secs_f64(t), path: CHAT, body: body.to_string(), tokens: 0 }
        })
        .collect()
}

/// The first `limit` requests of a Mooncake-format trace (`text`, JSONL), arrivals divided by `speed`,
/// each a streamed completion of the base model: the prompt is the trace's generated text
/// ([`benchmarks::workload::Arrival::prompt_text`], so identical `hash_ids` give identical text, hence
/// the same prefix at the gateway and the same KV blocks in the replica), `max_tokens` its
/// `output_length`. A completion, not a chat: the prompt reaches the replica as the trace sized it, with
/// no chat template around it.
pub fn from_trace(text: &str, limit: Option<usize>, speed: f64) -> Result<Vec<Item>, String> {
    let requests = trace::parse(text, limit).map_err(|e| e.to_string())?;
    Ok(trace::arrivals(&requests, speed)
        .iter()
        .map(|a| {
            let body = json!({
                "model": BASE_MODEL,
                "prompt": a.prompt_text(),
                "max_tokens": a.output_tokens,
                "stream": true,
                "stream_options": {"include_usage": true},
            });
            Item {
                at: Duration::from_micros(a.at_us),
                path: COMPLETIONS,
                body: body.to_string(),
                tokens: u64::from(a.prompt_tokens()) + u64::from(a.output_tokens),
            }
        })
        .collect())
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
    use serde_json::Value;

    fn prompt(item: &Item) -> String {
        let v: Value = serde_json::from_str(&item.body).unwrap();
        v["prompt"].as_str().unwrap().to_string()
    }

    fn common_prefix(a: &str, b: &str) -> usize {
        a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn trace_items_share_text_where_ids_match_with_limit_and_speed_applied() {
        // Out of order on purpose (arrivals are sorted); lines 1 and 3 share two blocks, line 2 one.
        let text = "\
            {\"timestamp\": 2000, \"input_length\": 1500, \"output_length\": 40, \"hash_ids\": [5, 6, 7]}\n\
            {\"timestamp\": 1000, \"input_length\": 700, \"output_length\": 9, \"hash_ids\": [5, 8]}\n\
            \n\
            {\"timestamp\": 5000, \"input_length\": 1100, \"output_length\": 3, \"hash_ids\": [5, 6, 9]}\n\
            {\"timestamp\": 9000, \"input_length\": 100, \"output_length\": 1, \"hash_ids\": [5]}\n";
        let items = from_trace(text, Some(3), 2.0).unwrap();
        // The limit: the first 3 requests of the file; speed 2 halves the gaps from the first arrival.
        let at: Vec<u128> = items.iter().map(|i| i.at.as_millis()).collect();
        assert_eq!(at, vec![0, 500, 2000]);
        let (second, first, third) = (prompt(&items[0]), prompt(&items[1]), prompt(&items[2]));
        assert_eq!((first.len(), second.len(), third.len()), (1500 * 4, 700 * 4, 1100 * 4));
        // 512-token blocks of 4 bytes per token: [5, 6] shared is 4096 bytes, [5] alone 2048.
        assert_eq!(common_prefix(&first, &third), 2 * 512 * 4);
        assert_eq!(common_prefix(&first, &second), 512 * 4);
        // The same trace converted again gives the same bodies; the library's text is what is sent.
        let again = from_trace(text, None, 1.0).unwrap();
        assert_eq!(again.len(), 4);
        assert_eq!(prompt(&again[1]), first);
        let lib = trace::arrivals(&trace::parse(text, None).unwrap(), 1.0);
        assert_eq!(lib[1].prompt_text(), first);
        // Each is a streamed completion asking for the trace's output length, usage included.
        let v: Value = serde_json::from_str(&items[1].body).unwrap();
        assert_eq!(items[1].path, COMPLETIONS);
        assert_eq!(v["max_tokens"], 40);
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], BASE_MODEL);
        assert_eq!(items[1].tokens, 1540);
        // A bad line is an error naming the line.
        assert!(from_trace("{\"timestamp\": 0}", None, 1.0).unwrap_err().starts_with("line 1: "));
    }

    #[test]
    fn the_fixture_converts_and_its_conversations_share_prefixes() {
        let items = from_trace(trace::FIXTURE, Some(50), 1.0).unwrap();
        assert_eq!(items.len(), 50);
        assert!(items.windows(2).all(|w| w[0].at <= w[1].at));
        // Every fixture request opens with one of 4 system prompts of at least 2 blocks: among 50
        // requests, some pairs share at least those 2 blocks (4096 bytes).
        let prompts: Vec<String> = items.iter().map(prompt).collect();
        let shared = prompts
            .iter()
            .enumerate()
            .filter(|(i, p)| prompts[..*i].iter().any(|q| common_prefix(p, q) >= 4096))
            .count();
        assert!(shared > 40, "{shared}");
    }

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
