//! `decode-filter` (llm-d): keeps the endpoints that may run decode.
//!
//! Pods without a role label (aggregated servers, so the same profile works for a pool that is not
//! disaggregated) and those whose `llm-d.ai/role` is one of llm-d's decode-capable values: `decode`,
//! `prefill-decode`, `both`, `encode-prefill-decode`. Any other value (`prefill`, `encode`,
//! `encode-prefill`, an empty or unknown one) is dropped, as llm-d drops it.

use super::llm_d_role;
use crate::config::params::{IgnoredParams, ParamError};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;

pub const TYPE: &str = "decode-filter";

/// llm-d's role values that run decode.
pub const DECODE_ROLES: [&str; 4] = ["decode", "prefill-decode", "both", "encode-prefill-decode"];

#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeFilter;

impl PluginFactory for DecodeFilter {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(params: IgnoredParams, ctx: &mut BuildContext<'_>) -> Result<DecodeFilter, ParamError> {
        ctx.ignore_params(&params);
        Ok(DecodeFilter)
    }
}

impl Filter for DecodeFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _state: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| {
            ctx.pool
                .endpoints
                .get(i)
                .is_some_and(|e| llm_d_role(&e.endpoint).is_none_or(|r| DECODE_ROLES.contains(&r)))
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
