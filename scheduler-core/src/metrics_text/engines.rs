//! Maps each engine's `/metrics` page onto the engine-neutral [`Metrics`] the scheduler reads.
//! Names follow the GIE model-server protocol; one table per engine, so a new engine is a data change.
//!
//! Aggregation when a gauge has several series (per `model_name`, per data-parallel `engine`, per rank):
//! - waiting / running are **summed**: the pod's queue is the sum of its engines' queues.
//! - KV use takes the **maximum**: a request can land on the fullest engine, and the saturation detector
//!   must not be told a pod has room because an idle sibling engine pulls the average down.
//! - cache config (block size, block count) comes from the first series that carries a readable value.
//! - `vllm:lora_requests_info`: the series with the largest value (its last-update timestamp) wins.
//!
//! Invalid values: a NaN, infinite or negative waiting/running count, or a NaN KV use, fails the scrape
//! with [`MetricsError::InvalidValue`] (the server is misreporting; routing on a made-up number would be a
//! silent wrong route, while a failed scrape lets the old metrics age into "stale"). KV use outside [0, 1]
//! (including ±Inf) is clamped. Fractional counts are rounded; counts above `u32::MAX` saturate.

use super::prometheus::{samples_from_bytes, Labels, ParseStats, Sample, Samples};
use crate::model::{Engine, Metrics};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The result of one successful scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedMetrics {
    /// `updated_at_ms` is the `now_ms` passed in.
    pub metrics: Metrics,
    /// Lines seen, samples, comments, and malformed lines skipped (with the first one's line number).
    pub stats: ParseStats,
    /// Core gauges absent from this scrape (their field was left at 0), by the names the engine uses.
    /// Non-empty means an unusual server version; worth a counter, not a failed scrape.
    pub missing: Vec<&'static str>,
}

/// Why a scrape could not be turned into metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricsError {
    /// None of the engine's waiting / running / KV gauges appeared: wrong engine type, wrong port, an HTML
    /// error page, or garbage.
    NoCoreGauges { engine: Engine, expected: &'static [&'static str], stats: ParseStats },
    /// A core gauge carried a value no working server reports.
    InvalidValue { metric: &'static str, line: usize, value: f64, expected: &'static str },
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsError::NoCoreGauges { engine, expected, stats } => {
                write!(
                    f,
                    "no {} metrics in the scrape ({} lines, {} samples, {} malformed",
                    engine.as_str(),
                    stats.lines,
                    stats.samples,
                    stats.malformed
                )?;
                if let Some((line, reason)) = stats.first_malformed {
                    write!(f, "; line {line}: {reason}")?;
                }
                write!(f, "): expected at least one of ")?;
                for (i, name) in expected.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(name)?;
                }
                Ok(())
            }
            MetricsError::InvalidValue { metric, line, value, expected } => {
                write!(f, "{metric} on line {line} is {value}: expected {expected}")
            }
        }
    }
}

/// Parses a model server's Prometheus text into [`Metrics`] stamped with `now_ms`.
pub fn parse_metrics(engine: Engine, text: &str, now_ms: u64) -> Result<ParsedMetrics, MetricsError> {
    parse_metrics_bytes(engine, text.as_bytes(), now_ms)
}

/// Like [`parse_metrics`] for a raw HTTP body; lines that are not UTF-8 are skipped and counted.
pub fn parse_metrics_bytes(engine: Engine, body: &[u8], now_ms: u64) -> Result<ParsedMetrics, MetricsError> {
    let mapping = Mapping::of(engine);
    let mut samples = samples_from_bytes(body);
    let mut acc = Accumulator::default();
    while let Some(sample) = samples.next() {
        acc.add(mapping, &sample, samples.stats().lines)?;
    }
    acc.finish(engine, mapping, &samples, now_ms)
}

/// One gauge series selector: a metric name, optionally narrowed by one label value.
#[derive(Clone, Copy, Debug)]
struct Gauge {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
    /// How the gauge is written in messages.
    display: &'static str,
}

impl Gauge {
    const fn named(name: &'static str) -> Gauge {
        Gauge { name, label: None, display: name }
    }

