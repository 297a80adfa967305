//! Criterion benchmarks of the per-request and per-scrape hot paths of `scheduler-core`.
//!
//! The numbers and the command that made them are recorded in `BENCHMARKS.md`; inputs are seeded, so two
//! runs measure the same work.
// Benchmark code: the workspace denies these for code that runs in the proxy, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use scheduler_core::admission::{admit, Decision};
use scheduler_core::endpoint_picker::{EndpointPicker, Outcome, PoolView, RequestInfo};
use scheduler_core::metrics_text::parse_metrics;
use scheduler_core::model::{
    Endpoint, EndpointState, Engine, InFlight, Metrics, PoolSnapshot, Role, ENGINE_TYPE_LABEL, ROLE_LABEL,
};
use scheduler_core::prefix::{
    hash_blocks, BYTES_PER_TOKEN, DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_MAX_PREFIX_BLOCKS,
};
use scheduler_core::request::{parse_request, RequestMeta};
use scheduler_core::rng::Rng;
use scheduler_core::scheduling::pipeline::Scheduler;
use scheduler_core::scheduling::SchedulingRequest;
use scheduler_core::snapshot_codec;
use std::hint::black_box;
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const NOW_MS: u64 = 1_750_000_000_000;

const WORDS: [&str; 24] = [
    "the", "model", "server", "returns", "tokens", "for", "each", "request", "and", "cache", "blocks", "are",
    "reused", "when", "prompts", "share", "a", "prefix", "answer", "briefly", "cite", "sources", "user",
    "context",
];

/// Seeded English-ish text of exactly `len` bytes, with a JSON `\n` escape every few lines as real prompts
/// have (escaped strings cannot be borrowed by the parser, so they belong in the measurement).
fn text(rng: &mut Rng, len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    let mut since_newline = 0;
    while out.len() < len {
        if since_newline > 160 {
            out.push_str("\\n");
            since_newline = 0;
        } else {
            let w = WORDS.get(rng.below(WORDS.len())).copied().unwrap_or("x");
            out.push_str(w);
            out.push(' ');
            since_newline += w.len() + 1;
        }
    }
    out.truncate(len);
    // Never end on half of an escape.
    if out.ends_with('\\') {
        out.pop();
        out.push('.');
    }
    out
}

