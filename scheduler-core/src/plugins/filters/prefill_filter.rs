//! `prefill-filter` (llm-d): keeps the endpoints that may run a disaggregated prefill.
//!
//! Pods whose `llm-d.ai/role` is one of llm-d's prefill-capable values: `prefill`, `encode-prefill`,
//! `prefill-decode`, `both`, `encode-prefill-decode`. An unlabelled pod is an aggregated server and
//! must not be handed prefill-only work; other values are dropped, as llm-d drops them.

use super::llm_d_role;
use crate::config::params::{IgnoredParams, ParamError};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;

pub const TYPE: &str = "prefill-filter";

/// llm-d's role values that run prefill.
pub const PREFILL_ROLES: [&str; 5] =
    ["prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"];

#[derive(Clone, Copy, Debug, Default)]
pub struct PrefillFilter;

impl PluginFactory for PrefillFilter {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(params: IgnoredParams, ctx: &mut BuildContext<'_>) -> Result<PrefillFilter, ParamError> {
        ctx.ignore_params(&params);
        Ok(PrefillFilter)
    }
}

impl Filter for PrefillFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _state: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| {
            ctx.pool
                .endpoints
                .get(i)
                .is_some_and(|e| llm_d_role(&e.endpoint).is_some_and(|r| PREFILL_ROLES.contains(&r)))
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