    fn matches(&self, sample: &Sample<'_>) -> bool {
        sample.name == self.name
            && match self.label {
                None => true,
                Some((key, value)) => sample.labels.get(key).as_deref() == Some(value),
            }
    }
}

#[derive(Clone, Copy, Debug)]
enum CacheConfig {
    /// An info gauge whose labels carry the numbers.
    InfoLabels { name: &'static str, block_size: &'static str, num_blocks: &'static str },
    /// Two gauges whose values are the numbers.
    Gauges { block_size: Gauge, num_blocks: Gauge },
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    waiting: Gauge,
    running: Gauge,
    /// KV-use gauges in order of preference (newest name first).
    kv: &'static [Gauge],
    /// Used-blocks gauge: KV use = used / num_blocks when no `kv` gauge is present (older Triton).
    kv_used_blocks: Option<Gauge>,
    cache: CacheConfig,
    lora: Option<&'static str>,
    /// For the "nothing found" message.
    expected: &'static [&'static str],
}

const VLLM: Mapping = Mapping {
    waiting: Gauge::named("vllm:num_requests_waiting"),
    running: Gauge::named("vllm:num_requests_running"),
    kv: &[Gauge::named("vllm:kv_cache_usage_perc"), Gauge::named("vllm:gpu_cache_usage_perc")],
    kv_used_blocks: None,
    cache: CacheConfig::InfoLabels {
        name: "vllm:cache_config_info",
        block_size: "block_size",
        num_blocks: "num_gpu_blocks",
    },
    lora: Some("vllm:lora_requests_info"),
    expected: &[
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    ],
};

const SGLANG: Mapping = Mapping {
    waiting: Gauge::named("sglang:num_queue_reqs"),
    running: Gauge::named("sglang:num_running_reqs"),
    kv: &[Gauge::named("sglang:token_usage")],
    kv_used_blocks: None,
    cache: CacheConfig::InfoLabels {
        name: "sglang:cache_config_info",
        block_size: "page_size",
        num_blocks: "num_pages",
    },
    lora: None,
    expected: &["sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage"],
};

const TRTLLM_SERVE: Mapping = Mapping {
    waiting: Gauge::named("trtllm_num_requests_waiting"),
    running: Gauge::named("trtllm_num_requests_running"),
    kv: &[Gauge::named("trtllm_kv_cache_utilization")],
    kv_used_blocks: None,
    cache: CacheConfig::Gauges {
        block_size: Gauge::named("trtllm_kv_cache_tokens_per_block"),
        num_blocks: Gauge::named("trtllm_kv_cache_max_blocks"),
    },
    lora: None,
    expected: &["trtllm_num_requests_waiting", "trtllm_num_requests_running", "trtllm_kv_cache_utilization"],
};

const TRITON_REQUESTS: &str = "nv_trt_llm_request_metrics";
const TRITON_KV: &str = "nv_trt_llm_kv_cache_block_metrics";

const fn triton_kv(kind: &'static str, display: &'static str) -> Gauge {
    Gauge { name: TRITON_KV, label: Some(("kv_cache_block_type", kind)), display }
}

const TRITON: Mapping = Mapping {
    waiting: Gauge {
        name: TRITON_REQUESTS,
        label: Some(("request_type", "waiting")),
        display: "nv_trt_llm_request_metrics{request_type=\"waiting\"}",
    },
    running: Gauge {
        name: TRITON_REQUESTS,
        label: Some(("request_type", "scheduled")),
        display: "nv_trt_llm_request_metrics{request_type=\"scheduled\"}",
    },
    kv: &[triton_kv("fraction", "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"}")],
    kv_used_blocks: Some(triton_kv(
        "used",
        "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"used\"}",
    )),
    cache: CacheConfig::Gauges {
        block_size: triton_kv(
            "tokens_per",
            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"tokens_per\"}",
        ),
        num_blocks: triton_kv("max", "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"max\"}"),
    },
    lora: None,
    expected: &[
        "nv_trt_llm_request_metrics{request_type=\"waiting\"}",
        "nv_trt_llm_request_metrics{request_type=\"scheduled\"}",
        "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"}",
        "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"used\"}",
    ],
};

