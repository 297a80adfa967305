//! OpenAI-style request bodies → what the scheduler needs (model, limits, the bytes hashed for prefix
//! affinity, prompt size), validated with errors that name the offending field.
//!
//! Bodies can be megabytes: a valid body is read once, by our own JSON reader (`json`: one read of every
//! byte, 16 at a time with Wasm SIMD or SSE2, accepting exactly what serde_json accepts), strings are
//! borrowed from the body unless they contain escapes, `messages` and responses `input` are hashed as
//! their raw JSON slice, and no `serde_json::Value` tree is ever built. A refused body is read again in
//! two passes for the error to report.

mod body;
mod chat;
mod completions;
mod error;
mod form;
mod json;
mod responses;
mod rewrite;
mod seeds;
#[cfg(test)]
mod tests;

pub use error::{Found, Problem, RequestError};
pub use form::{form_field, parse_form, BodyFormat};
pub use rewrite::{rewrite_model, RewrittenBody};

use crate::scheduling::SchedulingRequest;
use alloc::borrow::Cow;
use alloc::vec::Vec;
use body::{BodySeed, Fields, Validated};
use error::Path;
use seeds::{drive, found_raw, Ctx};
use serde_json::value::RawValue;

/// Which OpenAI API a request targets, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    /// `/v1/completions`
    Completions,
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/responses`
    Responses,
    /// `/v1/messages` (Anthropic Messages, as llm-d's `anthropic-parser` reads it)
    Messages,
    /// `/inference/v1/generate` (vLLM's generate API on token ids, as llm-d's `vllmhttp-parser` reads it)
    Generate,
    /// Any other path (embeddings, rerank, ...): only `model` is read, nothing is hashed.
    Other,
}

impl ApiKind {
    /// Classifies an HTTP `:path`. The query string is ignored, and the API is recognised by the path's
    /// last segments, so an API mounted under a prefix (`/openai/v1/chat/completions`) is still known.
    pub fn from_path(path: &str) -> ApiKind {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.ends_with("/chat/completions") {
            ApiKind::ChatCompletions
        } else if path.ends_with("/completions") {
            ApiKind::Completions
        } else if path.ends_with("/responses") {
            ApiKind::Responses
        } else if path.ends_with("/messages") {
            ApiKind::Messages
        } else if path.ends_with("/inference/v1/generate") {
            ApiKind::Generate
        } else {
            ApiKind::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Completions => "completions",
            ApiKind::ChatCompletions => "chat_completions",
            ApiKind::Responses => "responses",
            ApiKind::Messages => "messages",
            ApiKind::Generate => "generate",
            ApiKind::Other => "other",
        }
    }
}

/// The output-length limits a request gave; which ones an API defines differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputLimits {
    /// Completions and chat (deprecated in chat in favour of `max_completion_tokens`).
    pub max_tokens: Option<u64>,
    /// Chat.
    pub max_completion_tokens: Option<u64>,
    /// Responses.
    pub max_output_tokens: Option<u64>,
}

/// A parsed request body. Borrows from the body wherever it can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferenceRequest<'a> {
    pub api: ApiKind,
    /// The `model` the client asked for (never empty, except for a generate request without one).
    pub model: Cow<'a, str>,
    pub stream: bool,
    pub limits: OutputLimits,
    /// Tenant isolation of prefix-cache sharing (vLLM `cache_salt`).
    pub cache_salt: Option<Cow<'a, str>>,
    pub user: Option<Cow<'a, str>>,
    /// The bytes hashed for prefix affinity (GIE's choice per API):
    /// - completions: the prompt text; a list of strings joined with `\n`; token ids as little-endian
    ///   `u32` bytes (lists of lists concatenated).
    /// - chat: the raw JSON of `messages`, exactly as the client sent it. Two clients that format the same
    ///   messages with different whitespace hash differently; that is acceptable because one client's
    ///   requests are formatted consistently, and it keeps the hashing zero-copy. `tools` are not hashed,
    ///   as in GIE, so the same messages with different tools share affinity.
    /// - responses: `instructions` text, then the raw JSON of `tools`, then `input` (its text when a
    ///   string, its raw JSON when an item array), concatenated.
    /// - messages (Anthropic): the raw JSON of `system`, then of `messages`, concatenated (llm-d's
    ///   `anthropic-parser` gives its prefix producer the same two).
    /// - generate (vLLM): `token_ids` as little-endian `u32` bytes, like completions token ids.
    /// - other APIs: empty (no affinity).
    pub prefix_input: Cow<'a, [u8]>,
    /// Size of the prompt content in bytes, for token estimates (4 bytes per token): the text of
    /// prompts, messages, instructions and tool outputs, plus the raw size of `tools` (rendered into the
    /// prompt by chat templates). Media parts (images, audio, video) are not counted. Token-id prompts
    /// count 4 bytes per id, so the estimate is exact. Other APIs: the whole body size.
    pub prompt_bytes: usize,
}

/// Request facts that come from headers rather than the body.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestMeta<'r> {
    /// `x-request-id`.
    pub request_id: &'r str,
    /// From the InferenceObjective: 0 when unset, negative = sheddable.
    pub priority: i32,
    /// `x-session-token`.
    pub session_token: Option<&'r str>,
    /// The model to serve instead of the body's (`x-gateway-model-name-rewrite` or a rewrite rule).
    pub model_override: Option<&'r str>,
    /// The request headers plugins read (see `SchedulingRequest::headers`).
    pub headers: &'r [(alloc::string::String, alloc::string::String)],
}

impl<'a> InferenceRequest<'a> {
    /// The output-token limit that applies to this API: `max_completion_tokens` before `max_tokens`
    /// (chat), `max_tokens` (completions), `max_output_tokens` (responses).
    pub fn max_output_tokens(&self) -> Option<u64> {
        let l = &self.limits;
        l.max_completion_tokens.or(l.max_tokens).or(l.max_output_tokens)
    }

    /// What the scheduler sees of this request, borrowing everything.
    pub fn scheduling_request<'r>(&'r self, meta: RequestMeta<'r>) -> SchedulingRequest<'r> {
        SchedulingRequest {
            request_id: meta.request_id,
            model: meta.model_override.unwrap_or(&self.model),
            prefix_input: &self.prefix_input,
            cache_salt: self.cache_salt.as_deref(),
            prompt_bytes: self.prompt_bytes,
            max_output_tokens: self.max_output_tokens(),
            priority: meta.priority,
            session_token: meta.session_token,
            headers: meta.headers,
        }
    }
}

/// Parses and validates a request body for the API named by `path` (the HTTP `:path`, query allowed).
///
/// Unknown fields are accepted; a field the API defines must have the right shape. Paths of unknown
/// APIs still need a JSON object with a `model` string, the same rule the GIE picker applies to every
/// body (the caller should not call this for requests that carry no JSON body).
pub fn parse_request<'a>(path: &str, body: &'a [u8]) -> Result<InferenceRequest<'a>, RequestError> {
    let api = ApiKind::from_path(path);
    // Anthropic and generate bodies are only captured and checked for shape: the reference parse is the
    // only one.
    if matches!(api, ApiKind::Messages | ApiKind::Generate) {
        return two_pass(api, body);
    }
    if let Some(request) = single_pass(api, body) {
        return Ok(request);
    }
    two_pass(api, body)
}

/// A valid body read once: `messages` / `input` are validated and measured as they are read, and their
/// raw JSON is found from the keys around them. Any failure gives `None`, and `two_pass` then reports it:
/// its error order (body fields before `messages` contents, positions relative to the body or to
/// `messages`) is the contract, and refused bodies are rare enough to be read again.
fn single_pass(api: ApiKind, body: &[u8]) -> Option<InferenceRequest<'_>> {
    let ctx = Ctx::checking_skipped();
    let seed = BodySeed { api, ctx: &ctx, single_pass: true };
    let mut fields = drive(&ctx, body, seed).ok()?;
    let tools_len = check_tools(fields.tools).ok()?;
    let validated = fields.validated.take();
    let raw = |key: &str| fields.span.and_then(|span| span.value(body, key)).map(Cow::Borrowed);
    let (prefix_input, prompt_bytes) = match (api, validated) {
        (ApiKind::Completions, _) => completions_input(&mut fields).ok()?,
        (ApiKind::Other, _) => (Cow::Borrowed(&[][..]), body.len()),
        (ApiKind::ChatCompletions, Some(Validated::Array)) => {
            (raw("messages")?, ctx.text_bytes().saturating_add(tools_len))
        }
        (ApiKind::Responses, validated) => {
            let input = match validated {
                None => None,
                Some(Validated::Text(text)) => Some(text_bytes(text)),
                Some(Validated::Array) => Some(raw("input")?),
            };
            responses_hashed(&mut fields, input, ctx.text_bytes(), tools_len)
        }
        _ => return None,
    };
    Some(finish(api, fields, prefix_input, prompt_bytes))
}

/// The reference parse: the body with `messages` / `input` captured as raw JSON, then those validated on
/// their own.
fn two_pass(api: ApiKind, body: &[u8]) -> Result<InferenceRequest<'_>, RequestError> {
    let ctx = Ctx::default();
    let mut fields = drive(&ctx, body, BodySeed { api, ctx: &ctx, single_pass: false })?;
    let (prefix_input, prompt_bytes) = match api {
        ApiKind::Completions => completions_input(&mut fields)?,
        ApiKind::ChatCompletions => chat_input(&fields)?,
        ApiKind::Responses => responses_input(&mut fields)?,
        ApiKind::Messages => messages_input(&fields)?,
        ApiKind::Generate => generate_input(&mut fields)?,
        ApiKind::Other => (Cow::Borrowed(&[][..]), body.len()),
    };
    Ok(finish(api, fields, prefix_input, prompt_bytes))
}

fn finish<'a>(
    api: ApiKind,
    fields: Fields<'a>,
    prefix_input: Cow<'a, [u8]>,
    prompt_bytes: usize,
) -> InferenceRequest<'a> {
    let Fields { model, stream, limits, cache_salt, user, .. } = fields;
    InferenceRequest {
        api,
        // `BodySeed` refuses a body without a model, except a generate request's (llm-d: no model).
        model: model.unwrap_or_default(),
        stream: stream.unwrap_or(false),
        limits,
        cache_salt,
        user,
        prefix_input,
        prompt_bytes,
    }
}

type Hashed<'a> = (Cow<'a, [u8]>, usize);

fn completions_input<'a>(fields: &mut Fields<'a>) -> Result<Hashed<'a>, RequestError> {
    match fields.prompt.take() {
        Some(prompt) => Ok((prompt.input, prompt.bytes)),
        // vLLM accepts precomputed embeddings instead of a prompt: nothing to hash or measure.
        None if fields.prompt_embeds => Ok((Cow::Borrowed(&[][..]), 0)),
        None => Err(Path::ROOT.key("prompt").error(Problem::Missing)),
    }
}

fn chat_input<'a>(fields: &Fields<'a>) -> Result<Hashed<'a>, RequestError> {
    let Some(messages) = fields.messages else {
        return Err(Path::ROOT.key("messages").error(Problem::Missing));
    };
    let tools_len = check_tools(fields.tools)?;
    let ctx = Ctx::default();
    let path = Path::ROOT.key("messages");
    drive(&ctx, messages.get().as_bytes(), chat::Messages { ctx: &ctx, path: &path })?;
    Ok((Cow::Borrowed(messages.get().as_bytes()), ctx.text_bytes().saturating_add(tools_len)))
}

/// Anthropic Messages: `messages` a non-empty array, `system` a string or an array when present (as
/// llm-d's `anthropic-parser` requires); both hashed as raw JSON, their size the prompt size.
fn messages_input<'a>(fields: &Fields<'a>) -> Result<Hashed<'a>, RequestError> {
    let path = Path::ROOT.key("messages");
    let Some(messages) = fields.messages else {
        return Err(path.error(Problem::Missing));
    };
    let raw = messages.get();
    match raw.strip_prefix('[').map(|r| r.trim_start_matches([' ', '\n', '\t', '\r'])) {
        Some("]") => {
            return Err(
                path.error(Problem::Unexpected { expected: "a non-empty array", found: Found::EmptyArray })
            )
        }
        Some(_) => {}
        None => {
            return Err(path.error(Problem::Unexpected { expected: "an array", found: found_raw(messages) }))
        }
    }
    let system = match fields.system {
        None => None,
        Some(s) if s.get().starts_with(['"', '[']) => Some(Cow::Borrowed(s.get().as_bytes())),
        Some(s) => {
            return Err(Path::ROOT
                .key("system")
                .error(Problem::Unexpected { expected: "a string or an array", found: found_raw(s) }))
        }
    };
    let prompt_bytes = raw.len().saturating_add(system.as_ref().map_or(0, |s| s.len()));
    Ok((concat([system, Some(Cow::Borrowed(raw.as_bytes()))]), prompt_bytes))
}

/// vLLM generate: `token_ids` a non-empty array of token ids (as llm-d's `vllmhttp-parser` requires),
/// hashed as little-endian `u32` bytes; `sampling_params.max_tokens` the output limit when it is a count.
fn generate_input<'a>(fields: &mut Fields<'a>) -> Result<Hashed<'a>, RequestError> {
    let path = Path::ROOT.key("token_ids");
    let Some(raw) = fields.token_ids else {
        return Err(path.error(Problem::Missing));
    };
    let ids: Vec<u32> = serde_json::from_str(raw.get()).map_err(|_| {
        path.error(Problem::Unexpected { expected: "an array of token ids", found: found_raw(raw) })
    })?;
    if ids.is_empty() {
        return Err(path.error(Problem::Unexpected {
            expected: "a non-empty array of token ids",
            found: Found::EmptyArray,
        }));
    }
    if let Some(sampling) = fields.sampling_params {
        let params: serde_json::Value = serde_json::from_str(sampling.get()).unwrap_or_default();
        fields.limits.max_tokens = params.get("max_tokens").and_then(serde_json::Value::as_u64);
    }
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let prompt_bytes = bytes.len();
    Ok((Cow::Owned(bytes), prompt_bytes))
}

fn responses_input<'a>(fields: &mut Fields<'a>) -> Result<Hashed<'a>, RequestError> {
    let tools_len = check_tools(fields.tools)?;
    let ctx = Ctx::default();
    let input: Option<Cow<'a, [u8]>> = match fields.input {
        None => None,
        Some(raw) => {
            let path = Path::ROOT.key("input");
            let text = drive(&ctx, raw.get().as_bytes(), responses::Input { ctx: &ctx, path: &path })?;
            Some(match text {
                Some(text) => text_bytes(text),
                None => Cow::Borrowed(raw.get().as_bytes()),
            })
        }
    };
    Ok(responses_hashed(fields, input, ctx.text_bytes(), tools_len))
}

/// Responses: `instructions`, `tools` and `input` (already validated, its text counted in `input_text`)
/// concatenated for hashing, and the prompt size.
fn responses_hashed<'a>(
    fields: &mut Fields<'a>,
    input: Option<Cow<'a, [u8]>>,
    input_text: usize,
    tools_len: usize,
) -> Hashed<'a> {
    let instructions = fields.instructions.take();
    let prompt_bytes =
        input_text.saturating_add(tools_len).saturating_add(instructions.as_ref().map_or(0, |i| i.len()));
    let tools = fields.tools.map(|t| Cow::Borrowed(t.get().as_bytes()));
    (concat([instructions.map(text_bytes), tools, input]), prompt_bytes)
}

fn text_bytes(text: Cow<'_, str>) -> Cow<'_, [u8]> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

/// `tools` must be an array when present; returns its raw size.
fn check_tools(tools: Option<&RawValue>) -> Result<usize, RequestError> {
    match tools {
        None => Ok(0),
        Some(raw) if raw.get().starts_with('[') => Ok(raw.get().len()),
        Some(raw) => Err(Path::ROOT
            .key("tools")
            .error(Problem::Unexpected { expected: "an array", found: found_raw(raw) })),
    }
}

/// Concatenates the non-empty pieces; a single piece is returned as is, so it stays borrowed.
fn concat<'a, const N: usize>(pieces: [Option<Cow<'a, [u8]>>; N]) -> Cow<'a, [u8]> {
    let mut pieces = pieces.into_iter().flatten().filter(|p| !p.is_empty());
    let Some(first) = pieces.next() else {
        return Cow::Borrowed(&[]);
    };
    let Some(second) = pieces.next() else {
        return first;
    };
    let mut out = Vec::new();
    for piece in [first, second].into_iter().chain(pieces) {
        out.extend_from_slice(&piece);
    }
    Cow::Owned(out)
}
