#![doc = include_str!("../README.md")]
//!
//! ## API
//!
//! [`Host`] (built with [`Host::builder`]) is the emulated proxy; [`Plugin`] says which module and root
//! context a VM runs; [`HttpStream`] is what a test reads back about one request. [`build_wasm_crate`]
//! and [`fixture_wasm`] build Proxy-Wasm crates for [`WASM_TARGET`] from inside a test.
// Test support: a misused test API (an unknown stream id) panics, as assertions do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod host;
mod wasm_build;

pub use host::abi::{Headers, LogLevel, Status};
pub use host::callouts::{Callout, CalloutId, CalloutResponse, CalloutState};
pub use host::http::{HttpStream, LocalReply, LocalReplySource, Message, Phase, StreamId};
pub use host::metrics::{Metric, MetricKind};
pub use host::properties::PropertyValue;
pub use host::transcript::{Event, Fault, LogEntry, Trap};
pub use host::{FailurePolicy, HarnessError, Host, HostBuilder, Plugin, StartError, VmId};
pub use wasm_build::{build_wasm_crate, build_wasm_crate_with, fixture_wasm, workspace_root, WASM_TARGET};
