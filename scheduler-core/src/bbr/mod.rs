//! Body-based routing (GIE's Body-Based Router, "BBR"): copies fields of the request body into request
//! headers before the proxy chooses a route, so a route table can send each model to its own pool.
//!
//! GIE runs this as a second ext_proc server. Here it is a role of the same core: the Wasm filter runs
//! it in the proxy (alone under `root_id: bbr`, or inside the picker's own filter, on the body the
//! picker reads anyway), and the shim serves it over ext_proc. Semantics follow GIE's two request
//! plugins (`pkg/bbr/plugins`, before GIE moved BBR out of its main branch):
//! - `body-field-to-header` (`fieldName`, `headerName`): a top-level body field's value becomes the
//!   header; a field that is absent or empty sets nothing. GIE's default is `model` →
//!   `X-Gateway-Model-Name`.
//! - `base-model-to-header`: the base model of the requested model becomes `X-Gateway-Base-Model-Name`
//!   (an adapter maps to its base model, a base model to itself). GIE reads the adapter → base mapping
//!   from ConfigMaps labelled `inference.networking.k8s.io/bbr-managed: "true"` whose data holds
//!   `baseModel` and a YAML list `adapters`; here the same pairs are the plugin's `baseModels`
//!   parameter.
//!
//! Where we differ from GIE, on purpose:
//! - Client-set copies of every header BBR writes are removed first, so a client cannot pick a pool by
//!   sending the header itself (GIE leaves them when the body has no such field).
//! - The body is read by the picker's own reader ([`read_body`]): the same 400/413/415 answers, in the
//!   OpenAI error shape (GIE answers a non-JSON body with a plain-text 400 and accepts any JSON).
//! - A model neither a base model nor an adapter sets no base-model header (GIE sets it empty), and with
//!   `unknownModels: reject` is answered 404 naming the model (GIE leaves that to the route table).
//! - A field value that is a string, number or boolean is promoted (as its text); `null`, arrays and
//!   objects are not (GIE prints them Go-style, which no route would match).
//!
//! [`read_body`]: crate::endpoint_picker::read_body

mod fields;
#[cfg(test)]
mod tests;

use crate::config::gateway::GatewayConfig;
use crate::config::params::{json_repr, parse_params};
use crate::config::ConfigError;
use crate::endpoint_picker::{read_body, ReadBody, Reply, RequestInfo};
use crate::exchange::headers::{CONTENT_ENCODING, CONTENT_TYPE, PATH};
use crate::exchange::HeaderLookup;
use crate::openai_error::{ErrorType, OpenAiError};
use crate::request::{form_field, BodyFormat};
use alloc::borrow::Cow;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::Deserialize;
use serde_json::Value;

/// GIE's model header (`body-field-to-header` with `fieldName: model`, its default).
pub const MODEL_HEADER: &str = "x-gateway-model-name";
/// GIE's base-model header (`base-model-to-header`).
pub const BASE_MODEL_HEADER: &str = "x-gateway-base-model-name";
/// Plugin type names, as GIE registers them.
pub const BODY_FIELD_TO_HEADER: &str = "body-field-to-header";
pub const BASE_MODEL_TO_HEADER: &str = "base-model-to-header";

/// What to do with a model the base-model mapping does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownModels {
    /// Forward it without a base-model header (GIE): the route table decides.
    #[default]
    Pass,
    /// Answer 404 in the OpenAI shape, naming the model.
    Reject,
}

/// One body field promoted to a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldToHeader {
    pub field: String,
    /// Lower-case.
    pub header: String,
}

/// The adapter → base model mapping and the header it writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseModels {
    /// Lower-case.
    pub header: String,
    adapters: BTreeMap<String, String>,
    bases: BTreeSet<String>,
}

impl BaseModels {
    /// The base model of `model`: itself when a base model, its base when an adapter (names trimmed, as
    /// GIE's store does).
    pub fn base_of(&self, model: &str) -> Option<&str> {
        let model = model.trim();
        if let Some(base) = self.adapters.get(model) {
            return Some(base);
        }
        self.bases.get(model).map(String::as_str)
    }
}

/// A configured body router (the `bbr` section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyRouting {
    pub fields: Vec<FieldToHeader>,
    pub base_models: Option<BaseModels>,
    pub unknown_models: UnknownModels,
    /// Lower-case names of every header this router writes: a client's copies are removed.
    strip: Vec<String>,
}

