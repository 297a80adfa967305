//! The built-in plugins: one file per configuration `type`, grouped by the part they play.
//!
//! Each plugin has a `Params` struct (deserialized from the config entry's `parameters`), a
//! `Params::validate` that returns a typed [`params::ParamError`], and `new(params)`.

pub mod candidates;
pub mod detectors;
pub mod filters;
pub mod params;
pub mod scorers;
#[cfg(test)]
pub(crate) mod test_support;
