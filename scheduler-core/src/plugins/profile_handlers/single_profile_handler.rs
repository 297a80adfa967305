//! `single-profile-handler`: aggregated serving, one profile, its pick is the destination.
//!
//! The default when the configuration has exactly one profile and names no handler.

use crate::config::params::{IgnoredParams, ParamError};
use crate::scheduling::{
    BuildContext, CycleState, Plugin, PluginFactory, ProfileHandler, ProfileRunResult, SchedulingContext,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub const TYPE: &str = "single-profile-handler";

#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProfileHandler;

impl PluginFactory for SingleProfileHandler {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(params: IgnoredParams, ctx: &mut BuildContext<'_>) -> Result<SingleProfileHandler, ParamError> {
        ctx.ignore_params(&params);
        Ok(SingleProfileHandler)
    }
}

impl ProfileHandler for SingleProfileHandler {
    fn pick_profiles(
        &self,
        _ctx: &SchedulingContext<'_>,
        _state: &mut CycleState,
        profiles: &[String],
        done: &[ProfileRunResult],
    ) -> Vec<String> {
        match (done.is_empty(), profiles.first()) {
            (true, Some(p)) => alloc::vec![p.clone()],
            _ => Vec::new(),
        }
    }

    fn validate_profiles(&self, profiles: &[String]) -> Result<(), String> {
        if profiles.len() == 1 {
            Ok(())
        } else {
            Err(format!("exactly one profile for {TYPE}, got {}", profiles.len()))
        }
    }

    fn primary_profile<'r>(&self, done: &'r [ProfileRunResult]) -> Option<&'r ProfileRunResult> {
        done.first()
    }
}

impl Plugin for SingleProfileHandler {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_profile_handler(&self) -> Option<&dyn ProfileHandler> {
        Some(self)
    }
}
