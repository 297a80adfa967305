//! The Envoy side of `cargo xtask`: every bootstrap under `envoy-config/` is rendered with stand-in values
//! and checked by the real Envoy (`--mode validate`), so a config that drifts from Envoy's schema fails CI.

use crate::cmd::{cargo, step, workspace_root};
use crate::tools::WASM_TARGET;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "../../test-harness/e2e/src/template.rs"]
mod template;

pub use template::render;

/// Envoy bootstraps are the files named `envoy.yaml` anywhere under `envoy-config/`.
pub fn bootstrap_files() -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    collect(&workspace_root().join("envoy-config"), &mut files)?;
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() {
            collect(&path, files)?;
        } else if name == "envoy.yaml" {
            files.push(path);
        }
    }
    Ok(())
}

/// Stand-in values for validation: ports need not be free (validate mode binds nothing) and the module only
/// has to be a file Envoy can read.
fn validation_values(template: &str, wasm: &Path) -> Vec<(String, String)> {
    let mut port = 20_000;
    template::placeholders(template)
        .into_iter()
        .filter_map(|name| {
            let value = match name.as_str() {
                "WASM_PATH" => wasm.display().to_string(),
                "GATEWAY_CONFIG" => String::from("\"{}\""),
                // POOL_LB_ENDPOINTS, and one per pool in the multi-pool files (QWEN_LB_ENDPOINTS, ...).
                n if n.ends_with("_LB_ENDPOINTS") => String::from(
                    "[{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 20999}}}}]",
                ),
                n if n.starts_with("PORT_") => {
                    port += 1;
                    port.to_string()
                }
                // Left out: render() then names it in its error.
                _ => return None,
            };
            Some((name, value))
        })
        .collect()
}

/// Renders and validates every bootstrap; reports every failing file, not just the first.
pub fn validate_all(envoy: &Path, wasm: &Path) -> Result<(), String> {
    let files = bootstrap_files()?;
    if files.is_empty() {
        return Err(String::from("no envoy.yaml files under envoy-config/"));
    }
    let root = workspace_root();
    let out_dir = root.join("target/envoy-config-validate");
    let started = Instant::now();
    let mut failures = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap_or(file);
        eprintln!("    envoy --mode validate {}", rel.display());
        if let Err(e) = validate_one(envoy, wasm, file, rel, &out_dir) {
            failures.push(format!("{}: {e}", rel.display()));
        }
    }
    if failures.is_empty() {
        eprintln!("    {} Envoy configs valid ({:.1} s)", files.len(), started.elapsed().as_secs_f64());
        Ok(())
    } else {
        Err(format!("invalid Envoy configs:\n{}", failures.join("\n")))
    }
}

fn validate_one(envoy: &Path, wasm: &Path, file: &Path, rel: &Path, out_dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let values = validation_values(&text, wasm);
    let values: Vec<(&str, String)> = values.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let rendered = render(&text, &values)?;
    let target = out_dir.join(rel);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&target, rendered).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&target)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", envoy.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rejected by Envoy (rendered copy: {}):\n{}{}",
            target.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Builds the picker filter (`filter/`) for Proxy-Wasm and returns the `.wasm` path. The Envoy configs
/// are validated with it: validate mode really loads the module and calls `on_vm_start` and
/// `on_configure` with the rendered configuration, so this also checks that the filter accepts the
/// configuration each file embeds.
pub fn build_filter() -> Result<PathBuf, String> {
    let root = workspace_root();
    let manifest = root.join("filter/Cargo.toml");
    // Same command and target dir as `e2e::filter_wasm`, so the tests reuse this build.
    let mut build = cargo();
    build
        .args(["build", "--release", "--target", WASM_TARGET, "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(root.join(FILTER_TARGET_DIR))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if let Some((name, value)) = crate::tools::reproducible_wasm_env() {
        build.env(name, value);
    }
    step("build the filter", &mut build)?;
    let wasm = root.join(FILTER_TARGET_DIR).join(WASM_TARGET).join("release/epp_filter.wasm");
    if wasm.exists() {
        Ok(wasm)
    } else {
        Err(format!("the filter built but {} is missing", wasm.display()))
    }
}

/// Where the filter's `.wasm` is built (relative to the workspace root).
const FILTER_TARGET_DIR: &str = "target/filter-wasm";