impl Default for BodyRouting {
    /// GIE's default: `model` → `X-Gateway-Model-Name`, and the base-model header (with no mapping
    /// configured, it is never set).
    fn default() -> BodyRouting {
        BodyRouting::new(
            Vec::from([FieldToHeader { field: String::from("model"), header: String::from(MODEL_HEADER) }]),
            Some(BaseModels { header: String::from(BASE_MODEL_HEADER), ..BaseModels::default() }),
            UnknownModels::Pass,
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Section {
    plugins: Option<Vec<PluginSpec>>,
    #[serde(default)]
    unknown_models: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSpec {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Value,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct FieldParams {
    field_name: String,
    header_name: String,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct BaseParams {
    header_name: Option<String>,
    base_models: Vec<BaseEntry>,
}

/// One of GIE's ConfigMaps: a base model and its adapters.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct BaseEntry {
    base_model: String,
    adapters: Vec<String>,
}

/// An HTTP header name (RFC 9110 token characters), any case.
fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl BodyRouting {
    fn new(
        fields: Vec<FieldToHeader>,
        base_models: Option<BaseModels>,
        unknown: UnknownModels,
    ) -> BodyRouting {
        let mut strip: Vec<String> = fields
            .iter()
            .map(|f| f.header.clone())
            .chain(base_models.iter().map(|b| b.header.clone()))
            .collect();
        strip.sort();
        strip.dedup();
        BodyRouting { fields, base_models, unknown_models: unknown, strip }
    }

    /// Parses the `bbr` section (`null` or `{}`: GIE's default plugins). Errors name the path under
    /// `bbr`.
    pub fn from_value(v: &Value) -> Result<BodyRouting, ConfigError> {
        let section: Section = match v {
            Value::Null => return Ok(BodyRouting::default()),
            v => parse_params(v).map_err(|e| e.at("bbr"))?,
        };
        let unknown = match &section.unknown_models {
            None | Some(Value::Null) => UnknownModels::Pass,
            Some(v) => UnknownModels::deserialize(v).map_err(|_| {
                ConfigError::new("bbr.unknownModels", "\"pass\" or \"reject\"", Some(json_repr(v)))
            })?,
        };
        let Some(plugins) = section.plugins else {
            if unknown == UnknownModels::Reject {
                return Err(no_mapping());
            }
            return Ok(BodyRouting::default());
        };
        let mut fields = Vec::new();
        let mut base_models: Option<BaseModels> = None;
        for (i, p) in plugins.iter().enumerate() {
            let at = format!("bbr.plugins[{i}]");
            let params = format!("{at}.parameters");
            match p.type_name.as_str() {
                BODY_FIELD_TO_HEADER => {
                    let f: FieldParams = parse_params(&p.parameters).map_err(|e| e.at(&params))?;
                    if f.field_name.is_empty() {
                        return Err(ConfigError::new(
                            format!("{params}.fieldName"),
                            "a body field name",
                            None,
                        ));
                    }
                    if !is_header_name(&f.header_name) {
                        return Err(ConfigError::new(
                            format!("{params}.headerName"),
                            "an HTTP header name",
                            Some(format!("{:?}", f.header_name)),
                        ));
                    }
                    fields.push(FieldToHeader {
                        field: f.field_name,
                        header: f.header_name.to_ascii_lowercase(),
                    });
                }
                BASE_MODEL_TO_HEADER => {
                    if base_models.is_some() {
                        return Err(ConfigError::new(
                            at,
                            "at most one base-model-to-header plugin",
                            p.name.clone().map(|n| format!("{n:?}")),
                        ));
                    }
                    let b: BaseParams = parse_params(&p.parameters).map_err(|e| e.at(&params))?;
                    let header = b.header_name.unwrap_or_else(|| String::from(BASE_MODEL_HEADER));
                    if !is_header_name(&header) {
                        return Err(ConfigError::new(
                            format!("{params}.headerName"),
                            "an HTTP header name",
                            Some(format!("{header:?}")),
                        ));
                    }
                    base_models = Some(mapping(header.to_ascii_lowercase(), b.base_models, &params)?);
                }
                other => {
                    return Err(ConfigError::new(
                        format!("{at}.type"),
                        format!("\"{BODY_FIELD_TO_HEADER}\" or \"{BASE_MODEL_TO_HEADER}\""),
                        Some(format!("{other:?}")),
                    ))
                }
            }
        }
        if unknown == UnknownModels::Reject && base_models.as_ref().is_none_or(|b| b.bases.is_empty()) {
            return Err(no_mapping());
        }
        Ok(BodyRouting::new(fields, base_models, unknown))
    }

    /// Lower-case names of the headers this router writes (sorted): every client-set copy is removed
    /// before anything else, whatever the body says.
    pub fn strip(&self) -> &[String] {
        &self.strip
    }

    /// The headers to set for a body read by [`read_body`] (`raw`: its bytes, for fields other than
    /// `model`), or the local reply instead (404 for an unknown model when rejecting, 400 for a value no
    /// header can carry).
    pub fn headers(
        &self,
        read: &ReadBody<'_>,
        content_type: Option<&str>,
    ) -> Result<Vec<(String, String)>, Reply> {
        let model = read.parsed.as_ref().map(|p| p.model.as_ref()).filter(|m| !m.is_empty());
        let mut set = Vec::with_capacity(self.fields.len().saturating_add(1));
        let others: Vec<&str> =
            self.fields.iter().filter(|f| f.field != "model").map(|f| f.field.as_str()).collect();
        let found = match (read.body, others.is_empty()) {
            (Some(body), false) => other_fields(body, content_type, &others),
            _ => BTreeMap::new(),
        };
        for f in &self.fields {
            let value = if f.field == "model" {
                model.map(Cow::Borrowed)
            } else {
                found.get(f.field.as_str()).cloned()
            };
            let Some(value) = value.filter(|v| !v.is_empty()) else { continue };
            set.push((f.header.clone(), checked(&f.field, value)?));
        }
        if let (Some(b), Some(model)) = (&self.base_models, model) {
            match b.base_of(model) {
                Some(base) => set.push((b.header.clone(), String::from(base))),
                None if self.unknown_models == UnknownModels::Reject => return Err(model_not_found(model)),
                None => {}
            }
        }
        Ok(set)
    }

    /// [`read_body`] then [`BodyRouting::headers`]: the whole decision of a router that runs alone.
    pub fn route(
        &self,
        config: &GatewayConfig,
        facts: &BbrFacts,
        body: Option<&[u8]>,
    ) -> Result<Vec<(String, String)>, Reply> {
        let info = RequestInfo {
            path: &facts.path,
            content_type: facts.content_type.as_deref(),
            content_encoding: facts.content_encoding.as_deref(),
            ..RequestInfo::default()
        };
        let read = read_body(config, &info, body)?;
        self.headers(&read, facts.content_type.as_deref())
    }
}

fn no_mapping() -> ConfigError {
    ConfigError::new(
        "bbr.unknownModels",
        "\"pass\", or a base-model-to-header plugin with baseModels to know which models exist",
        Some(String::from("\"reject\"")),
    )
}

fn mapping(header: String, entries: Vec<BaseEntry>, params: &str) -> Result<BaseModels, ConfigError> {
    let mut out = BaseModels { header, ..BaseModels::default() };
    for (i, e) in entries.into_iter().enumerate() {
        let at = format!("{params}.baseModels[{i}]");
        let base = e.base_model.trim();
        if base.is_empty() {
            return Err(ConfigError::new(format!("{at}.baseModel"), "a model name", None));
        }
        out.bases.insert(String::from(base));
        for (j, a) in e.adapters.iter().enumerate() {
            let adapter = a.trim();
            if adapter.is_empty() {
                continue;
            }
            // Every name must say which pool serves it (GIE's rule: names unique across base models).
            let clash = out.adapters.get(adapter).is_some_and(|b| b != base);
            if clash {
                return Err(ConfigError::new(
                    format!("{at}.adapters[{j}]"),
                    "an adapter of one base model only",
                    Some(format!("{adapter:?}")),
                ));
            }
            out.adapters.insert(String::from(adapter), String::from(base));
        }
    }
    if let Some(name) = out.adapters.keys().find(|a| out.bases.contains(a.as_str())) {
        return Err(ConfigError::new(
            format!("{params}.baseModels"),
            "adapter names distinct from base model names",
            Some(format!("{name:?}")),
        ));
    }
    Ok(out)
}

/// Top-level fields other than `model`, from a JSON body (or a form's text fields).
fn other_fields<'b>(
    body: &'b [u8],
    content_type: Option<&str>,
    names: &[&str],
) -> BTreeMap<String, Cow<'b, str>> {
    match BodyFormat::of(content_type) {
        BodyFormat::Form { boundary } => names
            .iter()
            .filter_map(|n| form_field(body, boundary, n).map(|v| (String::from(*n), Cow::Borrowed(v))))
            .collect(),
        BodyFormat::Json | BodyFormat::Other => fields::top_level(body, names).unwrap_or_default(),
    }
}

/// A header value must not carry control characters (Envoy would refuse or mangle them).
fn checked(field: &str, value: Cow<'_, str>) -> Result<String, Reply> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        let message = format!("{field}: expected a value usable as an HTTP header (no control characters)");
        let e = OpenAiError {
            status: 400,
            error_type: ErrorType::InvalidRequest,
            message: Cow::Owned(message),
            param: Some(Cow::Borrowed(field)),
            code: Some("invalid_value"),
        };
        return Err(Reply { status: 400, body: e.body(), reason: "bad_request" });
    }
    Ok(value.into_owned())
}

/// 404 for a model no pool serves, as OpenAI answers an unknown model.
pub fn model_not_found(model: &str) -> Reply {
    let mut message = String::from("The model ");
    message.push('`');
    message.push_str(model);
    message.push_str("` does not exist or is not served by this gateway");
    let e = OpenAiError {
        status: 404,
        error_type: ErrorType::InvalidRequest,
        message: Cow::Owned(message),
        param: Some(Cow::Borrowed("model")),
        code: Some("model_not_found"),
    };
    Reply { status: 404, body: e.body(), reason: "model_not_found" }
}

/// What a router that runs alone reads from the request headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BbrFacts {
    pub path: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
}

/// What to do after a request event, for a router that runs alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BbrStep {
    /// Keep buffering the body.
    Wait,
    /// The request is complete: call [`BodyRouting::route`] (with the buffered body when `with_body`),
    /// set the headers, and let it go (route cache cleared).
    Route { with_body: bool },
    /// Answer locally (413 over the body limit).
    Reply(Reply),
    /// Already routed or answered: let the data pass.
    Pass,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Start,
    Body,
    Done,
}

