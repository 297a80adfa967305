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
        objective.and_then(|n| self.objectives.iter().find(|o| o.name == n)).map_or(0, |o| o.priority)
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
}
