//! `kv-cache-utilization-scorer`: prefers endpoints with free KV-cache memory, `1 − kv_usage`.
//!
//! GIE's formula; an absolute score (not scaled over the candidates), so a nearly full pool scores
//! low everywhere.

use crate::config::params::{IgnoredParams, ParamError};
use crate::plugins::candidates::metrics;
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};

pub const TYPE: &str = "kv-cache-utilization-scorer";

/// Scores `1 − kv_usage`. An endpoint without metrics scores 0.0: its memory is unknown, so it is
/// treated as full rather than as the emptiest server in the pool.
#[derive(Clone, Debug, Default)]
pub struct KvCacheUtilizationScorer;

impl PluginFactory for KvCacheUtilizationScorer {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(
        params: IgnoredParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<KvCacheUtilizationScorer, ParamError> {
        ctx.ignore_params(&params);
        Ok(KvCacheUtilizationScorer)
    }
}

impl Plugin for KvCacheUtilizationScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for KvCacheUtilizationScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            *slot = metrics(ctx, i).map_or(0.0, |m| 1.0 - m.kv_usage);
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
    fn free_memory_is_the_score() {
        let s = built::<KvCacheUtilizationScorer>("{}");
        let p = pool(vec![ep(1, 0, 0, 0.25), ep(2, 0, 0, 0.9), ep(3, 0, 0, 0.0), bare(4)]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.75, 0.1, 1.0, 0.0]);
    }
}
