//! The response path of one request, shared by the Wasm filter and the ext_proc shim: token usage read
//! from an OpenAI JSON body or SSE stream, and the client's model name put back after a model rewrite.
//!
//! SSE is handled line by line as chunks arrive, so a streamed answer is never held back longer than
//! one incomplete line.

use crate::request::rewrite_model;
use alloc::string::String;
use alloc::vec::Vec;
use serde::Deserialize;

/// Tokens the model server reports for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct UsageJson {
    // The Responses API names them input/output.
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
}

/// True for a `content-type` announcing server-sent events (a streamed completion).
pub fn is_event_stream(content_type: &str) -> bool {
    content_type.trim_start().get(..17).is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
}

/// The top-level `usage` of one JSON document, when it has a non-null one.
pub fn usage_of(json: &[u8]) -> Option<Usage> {
    let parsed: WithUsage = serde_json::from_slice(json).ok()?;
    parsed.usage.map(|u| Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens })
}

/// A whole (non-streamed) JSON response: the body to send instead (when the model was put back) and its
/// usage. A body whose model cannot be replaced (not JSON, no string `model`) is left as it is.
pub fn finish_json(body: &[u8], client_model: Option<&str>) -> (Option<Vec<u8>>, Option<Usage>) {
    let replaced = client_model.and_then(|m| rewrite_model(body, m).ok()).map(|r| r.body);
    (replaced, usage_of(body))
}

/// Incremental SSE processing for one response stream.
#[derive(Debug, Default)]
pub struct SseFilter {
    /// Bytes of the line not yet terminated.
    pending: Vec<u8>,
    /// Put this name back into every event's `model`; `None` passes bytes through untouched.
    client_model: Option<String>,
    usage: Option<Usage>,
}

impl SseFilter {
    pub fn new(client_model: Option<String>) -> SseFilter {
        SseFilter { pending: Vec::new(), client_model, usage: None }
    }

    /// True when events are rewritten (a model is put back), false when chunks pass through as they came.
    pub fn rewrites(&self) -> bool {
        self.client_model.is_some()
    }

    /// The last usage any event carried (vLLM sends it in the final chunk when asked to).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Feeds one chunk; returns the bytes to forward now. At `end_of_stream` everything is flushed.
    pub fn push(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let complete = if end_of_stream {
            self.pending.len()
        } else {
            self.pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i.saturating_add(1))
        };
        let rest = self.pending.split_off(complete);
        let lines = core::mem::replace(&mut self.pending, rest);
        if self.client_model.is_none() {
            // Pass-through: forward the chunk as it came, and only read the complete lines for usage.
            for line in lines.split_inclusive(|&b| b == b'\n') {
                self.read_line(line);
            }
            return chunk.to_vec();
        }
        let mut out = Vec::with_capacity(lines.len().saturating_add(64));
        for line in lines.split_inclusive(|&b| b == b'\n') {
            match self.read_line(line) {
                Some(rewritten) => out.extend_from_slice(&rewritten),
                None => out.extend_from_slice(line),
            }
        }
        out
    }

    /// Reads one line's usage; returns the line with the model put back when it changed.
    fn read_line(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        let body_end = line.len().saturating_sub(trailing_newline_len(line));
        let content = line.get(..body_end)?;
        let payload = content.strip_prefix(b"data:")?;
        let payload = payload.strip_prefix(b" ").unwrap_or(payload);
        if payload.first() != Some(&b'{') {
            return None;
        }
        if let Some(u) = usage_of(payload) {
            self.usage = Some(u);
        }
        let replaced = rewrite_model(payload, self.client_model.as_deref()?).ok()?.body;
        let prefix_len = content.len().saturating_sub(payload.len());
        let mut out = Vec::with_capacity(line.len().saturating_add(32));
        out.extend_from_slice(line.get(..prefix_len)?);
        out.extend_from_slice(&replaced);
        out.extend_from_slice(line.get(body_end..)?);
        Some(out)
    }
}

fn trailing_newline_len(line: &[u8]) -> usize {
    match line {
        [.., b'\r', b'\n'] => 2,
        [.., b'\n'] => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const STREAM: &str = "data: {\"id\":\"1\",\"model\":\"llama-8b-v2\",\"choices\":[{\"text\":\"a\"}]}\n\n\
        data: {\"id\":\"1\",\"model\":\"llama-8b-v2\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\r\n\r\n\
        data: [DONE]\n\n";

    #[test]
    fn json_usage_and_model_put_back() {
        let body = br#"{"model":"llama-8b-v2","usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        let (out, usage) = finish_json(body, Some("llama"));
        assert_eq!(out.unwrap(), br#"{"model":"llama","usage":{"prompt_tokens":7,"completion_tokens":2}}"#);
        assert_eq!(usage, Some(Usage { prompt_tokens: 7, completion_tokens: 2 }));
        assert_eq!(finish_json(br#"{"usage":null}"#, None), (None, None));
    }

    #[test]
    fn event_streams_are_recognised_by_content_type() {
        assert!(is_event_stream("text/event-stream"));
        assert!(is_event_stream("Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream("application/json"));
        assert!(!is_event_stream("text/event"));
    }

    #[test]
    fn responses_api_usage_is_read_as_prompt_and_completion() {
        let body = br#"{"model":"m","usage":{"input_tokens":9,"output_tokens":4,"total_tokens":13}}"#;
        assert_eq!(usage_of(body), Some(Usage { prompt_tokens: 9, completion_tokens: 4 }));
    }

    #[test]
    fn bodies_without_a_string_model_are_forwarded_unchanged() {
        assert_eq!(finish_json(b"upstream error page", Some("llama")), (None, None));
        assert_eq!(finish_json(br#"{"model":7}"#, Some("llama")).0, None);
    }

    #[test]
    fn sse_split_anywhere_gives_the_same_bytes_and_usage() {
        let expected = STREAM.replace("llama-8b-v2", "llama");
        for cut in [1, 7, 30, 64, 100, STREAM.len() - 3] {
            let mut f = SseFilter::new(Some("llama".to_string()));
            let (a, b) = STREAM.as_bytes().split_at(cut);
            let mut out = f.push(a, false);
            out.extend(f.push(b, true));
            assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
            assert_eq!(f.usage(), Some(Usage { prompt_tokens: 12, completion_tokens: 3 }));
        }
    }

    #[test]
    fn sse_without_rewrite_forwards_each_chunk_unchanged() {
        let mut f = SseFilter::new(None);
        let (a, b) = STREAM.as_bytes().split_at(40);
        assert_eq!(f.push(a, false), a);
        assert_eq!(f.push(b, true), b);
        assert_eq!(f.usage().map(|u| u.completion_tokens), Some(3));
    }
}
