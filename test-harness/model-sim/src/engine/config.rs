//! Engine configuration and the two calibrated step-time profiles (see model-servers.md).

use std::fmt;

/// What one engine step schedules; the step-time models read only this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepShape {
    /// Uncached prompt (or recompute) tokens computed in the step.
    pub prefill_tokens: u32,
    /// Sequences producing their next token from a single new token.
    pub decode_seqs: u32,
    /// Total context (already computed + new) of every sequence in the step.
    pub context_tokens: u64,
    /// The part of `context_tokens` that belongs to decoding sequences.
    pub decode_context_tokens: u64,
}

impl StepShape {
    /// Tokens scheduled in the step: one per decode plus the prefill tokens.
    pub fn scheduled_tokens(&self) -> u64 {
        u64::from(self.prefill_tokens) + u64::from(self.decode_seqs)
    }
}

/// How long a step takes.
#[derive(Clone, Debug, PartialEq)]
pub enum StepModel {
    /// `base + per_token · max(0, N − free_tokens) + per_context · K` milliseconds, the Llama-3.1-8B /
    /// H100 / vLLM 0.11 fit (N scheduled tokens, K total context).
    Linear { base_ms: f64, per_token_ms: f64, free_tokens: u32, per_context_ms: f64 },
    /// Separate prefill and decode costs, the Llama-2-7B / A100-40GB calibration: prefill runs in batches of
    /// at most `prefill_batch_tokens`, each `max(prefill_floor_s, prefill_base_s + prefill_per_token_s · T)`;
    /// a step with decodes adds `decode_base_s + decode_per_seq_s · seqs + decode_per_kv_token_s · KV`.
    PrefillDecode {
        prefill_floor_s: f64,
        prefill_base_s: f64,
        prefill_per_token_s: f64,
        prefill_batch_tokens: u32,
        decode_base_s: f64,
        decode_per_seq_s: f64,
        decode_per_kv_token_s: f64,
    },
}

impl StepModel {
    pub fn h100_llama3_8b() -> StepModel {
        StepModel::Linear { base_ms: 7.9, per_token_ms: 0.0265, free_tokens: 100, per_context_ms: 0.00006 }
    }

    pub fn a100_llama2_7b() -> StepModel {
        StepModel::PrefillDecode {
            prefill_floor_s: 0.04,
            prefill_base_s: 0.01969,
            prefill_per_token_s: 6.77e-5,
            prefill_batch_tokens: 512,
            decode_base_s: 0.014,
            decode_per_seq_s: 1.03e-4,
            decode_per_kv_token_s: 5.35e-7,
        }
    }

    /// Step duration in milliseconds.
    pub fn step_ms(&self, shape: &StepShape) -> f64 {
        match *self {
            StepModel::Linear { base_ms, per_token_ms, free_tokens, per_context_ms } => {
                let over = shape.scheduled_tokens().saturating_sub(u64::from(free_tokens));
                base_ms + per_token_ms * over as f64 + per_context_ms * shape.context_tokens as f64
            }
            StepModel::PrefillDecode {
                prefill_floor_s,
                prefill_base_s,
                prefill_per_token_s,
                prefill_batch_tokens,
                decode_base_s,
                decode_per_seq_s,
                decode_per_kv_token_s,
            } => {
                let mut seconds = 0.0;
                let batch = prefill_batch_tokens.max(1);
                let mut left = shape.prefill_tokens;
                while left > 0 {
                    let t = left.min(batch);
                    seconds += prefill_floor_s.max(prefill_base_s + prefill_per_token_s * f64::from(t));
                    left -= t;
                }
                if shape.decode_seqs > 0 {
                    seconds += decode_base_s
                        + decode_per_seq_s * f64::from(shape.decode_seqs)
                        + decode_per_kv_token_s * shape.decode_context_tokens as f64;
                }
                seconds * 1000.0
            }
        }
    }
}

/// One replica's shape and timing. Times are microseconds of virtual time.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Token budget of one step (prefill chunks + one token per decode).
    pub max_num_batched_tokens: u32,
    /// At most this many sequences running.
    pub max_num_seqs: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// KV blocks on the device.
    pub num_gpu_blocks: u32,
    pub enable_prefix_caching: bool,
    /// LoRA adapters that may be resident (have running requests) at once.
    pub max_lora: u32,
    /// KV tokens each resident adapter takes away (0 = free).
    pub lora_kv_tokens: u32,
    pub step_model: StepModel,
    /// API server work per request (parsing, tokenisation, HTTP), paid before the engine sees it, so it
    /// lands in TTFT and end-to-end latency but not in `num_requests_waiting`.
    pub api_overhead_us: u64,
    /// Relative step-time noise, uniform in ±`step_jitter` (0 = none).
    pub step_jitter: f64,
    /// How fast this replica runs relative to the calibration: every step takes `1 / speed` times the
    /// step model's time (0.5 = a replica at half speed, whose steps take twice as long). 1 = calibrated.
    pub speed: f64,
    pub seed: u64,
    /// Emit an [`super::EventKind::Token`] for every generated token after the first; a benchmark that
    /// needs only TTFT and end-to-end latency turns this off to save work.
    pub emit_token_events: bool,
}

