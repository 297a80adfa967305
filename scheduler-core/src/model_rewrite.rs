//! InferenceModelRewrite: map the model a client asked for to the model actually served, with weighted
//! splits for canaries and A/B tests.
//!
//! Precedence follows llm-d: an exact match beats a catch-all rule, then the older resource, then rule order.

use crate::config::ConfigError;
use crate::rng::Rng;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::Deserialize;
use serde_json::Value;

pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum MatchType {
    #[default]
    Exact,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelMatch {
    #[serde(rename = "type", default)]
    pub match_type: MatchType,
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub model: ModelMatch,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    pub model_rewrite: String,
    /// 1..=1,000,000; all targets of a rule set it or none does (then they split evenly).
    #[serde(default)]
    pub weight: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Any match suffices; empty = every model.
    #[serde(default)]
    pub matches: Vec<Match>,
    pub targets: Vec<Target>,
}

/// The `spec` of one InferenceModelRewrite resource.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InferenceModelRewrite {
    /// For messages only.
    #[serde(default)]
    pub name: Option<String>,
    /// Accepted for compatibility with the resource's spec; the embedder already chose the pool.
    #[serde(default)]
    pub pool_ref: Option<Value>,
    pub rules: Vec<Rule>,
}

/// All rewrites of a pool, oldest resource first, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelRewrites {
    rewrites: Vec<InferenceModelRewrite>,
}

