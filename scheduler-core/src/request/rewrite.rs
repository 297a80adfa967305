//! Replaces the top-level `model` of a JSON body, for model rewrites: the server must run the model the
//! gateway chose, while every other byte of the body (prompt, whitespace, key order) stays as sent. The
//! response path uses it too, to put the client's model name back (`crate::response`).

use super::error::{Found, Path, Problem, RequestError};
use super::seeds::{drive, found_raw, Ctx};
use crate::openai_error::push_json_string;
use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A body after [`rewrite_model`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewrittenBody {
    /// The whole body, identical to the input except for the `model` value.
    pub body: Vec<u8>,
    /// The model the body named before (decoded), which responses should name again.
    pub previous_model: String,
}

/// Returns `body` with its top-level `model` value replaced by the JSON string `model`.
///
/// The body must be a JSON object with a string `model` (what `parse_request` already checked); anything
/// else is refused with the same located errors, never patched blindly.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<RewrittenBody, RequestError> {
    let ctx = Ctx::default();
    let raw = drive(&ctx, body, TopLevelModel { ctx: &ctx })?;
    let field = Path::ROOT.key("model");
    let Some(raw) = raw else {
        return Err(field.error(Problem::Missing));
    };
    let Ok(previous_model) = serde_json::from_str::<String>(raw.get()) else {
        return Err(field.error(Problem::Unexpected { expected: "a string", found: found_raw(raw) }));
    };
    // The raw value borrows from `body`, so its position is a pointer difference; checked, not assumed.
    let start = (raw.get().as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let end = start.saturating_add(raw.get().len());
    if body.get(start..end) != Some(raw.get().as_bytes()) {
        return Err(
            field.error(Problem::Unexpected { expected: "a value inside the body", found: Found::String })
        );
    }
    let mut literal = String::with_capacity(model.len() + 2);
    push_json_string(&mut literal, model);
    let mut out =
        Vec::with_capacity(body.len().saturating_sub(raw.get().len()).saturating_add(literal.len()));
    out.extend_from_slice(body.get(..start).unwrap_or_default());
    out.extend_from_slice(literal.as_bytes());
    out.extend_from_slice(body.get(end..).unwrap_or_default());
    Ok(RewrittenBody { body: out, previous_model })
}

/// Walks the top-level object, keeping only the raw `model` value (a duplicate is refused, as in parsing).
struct TopLevelModel<'c> {
    ctx: &'c Ctx,
}

impl<'de> DeserializeSeed<'de> for TopLevelModel<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevelModel<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model: Option<&'de RawValue> = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "model" {
                if model.is_some() {
                    return self.ctx.fail(&Path::ROOT.key("model"), Problem::Duplicate);
                }
                model = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(model)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        self.not_an_object(Found::Array)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        self.not_an_object(Found::String)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        self.not_an_object(Found::Boolean)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        self.not_an_object(Found::Number)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        self.not_an_object(Found::Number)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        self.not_an_object(Found::Number)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.not_an_object(Found::Null)
    }
}

impl TopLevelModel<'_> {
    fn not_an_object<T, E: de::Error>(&self, found: Found) -> Result<T, E> {
        self.ctx.fail(&Path::ROOT, Problem::Unexpected { expected: "a JSON object", found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_request;

    fn rewrite(body: &str, model: &str) -> Result<String, String> {
        rewrite_model(body.as_bytes(), model)
            .map(|r| String::from_utf8(r.body).unwrap())
            .map_err(|e| e.message())
    }

    #[test]
    fn only_the_model_value_changes() {
        let body = r#"{ "messages": [{"role": "user", "content": "say \"model\""}],  "model" : "llama",
            "stream": true, "metadata": {"model": "nested stays"}}"#;
        let out = rewrite(body, "llama-v2").unwrap();
        assert_eq!(out, body.replace(r#""model" : "llama""#, r#""model" : "llama-v2""#));
        let parsed = parse_request("/v1/chat/completions", out.as_bytes()).unwrap();
        assert_eq!(parsed.model, "llama-v2");
    }

    #[test]
    fn escaped_keys_and_names_are_handled() {
        // `\u006dodel` is the key "model" written with an escape; the new name needs escaping itself.
        let out = rewrite(r#"{"\u006dodel":"a\"b","prompt":"x"}"#, "q\"uote\\d").unwrap();
        assert_eq!(out, r#"{"\u006dodel":"q\"uote\\d","prompt":"x"}"#);
    }

    #[test]
    fn the_previous_model_is_returned_decoded() {
        let r = rewrite_model(br#"{"model": "llama\"3", "prompt": "x"}"#, "m").unwrap();
        assert_eq!(r.previous_model, "llama\"3");
        assert_eq!(r.body, br#"{"model": "m", "prompt": "x"}"#);
    }

    #[test]
    fn bodies_it_cannot_rewrite_are_refused_with_a_located_error() {
        assert_eq!(rewrite(r#"{"prompt": "x"}"#, "m").unwrap_err(), "model: missing");
        assert_eq!(rewrite(r#"{"model": 7}"#, "m").unwrap_err(), "model: expected a string, found a number");
        assert_eq!(rewrite("[1]", "m").unwrap_err(), "body: expected a JSON object, found an array");
        assert_eq!(rewrite(r#"{"model":"a","model":"b"}"#, "m").unwrap_err(), "model: duplicate field");
        assert!(rewrite(r#"{"model":"a""#, "m").unwrap_err().starts_with("body: not valid JSON"));
        assert!(rewrite_model(b"\xff", "m").is_err());
    }
}
