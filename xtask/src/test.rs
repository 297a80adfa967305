//! `cargo xtask test`: what CI runs. Each step is a function so later parts (Wasm builds, Envoy
//! validation, end-to-end tests) slot in as further steps.

use crate::cmd::{cargo, have, step, target_dir, workspace_root};
use crate::tools::{ensure_cargo_deny, ensure_envoy, ensure_wasm_target, require_node, WASM_TARGET};

pub fn run(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`cargo xtask test` takes no arguments, got {a:?}"));
    }
    fmt_check()?;
    licenses_and_bans()?;
    clippy()?;
    filter_clippy_wasm()?;
    // Before the tests: the end-to-end tests use the Envoy this installs.
    envoy_configs()?;
    // Every Kubernetes manifest against the real CRDs and Kubernetes' schemas (installs kubernetes-validate).
    crate::k8s::validate_all()?;
    // The NGINX end-to-end tests run Debian's NGINX and njs (installed here when missing).
    crate::tools::ensure_nginx_njs()?;
    unit_and_integration_tests()?;
    core_tests_as_wasm()?;
    // Every fuzz target for a few seconds (installs nightly and cargo-fuzz; docs/reliability.md).
    crate::fuzz::smoke()?;
    // The filter and the shim side by side under mixed traffic and faults for 20 s (docs/reliability.md).
    crate::soak::smoke()?;
    // The filter as an OCI image through a real registry (installs docker-registry and skopeo).
    crate::image::verify()?;
    eprintln!("\nxtask test: all steps passed");
    Ok(())
}

fn fmt_check() -> Result<(), String> {
    step("format check", cargo().args(["fmt", "--all", "--", "--check"]))
}

/// cargo-deny over the dependency graph: every license is one `deny.toml` allows, and nothing it bans
/// (wildcard versions, crates we keep out) crept in.
fn licenses_and_bans() -> Result<(), String> {
    ensure_cargo_deny()?;
    step("licenses and bans", cargo().args(["deny", "check", "licenses", "bans"]))
}

fn clippy() -> Result<(), String> {
    step("clippy", cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
}

/// The filter's Proxy-Wasm glue compiles only for wasm32, so the workspace clippy run never sees it.
fn filter_clippy_wasm() -> Result<(), String> {
    ensure_wasm_target()?;
    step(
        "clippy (filter for wasm32)",
        cargo().args(["clippy", "-p", "epp-filter", "--target", WASM_TARGET, "--", "-D", "warnings"]),
    )
}

fn unit_and_integration_tests() -> Result<(), String> {
    // The end-to-end tests start model-sim and epp-shim. This very build makes both executables (their
    // packages have integration tests), so the tests get those instead of building them again with
    // the features of one package alone (about a minute of tonic and kube on 2 cores).
    let debug = target_dir().join("debug");
    let (model_sim, epp_shim) = (debug.join("model-sim"), debug.join("epp-shim"));
    if have("cargo", Some("nextest")) {
        step(
            "tests",
            cargo()
                .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .env("MODEL_SIM_BIN", &model_sim)
                .env("EPP_SHIM_BIN", &epp_shim),
        )?;
        // nextest does not run doctests.
        step("doc tests", cargo().args(["test", "--workspace", "--doc"]))
    } else {
        step(
            "tests",
            cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .env("MODEL_SIM_BIN", &model_sim)
                .env("EPP_SHIM_BIN", &epp_shim),
        )
    }
}

/// The core's unit tests compiled to `wasm32-wasip1` and run under Node's WASI: the no_std build that runs in
/// the proxy must behave like the native one (float formatting, hashing, integer widths).
fn core_tests_as_wasm() -> Result<(), String> {
    ensure_wasm_target()?;
    require_node()?;
    let runner = workspace_root().join("xtask/wasi/run.mjs");
    step(
        "core tests as Wasm",
        cargo()
            .args(["test", "-p", "scheduler-core", "--target", WASM_TARGET, "--lib", "--tests"])
            .env("CARGO_TARGET_WASM32_WASIP1_RUNNER", format!("node --no-warnings {}", runner.display())),
    )
}

/// `cargo xtask envoy-check`: the Envoy step alone, for editing configs.
pub fn envoy_check(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("`cargo xtask envoy-check` takes no arguments, got {a:?}"));
    }
    envoy_configs()
}

/// Installs Envoy when missing (the end-to-end tests need it too) and validates every config.
fn envoy_configs() -> Result<(), String> {
    let envoy = ensure_envoy()?;
    eprintln!("\n==> Envoy configs: {}", envoy.display());
    crate::envoy::validate_all(&envoy, &crate::envoy::build_filter()?)
}
