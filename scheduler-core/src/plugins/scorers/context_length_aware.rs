//! `context-length-aware` (llm-d): prefers endpoints whose pod label declares a context-length range
//! that fits the request, and, with `enableFiltering`, drops those whose range does not.
//!
//! The label (default `llm-d.ai/context-length-range`) holds `min-max` in tokens. The request's length
//! is its estimated input tokens (4 bytes per token; llm-d's tokenizer-free estimate counts the same
//! way, over a slightly different flattening of chat messages). Scores, as llm-d computes them:
//! no label 0.5; an unreadable label 0; inside the range `0.3 + 0.7 × (0.7 × 1/(1 + width/10000) +
//! 0.3 × headroom/width)` (1 for a single-value range), so narrow ranges and room to spare win; outside
//! `0.3 / (1 + distance/1000)`. The filter keeps unlabelled endpoints and those whose range contains
//! the length; an unreadable label drops the endpoint.

use crate::config::params::ParamError;
use crate::plugins::candidates::state;
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext, Scorer};
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "context-length-aware";
pub const DEFAULT_LABEL: &str = "llm-d.ai/context-length-range";

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    pub label: String,
    pub enable_filtering: bool,
}

impl Default for Params {
    fn default() -> Params {
        Params { label: String::from(DEFAULT_LABEL), enable_filtering: false }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ContextLengthAware {
    label: String,
    enable_filtering: bool,
}

impl PluginFactory for ContextLengthAware {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<ContextLengthAware, ParamError> {
        if params.label.is_empty() {
            return Err(ParamError::new("label", "the name of a pod label", Some(String::from("\"\""))));
        }
        Ok(ContextLengthAware { label: params.label, enable_filtering: params.enable_filtering })
    }
}

/// `min-max` (integers, min ≤ max, spaces around either allowed), as llm-d reads it.
fn parse_range(text: &str) -> Option<(i64, i64)> {
    let mut parts = text.split('-');
    let (lo, hi) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (lo, hi): (i64, i64) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo <= hi).then_some((lo, hi))
}

fn range_score(len: i64, (lo, hi): (i64, i64)) -> f64 {
    const FLOOR: f64 = 0.3;
    if (lo..=hi).contains(&len) {
        let width = hi.saturating_sub(lo);
        if width == 0 {
            return 1.0;
        }
        let width_score = 1.0 / (1.0 + width as f64 / 10_000.0);
        let position = hi.saturating_sub(len) as f64 / width as f64;
        return FLOOR + (0.7 * width_score + 0.3 * position) * (1.0 - FLOOR);
    }
    let distance = if len > hi { len.saturating_sub(hi) } else { lo.saturating_sub(len) };
    FLOOR / (1.0 + distance as f64 / 1000.0)
}

impl ContextLengthAware {
    /// The candidate's declared range: `None` without the label, `Some(None)` when it is unreadable.
    fn range(&self, ctx: &SchedulingContext<'_>, i: usize) -> Option<Option<(i64, i64)>> {
        state(ctx, i).and_then(|s| s.endpoint.label(&self.label)).map(parse_range)
    }
}

fn request_length(ctx: &SchedulingContext<'_>) -> i64 {
    i64::try_from(ctx.request.estimated_input_tokens()).unwrap_or(i64::MAX)
}

impl Plugin for ContextLengthAware {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Filter for ContextLengthAware {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        if !self.enable_filtering {
            return;
        }
        let len = request_length(ctx);
        candidates.retain(|&i| match self.range(ctx, i) {
            None => true,
            Some(None) => false,
            Some(Some((lo, hi))) => (lo..=hi).contains(&len),
        });
    }
}

impl Scorer for ContextLengthAware {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let len = request_length(ctx);
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            *slot = match self.range(ctx, i) {
                None => 0.5,
                Some(None) => 0.0,
                Some(Some(r)) => range_score(len, r),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::{assert_close, bare, build_err, built, kept, pool, scores};
    use crate::scheduling::SchedulingRequest;
    use alloc::string::ToString;

    /// Endpoint n carries the range label value given (or none).
    fn ranged(values: &[Option<&str>]) -> crate::model::PoolSnapshot {
        pool(
            (1u8..)
                .zip(values)
                .map(|(n, v)| {
                    let mut e = bare(n);
                    if let Some(v) = v {
                        e.endpoint.labels.push((DEFAULT_LABEL.to_string(), v.to_string()));
                    }
                    e
                })
                .collect(),
        )
    }

    #[test]
    fn scores_follow_llm_d_s_formula() {
        // 4000 bytes = 1000 tokens.
        let req = SchedulingRequest { prompt_bytes: 4000, ..SchedulingRequest::default() };
        let p =
            ranged(&[None, Some("0-2000"), Some("1000-1000"), Some("2000-8000"), Some("0-500"), Some("big")]);
        let s: ContextLengthAware = built("{}");
        let inside = 0.3 + (0.7 / (1.0 + 0.2) + 0.3 * 0.5) * 0.7;
        assert_close(&scores(&s, &p, &req), &[0.5, inside, 1.0, 0.3 / 2.0, 0.3 / 1.5, 0.0]);
        assert_eq!(kept(&s, &p, &req), [0, 1, 2, 3, 4, 5], "no filtering unless enabled");
        let f: ContextLengthAware = built(r#"{"enableFiltering": true}"#);
        assert_eq!(kept(&f, &p, &req), [0, 1, 2], "unlabelled and fitting endpoints stay");
    }

    #[test]
    fn ranges_read_as_llm_d_reads_them() {
        assert_eq!(parse_range("0-4096"), Some((0, 4096)));
        assert_eq!(parse_range(" 10 - 20 "), Some((10, 20)));
        for bad in ["", "10", "20-10", "1-2-3", "a-b", "-5-10"] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
        }
        assert_eq!(
            build_err::<ContextLengthAware>(r#"{"label": ""}"#).to_string(),
            r#"label: expected the name of a pod label, got """#
        );
    }
}
