//! Saturation detectors: how full the pool is (drives shedding and flow control's dispatch gate);
//! llm-d's two also play a filter, `prefill-backlog-detector` (ours) does not.

pub mod concurrency_detector;
pub mod prefill_backlog_detector;
pub mod utilization_detector;
