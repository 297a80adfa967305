//! The workloads of model-servers.md as seeded arrival traces: generated once per (workload, QPS, seed)
//! and replayed unchanged for every policy, so policies differ only in where requests went.
//!
//! A prompt is a list of text pieces named by seed; the text itself is produced on demand (a 7200-token
//! prompt is 29 KB, and 10k of them need not sit in memory at once).

use scheduler_core::rng::Rng;

/// Bytes per token of the stand-in tokenizer (model-sim and the gateway agree on 4).
pub const BYTES_PER_TOKEN: usize = 4;

/// A run of synthetic text: `tokens × 4` bytes determined by `seed`. Equal seeds give equal text, so two
/// prompts that start with the same pieces share a prefix (and the KV blocks inside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub seed: u64,
    pub tokens: u32,
}

/// One request of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Position in the trace; also the request id.
    pub id: u64,
    pub at_us: u64,
    pub pieces: Vec<Piece>,
    /// Tokens the server generates (also sent as `max_tokens`, as benchmark clients do).
    pub output_tokens: u32,
    /// LoRA adapter, `None` for the base model.
    pub lora: Option<u32>,
    /// Priority band and tenant (the overload suite's workloads; `None`: no objective, no fairness id).
    pub class: Option<crate::overload::Class>,
}

impl Arrival {
    pub fn prompt_tokens(&self) -> u32 {
        self.pieces.iter().map(|p| p.tokens).sum()
    }

    /// The prompt text (lower-case letters and spaces, so it needs no JSON escaping).
    pub fn prompt_text(&self) -> String {
        let mut s = String::with_capacity(self.prompt_tokens() as usize * BYTES_PER_TOKEN);
        for p in &self.pieces {
            push_text(&mut s, p.seed, p.tokens as usize * BYTES_PER_TOKEN);
        }
        s
    }

    /// The model name the client asks for: the adapter's name for LoRA requests.
    pub fn model(&self) -> String {
        match self.lora {
            Some(a) => lora_name(a),
            None => String::from(BASE_MODEL),
        }
    }
}

pub const BASE_MODEL: &str = "llama-3.1-8b";

pub fn lora_name(adapter: u32) -> String {
    format!("adapter-{adapter}")
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz  eaio";

fn push_text(out: &mut String, seed: u64, bytes: usize) {
    let mut rng = Rng::new(seed ^ 0x7465_7874_7365_6564);
    let mut left = bytes;
    while left > 0 {
        let word = rng.next_u64();
        for k in 0..8.min(left) {
            let c = ALPHABET.get(((word >> (k * 8)) & 31) as usize).copied().unwrap_or(b'a');
            out.push(char::from(c));
        }
        left = left.saturating_sub(8);
    }
}

/// The workload families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    ShareGpt,
    SharedPrefix,
    MultiTurn,
    MultiLora,
    Bursty,
    /// A replayed JSONL trace (`trace`): not generated here, and not among the default workloads.
    Trace,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::ShareGpt,
        WorkloadKind::SharedPrefix,
        WorkloadKind::MultiTurn,
        WorkloadKind::MultiLora,
        WorkloadKind::Bursty,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::ShareGpt => "sharegpt",
            WorkloadKind::SharedPrefix => "shared-prefix",
            WorkloadKind::MultiTurn => "multi-turn",
            WorkloadKind::MultiLora => "multi-lora",
            WorkloadKind::Bursty => "bursty",
            WorkloadKind::Trace => "trace",
        }
    }

    pub fn parse(s: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL.into_iter().chain([WorkloadKind::Trace]).find(|w| w.name() == s)
    }
}

/// Shape parameters of the shared-prefix workload (llm-d's 150 × 5, 6000 + 1200 → 1000, with the group
/// count scaled to the simulated cluster).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SharedPrefixShape {
    pub groups: u32,
    pub prompts_per_group: u32,
    pub system_tokens: u32,
    pub question_tokens: u32,
    pub output_tokens: u32,
}

