//! Reading and writing the ext_proc protobuf shapes: header values (`raw_value` first, `value` for
//! gateways such as NGINX Gateway Fabric that only fill that), metadata structs, header mutations and
//! local replies. Kept apart so the state machine reads as protocol steps.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption, Metadata};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{HeaderMutation, ImmediateResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};

/// The value of header `name` (lower-case), decoded from `raw_value`, else `value`. A `raw_value` that
/// is not UTF-8 is treated as absent rather than guessed at.
pub fn header<'m>(headers: Option<&'m HeaderMap>, name: &str) -> Option<&'m str> {
    let h = headers?.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name))?;
    if h.raw_value.is_empty() {
        Some(h.value.as_str())
    } else {
        std::str::from_utf8(&h.raw_value).ok()
    }
}

/// A string field of `namespace` in the metadata the gateway forwarded.
pub fn metadata_value<'m>(md: Option<&'m Metadata>, namespace: &str, key: &str) -> Option<&'m Value> {
    md?.filter_metadata.get(namespace)?.fields.get(key)
}

/// The subset hint as a list of entries: a list of strings, or one comma-separated string. `Some(vec![])`
/// means the key is present but empty (→ 503); `None` means no hint (pick from the whole pool).
pub fn subset_hint(md: Option<&Metadata>) -> Option<Vec<String>> {
    let v = metadata_value(md, "envoy.lb.subset_hint", "x-gateway-destination-endpoint-subset")?;
    let mut out = Vec::new();
    match &v.kind {
        Some(Kind::StringValue(s)) => split_list(s, &mut out),
        Some(Kind::ListValue(list)) => {
            for item in &list.values {
                if let Some(Kind::StringValue(s)) = &item.kind {
                    split_list(s, &mut out);
                }
            }
        }
        // Null or another type: present but naming nothing.
        _ => {}
    }
    Some(out)
}

fn split_list(s: &str, out: &mut Vec<String>) {
    out.extend(s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from));
}

/// The endpoint that served the request, as the gateway reports it (first entry if it sent a list).
pub fn served_endpoint(md: Option<&Metadata>, key: &str) -> Option<String> {
    match &metadata_value(md, "envoy.lb", key)?.kind {
        Some(Kind::StringValue(s)) => s.split(',').map(str::trim).find(|s| !s.is_empty()).map(String::from),
        Some(Kind::ListValue(ListValue { values })) => values.iter().find_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// `{namespace: {key: value}}` as dynamic metadata.
pub fn dynamic_metadata(namespace: &str, key: &str, value: &str) -> Struct {
    let inner = Struct {
        fields: [(key.to_string(), Value { kind: Some(Kind::StringValue(value.to_string())) })].into(),
    };
    Struct { fields: [(namespace.to_string(), Value { kind: Some(Kind::StructValue(inner)) })].into() }
}

/// Header mutations built up in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation(pub HeaderMutation);

impl Mutation {
    /// Sets `name` to `value`, replacing whatever the client sent. Written as `raw_value`, which is what
    /// Envoy and the GIE reference picker use.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Mutation {
        // Set, not removed: which of the two lists the gateway applies first is not ours to rely on.
        self.0.remove_headers.retain(|r| !r.eq_ignore_ascii_case(name));
        self.0.set_headers.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: name.to_string(),
                value: String::new(),
                raw_value: value.as_bytes().to_vec(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..HeaderValueOption::default()
        });
        self
    }

    pub fn remove(&mut self, name: &str) -> &mut Mutation {
        self.0.remove_headers.push(name.to_string());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.set_headers.is_empty() && self.0.remove_headers.is_empty()
    }

    pub fn into_option(self) -> Option<HeaderMutation> {
        (!self.is_empty()).then_some(self.0)
    }
}

/// A local reply with a JSON body; `details` lands in Envoy's access log.
pub fn immediate(status: u16, body: &str, details: &str) -> ImmediateResponse {
    let mut headers = Mutation::default();
    headers.set("content-type", "application/json");
    ImmediateResponse {
        status: Some(HttpStatus { code: i32::from(status) }),
        headers: Some(headers.0),
        body: body.as_bytes().to_vec(),
        grpc_status: None,
        details: details.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(key: &str, value: &str, raw: &[u8]) -> HeaderValue {
        HeaderValue { key: key.into(), value: value.into(), raw_value: raw.to_vec() }
    }

    #[test]
    fn raw_value_wins_and_value_is_the_fallback() {
        let map = HeaderMap {
            headers: vec![hv(":path", "/ignored", b"/v1/completions"), hv("x-request-id", "abc", b"")],
        };
        assert_eq!(header(Some(&map), ":path"), Some("/v1/completions"));
        assert_eq!(header(Some(&map), "X-Request-Id"), Some("abc"));
        assert_eq!(header(Some(&map), "missing"), None);
    }

    fn md_with(key_ns: &str, key: &str, kind: Kind) -> Metadata {
        let s = Struct { fields: [(key.to_string(), Value { kind: Some(kind) })].into() };
        Metadata { filter_metadata: [(key_ns.to_string(), s)].into(), ..Metadata::default() }
    }

    #[test]
    fn subset_hint_as_list_or_comma_string_or_empty() {
        let key = "x-gateway-destination-endpoint-subset";
        let list = Kind::ListValue(ListValue {
            values: vec![
                Value { kind: Some(Kind::StringValue("10.0.0.1:8000".into())) },
                Value { kind: Some(Kind::StringValue("10.0.0.2".into())) },
            ],
        });
        let md = md_with("envoy.lb.subset_hint", key, list);
        assert_eq!(subset_hint(Some(&md)), Some(vec!["10.0.0.1:8000".into(), "10.0.0.2".into()]));
        let md = md_with("envoy.lb.subset_hint", key, Kind::StringValue(" a:1 , b:2 ".into()));
        assert_eq!(subset_hint(Some(&md)), Some(vec!["a:1".into(), "b:2".into()]));
        let md = md_with("envoy.lb.subset_hint", key, Kind::ListValue(ListValue::default()));
        assert_eq!(subset_hint(Some(&md)), Some(vec![]));
        assert_eq!(subset_hint(None), None);
    }

    #[test]
    fn served_endpoint_from_envoy_lb() {
        let key = "x-gateway-destination-endpoint-served";
        let md = md_with("envoy.lb", key, Kind::StringValue("10.0.0.3:8000".into()));
        assert_eq!(served_endpoint(Some(&md), key).as_deref(), Some("10.0.0.3:8000"));
        assert_eq!(served_endpoint(None, key), None);
    }
}
