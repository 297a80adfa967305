//! Request parsers (llm-d's `requestHandler.parsers`): the request reader (`request/`) does their work.

use super::{Group, Mapped};
use crate::config::params::ParamError;
use crate::plugins::registry::Entry;
use crate::scheduling::{BuildContext, SectionRole};
use serde_json::Value;

/// llm-d's parser factories read no parameters: any are accepted, with a warning naming them.
fn ignored(params: &Value, ctx: &mut BuildContext<'_>) -> Result<(), ParamError> {
    ctx.ignore_json(params);
    Ok(())
}

crate::upstream_mapped_plugin!(
    /// `openai-parser`: OpenAI completions, chat completions, responses and embeddings bodies, which the
    /// request reader parses for every request.
    OpenAiParser,
    "openai-parser",
    Parser,
    ignored
);

pub const GROUP: Group = Group {
    entries: &[Entry::of::<OpenAiParser>()],
    mapped: &[Mapped {
        type_name: "openai-parser",
        role: Some(SectionRole::Parser),
        done_by:
            "the request reader, which parses OpenAI completions, chat, responses and embeddings bodies \
                  (and multipart forms) for every request",
    }],
    refused: &[],
};
