//! Builds a Wasm crate for `wasm32-wasip1` from inside a test, once per process, so no binary is ever
//! committed and the module under test is always the current source.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The target every Proxy-Wasm module here is built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// The root of the Cargo workspace this crate is built in: the nearest directory above its manifest whose
/// `Cargo.toml` has a `[workspace]` table (its `target/` holds the Wasm builds and the compiled-module
/// cache), or the crate's own directory when there is none.
pub fn workspace_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest
            .ancestors()
            .skip(1)
            .find(|dir| {
                std::fs::read_to_string(dir.join("Cargo.toml"))
                    .is_ok_and(|text| text.lines().any(|l| l.trim() == "[workspace]"))
            })
            .unwrap_or(manifest)
            .to_path_buf()
    })
    .clone()
}

/// Builds the emulator's own fixture filters (`fixtures/proxy-wasm-fixture` in this crate) and returns
/// the `.wasm` path.
pub fn fixture_wasm() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/proxy-wasm-fixture/Cargo.toml");
    build_wasm_crate(&manifest, "proxy_wasm_fixture", &workspace_root().join("target/fixtures"))
}

/// Runs `cargo build --release --target wasm32-wasip1` for the crate at `manifest` into `target_dir`
/// (once per process per manifest; cargo's own lock serialises concurrent processes) and returns the path
/// of `<lib_name>.wasm`. Installs the target with rustup first if the toolchain lacks it.
pub fn build_wasm_crate(manifest: &Path, lib_name: &str, target_dir: &Path) -> Result<PathBuf, String> {
    build_wasm_crate_with(manifest, lib_name, target_dir, &[])
}

/// Each build this process made: (manifest, features) → the `.wasm` or why not.
type Builds = HashMap<(PathBuf, String), Result<PathBuf, String>>;

/// [`build_wasm_crate`] with cargo `features` enabled. A build with other features overwrites the same
/// `.wasm`, so give each feature set its own `target_dir`.
pub fn build_wasm_crate_with(
    manifest: &Path,
    lib_name: &str,
    target_dir: &Path,
    features: &[&str],
) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Mutex<Builds>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let key = (manifest.to_path_buf(), features.join(","));
    if let Some(result) = built.get(&key) {
        return result.clone();
    }
    let result = ensure_target().and_then(|()| cargo_build(manifest, lib_name, target_dir, &key.1));
    built.insert(key, result.clone());
    result
}

fn ensure_target() -> Result<(), String> {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc to find the sysroot: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot).join("lib/rustlib").join(WASM_TARGET).exists() {
        return Ok(());
    }
    eprintln!("proxy-wasm-emulator: installing the {WASM_TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .map_err(|e| format!("the {WASM_TARGET} target is missing and rustup could not run: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`rustup target add {WASM_TARGET}` failed ({status})"))
    }
}

/// `$CARGO_HOME`, else `~/.cargo`, as text.
fn cargo_home() -> Option<String> {
    std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .and_then(|p| p.to_str().map(str::to_string))
}

fn cargo_build(
    manifest: &Path,
    lib_name: &str,
    target_dir: &Path,
    features: &str,
) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release", "--target", WASM_TARGET, "--manifest-path"]).arg(manifest);
    if !features.is_empty() {
        command.args(["--features", features]);
    }
    // As `cargo xtask` builds the filter (xtask/src/tools.rs, `reproducible_wasm_env`): dependencies'
    // source paths under CARGO_HOME remapped, so the module's bytes do not depend on the machine, and
    // the same flags as xtask's so the two share one build.
    if let Some(home) = cargo_home().filter(|h| !h.contains(char::is_whitespace)) {
        command.env("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS", format!("--remap-path-prefix={home}=/cargo"));
    }
    let output = command
        .arg("--target-dir")
        .arg(target_dir)
        // Settings meant for the test binary itself must not leak into the Wasm build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("cannot run cargo to build {}: {e}", manifest.display()))?;
    if !output.status.success() {
        return Err(format!(
            "building {} for {WASM_TARGET} failed ({}):\n{}",
            manifest.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let wasm = target_dir.join(WASM_TARGET).join("release").join(format!("{lib_name}.wasm"));
    if wasm.exists() {
        Ok(wasm)
    } else {
        Err(format!("cargo succeeded but {} is missing", wasm.display()))
    }
}
