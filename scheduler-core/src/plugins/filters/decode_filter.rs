//! `decode-filter` (llm-d): keeps the endpoints that may run decode.
//!
//! Decode pods and aggregated pods (role `both`, or no role label at all), so the same profile works
//! for a pool that is not disaggregated.

use crate::config::params::{NoParams, ParamError};
use crate::model::Role;
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;

pub const TYPE: &str = "decode-filter";

#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeFilter;

impl PluginFactory for DecodeFilter {
    const TYPE: &'static str = TYPE;
    type Params = NoParams;

    fn build(_: NoParams, _: &mut BuildContext<'_>) -> Result<DecodeFilter, ParamError> {
        Ok(DecodeFilter)
    }
}

impl Filter for DecodeFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _state: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| {
            ctx.pool.endpoints.get(i).is_some_and(|e| matches!(e.endpoint.role, Role::Decode | Role::Both))
        });
    }
}

impl Plugin for DecodeFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}