/// A chat body whose `messages` hold about `prompt_len` bytes of text: a system prompt, then turns.
fn chat_body(rng: &mut Rng, prompt_len: usize) -> String {
    let system = text(rng, prompt_len / 4);
    let mut messages = format!(r#"{{"role":"system","content":"{system}"}}"#);
    let mut left = prompt_len - system.len();
    let mut user = true;
    while left > 0 {
        let n = left.min(2048);
        let role = if user { "user" } else { "assistant" };
        messages.push_str(&format!(r#",{{"role":"{role}","content":"{}"}}"#, text(rng, n)));
        left -= n;
        user = !user;
    }
    format!(r#"{{"model":"{MODEL}","messages":[{messages}],"max_completion_tokens":256,"stream":true}}"#)
}

/// A chat body of exactly `size` bytes shaped like the overhead benchmark's (its `load.rs` in
/// `test-harness/benchmarks`): one system and one user message of plain words, no escapes, so the two big
/// strings dominate.
fn two_message_chat_body(rng: &mut Rng, size: usize) -> String {
    let head = r#"{"model":"m","max_tokens":16,"stream":false,"messages":[{"role":"system","content":""#;
    let mid = r#""},{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let text_len = size - head.len() - mid.len() - tail.len();
    let mut words = String::with_capacity(text_len + 16);
    while words.len() < text_len {
        words.push_str(WORDS.get(rng.below(WORDS.len())).copied().unwrap_or("x"));
        words.push(' ');
    }
    words.truncate(text_len);
    let (system, user) = words.split_at(text_len * 3 / 4);
    format!("{head}{system}{mid}{user}{tail}")
}

fn completions_body(rng: &mut Rng, prompt_len: usize) -> String {
    let prompt = text(rng, prompt_len);
    format!(r#"{{"model":"{MODEL}","prompt":"{prompt}","max_tokens":256,"temperature":0.7}}"#)
}

/// `n` endpoints with varied, fresh metrics (seeded). A tenth are queueing, so scores spread.
fn pool(n: usize, seed: u64) -> PoolSnapshot {
    let mut rng = Rng::new(seed);
    let endpoints = (0..n)
        .map(|i| {
            let address = format!("10.{}.{}.{}:8000", 1 + i / 65_536, (i / 256) % 256, i % 256);
            let busy = rng.below(10) == 0;
            let metrics = Metrics {
                waiting: if busy { 5 + rng.below(20) as u32 } else { rng.below(4) as u32 },
                running: rng.below(64) as u32,
                kv_usage: 0.05 + 0.75 * rng.next_f64(),
                running_loras: Vec::new(),
                waiting_loras: Vec::new(),
                max_lora: None,
                block_size: Some(DEFAULT_BLOCK_SIZE_TOKENS as u32),
                num_gpu_blocks: Some(20_000 + rng.below(20_000) as u32),
                updated_at_ms: NOW_MS - rng.below(150) as u64,
            };
            let endpoint = Endpoint {
                address,
                role: Role::Both,
                engine: Engine::Vllm,
                labels: vec![
                    (String::from("app"), String::from("vllm-llama3-8b-instruct")),
                    (String::from(ENGINE_TYPE_LABEL), String::from("vllm")),
                    (String::from(ROLE_LABEL), String::from("both")),
                ],
            };
            EndpointState {
                endpoint,
                metrics: Some(metrics),
                consecutive_scrape_failures: 0,
                in_flight: InFlight {
                    requests: rng.below(8) as u32,
                    tokens: rng.below(40_000) as u64,
                    ..InFlight::default()
                },
            }
        })
        .collect();
    let mut snapshot = PoolSnapshot {
        generation: 42,
        published_at_ms: NOW_MS,
        pool: String::from("vllm-llama3-8b-instruct"),
        endpoints,
        ..PoolSnapshot::default()
    };
    snapshot.sort();
    snapshot
}

/// Chat requests sharing one of a few system prompts, each with a per-request tag at the start of the
/// user turn so requests differ after the shared part (as separate conversations over one system prompt).
struct SharedPrefixRequests {
    /// Raw `messages` JSON per system prompt (what the parser hands the scheduler for chat).
    messages: Vec<Vec<u8>>,
    /// Offset of the 8-byte tag in each `messages`.
    tag_at: Vec<usize>,
    prompt_bytes: Vec<usize>,
}

const TAG: &str = "TAGTAGTA";
const SYSTEM_PROMPTS: usize = 8;
/// Distinct tags cycled through: bounds the index's growth however long Criterion runs.
const DISTINCT_TAGS: u64 = 4096;

impl SharedPrefixRequests {
    /// 12 KiB system prompt + 4 KiB user turn = a 16 KiB prompt; the hashed 256 blocks cover it.
    fn new() -> SharedPrefixRequests {
        let mut rng = Rng::new(7);
        let (mut messages, mut tag_at, mut prompt_bytes) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..SYSTEM_PROMPTS {
            let system = text(&mut rng, 12 * 1024);
            let user = text(&mut rng, 4 * 1024 - TAG.len());
            let body = format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{TAG}{user}"}}],"max_completion_tokens":256}}"#
            );
            let parsed = parse_request(CHAT, body.as_bytes()).unwrap();
            // `\n` escapes count one byte of text each, so the text is a little under 16 KiB.
            assert!((15 * 1024..=16 * 1024).contains(&parsed.prompt_bytes), "{}", parsed.prompt_bytes);
            let m = parsed.prefix_input.to_vec();
            tag_at.push(m.windows(TAG.len()).position(|w| w == TAG.as_bytes()).unwrap());
            prompt_bytes.push(parsed.prompt_bytes);
            messages.push(m);
        }
        SharedPrefixRequests { messages, tag_at, prompt_bytes }
    }

    /// The `i`-th request: system prompt `i % 8`, tag `i % 4096`. Writes the tag in place so the
    /// measured loop builds no strings; the request is what `InferenceRequest::scheduling_request`
    /// would give for the parsed body (checked in `decision_time`).
    fn get(&mut self, i: u64) -> SchedulingRequest<'_> {
        let k = (i % SYSTEM_PROMPTS as u64) as usize;
        let at = self.tag_at[k];
        let tag = format_tag(i % DISTINCT_TAGS);
        self.messages[k][at..at + TAG.len()].copy_from_slice(&tag);
        SchedulingRequest {
            request_id: "bench",
            model: MODEL,
            prefix_input: &self.messages[k],
            cache_salt: None,
            prompt_bytes: self.prompt_bytes[k],
            max_output_tokens: Some(256),
            priority: -1,
            session_token: None,
            headers: &[],
        }
    }
}

fn format_tag(n: u64) -> [u8; 8] {
    let mut tag = [b'0'; 8];
    for (j, b) in tag.iter_mut().rev().enumerate() {
        *b = b"0123456789abcdef"[((n >> (4 * j)) & 0xf) as usize];
    }
    tag
}

/// `admission::admit` with GIE's default profile on a warm prefix index. Requests are sheddable
/// (priority −1) so the utilization detector runs too; the pool is never saturated, so all are routed.
fn decision_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_16KiB_chat");
    let mut requests = SharedPrefixRequests::new();

    // The hand-built request is what the parser gives for the same body.
    {
        let built = requests.get(0);
        let messages = std::str::from_utf8(built.prefix_input).unwrap();
        let body = format!(r#"{{"model":"{MODEL}","messages":{messages},"max_completion_tokens":256}}"#);
        let parsed = parse_request(CHAT, body.as_bytes()).unwrap();
        let meta = RequestMeta { request_id: "bench", priority: -1, ..RequestMeta::default() };
        let p = parsed.scheduling_request(meta);
        let same = (p.model, p.prefix_input, p.prompt_bytes, p.max_output_tokens, p.priority)
            == (built.model, built.prefix_input, built.prompt_bytes, built.max_output_tokens, built.priority);
        assert!(same, "the benchmark's request differs from the parsed one");
    }

    for n in [8usize, 64, 512, 4096] {
        let snapshot = pool(n, 1);
        let mut scheduler = Scheduler::gie_default().unwrap();
        let mut rng = Rng::new(3);
        // Warm the prefix index: a few hundred earlier decisions over the same system prompts.
        for i in 0..512 {
            let req = requests.get(i);
            let d = admit(&mut scheduler, &req, &snapshot, None, NOW_MS, &mut rng);
            assert!(matches!(d, Decision::Route { .. }), "{n} endpoints: {d:?}");
        }
        let mut i = 512u64;
        group.bench_with_input(BenchmarkId::new("endpoints", n), &snapshot, |b, snapshot| {
            b.iter(|| {
                i += 1;
                let req = requests.get(i);
                black_box(admit(&mut scheduler, &req, snapshot, None, NOW_MS, &mut rng))
            })
        });
    }
    group.finish();
}

/// Where a decision's time goes: the prefix hashing alone, and the same decision without the prefix
/// scorer (no hashing, no index walk, no recording). The difference to `decide_16KiB_chat` is the index.
fn decision_breakdown(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_breakdown");
    let mut requests = SharedPrefixRequests::new();
    let block_bytes = DEFAULT_BLOCK_SIZE_TOKENS * BYTES_PER_TOKEN;
    let mut hashes = Vec::with_capacity(DEFAULT_MAX_PREFIX_BLOCKS);
    let req = requests.get(1);
    group.bench_function("prefix_hash_16KiB", |b| {
        b.iter(|| {
            hash_blocks(
                MODEL,
                None,
                black_box(req.prefix_input),
                block_bytes,
                DEFAULT_MAX_PREFIX_BLOCKS,
                &mut hashes,
            );
            black_box(&hashes);
        })
    });
    let no_prefix = r#"{"plugins": [{"type": "queue-scorer"}, {"type": "kv-cache-utilization-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "queue-scorer", "weight": 2}, {"pluginRef": "kv-cache-utilization-scorer", "weight": 2}]}]}"#;
    for n in [64usize, 4096] {
        let snapshot = pool(n, 1);
        let mut scheduler = Scheduler::from_json(no_prefix).unwrap();
        let mut rng = Rng::new(3);
        let mut i = 0u64;
        group.bench_with_input(BenchmarkId::new("without_prefix_scorer", n), &snapshot, |b, snapshot| {
            b.iter(|| {
                i += 1;
                let req = requests.get(i);
                black_box(admit(&mut scheduler, &req, snapshot, None, NOW_MS, &mut rng))
            })
        });
    }
    group.finish();
}

/// `parse_request` then the prefix hashing the scheduler does (GIE defaults: 64-byte blocks, 256 at
/// most), per body byte.
fn parse_and_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_and_hash");
    let block_bytes = DEFAULT_BLOCK_SIZE_TOKENS * BYTES_PER_TOKEN;
    let mut rng = Rng::new(11);
    for (label, size) in [("4KiB", 4 * 1024), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)] {
        // Text length minus the fixed JSON around it, so bodies land within ~1 % of the nominal size
        // (chat adds ~35 bytes per 2 KiB turn on top; Criterion divides by the exact length).
        let bodies = [
            ("chat", CHAT, chat_body(&mut rng, size - 160)),
            ("completions", COMPLETIONS, completions_body(&mut rng, size - 110)),
        ];
        for (api, path, body) in &bodies {
            bench_parse_and_hash(&mut group, api, label, path, body.as_bytes(), block_bytes);
        }
    }
    // The overhead benchmark's 4 KiB and 220 KiB chat bodies (two big messages), where the Wasm filter's
    // per-request time is mostly this parse.
    for (label, size) in [("4KiB", 4 * 1024), ("220KiB", 220 * 1024)] {
        let body = two_message_chat_body(&mut rng, size);
        bench_parse_and_hash(&mut group, "chat_2msg", label, CHAT, body.as_bytes(), block_bytes);
    }
    group.finish();
}

fn bench_parse_and_hash(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    api: &str,
    label: &str,
    path: &str,
    body: &[u8],
    block_bytes: usize,
) {
    group.throughput(Throughput::Bytes(body.len() as u64));
    let mut hashes = Vec::with_capacity(DEFAULT_MAX_PREFIX_BLOCKS);
    group.bench_with_input(BenchmarkId::new(api, label), body, |b, body| {
        b.iter(|| {
            let req = parse_request(path, black_box(body)).unwrap();
            hash_blocks(
                &req.model,
                req.cache_salt.as_deref(),
                &req.prefix_input,
                block_bytes,
                DEFAULT_MAX_PREFIX_BLOCKS,
                &mut hashes,
            );
            black_box(&hashes);
            req.prompt_bytes
        })
    });
}

fn snapshot_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    for n in [64usize, 1024] {
        let snapshot = pool(n, 5);
        let bytes = snapshot_codec::encode(&snapshot);
        assert_eq!(snapshot_codec::decode(&bytes).unwrap(), snapshot);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", n), &snapshot, |b, s| {
            b.iter(|| black_box(snapshot_codec::encode(black_box(s))))
        });
        group.bench_with_input(BenchmarkId::new("decode", n), &bytes, |b, bytes| {
            b.iter(|| black_box(snapshot_codec::decode(black_box(bytes))))
        });
    }
    group.finish();
}

