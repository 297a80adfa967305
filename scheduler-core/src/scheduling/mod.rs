//! Filter → Score → Pick: profiles, the weighted scoring pipeline, and the plugin contract.

pub mod framework;

pub use framework::{
    CycleState, Filter, Picker, Plugin, ProfileHandler, ProfileRunResult, SaturationDetector,
    SchedulingContext, SchedulingRequest, ScoredEndpoint, Scorer,
};
