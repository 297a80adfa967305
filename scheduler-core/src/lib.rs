//! Scheduling core of wasm-epp: everything that decides where an inference request goes, with no I/O.
//!
//! `no_std` + `alloc` so the same code runs inside the proxy (Proxy-Wasm), in the ext_proc shim and in
//! the simulator. Time and randomness are passed in, so a decision is a pure function of
//! (snapshot, request, clock, seed).
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod admission;
pub mod bbr;
pub mod config;
pub mod endpoint_picker;
pub mod exchange;
pub mod flow_control;
pub mod health;
pub mod metrics_text;
pub mod model;
pub mod model_rewrite;
pub mod openai_error;
pub mod plugins;
pub mod prefix;
pub mod request;
pub mod response;
pub mod rng;
pub mod scheduling;
pub mod shared_state;
pub mod snapshot_codec;
