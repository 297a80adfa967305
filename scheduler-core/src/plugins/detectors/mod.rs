//! Saturation detectors: how full the pool is (drives shedding and flow control's dispatch gate);
//! llm-d's two also play a filter, `prefill-backlog-detector` (ours) does not.

pub mod concurrency_detector;
pub mod prefill_backlog_detector;
pub mod utilization_detector;

use crate::model::EndpointState;

/// The mean of `per_endpoint` over the pool; an empty pool is saturated (1.0), as GIE's and llm-d's
/// detectors say.
fn pool_mean(endpoints: &[EndpointState], per_endpoint: impl Fn(&EndpointState) -> f64) -> f64 {
    if endpoints.is_empty() {
        return 1.0;
    }
    endpoints.iter().map(per_endpoint).sum::<f64>() / endpoints.len() as f64
}
