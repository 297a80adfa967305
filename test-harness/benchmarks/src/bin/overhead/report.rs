//! Tables for BENCHMARKS.md, a CSV of every cell (written and read back) and PNG charts of the same cells.
//! Ratios are taken within one (workers, body) group of the same run, against plain Envoy, so drift
//! between groups cancels out.

use crate::gateway::Gateway;
use crate::load::WrkResult;
use benchmarks::chart::{bar_chart, BarSeries, PALETTE};
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

    /// Envoy CPU µs per request above plain Envoy's (`plain`: the same workers and body).
    fn added_envoy_cpu_us(&self, plain: &Run) -> f64 {
        self.envoy_cpu_us() - plain.envoy_cpu_us()
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
            let shim = if matches!(r.gateway, Gateway::ExtProc { .. } | Gateway::ExtProcBbr { .. }) {
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
                r.added_envoy_cpu_us(p),
            );
        }
        s.push('\n');
    }

    let _ = writeln!(s, "#### Targets\n");
    let _ = writeln!(
        s,
        "Picker (64 endpoints) added cost per request over the do-nothing floor's, target ≤ 2×. The reading \
         floor is the same module also reading each request as the picker does (`:path`, the JSON reader, \
         the prefix hashes) and deciding nothing: the share of the 2× budget that reading the prompt alone \
         takes, and what the picker adds beyond it:\n"
    );
    let _ = writeln!(s, "| Workers | Body | floor added µs/req (1/rps) | picker added µs/req (1/rps) | ratio | floor added Envoy CPU µs/req | picker added Envoy CPU µs/req | ratio | met? | reading floor added Envoy CPU µs/req | reading floor ÷ floor | picker − reading floor µs/req |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|:---|---:|---:|---:|");
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
            let fc = f.added_envoy_cpu_us(p);
            let kc = k.added_envoy_cpu_us(p);
            let met = if kc <= 2.0 * fc && ka <= 2.0 * fa {
                "yes"
            } else if kc <= 2.0 * fc || ka <= 2.0 * fa {
                "on one measure"
            } else {
                "**no**"
            };
            let reading = match find(runs, *w, *kib, "floor-read") {
                Some(r) => {
                    let rc = r.added_envoy_cpu_us(p);
                    format!("{rc:.1} | {:.2} | {:.1}", rc / fc, kc - rc)
                }
                None => String::from("– | – | –"),
            };
            let _ = writeln!(
                s,
                "| {w} | {kib} KiB | {fa:.1} | {ka:.1} | {:.2} | {fc:.1} | {kc:.1} | {:.2} | {met} | {reading} |",
                ka / fa,
                kc / fc
            );
        }
    }
    let _ = writeln!(
        s,
        "\nPicker (64 endpoints) throughput over the ext_proc shim's at 220 KiB, target ≥ 5×; and the CPU \
         each spends per request (ext_proc: Envoy's plus the shim process's, which runs on the other core):\n"
    );
    let _ = writeln!(s, "| Workers | picker req/s | ext_proc req/s | ratio | met? | picker CPU µs/req | ext_proc CPU µs/req | CPU ratio |");
    let _ = writeln!(s, "|---:|---:|---:|---:|:---|---:|---:|---:|");
    for w in &workers {
        if let (Some(k), Some(x)) = (find(runs, *w, 220, "picker-64"), find(runs, *w, 220, "ext_proc-64")) {
            let ratio = k.wrk.rps() / x.wrk.rps();
            let (kc, xc) = (k.envoy_cpu_us(), x.envoy_cpu_us() + x.shim_cpu_us());
            let _ = writeln!(
                s,
                "| {w} | {:.0} | {:.0} | {ratio:.2} | {} | {kc:.1} | {xc:.1} | {:.2} |",
                k.wrk.rps(),
                x.wrk.rps(),
                if ratio >= 5.0 { "yes" } else { "**no**" },
                xc / kc
            );
        }
    }

    s.push_str(&bbr_targets(runs, &workers, &bodies));

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

