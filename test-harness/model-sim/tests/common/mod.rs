//! What the integration tests share: the real `model-sim` binary on loopback ports, spoken to with plain
//! HTTP/1.1 the way a gateway would.
// Each test file uses a different part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running replica; killed when the test ends, pass or fail.
pub struct Replica {
    child: Child,
    pub port: u16,
    /// The `--control-port` listener, when started with one.
    pub control_port: Option<u16>,
}

/// The port after `key` in the listening line, e.g. `http://127.0.0.1:`.
fn port_after(line: &str, key: &str) -> Option<u16> {
    line.split(key).nth(1).and_then(|rest| rest.split_whitespace().next()).and_then(|p| p.parse().ok())
}

impl Replica {
    pub fn start(args: &[&str]) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_model-sim"))
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn model-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = port_after(&line, "listening on http://127.0.0.1:")
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        let control_port = port_after(&line, "control=http://127.0.0.1:");
        Replica { child, port, control_port }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.send(method, path, body, Duration::from_secs(20))
    }

    pub fn send(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Reply {
        send_to(self.port, method, path, body, timeout)
    }

    /// A request to the `--control-port` listener.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        send_to(
            self.control_port.expect("started with --control-port"),
            method,
            path,
            body,
            Duration::from_secs(20),
        )
    }

    pub fn metrics(&self) -> String {
        let r = self.request("GET", "/metrics", None);
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

/// One request on a fresh connection (`connection: close`); what arrived before `timeout` is the reply.
pub fn send_to(port: u16, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    // A cut connection ends the read early; what arrived until then is the reply.
    let _ = s.read_to_end(&mut raw);
    Reply::parse(&raw)
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A chunked body ended without its terminating chunk (connection cut).
    pub truncated: bool,
}

impl Reply {
    pub fn parse(raw: &[u8]) -> Reply {
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            // Nothing (or not even a full header) came back: status 0.
            return Reply { status: 0, headers: Vec::new(), body: raw.to_vec(), truncated: true };
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = &raw[split + 4..];
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        if !chunked {
            return Reply { status, headers, body: rest.to_vec(), truncated: false };
        }
        let (mut body, mut pos, mut truncated) = (Vec::new(), 0, true);
        while let Some(eol) = rest[pos..].windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[pos..pos + eol]).unwrap(), 16).unwrap();
            pos += eol + 2;
            if size == 0 {
                truncated = false;
                break;
            }
            if pos + size > rest.len() {
                break;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        Reply { status, headers, body, truncated }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn events(&self) -> Vec<String> {
        let text = String::from_utf8(self.body.clone()).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {e:?}")).to_string()
            })
            .collect()
    }
}

/// Value of the first sample of `name` in exposition text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub const FAST: [&str; 2] = ["--time-scale", "0.1"];
