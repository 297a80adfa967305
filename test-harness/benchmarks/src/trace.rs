//! Trace replay: JSONL request traces in the Mooncake / aiperf format, one request per line:
//!
//! ```json
//! {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48, 49]}
//! ```
//!
//! `timestamp` is the arrival in milliseconds from the start of the trace, `input_length` and
//! `output_length` are token counts, and `hash_ids` name the prompt's 512-token blocks: two requests
//! whose lists start with the same ids share that prefix (the ids are chained, so an id stands for the
//! whole prefix up to its block). Other fields are ignored; `hash_ids` may be missing (nothing shared).
//!
//! A block's text is generated from its id alone (a [`Piece`] seeded by the id), so identical ids give
//! identical text: the same prefix hashes at the gateway (which hashes prompt bytes in 64-byte blocks)
//! and the same cached KV blocks in the engine (16-token blocks of 4 bytes per token). 512 tokens are
//! 2048 bytes, a whole number of both. A request's last block is cut to `input_length`; tokens beyond
//! the listed blocks are text of their own.

use crate::workload::{Arrival, Piece};
use serde_json::Value;
use std::fmt;

/// Tokens per `hash_ids` block (Mooncake's and aiperf's default).
pub const TRACE_BLOCK_TOKENS: u32 = 512;

/// Seeds of block texts and of the unshared tails, apart from every synthetic workload's seeds.
const BLOCK_SEED: u64 = 0x6d6f_6f6e_6361_6b65;
const TAIL_SEED: u64 = 0x7472_6163_652d_7461;

/// One request as the trace gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRequest {
    /// 1-based line of the file (for messages).
    pub line: usize,
    pub timestamp_ms: u64,
    pub input_length: u32,
    pub output_length: u32,
    pub hash_ids: Vec<u64>,
}

/// A line that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// The offending field, `None` when the line itself is not a JSON object.
    pub field: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "line {}: `{field}`: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for TraceError {}

fn describe(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// A whole number `>= min` that fits `max`; JSON numbers like `7.0` are accepted, `7.5` is not.
fn whole(
    obj: &serde_json::Map<String, Value>,
    line: usize,
    field: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, TraceError> {
    let err = |message: String| TraceError { line, field: Some(field), message };
    let v = obj.get(field).ok_or_else(|| err(String::from("missing")))?;
    let n = match (v.as_u64(), v.as_f64()) {
        (Some(n), _) => Some(n),
        (None, Some(x)) if x >= 0.0 && x.fract() == 0.0 && x <= max as f64 => Some(x as u64),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(err(format!("expected a whole number from {min} to {max}, got {}", describe(v)))),
    }
}

/// Parses one non-blank line.
pub fn parse_line(text: &str, line: usize) -> Result<TraceRequest, TraceError> {
    let value: Value = serde_json::from_str(text).map_err(|e| TraceError {
        line,
        field: None,
        message: format!("not JSON: {e}"),
    })?;
    let Some(obj) = value.as_object() else {
        return Err(TraceError {
            line,
            field: None,
            message: format!("expected an object, got {}", describe(&value)),
        });
    };
    let timestamp_ms = whole(obj, line, "timestamp", 0, u64::MAX / 1000)?;
    let input_length = whole(obj, line, "input_length", 1, u64::from(u32::MAX))? as u32;
    let output_length = whole(obj, line, "output_length", 1, u64::from(u32::MAX))? as u32;
    let hash_ids = match obj.get("hash_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut ids = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                let Some(id) = item.as_u64() else {
                    return Err(TraceError {
                        line,
                        field: Some("hash_ids"),
                        message: format!(
                            "item {k}: expected a non-negative whole number, got {}",
                            describe(item)
                        ),
                    });
                };
                ids.push(id);
            }
            ids
        }
        Some(other) => {
            return Err(TraceError {
                line,
                field: Some("hash_ids"),
                message: format!("expected an array of block ids, got {}", describe(other)),
            })
        }
    };
    Ok(TraceRequest { line, timestamp_ms, input_length, output_length, hash_ids })
}

