//! The model servers stand-in: one nginx listening on many loopback ports, answering every POST at once
//! with a small chat completion and `/metrics` with a static vLLM exposition, so the picker's pool is made of
//! real addresses that cost next to nothing to serve.

use e2e::Process;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A chat completion as a model server would answer a 16-token request (about 400 bytes).
const COMPLETION: &str = r#"{"id":"cmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog again and again."},"finish_reason":"length"}],"usage":{"prompt_tokens":1024,"completion_tokens":16,"total_tokens":1040}}"#;

/// What a lightly loaded vLLM replica exposes: the gauges the scheduling core reads, and its cache layout.
pub const METRICS: &str = "# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{model_name=\"m\"} 0.0\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{model_name=\"m\"} 3.0\n\
# TYPE vllm:kv_cache_usage_perc gauge\n\
vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n\
# TYPE vllm:cache_config_info gauge\n\
vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"8192\"} 1.0\n";

pub struct Backend {
    process: Process,
    ports: Vec<u16>,
    _dir: PathBuf,
}

impl Backend {
    /// Starts nginx on `count` free loopback ports and waits until the last one accepts connections.
    pub fn start(count: usize, dir: &Path) -> Result<Backend, String> {
        std::fs::create_dir_all(dir.join("body"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ports = free_ports(count)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(&ports, dir))
            .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        // Debian puts nginx in /usr/sbin, which is not on every user's PATH.
        let sbin = Path::new("/usr/sbin/nginx");
        let mut cmd = Command::new(if sbin.exists() { sbin } else { Path::new("nginx") });
        cmd.arg("-p").arg(dir).arg("-c").arg(&conf).args(["-e", "stderr"]);
        let mut process = Process::spawn("nginx", cmd)?;
        let last = ports.last().copied().ok_or("no ports asked for")?;
        process.wait_for("nginx listening", Duration::from_secs(10), |_| {
            std::net::TcpStream::connect(("127.0.0.1", last)).ok().map(|_| ())
        })?;
        Ok(Backend { process, ports, _dir: dir.to_path_buf() })
    }

    /// `127.0.0.1:PORT` for the first `n` ports.
    pub fn addrs(&self, n: usize) -> Vec<String> {
        self.ports.iter().take(n).map(|p| format!("127.0.0.1:{p}")).collect()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

/// Ports the kernel hands out, all held at once so none repeats, released just before nginx binds them.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}")))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| format!("cannot read a port: {e}")))
        .collect()
}

fn config(ports: &[u16], dir: &Path) -> String {
    let listens: String = ports.iter().map(|p| format!("    listen 127.0.0.1:{p};\n")).collect();
    // One process (no master): killing it stops everything, and the benchmark's processes stay countable.
    format!(
        "daemon off;\nmaster_process off;\nworker_rlimit_nofile 65536;\npid {pid};\n\
events {{ worker_connections 16384; }}\n\
http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
  client_body_temp_path {body};\n  client_max_body_size 8m;\n  client_body_buffer_size 1m;\n\
  server {{\n{listens}\
    location = /metrics {{ default_type text/plain; return 200 '{metrics}'; }}\n\
    location / {{ default_type application/json; return 200 '{completion}'; }}\n  }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        body = dir.join("body").display(),
        metrics = METRICS,
        completion = COMPLETION,
    )
}
