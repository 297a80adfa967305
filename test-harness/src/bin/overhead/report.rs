//! Tables for BENCHMARKS.md and a CSV of every cell. Ratios are taken within one (workers, body) group of
//! the same run, against plain Envoy, so drift between groups cancels out.

use crate::gateway::Gateway;
use crate::load::WrkResult;
use std::fmt::Write;
use std::time::Duration;

pub struct Run {
    pub gateway: Gateway,
    pub workers: usize,
    pub body_kib: usize,
    pub wrk: WrkResult,
    pub envoy_cpu_s: f64,
    pub shim_cpu_s: f64,
    pub nginx_cpu_s: f64,
}

impl Run {
    /// Envoy CPU time per request, µs (all threads, measured from /proc).
    pub fn envoy_cpu_us(&self) -> f64 {
        per_request_us(self.envoy_cpu_s, self.wrk.requests)
    }

    fn shim_cpu_us(&self) -> f64 {
        per_request_us(self.shim_cpu_s, self.wrk.requests)
    }

    /// 1/rps in µs: the wall-clock cost of one request at saturation.
    fn inverse_rps_us(&self) -> f64 {
        1e6 / self.wrk.rps().max(f64::MIN_POSITIVE)
    }
}

fn per_request_us(seconds: f64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        seconds * 1e6 / requests as f64
    }
}

pub struct Memory {
    pub gateway: Gateway,
    pub workers: usize,
    pub rss_kib: u64,
}

fn plain_of<'a>(runs: &'a [Run], r: &Run) -> Option<&'a Run> {
    runs.iter()
        .find(|p| matches!(p.gateway, Gateway::Plain) && p.workers == r.workers && p.body_kib == r.body_kib)
}

fn find<'a>(runs: &'a [Run], workers: usize, kib: usize, key: &str) -> Option<&'a Run> {
    runs.iter().find(|r| r.workers == workers && r.body_kib == kib && r.gateway.key() == key)
}

