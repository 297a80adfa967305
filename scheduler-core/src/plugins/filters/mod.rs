//! Filters: remove candidates a profile must not consider.

pub mod decode_filter;
pub mod prefill_filter;
