//! The plugins: one file per configuration `type`, registered by name in `registry`.

pub mod filters;
pub mod params;
pub mod pickers;
pub mod profile_handlers;
pub mod registry;