impl Mapping {
    fn of(engine: Engine) -> &'static Mapping {
        match engine {
            Engine::Vllm => &VLLM,
            Engine::Sglang => &SGLANG,
            Engine::TrtllmServe => &TRTLLM_SERVE,
            Engine::Triton => &TRITON,
        }
    }
}

/// Running totals over one scrape; O(1) work per sample.
#[derive(Default)]
struct Accumulator<'a> {
    waiting: Option<f64>,
    running: Option<f64>,
    /// (index into `Mapping::kv`, max value so far): a more preferred name replaces a less preferred one.
    kv: Option<(usize, f64)>,
    kv_used_blocks: Option<f64>,
    block_size: Option<u32>,
    num_blocks: Option<u32>,
    /// (timestamp value, labels) of the newest LoRA series.
    lora: Option<(f64, Labels<'a>)>,
}

impl<'a> Accumulator<'a> {
    fn add(&mut self, m: &Mapping, s: &Sample<'a>, line: usize) -> Result<(), MetricsError> {
        if m.waiting.matches(s) {
            add_count(&mut self.waiting, m.waiting.display, s.value, line)?;
        } else if m.running.matches(s) {
            add_count(&mut self.running, m.running.display, s.value, line)?;
        } else if let Some(rank) = m.kv.iter().position(|g| g.matches(s)) {
            let metric = m.kv.get(rank).map_or("", |g| g.display);
            let value = kv_fraction(metric, s.value, line)?;
            self.kv = match self.kv {
                Some((best, v)) if best == rank => Some((rank, v.max(value))),
                Some((best, v)) if best < rank => Some((best, v)),
                _ => Some((rank, value)),
            };
        } else if m.kv_used_blocks.is_some_and(|g| g.matches(s)) {
            // Only a fallback and only meaningful as a count; ignore nonsense rather than fail.
            if s.value.is_finite() && s.value >= 0.0 {
                self.kv_used_blocks = Some(self.kv_used_blocks.map_or(s.value, |v| v.max(s.value)));
            }
        } else if m.lora.is_some_and(|name| s.name == name) {
            // NaN never compares greater, so a NaN series cannot win.
            if self.lora.is_none_or(|(newest, _)| s.value > newest) && !s.value.is_nan() {
                self.lora = Some((s.value, s.labels));
            }
        } else {
            self.add_cache_config(m.cache, s);
        }
        Ok(())
    }

    fn add_cache_config(&mut self, cache: CacheConfig, s: &Sample<'a>) {
        match cache {
            CacheConfig::InfoLabels { name, block_size, num_blocks } if s.name == name => {
                if self.block_size.is_none() {
                    self.block_size = s.labels.get(block_size).and_then(|v| v.trim().parse().ok());
                }
                if self.num_blocks.is_none() {
                    self.num_blocks = s.labels.get(num_blocks).and_then(|v| v.trim().parse().ok());
                }
            }
            CacheConfig::Gauges { block_size, num_blocks } => {
                if self.block_size.is_none() && block_size.matches(s) {
                    self.block_size = whole_u32(s.value);
                } else if self.num_blocks.is_none() && num_blocks.matches(s) {
                    self.num_blocks = whole_u32(s.value);
                }
            }
            CacheConfig::InfoLabels { .. } => {}
        }
    }

