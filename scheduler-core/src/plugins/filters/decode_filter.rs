//! `decode-filter` (llm-d): keeps the endpoints that may run decode.
//!
//! Decode pods and aggregated pods (role `both`, or no role label at all), so the same profile works
//! for a pool that is not disaggregated.

use crate::config::params::{parse_params, NoParams, ParamError};
use crate::model::Role;
use crate::scheduling::{CycleState, Filter, Plugin, SchedulingContext};
use alloc::boxed::Box;
use alloc::vec::Vec;
use serde_json::Value;

pub const TYPE: &str = "decode-filter";

#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeFilter;

impl DecodeFilter {
    pub fn build(params: &Value) -> Result<Box<dyn Plugin>, ParamError> {
        parse_params::<NoParams>(params)?;
        Ok(Box::new(DecodeFilter))
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
