//! llm-d-router's plugin types that are not scheduling plugins here, so that its shipped configurations
//! load unchanged.
//!
//! llm-d (v0.10) configures, besides filters, scorers and pickers, the parts around them as plugins:
//! request parsers, data sources and their extractors, producers of per-request data. In wasm-epp those
//! jobs belong to fixed parts: the request reader (`request`) parses OpenAI bodies, the collector scrapes
//! the engines' `/metrics`, the prefix index lives with `prefix-cache-scorer`. Each such type is one of:
//!
//! - **mapped** ([`MAPPED`]): accepted; the part named in its entry does the work, and the parameters
//!   that would change the meaning are checked against what that part does (anything else is an error
//!   naming the parameter, never silently dropped);
//! - **refused** ([`REFUSED`]): an error that names the type and says why, so the operator can act.
//!
//! The types are grouped by what they do, one file each; a group lists its registry entries, its mapped
//! and its refused types, and [`ENTRIES`], [`mapped`] and [`refused`] gather the groups.
//! `docs/upstream-compatibility.md` is the table users read; a test keeps it in step with these files.

mod data_layer;
mod disagg;
mod parsers;
mod prefix;
mod request_control;
mod scheduling;

pub use data_layer::{metrics_source, MetricsSource, METRICS_DATA_SOURCE};
pub use parsers::{RequestParsers, PARSER_TYPES, PASSTHROUGH_PARSER};

use crate::config::params::{json_repr, ParamError};
use crate::plugins::registry::Entry;
use crate::scheduling::BuildContext;
use crate::scheduling::SectionRole;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// A mapped type: its name, the part it plays, and where its work is done here.
pub struct Mapped {
    pub type_name: &'static str,
    /// The section that references it (`None`: active by being declared, like llm-d's admitters,
    /// request-header plugins and flow-control policies).
    pub role: Option<SectionRole>,
    /// Completes "Accepted: ...", for the compatibility table.
    pub done_by: &'static str,
}

/// A refused type and why (one sentence, for the error and the compatibility table).
pub struct Refused {
    pub type_name: &'static str,
    pub why: &'static str,
}

