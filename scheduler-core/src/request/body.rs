//! The top-level object of a request body: picks out the fields the gateway reads for the given API in one
//! pass, borrowing strings and capturing `messages` / `input` / `tools` as raw JSON for hashing.

use super::completions::{Prompt, PromptSeed};
use super::error::{Found, Path, Problem};
use super::seeds::{reject, skip, At, Count, Ctx, Flag, Key, Nullable, Seen, Text};
use super::{ApiKind, OutputLimits};
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
    pub instructions: Option<Cow<'de, str>>,
}

/// The known top-level fields, in `Seen` bit order.
const KNOWN: [&str; 13] = [
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
];

/// Whether `api` defines the top-level field `name`. Fields an API does not define are skipped like any
/// other unknown field, so a client's extra `max_output_tokens` on a chat request is not policed.
fn reads(api: ApiKind, name: &str) -> bool {
    match name {
        "model" => true,
        "stream" | "cache_salt" | "user" => api != ApiKind::Other,
        "max_tokens" => matches!(api, ApiKind::Completions | ApiKind::ChatCompletions),
        "prompt" | "prompt_embeds" => api == ApiKind::Completions,
        "max_completion_tokens" | "messages" => api == ApiKind::ChatCompletions,
        "tools" => matches!(api, ApiKind::ChatCompletions | ApiKind::Responses),
        "max_output_tokens" | "input" | "instructions" => api == ApiKind::Responses,
        _ => false,
    }
}

pub(crate) struct BodySeed<'c> {
    pub api: ApiKind,
    pub ctx: &'c Ctx,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Fields<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let BodySeed { api, ctx } = self;
        d.deserialize_any(BodyVisitor { api, at: At { ctx, path: &Path::ROOT, expected: "a JSON object" } })
    }
}

struct BodyVisitor<'c> {
    api: ApiKind,
    at: At<'c>,
}

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = Fields<'de>;

    reject!(null bool number string array);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.at.ctx;
        let mut seen = Seen::default();
        let mut fields = Fields::default();
        while let Some(key) = map.next_key_seed(Key)? {
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
                "messages" => fields.messages = map.next_value()?,
                "tools" => fields.tools = map.next_value()?,
                "input" => fields.input = map.next_value()?,
                "instructions" => {
                    fields.instructions = map.next_value_seed(Nullable(Text::new(ctx, path)))?;
                }
                _ => skip(&mut map)?,
            }
        }
        match fields.model.as_deref() {
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
