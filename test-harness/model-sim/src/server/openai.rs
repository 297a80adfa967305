//! The OpenAI-compatible surface: request parsing into (prompt, length, stream options) and the JSON of
//! responses, stream chunks and errors, shaped the way vLLM shapes them.

use model_sim::engine::Usage;
use model_sim::Prompt;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
}

/// What the simulator needs from a request body.
#[derive(Debug)]
pub struct GenRequest {
    /// As requested (echoed back); `None` means the served model.
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
}

/// An error answered in the OpenAI shape `{"error": {message, type, param, code}}`.
#[derive(Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError { status: 400, kind: "BadRequestError", message: message.into(), param }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}})
    }
}

pub fn parse(api: Api, body: &[u8], block_size: u32) -> Result<GenRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}"), None))?;
    let obj =
        v.as_object().ok_or_else(|| ApiError::bad_request("request body must be a JSON object", None))?;
    let model = match obj.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("`model` must be a string", Some("model"))),
    };
    let prompt = match api {
        Api::Completions => completion_prompt(obj.get("prompt"), block_size)?,
        Api::Chat => Prompt::from_text(&render_chat(obj.get("messages"))?, block_size),
    };
    let max_key = match api {
        Api::Chat if obj.get("max_completion_tokens").is_some_and(|v| !v.is_null()) => {
            "max_completion_tokens"
        }
        _ => "max_tokens",
    };
    let max_tokens = match obj.get(max_key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= 1 => Some(n),
            _ => {
                let param = if max_key == "max_tokens" { "max_tokens" } else { "max_completion_tokens" };
                return Err(ApiError::bad_request(
                    format!("`{max_key}` must be an integer of at least 1, got {v}"),
                    Some(param),
                ));
            }
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("`stream` must be a boolean", Some("stream"))),
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(GenRequest { model, prompt, max_tokens, stream, include_usage })
}

fn completion_prompt(prompt: Option<&Value>, block_size: u32) -> Result<Prompt, ApiError> {
    let missing = || ApiError::bad_request("`prompt` is required", Some("prompt"));
    let p = match prompt {
        Some(Value::String(s)) => Prompt::from_text(s, block_size),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => Prompt::from_text(s, block_size),
            [] => return Err(missing()),
            // A single prompt given as token ids.
            ids if ids.iter().all(Value::is_u64) => {
                let tokens: Vec<u32> = ids
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|t| u32::try_from(t).unwrap_or(u32::MAX))
                    .collect();
                Prompt::from_tokens(&tokens, block_size)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "model-sim serves one prompt per request: `prompt` must be a string, a one-string \
                     array or an array of token ids",
                    Some("prompt"),
                ))
            }
        },
        _ => return Err(missing()),
    };
    if p.is_empty() {
        return Err(ApiError::bad_request("`prompt` must not be empty", Some("prompt")));
    }
    Ok(p)
}

