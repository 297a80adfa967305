//! `proxy_get_property` answers with Envoy's encodings: strings as raw bytes, integers as 8-byte
//! little-endian, booleans as one byte. Values come from the stream, the plugin, or what the test set.

use std::collections::BTreeMap;

use super::abi::header_value;
use super::http::HttpStream;
use super::Plugin;

/// A property value a test sets, encoded the way Envoy encodes that CEL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Bytes(Vec<u8>),
}

impl PropertyValue {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropertyValue::Str(s) => s.as_bytes().to_vec(),
            PropertyValue::Int(i) => i.to_le_bytes().to_vec(),
            PropertyValue::Bool(b) => vec![u8::from(*b)],
            PropertyValue::Bytes(b) => b.clone(),
        }
    }
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        PropertyValue::Str(s.to_string())
    }
}

impl From<i64> for PropertyValue {
    fn from(i: i64) -> Self {
        PropertyValue::Int(i)
    }
}

/// The dotted form of a NUL-separated property path (`request\0path` → `request.path`).
pub(crate) fn dotted(path: &[u8]) -> String {
    String::from_utf8_lossy(path).replace('\0', ".")
}

/// Resolves a dotted path for a call made in `stream` (None for root contexts).
pub(crate) fn lookup(
    path: &str,
    plugin: &Plugin,
    stream: Option<&HttpStream>,
    globals: &BTreeMap<String, PropertyValue>,
) -> Option<Vec<u8>> {
    if let Some(s) = stream {
        if let Some(v) = s.properties.get(path) {
            return Some(v.clone());
        }
        if let Some(v) = from_stream(path, s) {
            return Some(v);
        }
    }
    let str_value = |s: &str| Some(s.as_bytes().to_vec());
    match path {
        "plugin_name" => return str_value(&plugin.name),
        "plugin_root_id" => return str_value(&plugin.root_id),
        "plugin_vm_id" => return str_value(&plugin.vm_id),
        _ => {}
    }
    globals.get(path).map(PropertyValue::encode)
}

fn from_stream(path: &str, s: &HttpStream) -> Option<Vec<u8>> {
    let req = s.request_headers_for_properties();
    let header = |name: &str| header_value(req, name).map(|v| v.as_bytes().to_vec());
    if let Some(name) = path.strip_prefix("request.headers.") {
        return header(name);
    }
    // Envoy's stream info learns the response headers before the filter's response callbacks run.
    let resp = if s.resp.headers.is_empty() {
        s.response.as_ref().map(|r| &r.headers)
    } else {
        Some(&s.resp.headers)
    };
    if let Some(name) = path.strip_prefix("response.headers.") {
        return resp.and_then(|h| header_value(h, name)).map(|v| v.into());
    }
    match path {
        "request.path" => header(":path"),
        "request.url_path" => {
            header_value(req, ":path").map(|p| p.split('?').next().unwrap_or_default().as_bytes().to_vec())
        }
        "request.host" => header(":authority"),
        "request.method" => header(":method"),
        "request.scheme" => header(":scheme"),
        "request.id" => header("x-request-id"),
        "request.protocol" => Some(b"HTTP/1.1".to_vec()),
        "response.code" => {
            let code = resp.and_then(|h| header_value(h, ":status"))?;
            code.parse::<i64>().ok().map(|c| c.to_le_bytes().to_vec())
        }
        "response.code_details" => {
            let details = match &s.local_reply {
                Some(l) => l.details.clone(),
                None if resp.is_some() => "via_upstream".to_string(),
                None => return None,
            };
            Some(details.into_bytes())
        }
        "upstream.address" => s.upstream_address.as_ref().map(|a| a.as_bytes().to_vec()),
        _ => None,
    }
}
