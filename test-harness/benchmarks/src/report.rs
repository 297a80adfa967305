//! From runs to what a reader sees: one summary per (workload, QPS, policy), a table per workload,
//! and a CSV with every percentile and its interval; for the many-gateway runs, a table and a CSV per
//! (policy, topology, pods) with the prefix-cache hit rate, TTFT, NTPOT and how evenly replicas were used.

use crate::sim::{RequestRecord, RunResult};
use crate::stats::{quantile_ci, Estimate};
use std::fmt::Write as _;

pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// One cell of the benchmark.
#[derive(Clone, Debug)]
pub struct CellSummary {
    pub workload: String,
    pub policy: String,
    /// Offered load, requests per second.
    pub qps: f64,
    pub requests: usize,
    pub rejected: usize,
    /// p50 / p90 / p99, milliseconds.
    pub ttft: [Estimate; 3],
    pub tpot: [Estimate; 3],
    pub ntpot: [Estimate; 3],
    pub e2e: [Estimate; 3],
    /// Output tokens per second finished during the measured window (warm-up to last arrival).
    pub output_tokens_per_s: f64,
    /// Prompt tokens served from the prefix cache / prompt tokens.
    pub prefix_hit_rate: f64,
    pub preemptions: u64,
    /// Output tokens delivered / offered during the measured window: well below 1 when the cluster
    /// could not keep up (its queues grow for as long as the load lasts).
    pub kept_up: f64,
    /// Gateway replicas × workers (`GxW`) the cell ran with.
    pub topology: String,
    /// The pods' speeds (`even`, `straggler`, ...).
    pub pods: String,
    /// Measured requests routed to each replica.
    pub per_replica: Vec<u64>,
}

impl CellSummary {
    /// Requests of the busiest replica / the idlest one's (∞ when one got none).
    pub fn replica_spread(&self) -> f64 {
        let max = self.per_replica.iter().copied().max().unwrap_or(0);
        let min = self.per_replica.iter().copied().min().unwrap_or(0);
        if min == 0 {
            if max == 0 {
                1.0
            } else {
                f64::INFINITY
            }
        } else {
            max as f64 / min as f64
        }
    }
}

fn percentiles(
    records: &[RequestRecord],
    metric: fn(&RequestRecord) -> Option<f64>,
    resamples: usize,
    seed: u64,
) -> [Estimate; 3] {
    let values: Vec<f64> = records.iter().filter_map(metric).collect();
    QUANTILES.map(|q| quantile_ci(&values, q, resamples, seed ^ (q * 1000.0) as u64))
}

/// Summarises a run. Requests arriving before `warmup_us` are simulated but not measured (the cluster
/// is still filling up); throughput and `kept_up` are measured between `warmup_us` and the last arrival.
pub fn summarize(
    workload: &str,
    policy: &str,
    qps: f64,
    run: &RunResult,
    warmup_us: u64,
    resamples: usize,
) -> CellSummary {
    let measured: Vec<RequestRecord> =
        run.records.iter().filter(|x| x.arrival_us >= warmup_us).copied().collect();
    let r = &measured;
    let finished: Vec<&RequestRecord> = r.iter().filter(|x| x.finish_us.is_some()).collect();
    let prompt: u64 = finished.iter().map(|x| u64::from(x.prompt_tokens)).sum();
    let cached: u64 = finished.iter().map(|x| u64::from(x.cached_tokens)).sum();
    let end = run.records.iter().map(|x| x.arrival_us).max().unwrap_or(0);
    let window_s = end.saturating_sub(warmup_us) as f64 / 1e6;
    let in_window = |t: Option<u64>| t.is_some_and(|t| t >= warmup_us && t <= end);
    let delivered: u64 =
        run.records.iter().filter(|x| in_window(x.finish_us)).map(|x| u64::from(x.output_tokens)).sum();
    let offered: u64 = r.iter().filter(|x| x.arrival_us <= end).map(|x| u64::from(x.output_tokens)).sum();
    CellSummary {
        workload: workload.to_string(),
        policy: policy.to_string(),
        qps,
        requests: r.len(),
        rejected: r.iter().filter(|x| x.endpoint.is_none()).count(),
        ttft: percentiles(r, RequestRecord::ttft_ms, resamples, 1),
        tpot: percentiles(r, RequestRecord::tpot_ms, resamples, 2),
        ntpot: percentiles(r, RequestRecord::ntpot_ms, resamples, 3),
        e2e: percentiles(r, RequestRecord::e2e_ms, resamples, 4),
        output_tokens_per_s: if window_s > 0.0 { delivered as f64 / window_s } else { 0.0 },
        prefix_hit_rate: if prompt > 0 { cached as f64 / prompt as f64 } else { 0.0 },
        preemptions: r.iter().map(|x| u64::from(x.preemptions)).sum(),
        kept_up: if offered > 0 { delivered as f64 / offered as f64 } else { 1.0 },
        topology: String::from("1x1"),
        pods: String::from("even"),
        per_replica: {
            let mut n = vec![0u64; run.per_replica.len()];
            for e in r.iter().filter_map(|x| x.endpoint) {
                if let Some(slot) = n.get_mut(e) {
                    *slot += 1;
                }
            }
            n
        },
    }
}

