//! The workspace's own executables the tests start (model-sim, epp-shim), built on demand.

use std::path::PathBuf;
use std::process::Command;

/// `$<env_var>` when set, else `cargo build -p <package> --bin <bin>` in the workspace (a no-op when it
/// is up to date) and the executable cargo reports.
pub(crate) fn workspace_binary(package: &str, bin: &str, env_var: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "-p", package, "--bin", bin, "--message-format", "json-render-diagnostics"])
        .current_dir(crate::workspace_root())
        .output()
        .map_err(|e| format!("cannot run cargo to build {bin}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {bin} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Cargo's JSON messages name the built executable; no JSON parser needed for one string field.
    let name = format!("\"name\":\"{bin}\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&name))
        .find_map(|l| l.split("\"executable\":\"").nth(1)?.split('"').next().map(PathBuf::from))
        .ok_or_else(|| format!("cargo built {bin} but reported no executable"))
}
