//! `/metrics` in the exposition text vLLM or SGLang produce (names with `:`, info gauges carried in
//! labels, `_created` samples, histograms), computed from the engine's real state.

use std::fmt::Write;

use model_sim::EngineMetrics;

use super::cli::EngineKind;
use super::sim::{Histogram, TTFT_BUCKETS};

pub struct Context<'a> {
    pub model: &'a str,
    /// Adapter id → name (ids are 1-based positions in `--lora`).
    pub lora_names: &'a [String],
    pub enable_prefix_caching: bool,
    pub started_unix: f64,
    pub now_unix: f64,
}

/// Escapes a label value per the exposition format.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn adapters(ids: &[u32], ctx: &Context<'_>) -> String {
    let names: Vec<&str> = ids
        .iter()
        .filter_map(|&id| id.checked_sub(1).and_then(|i| ctx.lora_names.get(i as usize)).map(String::as_str))
        .collect();
    names.join(",")
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram, started: f64) {
    let mut cumulative = 0u64;
    for (le, c) in TTFT_BUCKETS.iter().zip(h.counts.iter()) {
        cumulative += c;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le:?}\"}} {:?}", cumulative as f64);
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {:?}", h.count as f64);
    let _ = writeln!(out, "{name}_count{{{labels}}} {:?}", h.count as f64);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", h.sum);
    let _ = writeln!(out, "{name}_created{{{labels}}} {started:?}");
}

fn counter(out: &mut String, name: &str, help: &str, labels: &str, value: u64, started: f64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name}_total{{{labels}}} {:?}", value as f64);
    let _ = writeln!(out, "{name}_created{{{labels}}} {started:?}");
}