pub fn markdown(
    runs: &[Run],
    memory: &[Memory],
    sizes: &[(String, u64)],
    calls: &[crate::host_calls::Count],
    load: &str,
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Load: {load}. Run time {:.0} s.\n", elapsed.as_secs_f64());
    let mut workers: Vec<usize> = runs.iter().map(|r| r.workers).collect();
    workers.dedup();
    for w in &workers {
        let _ = writeln!(s, "#### Envoy with {w} worker{}\n", if *w == 1 { "" } else { "s" });
        let _ = writeln!(
            s,
            "| Body | Configuration | req/s | × plain | p50 ms | × plain | p99 ms | × plain | added µs/req (1/rps − 1/rps_plain) | Envoy CPU µs/req | added Envoy CPU µs/req | shim CPU µs/req |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in runs.iter().filter(|r| r.workers == *w) {
            let Some(p) = plain_of(runs, r) else { continue };
            let shim = if matches!(r.gateway, Gateway::ExtProc { .. }) {
                format!("{:.1}", r.shim_cpu_us())
            } else {
                String::from("–")
            };
            let _ = writeln!(
                s,
                "| {} KiB | {} | {:.0} | {:.2} | {:.3} | {:.2} | {:.3} | {:.2} | {:.1} | {:.1} | {:.1} | {shim} |",
                r.body_kib,
                r.gateway.label(),
                r.wrk.rps(),
                r.wrk.rps() / p.wrk.rps(),
                r.wrk.p50_us / 1e3,
                r.wrk.p50_us / p.wrk.p50_us,
                r.wrk.p99_us / 1e3,
                r.wrk.p99_us / p.wrk.p99_us,
                r.inverse_rps_us() - p.inverse_rps_us(),
                r.envoy_cpu_us(),
                r.envoy_cpu_us() - p.envoy_cpu_us(),
            );
        }
        s.push('\n');
    }

    let _ = writeln!(s, "#### Targets\n");
    let _ = writeln!(
        s,
        "Picker (64 endpoints) added cost per request over the do-nothing floor's, target ≤ 2×:\n"
    );
    let _ = writeln!(s, "| Workers | Body | floor added µs/req (1/rps) | picker added µs/req (1/rps) | ratio | floor added Envoy CPU µs/req | picker added Envoy CPU µs/req | ratio | met? |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|:---|");
    let mut bodies: Vec<usize> = runs.iter().map(|r| r.body_kib).collect();
    bodies.sort_unstable();
    bodies.dedup();
    for w in &workers {
        for kib in &bodies {
            let (Some(p), Some(f), Some(k)) = (
                find(runs, *w, *kib, "plain"),
                find(runs, *w, *kib, "floor"),
                find(runs, *w, *kib, "picker-64"),
            ) else {
                continue;
            };
            let fa = f.inverse_rps_us() - p.inverse_rps_us();
            let ka = k.inverse_rps_us() - p.inverse_rps_us();
            let fc = f.envoy_cpu_us() - p.envoy_cpu_us();
            let kc = k.envoy_cpu_us() - p.envoy_cpu_us();
            let met = if kc <= 2.0 * fc && ka <= 2.0 * fa {
                "yes"
            } else if kc <= 2.0 * fc || ka <= 2.0 * fa {
                "on one measure"
            } else {
                "**no**"
            };
            let _ = writeln!(
                s,
                "| {w} | {kib} KiB | {fa:.1} | {ka:.1} | {:.2} | {fc:.1} | {kc:.1} | {:.2} | {met} |",
                ka / fa,
                kc / fc
            );
        }
    }
    let _ =
        writeln!(s, "\nPicker (64 endpoints) throughput over the ext_proc shim's at 220 KiB, target ≥ 5×:\n");
    let _ = writeln!(s, "| Workers | picker req/s | ext_proc req/s | ratio | met? |");
    let _ = writeln!(s, "|---:|---:|---:|---:|:---|");
    for w in &workers {
        if let (Some(k), Some(x)) = (find(runs, *w, 220, "picker-64"), find(runs, *w, 220, "ext_proc-64")) {
            let ratio = k.wrk.rps() / x.wrk.rps();
            let _ = writeln!(
                s,
                "| {w} | {:.0} | {:.0} | {ratio:.2} | {} |",
                k.wrk.rps(),
                x.wrk.rps(),
                if ratio >= 5.0 { "yes" } else { "**no**" }
            );
        }
    }

    let _ = writeln!(s, "\n#### Memory (Envoy VmRSS after 3 s of 4 KiB traffic)\n");
    let _ = writeln!(s, "| Workers | Configuration | VmRSS MiB | over plain MiB |");
    let _ = writeln!(s, "|---:|---|---:|---:|");
    for m in memory {
        let plain = memory
            .iter()
            .find(|p| matches!(p.gateway, Gateway::Plain) && p.workers == m.workers)
            .map_or(0, |p| p.rss_kib);
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:+.1} |",
            m.workers,
            m.gateway.label(),
            m.rss_kib as f64 / 1024.0,
            (m.rss_kib as f64 - plain as f64) / 1024.0
        );
    }
    s.push_str(&host_calls_table(calls));
    let _ = writeln!(s, "\n| Module | Size |\n|---|---:|");
    for (name, bytes) in sizes {
        let _ = writeln!(s, "| {name} | {bytes} B ({:.0} KiB) |", *bytes as f64 / 1024.0);
    }
    s
}

pub fn host_calls_table(calls: &[crate::host_calls::Count]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n#### Proxy-Wasm host calls per request (harness emulation of the same filters)\n");
    let _ = writeln!(s, "| Filter | Body | host calls / request | most frequent |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    for c in calls {
        let top: Vec<String> = c.top.iter().map(|(n, k)| format!("{n} {k:.1}")).collect();
        let _ =
            writeln!(s, "| {} | {} KiB | {:.1} | {} |", c.filter, c.body_kib, c.per_request, top.join(", "));
    }
    s
}

pub fn csv(runs: &[Run]) -> String {
    let mut s = String::from("workers,body_kib,configuration,requests,seconds,rps,p50_us,p99_us,envoy_cpu_s,shim_cpu_s,nginx_cpu_s,socket_errors\n");
    for r in runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{}",
            r.workers,
            r.body_kib,
            r.gateway.key(),
            r.wrk.requests,
            r.wrk.seconds,
            r.wrk.rps(),
            r.wrk.p50_us,
            r.wrk.p99_us,
            r.envoy_cpu_s,
            r.shim_cpu_s,
            r.nginx_cpu_s,
            r.wrk.socket_errors
        );
    }
    s
}
