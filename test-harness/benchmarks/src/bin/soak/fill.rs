//! The fill phase, before the timed soak: a gateway that has served for hours has a full prefix index,
//! and that steady state is what a leak check must measure from. At the soak's short prompts the index
//! takes hours to fill (docs/reliability.md), so the fill sends long prompts, each new, through both
//! gateways at a bounded concurrency until each picker's prefix index sits at its cap **and** has gone
//! on evicting for a while: blocks sent reach `factor` × its cap, so that its hash table has done the
//! resize that follows the first evictions (deleted entries use up its free slots once, then it
//! rehashes in place; see `DEFAULT_FILL_FACTOR` in `main.rs`). Its requests are not part of the judged
//! traffic; any that fails is reported and fails the run.
//!
//! Pure parts here (the prompt's shape from the configuration, the prompts, when a gateway is done, the
//! CSV); `main.rs` reads the gauges and runs it.

use crate::load::{CLIENT_TIMEOUT, MODEL};
use e2e::Request;
use scheduler_core::prefix::{BYTES_PER_TOKEN, DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_MAX_PREFIX_BLOCKS};
use std::fmt::Write as _;
use std::time::Duration;

/// The fill gives up (and the soak fails) when an index is not full and done after this long.
pub const LIMIT: Duration = Duration::from_secs(600);
/// Requests per gateway at most, whatever the caps say.
pub const MAX_REQUESTS: u64 = 50_000;
/// Failed fill requests after which the fill stops: the gateways are not serving.
pub const MAX_FAILURES: u64 = 50;
/// An index not full after this many times its cap in blocks will not fill (prompts hashed into fewer
/// blocks than expected, or an endpoint never picked): the fill stops and says so.
pub const NOT_FILLING_FACTOR: f64 = 8.0;

/// How the prefix-cache scorer cuts a prompt: block size in bytes and the most blocks it hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub block_bytes: usize,
    pub max_blocks: usize,
}

impl Shape {
    /// Prompt bytes that give the scorer its maximum blocks per request.
    pub fn prompt_bytes(&self) -> usize {
        self.block_bytes * self.max_blocks
    }
}

/// The prefix-cache scorer's shape from a picker configuration (JSON) and, for `autoTune` (on unless
/// set false), the KV block size the model servers report, in tokens. Mirrors
/// `scheduler-core`'s `PrefixConfig` (blocks of `blockSizeTokens` × 4 bytes, or the legacy `blockSize`
/// in bytes; `maxPrefixBlocksToMatch`, or `maxPrefixTokensToMatch` when set).
pub fn shape(config: &str, reported_block_tokens: Option<u64>) -> Result<Shape, String> {
    let config: serde_json::Value =
        serde_json::from_str(config).map_err(|e| format!("picker configuration: {e}"))?;
    let scorer = config["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "prefix-cache-scorer"))
        .ok_or("the picker configuration has no prefix-cache-scorer: no prefix index to fill (--no-fill)")?;
    let p = &scorer["parameters"];
    let positive = |name: &str| p[name].as_u64().filter(|&v| v > 0).map(|v| v as usize);
    let configured = match (positive("blockSizeTokens"), positive("blockSize")) {
        (Some(tokens), _) => tokens * BYTES_PER_TOKEN,
        (None, Some(bytes)) => bytes,
        (None, None) => DEFAULT_BLOCK_SIZE_TOKENS * BYTES_PER_TOKEN,
    };
    let auto_tune = p["autoTune"].as_bool().unwrap_or(true);
    let block_bytes = match (auto_tune, reported_block_tokens.filter(|&t| t > 0)) {
        (true, Some(tokens)) => tokens as usize * BYTES_PER_TOKEN,
        _ => configured,
    };
    let max_blocks = match positive("maxPrefixTokensToMatch") {
        Some(tokens) => tokens * BYTES_PER_TOKEN / block_bytes,
        None => positive("maxPrefixBlocksToMatch").unwrap_or(DEFAULT_MAX_PREFIX_BLOCKS),
    };
    if max_blocks == 0 {
        return Err(format!("prefix-cache-scorer hashes no whole block of {block_bytes} bytes"));
    }
    Ok(Shape { block_bytes, max_blocks })
}

/// The KV block size (tokens) in a vLLM-style `/metrics` page
/// (`vllm:cache_config_info{block_size="16",…}`).
pub fn reported_block_tokens(metrics: &str) -> Option<u64> {
    metrics.lines().filter(|l| l.starts_with("vllm:cache_config_info{")).find_map(|l| {
        let rest = l.split_once("block_size=\"")?.1;
        rest.split_once('"')?.0.parse().ok()
    })
}

/// Filler text: deterministic, ASCII (one byte per character, nothing JSON escapes).
const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
    "lima", "mike", "november", "oscar", "papa",
];