fn metrics_parse(c: &mut Criterion) {
    let page = include_str!("../tests/fixtures/vllm_v0_11.txt");
    let parsed = parse_metrics(Engine::Vllm, page, NOW_MS).unwrap();
    assert!(parsed.missing.is_empty(), "fixture lacks {:?}", parsed.missing);
    let mut group = c.benchmark_group("metrics_parse");
    group.throughput(Throughput::Bytes(page.len() as u64));
    group.bench_function("vllm_v0_11", |b| {
        b.iter(|| black_box(parse_metrics(Engine::Vllm, black_box(page), NOW_MS)))
    });
    group.finish();
}

/// `EndpointPicker::pick` as the overhead benchmark's picker runs it in Envoy (`test-harness/benchmarks`):
/// the same configuration (no scheduling configuration: the default, `DEFAULT_SCHEDULING`; and, for
/// comparison, GIE's default profile as `gie_` rows), 64 endpoints reporting what its nginx backend
/// serves (waiting 0, running 3, KV 25 %, 16-token blocks), and the same two-message chat body every
/// time, so the prefix index is warm and every decision goes to the endpoint holding the prompt.
fn pick_as_in_envoy(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_same_body");
    let addresses: Vec<String> = (0..64).map(|i| format!("127.0.0.1:{}", 20_000 + i)).collect();
    let listed: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    let config = format!(
        "{{\"pool\":{{\"name\":\"bench\",\"endpoints\":[{}]}},\"collector\":{{\"intervalMs\":1000,\"timeoutMs\":500}}}}",
        listed.join(",")
    );
    let endpoints = addresses
        .iter()
        .map(|a| {
            let mut state = EndpointState::new(Endpoint::new(a.as_str()));
            state.metrics = Some(Metrics {
                waiting: 0,
                running: 3,
                kv_usage: 0.25,
                running_loras: Vec::new(),
                waiting_loras: Vec::new(),
                max_lora: None,
                block_size: Some(16),
                num_gpu_blocks: Some(8192),
                updated_at_ms: NOW_MS,
            });
            state
        })
        .collect();
    let mut snapshot = PoolSnapshot {
        generation: 1,
        published_at_ms: NOW_MS,
        pool: String::from("bench"),
        endpoints,
        ..PoolSnapshot::default()
    };
    snapshot.sort();
    let info = RequestInfo { path: CHAT, request_id: "bench", ..RequestInfo::default() };
    // GIE's default profile spelled out, beside the same pool (the file users merge).
    let gie: serde_json::Value =
        serde_json::from_str(include_str!("../../envoy-config/scheduling/gie-default.json")).unwrap();
    let mut with_gie: serde_json::Value = serde_json::from_str(&config).unwrap();
    for key in ["plugins", "schedulingProfiles"] {
        with_gie[key] = gie[key].clone();
    }
    let gie_config = with_gie.to_string();
    for (prefix, kib) in [("", 4usize), ("", 220), ("gie_", 4), ("gie_", 220)] {
        let config = if prefix.is_empty() { &config } else { &gie_config };
        let mut picker = EndpointPicker::from_json(config).unwrap();
        let mut rng = Rng::new(5);
        let body = two_message_chat_body(&mut rng, kib * 1024);
        let mut seed = 0u64;
        let mut pick = |picker: &mut EndpointPicker| {
            seed += 1;
            picker.decide(&info, Some(body.as_bytes()), PoolView::Fresh(&snapshot), NOW_MS, seed)
        };
        for _ in 0..16 {
            assert!(matches!(pick(&mut picker), Outcome::Route(_)));
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new(format!("{prefix}endpoints_64"), format!("{kib}KiB")), |b| {
            b.iter(|| black_box(pick(&mut picker)))
        });
        // In a proxy the picker runs between the proxy's own work on other requests, which evicts
        // its code and data from the CPU caches: the same decision after 4 MiB of other writes.
        let mut other = vec![0u8; 4 << 20];
        group.bench_function(
            BenchmarkId::new(format!("{prefix}endpoints_64_cold"), format!("{kib}KiB")),
            |b| {
                b.iter_batched(
                    || {
                        for line in other.chunks_mut(64) {
                            line[0] = line[0].wrapping_add(1);
                        }
                    },
                    |()| black_box(pick(&mut picker)),
                    criterion::BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

fn config() -> Criterion {
    // Short by default so the whole suite takes a few minutes; command-line flags still override.
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decision_time, decision_breakdown, pick_as_in_envoy, parse_and_hash, snapshot_codec, metrics_parse
}
criterion_main!(benches);
