//! `overhead --attribute`: where each configuration's Envoy CPU goes per request, sampled with
//! `perf record --call-graph dwarf` while wrk drives it. Envoy's binary is stripped but unwinds through
//! its `.eh_frame`; V8's generated code has no unwind data, so a stack that ends in generated code is the
//! module's own work (or a V8 trampoline), and one with generated code below an Envoy or kernel leaf is a
//! host function the module called.

use crate::gateway::{Gateway, Running};
use crate::load;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// perf's sampling frequency: each sample stands for 1/999 s of CPU.
const HZ: u64 = 999;

/// Samples of one configuration, by where they landed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Samples {
    /// In V8-generated code: the module (and its trampolines).
    pub module: u64,
    /// In Envoy, libc or the kernel, called from generated code: host functions.
    pub host: u64,
    /// In the kernel, not under a host function.
    pub kernel: u64,
    /// Everywhere else: Envoy's own work.
    pub envoy: u64,
}

impl Samples {
    fn total(&self) -> u64 {
        self.module + self.host + self.kernel + self.envoy
    }
}

pub struct Attribution {
    pub gateway: Gateway,
    pub requests: u64,
    pub samples: Samples,
}

impl Attribution {
    fn per_request_us(&self, samples: u64) -> f64 {
        if self.requests == 0 {
            return f64::NAN;
        }
        samples as f64 * 1e6 / HZ as f64 / self.requests as f64
    }
}

/// `perf` is on the PATH (whether it may sample this process shows when `perf record` starts).
pub fn check_perf() -> Result<(), String> {
    match Command::new("perf").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(String::from(
            "--attribute needs perf (Debian: apt-get install linux-perf; `cargo xtask bench overhead -- \
             --attribute` installs it)",
        )),
    }
}

