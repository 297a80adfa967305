//! The top-level object of a request body: picks out the fields the gateway reads for the given API in one
//! pass, borrowing strings, and either validating `messages` / `input` in place (locating their raw JSON
//! for hashing) or capturing them as raw JSON for a second pass; `tools` is always captured raw.

use super::completions::{Prompt, PromptSeed};
use super::error::{Found, Path, Problem};
use super::seeds::{reject, skip, At, Count, Ctx, Flag, Key, Nullable, Seen, Text};
use super::{chat, responses, ApiKind, OutputLimits};
use alloc::borrow::Cow;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The fields of one request body that matter to the gateway; everything else is skipped unread.
#[derive(Default)]
pub(crate) struct Fields<'de> {
    pub model: Option<Cow<'de, str>>,
    pub stream: Option<bool>,
    pub limits: OutputLimits,
    pub cache_salt: Option<Cow<'de, str>>,
    pub user: Option<Cow<'de, str>>,
    pub prompt: Option<Prompt<'de>>,
    pub prompt_embeds: bool,
    pub messages: Option<&'de RawValue>,
    pub tools: Option<&'de RawValue>,
    pub input: Option<&'de RawValue>,
    /// Anthropic Messages' system prompt, raw.
    pub system: Option<&'de RawValue>,
    /// vLLM generate's prompt and sampling parameters, raw.
    pub token_ids: Option<&'de RawValue>,
    pub sampling_params: Option<&'de RawValue>,
    pub instructions: Option<Cow<'de, str>>,
    /// Single pass only: `messages` / `input`, validated where it lies (`None` when absent or null).
    pub validated: Option<Validated<'de>>,
    /// Single pass only: where that value sits, if its key and the next one were found in the body.
    pub span: Option<KeySpan>,
}

/// What the single pass learnt of `messages` (always an array) or `input`.
pub(crate) enum Validated<'de> {
    /// A string `input`, hashed as its text.
    Text(Cow<'de, str>),
    /// An array, hashed as its raw JSON, which `KeySpan::value` recovers.
    Array,
}

/// Where a value of the body object lies, as the addresses of the unescaped key text before it and of the
/// key after it (`None` when it is the last member). A serde `MapAccess` gives no offsets inside an
/// object, but the reader borrows unescaped keys from the body, and only JSON punctuation and whitespace
/// lie between a value and the keys around it.
#[derive(Clone, Copy)]
pub(crate) struct KeySpan {
    key: usize,
    next_key: Option<usize>,
}

impl KeySpan {
    /// The raw JSON of the value of `key` in `body`, exactly as a `RawValue` would capture it. `None` if
    /// the bytes around it are not what an accepted body has there (never expected).
    pub(crate) fn value<'a>(self, body: &'a [u8], key: &str) -> Option<&'a [u8]> {
        let base = body.as_ptr().addr();
        let key_at = self.key.checked_sub(base)?;
        let key_end = key_at.checked_add(key.len())?;
        if body.get(key_at..key_end)? != key.as_bytes() {
            return None;
        }
        let colon = skip_ws(body, key_end.checked_add(1)?);
        if body.get(key_end) != Some(&b'"') || body.get(colon) != Some(&b':') {
            return None;
        }
        let start = skip_ws(body, colon.checked_add(1)?);
        // Back from the next key's opening quote over `,`, or from the body's end over the closing `}`.
        let (after, separator) = match self.next_key {
            Some(next) => (next.checked_sub(base)?.checked_sub(1)?, b','),
            None => (body.len(), b'}'),
        };
        if self.next_key.is_some() && body.get(after) != Some(&b'"') {
            return None;
        }
        let sep = skip_ws_back(body, after).checked_sub(1)?;
        if body.get(sep) != Some(&separator) {
            return None;
        }
        body.get(start..skip_ws_back(body, sep))
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

/// The first position at or after `at` that is not JSON whitespace.
fn skip_ws(body: &[u8], at: usize) -> usize {
    let rest = body.get(at..).unwrap_or_default();
    at.saturating_add(rest.iter().take_while(|b| is_ws(**b)).count())
}

/// The start of the run of JSON whitespace that ends just before `end`.
fn skip_ws_back(body: &[u8], end: usize) -> usize {
    let head = body.get(..end).unwrap_or_default();
    end.saturating_sub(head.iter().rev().take_while(|b| is_ws(**b)).count())
}

/// The known top-level fields, in `Seen` bit order.
const KNOWN: [&str; 16] = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "cache_salt",
    "user",
    "prompt",
    "prompt_embeds",
    "messages",
    "tools",
    "input",
    "instructions",
    "system",
    "token_ids",
    "sampling_params",
];

