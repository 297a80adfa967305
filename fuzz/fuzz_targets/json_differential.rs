//! The core's JSON reader (`scheduler-core/src/request/json/`) against serde_json on the same bytes.
//!
//! What the reader promises (its module doc): it accepts exactly what serde_json accepts and hands out
//! what serde_json would; values it skips are checked as serde_json checks skipped values (grammar and
//! escapes, but not UTF-8, number range or depth); values it decodes are checked as serde_json decodes
//! them. The request parser on top refuses more than JSON does (types, a missing or null model, a field
//! it reads given twice). So the oracle is three implications rather than one equality:
//! 1. serde_json's skipping parse (`IgnoredAny`) refuses the bytes => the request is refused. Not
//!    necessarily as not JSON: like serde_json decoding a struct, the reader reports the first problem
//!    it meets, so `0\xff` is refused for not being an object before its trailing byte is seen.
//! 2. serde_json decodes the whole document (`Value`: every string UTF-8, every number in range, depth
//!    under 128) => the request is not refused as not JSON (it may be refused for its shape).
//! 3. The request is read => serde_json reads the same fields from it: the same `model`, the same
//!    `stream` flag, and the same prompt bytes (completions: the prompt text; chat: the raw `messages`).
//!    An API the core does not know (here `/v1/embeddings`) has only its `model` read, by design: its
//!    `stream` is neither checked nor used, so the oracle reads only `model` there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scheduler_core::request::{parse_request, ApiKind, Problem};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// What chat reads, as serde_json sees it (unknown fields skipped, a duplicate refused). Only the fields
/// the API reads: a field captured here that the core skips would be checked for UTF-8 here alone.
#[derive(Deserialize)]
struct Chat<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
}

/// What completions reads.
#[derive(Deserialize)]
struct Completions<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
}

/// What the core reads of a body for an API it does not know.
#[derive(Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
}

const PATHS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let path = wasm_epp_fuzz::pick(&PATHS, which);
    let ours = parse_request(path, body);
    let not_json = matches!(&ours, Err(e) if matches!(e.problem(), Problem::NotJson { .. }));

    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        assert!(ours.is_err(), "serde_json refuses the syntax, the reader gives {ours:?}");
    }
    if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        assert!(!not_json, "serde_json decodes the document, the reader says {ours:?}");
    }
    let Ok(req) = ours else { return };
    if req.api == ApiKind::Other {
        let top: ModelOnly<'_> = match serde_json::from_slice(body) {
            Ok(t) => t,
            Err(e) => panic!("the reader read {req:?}, serde_json refuses the model: {e}"),
        };
        assert_eq!(top.model.as_deref(), Some(req.model.as_ref()), "model");
        assert!(!req.stream, "stream is not read for an API the core does not know");
        return;
    }
    let refused =
        |e: serde_json::Error| -> ! { panic!("the reader read {req:?}, serde_json refuses the fields: {e}") };
    match req.api {
        ApiKind::ChatCompletions => {
            let top: Chat<'_> = serde_json::from_slice(body).unwrap_or_else(|e| refused(e));
            assert_eq!(top.model.as_deref(), Some(req.model.as_ref()), "model");
            assert_eq!(top.stream.unwrap_or(false), req.stream, "stream");
            let messages = top.messages.map(|m| m.get().as_bytes());
            assert_eq!(messages, Some(req.prefix_input.as_ref()), "chat prompt bytes");
        }
        ApiKind::Completions => {
            let top: Completions<'_> = serde_json::from_slice(body).unwrap_or_else(|e| refused(e));
            assert_eq!(top.model.as_deref(), Some(req.model.as_ref()), "model");
            assert_eq!(top.stream.unwrap_or(false), req.stream, "stream");
            // A text prompt is hashed and measured as its decoded text.
            if let Some(Ok(text)) = top.prompt.map(|p| serde_json::from_str::<String>(p.get())) {
                assert_eq!(text.as_bytes(), req.prefix_input.as_ref(), "completions prompt bytes");
                assert_eq!(text.len(), req.prompt_bytes, "completions prompt size");
            }
        }
        other => panic!("{other:?} is not among this target's paths"),
    }
});
