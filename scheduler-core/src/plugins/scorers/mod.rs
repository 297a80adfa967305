//! Scorers: each gives every candidate a score in [0, 1]; the pipeline weights and sums them.

pub mod active_request_scorer;
pub mod context_length_aware;
pub mod header_label_affinity_scorer;
pub mod inflight_aware_queue_scorer;
pub mod kv_cache_utilization_scorer;
pub mod load_aware_scorer;
pub mod lora_affinity_scorer;
pub mod lora_slot_scorer;
pub mod no_hit_lru_scorer;
pub mod prefill_backlog_scorer;
pub mod prefix_cache_scorer;
pub mod prefix_owner_scorer;
pub mod queue_scorer;
pub mod running_requests_size_scorer;
pub mod session_affinity_scorer;
pub mod token_load_scorer;