/// Fill prompt `i`: exactly `bytes` bytes, its first block naming `i` (so every block hash of every
/// prompt is new: the chain hashes each block with all before it), then words in an order that depends on
/// `i`.
pub fn prompt(i: u64, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    let _ = write!(s, "fill request {i}:");
    let mut k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while s.len() < bytes {
        k = k.rotate_left(5).wrapping_add(0x2545_F491_4F6C_DD1D);
        s.push(' ');
        s.push_str(WORDS[(k >> 60) as usize]);
    }
    s.truncate(bytes);
    s
}

/// The completion a fill request asks for: the prompt, one token back.
pub fn body(prompt: &str) -> String {
    serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 1}).to_string()
}

/// Sends one fill request; `Err` says what was wrong with the answer.
pub fn send(addr: &str, body: &str) -> Result<(), String> {
    let reply = Request::post_json("/v1/completions", body.as_bytes().to_vec())
        .timeout(CLIENT_TIMEOUT)
        .send(addr)
        .map_err(|e| format!("no reply: {e}"))?;
    if reply.status != 200 {
        let text = reply.text();
        return Err(format!(
            "{} (expected 200): {}",
            reply.status,
            text.chars().take(120).collect::<String>()
        ));
    }
    if reply.truncated {
        return Err(format!("200 truncated after {} bytes", reply.body.len()));
    }
    Ok(())
}

/// One reading of a picker's prefix index: entries and cap summed over its `indexes` (the filter's
/// workers each keep one, holding every worker's picks; the shim keeps one), and the endpoints it keeps
/// an LRU for against the endpoints it should (the cap counts only endpoints it has an LRU for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub entries: u64,
    pub cap: u64,
    pub endpoints: u64,
    pub endpoints_expected: u64,
}

impl Index {
    pub fn full(&self) -> bool {
        self.cap > 0 && self.entries >= self.cap && self.endpoints >= self.endpoints_expected
    }
}

/// Where one gateway's fill stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// When its index was first seen full, and the blocks sent by then.
    pub full_at: Option<(Duration, u64)>,
    /// When blocks sent reached `factor` × the cap of one index after it was full.
    pub done_at: Option<Duration>,
    /// The last reading.
    pub last: Option<Index>,
}

impl Progress {
    /// Takes a reading at `at`, `blocks` sent so far (requests answered × blocks per request), `indexes`
    /// that share the reading's sums. `Err` when the index will not fill (see [`NOT_FILLING_FACTOR`]).
    pub fn update(
        &mut self,
        reading: Option<Index>,
        at: Duration,
        blocks: u64,
        indexes: u64,
        factor: f64,
    ) -> Result<(), String> {
        let Some(r) = reading else { return Ok(()) };
        self.last = Some(r);
        if self.done_at.is_some() {
            return Ok(());
        }
        let per_index = r.cap as f64 / indexes.max(1) as f64;
        if r.full() && self.full_at.is_none() {
            self.full_at = Some((at, blocks));
        }
        if self.full_at.is_some() && blocks as f64 >= factor * per_index {
            self.done_at = Some(at);
        }
        // Judged only once every endpoint has an LRU: before that the cap lacks theirs (the gauges lag
        // the picks by up to a second).
        let complete = r.cap > 0 && r.endpoints >= r.endpoints_expected;
        if self.full_at.is_none()
            && complete
            && blocks as f64 >= NOT_FILLING_FACTOR.max(factor + 4.0) * per_index
        {
            return Err(format!(
                "not full after {blocks} blocks, {:.1} times its cap of {per_index:.0} per index: {} of {} \
                 entries, {} of {} endpoints",
                blocks as f64 / per_index,
                r.entries,
                r.cap,
                r.endpoints,
                r.endpoints_expected
            ));
        }
        Ok(())
    }