fn validate(i: usize, r: &InferenceModelRewrite) -> Result<(), ConfigError> {
    for (j, rule) in r.rules.iter().enumerate() {
        let path = format!("rewrites[{i}].rules[{j}]");
        for (k, m) in rule.matches.iter().enumerate() {
            if m.model.value.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.matches[{k}].model.value"),
                    "a model name",
                    Some(String::from("\"\"")),
                ));
            }
        }
        if rule.targets.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.targets"),
                "at least one target",
                Some(String::from("[]")),
            ));
        }
        let weighted = rule.targets.iter().filter(|t| t.weight.is_some()).count();
        for (k, t) in rule.targets.iter().enumerate() {
            let tp = format!("{path}.targets[{k}]");
            if t.model_rewrite.is_empty() {
                return Err(ConfigError::new(
                    format!("{tp}.modelRewrite"),
                    "a model name",
                    Some(String::from("\"\"")),
                ));
            }
            match t.weight {
                Some(w) if !(1..=i64::from(MAX_WEIGHT)).contains(&w) => {
                    return Err(ConfigError::new(
                        format!("{tp}.weight"),
                        format!("an integer in 1..={MAX_WEIGHT}"),
                        Some(w.to_string()),
                    ));
                }
                None if weighted > 0 => {
                    return Err(ConfigError::new(
                        format!("{tp}.weight"),
                        "a weight (set on every target of the rule or on none)",
                        Some(String::from("nothing")),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl ModelRewrites {
    pub fn new(rewrites: Vec<InferenceModelRewrite>) -> Result<ModelRewrites, ConfigError> {
        for (i, r) in rewrites.iter().enumerate() {
            validate(i, r)?;
        }
        Ok(ModelRewrites { rewrites })
    }

    /// Parses a JSON list of rewrite specs (oldest first).
    pub fn from_json(text: &str) -> Result<ModelRewrites, ConfigError> {
        let list: Vec<InferenceModelRewrite> = serde_json::from_str(text).map_err(|e| {
            ConfigError::new(
                "rewrites",
                "a list of InferenceModelRewrite specs ({\"rules\": [...]})",
                Some(e.to_string()),
            )
        })?;
        ModelRewrites::new(list)
    }

    pub fn is_empty(&self) -> bool {
        self.rewrites.is_empty()
    }

    /// The specs, oldest resource first.
    pub fn specs(&self) -> &[InferenceModelRewrite] {
        &self.rewrites
    }

    /// The rule for `model`, from these rewrites and then `after` as if every one of them were newer: an
    /// exact match anywhere beats a catch-all, and among equals these come first.
    fn rule_for<'a>(&'a self, after: Option<&'a ModelRewrites>, model: &str) -> Option<&'a Rule> {
        let rules = || {
            self.rewrites
                .iter()
                .chain(after.into_iter().flat_map(|a| a.rewrites.iter()))
                .flat_map(|r| r.rules.iter())
        };
        rules()
            .find(|rule| rule.matches.iter().any(|m| m.model.value == model))
            .or_else(|| rules().find(|rule| rule.matches.is_empty()))
    }

    /// The model to serve instead of `model`, or `None` when no rule applies.
    pub fn rewrite(&self, model: &str, rng: &mut Rng) -> Option<&str> {
        self.rewrite_or(None, model, rng)
    }

    /// Like [`ModelRewrites::rewrite`] over these rewrites (the configuration's) followed by `after` (the
    /// pool's Kubernetes resources): where both have an exact rule, or both only a catch-all, these win.
    pub fn rewrite_or<'a>(
        &'a self,
        after: Option<&'a ModelRewrites>,
        model: &str,
        rng: &mut Rng,
    ) -> Option<&'a str> {
        let targets = &self.rule_for(after, model)?.targets;
        let weight = |t: &Target| t.weight.and_then(|w| u64::try_from(w).ok()).unwrap_or(1);
        let total: u64 = targets.iter().map(weight).sum();
        // Uniform draw in [0, total) by multiply-high: exact range, no modulo bias worth mentioning.
        let mut draw = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
        for t in targets {
            let w = weight(t);
            if draw < w {
                return Some(&t.model_rewrite);
            }
            draw -= w;
        }
        targets.last().map(|t| t.model_rewrite.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrites(json: &str) -> Result<ModelRewrites, String> {
        ModelRewrites::from_json(json).map_err(|e| e.to_string())
    }

    #[test]
    fn split_70_30() {
        let r = rewrites(
            r#"[{"rules": [{"matches": [{"model": {"type": "Exact", "value": "llama"}}],
                "targets": [{"modelRewrite": "llama-v1", "weight": 70}, {"modelRewrite": "llama-v2", "weight": 30}]}]}]"#,
        )
        .unwrap();
        let mut rng = Rng::new(2024);
        let v1 = (0..10_000).filter(|_| r.rewrite("llama", &mut rng) == Some("llama-v1")).count();
        assert!((6800..=7200).contains(&v1), "llama-v1 got {v1} of 10000");
        assert_eq!(r.rewrite("mistral", &mut rng), None, "no rule for another model");
    }

    #[test]
    fn exact_beats_wildcard_then_older_then_order() {
        let r = rewrites(
            r#"[{"name": "old", "rules": [
                  {"targets": [{"modelRewrite": "catch-all"}]},
                  {"matches": [{"model": {"value": "a"}}], "targets": [{"modelRewrite": "a-old"}]}]},
                {"name": "new", "rules": [
                  {"matches": [{"model": {"value": "a"}}, {"model": {"value": "b"}}], "targets": [{"modelRewrite": "ab-new"}]}]}]"#,
        )
        .unwrap();
        let mut rng = Rng::new(1);
        assert_eq!(
            r.rewrite("a", &mut rng),
            Some("a-old"),
            "exact beats the earlier catch-all; older resource wins"
        );
        assert_eq!(r.rewrite("b", &mut rng), Some("ab-new"));
        assert_eq!(r.rewrite("zzz", &mut rng), Some("catch-all"));
    }

    #[test]
    fn configuration_rules_come_before_the_pools_resources() {
        let config = rewrites(
            r#"[{"rules": [{"matches": [{"model": {"value": "a"}}], "targets": [{"modelRewrite": "a-config"}]},
                           {"targets": [{"modelRewrite": "config-catch-all"}]}]}]"#,
        )
        .unwrap();
        let pool = rewrites(
            r#"[{"rules": [{"matches": [{"model": {"value": "a"}}, {"model": {"value": "b"}}], "targets": [{"modelRewrite": "ab-pool"}]},
                           {"targets": [{"modelRewrite": "pool-catch-all"}]}]}]"#,
        )
        .unwrap();
        let mut rng = Rng::new(3);
        assert_eq!(
            config.rewrite_or(Some(&pool), "a", &mut rng),
            Some("a-config"),
            "both exact: configuration"
        );
        assert_eq!(config.rewrite_or(Some(&pool), "b", &mut rng), Some("ab-pool"), "exact beats a catch-all");
        assert_eq!(config.rewrite_or(Some(&pool), "z", &mut rng), Some("config-catch-all"));
        let empty = ModelRewrites::default();
        assert_eq!(empty.rewrite_or(Some(&pool), "z", &mut rng), Some("pool-catch-all"));
        assert_eq!(empty.rewrite_or(None, "z", &mut rng), None);
    }

    #[test]
    fn unweighted_targets_split_evenly() {
        let r = rewrites(r#"[{"rules": [{"targets": [{"modelRewrite": "x"}, {"modelRewrite": "y"}]}]}]"#)
            .unwrap();
        let mut rng = Rng::new(5);
        let x = (0..4000).filter(|_| r.rewrite("m", &mut rng) == Some("x")).count();
        assert!((1800..=2200).contains(&x), "{x}");
    }

    #[test]
    fn validation_errors_have_paths() {
        let cases = [
            (
                r#"[{"rules": [{"targets": [{"modelRewrite": "x", "weight": 0}]}]}]"#,
                "rewrites[0].rules[0].targets[0].weight: expected an integer in 1..=1000000, got 0",
            ),
            (
                r#"[{"rules": []}, {"rules": [{"targets": [{"modelRewrite": "x", "weight": 1000001}]}]}]"#,
                "rewrites[1].rules[0].targets[0].weight: expected an integer in 1..=1000000, got 1000001",
            ),
            (
                r#"[{"rules": [{"targets": [{"modelRewrite": "x", "weight": 5}, {"modelRewrite": "y"}]}]}]"#,
                "rewrites[0].rules[0].targets[1].weight: expected a weight (set on every target of the rule or on none), got nothing",
            ),
            (r#"[{"rules": [{"targets": []}]}]"#, "rewrites[0].rules[0].targets: expected at least one target, got []"),
            (
                r#"[{"rules": [{"matches": [{"model": {"value": ""}}], "targets": [{"modelRewrite": "x"}]}]}]"#,
                "rewrites[0].rules[0].matches[0].model.value: expected a model name, got \"\"",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(rewrites(json).unwrap_err(), want);
        }
        let e = rewrites(
            r#"[{"rules": [{"matches": [{"model": {"type": "Prefix", "value": "x"}}], "targets": []}]}]"#,
        )
        .unwrap_err();
        assert!(e.starts_with("rewrites: expected a list of InferenceModelRewrite specs"), "{e}");
    }
}
