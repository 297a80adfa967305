//! The gateway configuration as JSON (the Wasm plugin configuration; the shim's file when it starts with
//! `{`): refused with an error naming a place, or built into a picker that then decides a request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scheduler_core::config::gateway::GatewayConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match GatewayConfig::from_json(text) {
        Ok(config) => wasm_epp_fuzz::build_and_decide(config),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
