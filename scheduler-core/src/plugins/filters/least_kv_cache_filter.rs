//! `least-kv-cache-filter` (GIE legacy): keeps the endpoints whose KV-cache use falls in the lowest
//! band, `min ≤ kv ≤ min + (max − min) / N`.
//!
//! The band leaves later filters a choice among near-equal servers, as with `least-queue-filter`.

use crate::config::params::{NoParams, ParamError};
use crate::plugins::candidates::{metrics, none_measured};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::vec::Vec;

pub const TYPE: &str = "least-kv-cache-filter";

/// Band filter on KV-cache use. Endpoints without metrics are dropped (and do not count in `N`),
/// unless no candidate has metrics, in which case every candidate is kept.
#[derive(Clone, Debug, Default)]
pub struct LeastKvCacheFilter;

impl PluginFactory for LeastKvCacheFilter {
    const TYPE: &'static str = TYPE;
    type Params = NoParams;

    fn build(_: NoParams, _: &mut BuildContext<'_>) -> Result<LeastKvCacheFilter, ParamError> {
        Ok(LeastKvCacheFilter)
    }
}

impl Plugin for LeastKvCacheFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}

impl Filter for LeastKvCacheFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        if none_measured(ctx, candidates) {
            return;
        }
        let kv = |i: usize| metrics(ctx, i).map(|m| m.kv_usage);
        let (n, min, max) = candidates
            .iter()
            .filter_map(|&i| kv(i))
            .fold((0u32, f64::INFINITY, f64::NEG_INFINITY), |(n, lo, hi), v| (n + 1, lo.min(v), hi.max(v)));
        let upper = min + (max - min) / f64::from(n.max(1));
        candidates.retain(|&i| kv(i).is_some_and(|v| v <= upper));
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
        // KV 0.1, 0.2, 0.5, 0.9: band = 0.1 + 0.8/4 = 0.3 → keeps 0.1 and 0.2.
        let p = pool(vec![ep(1, 0, 0, 0.5), ep(2, 0, 0, 0.1), ep(3, 0, 0, 0.9), ep(4, 0, 0, 0.2)]);
        assert_eq!(kept(&built::<LeastKvCacheFilter>("{}"), &p, &SchedulingRequest::default()), vec![1, 3]);
    }

    #[test]
    fn ties_and_unmeasured() {
        let p = pool(vec![ep(1, 0, 0, 0.4), bare(2), ep(3, 0, 0, 0.4)]);
        assert_eq!(kept(&LeastKvCacheFilter, &p, &SchedulingRequest::default()), vec![0, 2]);
        let p = pool(vec![bare(1), bare(2)]);
        assert_eq!(kept(&LeastKvCacheFilter, &p, &SchedulingRequest::default()), vec![0, 1]);
    }
}
