//! Making sure the tools a step needs are present, installing what a fresh machine lacks.

use crate::cmd::step;
use std::process::Command;

pub const WASM_TARGET: &str = "wasm32-wasip1";

/// Adds the `wasm32-wasip1` target through rustup when the active toolchain lacks it.
pub fn ensure_wasm_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup is needed to add the {WASM_TARGET} target: {e}"))?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    step("install wasm target", Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Node.js runs the core's Wasm test binaries (its built-in WASI preview 1).
pub fn require_node() -> Result<(), String> {
    let out = Command::new("node").arg("--version").output().map_err(|e| {
        format!("Node.js (>= 20) is needed to run the Wasm build of the core's tests, but `node` failed: {e}")
    })?;
    let version = String::from_utf8_lossy(&out.stdout);
    let major: u32 =
        version.trim().trim_start_matches('v').split('.').next().unwrap_or("0").parse().unwrap_or(0);
    if major < 20 {
        return Err(format!("Node.js >= 20 is needed for WASI preview 1, found {}", version.trim()));
    }
    Ok(())
}