    pub fn done(&self) -> bool {
        self.done_at.is_some()
    }
}

/// One reading during the fill.
#[derive(Clone, Debug, Default)]
pub struct FillSample {
    pub at: Duration,
    /// Requests answered right per gateway (filter, shim), and failed in all.
    pub ok: [u64; 2],
    pub failed: u64,
    /// Prefix index per gateway (filter: summed over its workers).
    pub index: [Option<Index>; 2],
    /// The filter's Wasm linear memory, summed over its workers.
    pub linear_bytes: Option<u64>,
    /// RSS of the filter's Envoy, the shim's Envoy and `epp-shim`.
    pub rss_kib: [Option<u64>; 3],
}

pub fn csv(samples: &[FillSample], blocks_per_request: u64) -> String {
    let mut s = String::from(
        "seconds,filter_ok,shim_ok,failed,filter_blocks_sent,shim_blocks_sent,filter_prefix_entries,\
         filter_prefix_cap,shim_prefix_entries,shim_prefix_cap,filter_wasm_memory_bytes,\
         rss_kib_envoy_filter,rss_kib_envoy_shim,rss_kib_epp_shim\n",
    );
    let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
    for x in samples {
        let _ = write!(
            s,
            "{:.1},{},{},{},{},{}",
            x.at.as_secs_f64(),
            x.ok[0],
            x.ok[1],
            x.failed,
            x.ok[0] * blocks_per_request,
            x.ok[1] * blocks_per_request
        );
        for i in &x.index {
            let _ = write!(s, ",{},{}", opt(i.map(|i| i.entries)), opt(i.map(|i| i.cap)));
        }
        let _ = write!(s, ",{}", opt(x.linear_bytes));
        for r in &x.rss_kib {
            let _ = write!(s, ",{}", opt(*r));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECOMMENDED: &str = r#"{"plugins": [{"type": "prefix-cache-scorer"}, {"type": "queue-scorer"}]}"#;

    #[test]
    fn the_shape_follows_the_scorer_and_the_reported_block_size() {
        // recommended.json: defaults, autoTune on: the servers' block size (model-sim: 16 tokens).
        assert_eq!(shape(RECOMMENDED, Some(16)).unwrap(), Shape { block_bytes: 64, max_blocks: 256 });
        assert_eq!(shape(RECOMMENDED, Some(32)).unwrap().prompt_bytes(), 32 * 4 * 256);
        assert_eq!(shape(RECOMMENDED, None).unwrap().prompt_bytes(), 16 * 1024);
        // --prefix-lru turns autoTune off: the configured size wins.
        let off = r#"{"plugins": [{"type": "prefix-cache-scorer", "parameters":
            {"autoTune": false, "blockSizeTokens": 8, "maxPrefixBlocksToMatch": 100}}]}"#;
        assert_eq!(shape(off, Some(32)).unwrap(), Shape { block_bytes: 32, max_blocks: 100 });
        let tokens = r#"{"plugins": [{"type": "prefix-cache-scorer", "parameters":
            {"maxPrefixTokensToMatch": 2048}}]}"#;
        assert_eq!(shape(tokens, Some(16)).unwrap(), Shape { block_bytes: 64, max_blocks: 128 });
        let none = r#"{"plugins": [{"type": "queue-scorer"}]}"#;
        assert!(shape(none, Some(16)).unwrap_err().contains("no prefix-cache-scorer"));
    }

    #[test]
    fn the_block_size_is_read_from_vllm_cache_config_info() {
        let page = "# TYPE vllm:cache_config_info gauge\n\
            vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",num_gpu_blocks=\"27500\"} 1.0\n";
        assert_eq!(reported_block_tokens(page), Some(16));
        assert_eq!(reported_block_tokens("vllm:num_requests_running 0\n"), None);
    }

    #[test]
    fn prompts_have_the_length_asked_and_differ_from_the_first_block_on() {
        let shape = Shape { block_bytes: 64, max_blocks: 256 };
        let (a, b) = (prompt(7, shape.prompt_bytes()), prompt(8, shape.prompt_bytes()));
        assert_eq!((a.len(), b.len()), (16 * 1024, 16 * 1024));
        assert_eq!(a, prompt(7, shape.prompt_bytes()), "deterministic");
        assert_ne!(a.as_bytes()[..64], b.as_bytes()[..64], "the first block already differs");
        assert!(a.is_ascii() && !a.contains(['"', '\\']));
        // The body carries the prompt as is: JSON escapes nothing in it.
        assert!(body(&a).contains(&a));
    }

    #[test]
    fn a_gateway_is_done_once_full_and_factor_times_its_cap_sent() {
        let reading = |entries, endpoints| Index { entries, cap: 600, endpoints, endpoints_expected: 6 };
        let s = Duration::from_secs;
        let mut p = Progress::default();
        p.update(None, s(1), 0, 2, 2.0).unwrap();
        assert_eq!(p.last, None);
        p.update(Some(reading(300, 6)), s(2), 300, 2, 2.0).unwrap();
        // At its cap but with an endpoint missing: the cap does not count that endpoint yet.
        p.update(Some(reading(600, 5)), s(3), 400, 2, 2.0).unwrap();
        assert_eq!(p.full_at, None);
        p.update(Some(reading(600, 6)), s(4), 500, 2, 2.0).unwrap();
        assert_eq!(p.full_at, Some((s(4), 500)));
        assert!(!p.done(), "500 blocks < 2 × 300 per index");
        p.update(Some(reading(600, 6)), s(5), 600, 2, 2.0).unwrap();
        assert_eq!(p.done_at, Some(s(5)));
        p.update(Some(reading(590, 6)), s(6), 700, 2, 2.0).unwrap();
        assert_eq!((p.full_at, p.done_at), (Some((s(4), 500)), Some(s(5))), "kept");
    }

    #[test]
    fn an_index_that_does_not_fill_stops_the_fill() {
        let mut p = Progress::default();
        let stuck = Index { entries: 200, cap: 300, endpoints: 3, endpoints_expected: 3 };
        p.update(Some(stuck), Duration::from_secs(1), 2_000, 1, 2.0).unwrap();
        let e = p.update(Some(stuck), Duration::from_secs(2), 2_400, 1, 2.0).unwrap_err();
        assert!(e.contains("200 of 300 entries"), "{e}");
        // While an endpoint has no LRU yet its cap is missing from the reading: not judged.
        let partial = Index { entries: 200, cap: 200, endpoints: 2, endpoints_expected: 3 };
        p.update(Some(partial), Duration::from_secs(3), 9_000, 1, 2.0).unwrap();
    }

    #[test]
    fn the_csv_has_a_value_per_column() {
        let x = FillSample {
            at: Duration::from_secs(3),
            ok: [2, 1],
            failed: 0,
            index: [Some(Index { entries: 10, cap: 20, endpoints: 1, endpoints_expected: 1 }), None],
            linear_bytes: Some(65536),
            rss_kib: [Some(1), None, Some(3)],
        };
        let text = csv(&[x], 256);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split(',').count(), lines[1].split(',').count());
        assert_eq!(lines[1], "3.0,2,1,0,512,256,10,20,,,65536,1,,3");
    }
}