/// The body-based routing targets (issue 22), when the run has those cells: the in-proxy router + picker
/// against GIE's shape in Envoy + shim CPU per request (≥ 8× lower at 220 KiB), and the router alone
/// against the reading floor in added Envoy CPU (within 1.5×).
fn bbr_targets(runs: &[Run], workers: &[usize], bodies: &[usize]) -> String {
    let mut s = String::new();
    let has = |key: &str| runs.iter().any(|r| r.gateway.key() == key);
    if has("bbr-picker-64") && has("ext_proc-bbr-64") {
        let _ = writeln!(
            s,
            "\nBody-based routing + picker (64 endpoints): in the proxy (the picker with a `bbr` section, one \
             filter) against GIE's shape (the shim's Body-Based Router and the shim's picker, two ext_proc \
             filters, two processes), CPU per request of Envoy plus the shim processes; target ≥ 8× lower at \
             220 KiB. The last two columns are what body-based routing adds to each shape over the same \
             picker without it (picker-64, ext_proc-64), when the run has those:\n"
        );
        let _ = writeln!(s, "| Workers | Body | in-proxy req/s | GIE shape req/s | req/s ratio | in-proxy Envoy CPU µs/req | GIE shape Envoy CPU µs/req | GIE shape shims CPU µs/req | GIE shape total µs/req | CPU ratio | met? | BBR adds in-proxy µs/req | BBR adds GIE shape µs/req |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|---:|---:|");
        for w in workers {
            for kib in bodies {
                let (Some(k), Some(x)) =
                    (find(runs, *w, *kib, "bbr-picker-64"), find(runs, *w, *kib, "ext_proc-bbr-64"))
                else {
                    continue;
                };
                let (kc, xe, xs) = (k.envoy_cpu_us(), x.envoy_cpu_us(), x.shim_cpu_us());
                let ratio = (xe + xs) / kc;
                let met = match (*kib, ratio >= 8.0) {
                    (220, true) => "yes",
                    (220, false) => "**no**",
                    _ => "–",
                };
                let adds_k = find(runs, *w, *kib, "picker-64")
                    .map_or(String::from("–"), |p| format!("{:.1}", kc - p.envoy_cpu_us()));
                let adds_x = find(runs, *w, *kib, "ext_proc-64").map_or(String::from("–"), |p| {
                    format!("{:.1}", xe + xs - p.envoy_cpu_us() - p.shim_cpu_us())
                });
                let _ = writeln!(
                    s,
                    "| {w} | {kib} KiB | {:.0} | {:.0} | {:.2} | {kc:.1} | {xe:.1} | {xs:.1} | {:.1} | {ratio:.2} | {met} | {adds_k} | {adds_x} |",
                    k.wrk.rps(),
                    x.wrk.rps(),
                    k.wrk.rps() / x.wrk.rps(),
                    xe + xs,
                );
            }
        }
    }
    if has("bbr-only") && has("floor-read") {
        let _ = writeln!(
            s,
            "\nBody-based routing alone in the proxy (`root_id: bbr`, routing on the promoted header): its added \
             Envoy CPU over plain Envoy against the reading floor's (the do-nothing filter that reads the \
             body as the picker does), target within 1.5×:\n"
        );
        let _ = writeln!(s, "| Workers | Body | BBR alone req/s | BBR alone added Envoy CPU µs/req | reading floor added Envoy CPU µs/req | ratio | met? | floor added Envoy CPU µs/req |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|:---|---:|");
        for w in workers {
            for kib in bodies {
                let (Some(p), Some(b), Some(r)) = (
                    find(runs, *w, *kib, "plain"),
                    find(runs, *w, *kib, "bbr-only"),
                    find(runs, *w, *kib, "floor-read"),
                ) else {
                    continue;
                };
                let (bc, rc) = (b.added_envoy_cpu_us(p), r.added_envoy_cpu_us(p));
                let ratio = bc / rc;
                let floor = find(runs, *w, *kib, "floor")
                    .map_or(String::from("–"), |f| format!("{:.1}", f.added_envoy_cpu_us(p)));
                let _ = writeln!(
                    s,
                    "| {w} | {kib} KiB | {:.0} | {bc:.1} | {rc:.1} | {ratio:.2} | {} | {floor} |",
                    b.wrk.rps(),
                    if ratio <= 1.5 { "yes" } else { "**no**" },
                );
            }
        }
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

const CSV_HEADER: &str = "workers,body_kib,configuration,requests,seconds,rps,p50_us,p99_us,envoy_cpu_s,shim_cpu_s,nginx_cpu_s,socket_errors";

pub fn csv(runs: &[Run]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
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

/// Reads back what `csv` wrote (`source` names the file in errors), so the charts of a committed run can
/// be redrawn without Envoy.
pub fn parse_csv(text: &str, source: &str) -> Result<Vec<Run>, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == CSV_HEADER => {}
        other => {
            return Err(format!(
                "{source} line 1: expected the header {CSV_HEADER:?}, found {:?}",
                other.map_or("", |(_, l)| l)
            ))
        }
    }
    let columns: Vec<&str> = CSV_HEADER.split(',').collect();
    let mut runs = Vec::new();
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{source} line {}", i + 1);
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() != columns.len() {
            return Err(format!(
                "{at}: expected {} comma-separated fields, found {}",
                columns.len(),
                fields.len()
            ));
        }
        let cell = |name: &str| -> &str {
            columns.iter().position(|c| *c == name).and_then(|k| fields.get(k)).copied().unwrap_or("")
        };
        fn number<T: std::str::FromStr>(at: &str, name: &str, v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("{at}: {name} {v:?} is not a number"))
        }
        let num = |name: &str| number::<f64>(&at, name, cell(name));
        let count = |name: &str| number::<u64>(&at, name, cell(name));
        let (requests, rps) = (count("requests")?, num("rps")?);
        let key = cell("configuration");
        let gateway = Gateway::from_key(key).ok_or_else(|| {
            format!(
                "{at}: configuration {key:?} is none of plain, floor, floor-rr-N, floor-read, picker-N, \
                 ext_proc-N, baseline-N, bbr-only, bbr-picker-N, ext_proc-bbr-N"
            )
        })?;
        runs.push(Run {
            gateway,
            workers: number(&at, "workers", cell("workers"))?,
            body_kib: number(&at, "body_kib", cell("body_kib"))?,
            wrk: WrkResult {
                requests,
                // From the rps column rather than the seconds one: the charts show rps, and this way they
                // show the number the file states.
                seconds: if rps > 0.0 { requests as f64 / rps } else { num("seconds")? },
                p50_us: num("p50_us")?,
                p99_us: num("p99_us")?,
                // A run with non-2xx responses stops with an error, so a written cell had none.
                non_2xx: 0,
                socket_errors: count("socket_errors")?,
            },
            envoy_cpu_s: num("envoy_cpu_s")?,
            shim_cpu_s: num("shim_cpu_s")?,
            nginx_cpu_s: num("nginx_cpu_s")?,
        });
    }
    Ok(runs)
}

