//! Saturation detectors: how full the pool is (drives shedding); each also plays a filter.

pub mod concurrency_detector;
pub mod utilization_detector;
