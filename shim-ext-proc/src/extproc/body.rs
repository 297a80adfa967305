//! Byte-exact edits of OpenAI JSON bodies: swap the top-level `model` value and leave every other byte
//! alone, so a rewritten request differs from the client's only where the model name is.
//!
//! Also the one place that cuts a body into the ≤ 62,000-byte chunks Envoy's streamed mutations accept.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

/// Envoy caps one streamed body mutation at 62,000 bytes (GIE's reference picker uses the same size).
pub const MAX_CHUNK: usize = 62_000;

/// Where the top-level `"model"` string value sits in a JSON document, and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelField {
    /// Byte range of the value, quotes included.
    pub span: Range<usize>,
    pub value: String,
}

#[derive(Deserialize)]
struct OnlyModel<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

/// Finds the top-level `model` string. `None` when the document is not a JSON object, has no `model`,
/// or its `model` is not a string.
pub fn model_field(json: &[u8]) -> Option<ModelField> {
    let parsed: OnlyModel<'_> = serde_json::from_slice(json).ok()?;
    let raw = parsed.model?;
    let value: String = serde_json::from_str(raw.get()).ok()?;
    // The raw value borrows from `json`, so its address tells where it is.
    let start = (raw.get().as_ptr() as usize).checked_sub(json.as_ptr() as usize)?;
    let end = start.checked_add(raw.get().len())?;
    (end <= json.len()).then_some(ModelField { span: start..end, value })
}

/// `json` with its top-level `model` set to `model`; `None` when there is no such string field.
pub fn replace_model(json: &[u8], model: &str) -> Option<Vec<u8>> {
    let field = model_field(json)?;
    let quoted = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(json.len() + quoted.len());
    out.extend_from_slice(json.get(..field.span.start)?);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(json.get(field.span.end..)?);
    Some(out)
}

/// Splits `body` into pieces of at most [`MAX_CHUNK`] bytes; an empty body is one empty piece, because
/// Envoy needs a mutation carrying end-of-stream even then.
pub fn chunks(body: &[u8]) -> Vec<&[u8]> {
    if body.is_empty() {
        return vec![body];
    }
    body.chunks(MAX_CHUNK).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_top_level_model_not_a_nested_one() {
        let body = br#"{"messages":[{"model":"inner"}], "model" : "llama\"3" ,"x":1}"#;
        let f = model_field(body).unwrap();
        assert_eq!(f.value, "llama\"3");
        assert_eq!(&body[f.span.clone()], br#""llama\"3""#);
    }

    #[test]
    fn replacing_the_model_keeps_every_other_byte() {
        let body = b"{ \"model\":\"a\",\n  \"prompt\": \"hi \\u00e9\", \"max_tokens\": 5 }";
        let out = replace_model(body, "meta/llama-\"8b\"").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{ \"model\":\"meta/llama-\\\"8b\\\"\",\n  \"prompt\": \"hi \\u00e9\", \"max_tokens\": 5 }"
        );
    }

    #[test]
    fn no_rewrite_without_a_string_model() {
        assert_eq!(replace_model(br#"{"prompt":"x"}"#, "m"), None);
        assert_eq!(replace_model(br#"{"model":7}"#, "m"), None);
        assert_eq!(replace_model(b"[1,2]", "m"), None);
        assert_eq!(replace_model(b"not json", "m"), None);
    }

    #[test]
    fn chunks_are_at_most_62000_bytes_and_reassemble_exactly() {
        let body: Vec<u8> = (0..200_001u32).map(|i| (i % 251) as u8).collect();
        let pieces = chunks(&body);
        assert_eq!(pieces.iter().map(|c| c.len()).collect::<Vec<_>>(), [62_000, 62_000, 62_000, 14_001]);
        assert_eq!(pieces.concat(), body);
        assert_eq!(chunks(b""), vec![&b""[..]]);
    }
}
