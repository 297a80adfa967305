//! Request bodies on every API path: a body is either read (and its model can be rewritten, the
//! rewritten body reading back the same but for the model) or refused with an error that names a place.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scheduler_core::openai_error::OpenAiError;
use scheduler_core::request::{parse_request, rewrite_model, ApiKind, RequestMeta};
use wasm_epp_fuzz::{pick, PATHS};

const NEW_MODEL: &str = "fuzz/rewritten \"model\"";

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let path = pick(&PATHS, which);
    match parse_request(path, body) {
        Ok(req) => {
            assert_eq!(req.api, ApiKind::from_path(path));
            let _ = req.scheduling_request(RequestMeta::default());
            if req.api == ApiKind::Generate && req.model.is_empty() {
                return;
            }
            assert!(!req.model.is_empty(), "a read body names a model");
            let rewritten = match rewrite_model(body, NEW_MODEL) {
                Ok(r) => r,
                Err(e) => panic!("a body that reads cannot have its model rewritten: {e}"),
            };
            assert_eq!(rewritten.previous_model, req.model);
            let again = match parse_request(path, &rewritten.body) {
                Ok(r) => r,
                Err(e) => panic!("the rewritten body does not read: {e}"),
            };
            assert_eq!(again.model, NEW_MODEL);
            assert_eq!(again.stream, req.stream);
            assert_eq!(again.limits, req.limits);
            assert_eq!(again.prefix_input, req.prefix_input);
        }
        Err(e) => {
            assert!(!e.path().is_empty());
            assert!(!e.message().is_empty());
            let reply = OpenAiError::invalid_request(&e).body();
            assert!(serde_json::from_str::<serde_json::Value>(&reply).is_ok(), "reply is not JSON: {reply}");
        }
    }
});
