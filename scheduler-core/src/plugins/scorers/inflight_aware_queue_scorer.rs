//! `inflight-aware-queue-scorer` (ours, not in GIE): `queue-scorer` on a queue estimate that also
//! counts requests this gateway routed since the last scrape, so a burst does not pile onto the
//! endpoint whose stale queue still reads shortest.
//!
//! Kept apart from `queue-scorer`, whose GIE formula stays exact for parity.

use crate::config::params::{NoParams, ParamError};
use crate::plugins::candidates::{score_lower_is_better, state};
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};

pub const TYPE: &str = "inflight-aware-queue-scorer";

/// Min-max scores `q = waiting + max(0, in_flight − (running + waiting))`: gateway in-flight requests
/// the server's last report cannot account for are assumed to be queued. With several gateways the
/// server also counts the others' requests, so the estimate errs low, never double counts. Endpoints
/// without metrics score 0.0 (as in `queue-scorer`) unless none has metrics.
#[derive(Clone, Debug, Default)]
pub struct InflightAwareQueueScorer;

impl PluginFactory for InflightAwareQueueScorer {
    const TYPE: &'static str = TYPE;
    type Params = NoParams;

    fn build(_: NoParams, _: &mut BuildContext<'_>) -> Result<InflightAwareQueueScorer, ParamError> {
        Ok(InflightAwareQueueScorer)
    }
}

impl Plugin for InflightAwareQueueScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for InflightAwareQueueScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        score_lower_is_better(candidates, scores, |i| {
            let s = state(ctx, i)?;
            let m = s.metrics.as_ref()?;
            let reported = u64::from(m.running).saturating_add(u64::from(m.waiting));
            let unseen = u64::from(s.in_flight.requests).saturating_sub(reported);
            Some(u64::from(m.waiting).saturating_add(unseen))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::scheduling::SchedulingRequest;
    use alloc::vec;

    #[test]
    fn unseen_in_flight_requests_count_as_queued() {
        // Scraped queues 0 and 2 (queue-scorer would prefer endpoint 0), but the gateway has sent
        // endpoint 0 eight requests its report (1 running) has not seen: q = 0 + (8 − 1) = 7 vs 2 + 0.
        let p = pool(vec![inflight(ep(1, 0, 1, 0.0), 8, 0), inflight(ep(2, 2, 3, 0.0), 4, 0), bare(3)]);
        let s = built::<InflightAwareQueueScorer>("{}");
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.0, 1.0, 0.0]);
    }

    #[test]
    fn without_surplus_it_is_the_queue_scorer() {
        // In-flight already covered by running + waiting: plain queues 3 and 5.
        let p = pool(vec![inflight(ep(1, 3, 4, 0.0), 7, 0), inflight(ep(2, 5, 0, 0.0), 2, 0)]);
        let s = built::<InflightAwareQueueScorer>("{}");
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[1.0, 0.0]);
    }
}
