//! Filters: remove candidates a profile must not consider.

pub mod decode_filter;
pub mod least_kv_cache_filter;
pub mod least_queue_filter;
pub mod lora_affinity_filter;
pub mod low_queue_filter;
pub mod prefill_filter;
pub mod prefix_cache_affinity_filter;