/// One request's lifecycle in a router that runs alone (the `bbr` root id, the shim's BBR port): the
/// same header stripping and body limit as the picker's [`crate::exchange::Exchange`], without the
/// decision or the response path.
#[derive(Clone, Debug, Default)]
pub struct BbrExchange {
    phase: Phase,
    facts: BbrFacts,
    body_len: usize,
}

/// The request headers' answer: client copies of the router's headers to remove, and what next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BbrHead {
    pub remove: Vec<String>,
    pub next: BbrStep,
}

impl BbrExchange {
    pub fn new() -> BbrExchange {
        BbrExchange::default()
    }

    pub fn facts(&self) -> &BbrFacts {
        &self.facts
    }

    pub fn request_body_len(&self) -> usize {
        self.body_len
    }

    /// The request headers arrived (`None`: unreadable, every router header is removed blindly).
    pub fn on_request_headers(
        &mut self,
        r: &BodyRouting,
        headers: Option<&dyn HeaderLookup>,
        end_of_stream: bool,
    ) -> BbrHead {
        let remove = match headers {
            Some(h) => r.strip.iter().filter(|n| h.get(n).is_some()).cloned().collect(),
            None => r.strip.clone(),
        };
        let text =
            |name: &str| headers.and_then(|h| h.get(name)).filter(|v| !v.is_empty()).map(|v| v.to_string());
        self.facts = BbrFacts {
            path: text(PATH).unwrap_or_default(),
            content_type: text(CONTENT_TYPE),
            content_encoding: text(CONTENT_ENCODING),
        };
        let next = if end_of_stream {
            self.phase = Phase::Done;
            BbrStep::Route { with_body: false }
        } else {
            self.phase = Phase::Body;
            BbrStep::Wait
        };
        BbrHead { remove, next }
    }

    /// The body grew to `buffered_len` bytes.
    pub fn on_request_body(
        &mut self,
        max_body_bytes: usize,
        buffered_len: usize,
        end_of_stream: bool,
    ) -> BbrStep {
        if self.phase != Phase::Body {
            return BbrStep::Pass;
        }
        self.body_len = buffered_len;
        if buffered_len > max_body_bytes {
            self.phase = Phase::Done;
            return BbrStep::Reply(crate::endpoint_picker::body_too_large(max_body_bytes));
        }
        if !end_of_stream {
            return BbrStep::Wait;
        }
        self.phase = Phase::Done;
        BbrStep::Route { with_body: buffered_len > 0 }
    }

    /// Trailers ended the request before its body saw end of stream.
    pub fn on_request_trailers(&mut self) -> BbrStep {
        if self.phase != Phase::Body {
            return BbrStep::Pass;
        }
        self.phase = Phase::Done;
        BbrStep::Route { with_body: self.body_len > 0 }
    }
}
