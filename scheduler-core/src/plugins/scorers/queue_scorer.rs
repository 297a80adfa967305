//! `queue-scorer`: prefers endpoints with fewer waiting requests, min-max scaled over the candidates.
//!
//! GIE's formula exactly (`(maxQ − q) / (maxQ − minQ)`, all equal → 1), so configurations written for
//! GIE rank endpoints the same way here. Gateway in-flight counts are deliberately not added.

use crate::config::params::{IgnoredParams, ParamError};
use crate::plugins::candidates::{metrics, score_lower_is_better};
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};

pub const TYPE: &str = "queue-scorer";

/// Scores by waiting-queue length. An endpoint without metrics scores 0.0 (as the worst queue, since
/// nothing says it can take work) unless no candidate has metrics, in which case all tie at 1.0.
#[derive(Clone, Debug, Default)]
pub struct QueueScorer;

impl PluginFactory for QueueScorer {
    const TYPE: &'static str = TYPE;
    /// llm-d's factory reads no parameters; any given are ignored with a warning.
    type Params = IgnoredParams;

    fn build(params: IgnoredParams, ctx: &mut BuildContext<'_>) -> Result<QueueScorer, ParamError> {
        ctx.ignore_params(&params);
        Ok(QueueScorer)
    }
}

impl Plugin for QueueScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for QueueScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        score_lower_is_better(candidates, scores, |i| metrics(ctx, i).map(|m| u64::from(m.waiting)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    fn scorer() -> QueueScorer {
        built::<QueueScorer>("{}")
    }

    #[test]
    fn shortest_queue_scores_one_longest_zero() {
        // Queues 2, 6, 10: range 8 → (10−2)/8 = 1, (10−6)/8 = 0.5, 0.
        let p = pool(vec![ep(1, 2, 0, 0.0), ep(2, 6, 0, 0.0), ep(3, 10, 0, 0.0)]);
        assert_close(&scores(&scorer(), &p, &SchedulingRequest::default()), &[1.0, 0.5, 0.0]);
    }

    #[test]
    fn equal_queues_all_score_one() {
        let p = pool(vec![ep(1, 4, 0, 0.0), ep(2, 4, 9, 0.9)]);
        assert_close(&scores(&scorer(), &p, &SchedulingRequest::default()), &[1.0, 1.0]);
    }

    #[test]
    fn endpoint_without_metrics_scores_as_worst_without_stretching_the_range() {
        // Measured queues 3 and 5 keep their 1.0 / 0.0; the unscraped endpoint gets 0.
        let p = pool(vec![ep(1, 3, 0, 0.0), bare(2), ep(3, 5, 0, 0.0)]);
        assert_close(&scores(&scorer(), &p, &SchedulingRequest::default()), &[1.0, 0.0, 0.0]);
        // A single measured endpoint is "all equal" among the measured.
        let p = pool(vec![bare(1), ep(2, 7, 0, 0.0)]);
        assert_close(&scores(&scorer(), &p, &SchedulingRequest::default()), &[0.0, 1.0]);
    }

    #[test]
    fn no_metrics_anywhere_is_a_tie() {
        let p = pool(vec![bare(1), bare(2)]);
        assert_close(&scores(&scorer(), &p, &SchedulingRequest::default()), &[1.0, 1.0]);
    }

    #[test]
    fn only_candidates_set_the_range() {
        // Endpoint 0 (queue 0) is not a candidate, so 4 is the best among {4, 8}.
        let p = pool(vec![ep(1, 0, 0, 0.0), ep(2, 4, 0, 0.0), ep(3, 8, 0, 0.0)]);
        assert_close(&scores_of(&scorer(), &p, &SchedulingRequest::default(), &[2, 1]), &[0.0, 1.0]);
    }

    #[test]
    fn parameters_are_ignored_as_in_llm_d() {
        // llm-d's factory never reads them; the scheduler reports them as a warning.
        assert!(try_build::<QueueScorer>(r#"{"threshold": 1}"#).is_ok());
    }
}