impl SharedPrefixShape {
    /// Group count so that the distinct system prompts fill `fraction` of the cluster's KV cache
    /// (llm-d sized its 150 groups to ~73 % of its cluster).
    pub fn scaled(cluster_kv_tokens: u64, fraction: f64) -> SharedPrefixShape {
        let system_tokens = 6000u32;
        let groups = ((cluster_kv_tokens as f64 * fraction) / f64::from(system_tokens)).round().max(1.0);
        SharedPrefixShape {
            groups: groups as u32,
            prompts_per_group: 5,
            system_tokens,
            question_tokens: 1200,
            output_tokens: 1000,
        }
    }
}

/// Everything needed to generate one trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceSpec {
    pub kind: WorkloadKind,
    /// Mean arrival rate, requests per second.
    pub qps: f64,
    pub requests: usize,
    pub seed: u64,
    pub shared_prefix: SharedPrefixShape,
}

/// Multi-turn chat: turns per session, and the gap between a session's turns (a user reading and typing).
pub const TURNS_PER_SESSION: u32 = 5;
const TURN_GAP_MEAN_S: f64 = 15.0;
const CHAT_SYSTEM_GROUPS: u64 = 6;

/// LoRA traffic shares (GIE): five adapters at 12 %, five at 6 %, five at 2 %.
pub fn lora_weights() -> [f64; 15] {
    let mut w = [0.0; 15];
    for (i, slot) in w.iter_mut().enumerate() {
        *slot = match i / 5 {
            0 => 0.12,
            1 => 0.06,
            _ => 0.02,
        };
    }
    w
}

/// Bursty arrivals: in every 5 s cycle, 1 s at 3× the mean rate then 4 s at half of it (mean 1×).
const BURST_CYCLE_S: f64 = 5.0;
const BURST_ON_S: f64 = 1.0;
const BURST_HIGH: f64 = 3.0;
const BURST_LOW: f64 = 0.5;

/// The trace of a generated workload (empty for [`WorkloadKind::Trace`]: see `trace::arrivals`).
pub fn generate(spec: &TraceSpec) -> Vec<Arrival> {
    if spec.kind == WorkloadKind::Trace {
        return Vec::new();
    }
    let mut rng = Rng::new(spec.seed ^ (spec.kind as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = match spec.kind {
        WorkloadKind::MultiTurn => multi_turn(spec, &mut rng),
        _ => {
            let times = match spec.kind {
                WorkloadKind::Bursty => bursty_times(spec.qps, spec.requests, &mut rng),
                _ => poisson_times(spec.qps, spec.requests, &mut rng),
            };
            times
                .into_iter()
                .enumerate()
                .map(|(i, at_us)| single_turn(spec, i as u64, at_us, &mut rng))
                .collect()
        }
    };
    out.sort_by_key(|a| (a.at_us, a.id));
    out.truncate(spec.requests);
    for (i, a) in out.iter_mut().enumerate() {
        a.id = i as u64;
    }
    out
}

fn exp_s(rng: &mut Rng, rate: f64) -> f64 {
    -(1.0 - rng.next_f64()).ln() / rate
}

fn normal(rng: &mut Rng) -> f64 {
    // Box–Muller; one draw per call keeps the stream simple.
    let u1 = (1.0 - rng.next_f64()).max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Lognormal with the given mean and log-space sigma, rounded and clipped to `[lo, hi]`.
fn lognormal(rng: &mut Rng, mean: f64, sigma: f64, lo: u32, hi: u32) -> u32 {
    let mu = mean.ln() - sigma * sigma / 2.0;
    let v = (mu + sigma * normal(rng)).exp().round();
    (v as u32).clamp(lo, hi)
}

fn gaussian_tokens(rng: &mut Rng, mean: f64, sd: f64, lo: u32) -> u32 {
    ((mean + sd * normal(rng)).round().max(f64::from(lo))) as u32
}

fn poisson_times(qps: f64, n: usize, rng: &mut Rng) -> Vec<u64> {
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += exp_s(rng, qps);
            (t * 1e6) as u64
        })
        .collect()
}

/// A Poisson process whose rate follows the burst cycle (thinning of a process at the peak rate).
fn bursty_times(qps: f64, n: usize, rng: &mut Rng) -> Vec<u64> {
    let peak = qps * BURST_HIGH;
    let mut t = 0.0;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        t += exp_s(rng, peak);
        let rate = if t % BURST_CYCLE_S < BURST_ON_S { BURST_HIGH } else { BURST_LOW };
        if rng.next_f64() < rate / BURST_HIGH {
            out.push((t * 1e6) as u64);
        }
    }
    out
}

