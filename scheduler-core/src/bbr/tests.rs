use super::*;
use crate::config::gateway::GatewayConfig;
use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use serde_json::json;

struct Map(Vec<(&'static str, &'static str)>);

impl HeaderLookup for Map {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| Cow::Borrowed(*v))
    }
}

fn two_models() -> GatewayConfig {
    GatewayConfig::from_value(&json!({"bbr": {
        "unknownModels": "reject",
        "plugins": [
            {"type": "body-field-to-header", "name": "model", "parameters": {"fieldName": "model", "headerName": "X-Gateway-Model-Name"}},
            {"type": "body-field-to-header", "name": "tier", "parameters": {"fieldName": "tier", "headerName": "x-tier"}},
            {"type": "base-model-to-header", "name": "base", "parameters": {"baseModels": [
                {"baseModel": "qwen", "adapters": ["food-review", " sql "]},
                {"baseModel": "llama", "adapters": []}
            ]}}
        ]
    }}))
    .unwrap()
}

fn facts(path: &str) -> BbrFacts {
    BbrFacts { path: String::from(path), ..BbrFacts::default() }
}

fn route(config: &GatewayConfig, body: &str) -> Result<Vec<(String, String)>, Reply> {
    let r = config.bbr.clone().unwrap_or_default();
    r.route(config, &facts("/v1/chat/completions"), Some(body.as_bytes()))
}

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (String::from(*a), String::from(*b))).collect()
}

#[test]
fn model_and_base_model_become_headers_and_adapters_map_to_their_base() {
    let c = two_models();
    assert_eq!(
        route(&c, &chat("qwen")).unwrap(),
        pairs(&[("x-gateway-model-name", "qwen"), ("x-gateway-base-model-name", "qwen")])
    );
    assert_eq!(
        route(&c, &chat("food-review")).unwrap(),
        pairs(&[("x-gateway-model-name", "food-review"), ("x-gateway-base-model-name", "qwen")])
    );
    // Adapter names are trimmed as GIE's store trims them.
    assert_eq!(
        route(&c, &chat("sql")).unwrap()[1],
        (String::from("x-gateway-base-model-name"), String::from("qwen"))
    );
}