/// Whether `api` defines the top-level field `name`. Fields an API does not define are skipped like any
/// other unknown field, so a client's extra `max_output_tokens` on a chat request is not policed.
fn reads(api: ApiKind, name: &str) -> bool {
    match name {
        "model" => true,
        "stream" | "cache_salt" | "user" => api != ApiKind::Other,
        "max_tokens" => matches!(api, ApiKind::Completions | ApiKind::ChatCompletions | ApiKind::Messages),
        "prompt" | "prompt_embeds" => api == ApiKind::Completions,
        "max_completion_tokens" => api == ApiKind::ChatCompletions,
        "messages" => matches!(api, ApiKind::ChatCompletions | ApiKind::Messages),
        "system" => api == ApiKind::Messages,
        "token_ids" | "sampling_params" => api == ApiKind::Generate,
        "tools" => matches!(api, ApiKind::ChatCompletions | ApiKind::Responses),
        "max_output_tokens" | "input" | "instructions" => api == ApiKind::Responses,
        _ => false,
    }
}

pub(crate) struct BodySeed<'c> {
    pub api: ApiKind,
    pub ctx: &'c Ctx,
    /// Validate `messages` / `input` while reading the body (`Fields::validated` and `span`) instead of
    /// capturing them as `RawValue`s for a second pass.
    pub single_pass: bool,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Fields<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let BodySeed { api, ctx, single_pass } = self;
        let at = At { ctx, path: &Path::ROOT, expected: "a JSON object" };
        d.deserialize_any(BodyVisitor { api, at, single_pass })
    }
}

struct BodyVisitor<'c> {
    api: ApiKind,
    at: At<'c>,
    single_pass: bool,
}

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = Fields<'de>;

    reject!(null bool number string array);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.at.ctx;
        let mut seen = Seen::default();
        let mut fields = Fields::default();
        // Single pass: the address of the `messages` / `input` key whose value's end is not known yet.
        let mut open_span: Option<usize> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            // The key's address in the body; a key with escapes was decoded into a copy and has none.
            let key_at = match &key {
                Cow::Borrowed(k) => Some(k.as_ptr().addr()),
                Cow::Owned(_) => None,
            };
            if let Some(value_key) = open_span.take() {
                fields.span = key_at.map(|next| KeySpan { key: value_key, next_key: Some(next) });
            }
            let key: &str = &key;
            let Some(bit) = KNOWN.iter().position(|k| *k == key).filter(|_| reads(self.api, key)) else {
                skip(&mut map)?;
                continue;
            };
            seen.first(&self.at, u32::try_from(bit).unwrap_or(u32::MAX), key)?;
            let path = Path::ROOT.key(key);
            let path = &path;
            match key {
                "model" => fields.model = map.next_value_seed(Nullable(Text::new(ctx, path)))?,
                "stream" => fields.stream = map.next_value_seed(Nullable(Flag::new(ctx, path)))?,
                "max_tokens" => {
                    fields.limits.max_tokens = map.next_value_seed(Nullable(Count::new(ctx, path)))?
                }
                "max_completion_tokens" => {
                    fields.limits.max_completion_tokens =
                        map.next_value_seed(Nullable(Count::new(ctx, path)))?
                }
                "max_output_tokens" => {
                    fields.limits.max_output_tokens = map.next_value_seed(Nullable(Count::new(ctx, path)))?
                }
                "cache_salt" => fields.cache_salt = map.next_value_seed(Nullable(Text::new(ctx, path)))?,
                "user" => fields.user = map.next_value_seed(Nullable(Text::new(ctx, path)))?,
                "prompt" => fields.prompt = map.next_value_seed(Nullable(PromptSeed { ctx, path }))?,
                "prompt_embeds" => {
                    fields.prompt_embeds = map.next_value::<Option<&'de RawValue>>()?.is_some();
                }
                "messages" if self.single_pass => {
                    let seed = Nullable(chat::Messages { ctx, path });
                    fields.validated = map.next_value_seed(seed)?.map(|()| Validated::Array);
                    open_span = key_at;
                }
                "input" if self.single_pass => {
                    let seed = Nullable(responses::Input { ctx, path });
                    fields.validated = map.next_value_seed(seed)?.map(|text| match text {
                        Some(text) => Validated::Text(text),
                        None => Validated::Array,
                    });
                    open_span = key_at;
                }
                "messages" => fields.messages = map.next_value()?,
                "tools" => fields.tools = map.next_value()?,
                "input" => fields.input = map.next_value()?,
                "system" => fields.system = map.next_value()?,
                "token_ids" => fields.token_ids = map.next_value()?,
                "sampling_params" => fields.sampling_params = map.next_value()?,
                "instructions" => {
                    fields.instructions = map.next_value_seed(Nullable(Text::new(ctx, path)))?;
                }
                _ => skip(&mut map)?,
            }
        }
        if let Some(key_at) = open_span {
            fields.span = Some(KeySpan { key: key_at, next_key: None });
        }
        match fields.model.as_deref() {
            // vLLM's generate API serves its one model without being told (llm-d reads none then).
            None if self.api == ApiKind::Generate => {}
            None => return self.at.missing("model"),
            Some("") => {
                let path = Path::ROOT.key("model");
                return ctx.fail(
                    &path,
                    Problem::Unexpected { expected: "a non-empty string", found: Found::EmptyString },
                );
            }
            Some(_) => {}
        }
        Ok(fields)
    }
}
