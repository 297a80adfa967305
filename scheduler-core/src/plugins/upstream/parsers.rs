//! Request parsers (llm-d's `requestHandler.parsers`): the request reader (`request/`) does their work.
//!
//! llm-d picks a request's parser by the end of its path, in the order the parsers are listed; a
//! `passthrough-parser` claims every path no parser before it claimed, and reads nothing of the body.
//! [`RequestParsers`] keeps that: a request the configured list hands to the passthrough parser is
//! routed on load without its body being read (no model, no prefix), any other is read as always.

use super::{Group, Mapped, Refused};
use crate::config::params::ParamError;
use crate::config::{EndpointPickerConfig, SectionRef};
use crate::plugins::registry::Entry;
use crate::scheduling::{BuildContext, SectionRole};
use alloc::vec::Vec;
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
crate::upstream_mapped_plugin!(
    /// `anthropic-parser`: Anthropic Messages bodies (`/v1/messages`), which the request reader parses.
    AnthropicParser,
    "anthropic-parser",
    Parser,
    ignored
);
crate::upstream_mapped_plugin!(
    /// `vllmhttp-parser`: vLLM's generate API on token ids (`/inference/v1/generate`), which the request
    /// reader parses.
    VllmHttpParser,
    "vllmhttp-parser",
    Parser,
    ignored
);
crate::upstream_mapped_plugin!(
    /// `passthrough-parser`: requests it claims are routed without reading their body.
    PassthroughParser,
    "passthrough-parser",
    Parser,
    ignored
);

pub const OPENAI_PARSER: &str = "openai-parser";
pub const PASSTHROUGH_PARSER: &str = "passthrough-parser";

/// llm-d's parser types, which `requestHandler.parsers` may name without declaring them (llm-d creates
/// the plugin, named after its type).
pub const PARSER_TYPES: &[&str] = &[
    OPENAI_PARSER,
    "anthropic-parser",
    "vllmhttp-parser",
    PASSTHROUGH_PARSER,
    "vllmgrpc-parser",
    "vertexai-parser",
];

/// The path ends each llm-d parser claims (llm-d v0.10).
fn claims(type_name: &str) -> &'static [&'static str] {
    match type_name {
        OPENAI_PARSER => &[
            "chat/completions",
            "completions",
            "embeddings",
            "responses",
            "conversations",
            "chat/completions/render",
            "completions/render",
            "images/generations",
        ],
        "anthropic-parser" => &["messages", "messages/count_tokens"],
        "vllmhttp-parser" => &["inference/v1/generate"],
        "vllmgrpc-parser" => &["vllm.grpc.engine.VllmEngine/Generate", "vllm.grpc.engine.VllmEngine/Embed"],
        "vertexai-parser" => &[
            "google.cloud.aiplatform.v1.PredictionService/ChatCompletions",
            "google.cloud.aiplatform.v1.PredictionService/RawPredict",
            "google.cloud.aiplatform.v1.PredictionService/StreamRawPredict",
        ],
        _ => &[],
    }
}

/// Which requests the request reader reads, from the configuration's parser list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestParsers {
    /// `None`: every request is read (no passthrough parser configured). `Some(ends)`: a passthrough
    /// parser is configured; only a request whose path ends with one of `ends` (claimed by a parser
    /// listed before it) is read.
    read_only: Option<Vec<&'static str>>,
}

impl RequestParsers {
    /// The parser list of `picker`: `requestHandler.parsers`, else the deprecated `parser`.
    pub fn of(picker: &EndpointPickerConfig) -> RequestParsers {
        let refs: Vec<&SectionRef> =
            picker.section_refs.iter().filter(|r| r.role == Some(SectionRole::Parser)).collect();
        let listed: Vec<&SectionRef> = match refs.iter().any(|r| r.path.starts_with("requestHandler.")) {
            true => refs.into_iter().filter(|r| r.path.starts_with("requestHandler.")).collect(),
            false => refs,
        };
        let mut claimed = Vec::new();
        for r in listed {
            let Some(spec) = picker.plugin(&r.plugin_ref) else { continue };
            if spec.type_name == PASSTHROUGH_PARSER {
                return RequestParsers { read_only: Some(claimed) };
            }
            claimed.extend_from_slice(claims(&spec.type_name));
        }
        RequestParsers::default()
    }

    /// Whether the body of a request to `path` is read (else it is routed on load, body unread).
    pub fn reads_body(&self, path: &str) -> bool {
        let Some(ends) = &self.read_only else { return true };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.trim_end_matches('/');
        ends.iter().any(|end| path.ends_with(end))
    }
}