    fn finish(
        self,
        engine: Engine,
        m: &Mapping,
        samples: &Samples<'_>,
        now_ms: u64,
    ) -> Result<ParsedMetrics, MetricsError> {
        let kv = self.kv.map(|(_, v)| v).or_else(|| {
            let used = self.kv_used_blocks?;
            let total = f64::from(self.num_blocks.filter(|n| *n > 0)?);
            Some((used / total).clamp(0.0, 1.0))
        });
        if self.waiting.is_none() && self.running.is_none() && kv.is_none() {
            return Err(MetricsError::NoCoreGauges { engine, expected: m.expected, stats: samples.stats() });
        }
        let mut missing = Vec::new();
        if self.waiting.is_none() {
            missing.push(m.waiting.display);
        }
        if self.running.is_none() {
            missing.push(m.running.display);
        }
        if kv.is_none() {
            missing.push(m.kv.first().map_or("kv", |g| g.display));
        }

        let mut metrics = Metrics {
            waiting: count_u32(self.waiting),
            running: count_u32(self.running),
            kv_usage: kv.unwrap_or(0.0),
            block_size: self.block_size,
            num_gpu_blocks: self.num_blocks,
            updated_at_ms: now_ms,
            ..Metrics::default()
        };
        if let Some((_, labels)) = self.lora {
            metrics.running_loras = adapter_list(&labels, "running_lora_adapters");
            metrics.waiting_loras = adapter_list(&labels, "waiting_lora_adapters");
            metrics.max_lora = labels.get("max_lora").and_then(|v| v.trim().parse().ok());
        }
        Ok(ParsedMetrics { metrics, stats: samples.stats(), missing })
    }
}

fn add_count(
    total: &mut Option<f64>,
    metric: &'static str,
    value: f64,
    line: usize,
) -> Result<(), MetricsError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(MetricsError::InvalidValue { metric, line, value, expected: "a finite count >= 0" });
    }
    *total = Some(total.unwrap_or(0.0) + value);
    Ok(())
}

fn kv_fraction(metric: &'static str, value: f64, line: usize) -> Result<f64, MetricsError> {
    if value.is_nan() {
        return Err(MetricsError::InvalidValue { metric, line, value, expected: "a fraction in [0, 1]" });
    }
    Ok(value.clamp(0.0, 1.0))
}

/// Rounds a validated (finite, non-negative) sum; `as` saturates at `u32::MAX`.
fn count_u32(total: Option<f64>) -> u32 {
    total.map_or(0, |t| (t + 0.5) as u32)
}

/// A gauge value that is a whole number in u32 range, else `None` (config is optional, never fatal).
fn whole_u32(value: f64) -> Option<u32> {
    let fits = value >= 0.0 && value <= f64::from(u32::MAX);
    (fits && value == (value as u32) as f64).then_some(value as u32)
}

