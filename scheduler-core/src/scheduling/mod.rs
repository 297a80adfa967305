//! Filter → Score → Pick: profiles, the weighted scoring pipeline, and the plugin contract.

pub mod framework;
pub mod pipeline;
mod profile;
#[cfg(test)]
pub(crate) mod test_support;

pub use framework::{
    CycleState, Filter, Picker, Plugin, ProfileHandler, ProfileRunResult, SaturationDetector,
    SchedulingContext, SchedulingRequest, ScoredEndpoint, Scorer,
};
