//! placeholder
pub mod collector;
pub mod host;
pub mod inflight;
pub mod keys;
pub mod prefix_sync;
pub mod snapshot_cache;
pub mod stats;
pub mod worker;
pub mod workers;