/// ShareGPT-like lengths: prompt mean ≈ 225 tokens, output mean ≈ 190 (lognormal, clipped as the
/// benchmark filters do: ≤ 1024 / ≤ 2048).
fn sharegpt_lengths(rng: &mut Rng) -> (u32, u32) {
    (lognormal(rng, 225.0, 0.9, 4, 1024), lognormal(rng, 190.0, 0.9, 1, 2048))
}

fn single_turn(spec: &TraceSpec, i: u64, at_us: u64, rng: &mut Rng) -> Arrival {
    let unique = |salt: u64| spec.seed.wrapping_mul(0x1000_0000_01b3) ^ (i << 8) ^ salt;
    let (pieces, output_tokens, lora) = match spec.kind {
        WorkloadKind::SharedPrefix => {
            let s = &spec.shared_prefix;
            let group = rng.below(s.groups as usize) as u64;
            let prompt = rng.below(s.prompts_per_group as usize) as u64;
            let pieces = vec![
                Piece { seed: (1 << 40) | group, tokens: s.system_tokens },
                Piece { seed: (2 << 40) | (group << 8) | prompt, tokens: s.question_tokens },
            ];
            (pieces, s.output_tokens, None)
        }
        WorkloadKind::MultiLora => {
            let (p, o) = sharegpt_lengths(rng);
            let weights = lora_weights();
            let mut u = rng.next_f64() * weights.iter().sum::<f64>();
            let mut adapter = weights.len() as u32 - 1;
            for (k, w) in weights.iter().enumerate() {
                if u < *w {
                    adapter = k as u32;
                    break;
                }
                u -= w;
            }
            (vec![Piece { seed: unique(1), tokens: p }], o, Some(adapter))
        }
        _ => {
            let (p, o) = sharegpt_lengths(rng);
            (vec![Piece { seed: unique(1), tokens: p }], o, None)
        }
    };
    Arrival { id: i, at_us, pieces, output_tokens, lora, class: None }
}

