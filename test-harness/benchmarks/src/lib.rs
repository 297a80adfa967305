//! The benchmarks and the demo. Binaries:
//!
//! - `quality-bench` (`cargo xtask bench quality`): scheduling quality, routing policies compared on
//!   simulated vLLM replicas in virtual time. The numbers in BENCHMARKS.md come from here, so the loop
//!   copies what a gateway really sees (50 ms scrapes, its own in-flight counts) and replays one seeded
//!   trace for every policy. This library is that suite, plus the charts and statistics all three share.
//! - `overhead` (`cargo xtask bench overhead`): what the picker costs in a real Envoy, against plain
//!   Envoy, the do-nothing floor filter (`fixtures/floor-filter`) and the ext_proc shim.
//! - `faults` (`cargo xtask bench faults`): routing around a failing pod in a real Envoy, the filter and
//!   the shim against round-robin with health checks and outlier detection.
//! - `demo` (`cargo xtask demo`): the picker against round-robin Envoy on simulated replicas.

pub mod chart;
pub mod overload;
pub mod placement;
pub mod policy;
pub mod report;
pub mod sim;
pub mod stats;
pub mod topology;
pub mod trace;
pub mod workload;
