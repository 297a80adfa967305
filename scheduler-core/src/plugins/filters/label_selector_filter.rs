//! `label-selector-filter` (llm-d): keeps the endpoints whose pod labels match a Kubernetes label
//! selector, given as the filter's `parameters` (`matchLabels`, `matchExpressions`).
//!
//! Every term must hold: `matchLabels` entries need the label with that value; expressions use the four
//! Kubernetes operators (`In`, `NotIn`, `Exists`, `DoesNotExist`), where `NotIn` and `DoesNotExist` also
//! hold for a pod without the label. An empty selector keeps everything. Keys, values and operators
//! are checked as Kubernetes checks them, so a selector that Kubernetes would refuse is refused here
//! with the field named. `by-label-selector` is llm-d's deprecated name for the same filter.

use crate::config::params::ParamError;
use crate::model::Endpoint;
use crate::scheduling::{BuildContext, CycleState, Filter, Plugin, PluginFactory, SchedulingContext};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

pub const TYPE: &str = "label-selector-filter";
/// llm-d's deprecated name for this filter.
pub const DEPRECATED_TYPE: &str = "by-label-selector";

/// A Kubernetes `LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Term {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Term {
    fn holds(&self, e: &Endpoint) -> bool {
        match self {
            Term::Equals(k, v) => e.label(k) == Some(v.as_str()),
            Term::In(k, vs) => e.label(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Term::NotIn(k, vs) => e.label(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Term::Exists(k) => e.label(k).is_some(),
            Term::DoesNotExist(k) => e.label(k).is_none(),
        }
    }
}

/// Keeps the candidates whose labels satisfy every term.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelSelectorFilter {
    terms: Vec<Term>,
}

impl LabelSelectorFilter {
    fn from_params(params: Params) -> Result<LabelSelectorFilter, ParamError> {
        let mut terms = Vec::with_capacity(params.match_labels.len() + params.match_expressions.len());
        for (k, v) in params.match_labels {
            let field = format!("matchLabels.{k}");
            check_key(&field, &k)?;
            check_value(&field, &v)?;
            terms.push(Term::Equals(k, v));
        }
        for (i, r) in params.match_expressions.into_iter().enumerate() {
            let at = |f: &str| format!("matchExpressions[{i}].{f}");
            check_key(&at("key"), &r.key)?;
            for (j, v) in r.values.iter().enumerate() {
                check_value(&at(&format!("values[{j}]")), v)?;
            }
            let needs_values = matches!(r.operator.as_str(), "In" | "NotIn");
            if needs_values && r.values.is_empty() {
                return Err(ParamError::new(
                    at("values"),
                    format!("at least one value for operator {}", r.operator),
                    Some(String::from("none")),
                ));
            }
            if !needs_values
                && !r.values.is_empty()
                && matches!(r.operator.as_str(), "Exists" | "DoesNotExist")
            {
                return Err(ParamError::new(
                    at("values"),
                    format!("no values for operator {}", r.operator),
                    Some(format!("{} values", r.values.len())),
                ));
            }
            terms.push(match r.operator.as_str() {
                "In" => Term::In(r.key, r.values),
                "NotIn" => Term::NotIn(r.key, r.values),
                "Exists" => Term::Exists(r.key),
                "DoesNotExist" => Term::DoesNotExist(r.key),
                other => {
                    return Err(ParamError::new(
                        at("operator"),
                        "one of In, NotIn, Exists, DoesNotExist",
                        Some(format!("{other:?}")),
                    ))
                }
            });
        }
        Ok(LabelSelectorFilter { terms })
    }
}

impl PluginFactory for LabelSelectorFilter {
    const TYPE: &'static str = TYPE;
    type Params = Params;

    fn build(params: Params, _: &mut BuildContext<'_>) -> Result<LabelSelectorFilter, ParamError> {
        LabelSelectorFilter::from_params(params)
    }
}

impl Plugin for LabelSelectorFilter {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(self)
    }
}

impl Filter for LabelSelectorFilter {
    fn filter(&self, ctx: &SchedulingContext<'_>, _: &mut CycleState, candidates: &mut Vec<usize>) {
        candidates.retain(|&i| {
            ctx.pool.endpoints.get(i).is_some_and(|e| self.terms.iter().all(|t| t.holds(&e.endpoint)))
        });
    }
}

/// `by-label-selector`: [`LabelSelectorFilter`] under llm-d's deprecated name (warns).
pub struct ByLabelSelector(LabelSelectorFilter);

impl PluginFactory for ByLabelSelector {
    const TYPE: &'static str = DEPRECATED_TYPE;
    type Params = Params;

    fn build(params: Params, ctx: &mut BuildContext<'_>) -> Result<ByLabelSelector, ParamError> {
        ctx.warn("", format!("plugin type {DEPRECATED_TYPE} is deprecated in llm-d, use {TYPE}"));
        LabelSelectorFilter::from_params(params).map(ByLabelSelector)
    }
}

