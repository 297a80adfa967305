//! Model-server replicas for end-to-end tests: the real `model-sim` binary on free loopback ports.

use super::http::Request;
use super::process::Process;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// One running `model-sim`; stopped when dropped.
pub struct ModelSim {
    process: Process,
    addr: String,
    replica: String,
}

impl ModelSim {
    /// Starts a replica on a free loopback port with extra `model-sim` flags (`--help` lists them),
    /// waiting up to 20 s for it to listen.
    pub fn start(args: &[&str]) -> Result<ModelSim, String> {
        ModelSim::start_on_port(0, args)
    }

    /// Starts a replica on `port` of loopback (0: a free one), e.g. a new process in place of one that was
    /// killed, at the address the gateway already knows. Fails if the port cannot be bound.
    pub fn start_on_port(port: u16, args: &[&str]) -> Result<ModelSim, String> {
        let mut cmd = Command::new(model_sim_binary()?);
        cmd.args(["--port", &port.to_string()]).args(args);
        let mut process = Process::spawn("model-sim", cmd)?;
        let line = process.wait_for("its listening line", Duration::from_secs(20), |p| {
            p.log().lines().find(|l| l.starts_with("model-sim listening on http://")).map(str::to_string)
        })?;
        let rest = line.trim_start_matches("model-sim listening on http://");
        let mut parts = rest.split_whitespace();
        let addr = parts.next().unwrap_or_default().to_string();
        let replica = parts.next().and_then(|r| r.strip_prefix("replica=")).unwrap_or(&addr).to_string();
        Ok(ModelSim { process, addr, replica })
    }

    /// Starts `n` replicas, the `i`-th with `args(i)`. Sequential on purpose: see [`Process::spawn`].
    pub fn start_many(n: usize, args: impl Fn(usize) -> Vec<String>) -> Result<Vec<ModelSim>, String> {
        (0..n)
            .map(|i| {
                let a = args(i);
                ModelSim::start(&a.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect()
    }

    /// `127.0.0.1:PORT`, what the picker puts in the destination header.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The port it listens on (what [`ModelSim::start_on_port`] takes to start a successor there).
    pub fn port(&self) -> u16 {
        self.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0)
    }

    /// The `x-model-sim-replica` value it answers with (its address unless `--replica-name` was given).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Changes fault knobs at runtime, e.g. `{"metrics_hang": true}` (POST /admin/faults).
    pub fn set_faults(&self, json: &str) -> Result<(), String> {
        let r = Request::post_json("/admin/faults", json).timeout(Duration::from_secs(5)).send(&self.addr)?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{}: /admin/faults {json} answered {}: {}", self.replica, r.status, r.text()))
        }
    }

    /// The replica's own `/metrics` text.
    pub fn metrics(&self) -> Result<String, String> {
        let r = Request::get("/metrics").timeout(Duration::from_secs(5)).send(&self.addr)?;
        Ok(r.text())
    }
}

/// The `model-sim` executable: `$MODEL_SIM_BIN`, or built once per process with `cargo build -p model-sim`.
pub fn model_sim_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| crate::binaries::workspace_binary("model-sim", "model-sim", "MODEL_SIM_BIN")).clone()
}