/// Stands in for the chat template: roles and contents in order, so a shared system prompt is a shared
/// text prefix and therefore shared KV blocks.
fn render_chat(messages: Option<&Value>) -> Result<String, ApiError> {
    let bad = |what: &str| ApiError::bad_request(what.to_string(), Some("messages"));
    let list = messages
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` is required and must be an array"))?;
    if list.is_empty() {
        return Err(bad("`messages` must not be empty"));
    }
    let mut text = String::new();
    for (i, m) in list.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("messages[{i}].role must be a string")))?;
        text.push_str("<|");
        text.push_str(role);
        text.push_str("|>\n");
        match m.get("content") {
            Some(Value::String(s)) => text.push_str(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        text.push_str(t);
                    }
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => {
                return Err(bad(&format!("messages[{i}].content must be a string or an array of parts")))
            }
        }
        text.push('\n');
    }
    text.push_str("<|assistant|>\n");
    Ok(text)
}

const WORDS: [&str; 16] = [
    "the",
    "model",
    "simulates",
    "a",
    "busy",
    "replica",
    "and",
    "answers",
    "with",
    "filler",
    "words",
    "so",
    "that",
    "streams",
    "look",
    "real",
];

/// The text of output token `i` (0-based).
pub fn token_text(i: u32) -> &'static str {
    WORDS.get(i as usize % WORDS.len()).copied().unwrap_or("x")
}

pub fn output_text(n: u32) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(token_text(i));
        s.push(' ');
    }
    s
}

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "completion_tokens": u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

/// Shared fields of every response object and chunk.
pub struct Envelope<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

pub fn full_response(api: Api, env: &Envelope<'_>, text: &str, finish: &str, usage: &Usage) -> Value {
    let choice = match api {
        Api::Completions => json!({
            "index": 0, "text": text, "logprobs": null, "finish_reason": finish, "stop_reason": null,
        }),
        Api::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": null, "finish_reason": finish, "stop_reason": null,
        }),
    };
    json!({
        "id": env.id,
        "object": match api { Api::Completions => "text_completion", Api::Chat => "chat.completion" },
        "created": env.created,
        "model": env.model,
        "choices": [choice],
        "usage": usage_json(usage),
    })
}

/// One streamed token (chat's first chunk also carries the role, as vLLM's does).
pub fn delta_chunk(api: Api, env: &Envelope<'_>, text: &str, first: bool, finish: Option<&str>) -> Value {
    let choice = match api {
        Api::Completions => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        Api::Chat => {
            let delta =
                if first { json!({"role": "assistant", "content": text}) } else { json!({"content": text}) };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
    };
    json!({
        "id": env.id,
        "object": match api { Api::Completions => "text_completion", Api::Chat => "chat.completion.chunk" },
        "created": env.created,
        "model": env.model,
        "choices": [choice],
    })
}

/// The final usage-only chunk (`choices` empty).
pub fn usage_chunk(api: Api, env: &Envelope<'_>, usage: &Usage) -> Value {
    json!({
        "id": env.id,
        "object": match api { Api::Completions => "text_completion", Api::Chat => "chat.completion.chunk" },
        "created": env.created,
        "model": env.model,
        "choices": [],
        "usage": usage_json(usage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_with_a_shared_system_prompt_shares_its_blocks() {
        let system = "You are a careful assistant who answers in French. ".repeat(40);
        let body = |q: &str| {
            serde_json::to_vec(&json!({"model": "m", "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": q}]}))
            .unwrap()
        };
        let a = parse(Api::Chat, &body("Where is Lyon?"), 16).unwrap();
        let b = parse(Api::Chat, &body("How big is Paris?"), 16).unwrap();
        let common =
            a.prompt.block_hashes().iter().zip(b.prompt.block_hashes()).take_while(|(x, y)| x == y).count();
        assert!(common >= 30, "{common}");
        assert_eq!(a.max_tokens, None);
        assert!(!a.stream);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |api, body: &str| parse(api, body.as_bytes(), 16).unwrap_err();
        assert_eq!(err(Api::Chat, "{").status, 400);
        assert!(err(Api::Chat, "{").message.starts_with("request body is not valid JSON"));
        assert_eq!(err(Api::Chat, r#"{"model":"m"}"#).message, "`messages` is required and must be an array");
        assert_eq!(err(Api::Completions, r#"{"model":"m"}"#).message, "`prompt` is required");
        assert_eq!(
            err(Api::Completions, r#"{"prompt":"hi","max_tokens":0}"#).message,
            "`max_tokens` must be an integer of at least 1, got 0"
        );
        assert_eq!(
            err(Api::Chat, r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#).param,
            Some("stream")
        );
    }

    #[test]
    fn completion_prompt_forms() {
        let p = |body: &str| parse(Api::Completions, body.as_bytes(), 16).unwrap();
        assert_eq!(p(r#"{"prompt":"abcdefgh"}"#).prompt.len(), 2);
        assert_eq!(p(r#"{"prompt":["abcdefgh"]}"#).prompt.len(), 2);
        assert_eq!(p(r#"{"prompt":[1,2,3]}"#).prompt.len(), 3);
        let r = p(r#"{"prompt":"x","max_tokens":7,"stream":true,"stream_options":{"include_usage":true}}"#);
        assert_eq!((r.max_tokens, r.stream, r.include_usage), (Some(7), true, true));
        assert_eq!(p(r#"{"prompt":"x","max_tokens":null}"#).max_tokens, None);
        let chat = parse(
            Api::Chat,
            br#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":5,"max_tokens":9}"#,
            16,
        )
        .unwrap();
        assert_eq!(chat.max_tokens, Some(5));
    }

    #[test]
    fn error_shape_is_openai_like() {
        let e = ApiError { status: 404, kind: "NotFoundError", message: "nope".into(), param: Some("model") };
        assert_eq!(
            e.body(),
            json!({"error": {"message": "nope", "type": "NotFoundError", "param": "model", "code": 404}})
        );
    }
}
