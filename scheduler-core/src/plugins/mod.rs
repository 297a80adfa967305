//! The built-in plugins: one file per configuration `type`, grouped by the part they play, and mapped
//! from type names to constructors in [`registry`].
//!
//! Each plugin has a `Params` struct (deserialized from the config entry's `parameters`), a
//! `Params::validate` that returns a typed [`params::ParamError`], and `new(params)`.

pub mod candidates;
pub mod detectors;
pub mod filters;
pub mod pickers;
pub mod profile_handlers;
pub mod registry;
pub mod scorers;
#[cfg(test)]
pub(crate) mod test_support;
