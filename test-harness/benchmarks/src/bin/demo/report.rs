//! The demo's result: one column per policy (requests per replica, prefix-cache hit rate, TTFT
//! percentiles, errors) and the TTFT distributions as a PNG, drawn by the quality benchmark's renderer.

use crate::replay::{EngineCache, Outcome};
use benchmarks::chart::{line_chart, Series};
use benchmarks::stats::quantile;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The numbers of one policy's run.
pub struct Summary {
    pub policy: String,
    pub requests: usize,
    pub per_replica: BTreeMap<String, usize>,
    /// Failed requests by reason (`HTTP 404`, ...).
    pub errors: BTreeMap<String, usize>,
    /// Cached prompt tokens / prompt tokens over the successful requests.
    pub hit_rate: f64,
    /// The same as the replicas count it (`/metrics`), over everything they served; shown when set.
    pub engine_hit_rate: Option<f64>,
    /// TTFT of the successful requests, model-time milliseconds.
    pub ttft_ms: Vec<f64>,
}

impl Summary {
    pub fn new(policy: &str, outcomes: &[Outcome]) -> Summary {
        let mut per_replica = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let (mut prompt, mut cached) = (0u64, 0u64);
        let mut ttft_ms = Vec::new();
        for o in outcomes {
            if let Some(r) = &o.replica {
                *per_replica.entry(r.clone()).or_insert(0) += 1;
            }
            match &o.error {
                Some(e) => *errors.entry(e.clone()).or_insert(0) += 1,
                None => {
                    prompt += o.prompt_tokens;
                    cached += o.cached_tokens;
                    ttft_ms.extend(o.ttft.map(|t| t.as_secs_f64() * 1000.0));
                }
            }
        }
        let hit_rate = if prompt == 0 { f64::NAN } else { cached as f64 / prompt as f64 };
        Summary {
            policy: policy.to_string(),
            requests: outcomes.len(),
            per_replica,
            errors,
            hit_rate,
            engine_hit_rate: None,
            ttft_ms,
        }
    }

    /// Adds the replicas' own prefix-cache counters to the table.
    pub fn with_engine_cache(mut self, cache: Option<EngineCache>) -> Summary {
        self.engine_hit_rate =
            Some(cache.filter(|c| c.queries > 0.0).map_or(f64::NAN, |c| c.hits / c.queries));
        self
    }

    fn ttft(&self, q: f64) -> String {
        let v = quantile(&self.ttft_ms, q);
        if v.is_finite() {
            format!("{v:.0}")
        } else {
            String::from("-")
        }
    }

    fn error_cell(&self) -> String {
        let total: usize = self.errors.values().sum();
        if total == 0 {
            return String::from("0");
        }
        let kinds: Vec<String> = self.errors.iter().map(|(k, n)| format!("{n}× {k}")).collect();
        format!("{total} ({})", kinds.join(", "))
    }
}

/// The side-by-side table; `replicas` fixes the row order.
pub fn table(runs: &[Summary], replicas: &[String], time_scale: f64) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&Summary) -> String| {
        rows.push((label.to_string(), runs.iter().map(f).collect()));
    };
    row("requests", &|s| s.requests.to_string());
    for r in replicas {
        row(&format!("  to {r}"), &|s| {
            let n = s.per_replica.get(r).copied().unwrap_or(0);
            format!("{n} ({:.0}%)", 100.0 * n as f64 / s.requests.max(1) as f64)
        });
    }
    let percent = |r: f64| if r.is_finite() { format!("{:.1}%", 100.0 * r) } else { String::from("-") };
    row("prefix-cache hit rate", &|s| percent(s.hit_rate));
    if runs.iter().any(|s| s.engine_hit_rate.is_some()) {
        row("  replicas' /metrics", &|s| percent(s.engine_hit_rate.unwrap_or(f64::NAN)));
    }
    row("TTFT p50 (ms)", &|s| s.ttft(0.50));
    row("TTFT p90 (ms)", &|s| s.ttft(0.90));
    row("TTFT p99 (ms)", &|s| s.ttft(0.99));
    row("errors", &|s| s.error_cell());

    let label_w = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
    let col_w: Vec<usize> = (0..runs.len())
        .map(|c| {
            let cells = rows.iter().filter_map(|(_, v)| v.get(c)).map(|s| s.chars().count());
            cells.chain(runs.get(c).map(|s| s.policy.len())).max().unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:label_w$}", "");
    for (s, w) in runs.iter().zip(&col_w) {
        let _ = write!(out, "   {:>w$}", s.policy);
    }
    out.push('\n');
    for (label, cells) in &rows {
        let _ = write!(out, "{label:label_w$}");
        for (cell, w) in cells.iter().zip(&col_w) {
            let _ = write!(out, "   {cell:>w$}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "TTFT = time to the first streamed token as the client saw it, in model time (wall time ÷ {time_scale})."
    );
    out
}

/// TTFT against percentile for each policy (the CDF with its axes swapped, latency on a log scale so
/// the tail and the median both stay readable).
pub fn write_chart(runs: &[Summary], path: &Path) -> Result<(), String> {
    let percentiles = [1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0];
    let series: Vec<Series> = runs
        .iter()
        .map(|s| Series {
            name: s.policy.clone(),
            points: percentiles.iter().map(|&p| (p, quantile(&s.ttft_ms, p / 100.0))).collect(),
        })
        .collect();
    let png = line_chart("TTFT distribution (cargo xtask demo)", "percentile", "TTFT (ms)", &series, true)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, png).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ok(replica: &str, ttft_ms: u64, prompt: u64, cached: u64) -> Outcome {
        Outcome {
            replica: Some(replica.into()),
            ttft: Some(Duration::from_millis(ttft_ms)),
            prompt_tokens: prompt,
            cached_tokens: cached,
            error: None,
        }
    }

    #[test]
    fn failed_requests_count_per_replica_but_not_in_ttft_or_hit_rate() {
        let mut outcomes = vec![ok("a", 100, 1000, 900), ok("b", 300, 1000, 100)];
        outcomes.push(Outcome {
            replica: Some("b".into()),
            error: Some("HTTP 404".into()),
            ..Outcome::default()
        });
        let s = Summary::new("picker", &outcomes);
        assert_eq!(s.per_replica.get("b"), Some(&2));
        // (900 + 100) / (1000 + 1000)
        assert!((s.hit_rate - 0.5).abs() < 1e-9);
        assert_eq!(s.ttft_ms, vec![100.0, 300.0]);
        let t = table(&[s], &["a".into(), "b".into()], 0.25);
        assert!(t.contains("1 (HTTP 404)") || t.contains("1 (1× HTTP 404)"), "{t}");
        assert!(t.contains("  to b") && t.contains("2 (67%)"), "{t}");
        assert!(t.contains("50.0%"), "{t}");
        assert!(!t.contains("/metrics"), "{t}");
    }

    #[test]
    fn the_replicas_own_hit_rate_is_a_row_when_known() {
        let s = Summary::new("picker", &[ok("a", 100, 1000, 900)])
            .with_engine_cache(Some(EngineCache { hits: 300.0, queries: 1200.0 }));
        let none = Summary::new("round-robin", &[ok("a", 100, 1000, 900)]).with_engine_cache(None);
        let t = table(&[s, none], &["a".into()], 0.25);
        let row = t.lines().find(|l| l.contains("replicas' /metrics")).unwrap_or_default();
        assert!(row.contains("25.0%") && row.trim_end().ends_with('-'), "{t}");
    }
}
