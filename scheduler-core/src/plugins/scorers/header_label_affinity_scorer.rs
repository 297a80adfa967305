//! `header-label-affinity-scorer` (llm-d): 1 for endpoints whose pod label `labelKey` equals the
//! request header `headerName`, 0 for the others, and 0 for all when the header is absent or empty.
//!
//! A preference, not a rule: a request for zone `a` still lands elsewhere when the other scorers
//! outweigh it (use `label-selector-filter` for a rule).

use crate::config::params::ParamError;
use crate::plugins::candidates::state;
use crate::scheduling::{BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer};
use alloc::string::String;
use serde::Deserialize;
use serde_json::Value;

pub const TYPE: &str = "header-label-affinity-scorer";

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    pub header_name: String,
    pub label_key: String,
}

/// The lower-case request header a `header-label-affinity-scorer` entry with these `parameters` reads
/// (for the exchange, which keeps only the headers plugins read). `None` when not given.
pub fn header_name(parameters: &Value) -> Option<String> {
    let name = parameters.get("headerName").and_then(Value::as_str).unwrap_or("");
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeaderLabelAffinityScorer {
    header: String,
    label_key: String,
}

impl PluginFactory for HeaderLabelAffinityScorer {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<HeaderLabelAffinityScorer, ParamError> {
        let required = |field: &str| {
            let expected = "the name of a request header (this parameter is required)";
            let expected =
                if field == "labelKey" { "a pod label key (this parameter is required)" } else { expected };
            ParamError::new(field, expected, Some(String::from("nothing")))
        };
        if params.header_name.is_empty() {
            return Err(required("headerName"));
        }
        if params.label_key.is_empty() {
            return Err(required("labelKey"));
        }
        Ok(HeaderLabelAffinityScorer {
            header: params.header_name.to_ascii_lowercase(),
            label_key: params.label_key,
        })
    }
}

impl Plugin for HeaderLabelAffinityScorer {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_scorer(&self) -> Option<&dyn Scorer> {
        Some(self)
    }
}

impl Scorer for HeaderLabelAffinityScorer {
    fn score(
        &self,
        ctx: &SchedulingContext<'_>,
        _: &mut CycleState,
        candidates: &[usize],
        scores: &mut [f64],
    ) {
        let wanted = ctx.request.header(&self.header).filter(|v| !v.is_empty());
        for (slot, &i) in scores.iter_mut().zip(candidates) {
            let label = state(ctx, i).and_then(|s| s.endpoint.label(&self.label_key));
            *slot = if wanted.is_some() && label == wanted { 1.0 } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::{assert_close, bare, build_err, built, pool, scores};
    use crate::scheduling::SchedulingRequest;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn endpoints_labelled_as_the_header_asks_score_one() {
        let mut eps = Vec::new();
        for (n, zone) in (1u8..).zip([Some("a"), Some("b"), None]) {
            let mut e = bare(n);
            if let Some(z) = zone {
                e.endpoint.labels.push((String::from("topology.kubernetes.io/zone"), z.to_string()));
            }
            eps.push(e);
        }
        let p = pool(eps);
        let s: HeaderLabelAffinityScorer =
            built(r#"{"headerName": "X-Zone", "labelKey": "topology.kubernetes.io/zone"}"#);
        let headers = vec![(String::from("x-zone"), String::from("b"))];
        let req = SchedulingRequest { headers: &headers, ..SchedulingRequest::default() };
        assert_close(&scores(&s, &p, &req), &[0.0, 1.0, 0.0]);
        assert_close(&scores(&s, &p, &SchedulingRequest::default()), &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn both_parameters_are_required() {
        assert_eq!(
            build_err::<HeaderLabelAffinityScorer>(r#"{"labelKey": "zone"}"#).to_string(),
            "headerName: expected the name of a request header (this parameter is required), got nothing"
        );
        assert_eq!(
            build_err::<HeaderLabelAffinityScorer>(r#"{"headerName": "x-zone"}"#).to_string(),
            "labelKey: expected a pod label key (this parameter is required), got nothing"
        );
        assert_eq!(header_name(&serde_json::json!({"headerName": "X-Zone"})).as_deref(), Some("x-zone"));
    }
}
