//! `by-label` (llm-d, deprecated): keeps the endpoints whose pod label `label` has one of
//! `validValues`, and, with `allowsNoLabel`, those without the label.
//!
//! llm-d recommends `label-selector-filter` (or the role filters) instead; configurations that still
//! use this name load with a warning saying so.

use crate::config::params::ParamError;
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "by-label";

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// The pod label to read (required).
    pub label: String,
    /// Values that keep an endpoint.
    pub valid_values: Vec<String>,
    /// Whether an endpoint without the label is kept.
    pub allows_no_label: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ByLabelFilter {
    label: String,
    valid_values: Vec<String>,
    allows_no_label: bool,
}

impl PluginFactory for ByLabelFilter {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, ctx: &mut BuildContext<'_>) -> Result<ByLabelFilter, ParamError> {
        if params.label.is_empty() {
            let expected = "the name of a pod label (this parameter is required)";
            return Err(ParamError::new("label", expected, Some(String::from("nothing"))));
        }
        if params.valid_values.is_empty() && !params.allows_no_label {
            return Err(ParamError::new(
                "validValues",
                "at least one value (or allowsNoLabel: true)",
                Some(String::from("none")),
            ));
        }
        ctx.warn("", "plugin type by-label is deprecated in llm-d, use label-selector-filter");
        Ok(ByLabelFilter {
            label: params.label,
            valid_values: params.valid_values,
            allows_no_label: params.allows_no_label,
        })
    }
}

impl Plugin for ByLabelFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}

impl Filter for ByLabelFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| {
            ctx.pool.endpoints.get(i).is_some_and(|e| {
                let value = e.endpoint.label(&self.label);
                // As in llm-d, an absent label reads as "" for the value test.
                (value.is_none() && self.allows_no_label)
                    || self.valid_values.iter().any(|v| v == value.unwrap_or_default())
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::{bare, build_err, built, kept, pool};
    use crate::scheduling::SchedulingRequest;
    use alloc::string::ToString;

    #[test]
    fn keeps_valid_values_and_optionally_the_unlabelled() {
        let mut eps = Vec::new();
        for (n, v) in (1u8..).zip([Some("a"), Some("b"), None]) {
            let mut e = bare(n);
            if let Some(v) = v {
                e.endpoint.labels.push((String::from("tier"), v.to_string()));
            }
            eps.push(e);
        }
        let p = pool(eps);
        let req = SchedulingRequest::default();
        let f: ByLabelFilter = built(r#"{"label": "tier", "validValues": ["a"]}"#);
        assert_eq!(kept(&f, &p, &req), [0]);
        let f: ByLabelFilter = built(r#"{"label": "tier", "validValues": ["b"], "allowsNoLabel": true}"#);
        assert_eq!(kept(&f, &p, &req), [1, 2]);
        assert_eq!(
            build_err::<ByLabelFilter>(r#"{"validValues": ["a"]}"#).to_string(),
            "label: expected the name of a pod label (this parameter is required), got nothing"
        );
        assert_eq!(
            build_err::<ByLabelFilter>(r#"{"label": "tier"}"#).to_string(),
            "validValues: expected at least one value (or allowsNoLabel: true), got none"
        );
    }
}
