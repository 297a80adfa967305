//! `load-aware-scorer` (llm-d): 0.5 for an empty waiting queue, falling linearly to 0 at `threshold`
//! queued requests.
//!
//! The 0.5 ceiling is llm-d's: an empty queue does not prove spare capacity, so its pull under a
//! weight is about half that of scorers that reach 1.0.

use crate::config::params::ParamError;
use crate::plugins::candidates::metrics;
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};
use serde::Deserialize;

pub const TYPE: &str = "load-aware-scorer";

pub const DEFAULT_THRESHOLD: i64 = 128;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Queue depth at which the score reaches 0.
    pub threshold: i64,
}

impl Default for Params {
    fn default() -> Params {
        Params { threshold: DEFAULT_THRESHOLD }
    }
}

/// Scores `0.5 · (1 − min(q, threshold) / threshold)`. An endpoint without metrics scores 0.0, as if
/// its queue were at the threshold: llm-d would read zeros and give it the best score, sending traffic
/// to a server nobody has heard from.
#[derive(Clone, Debug)]
pub struct LoadAwareScorer {
    threshold: f64,
}

impl PluginFactory for LoadAwareScorer {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    /// llm-d replaces a non-positive threshold with 128; here it is an error.
    /// As llm-d, a threshold ≤ 0 means the default (with a warning here).
    fn build(params: Params, ctx: &mut BuildContext<'_>) -> Result<LoadAwareScorer, ParamError> {
        let threshold = if params.threshold <= 0 {
            ctx.warn(
                "threshold",
                alloc::format!("{} read as {DEFAULT_THRESHOLD}, as in llm-d", params.threshold),
            );
            DEFAULT_THRESHOLD
        } else {
            params.threshold
        };
        Ok(LoadAwareScorer { threshold: threshold as f64 })
    }
}

impl Plugin for LoadAwareScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for LoadAwareScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            *slot = match metrics(ctx, i) {
                Some(m) => 0.5 * (1.0 - f64::from(m.waiting).min(self.threshold) / self.threshold),
                None => 0.0,
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
    fn empty_queue_half_full_queue_quarter() {
        // Default threshold 128: 0 → 0.5, 64 → 0.25, 128 and beyond → 0.
        let s = built::<LoadAwareScorer>("{}");
        let p =
            pool(vec![ep(1, 0, 0, 0.0), ep(2, 64, 0, 0.0), ep(3, 128, 0, 0.0), ep(4, 500, 0, 0.0), bare(5)]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.5, 0.25, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn custom_threshold() {
        let s = built::<LoadAwareScorer>(r#"{"threshold": 10}"#);
        let p = pool(vec![ep(1, 1, 0, 0.0)]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.45]);
        // ≤ 0: llm-d's default, 128 (the scheduler reports a warning).
        let s = built::<LoadAwareScorer>(r#"{"threshold": 0}"#);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.5 * (1.0 - 1.0 / 128.0)]);
    }
}
