//! The shim's configuration file through `wasm_epp_fuzz::config::parse` (YAML, or JSON when it starts with
//! `{`): refused with a message, or built into a picker that then decides a request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match wasm_epp_fuzz::config::parse(text) {
        Ok(config) => wasm_epp_fuzz::build_and_decide(config),
        Err((yaml, config)) => assert!(yaml.is_some() || config.is_some_and(|e| !e.to_string().is_empty())),
    }
});
