//! The `objectives` section: InferenceObjective names and their priorities, which decide whether a
//! request may be shed (negative priority) when the pool is saturated.

use super::ConfigError;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::Deserialize;

/// One InferenceObjective as configured: its name and priority (unset 0; negative = sheddable).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
}

/// Objective name → priority, for `x-gateway-inference-objective`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectivePriorities {
    objectives: Vec<Objective>,
}

impl ObjectivePriorities {
    /// Later duplicates of a name are ignored (the first definition wins).
    pub fn new(objectives: Vec<Objective>) -> ObjectivePriorities {
        let mut out: Vec<Objective> = Vec::with_capacity(objectives.len());
        for o in objectives {
            if out.iter().all(|x| x.name != o.name) {
                out.push(o);
            }
        }
        ObjectivePriorities { objectives: out }
    }

    /// Parses `[{"name": "...", "priority": -1}, ...]`.
    pub fn from_json(text: &str) -> Result<ObjectivePriorities, ConfigError> {
        serde_json::from_str::<Vec<Objective>>(text).map(ObjectivePriorities::new).map_err(|e| {
            ConfigError::new(
                "objectives",
                "a list of {\"name\": string, \"priority\": integer}",
                Some(e.to_string()),
            )
        })
    }

    /// Priority for the header value; unknown or absent objective → 0 (GIE).
    pub fn priority(&self, objective: Option<&str>) -> i32 {
        self.priority_or(None, objective)
    }

    /// Like [`ObjectivePriorities::priority`], asking `fallback` (the pool's Kubernetes resources) about a
    /// name this table does not define: the configuration wins where both name the objective.
    pub fn priority_or(&self, fallback: Option<&ObjectivePriorities>, objective: Option<&str>) -> i32 {
        objective.and_then(|n| self.get(n).or_else(|| fallback.and_then(|f| f.get(n)))).unwrap_or(0)
    }

    /// The priority of the objective called `name`, when there is one.
    pub fn get(&self, name: &str) -> Option<i32> {
        self.objectives.iter().find(|o| o.name == name).map(|o| o.priority)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Objective> {
        self.objectives.iter()
    }

    pub fn len(&self) -> usize {
        self.objectives.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objectives.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objective_priorities() {
        let t = ObjectivePriorities::from_json(r#"[{"name": "batch", "priority": -1}, {"name": "chat", "priority": 10}, {"name": "batch", "priority": 5}]"#)
            .unwrap();
        assert_eq!(t.priority(Some("batch")), -1, "first definition wins");
        assert_eq!(t.priority(Some("chat")), 10);
        assert_eq!(t.priority(Some("unknown")), 0);
        assert_eq!(t.priority(None), 0);
        assert!(ObjectivePriorities::from_json(r#"[{"name": "x", "priority": "high"}]"#).is_err());
    }

    #[test]
    fn configuration_wins_over_the_pools_resources_and_they_fill_the_rest() {
        let config = ObjectivePriorities::from_json(r#"[{"name": "batch", "priority": 3}]"#).unwrap();
        let pool = ObjectivePriorities::from_json(
            r#"[{"name": "batch", "priority": -1}, {"name": "offline", "priority": -5}]"#,
        )
        .unwrap();
        assert_eq!(config.priority_or(Some(&pool), Some("batch")), 3);
        assert_eq!(config.priority_or(Some(&pool), Some("offline")), -5);
        assert_eq!(config.priority_or(Some(&pool), Some("chat")), 0);
        assert_eq!(config.priority_or(None, Some("offline")), 0);
        assert_eq!(config.priority_or(Some(&pool), None), 0);
    }
}
