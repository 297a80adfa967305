//! Configuration `type` name → plugin constructor. The one place a new plugin is made known.
//!
//! Adding a plugin is one line in `BUILTIN`; tests and embedders can extend a `Registry` with their own.

use super::filters::{decode_filter, prefill_filter};
use super::params::ParamError;
use super::pickers::{max_score_picker, random_picker, weighted_random_picker};
use super::profile_handlers::{pd_profile_handler, single_profile_handler};
use crate::scheduling::Plugin;
use alloc::boxed::Box;
use alloc::vec::Vec;
use serde_json::Value;

/// Builds a plugin from its `parameters` (`Value::Null` when absent).
pub type Constructor = fn(&Value) -> Result<Box<dyn Plugin>, ParamError>;

const BUILTIN: &[(&str, Constructor)] = &[
    (max_score_picker::TYPE, max_score_picker::MaxScorePicker::build),
    (random_picker::TYPE, random_picker::RandomPicker::build),
    (weighted_random_picker::TYPE, weighted_random_picker::WeightedRandomPicker::build),
    (single_profile_handler::TYPE, single_profile_handler::SingleProfileHandler::build),
    (pd_profile_handler::TYPE, pd_profile_handler::PdProfileHandler::build),
    (prefill_filter::TYPE, prefill_filter::PrefillFilter::build),
    (decode_filter::TYPE, decode_filter::DecodeFilter::build),
];

/// The plugin types a scheduler can be built from.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<(&'static str, Constructor)>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::builtin()
    }
}

impl Registry {
    /// Every plugin shipped with wasm-epp.
    pub fn builtin() -> Registry {
        Registry { entries: BUILTIN.to_vec() }
    }

    /// Adds (or replaces) a type.
    pub fn with(mut self, type_name: &'static str, constructor: Constructor) -> Registry {
        self.entries.retain(|(t, _)| *t != type_name);
        self.entries.push((type_name, constructor));
        self
    }

    pub fn get(&self, type_name: &str) -> Option<Constructor> {
        self.entries.iter().find(|(t, _)| *t == type_name).map(|(_, c)| *c)
    }

    /// Known type names, sorted (for error messages).
    pub fn types(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.entries.iter().map(|(t, _)| *t).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_types_build_with_defaults() {
        let r = Registry::builtin();
        for t in r.types() {
            let ctor = r.get(t).unwrap();
            let plugin = ctor(&Value::Null).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(plugin.type_name(), t);
        }
        assert!(r.get("no-such-plugin").is_none());
    }
}
