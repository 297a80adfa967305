//! The JSON body of every answer the gateway gives itself instead of routing (400, 413, 415, 429, 503), in the
//! OpenAI error shape so SDKs and UIs show the message: `{"error":{"message","type","param","code"}}`.
//!
//! Types follow OpenAI's `*_error` naming: `invalid_request_error` for 400, 413 and 415 (the client must change
//! the request), `rate_limit_error` for 429 (retry later; OpenAI SDKs retry 429 with backoff), and
//! `service_unavailable_error` for 503 (no endpoint can serve the model right now).

use crate::request::RequestError;
use alloc::borrow::Cow;
use alloc::string::String;
use core::fmt::Write as _;

/// `content-type` of the error bodies.
pub const CONTENT_TYPE: &str = "application/json";

/// The OpenAI error `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    RateLimit,
    ServiceUnavailable,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::ServiceUnavailable => "service_unavailable_error",
        }
    }
}

/// An error answer: HTTP status plus the fields of the JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiError<'a> {
    pub status: u16,
    pub error_type: ErrorType,
    pub message: Cow<'a, str>,
    pub param: Option<Cow<'a, str>>,
    pub code: Option<&'a str>,
}

impl<'a> OpenAiError<'a> {
    /// 400 for a body the gateway could not parse; `param` and `code` come from the error.
    pub fn invalid_request(err: &'a RequestError) -> Self {
        OpenAiError {
            status: 400,
            error_type: ErrorType::InvalidRequest,
            message: Cow::Owned(err.message()),
            param: err.param().map(Cow::Borrowed),
            code: Some(err.code()),
        }
    }

    /// 413 for a body over the configured buffer limit.
    pub fn body_too_large(limit_bytes: usize) -> OpenAiError<'static> {
        let mut message = String::new();
        let _ = write!(message, "request body exceeds the gateway limit of {limit_bytes} bytes");
        OpenAiError {
            status: 413,
            error_type: ErrorType::InvalidRequest,
            message: Cow::Owned(message),
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 415 for a body sent with a `content-encoding` the gateway does not decode: it must read the body
    /// to route it, and model servers do not decode compressed requests either.
    pub fn unsupported_encoding(encoding: &str) -> OpenAiError<'static> {
        let mut message = String::new();
        let _ = write!(message, "request bodies with content-encoding ");
        push_json_string(&mut message, encoding);
        let _ = write!(
            message,
            " are not supported by the gateway; send the body uncompressed (content-encoding identity)"
        );
        OpenAiError {
            status: 415,
            error_type: ErrorType::InvalidRequest,
            message: Cow::Owned(message),
            param: None,
            code: Some("unsupported_content_encoding"),
        }
    }

    /// 429: the request was shed (sheddable while the pool is saturated) or no endpoint had room.
    /// `code` says which (e.g. `pool_saturated`, `no_capacity`); `rate_limit_exceeded` when `None`.
    pub fn too_many_requests(message: &'a str, code: Option<&'a str>) -> Self {
        OpenAiError {
            status: 429,
            error_type: ErrorType::RateLimit,
            message: Cow::Borrowed(message),
            param: None,
            code: Some(code.unwrap_or("rate_limit_exceeded")),
        }
    }

    /// 503: nothing can serve the request (empty subset hint, no endpoint for the model, fail-closed).
    /// `service_unavailable` when `code` is `None`.
    pub fn service_unavailable(message: &'a str, code: Option<&'a str>) -> Self {
        OpenAiError {
            status: 503,
            error_type: ErrorType::ServiceUnavailable,
            message: Cow::Borrowed(message),
            param: None,
            code: Some(code.unwrap_or("service_unavailable")),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let mut out = String::with_capacity(self.message.len().saturating_add(96));
        self.write_body(&mut out);
        out
    }

    /// Appends the JSON body to `out`.
    pub fn write_body(&self, out: &mut String) {
        out.push_str("{\"error\":{\"message\":");
        push_json_string(out, &self.message);
        out.push_str(",\"type\":");
        push_json_string(out, self.error_type.as_str());
        out.push_str(",\"param\":");
        push_optional(out, self.param.as_deref());
        out.push_str(",\"code\":");
        push_optional(out, self.code);
        out.push_str("}}");
    }
}

fn push_optional(out: &mut String, value: Option<&str>) {
    match value {
        Some(value) => push_json_string(out, value),
        None => out.push_str("null"),
    }
}

/// Writes `s` as a JSON string literal (RFC 8259 §7): quote, backslash and control characters escaped,
/// everything else (including non-ASCII) passed through as UTF-8. U+2028/U+2029 are escaped too, so the
/// body is also safe to embed in JavaScript.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(at) = rest.find(needs_escape) {
        let (plain, tail) = rest.split_at(at);
        out.push_str(plain);
        let mut chars = tail.chars();
        if let Some(c) = chars.next() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
            }
        }
        rest = chars.as_str();
    }
    out.push_str(rest);
    out.push('"');
}