#[test]
fn configured_fields_are_promoted_as_text_and_other_shapes_are_not() {
    let c = two_models();
    let body = r#"{"model":"llama","tier":"gold","messages":[{"role":"user","content":"x"}]}"#;
    assert!(route(&c, body).unwrap().contains(&(String::from("x-tier"), String::from("gold"))));
    for (tier, want) in [
        ("3", Some("3")),
        ("true", Some("true")),
        (r#""a\u0062""#, Some("ab")),
        ("null", None),
        ("[1]", None),
        (r#""""#, None),
    ] {
        let body =
            format!(r#"{{"model":"llama","tier":{tier},"messages":[{{"role":"user","content":"x"}}]}}"#);
        let got = route(&c, &body).unwrap();
        let tier = got.iter().find(|(h, _)| h == "x-tier").map(|(_, v)| v.as_str());
        assert_eq!(tier, want, "tier {body}");
    }
}

#[test]
fn unknown_model_is_a_404_naming_it_when_rejecting_and_passes_otherwise() {
    let reply = route(&two_models(), &chat("gpt-\\\"x")).unwrap_err();
    assert_eq!(reply.status, 404);
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert!(v["error"]["message"].as_str().unwrap().contains("`gpt-\"x`"), "{}", reply.body);

    // GIE's default: model header only, no base header for a model nobody mapped, no refusal.
    let default = GatewayConfig::from_value(&json!({"bbr": {}})).unwrap();
    assert_eq!(route(&default, &chat("anything")).unwrap(), pairs(&[("x-gateway-model-name", "anything")]));
}

#[test]
fn bad_bodies_get_the_pickers_answers() {
    let c = two_models();
    let not_json = route(&c, "{\"model\": ").unwrap_err();
    assert_eq!(not_json.status, 400);
    assert!(not_json.body.contains("invalid_request_error"), "{}", not_json.body);
    let no_model = route(&c, r#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
    assert_eq!(no_model.status, 400);
    assert!(no_model.body.contains("\"param\":\"model\""), "{}", no_model.body);
    // The same reply the picker gives for the same body.
    let info = RequestInfo { path: "/v1/chat/completions", ..RequestInfo::default() };
    let picker = crate::endpoint_picker::read_body(&c, &info, Some(b"{\"model\": ")).unwrap_err();
    assert_eq!(picker, not_json);
    // A model no header can carry.
    let ctl = route(&c, &chat("qwen\\r\\nx-evil: 1")).unwrap_err();
    assert_eq!(ctl.status, 400);
}

#[test]
fn client_copies_are_stripped_and_body_limit_is_the_pickers() {
    let c = GatewayConfig::from_value(&json!({"limits": {"maxBodyBytes": 10}, "bbr": {}})).unwrap();
    let r = c.bbr.clone().unwrap();
    let mut x = BbrExchange::new();
    let head = x.on_request_headers(
        &r,
        Some(&Map(vec![(":path", "/v1/completions"), ("x-gateway-model-name", "steer"), ("x-other", "1")])),
        false,
    );
    assert_eq!(head.remove, vec![String::from("x-gateway-model-name")]);
    assert_eq!(head.next, BbrStep::Wait);
    assert_eq!(x.facts().path, "/v1/completions");
    assert_eq!(x.on_request_body(c.limits.max_body_bytes, 5, false), BbrStep::Wait);
    match x.on_request_body(c.limits.max_body_bytes, 11, false) {
        BbrStep::Reply(reply) => assert_eq!(reply.status, 413),
        other => panic!("{other:?}"),
    }
    assert_eq!(x.on_request_body(c.limits.max_body_bytes, 12, true), BbrStep::Pass);
    // Unreadable headers: every header the router writes is removed blindly.
    let mut y = BbrExchange::new();
    let head = y.on_request_headers(&r, None, true);
    assert_eq!(
        head.remove,
        vec![String::from("x-gateway-base-model-name"), String::from("x-gateway-model-name")]
    );
    assert_eq!(head.next, BbrStep::Route { with_body: false });
    // The picker's own lifecycle leaves them: behind a router (GIE's shape, the shim's two ports) they are
    // the router's, and removing them would unroute the request once the route cache is cleared.
    let settings = crate::exchange::ExchangeSettings::new(&c);
    assert!(!settings.strip.iter().any(|h| h == "x-gateway-model-name"));
}

#[test]
fn configuration_errors_name_the_field() {
    let err = |v: serde_json::Value| GatewayConfig::from_value(&json!({ "bbr": v })).unwrap_err().to_string();
    assert!(err(json!({"plugins": [{"type": "nope"}]})).contains("bbr.plugins[0].type"));
    assert!(err(json!({"plugins": [{"type": "body-field-to-header", "parameters": {"fieldName": "m", "headerName": "bad header"}}]}))
        .contains("bbr.plugins[0].parameters.headerName"));
    assert!(err(json!({"plugins": [{"type": "body-field-to-header", "parameters": {"headerName": "h"}}]}))
        .contains("bbr.plugins[0].parameters.fieldName"));
    assert!(err(json!({"unknownModels": "reject"})).contains("bbr.unknownModels"));
    assert!(err(json!({"unknownModels": "maybe"})).contains("bbr.unknownModels"));
    assert!(err(json!({"extra": 1})).contains("bbr"));
    let clash = err(json!({"plugins": [{"type": "base-model-to-header", "parameters": {"baseModels": [
        {"baseModel": "a", "adapters": ["x"]}, {"baseModel": "b", "adapters": ["x"]}]}}]}));
    assert!(clash.contains("bbr.plugins[0].parameters.baseModels[1].adapters[0]"), "{clash}");
    // No section: no routing by body in a picker.
    assert!(GatewayConfig::from_value(&json!({})).unwrap().bbr.is_none());
}

#[test]
fn form_bodies_route_on_their_model_field() {
    let c = two_models();
    let r = c.bbr.clone().unwrap();
    let body = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama\r\n--b\r\nContent-Disposition: form-data; name=\"tier\"\r\n\r\nsilver\r\n--b--\r\n";
    let f = BbrFacts {
        path: String::from("/v1/audio/transcriptions"),
        content_type: Some(String::from("multipart/form-data; boundary=b")),
        content_encoding: None,
    };
    let got = r.route(&c, &f, Some(body.as_bytes())).unwrap();
    assert_eq!(
        got,
        pairs(&[
            ("x-gateway-model-name", "llama"),
            ("x-tier", "silver"),
            ("x-gateway-base-model-name", "llama")
        ])
    );
}
