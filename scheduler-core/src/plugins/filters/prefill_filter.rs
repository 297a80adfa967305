//! `prefill-filter` (llm-d): keeps the endpoints that may run a disaggregated prefill.
//!
//! Prefill pods, plus pods explicitly labelled as serving both phases; an unlabelled pod is an
//! aggregated server and must not be handed prefill-only work.

use crate::config::params::{NoParams, ParamError};
use crate::model::{Role, ROLE_LABEL};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;

pub const TYPE: &str = "prefill-filter";

#[derive(Clone, Copy, Debug, Default)]
pub struct PrefillFilter;

impl PluginFactory for PrefillFilter {
    const TYPE: &'static str = TYPE;
    type Params = NoParams;

    fn build(_: NoParams, _: &mut BuildContext<'_>) -> Result<PrefillFilter, ParamError> {
        Ok(PrefillFilter)
    }
}

impl Filter for PrefillFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _state: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| {
            ctx.pool.endpoints.get(i).is_some_and(|e| match e.endpoint.role {
                Role::Prefill => true,
                Role::Both => e.endpoint.label(ROLE_LABEL).is_some(),
                Role::Decode => false,
            })
        });
    }
}

impl Plugin for PrefillFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}