/// Milliseconds, compact: 3 significant digits below 1000, seconds above.
pub fn ms(v: f64) -> String {
    if !v.is_finite() {
        return String::from("-");
    }
    if v >= 10_000.0 {
        format!("{:.0}s", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table for one workload, rows ordered by QPS then by `policy_order`.
pub fn table(cells: &[&CellSummary], markdown: bool) -> String {
    let header = [
        "QPS",
        "policy",
        "out tok/s",
        "TTFT p50",
        "p90",
        "p99",
        "NTPOT p50",
        "p90",
        "p99",
        "TPOT p90",
        "e2e p50",
        "p90",
        "p99",
        "hit %",
        "preempt",
        "kept up",
    ];
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|c| {
            vec![
                format!("{:.0}", c.qps),
                c.policy.clone(),
                format!("{:.0}", c.output_tokens_per_s),
                ms(c.ttft[0].value),
                ms(c.ttft[1].value),
                ms(c.ttft[2].value),
                ms(c.ntpot[0].value),
                ms(c.ntpot[1].value),
                ms(c.ntpot[2].value),
                ms(c.tpot[1].value),
                ms(c.e2e[0].value),
                ms(c.e2e[1].value),
                ms(c.e2e[2].value),
                format!("{:.1}", c.prefix_hit_rate * 100.0),
                c.preemptions.to_string(),
                format!("{:.2}", c.kept_up),
            ]
        })
        .collect();
    render(&header, &rows, markdown)
}

/// Right-aligned columns (the second left-aligned in plain text), or a markdown table.
fn render(header: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        if markdown {
            out.push('|');
        }
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if markdown {
                let _ = write!(out, " {cell:>w$} |");
            } else if i == 1 {
                let _ = write!(out, "{cell:<w$}  ");
            } else {
                let _ = write!(out, "{cell:>w$}  ");
            }
        }
        out.push('\n');
    };
    line(&mut out, &header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    if markdown {
        out.push('|');
        for w in &widths {
            let _ = write!(out, "{}:|", "-".repeat(*w + 1));
        }
        out.push('\n');
    }
    for row in rows {
        line(&mut out, row);
    }
    out
}

/// Requests per replica, busiest / idlest, for tables.
pub fn spread(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        String::from("∞")
    }
}

/// The many-gateway comparison: per (QPS, topology, pods, policy) the prefix-cache hit rate, TTFT p50 /
/// p90, NTPOT p90 and how unevenly the replicas were loaded.
pub fn topology_table(cells: &[&CellSummary], markdown: bool) -> String {
    let header = [
        "QPS",
        "policy",
        "GxW",
        "pods",
        "hit %",
        "TTFT p50",
        "TTFT p90",
        "NTPOT p90",
        "req/replica max/min",
        "kept up",
        "rejected",
    ];
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|c| {
            vec![
                format!("{:.1}", c.qps),
                policy_name(&c.policy).to_string(),
                c.topology.clone(),
                c.pods.clone(),
                format!("{:.1}", c.prefix_hit_rate * 100.0),
                ms(c.ttft[0].value),
                ms(c.ttft[1].value),
                ms(c.ntpot[1].value),
                spread(c.replica_spread()),
                format!("{:.2}", c.kept_up),
                c.rejected.to_string(),
            ]
        })
        .collect();
    render(&header, &rows, markdown)
}

/// The policy's own name in a label that may carry the topology and pods (`ours @4x4/straggler`).
fn policy_name(label: &str) -> &str {
    label.split(" @").next().unwrap_or(label)
}

/// [`topology_table`] as CSV, with the 95 % intervals and the per-replica counts (`;`-separated).
pub fn topology_csv(cells: &[CellSummary]) -> String {
    let mut out = String::from(
        "workload,policy,topology,pods,qps,requests,rejected,prefix_hit_rate,ttft_ms_p50,ttft_ms_p50_lo,\
         ttft_ms_p50_hi,ttft_ms_p90,ttft_ms_p90_lo,ttft_ms_p90_hi,ntpot_ms_p90,ntpot_ms_p90_lo,ntpot_ms_p90_hi,\
         replica_spread,per_replica,kept_up\n",
    );
    for c in cells {
        let per: Vec<String> = c.per_replica.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.4},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{:.3}",
            c.workload,
            policy_name(&c.policy),
            c.topology,
            c.pods,
            c.qps,
            c.requests,
            c.rejected,
            c.prefix_hit_rate,
            c.ttft[0].value,
            c.ttft[0].lo,
            c.ttft[0].hi,
            c.ttft[1].value,
            c.ttft[1].lo,
            c.ttft[1].hi,
            c.ntpot[1].value,
            c.ntpot[1].lo,
            c.ntpot[1].hi,
            c.replica_spread(),
            per.join(";"),
            c.kept_up
        );
    }
    out
}

