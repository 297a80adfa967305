//! `lora-affinity-scorer`: prefers endpoints that already serve the requested LoRA adapter, then
//! endpoints with room to load it, then endpoints where it is already queued.
//!
//! GIE's tiers: active 1.0, room 0.8, waiting 0.6, otherwise 0. The adapter is `request.model`.

use crate::config::params::{IgnoredParams, ParamError};
use crate::plugins::candidates::{has_lora_room, metrics};
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};

pub const TYPE: &str = "lora-affinity-scorer";

/// Scores adapter affinity. Room is checked before "waiting" (as in GIE): a server that can load the
/// adapter now beats one where it sits in a queue. Without metrics an endpoint scores 0.0.
///
/// Base-model requests get no special case, exactly as in GIE and llm-d-router (whose scorer only asks
/// whether the target model is in the active or waiting adapter sets): the base model is in neither
/// list, so it scores 0.8 where adapter slots are free and 0 where they are full, although it needs no
/// slot. Kept for parity under GIE's type name; on multi-LoRA pools this steers base-model traffic away
/// from adapter-saturated servers, which costs quality when those are the least loaded.
#[derive(Clone, Debug, Default)]
pub struct LoraAffinityScorer;

impl PluginFactory for LoraAffinityScorer {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(params: IgnoredParams, ctx: &mut BuildContext<'_>) -> Result<LoraAffinityScorer, ParamError> {
        ctx.ignore_params(&params);
        Ok(LoraAffinityScorer)
    }
}

impl Plugin for LoraAffinityScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for LoraAffinityScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let adapter = ctx.request.model;
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            *slot = match metrics(ctx, i) {
                Some(m) if m.has_active_lora(adapter) => 1.0,
                Some(m) if has_lora_room(m) => 0.8,
                Some(m) if m.has_waiting_lora(adapter) => 0.6,
                _ => 0.0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    #[test]
    fn tiers_active_room_waiting_none() {
        let p = lora_tiers_pool();
        let req = SchedulingRequest { model: "sql", ..SchedulingRequest::default() };
        assert_close(&scores(&built::<LoraAffinityScorer>("{}"), &p, &req), &[1.0, 0.8, 0.6, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn base_model_requests_score_by_free_adapter_slots_as_in_gie() {
        // "llama" is the base model: in no adapter list anywhere. Free slots 0.8, full 0, no LoRA 0.
        let p = pool(vec![
            lora(ep(1, 0, 0, 0.0), &["sql"], &[], Some(2)),
            lora(ep(2, 0, 0, 0.0), &["sql", "chat"], &[], Some(2)),
            lora(ep(3, 0, 0, 0.0), &["sql"], &["chat"], Some(2)),
            bare(4),
        ]);
        let req = SchedulingRequest { model: "llama", ..SchedulingRequest::default() };
        assert_close(&scores(&built::<LoraAffinityScorer>("{}"), &p, &req), &[0.8, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn room_beats_waiting() {
        // The adapter is queued on a server that still has room: room's 0.8 applies first.
        let p = pool(vec![lora(ep(1, 0, 0, 0.0), &[], &["sql"], Some(4))]);
        let req = SchedulingRequest { model: "sql", ..SchedulingRequest::default() };
        assert_close(&scores(&built::<LoraAffinityScorer>("{}"), &p, &req), &[0.8]);
    }
}
