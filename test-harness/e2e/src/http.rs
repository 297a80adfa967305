//! A blocking HTTP/1.1 client over std's TcpStream: one request per connection, every step under a
//! deadline, and a reply that says how it ended (a cut stream is data, not an error).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One request; build with [`Request::post_json`] / [`Request::get`] and send with [`Request::send`].
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Headers whose values are bytes, not text (obs-text a client may send), written after `headers`.
    pub raw_headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Bound on the whole exchange (connect, send, read to the end).
    pub timeout: Duration,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: String::from("GET"),
            path: path.to_string(),
            headers: Vec::new(),
            raw_headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn post_json(path: &str, body: impl Into<Vec<u8>>) -> Request {
        Request { method: String::from("POST"), body: body.into(), ..Request::get(path) }
            .header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A header whose value is arbitrary bytes (e.g. not UTF-8).
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Request {
        self.raw_headers.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// Sends to `addr` (`ip:port`) and reads the reply to its end. Errors only when no status line
    /// arrived at all (refused, reset before answering, timeout).
    pub fn send(&self, addr: &str) -> Result<Response, String> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let sock: SocketAddr = addr.parse().map_err(|e| format!("bad address {addr:?}: {e}"))?;
        let mut stream = TcpStream::connect_timeout(&sock, self.timeout)
            .map_err(|e| format!("{} {} to {addr}: connect: {e}", self.method, self.path))?;
        let _ = stream.set_nodelay(true);
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.method,
            self.path,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut head = head.into_bytes();
        for (k, v) in &self.raw_headers {
            head.extend_from_slice(k.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        // A server may answer before reading the whole body (Envoy's 413 past its buffer limit) and close
        // the connection, failing the rest of the write: read the reply anyway, as HTTP clients do.
        let write_error = stream
            .set_write_timeout(Some(self.timeout))
            .and_then(|()| stream.write_all(&head))
            .and_then(|()| stream.write_all(&self.body))
            .err()
            .map(|e| format!("{} {} to {addr}: send: {e}", self.method, self.path));

        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let mut timed_out = false;
        let mut first_body = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                break;
            }
            let _ = stream.set_read_timeout(Some(left));
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(buf.get(..n).unwrap_or_default());
                    if first_body.is_none() && body_started(&raw) {
                        first_body = Some(started.elapsed());
                    }
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    timed_out = true;
                    break;
                }
                // A reset after (part of) the reply: keep what arrived.
                Err(_) => break,
            }
        }
        let mut response = Response::parse(&raw, started.elapsed(), timed_out);
        if let Some(r) = response.as_mut() {
            r.first_body = first_body;
        }
        response.ok_or_else(|| {
            write_error.unwrap_or_else(|| {
                format!(
                    "{} {} to {addr}: no HTTP reply ({} bytes{})",
                    self.method,
                    self.path,
                    raw.len(),
                    if timed_out { format!(", timed out after {:?}", self.timeout) } else { String::new() }
                )
            })
        })
    }
}

/// What came back.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The body ended early: connection closed or timed out before `content-length` bytes or the final
    /// chunk.
    pub truncated: bool,
    pub elapsed: Duration,
    /// When the first byte after the header block arrived (for SSE: the first event, i.e. the time to
    /// first token as a client sees it); `None` for an empty body.
    pub first_body: Option<Duration>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of a `text/event-stream` body, in order (`[DONE]` included).
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .flat_map(|event| {
                event.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string())
            })
            .collect()
    }

    fn parse(raw: &[u8], elapsed: Duration, timed_out: bool) -> Option<Response> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(raw.get(..end)?).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = raw.get(end + 4..)?;
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let (body, complete) = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            dechunk(rest)
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            (rest.get(..len.min(rest.len()))?.to_vec(), rest.len() >= len)
        } else {
            (rest.to_vec(), !timed_out)
        };
        Some(Response { status, headers, body, truncated: !complete, elapsed, first_body: None })
    }
}

/// True once `raw` holds the whole header block and at least one byte after it.
fn body_started(raw: &[u8]) -> bool {
    raw.windows(4).position(|w| w == b"\r\n\r\n").is_some_and(|end| raw.len() > end + 4)
}

/// Decodes a chunked body; the flag says whether the terminating zero-size chunk arrived.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return (body, false) };
        let size_text = String::from_utf8_lossy(rest.get(..eol).unwrap_or_default()).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
            return (body, false);
        };
        if size == 0 {
            return (body, true);
        }
        let Some(chunk) = rest.get(eol + 2..eol + 2 + size) else {
            body.extend_from_slice(rest.get(eol + 2..).unwrap_or_default());
            return (body, false);
        };
        body.extend_from_slice(chunk);
        rest = rest.get(eol + 2 + size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_reply_with_and_without_its_last_chunk() {
        let whole =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let r = Response::parse(whole, Duration::ZERO, false).unwrap();
        assert_eq!((r.status, r.text().as_str(), r.truncated), (200, "hello world", false));
        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n wo";
        let r = Response::parse(cut, Duration::ZERO, false).unwrap();
        assert_eq!((r.text().as_str(), r.truncated), ("hello wo", true));
    }

    #[test]
    fn content_length_and_sse_payloads() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 29\r\nX-A: b\r\n\r\ndata: {\"a\":1}\n\ndata: [DONE]\n\n";
        let r = Response::parse(raw, Duration::ZERO, false).unwrap();
        assert_eq!(r.header("x-a"), Some("b"));
        assert!(!r.truncated);
        assert_eq!(r.sse_data(), vec!["{\"a\":1}", "[DONE]"]);
        let short = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\n\r\nabc";
        assert!(Response::parse(short, Duration::ZERO, false).unwrap().truncated);
        assert!(Response::parse(b"HTTP/1.1 200", Duration::ZERO, false).is_none());
    }
}