/// Parses a whole trace; blank lines are skipped. Stops after `limit` requests (in file order).
pub fn parse(text: &str, limit: Option<usize>) -> Result<Vec<TraceRequest>, TraceError> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        if l.trim().is_empty() {
            continue;
        }
        out.push(parse_line(l, i + 1)?);
    }
    Ok(out)
}

/// Reads and parses a trace file.
pub fn read(path: &std::path::Path, limit: Option<usize>) -> Result<Vec<TraceRequest>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text, limit).map_err(|e| format!("{}: {e}", path.display()))
}

/// The prompt of one request as text pieces: one [`TRACE_BLOCK_TOKENS`]-token piece per hash id (the
/// last cut to `input_length`), then the tokens no id covers as a piece of this request's own.
pub fn pieces(r: &TraceRequest) -> Vec<Piece> {
    let mut left = r.input_length;
    let mut out = Vec::with_capacity(r.hash_ids.len() + 1);
    for &id in &r.hash_ids {
        if left == 0 {
            break;
        }
        let tokens = left.min(TRACE_BLOCK_TOKENS);
        out.push(Piece { seed: BLOCK_SEED ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15), tokens });
        left -= tokens;
    }
    if left > 0 {
        out.push(Piece {
            seed: TAIL_SEED ^ (r.line as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            tokens: left,
        });
    }
    out
}

/// The trace as arrivals: times divided by `speed` (2 = twice the rate), counted from the first request,
/// sorted by time (stable), ids in that order.
pub fn arrivals(requests: &[TraceRequest], speed: f64) -> Vec<Arrival> {
    let speed = if speed.is_finite() && speed > 0.0 { speed } else { 1.0 };
    let start = requests.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let mut out: Vec<Arrival> = requests
        .iter()
        .map(|r| Arrival {
            id: 0,
            at_us: ((r.timestamp_ms - start) as f64 * 1000.0 / speed).round() as u64,
            pieces: pieces(r),
            output_tokens: r.output_length,
            lora: None,
            class: None,
        })
        .collect();
    out.sort_by_key(|a| a.at_us);
    for (i, a) in out.iter_mut().enumerate() {
        a.id = i as u64;
    }
    out
}

/// Mean arrival rate of `arrivals`, requests per second (0 for fewer than two or no time between them).
pub fn mean_rate(arrivals: &[Arrival]) -> f64 {
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else { return 0.0 };
    let span_s = last.at_us.saturating_sub(first.at_us) as f64 / 1e6;
    if span_s > 0.0 {
        (arrivals.len() - 1) as f64 / span_s
    } else {
        0.0
    }
}

/// The generated test trace, `fixtures/traces/conversations.jsonl` (regenerate it with
/// `BENCHMARKS_WRITE_FIXTURES=1 cargo test -p benchmarks --lib trace`).
pub const FIXTURE: &str = include_str!("../fixtures/traces/conversations.jsonl");
/// The generator's seed for [`FIXTURE`].
pub const FIXTURE_SEED: u64 = 20;