impl EngineConfig {
    /// Llama-3.1-8B on one H100-80GB, vLLM 0.11 defaults.
    pub fn h100_llama3_8b() -> EngineConfig {
        EngineConfig {
            max_num_batched_tokens: 8192,
            max_num_seqs: 1024,
            block_size: 16,
            // ≈440k tokens of KV at gpu-memory-utilization 0.9.
            num_gpu_blocks: 27_500,
            enable_prefix_caching: true,
            max_lora: 1,
            lora_kv_tokens: 0,
            step_model: StepModel::h100_llama3_8b(),
            api_overhead_us: 20_000,
            step_jitter: 0.0,
            speed: 1.0,
            seed: 0,
            emit_token_events: true,
        }
    }

    /// Llama-2-7B on one A100-40GB (GIE's former simulator).
    pub fn a100_llama2_7b() -> EngineConfig {
        EngineConfig {
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            block_size: 16,
            num_gpu_blocks: 2810,
            enable_prefix_caching: true,
            max_lora: 1,
            lora_kv_tokens: 1600,
            step_model: StepModel::a100_llama2_7b(),
            api_overhead_us: 20_000,
            step_jitter: 0.0,
            speed: 1.0,
            seed: 0,
            emit_token_events: true,
        }
    }

    /// KV blocks one resident adapter reserves.
    pub fn lora_blocks(&self) -> u32 {
        self.lora_kv_tokens.div_ceil(self.block_size.max(1))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, field: &'static str, expected: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError { field, expected })
            }
        };
        check(self.max_num_batched_tokens > 0, "max_num_batched_tokens", "at least 1")?;
        check(self.max_num_seqs > 0, "max_num_seqs", "at least 1")?;
        check(self.block_size > 0, "block_size", "at least 1")?;
        check(self.num_gpu_blocks > 0, "num_gpu_blocks", "at least 1")?;
        check(
            u64::from(self.max_lora) * u64::from(self.lora_blocks()) < u64::from(self.num_gpu_blocks),
            "lora_kv_tokens",
            "max_lora resident adapters to leave some KV blocks for requests",
        )?;
        check((0.0..1.0).contains(&self.step_jitter), "step_jitter", "a fraction in [0, 1)")?;
        check(self.speed.is_finite() && self.speed > 0.0, "speed", "a positive finite number")?;
        Ok(())
    }
}

/// A configuration the engine cannot run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: &'static str,
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "engine config: `{}` must be {}", self.field, self.expected)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h100_worked_examples() {
        let m = StepModel::h100_llama3_8b();
        // Idle prefill of 204 tokens: 7.9 + 0.0265·104 + 0.00006·204 = 10.66824 ms.
        let prefill = StepShape { prefill_tokens: 204, context_tokens: 204, ..StepShape::default() };
        assert!((m.step_ms(&prefill) - 10.66824).abs() < 1e-9);
        // 8192-token chunk: 7.9 + 0.0265·8092 + 0.00006·8192 ≈ 222.8 ms → ≈ 37k prefill tokens/s.
        let chunk = StepShape { prefill_tokens: 8192, context_tokens: 8192, ..StepShape::default() };
        let ms = m.step_ms(&chunk);
        assert!((ms - 222.82952).abs() < 1e-9, "{ms}");
        assert!((8192.0 / ms * 1000.0 - 36_764.0).abs() < 10.0);
        // Batch-1 decode at 1000 tokens of context: 7.96 ms per token.
        let decode = StepShape {
            decode_seqs: 1,
            context_tokens: 1000,
            decode_context_tokens: 1000,
            ..StepShape::default()
        };
        assert!((m.step_ms(&decode) - 7.96).abs() < 1e-9);
    }

    #[test]
    fn a100_worked_examples() {
        let m = StepModel::a100_llama2_7b();
        // 200 prefill tokens: 0.01969 + 6.77e-5·200 = 0.03323 s < floor 0.04 s.
        let small = StepShape { prefill_tokens: 200, context_tokens: 200, ..StepShape::default() };
        assert!((m.step_ms(&small) - 40.0).abs() < 1e-9);
        // 1024 tokens run as two 512-token batches of 0.01969 + 0.0346624 = 0.0543524 s each.
        let big = StepShape { prefill_tokens: 1024, context_tokens: 1024, ..StepShape::default() };
        assert!((m.step_ms(&big) - 108.7048).abs() < 1e-6);
        // 10 decodes over 5000 KV tokens: 0.014 + 0.00103 + 0.002675 = 17.705 ms.
        let decode = StepShape {
            decode_seqs: 10,
            context_tokens: 5000,
            decode_context_tokens: 5000,
            ..StepShape::default()
        };
        assert!((m.step_ms(&decode) - 17.705).abs() < 1e-9);
    }

    #[test]
    fn presets_are_valid_and_bad_fields_are_named() {
        assert!(EngineConfig::h100_llama3_8b().validate().is_ok());
        assert!(EngineConfig::a100_llama2_7b().validate().is_ok());
        assert_eq!(EngineConfig::a100_llama2_7b().lora_blocks(), 100);
        let cfg = EngineConfig { max_num_seqs: 0, ..EngineConfig::h100_llama3_8b() };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.to_string(), "engine config: `max_num_seqs` must be at least 1");
        for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = EngineConfig { speed, ..EngineConfig::h100_llama3_8b() }.validate().unwrap_err();
            assert_eq!(err.field, "speed");
        }
    }
}
