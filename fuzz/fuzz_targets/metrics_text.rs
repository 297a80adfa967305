//! Prometheus text from a model server, read as each engine's metrics: never a panic, a kv-cache use
//! that is a fraction, and every sample's labels iterable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scheduler_core::metrics_text::parse_metrics_bytes;
use scheduler_core::metrics_text::prometheus::samples_from_bytes;
use scheduler_core::model::Engine;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let engine = wasm_epp_fuzz::pick(&Engine::ALL, which);
    if let Ok(parsed) = parse_metrics_bytes(engine, body, wasm_epp_fuzz::NOW_MS) {
        let kv = parsed.metrics.kv_usage;
        assert!((0.0..=1.0).contains(&kv), "kv usage {kv} is not a fraction");
        assert_eq!(parsed.metrics.updated_at_ms, wasm_epp_fuzz::NOW_MS);
    }
    let mut samples = samples_from_bytes(body);
    for s in samples.by_ref() {
        assert!(!s.name.is_empty());
        for (name, _value) in s.labels.iter() {
            assert!(!name.is_empty());
        }
    }
    let stats = samples.stats();
    assert!(stats.samples + stats.comments + stats.blank + stats.malformed <= stats.lines);
});
