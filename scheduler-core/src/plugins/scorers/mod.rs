pub mod prefix_cache_scorer;
