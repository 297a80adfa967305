//! Profile handlers: which scheduling profiles run for a request, and which result is the destination.

pub mod disagg_profile_handler;
pub mod header_profile_handler;
pub mod pd_profile_handler;
pub mod single_profile_handler;
