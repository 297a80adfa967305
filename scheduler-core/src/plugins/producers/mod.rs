//! Producers of per-request data (llm-d's data producers): plugins that play no part in a profile but
//! own state that filters and scorers read by the producer's name (see `scheduling::factory`).

pub mod approx_prefix_cache_producer;
