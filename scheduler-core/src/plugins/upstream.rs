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
//! `docs/upstream-compatibility.md` is the table users read; a test keeps it in step with this file.

use crate::config::params::{json_repr, ParamError};
use crate::scheduling::{BuildContext, Plugin, PluginFactory, SectionRole};
use alloc::format;
use alloc::string::String;
use serde_json::{Map, Value};

/// A mapped type: its name, the part it plays, and where its work is done here.
pub struct Mapped {
    pub type_name: &'static str,
    pub role: SectionRole,
    /// Completes "Accepted: ...", for the compatibility table.
    pub done_by: &'static str,
}

/// A refused type and why (one sentence, for the error and the compatibility table).
pub struct Refused {
    pub type_name: &'static str,
    pub why: &'static str,
}

/// Checks a mapped type's `parameters` (`Value::Null` when absent).
type Check = fn(&Value) -> Result<(), ParamError>;

/// Declares one mapped plugin type: a plugin with no scheduling part and the given section role.
macro_rules! mapped {
    ($(#[$doc:meta])* $name:ident, $type_name:literal, $role:ident, $check:path) => {
        $(#[$doc])*
        pub struct $name;

        impl Plugin for $name {
            fn type_name(&self) -> &'static str {
                $type_name
            }
            fn section_role(&self) -> Option<SectionRole> {
                Some(SectionRole::$role)
            }
        }

        impl PluginFactory for $name {
            const TYPE: &'static str = $type_name;
            type Params = Value;

            fn build(params: Value, _: &mut BuildContext<'_>) -> Result<$name, ParamError> {
                let check: Check = $check;
                check(&params)?;
                Ok($name)
            }
        }
    };
}

/// Parameters must be absent or an object whose keys are all in `allowed`; returns the object (`None`
/// when absent).
fn only_keys<'v>(params: &'v Value, allowed: &[&str]) -> Result<Option<&'v Map<String, Value>>, ParamError> {
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

fn no_params(params: &Value) -> Result<(), ParamError> {
    only_keys(params, &[]).map(|_| ())
}

mapped!(
    /// `openai-parser`: OpenAI completions, chat completions, responses, embeddings bodies — what the
    /// request reader parses for every request.
    OpenAiParser,
    "openai-parser",
    Parser,
    no_params
);

/// Every mapped type, for the registry and the compatibility table.
pub const MAPPED: &[Mapped] = &[Mapped {
    type_name: "openai-parser",
    role: SectionRole::Parser,
    done_by: "the request reader parses OpenAI completions, chat, responses and embeddings bodies (and \
              multipart forms) for every request",
}];

/// Every refused type.
pub const REFUSED: &[Refused] = &[];

/// Why `type_name` is refused, if it is.
pub fn refused(type_name: &str) -> Option<&'static str> {
    REFUSED.iter().find(|r| r.type_name == type_name).map(|r| r.why)
}