impl Plugin for ByLabelSelector {
    fn type_name(&self) -> &'static str {
        DEPRECATED_TYPE
    }
    fn as_filter(&self) -> Option<&dyn Filter> {
        Some(&self.0)
    }
}

/// Kubernetes' label name rule: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    let inner_ok = b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    let ends_ok =
        b.first().is_some_and(u8::is_ascii_alphanumeric) && b.last().is_some_and(u8::is_ascii_alphanumeric);
    !b.is_empty() && b.len() <= 63 && inner_ok && ends_ok
}

/// A DNS-1123 subdomain (label key prefix): lower-case alphanumerics, `-` and `.`, at most 253.
fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    let inner_ok = b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'));
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 253 && inner_ok && b.first().is_some_and(alnum) && b.last().is_some_and(alnum)
}

fn check_key(field: &str, key: &str) -> Result<(), ParamError> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    };
    if ok {
        Ok(())
    } else {
        Err(ParamError::new(
            field,
            "a Kubernetes label key ([prefix/]name, name at most 63 alphanumerics, '-', '_', '.')",
            Some(format!("{key:?}")),
        ))
    }
}

fn check_value(field: &str, value: &str) -> Result<(), ParamError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(ParamError::new(
            field,
            "a Kubernetes label value (empty, or at most 63 alphanumerics, '-', '_', '.')",
            Some(format!("{value:?}")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::{bare, build_err, built, kept, pool, try_build_with};
    use crate::scheduling::{SchedulingRequest, SharedState};
    use alloc::string::ToString;

    /// Endpoints 1..: labels as given.
    fn labelled(sets: &[&[(&str, &str)]]) -> crate::model::PoolSnapshot {
        pool(
            (1u8..)
                .zip(sets)
                .map(|(n, labels)| {
                    let mut e = bare(n);
                    e.endpoint.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                    e
                })
                .collect(),
        )
    }

    #[test]
    fn every_term_must_hold() {
        let p = labelled(&[
            &[("llm-d.ai/role", "decode"), ("zone", "a")],
            &[("llm-d.ai/role", "decode"), ("zone", "b")],
            &[("llm-d.ai/role", "prefill"), ("zone", "a")],
            &[("llm-d.ai/role", "decode"), ("zone", "a"), ("canary", "true")],
            &[],
        ]);
        let req = SchedulingRequest::default();
        let f: LabelSelectorFilter = built(
            r#"{"matchLabels": {"llm-d.ai/role": "decode"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "c"]},
                                     {"key": "canary", "operator": "DoesNotExist"}]}"#,
        );
        assert_eq!(kept(&f, &p, &req), [0]);
        let f: LabelSelectorFilter =
            built(r#"{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}"#);
        assert_eq!(kept(&f, &p, &req), [1, 4], "NotIn holds for a pod without the label");
        let f: LabelSelectorFilter =
            built(r#"{"matchExpressions": [{"key": "canary", "operator": "Exists"}]}"#);
        assert_eq!(kept(&f, &p, &req), [3]);
        let f: LabelSelectorFilter = built("{}");
        assert_eq!(kept(&f, &p, &req), [0, 1, 2, 3, 4], "the empty selector keeps everything");
    }

    #[test]
    fn selectors_kubernetes_refuses_are_refused_with_the_field() {
        let err = |json: &str| build_err::<LabelSelectorFilter>(json).to_string();
        assert_eq!(
            err(r#"{"matchExpressions": [{"key": "zone", "operator": "in", "values": ["a"]}]}"#),
            r#"matchExpressions[0].operator: expected one of In, NotIn, Exists, DoesNotExist, got "in""#
        );
        assert_eq!(
            err(r#"{"matchExpressions": [{"key": "zone", "operator": "In"}]}"#),
            "matchExpressions[0].values: expected at least one value for operator In, got none"
        );
        assert_eq!(
            err(r#"{"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]}"#),
            "matchExpressions[0].values: expected no values for operator Exists, got 1 values"
        );
        assert!(err(r#"{"matchLabels": {"bad key": "a"}}"#)
            .starts_with("matchLabels.bad key: expected a Kubernetes label key"));
        assert!(
            err(r#"{"matchLabels": {"Example.com/x": "a"}}"#).contains("label key"),
            "prefixes are lower case"
        );
        assert!(err(r#"{"matchLabels": {"zone": "a b"}}"#)
            .starts_with("matchLabels.zone: expected a Kubernetes label value"));
        assert!(err(r#"{"matchLabel": {}}"#).starts_with("matchLabel: expected one of the known parameters"));
    }

    #[test]
    fn the_deprecated_name_selects_the_same() {
        let mut shared = SharedState::default();
        let f = try_build_with::<ByLabelSelector>(r#"{"matchLabels": {"zone": "b"}}"#, &mut shared).unwrap();
        let p = labelled(&[&[("zone", "a")], &[("zone", "b")]]);
        assert_eq!(kept(&f, &p, &SchedulingRequest::default()), [1]);
        assert_eq!(f.type_name(), DEPRECATED_TYPE);
    }
}