/// Checks a mapped type's `parameters` (`Value::Null` when absent); warnings go to the context.
pub type Check = fn(&Value, &mut BuildContext<'_>) -> Result<(), ParamError>;

/// Declares one mapped plugin type: a plugin with no scheduling part and the given section role, or
/// `None` for a type no section references (it is active by being declared).
#[macro_export]
#[doc(hidden)]
macro_rules! upstream_mapped_plugin {
    ($(#[$doc:meta])* $name:ident, $type_name:literal, None, $check:path) => {
        $crate::upstream_mapped_plugin!(@define $(#[$doc])* $name, $type_name, None, $check);
    };
    ($(#[$doc:meta])* $name:ident, $type_name:literal, $role:ident, $check:path) => {
        $crate::upstream_mapped_plugin!(
            @define $(#[$doc])* $name, $type_name, Some($crate::scheduling::SectionRole::$role), $check
        );
    };
    (@define $(#[$doc:meta])* $name:ident, $type_name:literal, $role:expr, $check:path) => {
        $(#[$doc])*
        pub struct $name;

        impl $crate::scheduling::Plugin for $name {
            fn type_name(&self) -> &'static str {
                $type_name
            }
            fn section_role(&self) -> Option<$crate::scheduling::SectionRole> {
                $role
            }
        }

        impl $crate::scheduling::PluginFactory for $name {
            const TYPE: &'static str = $type_name;
            type Params = serde_json::Value;

            fn build(
                params: serde_json::Value,
                ctx: &mut $crate::scheduling::BuildContext<'_>,
            ) -> Result<$name, $crate::config::params::ParamError> {
                let check: $crate::plugins::upstream::Check = $check;
                check(&params, ctx)?;
                Ok($name)
            }
        }
    };
}

/// Parameters must be absent or an object whose keys are all in `allowed`; returns the object (`None`
/// when absent).
pub fn only_keys<'v>(
    params: &'v Value,
    allowed: &[&str],
) -> Result<Option<&'v Map<String, Value>>, ParamError> {
    let obj = match params {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        other => return Err(ParamError::new("", "an object", Some(json_repr(other)))),
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        let expected = if allowed.is_empty() {
            String::from("no parameters")
        } else {
            format!("one of the parameters {}", allowed.join(", "))
        };
        return Err(ParamError::new(k.as_str(), expected, Some(String::from("an unknown one"))));
    }
    Ok(Some(obj))
}

pub fn no_params(params: &Value, _: &mut BuildContext<'_>) -> Result<(), ParamError> {
    only_keys(params, &[]).map(|_| ())
}

/// An llm-d type that wasm-epp implements itself under the same name, with what differs (for the
/// compatibility table; empty when nothing does).
pub struct Supported {
    pub type_name: &'static str,
    pub note: &'static str,
}

/// llm-d's types that are wasm-epp plugins of the same name.
pub const SUPPORTED: &[Supported] = &[
    Supported { type_name: "queue-scorer", note: "an endpoint not yet scraped scores 0 here (llm-d: as if idle)" },
    Supported {
        type_name: "kv-cache-utilization-scorer",
        note: "an endpoint not yet scraped scores 0 here (llm-d: as if empty)",
    },
    Supported { type_name: "lora-affinity-scorer", note: "" },
    Supported {
        type_name: "prefix-cache-scorer",
        note: "with no approx-prefix-cache-producer configured it keeps its own prefix index with GIE's \
               defaults (16-token blocks, the first 256 blocks = 4096 tokens of the prompt); llm-d v0.10 \
               auto-creates the producer with 64-token blocks and a 131072-token cap: declare \
               approx-prefix-cache-producer for those",
    },
    Supported {
        type_name: "no-hit-lru-scorer",
        note: "the recency list is per decision point (each Envoy worker keeps its own); prefixPluginType and \
               prefixPluginName are ignored with a warning, as llm-d ignores them",
    },
    Supported {
        type_name: "running-requests-size-scorer",
        note: "an endpoint not yet scraped scores 0 here (llm-d: as if idle)",
    },
    Supported {
        type_name: "token-load-scorer",
        note: "in-flight tokens are this gateway's estimate (input as bytes / 4 plus expected output) of the \
               requests it sent and that have not finished; llm-d counts their uncached input and adds the \
               request's own uncached tokens on each endpoint",
    },
    Supported {
        type_name: "active-request-scorer",
        note: "counts the requests this gateway has in flight (llm-d: its picker's); inFlightLoadProducerName \
               is accepted and ignored",
    },
    Supported {
        type_name: "load-aware-scorer",
        note: "an endpoint not yet scraped scores 0 here (llm-d: 0.5, as if idle)",
    },
    Supported {
        type_name: "session-affinity-scorer",
        note: "the token is the served endpoint's address (base64 of ip:port), set on every response; only \
               the encoded_endpoint_header strategy and the x-session-token header; llm-d-router's tokens \
               (namespace/pod) express no preference here",
    },
    Supported {
        type_name: "prefix-cache-affinity-filter",
        note: "the TTFT gate's in-flight tokens are this gateway's estimate (input plus expected output, until \
               the response ends; llm-d: uncached input until the first byte), so it opens somewhat sooner; \
               the exploration coin hashes the request id and clock; ttftSource latencyPredictor is refused",
    },
    Supported {
        type_name: "decode-filter",
        note: "a static endpoint configured with a role and no llm-d.ai/role label counts as labelled with it",
    },
    Supported {
        type_name: "prefill-filter",
        note: "a static endpoint configured with a role and no llm-d.ai/role label counts as labelled with it",
    },
    Supported { type_name: "encode-filter", note: "" },
    Supported {
        type_name: "label-selector-filter",
        note: "pod labels from Kubernetes discovery, or the labels of static endpoints",
    },
    Supported { type_name: "by-label-selector", note: "llm-d's deprecated name for label-selector-filter (warning)" },
    Supported { type_name: "by-label", note: "deprecated in llm-d (warning)" },
    Supported {
        type_name: "utilization-filter",
        note: "active-requests counts the requests this gateway has in flight; inFlightLoadProducerName is \
               accepted and ignored",
    },
    Supported {
        type_name: "context-length-aware",
        note: "the request's length is its prompt bytes / 4 (llm-d's estimate flattens chat messages a little \
               differently)",
    },
    Supported { type_name: "header-profile-handler", note: "" },
    Supported { type_name: "header-label-affinity-scorer", note: "" },
    Supported { type_name: "max-score-picker", note: "" },
    Supported { type_name: "random-picker", note: "" },
    Supported { type_name: "weighted-random-picker", note: "" },
    Supported {
        type_name: "single-profile-handler",
        note: "more than one profile is refused when the configuration loads (llm-d: each request fails)",
    },
    Supported {
        type_name: "pd-profile-handler",
        note: "llm-d v0.10's parameters (deciderPluginName, prefixPluginName/Type, prefixMatchInfoProducerName) \
               and wasm-epp's earlier threshold (used when no decider is named or configured); primaryPort \
               other than 0 is refused (data-parallel rewrite)",
    },
    Supported {
        type_name: "disagg-profile-handler",
        note: "decode-first and prefill-first, nested and deprecated flat parameters; deciders.encode is \
               refused (encode disaggregation); without a prefix producer the handler keeps a prefix index \
               of its own, with wasm-epp's defaults, so its decider sees real hits",
    },
    Supported {
        type_name: "prefix-based-pd-decider",
        note: "prompt tokens estimated as bytes / 4; cached tokens = the decode pick's matched blocks × block \
               size of the prefix index the handler reads",
    },
    Supported { type_name: "always-disagg-pd-decider", note: "" },
    Supported { type_name: "utilization-detector", note: "" },
];

/// One group of llm-d types: registry entries for the accepted ones, the mapped ones' descriptions, the
/// refused ones with their reasons.
pub struct Group {
    pub entries: &'static [Entry],
    pub mapped: &'static [Mapped],
    pub refused: &'static [Refused],
}

const GROUPS: &[&Group] = &[
    &parsers::GROUP,
    &data_layer::GROUP,
    &prefix::GROUP,
    &disagg::GROUP,
    &scheduling::GROUP,
    &request_control::GROUP,
];

/// Registry entries of every accepted llm-d type that is not a plain built-in plugin.
pub fn entries() -> impl Iterator<Item = Entry> {
    GROUPS.iter().flat_map(|g| g.entries.iter().copied())
}

/// Every mapped type (for the compatibility table).
pub fn mapped() -> Vec<&'static Mapped> {
    GROUPS.iter().flat_map(|g| g.mapped.iter()).collect()
}

/// Every refused type (for the compatibility table).
pub fn all_refused() -> Vec<&'static Refused> {
    GROUPS.iter().flat_map(|g| g.refused.iter()).collect()
}

/// Why `type_name` is refused, if it is.
pub fn refused(type_name: &str) -> Option<&'static str> {
    GROUPS.iter().flat_map(|g| g.refused.iter()).find(|r| r.type_name == type_name).map(|r| r.why)
}