/// Multi-turn chat (GIE's shape, lengths scaled down so a full ladder runs in minutes): sessions start
/// as a Poisson process; each has one of 6 shared 1000-token system prompts and 5 turns whose questions
/// are N(120, 36) tokens and answers N(250, 75); every turn's prompt repeats the whole history. Turns
/// are spaced by the user's think time (from the previous turn's arrival, so the trace does not depend
/// on how fast a policy served the previous turn).
fn multi_turn(spec: &TraceSpec, rng: &mut Rng) -> Vec<Arrival> {
    let session_rate = spec.qps / f64::from(TURNS_PER_SESSION);
    let sessions = spec.requests.div_ceil(TURNS_PER_SESSION as usize);
    let mut out = Vec::with_capacity(sessions * TURNS_PER_SESSION as usize);
    let mut start = 0.0;
    for s in 0..sessions as u64 {
        start += exp_s(rng, session_rate);
        let sys = rng.below(CHAT_SYSTEM_GROUPS as usize) as u64;
        let mut history = vec![Piece { seed: (3 << 40) | sys, tokens: 1000 }];
        let mut t = start;
        for turn in 0..u64::from(TURNS_PER_SESSION) {
            let session_key = spec.seed.wrapping_mul(0x1000_0000_01b3) ^ (s << 16) ^ (turn << 2);
            history
                .push(Piece { seed: (4 << 56) ^ session_key, tokens: gaussian_tokens(rng, 120.0, 36.0, 4) });
            let output_tokens = gaussian_tokens(rng, 250.0, 75.0, 8);
            out.push(Arrival {
                id: 0,
                at_us: (t * 1e6) as u64,
                pieces: history.clone(),
                output_tokens,
                lora: None,
                class: None,
            });
            // The answer becomes part of the next prompt.
            history.push(Piece { seed: (5 << 56) ^ session_key, tokens: output_tokens });
            t += 2.0 + exp_s(rng, 1.0 / TURN_GAP_MEAN_S);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: WorkloadKind) -> TraceSpec {
        TraceSpec {
            kind,
            qps: 20.0,
            requests: 2000,
            seed: 7,
            shared_prefix: SharedPrefixShape::scaled(8 * 440_000, 0.7),
        }
    }

    #[test]
    fn traces_are_reproducible_and_seed_dependent() {
        for kind in WorkloadKind::ALL {
            let a = generate(&spec(kind));
            assert_eq!(a, generate(&spec(kind)), "{kind:?}");
            let other = generate(&TraceSpec { seed: 8, ..spec(kind) });
            assert_ne!(a, other, "{kind:?}");
            assert!(a.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        }
    }

    #[test]
    fn sharegpt_lengths_and_rate_match_the_reference_shape() {
        let t = generate(&spec(WorkloadKind::ShareGpt));
        let n = t.len() as f64;
        let prompt = t.iter().map(|a| f64::from(a.prompt_tokens())).sum::<f64>() / n;
        let output = t.iter().map(|a| f64::from(a.output_tokens)).sum::<f64>() / n;
        assert!((190.0..260.0).contains(&prompt), "mean prompt {prompt}");
        assert!((160.0..215.0).contains(&output), "mean output {output}");
        let rate = n / (t.last().map_or(0, |a| a.at_us) as f64 / 1e6);
        assert!((18.0..22.0).contains(&rate), "rate {rate}");
    }

    #[test]
    fn shared_prefix_groups_fill_the_requested_share_of_kv() {
        // 8 × 440k tokens × 0.7 / 6000 = 410.7 → 411 groups.
        assert_eq!(SharedPrefixShape::scaled(8 * 440_000, 0.7).groups, 411);
        let t = generate(&spec(WorkloadKind::SharedPrefix));
        let same_group: Vec<&Arrival> = t.iter().filter(|a| a.pieces[0] == t[0].pieces[0]).collect();
        assert!(same_group.len() > 1);
        let (x, y) = (same_group[0].prompt_text(), same_group[1].prompt_text());
        assert_eq!(x[..24_000], y[..24_000], "the 6000-token system prompt is shared");
        assert_eq!(x.len(), 7200 * 4);
    }

    #[test]
    fn multi_turn_history_grows_and_lora_shares_follow_the_weights() {
        let t = generate(&spec(WorkloadKind::MultiTurn));
        let longest = t.iter().map(|a| a.pieces.len()).max();
        assert_eq!(longest, Some(1 + 2 * TURNS_PER_SESSION as usize - 1));
        let l = generate(&TraceSpec { requests: 20_000, ..spec(WorkloadKind::MultiLora) });
        let share = |k| l.iter().filter(|a| a.lora == Some(k)).count() as f64 / l.len() as f64;
        assert!((share(0) - 0.12).abs() < 0.015 && (share(14) - 0.02).abs() < 0.006);
    }

    #[test]
    fn bursts_triple_the_rate_for_one_second_in_five() {
        let t = generate(&TraceSpec { requests: 20_000, ..spec(WorkloadKind::Bursty) });
        let on = t.iter().filter(|a| (a.at_us as f64 / 1e6) % 5.0 < 1.0).count() as f64;
        // Expected share inside bursts: 3 / (3 + 4 × 0.5) = 0.6.
        assert!((on / t.len() as f64 - 0.6).abs() < 0.02);
    }
}