/// PNG charts of the cells the tables show, two per worker count, as (file name, PNG): req/s, and the
/// CPU per request each configuration adds over plain Envoy (for ext_proc, Envoy's plus the shim's).
pub fn charts(runs: &[Run]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut workers: Vec<usize> = runs.iter().map(|r| r.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    let mut out = Vec::new();
    for w in workers {
        let cells: Vec<&Run> = runs.iter().filter(|r| r.workers == w).collect();
        let mut bodies: Vec<usize> = cells.iter().map(|r| r.body_kib).collect();
        bodies.sort_unstable();
        bodies.dedup();
        let mut gateways: Vec<&Gateway> = Vec::new();
        for r in &cells {
            if !gateways.iter().any(|g| g.key() == r.gateway.key()) {
                gateways.push(&r.gateway);
            }
        }
        let groups: Vec<String> = bodies.iter().map(|kib| format!("{kib} KiB")).collect();
        // Each configuration keeps its colour in both charts, though the second has no plain Envoy bar.
        let colour = |k: usize| PALETTE.get(k % PALETTE.len()).copied();
        // One value per body for one configuration; NaN (no bar) where the run has no such cell.
        let per_body = |g: &Gateway, f: &dyn Fn(&Run, &Run) -> f64| -> Vec<f64> {
            bodies
                .iter()
                .map(|&kib| {
                    find(runs, w, kib, &g.key())
                        .and_then(|r| Some(f(r, plain_of(runs, r)?)))
                        .unwrap_or(f64::NAN)
                })
                .collect()
        };
        let workers_label = format!("Envoy with {w} worker{}", if w == 1 { "" } else { "s" });

        let throughput: Vec<BarSeries> = gateways
            .iter()
            .enumerate()
            .map(|(k, g)| BarSeries {
                name: g.label(),
                values: per_body(g, &|r, _| r.wrk.rps()),
                stacked: false,
                colour: colour(k),
            })
            .collect();
        let title = format!("Throughput, {workers_label} (higher is better)");
        out.push((
            format!("overhead-throughput-w{w}.png"),
            bar_chart(&title, "request body", "req/s", &groups, &throughput)?,
        ));

        let mut added = Vec::new();
        for (k, g) in gateways.iter().enumerate() {
            let values = per_body(g, &|r, p| r.added_envoy_cpu_us(p));
            match g {
                Gateway::Plain => continue,
                Gateway::ExtProc { endpoints } => {
                    let name = format!("ext_proc, {endpoints} endpoints: Envoy");
                    added.push(BarSeries { name, values, stacked: false, colour: colour(k) });
                    added.push(BarSeries {
                        name: String::from("+ epp-shim process (stacked)"),
                        values: per_body(g, &|r, _| r.shim_cpu_us()),
                        stacked: true,
                        colour: colour(gateways.len()),
                    });
                }
                Gateway::ExtProcBbr { endpoints } => {
                    let name =
                        format!("GIE shape (BBR + picker over ext_proc), {endpoints} endpoints: Envoy");
                    added.push(BarSeries { name, values, stacked: false, colour: colour(k) });
                    added.push(BarSeries {
                        name: String::from("+ its two epp-shim processes (stacked)"),
                        values: per_body(g, &|r, _| r.shim_cpu_us()),
                        stacked: true,
                        colour: colour(gateways.len() + 1),
                    });
                }
                _ => added.push(BarSeries { name: g.label(), values, stacked: false, colour: colour(k) }),
            }
        }
        let title = format!("Added CPU per request over plain Envoy, {workers_label} (lower is better)");
        out.push((
            format!("overhead-added-cpu-w{w}.png"),
            bar_chart(&title, "request body", "CPU µs/request", &groups, &added)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(gateway: Gateway, body_kib: usize, rps: f64, envoy_cpu_us: f64, shim_cpu_us: f64) -> Run {
        let requests = 10_000;
        Run {
            gateway,
            workers: 1,
            body_kib,
            wrk: WrkResult {
                requests,
                seconds: requests as f64 / rps,
                p50_us: 1000.0,
                p99_us: 3000.0,
                non_2xx: 0,
                socket_errors: 0,
            },
            envoy_cpu_s: envoy_cpu_us * requests as f64 / 1e6,
            shim_cpu_s: shim_cpu_us * requests as f64 / 1e6,
            nginx_cpu_s: 1.0,
        }
    }

    /// Plain Envoy at 8000 and 4000 req/s, the floor adding 16 and 20 µs of Envoy CPU over plain's 60
    /// and 100, the picker, and ext_proc with its shim's CPU.
    fn runs() -> Vec<Run> {
        let mut v = Vec::new();
        for (kib, plain_rps, plain_cpu, floor_added) in [(4, 8000.0, 60.0, 16.0), (220, 4000.0, 100.0, 20.0)]
        {
            v.push(run(Gateway::Plain, kib, plain_rps, plain_cpu, 0.0));
            v.push(run(Gateway::Floor, kib, plain_rps * 0.8, plain_cpu + floor_added, 0.0));
            v.push(run(Gateway::Picker { endpoints: 64 }, kib, plain_rps * 0.5, plain_cpu + 150.0, 0.0));
            v.push(run(Gateway::ExtProc { endpoints: 64 }, kib, plain_rps * 0.1, plain_cpu + 200.0, 100.0));
        }
        v
    }

    /// Per image column, how many pixels are `colour`; then the height of each separate bar, left to
    /// right (the legend swatch, 10 pixels tall, comes last).
    fn bar_heights(png_bytes: &[u8], colour: [u8; 3]) -> (u32, u32, Vec<usize>) {
        let mut reader = png::Decoder::new(png_bytes).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let width = info.width as usize;
        let mut columns = vec![0usize; width];
        for (i, px) in buf[..info.buffer_size()].chunks(3).enumerate() {
            if px == colour {
                columns[i % width] += 1;
            }
        }
        let mut heights = Vec::new();
        let mut previous = 0;
        for &n in &columns {
            if n > 0 && previous == 0 {
                heights.push(n);
            }
            previous = n;
        }
        (info.width, info.height, heights)
    }

    #[test]
    fn charts_are_drawn_from_the_table_cells() {
        let charts = charts(&runs()).unwrap();
        let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["overhead-throughput-w1.png", "overhead-added-cpu-w1.png"]);

        // Throughput: plain Envoy's bars (first colour) at 8000 and 4000 req/s, one twice the other.
        let (width, height, plain) = bar_heights(&charts[0].1, PALETTE[0]);
        assert_eq!(height, 600);
        assert!(width > 1000, "room for the plot and the legend: {width}");
        assert_eq!(plain.len(), 3, "two bars and the legend swatch: {plain:?}");
        assert!(plain[0].abs_diff(2 * plain[1]) <= 1 && plain[0] > 300, "{plain:?}");

        // Added CPU: no plain bar; the floor (second colour, as in the throughput chart) adds 16 µs
        // at 4 KiB and 20 µs at 220 KiB over plain, not its absolute 76 and 120 µs.
        let (_, _, plain) = bar_heights(&charts[1].1, PALETTE[0]);
        assert_eq!(plain, Vec::<usize>::new());
        let (_, _, floor) = bar_heights(&charts[1].1, PALETTE[1]);
        assert_eq!(floor.len(), 3, "{floor:?}");
        assert!((floor[1] as f64 / floor[0] as f64 - 20.0 / 16.0).abs() < 0.1, "{floor:?}");
        // ext_proc's Envoy share (200 µs) and its shim's (100 µs, stacked, the colour after the last
        // configuration's) are both drawn.
        let (_, _, ext_proc) = bar_heights(&charts[1].1, PALETTE[3]);
        let (_, _, shim) = bar_heights(&charts[1].1, PALETTE[4]);
        assert_eq!((ext_proc.len(), shim.len()), (3, 3));
        assert!(ext_proc[0].abs_diff(2 * shim[0]) <= 1, "{ext_proc:?} {shim:?}");
    }

    #[test]
    fn the_csv_reads_back_into_the_same_cells() {
        let written = csv(&runs());
        let read = parse_csv(&written, "overhead.csv").unwrap();
        assert_eq!(csv(&read), written);
        assert_eq!(read[7].gateway.key(), "ext_proc-64");

        let bad = written.replacen("picker-64", "picker-many", 1);
        let err = parse_csv(&bad, "overhead.csv").err().unwrap();
        assert!(err.contains("overhead.csv line 4") && err.contains("picker-many"), "{err}");
        assert!(parse_csv("workers,rps\n1,2\n", "x.csv").err().unwrap().contains("x.csv line 1"));
    }

    #[test]
    fn the_targets_compare_the_picker_with_both_floors_and_ext_proc_by_cpu_too() {
        let mut v = runs();
        // The reading floor adds 40 µs over plain's 60 at 4 KiB: 2.5× the floor's 16, and the picker's
        // 150 is 110 more.
        v.push(run(Gateway::FloorRead, 4, 5000.0, 100.0, 0.0));
        let md = markdown(&v, &[], &[], &[], "test", Duration::from_secs(1));
        let row = md.lines().find(|l| l.starts_with("| 1 | 4 KiB |")).unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // floor 16 µs, picker 150: 9.4× on CPU.
        assert_eq!(&cells[6..13], ["16.0", "150.0", "9.38", "**no**", "40.0", "2.50", "110.0"], "{row}");
        let row = md.lines().find(|l| l.starts_with("| 1 | 220 KiB |")).unwrap();
        assert!(row.ends_with("| – | – | – |"), "no reading floor at 220 KiB: {row}");
        // ext_proc at 220 KiB: 400 req/s vs the picker's 2000 (5×); CPU 300 + 100 vs 250.
        let row = md.lines().find(|l| l.starts_with("| 1 | 2000 |")).unwrap();
        assert_eq!(row, "| 1 | 2000 | 400 | 5.00 | yes | 250.0 | 400.0 | 1.60 |");
        assert!(!md.contains("Body-based routing"), "no bbr cells, no bbr tables");
    }

    #[test]
    fn the_bbr_targets_compare_both_shapes_and_the_router_with_the_reading_floor() {
        let mut v = runs();
        for (kib, plain_cpu) in [(4, 60.0), (220, 100.0)] {
            v.push(run(Gateway::FloorRead, kib, 5000.0, plain_cpu + 40.0, 0.0));
            // The router alone adds 50 µs (1.25× the reading floor's 40) at 4 KiB, 70 (1.75×) at 220.
            let bbr_added = if kib == 4 { 50.0 } else { 70.0 };
            v.push(run(Gateway::BbrOnly, kib, 5000.0, plain_cpu + bbr_added, 0.0));
            v.push(run(Gateway::BbrPicker { endpoints: 64 }, kib, 3000.0, plain_cpu + 160.0, 0.0));
            // GIE's shape: Envoy 100 µs over the ext_proc picker's, shims 900 at 220 KiB.
            let shims = if kib == 4 { 300.0 } else { 900.0 };
            v.push(run(Gateway::ExtProcBbr { endpoints: 64 }, kib, 300.0, plain_cpu + 300.0, shims));
        }
        let md = markdown(&v, &[], &[], &[], "test", Duration::from_secs(1));
        let cells = |prefix: &str| -> Vec<String> {
            let row = md.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}\n{md}"));
            row.split('|').map(|c| c.trim().to_string()).collect()
        };
        // 220 KiB: in-proxy 260 µs; GIE shape 400 + 900 = 1300: 5×, not met. BBR adds 10 in the proxy
        // (over picker-64's 250) and 1300 − (300 + 100) = 900 over ext_proc-64.
        let row = cells("| 1 | 220 KiB | 3000 |");
        assert_eq!(
            &row[6..14],
            ["260.0", "400.0", "900.0", "1300.0", "5.00", "**no**", "10.0", "900.0"],
            "{row:?}"
        );
        // At 4 KiB the ratio is shown, the target not judged.
        let row = cells("| 1 | 4 KiB | 3000 |");
        assert_eq!(&row[10..12], ["3.00", "–"], "{row:?}");
        // The router alone against the reading floor; the floor's own 16 and 20 µs for reference.
        let row = cells("| 1 | 4 KiB | 5000 |");
        assert_eq!(&row[4..9], ["50.0", "40.0", "1.25", "yes", "16.0"], "{row:?}");
        let row = cells("| 1 | 220 KiB | 5000 |");
        assert_eq!(&row[4..9], ["70.0", "40.0", "1.75", "**no**", "20.0"], "{row:?}");
    }
}
