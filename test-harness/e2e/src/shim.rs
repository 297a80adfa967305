//! The ext_proc shim for end-to-end tests: the real `epp-shim` binary on free loopback ports.

use super::process::Process;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// One running `epp-shim`; stopped when dropped.
pub struct EppShim {
    process: Process,
    config: PathBuf,
    /// `what` → `ip:port`, from its `epp-shim <what> listening on <scheme>://<ip:port>` lines.
    listening: Vec<(String, String)>,
}

impl EppShim {
    /// Starts `epp-shim --config <config_json> --host 127.0.0.1` with every port 0 and `extra` flags
    /// (`epp-shim --help` lists them), waiting up to 30 s until each of its servers says where it listens
    /// (`http` and `health`, and `ext_proc` unless `--collector-only`).
    pub fn start(config_json: &str, extra: &[&str]) -> Result<EppShim, String> {
        let config = crate::process::scratch_path("epp-shim", "json")?;
        std::fs::write(&config, config_json)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let mut cmd = Command::new(epp_shim_binary()?);
        cmd.arg("--config")
            .arg(&config)
            .args([
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--grpc-health-port",
                "0",
                "--metrics-port",
                "0",
            ])
            .args(["--log-level", "warn"])
            .args(extra);
        let mut process = Process::spawn("epp-shim", cmd)?;
        let servers: &[&str] = if extra.contains(&"--collector-only") {
            &["http", "health"]
        } else {
            &["http", "health", "ext_proc"]
        };
        let listening = process.wait_for("its listening lines", Duration::from_secs(30), |p| {
            let found: Vec<(String, String)> = p
                .log()
                .lines()
                .filter_map(|l| {
                    let (what, url) = l.strip_prefix("epp-shim ")?.split_once(" listening on ")?;
                    Some((what.to_string(), url.split_once("://")?.1.trim().to_string()))
                })
                .collect();
            servers.iter().all(|s| found.iter().any(|(w, _)| w == s)).then_some(found)
        })?;
        Ok(EppShim { process, config, listening })
    }

    /// `ip:port` of the server `what` (`ext_proc`, `health` or `http`); empty when it has none.
    pub fn addr(&self, what: &str) -> &str {
        self.listening.iter().find(|(w, _)| w == what).map_or("", |(_, a)| a.as_str())
    }

    /// Where Envoy's ext_proc filter connects (TLS unless started with `--plaintext`).
    pub fn ext_proc(&self) -> &str {
        self.addr("ext_proc")
    }

    pub fn process(&self) -> &Process {
        &self.process
    }
}

impl Drop for EppShim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The `epp-shim` executable: `$EPP_SHIM_BIN`, or built once per process with `cargo build -p epp-shim`.
pub fn epp_shim_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| crate::binaries::workspace_binary("epp-shim", "epp-shim", "EPP_SHIM_BIN")).clone()
}