/// Drives `running` with wrk for `duration` while perf samples its Envoy; requests come from Envoy's
/// admin counter over the same window.
pub fn measure(
    gateway: &Gateway,
    running: &Running,
    script: &Path,
    connections: usize,
    duration: Duration,
    work: &Path,
) -> Result<Attribution, String> {
    const REQUESTS: &str = "http.gateway.downstream_rq_total";
    let data = work.join(format!("perf-{}.data", gateway.key()));
    let before = running.envoy.stat(REQUESTS).ok_or("Envoy's admin did not answer")?;
    let perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", &HZ.to_string(), "--call-graph", "dwarf,16384", "-p"])
        .arg(running.envoy_pid().to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start perf: {e}"))?;
    // perf attaches in well under a second; wrk's window is the measured one.
    std::thread::sleep(Duration::from_millis(500));
    let wrk = load::wrk(running.envoy.listener(), script, connections, duration);
    let after = running.envoy.stat(REQUESTS);
    // SIGINT makes perf write its file and exit.
    let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
    let out = perf.wait_with_output().map_err(|e| format!("perf: {e}"))?;
    wrk?;
    if !out.status.success() && !data.exists() {
        return Err(format!(
            "perf record failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let requests = after.ok_or("Envoy's admin did not answer")?.saturating_sub(before);
    let samples = classify_perf_script(&data)?;
    Ok(Attribution { gateway: gateway.clone(), requests, samples })
}

fn classify_perf_script(data: &Path) -> Result<Samples, String> {
    let mut child = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start perf script: {e}"))?;
    let out = child.stdout.take().ok_or("perf script gave no output")?;
    let samples = classify(BufReader::new(out).lines().map_while(Result::ok));
    child.wait().map_err(|e| format!("perf script: {e}"))?;
    Ok(samples)
}

/// Where a frame's code lives, from the `(dso)` that ends each frame line of `perf script`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    Generated,
    Kernel,
    Native,
}

fn frame_kind(line: &str) -> Where {
    let dso = line.rsplit_once('(').map_or("", |(_, d)| d.trim_end_matches(')'));
    // V8 code: a perf map perf could not read (`/tmp/perf-<pid>.map`), or no mapping at all.
    if (dso.starts_with("/tmp/perf-") && dso.ends_with(".map")) || dso == "unknown" {
        Where::Generated
    } else if dso == "[kernel.kallsyms]" {
        Where::Kernel
    } else {
        Where::Native
    }
}

/// Counts `perf script` samples (a header line, then one frame per line, leaf first; blank between).
pub fn classify(lines: impl Iterator<Item = String>) -> Samples {
    let mut out = Samples::default();
    let mut frames: Vec<Where> = Vec::new();
    let mut in_sample = false;
    let flush = |frames: &mut Vec<Where>, out: &mut Samples| {
        if let Some((&leaf, callers)) = frames.split_first() {
            let under_generated = callers.contains(&Where::Generated);
            match leaf {
                Where::Generated => out.module += 1,
                _ if under_generated => out.host += 1,
                Where::Kernel => out.kernel += 1,
                Where::Native => out.envoy += 1,
            }
        }
        frames.clear();
    };
    for line in lines {
        if line.trim().is_empty() {
            flush(&mut frames, &mut out);
            in_sample = false;
        } else if !in_sample {
            in_sample = true; // the sample's header: comm, pid, time, event
        } else {
            frames.push(frame_kind(&line));
        }
    }
    flush(&mut frames, &mut out);
    out
}

/// The attribution table, each configuration per request and its difference to the first.
pub fn markdown(runs: &[Attribution], kib: usize, workers: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nEnvoy CPU per request (µs, sampled by perf at {HZ} Hz), {kib} KiB body, {workers} worker{}:\n",
        if workers == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        s,
        "| Configuration | requests | module code | host functions | Envoy outside the module | kernel | total |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    let Some(first) = runs.first() else { return s };
    let parts = |a: &Attribution| {
        let x = &a.samples;
        [x.module, x.host, x.envoy, x.kernel, x.total()].map(|n| a.per_request_us(n))
    };
    let base = parts(first);
    for a in runs {
        let p = parts(a);
        let cells: Vec<String> = p.iter().map(|v| format!("{v:.1}")).collect();
        let _ = writeln!(s, "| {} | {} | {} |", a.gateway.label(), a.requests, cells.join(" | "));
    }
    for a in runs.iter().skip(1) {
        let p = parts(a);
        let cells: Vec<String> = p.iter().zip(base).map(|(v, b)| format!("{:+.1}", v - b)).collect();
        let _ =
            writeln!(s, "| {} − {} | | {} |", a.gateway.label(), first.gateway.label(), cells.join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
envoy  9552 15041.811355:    1001001 cpu-clock: 
\t         5b4f53f [unknown] (/opt/envoy/bin/envoy)
\t         207d11b [unknown] (/opt/envoy/bin/envoy)
\t           27249 __libc_start_call_main+0x79 (/usr/lib/x86_64-linux-gnu/libc.so.6)

wrk:worker_0  9552 15041.815429:    1001001 cpu-clock: 
\t    2e81c813395e [unknown] (/tmp/perf-9552.map)

wrk:worker_0  9552 15041.816434:    1001001 cpu-clock: 
\t          108f36 __memcpy_avx512_unaligned_erms+0x56 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t         2f84a27 [unknown] (/opt/envoy/bin/envoy)
\t         2facd34 [unknown] (/opt/envoy/bin/envoy)
\t    2e81c813395e [unknown] (/tmp/perf-9552.map)

wrk:worker_0  9552 15041.817434:    1001001 cpu-clock: 
\tffffffff82200ff1 _raw_spin_unlock_irq+0x11 ([kernel.kallsyms])
\tffffffff8172f96d do_epoll_wait+0x3fd ([kernel.kallsyms])
\t          108f36 epoll_wait+0x56 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t         5b504fc [unknown] (/opt/envoy/bin/envoy)

wrk:worker_0  9552 15041.818434:    1001001 cpu-clock: 
\tffffffff82200ff1 asm_sysvec_reschedule_ipi+0x16 ([kernel.kallsyms])
\t    2e81c813395e [unknown] (/tmp/perf-9552.map)
";

    #[test]
    fn samples_are_sorted_by_where_the_leaf_is_and_what_called_it() {
        let s = classify(SCRIPT.lines().map(String::from));
        // Module: the generated-code leaf. Host: libc under generated code, and the kernel interrupting
        // it. Kernel: epoll from Envoy's loop. Envoy: the main loop's own frame.
        assert_eq!(s, Samples { module: 1, host: 2, kernel: 1, envoy: 1 });
    }

    #[test]
    fn the_table_gives_per_request_costs_and_differences() {
        let run = |gateway, module, host| Attribution {
            gateway,
            requests: 999,
            samples: Samples { module, host, kernel: 10, envoy: 50 },
        };
        let md = markdown(
            &[
                run(Gateway::FloorRoundRobin { endpoints: 64 }, 1, 2),
                run(Gateway::Picker { endpoints: 64 }, 17, 11),
            ],
            4,
            1,
        );
        // 999 samples at 999 Hz over 999 requests: one sample is 1000/999 ≈ 1.0 µs per request.
        assert!(md.contains("| picker, 64 endpoints | 999 | 17.0 | 11.0 | 50.1 | 10.0 | 88.2 |"), "{md}");
        assert!(md.contains("| +16.0 | +9.0 | +0.0 | +0.0 | +25.1 |"), "{md}");
    }
}