fn adapter_list(labels: &Labels<'_>, key: &str) -> Vec<String> {
    labels.get(key).map_or_else(Vec::new, |list| {
        list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    const VLLM_V1: &str = include_str!("../../tests/fixtures/vllm_v0_11.txt");
    const VLLM_LEGACY: &str = include_str!("../../tests/fixtures/vllm_v0_6.txt");
    const SGLANG_FIXTURE: &str = include_str!("../../tests/fixtures/sglang.txt");
    const TRTLLM_FIXTURE: &str = include_str!("../../tests/fixtures/trtllm_serve.txt");
    const TRITON_FIXTURE: &str = include_str!("../../tests/fixtures/triton_trtllm.txt");

    fn parse(engine: Engine, text: &str) -> ParsedMetrics {
        match parse_metrics(engine, text, 1234) {
            Ok(p) => p,
            Err(e) => panic!("{engine:?} fixture should parse: {e}"),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn vllm_current_fixture() {
        let p = parse(Engine::Vllm, VLLM_V1);
        let m = &p.metrics;
        assert_eq!((m.waiting, m.running), (7, 12));
        assert_eq!(m.kv_usage, 0.4375);
        assert_eq!((m.block_size, m.num_gpu_blocks), (Some(16), Some(27_828)));
        assert_eq!(m.max_lora, Some(4));
        // The newest of the two lora_requests_info series, items trimmed, the empty item dropped.
        assert_eq!(m.running_loras, strings(&["sql-lora", "chat-lora"]));
        assert_eq!(m.waiting_loras, strings(&["tldr-lora"]));
        assert_eq!(m.updated_at_ms, 1234);
        assert!(p.missing.is_empty());
        assert_eq!(p.stats.malformed, 0);
        assert!(p.stats.samples > 50, "histograms and counters are read as samples and ignored");
    }

    #[test]
    fn vllm_legacy_kv_name_and_no_lora() {
        let p = parse(Engine::Vllm, VLLM_LEGACY);
        let m = &p.metrics;
        assert_eq!((m.waiting, m.running, m.kv_usage), (2, 5, 0.875));
        assert_eq!((m.block_size, m.num_gpu_blocks), (Some(16), Some(2810)));
        assert_eq!((m.max_lora, m.running_loras.len()), (None, 0));
        assert!(p.missing.is_empty());
    }

    #[test]
    fn vllm_prefers_new_kv_name_whatever_the_order() {
        for text in [
            "vllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.2\n",
            "vllm:kv_cache_usage_perc 0.2\nvllm:gpu_cache_usage_perc 0.9\n",
        ] {
            assert_eq!(parse(Engine::Vllm, text).metrics.kv_usage, 0.2, "{text}");
        }
    }

    #[test]
    fn series_are_summed_for_counts_and_maxed_for_kv() {
        let text = "\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0
vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 4.0
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 10.0
vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.9
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.1
";
        let m = parse(Engine::Vllm, text).metrics;
        // Two data-parallel engines: 7 queued in the pod; one engine is 90 % full, so the pod is.
        assert_eq!((m.waiting, m.running, m.kv_usage), (7, 12, 0.9));
    }

    #[test]
    fn lora_newest_series_wins_regardless_of_order() {
        let older = r#"vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 1.7e9"#;
        let newer = r#"vllm:lora_requests_info{max_lora="3",running_lora_adapters=" a ,, b ,",waiting_lora_adapters="c"} 1.7000001e9"#;
        let nan = r#"vllm:lora_requests_info{max_lora="9",running_lora_adapters="nan",waiting_lora_adapters=""} NaN"#;
        for text in [
            format!("vllm:num_requests_waiting 0\n{older}\n{newer}\n{nan}\n"),
            format!("vllm:num_requests_waiting 0\n{nan}\n{newer}\n{older}\n"),
        ] {
            let m = parse(Engine::Vllm, &text).metrics;
            assert_eq!(m.running_loras, strings(&["a", "b"]));
            assert_eq!(m.waiting_loras, strings(&["c"]));
            assert_eq!(m.max_lora, Some(3));
        }
    }

    #[test]
    fn lora_with_escaped_adapter_names_and_bad_max() {
        let text = r#"vllm:num_requests_running 1
vllm:lora_requests_info{max_lora="many",running_lora_adapters="we\"ird, x}y",waiting_lora_adapters=""} 5
"#;
        let m = parse(Engine::Vllm, text).metrics;
        assert_eq!(m.running_loras, strings(&["we\"ird", "x}y"]));
        assert_eq!(m.max_lora, None);
    }

    #[test]
    fn sglang_fixture() {
        let p = parse(Engine::Sglang, SGLANG_FIXTURE);
        let m = &p.metrics;
        // Two data-parallel ranks, each with its own queue: counts sum, KV use is the fuller rank's.
        assert_eq!((m.waiting, m.running, m.kv_usage), (3, 9, 0.31));
        assert_eq!((m.block_size, m.num_gpu_blocks), (Some(1), Some(431_744)));
        assert!(m.running_loras.is_empty() && m.max_lora.is_none());
        assert!(p.missing.is_empty());
    }

    #[test]
    fn trtllm_serve_fixture() {
        let p = parse(Engine::TrtllmServe, TRTLLM_FIXTURE);
        let m = &p.metrics;
        assert_eq!((m.waiting, m.running, m.kv_usage), (1, 6, 0.125));
        assert_eq!((m.block_size, m.num_gpu_blocks), (Some(32), Some(12_000)));
        assert!(p.missing.is_empty());
    }

    #[test]
    fn triton_fixture() {
        let p = parse(Engine::Triton, TRITON_FIXTURE);
        let m = &p.metrics;
        // request_type="active" / "max" / "context" series must not be counted as running or waiting.
        assert_eq!((m.waiting, m.running, m.kv_usage), (2, 3, 0.4875));
        assert_eq!((m.block_size, m.num_gpu_blocks), (Some(64), Some(6239)));
    }

    #[test]
    fn triton_without_fraction_uses_used_over_max() {
        let text: String = TRITON_FIXTURE
            .lines()
            .filter(|l| !l.contains("\"fraction\""))
            .map(|l| l.to_string() + "\n")
            .collect();
        let m = parse(Engine::Triton, &text).metrics;
        // 1560 used of 6239 blocks.
        assert!((m.kv_usage - 1560.0 / 6239.0).abs() < 1e-12, "{}", m.kv_usage);
    }

    #[test]
    fn every_engine_rejects_the_others_text() {
        let fixtures = [
            (Engine::Vllm, VLLM_V1),
            (Engine::Sglang, SGLANG_FIXTURE),
            (Engine::TrtllmServe, TRTLLM_FIXTURE),
            (Engine::Triton, TRITON_FIXTURE),
        ];
        for (engine, _) in fixtures {
            for (other, text) in fixtures {
                let result = parse_metrics(engine, text, 0);
                assert_eq!(result.is_ok(), engine == other, "{engine:?} reading {other:?}'s page");
            }
        }
    }

    #[test]
    fn kv_is_clamped() {
        let m = parse(Engine::Sglang, "sglang:token_usage 1.5\n").metrics;
        assert_eq!(m.kv_usage, 1.0);
        let m = parse(Engine::Sglang, "sglang:token_usage -0.25\n").metrics;
        assert_eq!(m.kv_usage, 0.0);
        let m = parse(Engine::Sglang, "sglang:token_usage +Inf\n").metrics;
        assert_eq!(m.kv_usage, 1.0);
    }

    #[test]
    fn invalid_counts_and_nan_kv_fail_the_scrape_naming_line_and_metric() {
        let cases = [
            ("vllm:num_requests_waiting -1\n", "vllm:num_requests_waiting on line 1 is -1"),
            ("# c\nvllm:num_requests_running NaN\n", "vllm:num_requests_running on line 2 is NaN"),
            ("vllm:num_requests_running +Inf\n", "is inf: expected a finite count >= 0"),
            (
                "vllm:kv_cache_usage_perc NaN\n",
                "vllm:kv_cache_usage_perc on line 1 is NaN: expected a fraction",
            ),
        ];
        for (text, message) in cases {
            match parse_metrics(Engine::Vllm, text, 0) {
                Err(e @ MetricsError::InvalidValue { .. }) => {
                    let shown = e.to_string();
                    assert!(shown.contains(message), "{shown:?} should contain {message:?}");
                }
                other => panic!("{text:?}: expected InvalidValue, got {other:?}"),
            }
        }
    }

    #[test]
    fn counts_round_and_saturate() {
        let m =
            parse(Engine::Vllm, "vllm:num_requests_waiting 2.6\nvllm:num_requests_running 1e12\n").metrics;
        assert_eq!((m.waiting, m.running), (3, u32::MAX));
    }

    #[test]
    fn partial_scrape_reports_missing_gauges() {
        let p = parse(Engine::Vllm, "vllm:num_requests_running 4\n");
        assert_eq!(p.metrics.running, 4);
        assert_eq!(p.missing, ["vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"]);
    }

    #[test]
    fn malformed_lines_are_skipped_and_counted() {
        let text = "vllm:num_requests_waiting 1\nthis is not prometheus\nvllm:num_requests_running{ 2\n\
                    vllm:kv_cache_usage_perc 0.5\n";
        let p = parse(Engine::Vllm, text);
        assert_eq!((p.metrics.waiting, p.metrics.kv_usage), (1, 0.5));
        assert_eq!(p.stats.malformed, 2);
        assert_eq!(p.stats.first_malformed.map(|(line, _)| line), Some(2));
        assert_eq!(p.missing, ["vllm:num_requests_running"]);
    }

    #[test]
    fn html_page_names_expected_metrics() {
        let html =
            "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body>nope</body></html>\n";
        let err = parse_metrics(Engine::Vllm, html, 0).err();
        let Some(err @ MetricsError::NoCoreGauges { .. }) = err else {
            panic!("expected NoCoreGauges, got {err:?}")
        };
        let shown = err.to_string();
        assert!(
            shown.starts_with("no vllm metrics in the scrape (4 lines, 0 samples, 3 malformed; line 1:"),
            "{shown}"
        );
        assert!(shown.ends_with(
            "expected at least one of vllm:num_requests_waiting, vllm:num_requests_running, \
             vllm:kv_cache_usage_perc, vllm:gpu_cache_usage_perc"
        ));
        let triton = parse_metrics(Engine::Triton, html, 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(triton.contains("nv_trt_llm_request_metrics{request_type=\"waiting\"}"), "{triton}");
    }

    #[test]
    fn empty_input_is_an_error() {
        for text in ["", "\n", "# HELP only comments\n# TYPE x gauge\n"] {
            assert!(matches!(parse_metrics(Engine::Sglang, text, 0), Err(MetricsError::NoCoreGauges { .. })));
        }
    }

    #[test]
    fn crlf_page_parses() {
        let text = VLLM_V1.replace('\n', "\r\n");
        let p = parse(Engine::Vllm, &text);
        assert_eq!((p.metrics.waiting, p.metrics.running), (7, 12));
        assert_eq!(p.metrics.running_loras, strings(&["sql-lora", "chat-lora"]));
        assert_eq!(p.stats.malformed, 0);
    }

    #[test]
    fn huge_scrape_is_linear() {
        // ~40k lines (2.5 MB): 10k models' worth of series plus histograms. Quadratic work would not finish.
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&format!("vllm:num_requests_waiting{{model_name=\"m{i}\"}} 1\n"));
            text.push_str(&format!("vllm:kv_cache_usage_perc{{model_name=\"m{i}\"}} 0.{i:04}\n"));
            text.push_str(&format!(
                "vllm:time_to_first_token_seconds_bucket{{le=\"0.001\",model_name=\"m{i}\"}} 0.0\n"
            ));
            text.push_str("# HELP filler text\n");
        }
        let p = parse(Engine::Vllm, &text);
        assert_eq!(p.metrics.waiting, 10_000);
        assert_eq!(p.metrics.kv_usage, 0.9999);
        assert_eq!(p.stats.samples, 30_000);
    }

    #[test]
    fn bytes_entry_point_skips_non_utf8_lines() {
        let body = b"sglang:num_queue_reqs 2\n\xc3\x28 bad\nsglang:num_running_reqs 1\n";
        let p = parse_metrics_bytes(Engine::Sglang, body, 0).ok();
        let p = p.as_ref().map(|p| (p.metrics.waiting, p.metrics.running, p.stats.malformed));
        assert_eq!(p, Some((2, 1, 1)));
    }

    #[test]
    fn whole_u32_rejects_fractions_and_out_of_range() {
        assert_eq!(whole_u32(64.0), Some(64));
        assert_eq!(whole_u32(64.5), None);
        assert_eq!(whole_u32(-1.0), None);
        assert_eq!(whole_u32(f64::NAN), None);
        assert_eq!(whole_u32(5e9), None);
    }

    #[test]
    fn lora_lists_empty_when_labels_absent() {
        let labels = Labels::default();
        assert_eq!(adapter_list(&labels, "running_lora_adapters"), vec![] as Vec<String>);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
            for engine in Engine::ALL {
                let _ = parse_metrics(engine, &text, 0);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            for engine in Engine::ALL {
                let _ = parse_metrics_bytes(engine, &body, 0);
            }
        }

        #[test]
        fn mutated_fixture_never_panics_and_kv_stays_in_range(
            cut in 0usize..4000, insert in "(?s).{0,8}"
        ) {
            let mut text = String::from(VLLM_V1);
            let at = (0..=cut.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.insert_str(at, &insert);
            if let Ok(p) = parse_metrics(Engine::Vllm, &text, 0) {
                prop_assert!((0.0..=1.0).contains(&p.metrics.kv_usage));
            }
        }
    }
}