pub fn render_vllm(m: &EngineMetrics, ttft: &Histogram, ctx: &Context<'_>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let labels = format!("engine=\"0\",model_name=\"{}\"", esc(ctx.model));
    let l = labels.as_str();
    family(&mut out, "vllm:num_requests_running", "gauge", "Number of requests in model execution batches.");
    let _ = writeln!(out, "vllm:num_requests_running{{{l}}} {:?}", m.num_requests_running as f64);
    family(&mut out, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
    let _ = writeln!(out, "vllm:num_requests_waiting{{{l}}} {:?}", m.num_requests_waiting as f64);
    family(&mut out, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
    let _ = writeln!(out, "vllm:kv_cache_usage_perc{{{l}}} {:?}", m.kv_cache_usage);
    counter(
        &mut out,
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        l,
        m.prefix_cache_queries,
        ctx.started_unix,
    );
    counter(
        &mut out,
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        l,
        m.prefix_cache_hits,
        ctx.started_unix,
    );
    counter(
        &mut out,
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        l,
        m.num_preemptions,
        ctx.started_unix,
    );
    counter(
        &mut out,
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        l,
        m.prompt_tokens,
        ctx.started_unix,
    );
    counter(
        &mut out,
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        l,
        m.generation_tokens,
        ctx.started_unix,
    );
    counter(
        &mut out,
        "vllm:request_success",
        "Count of successfully processed requests.",
        &format!("{l},finished_reason=\"length\""),
        m.finished_requests,
        ctx.started_unix,
    );
    family(
        &mut out,
        "vllm:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
    );
    histogram(&mut out, "vllm:time_to_first_token_seconds", l, ttft, ctx.started_unix);
    family(&mut out, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.");
    // The value is the series' last-update timestamp: readers take the series with the largest value.
    let _ = writeln!(
        out,
        "vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {:?}",
        m.max_lora,
        esc(&adapters(&m.running_lora_adapters, ctx)),
        esc(&adapters(&m.waiting_lora_adapters, ctx)),
        ctx.now_unix
    );
    family(&mut out, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
    let _ = writeln!(
        out,
        "vllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"{}\",\
         gpu_memory_utilization=\"0.9\",num_cpu_blocks=\"None\",num_gpu_blocks=\"{}\",\
         num_gpu_blocks_override=\"None\",prefix_caching_hash_algo=\"sha256\"}} 1.0",
        m.block_size,
        if ctx.enable_prefix_caching { "True" } else { "False" },
        m.num_gpu_blocks,
    );
    out
}

pub fn render_sglang(m: &EngineMetrics, ttft: &Histogram, ctx: &Context<'_>) -> String {
    let mut out = String::with_capacity(4 * 1024);
    let labels = format!("model_name=\"{}\"", esc(ctx.model));
    let l = labels.as_str();
    family(&mut out, "sglang:num_running_reqs", "gauge", "The number of running requests.");
    let _ = writeln!(out, "sglang:num_running_reqs{{{l}}} {:?}", m.num_requests_running as f64);
    family(&mut out, "sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.");
    let _ = writeln!(out, "sglang:num_queue_reqs{{{l}}} {:?}", m.num_requests_waiting as f64);
    family(&mut out, "sglang:token_usage", "gauge", "The token usage.");
    let _ = writeln!(out, "sglang:token_usage{{{l}}} {:?}", m.kv_cache_usage);
    family(&mut out, "sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.");
    let rate = if m.prefix_cache_queries == 0 {
        0.0
    } else {
        m.prefix_cache_hits as f64 / m.prefix_cache_queries as f64
    };
    let _ = writeln!(out, "sglang:cache_hit_rate{{{l}}} {rate:?}");
    family(&mut out, "sglang:cache_config_info", "gauge", "Information of the cache configuration.");
    let _ = writeln!(
        out,
        "sglang:cache_config_info{{{l},num_pages=\"{}\",page_size=\"{}\"}} 1.0",
        m.num_gpu_blocks, m.block_size
    );
    counter(
        &mut out,
        "sglang:prompt_tokens",
        "Number of prefill tokens processed.",
        l,
        m.prompt_tokens,
        ctx.started_unix,
    );
    counter(
        &mut out,
        "sglang:generation_tokens",
        "Number of generation tokens processed.",
        l,
        m.generation_tokens,
        ctx.started_unix,
    );
    family(
        &mut out,
        "sglang:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
    );
    histogram(&mut out, "sglang:time_to_first_token_seconds", l, ttft, ctx.started_unix);
    out
}

/// The page in the names of `kind`.
pub fn render(kind: EngineKind, m: &EngineMetrics, ttft: &Histogram, ctx: &Context<'_>) -> String {
    match kind {
        EngineKind::Vllm => render_vllm(m, ttft, ctx),
        EngineKind::Sglang => render_sglang(m, ttft, ctx),
    }
}

/// The metric families a page of `kind` has, in page order.
pub fn families(kind: EngineKind) -> Vec<String> {
    let m = EngineMetrics {
        num_requests_waiting: 0,
        num_requests_running: 0,
        kv_cache_usage: 0.0,
        free_blocks: 0,
        num_gpu_blocks: 0,
        block_size: 0,
        max_lora: 0,
        running_lora_adapters: Vec::new(),
        waiting_lora_adapters: Vec::new(),
        prefix_cache_queries: 0,
        prefix_cache_hits: 0,
        num_preemptions: 0,
        prompt_tokens: 0,
        generation_tokens: 0,
        finished_requests: 0,
        steps: 0,
    };
    let ctx = Context {
        model: "m",
        lora_names: &[],
        enable_prefix_caching: true,
        started_unix: 0.0,
        now_unix: 0.0,
    };
    render(kind, &m, &Histogram::default(), &ctx)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// `text` without the families named in `drop` (their `# HELP`, `# TYPE` and every sample line).
pub fn drop_families(text: &str, drop: &[String]) -> String {
    if drop.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        // Each family starts with its `# HELP` (or `# TYPE`) line; samples follow until the next one.
        let header = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE "));
        if let Some(name) = header.and_then(|h| h.split_whitespace().next()) {
            skipping = drop.iter().any(|d| d == name);
        }
        if !skipping {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> EngineMetrics {
        EngineMetrics {
            num_requests_waiting: 3,
            num_requests_running: 2,
            kv_cache_usage: 0.25,
            free_blocks: 75,
            num_gpu_blocks: 100,
            block_size: 16,
            max_lora: 2,
            running_lora_adapters: vec![1, 2],
            waiting_lora_adapters: vec![3],
            prefix_cache_queries: 100,
            prefix_cache_hits: 40,
            num_preemptions: 0,
            prompt_tokens: 100,
            generation_tokens: 7,
            finished_requests: 1,
            steps: 9,
        }
    }

    fn ctx(names: &[String]) -> Context<'_> {
        Context {
            model: "org/m\"x",
            lora_names: names,
            enable_prefix_caching: true,
            started_unix: 1.0,
            now_unix: 1700000000.5,
        }
    }

    #[test]
    fn vllm_text_carries_the_gateway_signals() {
        let names = vec!["sql".to_string(), "chat".to_string(), "code".to_string()];
        let mut h = Histogram::default();
        h.counts[3] = 2;
        h.count = 2;
        h.sum = 0.03;
        let text = render_vllm(&metrics(), &h, &ctx(&names));
        let l = "{engine=\"0\",model_name=\"org/m\\\"x\"}";
        for line in [
            format!("vllm:num_requests_waiting{l} 3.0"),
            format!("vllm:num_requests_running{l} 2.0"),
            format!("vllm:kv_cache_usage_perc{l} 0.25"),
            format!("vllm:prefix_cache_hits_total{l} 40.0"),
            "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql,chat\",waiting_lora_adapters=\"code\"} 1700000000.5".to_string(),
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"org/m\\\"x\",le=\"0.02\"} 2.0".to_string(),
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"org/m\\\"x\",le=\"+Inf\"} 2.0".to_string(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line}\n{text}");
        }
        assert!(text.contains("block_size=\"16\""));
        assert!(text.contains("num_gpu_blocks=\"100\""));
    }

    #[test]
    fn sglang_text_uses_sglang_names() {
        let text = render_sglang(&metrics(), &Histogram::default(), &ctx(&[]));
        let l = "{model_name=\"org/m\\\"x\"}";
        for line in [
            format!("sglang:num_queue_reqs{l} 3.0"),
            format!("sglang:num_running_reqs{l} 2.0"),
            format!("sglang:token_usage{l} 0.25"),
            "sglang:cache_config_info{model_name=\"org/m\\\"x\",num_pages=\"100\",page_size=\"16\"} 1.0"
                .to_string(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line}\n{text}");
        }
        assert!(!text.contains("vllm:"));
    }

    #[test]
    fn families_are_listed_and_dropped_whole() {
        let vllm = families(EngineKind::Vllm);
        assert_eq!(vllm.first().map(String::as_str), Some("vllm:num_requests_running"));
        assert!(vllm.iter().any(|f| f == "vllm:kv_cache_usage_perc"));
        assert!(vllm.iter().any(|f| f == "vllm:prefix_cache_hits"));
        assert!(families(EngineKind::Sglang).iter().all(|f| f.starts_with("sglang:")));

        let text = render_vllm(&metrics(), &Histogram::default(), &ctx(&[]));
        let drop = vec!["vllm:kv_cache_usage_perc".to_string(), "vllm:prefix_cache_hits".to_string()];
        let out = drop_families(&text, &drop);
        assert!(!out.contains("vllm:kv_cache_usage_perc"), "{out}");
        assert!(!out.contains("vllm:prefix_cache_hits"), "{out}");
        assert!(out.contains("vllm:prefix_cache_queries_total"));
        assert!(out.contains("vllm:num_requests_waiting{"));
        assert_eq!(out.lines().count() + 3 + 4, text.lines().count());
        assert_eq!(drop_families(&text, &[]), text);
    }
}
