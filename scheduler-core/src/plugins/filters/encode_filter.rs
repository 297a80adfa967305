//! `encode-filter` (llm-d): keeps the endpoints that may run the encode stage of multimodal
//! disaggregation: those whose `llm-d.ai/role` is `encode`, `encode-prefill` or `encode-prefill-decode`.
//!
//! A plain label filter: it is accepted wherever a configuration uses it (a profile picked by header,
//! an encode profile); whether an encode stage runs is the profile handler's business.

use super::llm_d_role;
use crate::config::params::{IgnoredParams, ParamError};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;

pub const TYPE: &str = "encode-filter";

/// llm-d's role values that run encode.
pub const ENCODE_ROLES: [&str; 3] = ["encode", "encode-prefill", "encode-prefill-decode"];

#[derive(Clone, Copy, Debug, Default)]
pub struct EncodeFilter;

impl PluginFactory for EncodeFilter {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(params: IgnoredParams, ctx: &mut BuildContext<'_>) -> Result<EncodeFilter, ParamError> {
        ctx.ignore_params(&params);
        Ok(EncodeFilter)
    }
}

impl Filter for EncodeFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _state: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| {
            ctx.pool
                .endpoints
                .get(i)
                .is_some_and(|e| llm_d_role(&e.endpoint).is_some_and(|r| ENCODE_ROLES.contains(&r)))
        });
    }
}

impl Plugin for EncodeFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}
