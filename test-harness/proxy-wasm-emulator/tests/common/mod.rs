//! Shared setup: the fixture module (built once per test process) and plugin shorthands.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use proxy_wasm_emulator::{fixture_wasm, Plugin};

pub fn wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| fixture_wasm().unwrap_or_else(|e| panic!("fixture build failed: {e}"))).clone()
}

/// A plugin running fixture root `root_id` in vm_id `epp`.
pub fn plugin(root_id: &str) -> Plugin {
    Plugin::new(wasm()).root_id(root_id).vm_id("epp")
}

pub const POST: [(&str, &str); 3] = [(":method", "POST"), (":path", "/v1/completions"), (":authority", "gw")];

/// Request headers: the POST above plus `extra`.
pub fn post_with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    POST.iter().copied().chain(extra.iter().copied()).collect()
}
