//! State that several proxy worker threads share through the host's key-value store (Proxy-Wasm shared data).
//!
//! Envoy runs one Wasm VM per worker thread; they can only cooperate through shared data, which offers
//! get/set with compare-and-swap. The decisions about that state (who scrapes, how per-worker counts are
//! encoded and summed) are pure functions here so the filter stays thin glue and tests need no proxy.

mod bytes;
pub mod inflight_table;
pub mod lease;

pub use inflight_table::{InFlightTable, TableError};
pub use lease::{Lease, LeaseDecision};
