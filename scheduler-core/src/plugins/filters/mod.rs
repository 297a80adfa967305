//! Filters: each removes candidates that should not get the request.

pub mod least_kv_cache_filter;
pub mod least_queue_filter;
pub mod lora_affinity_filter;
pub mod low_queue_filter;
pub mod prefix_cache_affinity_filter;