fn needs_escape(c: char) -> bool {
    matches!(c, '"' | '\\' | '\u{0}'..='\u{1f}' | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_request;
    use proptest::prelude::*;
    use serde_json::Value;

    fn parsed(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn bad_request_carries_path_and_code() {
        let err = parse_request(
            "/v1/chat/completions",
            br#"{"model":"m","messages":[{"role":"user","content":3}]}"#,
        )
        .unwrap_err();
        let answer = OpenAiError::invalid_request(&err);
        assert_eq!(answer.status, 400);
        assert_eq!(
            parsed(&answer.body()),
            serde_json::json!({"error": {
                "message": "messages[0].content: expected a string or an array, found a number",
                "type": "invalid_request_error",
                "param": "messages[0].content",
                "code": "invalid_type",
            }})
        );
    }

    #[test]
    fn body_level_errors_have_null_param() {
        let err = parse_request("/v1/completions", b"{\"model\": \"m\", ").unwrap_err();
        let v = parsed(&OpenAiError::invalid_request(&err).body());
        assert_eq!(v["error"]["param"], Value::Null);
        assert_eq!(v["error"]["code"], "invalid_json");
    }

    #[test]
    fn statuses_and_types_per_answer() {
        let too_large = OpenAiError::body_too_large(1_048_576);
        assert_eq!((too_large.status, too_large.error_type.as_str()), (413, "invalid_request_error"));
        assert_eq!(
            parsed(&too_large.body())["error"]["message"],
            "request body exceeds the gateway limit of 1048576 bytes"
        );
        let shed = OpenAiError::too_many_requests("pool saturated", Some("pool_saturated"));
        let v = parsed(&shed.body());
        assert_eq!(
            (shed.status, &v["error"]["type"], &v["error"]["code"]),
            (429, &"rate_limit_error".into(), &"pool_saturated".into())
        );
        let none = OpenAiError::service_unavailable("no endpoint serves model \"x\"", None);
        let v = parsed(&none.body());
        assert_eq!(none.status, 503);
        assert_eq!(v["error"]["type"], "service_unavailable_error");
        assert_eq!(v["error"]["code"], "service_unavailable");
        assert_eq!(v["error"]["message"], "no endpoint serves model \"x\"");
    }

    #[test]
    fn escapes_quotes_backslashes_controls_and_keeps_unicode() {
        let message = "q\"b\\n\nt\tnul\u{0}bell\u{7}del\u{7f}é漢🙂\u{2028}";
        let body = OpenAiError::too_many_requests(message, None).body();
        assert!(body.contains(r#"q\"b\\n\nt\tnul\u0000bell\u0007"#), "{body}");
        assert!(body.contains("é漢🙂\\u2028"), "{body}");
        assert_eq!(parsed(&body)["error"]["message"], message);
    }

    proptest! {
        #[test]
        fn any_message_makes_valid_json_that_round_trips(message in any::<String>(), param in any::<Option<String>>()) {
            let answer = OpenAiError {
                status: 400,
                error_type: ErrorType::InvalidRequest,
                message: Cow::Borrowed(&message),
                param: param.as_deref().map(Cow::Borrowed),
                code: None,
            };
            let v: Value = serde_json::from_str(&answer.body()).unwrap();
            prop_assert_eq!(v["error"]["message"].as_str(), Some(message.as_str()));
            prop_assert_eq!(v["error"]["param"].as_str(), param.as_deref());
            prop_assert_eq!(&v["error"]["code"], &Value::Null);
        }
    }
}