/// Every cell with every percentile and its 95 % interval.
pub fn csv(cells: &[CellSummary]) -> String {
    let mut out = String::from(
        "workload,policy,qps,requests,rejected,output_tokens_per_s,prefix_hit_rate,preemptions,kept_up",
    );
    for m in ["ttft_ms", "tpot_ms", "ntpot_ms", "e2e_ms"] {
        for q in ["p50", "p90", "p99"] {
            let _ = write!(out, ",{m}_{q},{m}_{q}_lo,{m}_{q}_hi");
        }
    }
    out.push('\n');
    for c in cells {
        let _ = write!(
            out,
            "{},{},{},{},{},{:.1},{:.4},{},{:.3}",
            c.workload,
            c.policy,
            c.qps,
            c.requests,
            c.rejected,
            c.output_tokens_per_s,
            c.prefix_hit_rate,
            c.preemptions,
            c.kept_up
        );
        for m in [&c.ttft, &c.tpot, &c.ntpot, &c.e2e] {
            for e in m {
                let _ = write!(out, ",{:.3},{:.3},{:.3}", e.value, e.lo, e.hi);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_spread_is_busiest_over_idlest() {
        let cell = |per_replica: Vec<u64>| CellSummary {
            workload: String::new(),
            policy: String::from("ours @4x4/straggler"),
            qps: 1.0,
            requests: 0,
            rejected: 0,
            ttft: Default::default(),
            tpot: Default::default(),
            ntpot: Default::default(),
            e2e: Default::default(),
            output_tokens_per_s: 0.0,
            prefix_hit_rate: 0.0,
            preemptions: 0,
            kept_up: 1.0,
            topology: String::from("4x4"),
            pods: String::from("straggler"),
            per_replica,
        };
        assert_eq!(cell(vec![30, 10, 20]).replica_spread(), 3.0);
        assert_eq!(spread(cell(vec![30, 0]).replica_spread()), "∞");
        assert_eq!(cell(vec![]).replica_spread(), 1.0);
        let t = topology_table(&[&cell(vec![30, 10, 20])], false);
        assert!(t.contains("ours ") && !t.contains('@') && t.contains("3.00"), "{t}");
        assert!(topology_csv(&[cell(vec![1, 2])]).contains(",ours,4x4,straggler,"));
    }

    #[test]
    fn compact_milliseconds() {
        assert_eq!(ms(2.345), "2.35");
        assert_eq!(ms(23.45), "23.4");
        assert_eq!(ms(234.5), "234");
        assert_eq!(ms(2345.0), "2.3s");
        assert_eq!(ms(23450.0), "23s");
        assert_eq!(ms(f64::NAN), "-");
    }

    #[test]
    fn summary_of_a_hand_made_run() {
        // Two requests: 100 ms TTFT, 1.1 s end to end, 11 tokens → TPOT 100 ms, NTPOT 100 ms.
        let rec = |arrival_us| RequestRecord {
            arrival_us,
            endpoint: Some(0),
            first_token_us: Some(arrival_us + 100_000),
            finish_us: Some(arrival_us + 1_100_000),
            prompt_tokens: 100,
            output_tokens: 11,
            cached_tokens: 50,
            preemptions: 0,
            ..RequestRecord::default()
        };
        // A third request inside the warm-up is not measured.
        let early = RequestRecord { first_token_us: Some(1), finish_us: Some(2), ..rec(0) };
        let run = RunResult {
            records: vec![early, rec(100_000), rec(2_100_000)],
            makespan_us: 3_200_000,
            per_replica: vec![3],
        };
        let s = summarize("w", "p", 1.0, &run, 100_000, 50);
        assert_eq!(s.requests, 2);
        assert_eq!(s.ttft[1].value, 100.0);
        assert!((s.tpot[1].value - 100.0).abs() < 1e-9);
        assert!((s.ntpot[1].value - 100.0).abs() < 1e-9);
        // Window 0.1 s → 2.1 s: one request (11 tokens) finished inside it, two arrived.
        assert_eq!(s.output_tokens_per_s, 5.5);
        assert_eq!(s.prefix_hit_rate, 0.5);
        assert_eq!(s.kept_up, 0.5);
        let t = table(&[&s], false);
        assert!(t.contains("NTPOT p50") && t.contains("100"), "{t}");
        // The two measured requests both went to replica 0 of a one-replica run.
        assert_eq!((s.per_replica.clone(), s.replica_spread()), (vec![2], 1.0));
        let t = topology_table(&[&s], true);
        assert!(t.starts_with("| QPS | policy | GxW |") && t.contains("| 1x1 | even |"), "{t}");
        assert_eq!(topology_csv(std::slice::from_ref(&s)).lines().count(), 2);
        assert_eq!(csv(&[s]).lines().count(), 2);
    }
}
