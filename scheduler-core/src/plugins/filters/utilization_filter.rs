//! `utilization-filter` (llm-d): keeps the endpoints under every configured ceiling.
//!
//! Each condition names a load figure and its `maxValue`; an endpoint is kept when every figure is at
//! most its ceiling. The figures: `active-requests` (requests this gateway has in flight to the
//! endpoint), `running-requests` and `waiting-queue` (from the last scrape), `kv-cache-utilization` (a
//! fraction in [0, 1]). An endpoint not scraped yet reads 0, as in llm-d, so it is kept (fail open).
//! When nothing is kept, `fallbackOnEmpty` keeps every candidate instead.

use crate::config::params::ParamError;
use crate::plugins::candidates::{metrics, state};
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "utilization-filter";

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    pub conditions: Vec<ConditionParams>,
    pub fallback_on_empty: bool,
    /// llm-d's in-flight load producer; this gateway's own in-flight counts are the one source here.
    pub in_flight_load_producer_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionParams {
    pub metric: String,
    pub max_value: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Figure {
    ActiveRequests,
    RunningRequests,
    WaitingQueue,
    KvCacheUtilization,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UtilizationFilter {
    conditions: Vec<(Figure, f64)>,
    fallback_on_empty: bool,
}

impl PluginFactory for UtilizationFilter {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<UtilizationFilter, ParamError> {
        if params.conditions.is_empty() {
            let expected = "at least one condition (this parameter is required)";
            return Err(ParamError::new("conditions", expected, Some(String::from("none"))));
        }
        let mut conditions = Vec::with_capacity(params.conditions.len());
        for (i, c) in params.conditions.iter().enumerate() {
            let figure = match c.metric.as_str() {
                "active-requests" => Figure::ActiveRequests,
                "running-requests" => Figure::RunningRequests,
                "waiting-queue" => Figure::WaitingQueue,
                "kv-cache-utilization" => Figure::KvCacheUtilization,
                other => {
                    return Err(ParamError::new(
                        format!("conditions[{i}].metric"),
                        "one of active-requests, running-requests, waiting-queue, kv-cache-utilization",
                        Some(format!("{other:?}")),
                    ))
                }
            };
            let field = format!("conditions[{i}].maxValue");
            let Some(max) = c.max_value else {
                return Err(ParamError::new(
                    field,
                    "a value (this parameter is required)",
                    Some(String::from("nothing")),
                ));
            };
            let top = if figure == Figure::KvCacheUtilization { 1.0 } else { f64::MAX };
            if !(0.0..=top).contains(&max) {
                let expected = if figure == Figure::KvCacheUtilization {
                    "a fraction in [0, 1]"
                } else {
                    "a number ≥ 0"
                };
                return Err(ParamError::new(field, expected, Some(format!("{max}"))));
            }
            conditions.push((figure, max));
        }
        Ok(UtilizationFilter { conditions, fallback_on_empty: params.fallback_on_empty })
    }
}

impl UtilizationFilter {
    fn value(ctx: &SchedulingContext<'_>, i: usize, figure: Figure) -> f64 {
        if figure == Figure::ActiveRequests {
            return state(ctx, i).map_or(0.0, |s| f64::from(s.in_flight.requests));
        }
        let Some(m) = metrics(ctx, i) else { return 0.0 };
        match figure {
            Figure::RunningRequests => f64::from(m.running),
            Figure::WaitingQueue => f64::from(m.waiting),
            Figure::KvCacheUtilization => m.kv_usage,
            Figure::ActiveRequests => 0.0,
        }
    }
}

impl Plugin for UtilizationFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}

impl Filter for UtilizationFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        let under = |i: usize| self.conditions.iter().all(|&(f, max)| Self::value(ctx, i, f) <= max);
        if self.fallback_on_empty && !candidates.iter().any(|&i| under(i)) {
            return;
        }
        candidates.retain(|&i| under(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::{bare, build_err, built, ep, inflight, kept, pool};
    use crate::scheduling::SchedulingRequest;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn keeps_endpoints_under_every_ceiling() {
        let p = pool(vec![
            ep(1, 0, 10, 0.50),
            ep(2, 6, 10, 0.50),
            ep(3, 0, 40, 0.50),
            ep(4, 0, 10, 0.95),
            inflight(ep(5, 0, 10, 0.5), 9, 0),
            bare(6),
        ]);
        let req = SchedulingRequest::default();
        let f: UtilizationFilter = built(
            r#"{"conditions": [{"metric": "waiting-queue", "maxValue": 5},
                               {"metric": "running-requests", "maxValue": 32},
                               {"metric": "kv-cache-utilization", "maxValue": 0.9},
                               {"metric": "active-requests", "maxValue": 8}]}"#,
        );
        assert_eq!(kept(&f, &p, &req), [0, 5], "an unscraped endpoint reads 0, as in llm-d");
    }

    #[test]
    fn fallback_on_empty_keeps_everything_when_nothing_qualifies() {
        let p = pool(vec![ep(1, 9, 0, 0.0), ep(2, 7, 0, 0.0)]);
        let req = SchedulingRequest::default();
        let strict: UtilizationFilter =
            built(r#"{"conditions": [{"metric": "waiting-queue", "maxValue": 2}]}"#);
        assert_eq!(kept(&strict, &p, &req), Vec::<usize>::new());
        let lenient: UtilizationFilter =
            built(r#"{"conditions": [{"metric": "waiting-queue", "maxValue": 2}], "fallbackOnEmpty": true}"#);
        assert_eq!(kept(&lenient, &p, &req), [0, 1]);
    }

    #[test]
    fn bad_conditions_name_the_field() {
        let err = |json: &str| build_err::<UtilizationFilter>(json).to_string();
        assert_eq!(
            err("{}"),
            "conditions: expected at least one condition (this parameter is required), got none"
        );
        assert_eq!(
            err(r#"{"conditions": [{"metric": "queue", "maxValue": 1}]}"#),
            r#"conditions[0].metric: expected one of active-requests, running-requests, waiting-queue, kv-cache-utilization, got "queue""#
        );
        assert_eq!(
            err(r#"{"conditions": [{"metric": "waiting-queue"}]}"#),
            "conditions[0].maxValue: expected a value (this parameter is required), got nothing"
        );
        assert_eq!(
            err(r#"{"conditions": [{"metric": "kv-cache-utilization", "maxValue": 80}]}"#),
            "conditions[0].maxValue: expected a fraction in [0, 1], got 80"
        );
        assert_eq!(
            err(r#"{"conditions": [{"metric": "waiting-queue", "maxValue": -1}]}"#),
            "conditions[0].maxValue: expected a number ≥ 0, got -1"
        );
    }
}
