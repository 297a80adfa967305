//! Filter → Score → Pick: profiles, the weighted scoring pipeline, the plugin contract, and how plugins
//! are built from their configuration entries.

pub mod factory;
pub mod framework;
pub mod pipeline;
mod profile;
#[cfg(test)]
pub(crate) mod test_support;

pub use factory::{BuildContext, LookupError, PluginFactory, SharedState};
pub use framework::{
    Admitter, CycleState, Filter, PdDecider, Picker, Plugin, ProfileHandler, ProfileRunResult,
    SaturationDetector, SchedulingContext, SchedulingRequest, ScoredEndpoint, Scorer, SectionRole,
};