/// A small Mooncake-format trace of chat conversations, deterministic for `seed`: conversations start as
/// a Poisson process (~2 per second); each opens with one of 4 system prompts (2 to 5 shared blocks) and
/// has 1 to 6 turns, a turn's `hash_ids` extending the previous turn's (history, then the new question's
/// and the previous answer's blocks), 3 to 20 s apart. Lines are in timestamp order.
pub fn generate_fixture(seed: u64, conversations: usize) -> String {
    use scheduler_core::rng::Rng;
    let mut rng = Rng::new(seed);
    let system_blocks = [2u64, 3, 4, 5];
    let mut next_id: u64 = system_blocks.iter().sum();
    // (timestamp, input, output, ids)
    let mut lines: Vec<(u64, u32, u32, Vec<u64>)> = Vec::new();
    let mut start_ms = 0u64;
    for _ in 0..conversations {
        start_ms += (-(1.0 - rng.next_f64()).ln() * 500.0) as u64;
        let sys = rng.below(system_blocks.len());
        let first: u64 = system_blocks.iter().take(sys).sum();
        let count = system_blocks.get(sys).copied().unwrap_or(2);
        let mut ids: Vec<u64> = (first..first + count).collect();
        // Tokens of the history, whole blocks of it shared with the next turn.
        let mut tokens = ids.len() as u32 * TRACE_BLOCK_TOKENS;
        let turns = 1 + rng.below(6);
        let mut at = start_ms;
        for _ in 0..turns {
            // A question of 40 to 1500 tokens: its blocks are new.
            tokens += 40 + rng.below(1461) as u32;
            while (ids.len() as u32) * TRACE_BLOCK_TOKENS < tokens {
                ids.push(next_id);
                next_id += 1;
            }
            let output = 10 + rng.below(600) as u32;
            lines.push((at, tokens, output, ids.clone()));
            // The next turn repeats this prompt, then the answer, then its question: this prompt's whole
            // blocks keep their ids; its partly filled last block gets more text, so a new id there.
            ids.truncate((tokens / TRACE_BLOCK_TOKENS) as usize);
            tokens += output;
            at += 3_000 + rng.below(17_000) as u64;
        }
    }
    lines.sort_by_key(|l| l.0);
    let mut out = String::new();
    for (t, input, output, ids) in lines {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            "{{\"timestamp\": {t}, \"input_length\": {input}, \"output_length\": {output}, \"hash_ids\": [{}]}}\n",
            ids.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_sim::Prompt;
    use scheduler_core::prefix::block_hashes;

    fn common<T: PartialEq>(a: &[T], b: &[T]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn the_fixture_is_what_the_generator_writes() {
        let generated = generate_fixture(FIXTURE_SEED, 80);
        if std::env::var_os("BENCHMARKS_WRITE_FIXTURES").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/traces/conversations.jsonl");
            std::fs::write(path, &generated).unwrap();
        }
        assert!(generated == FIXTURE, "fixtures/traces/conversations.jsonl is stale: see trace::FIXTURE");
        assert_eq!(generate_fixture(FIXTURE_SEED, 80), generated, "deterministic");
    }

    #[test]
    fn the_fixture_parses_with_shared_system_prompts_and_growing_conversations() {
        let t = parse(FIXTURE, None).unwrap();
        assert!((200..400).contains(&t.len()), "{} lines", t.len());
        assert!(t.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
        for r in &t {
            // Every id list covers the prompt exactly: ⌈input / 512⌉ blocks.
            assert_eq!(
                r.hash_ids.len() as u32,
                r.input_length.div_ceil(TRACE_BLOCK_TOKENS),
                "line {}",
                r.line
            );
        }
        // The 4 system prompts (ids 0..14) open every request, each prompt is used by many.
        let system_first: std::collections::BTreeSet<u64> = t.iter().map(|r| r.hash_ids[0]).collect();
        assert_eq!(system_first, [0, 2, 5, 9].into_iter().collect());
        // Multi-turn: a later request repeats all whole blocks of an earlier one and adds more.
        let extends = |a: &TraceRequest, b: &TraceRequest| {
            let whole = (a.input_length / TRACE_BLOCK_TOKENS) as usize;
            whole > 5 && b.hash_ids.len() > whole && b.hash_ids[..whole] == a.hash_ids[..whole]
        };
        let followed = t.iter().filter(|a| t.iter().any(|b| b.line > a.line && extends(a, b))).count();
        assert!(followed > 50, "{followed} requests continued by a later turn");
        // Limit: the first n lines.
        assert_eq!(parse(FIXTURE, Some(10)).unwrap(), t[..10].to_vec());
    }

    #[test]
    fn identical_ids_give_the_same_text_gateway_hashes_and_engine_blocks() {
        let req = |line, ids: &[u64], input| TraceRequest {
            line,
            timestamp_ms: 0,
            input_length: input,
            output_length: 10,
            hash_ids: ids.to_vec(),
        };
        // Three shared blocks, then different ones; the second request's ids stop before its end.
        let (a, b) = (req(1, &[7, 8, 9, 10, 11], 2400), req(2, &[7, 8, 9, 12], 2100));
        let arr = arrivals(&[a, b], 1.0);
        let (x, y) = (arr[0].prompt_text(), arr[1].prompt_text());
        assert_eq!((x.len(), y.len()), (2400 * 4, 2100 * 4));
        let shared_bytes = 3 * TRACE_BLOCK_TOKENS as usize * 4;
        assert_eq!(common(x.as_bytes(), y.as_bytes()), shared_bytes);
        // The gateway's 64-byte block chain and the engine's 16-token blocks agree on exactly 3 × 32.
        let gx = block_hashes("m", None, x.as_bytes(), 64, usize::MAX);
        let gy = block_hashes("m", None, y.as_bytes(), 64, usize::MAX);
        assert_eq!(common(&gx, &gy), 96);
        let (ex, ey) = (Prompt::from_text(&x, 16), Prompt::from_text(&y, 16));
        assert_eq!(common(ex.block_hashes(), ey.block_hashes()), 96);
        // The last block is cut to input_length; a request longer than its ids gets a tail of its own.
        assert_eq!(arr[0].pieces.last().map(|p| p.tokens), Some(2400 - 4 * 512));
        let long = pieces(&req(3, &[7], 600));
        assert_eq!(long.iter().map(|p| p.tokens).collect::<Vec<_>>(), vec![512, 88]);
        assert_ne!(long[1], pieces(&req(4, &[7], 600))[1], "tails differ per request");
    }

    #[test]
    fn time_scaling_and_order() {
        let t = parse(
            "{\"timestamp\": 1000, \"input_length\": 5, \"output_length\": 1}\n\
             {\"timestamp\": 3000, \"input_length\": 5, \"output_length\": 1}\n\
             {\"timestamp\": 2000, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": null}\n",
            None,
        )
        .unwrap();
        let at = |speed| arrivals(&t, speed).iter().map(|a| a.at_us).collect::<Vec<_>>();
        assert_eq!(at(1.0), vec![0, 1_000_000, 2_000_000]);
        assert_eq!(at(4.0), vec![0, 250_000, 500_000]);
        assert_eq!(mean_rate(&arrivals(&t, 4.0)), 4.0);
        assert_eq!(arrivals(&t, 1.0)[1].id, 1);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_field() {
        let good = "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 5, \"hash_ids\": [1]}";
        let case = |bad: &str| {
            let text = format!("{good}\n\n{bad}\n{good}\n");
            parse(&text, None).unwrap_err().to_string()
        };
        assert_eq!(
            case("{\"timestamp\": 0, \"input_length\": -3, \"output_length\": 5}"),
            "line 3: `input_length`: expected a whole number from 1 to 4294967295, got -3"
        );
        assert_eq!(case("{\"input_length\": 3, \"output_length\": 5}"), "line 3: `timestamp`: missing");
        assert_eq!(
            case("{\"timestamp\": 1.5, \"input_length\": 3, \"output_length\": 5}"),
            "line 3: `timestamp`: expected a whole number from 0 to 18446744073709551, got 1.5"
        );
        assert_eq!(
            case("{\"timestamp\": 0, \"input_length\": 3, \"output_length\": 0}"),
            "line 3: `output_length`: expected a whole number from 1 to 4294967295, got 0"
        );
        assert_eq!(
            case("{\"timestamp\": 0, \"input_length\": 3, \"output_length\": \"5\"}"),
            "line 3: `output_length`: expected a whole number from 1 to 4294967295, got \"5\""
        );
        assert_eq!(
            case("{\"timestamp\": 0, \"input_length\": 3, \"output_length\": 5, \"hash_ids\": 4}"),
            "line 3: `hash_ids`: expected an array of block ids, got 4"
        );
        assert_eq!(
            case("{\"timestamp\": 0, \"input_length\": 3, \"output_length\": 5, \"hash_ids\": [1, -2]}"),
            "line 3: `hash_ids`: item 1: expected a non-negative whole number, got -2"
        );
        assert_eq!(case("[1, 2]"), "line 3: expected an object, got [1,2]");
        assert!(case("{\"timestamp\": 0,").starts_with("line 3: not JSON: "), "{}", case("{"));
        // A float that is a whole number is fine (some exporters write 1000.0).
        let ok = parse("{\"timestamp\": 1000.0, \"input_length\": 3, \"output_length\": 5}", None).unwrap();
        assert_eq!(ok[0].timestamp_ms, 1000);
    }
}
