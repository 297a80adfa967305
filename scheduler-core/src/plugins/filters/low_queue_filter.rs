//! `low-queue-filter` (GIE legacy): keeps endpoints whose waiting queue is at most `threshold`.
//!
//! GIE's LoRA path used it (threshold 128) so adapter affinity never piles work onto a server that is
//! already far behind.

use crate::config::params::ParamError;
use crate::plugins::candidates::{metrics, none_measured};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "low-queue-filter";

/// GIE's `DefaultQueueingThresholdLoRA`.
pub const DEFAULT_THRESHOLD: i64 = 128;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Largest waiting queue an endpoint may have and be kept; 0 keeps only idle queues.
    pub threshold: i64,
}

impl Default for Params {
    fn default() -> Params {
        Params { threshold: DEFAULT_THRESHOLD }
    }
}

/// Keeps `q ≤ threshold`; may leave nothing (as in GIE) when every measured queue is longer.
/// Endpoints without metrics are dropped unless no candidate has metrics (then all are kept).
#[derive(Clone, Debug)]
pub struct LowQueueFilter {
    threshold: u64,
}

impl PluginFactory for LowQueueFilter {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<LowQueueFilter, ParamError> {
        let threshold = u64::try_from(params.threshold)
            .map_err(|_| ParamError::invalid("threshold", "an integer >= 0"))?;
        Ok(LowQueueFilter { threshold })
    }
}

impl Plugin for LowQueueFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}

impl Filter for LowQueueFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        if none_measured(ctx, candidates) {
            return;
        }
        candidates.retain(|&i| metrics(ctx, i).is_some_and(|m| u64::from(m.waiting) <= self.threshold));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    #[test]
    fn keeps_queues_at_or_below_the_threshold() {
        let p = pool(vec![ep(1, 5, 0, 0.0), ep(2, 6, 0, 0.0), ep(3, 0, 0, 0.0), bare(4)]);
        let f = built::<LowQueueFilter>(r#"{"threshold": 5}"#);
        assert_eq!(kept(&f, &p, &SchedulingRequest::default()), vec![0, 2]);
        // Default 128 keeps every measured one.
        assert_eq!(kept(&built::<LowQueueFilter>("{}"), &p, &SchedulingRequest::default()), vec![0, 1, 2]);
    }

    #[test]
    fn may_leave_nothing_but_not_when_nothing_is_measured() {
        let f = built::<LowQueueFilter>(r#"{"threshold": 0}"#);
        let p = pool(vec![ep(1, 1, 0, 0.0), bare(2)]);
        assert!(kept(&f, &p, &SchedulingRequest::default()).is_empty());
        let p = pool(vec![bare(1), bare(2)]);
        assert_eq!(kept(&f, &p, &SchedulingRequest::default()), vec![0, 1]);
    }

    #[test]
    fn negative_threshold_is_an_error() {
        let err = build_err::<LowQueueFilter>(r#"{"threshold": -1}"#);
        assert_eq!(alloc::string::ToString::to_string(&err), "threshold: expected an integer >= 0");
    }
}
