//! The built-in plugins: one file per configuration `type`, grouped by the part they play, and listed
//! by type name in [`registry`].
//!
//! Each plugin implements [`PluginFactory`](crate::scheduling::PluginFactory): its `TYPE`, a `Params`
//! struct deserialized from the entry's `parameters`, and `build`, which checks the parameters (errors
//! name the field) and makes the plugin. CONTRIBUTING.md walks through adding one.

pub mod candidates;
pub mod deciders;
pub mod detectors;
pub mod filters;
pub mod pickers;
pub mod producers;
pub mod profile_handlers;
pub mod registry;
pub mod scorers;
#[cfg(test)]
pub(crate) mod test_support;
pub mod upstream;
