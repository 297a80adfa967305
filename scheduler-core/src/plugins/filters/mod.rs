pub mod prefix_cache_affinity_filter;
