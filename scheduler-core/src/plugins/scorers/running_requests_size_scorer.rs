//! `running-requests-size-scorer`: prefers endpoints with fewer requests in the running batch.
//!
//! Same min-max scaling as GIE's (and as `queue-scorer`), applied to running instead of waiting
//! requests.

use crate::config::params::{IgnoredParams, ParamError};
use crate::plugins::candidates::{metrics, score_lower_is_better};
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};

pub const TYPE: &str = "running-requests-size-scorer";

/// Scores by running-batch size. Without metrics an endpoint scores 0.0 (as the busiest) unless no
/// candidate has metrics, in which case all tie at 1.0.
#[derive(Clone, Debug, Default)]
pub struct RunningRequestsSizeScorer;

impl PluginFactory for RunningRequestsSizeScorer {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(
        params: IgnoredParams,
        ctx: &mut BuildContext<'_>,
    ) -> Result<RunningRequestsSizeScorer, ParamError> {
        ctx.ignore_params(&params);
        Ok(RunningRequestsSizeScorer)
    }
}

impl Plugin for RunningRequestsSizeScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for RunningRequestsSizeScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        score_lower_is_better(candidates, scores, |i| metrics(ctx, i).map(|m| u64::from(m.running)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    #[test]
    fn fewer_running_requests_score_higher_and_queues_are_ignored() {
        // Running 10, 20, 50: (50−10)/40 = 1, (50−20)/40 = 0.75, 0.
        let s = built::<RunningRequestsSizeScorer>("{}");
        let p = pool(vec![ep(1, 99, 10, 0.0), ep(2, 0, 20, 0.0), ep(3, 0, 50, 0.0), bare(4)]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[1.0, 0.75, 0.0, 0.0]);
    }

    #[test]
    fn ties_score_one() {
        let s = built::<RunningRequestsSizeScorer>("{}");
        let p = pool(vec![ep(1, 0, 3, 0.0), ep(2, 5, 3, 0.0)]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[1.0, 1.0]);
        let p = pool(vec![bare(1), bare(2)]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[1.0, 1.0]);
    }
}
