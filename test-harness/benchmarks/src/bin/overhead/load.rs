//! The load side: chat bodies of an exact size, wrk driving them through a Lua script whose `done` hook
//! prints the numbers in one parseable line, and per-process CPU time and RSS read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A chat request whose serialized form is exactly `size` bytes: a system prompt and a user turn of
/// generated words (text, so the picker's prefix hashing sees prompt-like input).
pub fn chat_body(size: usize) -> String {
    let head = r#"{"model":"m","max_tokens":16,"stream":false,"messages":[{"role":"system","content":""#;
    let mid = r#""},{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let text_len = size.saturating_sub(head.len() + mid.len() + tail.len());
    let text = words(text_len);
    let (system, user) = text.split_at(text_len * 3 / 4);
    format!("{head}{system}{mid}{user}{tail}")
}

/// `len` bytes of lower-case words separated by spaces, the same on every run (a fixed LCG).
fn words(len: usize) -> String {
    const WORDS: [&str; 16] = [
        "the", "model", "serves", "tokens", "while", "prefix", "cache", "blocks", "stay", "warm", "across",
        "requests", "so", "latency", "drops", "again",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let word = WORDS.get((state >> 60) as usize).copied().unwrap_or("x");
        out.push_str(word);
        out.push(' ');
    }
    out.truncate(len);
    out
}

/// What one wrk run measured.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The Lua script for a body file: POST it on every request, report in one `overhead-result` line.
pub fn write_script(body_file: &Path) -> Result<PathBuf, String> {
    let script = format!(
        r#"wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("overhead-result requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"#,
        body = body_file.display()
    );
    let path = body_file.with_extension("lua");
    std::fs::write(&path, script).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs wrk against `addr` for `duration` with `connections` keep-alive connections on 2 threads.
pub fn wrk(addr: &str, script: &Path, connections: usize, duration: Duration) -> Result<WrkResult, String> {
    let secs = duration.as_secs().max(1);
    let out = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/v1/chat/completions"))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("overhead-result ")).ok_or_else(|| {
        format!(
            "wrk ({}) printed no result line:\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    parse_result(line).ok_or_else(|| format!("cannot read wrk's result line {line:?}"))
}

fn parse_result(line: &str) -> Option<WrkResult> {
    let field = |name: &str| -> Option<f64> {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some(WrkResult {
        requests: field("requests")? as u64,
        seconds: field("duration_us")? / 1e6,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        non_2xx: field("non2xx")? as u64,
        socket_errors: field("socket_errors")? as u64,
    })
}

/// User + system CPU time of a process (all its threads) in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces): state is the first, utime the 12th.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or("unexpected /proc/<pid>/stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or("short /proc/<pid>/stat");
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_exact_size_and_are_json_chat_requests() {
        for size in [4096, 128 * 1024, 220 * 1024] {
            let body = chat_body(size);
            assert_eq!(body.len(), size);
            assert!(body.starts_with(r#"{"model":"m""#) && body.ends_with(r#""}]}"#));
            assert_eq!(body.matches(r#""role":"#).count(), 2);
        }
    }

    #[test]
    fn reads_the_result_line_of_the_lua_hook() {
        let r = parse_result(
            "overhead-result requests=50000 duration_us=10000000 p50_us=812.0 p99_us=2400.5 non2xx=0 socket_errors=1",
        )
        .unwrap();
        assert_eq!((r.requests, r.non_2xx, r.socket_errors), (50_000, 0, 1));
        assert_eq!(r.rps(), 5000.0);
        assert_eq!((r.p50_us, r.p99_us), (812.0, 2400.5));
        assert!(parse_result("overhead-result requests=1").is_none());
    }
}
