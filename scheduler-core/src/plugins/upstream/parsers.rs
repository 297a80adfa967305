//! Request parsers (llm-d's `requestHandler.parsers`): the request reader (`request/`) does their work.

use super::{no_params, Group, Mapped};
use crate::plugins::registry::Entry;
use crate::scheduling::SectionRole;

crate::upstream_mapped_plugin!(
    /// `openai-parser`: OpenAI completions, chat completions, responses and embeddings bodies, which the
    /// request reader parses for every request.
    OpenAiParser,
    "openai-parser",
    Parser,
    no_params
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
