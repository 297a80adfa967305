//! Scheduling-quality benchmark: routing policies compared on simulated vLLM replicas in virtual time.
//!
//! The numbers in BENCHMARKS.md come from here, so the loop copies what a gateway really sees (50 ms
//! scrapes, its own in-flight counts) and replays one seeded trace for every policy.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod chart;
pub mod policy;
pub mod report;
pub mod sim;
pub mod stats;
pub mod workload;
