//! Running child processes with a readable log line and an error that says what failed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (or `$CARGO_BUILD_TARGET_DIR`), else `target/` in the
/// workspace.
pub fn target_dir() -> PathBuf {
    ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .iter()
        .find_map(std::env::var_os)
        .map(|dir| workspace_root().join(dir))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `cargo` that invoked us (so the same toolchain is used throughout).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Runs `cmd`, streaming its output, and fails with the command line if it does not exit 0.
pub fn step(step: &str, cmd: &mut Command) -> Result<(), String> {
    let line = describe(cmd);
    eprintln!("\n==> {step}: {line}");
    let status = cmd.status().map_err(|e| format!("{step}: could not start `{line}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status}): `{line}`"))
    }
}

/// True when `program --version` runs.
pub fn have(program: &str, subcommand: Option<&str>) -> bool {
    let mut c = if program == "cargo" { cargo() } else { Command::new(program) };
    if let Some(s) = subcommand {
        c.arg(s);
    }
    c.arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
