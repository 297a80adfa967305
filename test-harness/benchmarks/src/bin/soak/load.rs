//! The soak's traffic: open loop at a fixed rate (a request every `1 / rate` seconds whatever the answers,
//! each on its own thread), alternating between the two gateways, through a fixed mix of 25 kinds of
//! slot: ordinary completions and streams, streams the client closes after the first event, bodies that
//! are not JSON, compressed bodies, unknown models, and (every fourth round of the mix) a body over the
//! 4 MiB limit. Loopback only.

use crate::report::{Class, Sent, Via};
use e2e::Request;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A request without its whole answer after this long fails (model-sim answers in well under a second).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// The mix each gateway sees, slot by slot (`H` is a huge body every fourth round, else a completion).
const MIX: [Class; 25] = {
    use Class::{
        Cancel as X, Completion as C, Compressed as Z, Malformed as M, Stream as S, UnknownModel as U,
    };
    [C, S, C, S, C, X, C, S, M, C, S, U, C, S, Z, C, S, X, C, S, C, S, Class::Huge, C, S]
};

/// The class of request `i` and the gateway it goes through.
pub fn slot(i: u64) -> (Class, Via) {
    let via = if i.is_multiple_of(2) { Via::Filter } else { Via::Shim };
    let per_gateway = i / 2;
    let class = MIX[(per_gateway % MIX.len() as u64) as usize];
    let round = per_gateway / MIX.len() as u64;
    if class == Class::Huge && !round.is_multiple_of(4) {
        return (Class::Completion, via);
    }
    (class, via)
}

/// What the load thread shares with the sampler.
#[derive(Default)]
pub struct Counters {
    pub in_flight: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Load<'a> {
    pub rate: f64,
    pub length: Duration,
    pub filter: &'a str,
    pub shim: &'a str,
    pub start: Instant,
    pub results: &'a Mutex<Vec<Sent>>,
    pub counters: &'a Counters,
    pub stop: &'a AtomicBool,
}

impl<'a> Load<'a> {
    /// Sends until `length` (or `stop`), then returns; the requests' threads belong to `scope`.
    pub fn run<'scope>(&'scope self, scope: &'scope std::thread::Scope<'scope, '_>)
    where
        'a: 'scope,
    {
        let every = Duration::from_secs_f64(1.0 / self.rate);
        // Past the limit (4 MiB) by 64 KiB, still JSON: the limit answers, not the parser.
        let huge: Arc<Vec<u8>> = Arc::new(
            serde_json::json!({"model": MODEL, "prompt": "a".repeat(4 * 1024 * 1024 + 64 * 1024), "max_tokens": 4})
                .to_string()
                .into_bytes(),
        );
        let mut i: u64 = 0;
        loop {
            let due = every.mul_f64(i as f64);
            if due >= self.length || self.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = self.start.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
            let (class, via) = slot(i);
            let addr = match via {
                Via::Filter => self.filter,
                Via::Shim => self.shim,
            };
            let huge = Arc::clone(&huge);
            self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            scope.spawn(move || {
                let sent = self.start.elapsed();
                let outcome = send(class, i, addr, &huge);
                let done = self.start.elapsed();
                let (ok, detail) = match outcome {
                    Ok(()) => (true, String::new()),
                    Err(d) => (false, d),
                };
                let counter = if ok { &self.counters.ok } else { &self.counters.failed };
                counter.fetch_add(1, Ordering::Relaxed);
                self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                if let Ok(mut v) = self.results.lock() {
                    v.push(Sent { class, via, sent, done, ok, detail });
                }
            });
            i += 1;
        }
    }
}

/// Sends request `i` of `class`; `Err` says what was wrong with the answer.
fn send(class: Class, i: u64, addr: &str, huge: &[u8]) -> Result<(), String> {
    let prompt = format!("soak request {i}: tell me something about the number {}", i % 997);
    let request = match class {
        Class::Completion => Request::post_json(
            "/v1/completions",
            serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 16}).to_string(),
        ),
        Class::Stream => Request::post_json("/v1/chat/completions", chat(&prompt, 16, true)),
        Class::Cancel => return cancel(addr, &chat(&prompt, 256, true)),
        Class::Malformed => {
            Request::post_json("/v1/completions", format!(r#"{{"model": "{MODEL}", "prompt": "{prompt}"#))
        }
        Class::Huge => Request::post_json("/v1/completions", huge.to_vec()),
        Class::Compressed => {
            Request::post_json("/v1/completions", b"\x1f\x8b\x08\x00\x00\x00\x00\x00".to_vec())
                .header("content-encoding", "gzip")
        }
        Class::UnknownModel => Request::post_json(
            "/v1/completions",
            serde_json::json!({"model": "no-such-model", "prompt": prompt, "max_tokens": 4}).to_string(),
        ),
    };
    let reply = request.timeout(CLIENT_TIMEOUT).send(addr).map_err(|e| format!("no reply: {e}"))?;
    let expected = class.expected_status();
    if reply.status != expected {
        let text = reply.text();
        let head: String = text.chars().take(120).collect();
        return Err(format!("{} (expected {expected}): {head}", reply.status));
    }
    if reply.truncated {
        return Err(format!("{} truncated after {} bytes", reply.status, reply.body.len()));
    }
    if class == Class::Stream && reply.sse_data().last().map(String::as_str) != Some("[DONE]") {
        return Err(format!("200 stream without [DONE] ({} bytes)", reply.body.len()));
    }
    Ok(())
}

fn chat(prompt: &str, max_tokens: u32, stream: bool) -> String {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    .to_string()
}

/// A stream the client gives up on: reads the status line and the first body bytes, then closes the
/// connection with the generation still running.
fn cancel(addr: &str, body: &str) -> Result<(), String> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let sock: SocketAddr = addr.parse().map_err(|e| format!("bad address {addr}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&sock, CLIENT_TIMEOUT).map_err(|e| format!("no reply: connect: {e}"))?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("no reply: send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no first event within {CLIENT_TIMEOUT:?} ({} bytes)", raw.len()));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("closed before the first event ({} bytes)", raw.len())),
            Ok(n) => raw.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) => return Err(format!("read: {e} ({} bytes)", raw.len())),
        }
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let status = std::str::from_utf8(raw.get(..end).unwrap_or_default())
            .ok()
            .and_then(|h| h.split(' ').nth(1)?.parse::<u16>().ok());
        if status != Some(200) {
            let text = String::from_utf8_lossy(&raw);
            return Err(format!("{status:?} (expected 200): {}", text.chars().take(160).collect::<String>()));
        }
        if raw.windows(5).any(|w| w == b"data:") {
            // Dropping the stream closes the connection mid-generation.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_gateways_get_every_class_and_huge_bodies_are_rare() {
        let mut seen = std::collections::HashMap::new();
        for i in 0..400 {
            *seen.entry(slot(i)).or_insert(0) += 1;
        }
        for class in Class::ALL {
            for via in [Via::Filter, Via::Shim] {
                assert!(seen.get(&(class, via)).copied().unwrap_or(0) > 0, "{class:?} via {via:?}");
            }
        }
        // 400 requests: 200 per gateway, 8 rounds of the mix, a huge body in rounds 0 and 4.
        assert_eq!(seen[&(Class::Huge, Via::Filter)], 2);
        assert_eq!(seen[&(Class::Cancel, Via::Shim)], 16);
    }
}