pub const GROUP: Group = Group {
    entries: &[Entry::of::<OpenAiParser>(), Entry::of::<AnthropicParser>(),
        Entry::of::<VllmHttpParser>(), Entry::of::<PassthroughParser>()],
    mapped: &[
        Mapped {
            type_name: OPENAI_PARSER,
            role: Some(SectionRole::Parser),
            done_by: "the request reader, which parses OpenAI completions, chat, responses and embeddings \
                      bodies (and multipart forms) for every request",
        },
        Mapped {
            type_name: "anthropic-parser",
            role: Some(SectionRole::Parser),
            done_by:
                "the request reader, which reads Anthropic Messages bodies (`/v1/messages`): model, stream, \
                      max_tokens, and `system` then `messages` hashed for prefix affinity, as llm-d does",
        },
        Mapped {
            type_name: "vllmhttp-parser",
            role: Some(SectionRole::Parser),
            done_by: "the request reader, which reads vLLM generate bodies (`/inference/v1/generate`): model \
                      when given, stream, sampling_params.max_tokens, and `token_ids` hashed for prefix affinity",
        },
        Mapped {
            type_name: PASSTHROUGH_PARSER,
            role: Some(SectionRole::Parser),
            done_by: "the request reader, which leaves the body of every request the passthrough parser \
                      claims unread: routed on load, with no model (no rewrite) and no prefix affinity",
        },
    ],
    refused: &[
        Refused {
            type_name: "vllmgrpc-parser",
            why: "wasm-epp reads HTTP JSON request bodies, not vLLM's gRPC (protobuf) API; serve vLLM over \
                  its OpenAI HTTP API, or list passthrough-parser to route gRPC requests on load without \
                  reading them",
        },
        Refused {
            type_name: "vertexai-parser",
            why:
                "wasm-epp does not read Vertex AI's gRPC PredictionService bodies (protobuf wrapping OpenAI \
                  JSON); send OpenAI HTTP requests, or list passthrough-parser to route them on load",
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn parsers(json: &str) -> RequestParsers {
        RequestParsers::of(&EndpointPickerConfig::from_json(json).unwrap())
    }

    #[test]
    fn passthrough_claims_what_no_parser_before_it_claims() {
        // No parser list, or one without passthrough: every body is read.
        assert!(parsers("").reads_body("/v1/anything"));
        let openai = parsers(
            r#"{"plugins": [{"type": "openai-parser"}], "requestHandler": {"parsers": [{"pluginRef": "openai-parser"}]}}"#,
        );
        assert!(openai.reads_body("/v1/audio/transcriptions"));

        // The chart's payload-agnostic config: nothing is read.
        let only = parsers(
            r#"{"plugins": [{"type": "passthrough-parser"}, {"type": "random-picker"}],
                "requestHandler": {"parsers": [{"pluginRef": "passthrough-parser"}]}}"#,
        );
        assert!(!only.reads_body("/v1/chat/completions"));
        assert!(!only.reads_body("/v1/completions"));

        // OpenAI first: its paths are read, the rest passed through.
        let both = parsers(
            r#"{"plugins": [{"name": "o", "type": "openai-parser"}, {"name": "p", "type": "passthrough-parser"}],
                "requestHandler": {"parsers": [{"pluginRef": "o"}, {"pluginRef": "p"}]}}"#,
        );
        assert!(both.reads_body("/v1/chat/completions"));
        assert!(both.reads_body("/openai/v1/completions/?x=1"));
        assert!(!both.reads_body("/v1/audio/transcriptions"));

        // Passthrough first: the parsers after it never see a request (as in llm-d).
        let first = parsers(
            r#"{"plugins": [{"type": "openai-parser"}, {"type": "passthrough-parser"}],
                "parser": {"pluginRef": "passthrough-parser"}}"#,
        );
        assert!(!first.reads_body("/v1/chat/completions"), "the deprecated `parser` counts too");

        // Parsers after the passthrough one get a warning.
        let cfg = EndpointPickerConfig::from_json(
            r#"{"requestHandler": {"parsers": [{"pluginRef": "passthrough-parser"}, {"pluginRef": "openai-parser"}]}}"#,
        )
        .unwrap();
        let warned: Vec<&str> = cfg.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(warned, ["requestHandler.parsers[1].pluginRef"]);
    }

    #[test]
    fn a_parser_type_named_without_a_declaration_is_created() {
        let cfg = EndpointPickerConfig::from_json(
            r#"{"requestHandler": {"parsers": [{"pluginRef": "openai-parser"}, {"pluginRef": "vllmgrpc-parser"}]}}"#,
        )
        .unwrap();
        let types: Vec<&str> = cfg.plugins.iter().map(|p| p.type_name.as_str()).collect();
        assert!(types.contains(&"openai-parser") && types.contains(&"vllmgrpc-parser"), "{types:?}");
        let err = crate::scheduling::pipeline::Scheduler::from_config(&cfg).unwrap_err().to_string();
        assert!(err.contains("vllmgrpc-parser") && err.contains("gRPC"), "{err}");

        // Any other undeclared name is a dangling reference.
        let err = EndpointPickerConfig::from_json(r#"{"parser": {"pluginRef": "my-parser"}}"#).unwrap_err();
        assert_eq!(err.path, "parser.pluginRef");
    }
}
