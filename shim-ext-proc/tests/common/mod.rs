//! Shared by the integration tests: start model-sim replicas and the epp-shim binary as child
//! processes on free ports, read the addresses they print, and plain HTTP GETs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    /// The `listening on` lines it printed, in order.
    pub lines: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// The address printed on the line that starts with `prefix` (e.g. `epp-shim ext_proc`).
    pub fn addr(&self, prefix: &str) -> SocketAddr {
        let line =
            self.lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} line"));
        let url = line.split("://").nth(1).unwrap();
        url.split_whitespace().next().unwrap().parse().unwrap()
    }
}

fn spawn(mut cmd: Command, lines: usize) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut got = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "process exited before printing where it listens; got {got:?}");
        got.push(line.trim().to_string());
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    Proc { child, lines: got }
}

fn target_dir() -> PathBuf {
    // target/debug/deps/<test binary> → target/debug
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds model-sim once per test binary (a no-op when it is up to date) and returns its path.
pub fn model_sim_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "model-sim"])
            .status()
            .expect("run cargo build -p model-sim");
        assert!(status.success(), "cargo build -p model-sim failed");
        target_dir().join("model-sim")
    })
    .clone()
}

/// One model-sim replica on a free loopback port, 100x faster than real time.
pub fn model_sim(extra: &[&str]) -> Proc {
    let mut cmd = Command::new(model_sim_bin());
    cmd.args(["--port", "0", "--time-scale", "0.01", "--default-output-tokens", "8"]).args(extra);
    spawn(cmd, 1)
}

/// epp-shim with the given configuration file and flags, every port free; waits for its three
/// (or, collector-only, two) listening lines.
pub fn epp_shim(config_json: &str, extra: &[&str]) -> (Proc, tempdir::Dir) {
    let dir = tempdir::Dir::new("epp-shim");
    let path = dir.path.join("config.json");
    std::fs::write(&path, config_json).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_epp-shim"));
    cmd.args(["--config", path.to_str().unwrap(), "--host", "127.0.0.1"])
        .args(["--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0", "--log-level", "warn"])
        .args(extra);
    let lines = if extra.contains(&"--collector-only") { 2 } else { 3 };
    (spawn(cmd, lines), dir)
}

/// A scratch directory removed on drop (no extra crate for it).
pub mod tempdir {
    use std::path::PathBuf;

    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A blocking HTTP/1.1 request; returns (status, headers lower-cased, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
