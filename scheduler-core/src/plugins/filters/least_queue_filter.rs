//! `least-queue-filter` (GIE legacy): keeps the endpoints whose waiting queue falls in the lowest band,
//! `min ≤ q ≤ min + (max − min) / N`.
//!
//! A band rather than the single minimum leaves the next filter (or the picker) a choice among
//! near-equal servers; GIE found that balanced better. The division is integer, as in GIE.

use crate::config::params::{NoParams, ParamError};
use crate::plugins::candidates::{metrics, none_measured};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;

pub const TYPE: &str = "least-queue-filter";

/// Band filter on waiting requests. Endpoints without metrics are dropped (and do not count in `N`),
/// unless no candidate has metrics, in which case every candidate is kept.
#[derive(Clone, Debug, Default)]
pub struct LeastQueueFilter;

impl PluginFactory for LeastQueueFilter {
    const TYPE: &'static str = TYPE;
    type Params = NoParams;

    fn build(_: NoParams, _: &mut BuildContext<'_>) -> Result<LeastQueueFilter, ParamError> {
        Ok(LeastQueueFilter)
    }
}

impl Plugin for LeastQueueFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}

impl Filter for LeastQueueFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        if none_measured(ctx, candidates) {
            return;
        }
        let queue = |i: usize| metrics(ctx, i).map(|m| u64::from(m.waiting));
        let measured = candidates.iter().filter_map(|&i| queue(i));
        let (n, min, max) =
            measured.fold((0u64, u64::MAX, 0u64), |(n, lo, hi), q| (n + 1, lo.min(q), hi.max(q)));
        // n >= 1 here (some candidate is measured), so min <= max and the division is defined.
        let upper = min.saturating_add((max - min) / n.max(1));
        candidates.retain(|&i| queue(i).is_some_and(|q| q <= upper));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    #[test]
    fn keeps_the_lowest_band() {
        // Queues 0, 3, 4, 12: band = 0 + 12/4 = 3 → keeps 0 and 3.
        let p = pool(vec![ep(1, 0, 0, 0.0), ep(2, 3, 0, 0.0), ep(3, 4, 0, 0.0), ep(4, 12, 0, 0.0)]);
        assert_eq!(kept(&built::<LeastQueueFilter>("{}"), &p, &SchedulingRequest::default()), vec![0, 1]);
    }

    #[test]
    fn band_uses_integer_division() {
        // Queues 2, 3, 5: (5−2)/3 = 1 → upper 3.
        let p = pool(vec![ep(1, 5, 0, 0.0), ep(2, 2, 0, 0.0), ep(3, 3, 0, 0.0)]);
        assert_eq!(kept(&LeastQueueFilter, &p, &SchedulingRequest::default()), vec![1, 2]);
        // Queues 0 and 1: (1−0)/2 = 0 → only the empty queue.
        let p = pool(vec![ep(1, 1, 0, 0.0), ep(2, 0, 0, 0.0)]);
        assert_eq!(kept(&LeastQueueFilter, &p, &SchedulingRequest::default()), vec![1]);
    }

    #[test]
    fn ties_all_kept() {
        let p = pool(vec![ep(1, 7, 0, 0.0), ep(2, 7, 0, 0.0)]);
        assert_eq!(kept(&LeastQueueFilter, &p, &SchedulingRequest::default()), vec![0, 1]);
    }

    #[test]
    fn unmeasured_endpoints() {
        // Dropped next to measured ones, and not counted in N: band = 4 + (8−4)/2 = 6.
        let p = pool(vec![bare(1), ep(2, 4, 0, 0.0), ep(3, 8, 0, 0.0)]);
        assert_eq!(kept(&LeastQueueFilter, &p, &SchedulingRequest::default()), vec![1]);
        // All kept when nothing is measured (fail open).
        let p = pool(vec![bare(1), bare(2)]);
        assert_eq!(kept(&LeastQueueFilter, &p, &SchedulingRequest::default()), vec![0, 1]);
    }
}
