//! Body-based routing (`scheduler-core/src/bbr/`) on arbitrary bodies and request headers, with GIE's two
//! plugins configured: never a panic; a promoted header has a valid name and a value without control
//! characters (it becomes an HTTP header the route table matches); a refusal is an OpenAI-shaped JSON
//! error with a 4xx status.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scheduler_core::bbr::BbrFacts;
use scheduler_core::config::gateway::GatewayConfig;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
struct Input {
    path: u8,
    content_type: Option<String>,
    content_encoding: Option<String>,
    body: Option<Vec<u8>>,
}

const PATHS: [&str; 4] = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"];

fn config() -> &'static GatewayConfig {
    static CONFIG: OnceLock<GatewayConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        GatewayConfig::from_json(
            r#"{"limits": {"maxBodyBytes": 65536}, "bbr": {"unknownModels": "reject", "plugins": [
                {"type": "body-field-to-header", "name": "model",
                 "parameters": {"fieldName": "model", "headerName": "X-Gateway-Model-Name"}},
                {"type": "body-field-to-header", "name": "user",
                 "parameters": {"fieldName": "user", "headerName": "x-user"}},
                {"type": "base-model-to-header", "name": "base", "parameters": {"baseModels": [
                    {"baseModel": "qwen", "adapters": ["food-review", "sql"]},
                    {"baseModel": "llama", "adapters": []}]}}]}}"#,
        )
        .expect("the fuzz target's configuration is valid")
    })
}

fuzz_target!(|input: Input| {
    let config = config();
    let Some(bbr) = config.bbr.as_ref() else { panic!("no bbr section") };
    let facts = BbrFacts {
        path: String::from(PATHS[usize::from(input.path) % PATHS.len()]),
        content_type: input.content_type,
        content_encoding: input.content_encoding,
    };
    match bbr.route(config, &facts, input.body.as_deref()) {
        Ok(headers) => {
            for (name, value) in &headers {
                assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'), "{name:?}");
                assert!(value.bytes().all(|b| b >= 0x20 && b != 0x7f), "{name}: {value:?}");
            }
        }
        Err(reply) => {
            assert!((400..500).contains(&reply.status), "{}", reply.status);
            let v: serde_json::Value = serde_json::from_str(&reply.body).expect("a reply body is JSON");
            assert!(v["error"]["message"].is_string(), "{}", reply.body);
        }
    }
});
