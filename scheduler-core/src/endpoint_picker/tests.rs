use super::*;
use crate::model::{Endpoint, Metrics};
use alloc::format;
use alloc::string::ToString;

const CHAT: &[u8] = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}"#;

fn info(path: &str) -> RequestInfo<'_> {
    RequestInfo { path, request_id: "r1", ..RequestInfo::default() }
}

/// Endpoint i has queue `waiting[i]`, all fresh at t = 1000.
fn pool(waiting: &[u32]) -> PoolSnapshot {
    let mut p = PoolSnapshot { generation: 1, published_at_ms: 1_000, ..PoolSnapshot::default() };
    for (i, &w) in waiting.iter().enumerate() {
        let m = Metrics { waiting: w, kv_usage: 0.1, updated_at_ms: 1_000, ..Metrics::default() };
        p.endpoints.push(EndpointState {
            metrics: Some(m),
            ..EndpointState::new(Endpoint::new(format!("10.0.0.{}:8000", i + 1)))
        });
    }
    p
}

fn route(o: Outcome) -> Route {
    match o {
        Outcome::Route(r) => r,
        other => panic!("expected a route, got {other:?}"),
    }
}

fn reply(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn routes_to_the_shortest_queue() {
    let mut p = EndpointPicker::from_json("").unwrap();
    let pool = pool(&[9, 0, 9]);
    let r = route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&pool), 1_010, 7));
    assert_eq!(r.header_value, "10.0.0.2:8000");
    assert_eq!(r.destination, "10.0.0.2:8000");
    assert_eq!(r.prefill, None);
    assert_eq!(r.rewritten_model, None);
    assert_eq!(r.estimated_tokens, 1 + 10, "2-byte prompt ≈ 1 token, plus max_tokens");
}

#[test]
fn fallbacks_join_into_one_header_when_configured() {
    let mut p = EndpointPicker::from_json(
        r#"{"plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 5}}],
            "routing": {"maxEndpoints": 3}}"#,
    )
    .unwrap();
    let pool = pool(&[4, 0, 8, 2]);
    let r = route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!(r.header_value, "10.0.0.2:8000,10.0.0.4:8000,10.0.0.1:8000");
}

#[test]
fn bad_bodies_get_400_with_a_located_message() {
    let mut p = EndpointPicker::from_json("").unwrap();
    let pool = pool(&[0]);
    let body = br#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#;
    let r = reply(p.decide(&info("/v1/chat/completions"), Some(body), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!(r.status, 400);
    assert_eq!(r.reason, "bad_request");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("messages[0].content"), "{}", r.body);
    let r = reply(p.decide(&info("/v1/completions"), Some(b"not json"), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!(r.status, 400);
}

#[test]
fn oversized_bodies_get_413() {
    let mut p = EndpointPicker::from_json(r#"{"limits": {"maxBodyBytes": 64}}"#).unwrap();
    assert!(p.body_too_large(64).is_none());
    assert_eq!(p.body_too_large(65).unwrap().status, 413);
    let big = format!(r#"{{"model": "m", "prompt": "{}"}}"#, "x".repeat(100));
    let r = reply(p.decide(
        &info("/v1/completions"),
        Some(big.as_bytes()),
        PoolView::Fresh(&pool(&[0])),
        1_010,
        1,
    ));
    assert_eq!((r.status, r.reason), (413, "body_too_large"));
    assert!(r.body.contains("64 bytes"));
}

#[test]
fn sheddable_requests_get_429_when_saturated() {
    let mut p = EndpointPicker::from_json(r#"{"objectives": [{"name": "batch", "priority": -1}]}"#).unwrap();
    let saturated = pool(&[50, 60]);
    let mut i = info("/v1/chat/completions");
    i.objective = Some("batch");
    let r = reply(p.decide(&i, Some(CHAT), PoolView::Fresh(&saturated), 1_010, 1));
    assert_eq!((r.status, r.reason), (429, "saturated"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "saturated");
    // Critical traffic is never shed.
    i.objective = None;
    route(p.decide(&i, Some(CHAT), PoolView::Fresh(&saturated), 1_010, 1));
}

#[test]
fn subset_hint_restricts_and_empty_subset_is_503() {
    let mut p = EndpointPicker::from_json("").unwrap();
    let pool = pool(&[0, 9, 9]);
    let hint = ["10.0.0.3"];
    let mut i = info("/v1/chat/completions");
    i.subset = Some(&hint);
    assert_eq!(
        route(p.decide(&i, Some(CHAT), PoolView::Fresh(&pool), 1_010, 1)).destination,
        "10.0.0.3:8000"
    );
    let empty: [&str; 0] = [];
    i.subset = Some(&empty);
    assert_eq!(reply(p.decide(&i, Some(CHAT), PoolView::Fresh(&pool), 1_010, 1)).status, 503);
}

#[test]
fn model_rewrites_from_header_and_rules() {
    let mut p = EndpointPicker::from_json(
        r#"{"modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "m"}}],
                                          "targets": [{"modelRewrite": "m-v2", "weight": 1}]}]}]}"#,
    )
    .unwrap();
    let pool = pool(&[0]);
    let r = route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!(r.rewritten_model.as_deref(), Some("m-v2"));
    let mut i = info("/v1/chat/completions");
    i.model_rewrite = Some("forced");
    let r = route(p.decide(&i, Some(CHAT), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!(r.rewritten_model.as_deref(), Some("forced"));
    let body = String::from_utf8(r.body.unwrap()).unwrap();
    assert_eq!(body, String::from_utf8(CHAT.to_vec()).unwrap().replace("\"m\"", "\"forced\""));
    assert_eq!(r.client_model.as_deref(), Some("m"));
    // A rewrite to the same name is no rewrite.
    i.model_rewrite = Some("m");
    let mut plain = EndpointPicker::from_json("").unwrap();
    assert_eq!(route(plain.decide(&i, Some(CHAT), PoolView::Fresh(&pool), 1_010, 1)).rewritten_model, None);
}

#[test]
fn the_pools_kubernetes_resources_apply_after_the_configuration() {
    use crate::config::objectives::ObjectivePriorities;
    use crate::model::PoolResources;
    use crate::model_rewrite::ModelRewrites;
    let resources = PoolResources {
        objectives: ObjectivePriorities::from_json(
            r#"[{"name": "batch", "priority": -1}, {"name": "chat", "priority": -1}]"#,
        )
        .unwrap(),
        rewrites: ModelRewrites::from_json(r#"[{"rules": [{"targets": [{"modelRewrite": "m-k8s"}]}]}]"#)
            .unwrap(),
    };
    let saturated = PoolSnapshot { resources: resources.clone(), ..pool(&[50, 60]) };
    let idle = PoolSnapshot { resources, ..pool(&[0]) };
    let mut i = info("/v1/chat/completions");
    // Only Kubernetes names these: batch is sheddable, the catch-all rewrite applies.
    let mut p = EndpointPicker::from_json("").unwrap();
    i.objective = Some("batch");
    assert_eq!(reply(p.decide(&i, Some(CHAT), PoolView::Fresh(&saturated), 1_010, 1)).status, 429);
    let r = route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&idle), 1_010, 1));
    assert_eq!(r.rewritten_model.as_deref(), Some("m-k8s"));
    // The configuration wins where both speak: chat is not sheddable, the configured exact rule applies.
    let mut p = EndpointPicker::from_json(
        r#"{"objectives": [{"name": "chat", "priority": 0}],
            "modelRewrites": [{"rules": [{"matches": [{"model": {"value": "m"}}], "targets": [{"modelRewrite": "m-config"}]}]}]}"#,
    )
    .unwrap();
    i.objective = Some("chat");
    route(p.decide(&i, Some(CHAT), PoolView::Fresh(&saturated), 1_010, 1));
    let r = route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&idle), 1_010, 1));
    assert_eq!(r.rewritten_model.as_deref(), Some("m-config"));
    // Stale metrics: the last known snapshot's resources still rewrite.
    let stale = PoolView::Unusable { reason: Fallback::StaleSnapshot, known: Some(&idle) };
    let mut p = EndpointPicker::from_json("").unwrap();
    match p.decide(&info("/v1/chat/completions"), Some(CHAT), stale, 1_010, 1) {
        Outcome::FailOpen { route: Some(r), .. } => assert_eq!(r.rewritten_model.as_deref(), Some("m-k8s")),
        other => panic!("expected a blind route, got {other:?}"),
    }
}

#[test]
fn requests_without_a_body_are_routed_on_load() {
    let mut p = EndpointPicker::from_json("").unwrap();
    let pool = pool(&[5, 0]);
    let r = route(p.decide(&info("/v1/models"), None, PoolView::Fresh(&pool), 1_010, 3));
    assert_eq!(r.destination, "10.0.0.2:8000");
}

#[test]
fn fail_open_round_robins_over_known_endpoints() {
    let mut p =
        EndpointPicker::from_json(r#"{"pool": {"endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"]}}"#).unwrap();
    let view = p.view(None, false, 5_000);
    assert!(matches!(view, PoolView::Unusable { reason: Fallback::NoSnapshot, known: None }));
    let picks: Vec<String> = (0..4)
        .map(|s| match p.decide(&info("/v1/chat/completions"), Some(CHAT), view, 5_000, s) {
            Outcome::FailOpen { reason: Fallback::NoSnapshot, route: Some(r) } => r.destination,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(picks, ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.1:8000", "10.0.0.2:8000"]);
    // Bad bodies are still refused while failing open.
    assert_eq!(reply(p.decide(&info("/v1/completions"), Some(b"{"), view, 5_000, 1)).status, 400);
}

#[test]
fn stale_and_undecodable_snapshots() {
    let p = EndpointPicker::from_json(r#"{"limits": {"snapshotMaxAgeMs": 1000}}"#).unwrap();
    let s = pool(&[0]);
    assert!(matches!(p.view(Some(&s), false, 2_000), PoolView::Fresh(_)));
    assert!(matches!(
        p.view(Some(&s), false, 2_001),
        PoolView::Unusable { reason: Fallback::StaleSnapshot, known: Some(_) }
    ));
    assert!(matches!(
        p.view(Some(&s), true, 1_000),
        PoolView::Unusable { reason: Fallback::UndecodableSnapshot, .. }
    ));
    assert!(matches!(
        p.view(None, true, 1_000),
        PoolView::Unusable { reason: Fallback::UndecodableSnapshot, known: None }
    ));
}

#[test]
fn fail_closed_and_leave_unset() {
    let mut closed = EndpointPicker::from_json(r#"{"failureMode": "FailClose"}"#).unwrap();
    let s = pool(&[0]);
    let stale = closed.view(Some(&s), false, 60_000);
    let r = reply(closed.decide(&info("/v1/chat/completions"), Some(CHAT), stale, 60_000, 1));
    assert_eq!((r.status, r.reason), (503, "stale_snapshot"));
    assert!(r.body.contains("metrics_unavailable"));

    let mut unset = EndpointPicker::from_json(r#"{"failOpen": {"strategy": "leave-unset"}}"#).unwrap();
    let o = unset.decide(&info("/v1/chat/completions"), Some(CHAT), stale, 60_000, 1);
    assert_eq!(o, Outcome::FailOpen { reason: Fallback::StaleSnapshot, route: None });

    let mut nobody = EndpointPicker::from_json("").unwrap();
    let none = nobody.view(None, false, 0);
    assert_eq!(reply(nobody.decide(&info("/v1/chat/completions"), Some(CHAT), none, 0, 1)).status, 503);
}

#[test]
fn configuration_errors_name_the_path() {
    let e = EndpointPicker::from_json(r#"{"plugins": [{"type": "nope"}]}"#).err().unwrap();
    assert!(e.to_string().starts_with("plugins[0].type: expected a known plugin type"), "{e}");
    let e = EndpointPicker::from_json(r#"{"collector": {"timeoutMs": 0}}"#).err().unwrap();
    assert_eq!(e.to_string(), "collector.timeoutMs: expected a timeout in ms > 0, got 0");
}

#[test]
fn request_seed_is_xxh64_of_the_id_with_seed_zero() {
    // Pinned: a change here makes the filter and the shim of different releases disagree.
    assert_eq!(request_seed(""), 0xef46_db37_51d8_e999);
    assert_eq!(request_seed("r1"), request_seed("r1"));
    assert_ne!(request_seed("r1"), request_seed("r2"));
}

#[test]
fn separate_pickers_break_ties_alike_for_the_same_request_id() {
    // Four equal endpoints: only the seed decides. Two pickers stand for two gateway replicas.
    let snap = pool(&[0, 0, 0, 0]);
    let mut a = EndpointPicker::from_json("").unwrap();
    let mut b = EndpointPicker::from_json("").unwrap();
    let mut seen = alloc::collections::BTreeSet::new();
    for i in 0..32 {
        let id = format!("req-{i}");
        let info = RequestInfo { path: "/v1/chat/completions", request_id: &id, ..RequestInfo::default() };
        let seed = request_seed(&id);
        let ra = route(a.decide(&info, None, PoolView::Fresh(&snap), 1_000, seed));
        let rb = route(b.decide(&info, None, PoolView::Fresh(&snap), 1_000, seed));
        assert_eq!(ra.destination, rb.destination, "request {id}");
        seen.insert(ra.destination);
    }
    assert!(seen.len() > 1, "ties must spread over the pool, all went to {seen:?}");
}

#[test]
fn a_rewrite_the_body_cannot_take_is_refused_400_not_forwarded_with_the_wrong_model() {
    // A body with no `model` to replace: refused (the request-parsing step already requires one, and the
    // rewrite would refuse it again), never forwarded without the model the gateway chose.
    let mut p = EndpointPicker::from_json("").unwrap();
    let pool = pool(&[0]);
    let mut i = info("/v1/something-else");
    i.model_rewrite = Some("forced");
    let body: &[u8] = br#"{"prompt": "hi"}"#;
    let r = reply(p.decide(&i, Some(body), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!((r.status, r.reason), (400, "bad_request"));
    assert!(r.body.contains("model"), "{}", r.body);
}

#[test]
fn endpoints_whose_scrapes_fail_or_whose_metrics_are_stale_get_no_traffic() {
    let mut p = EndpointPicker::from_json("").unwrap();
    // Endpoint 1 has the shortest queue, but its scrapes fail (a killed pod): 2 is next best.
    let mut snap = pool(&[0, 1, 5, 5]);
    snap.endpoints[0].consecutive_scrape_failures = 2;
    assert_eq!(
        route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&snap), 1_010, 1))
            .destination,
        "10.0.0.2:8000"
    );
    // Frozen metrics: endpoint 2's last good scrape is older than limits.snapshotMaxAgeMs.
    let mut frozen = pool(&[5, 0, 5, 5]);
    frozen.published_at_ms = 20_000;
    for e in &mut frozen.endpoints {
        e.metrics.as_mut().unwrap().updated_at_ms = 20_000;
    }
    frozen.endpoints[1].metrics.as_mut().unwrap().updated_at_ms = 10_000;
    let r = route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&frozen), 20_010, 1));
    assert_ne!(r.destination, "10.0.0.2:8000");
}

#[test]
fn the_gateways_own_failures_eject_an_endpoint_and_a_trial_brings_it_back() {
    let mut p = EndpointPicker::from_json("").unwrap();
    let snap = pool(&[0, 3, 3]);
    let i = info("/v1/chat/completions");
    let at = |p: &mut EndpointPicker, t: u64| {
        route(p.decide(&i, Some(CHAT), PoolView::Fresh(&snap), t, 1)).destination
    };
    assert_eq!(at(&mut p, 1_010), "10.0.0.1:8000");
    for _ in 0..3 {
        p.record_upstream("10.0.0.1:8000", 503, 1_020);
    }
    assert_ne!(at(&mut p, 1_030), "10.0.0.1:8000");
    // One second later one trial goes back; while it is out, nothing else does.
    assert_eq!(at(&mut p, 2_030), "10.0.0.1:8000");
    assert_ne!(at(&mut p, 2_031), "10.0.0.1:8000");
    p.record_upstream("10.0.0.1:8000", 200, 2_040);
    assert_eq!(at(&mut p, 2_050), "10.0.0.1:8000");
}

#[test]
fn when_no_endpoint_is_usable_the_failure_mode_decides() {
    // Published, but no scrape ever succeeded.
    let mut never = pool(&[0, 0]);
    for e in &mut never.endpoints {
        e.metrics = None;
        e.consecutive_scrape_failures = 7;
    }
    let i = info("/v1/chat/completions");
    let mut closed = EndpointPicker::from_json(r#"{"failureMode": "FailClose"}"#).unwrap();
    let r = reply(closed.decide(&i, Some(CHAT), PoolView::Fresh(&never), 1_010, 1));
    assert_eq!((r.status, r.reason), (503, "no_usable_endpoint"));
    let mut open = EndpointPicker::from_json("").unwrap();
    match open.decide(&i, Some(CHAT), PoolView::Fresh(&never), 1_010, 1) {
        Outcome::FailOpen { reason: Fallback::NoUsableEndpoint, route: Some(_) } => {}
        other => panic!("expected a fail-open route, got {other:?}"),
    }
}

#[test]
fn routing_max_endpoints_alone_gives_fallbacks_the_next_best_by_score() {
    // GIE's max-score-picker returns one endpoint by default; the gateway asking for two gets the next best.
    let mut p = EndpointPicker::from_json(
        r#"{"routing": {"maxEndpoints": 2}, "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"}],
            "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker"}]}]}"#,
    )
    .unwrap();
    let snap = pool(&[5, 0, 9, 2]);
    let r = route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&snap), 1_010, 1));
    assert_eq!(r.header_value, "10.0.0.2:8000,10.0.0.4:8000");
}

const FORM_TYPE: &str = "multipart/form-data; boundary=XyZ";

fn transcription(model: Option<&str>) -> alloc::vec::Vec<u8> {
    let mut body = alloc::vec::Vec::new();
    if let Some(m) = model {
        body.extend_from_slice(
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{m}\r\n").as_bytes(),
        );
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n");
    }
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\0\xff{\r\n--XyZ--\r\n",
    );
    body
}

#[test]
fn multipart_and_other_non_json_bodies_are_routed_on_load_never_refused() {
    let mut p = EndpointPicker::from_json("").unwrap();
    let pool = pool(&[5, 0, 5]);
    let path = "/v1/audio/transcriptions";
    let form = RequestInfo { content_type: Some(FORM_TYPE), ..info(path) };
    let body = transcription(Some("whisper-1"));
    let r = route(p.decide(&form, Some(&body), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!(r.destination, "10.0.0.2:8000", "on load");
    assert!(r.streaming, "the form's stream field was read");
    assert_eq!((r.body, r.rewritten_model), (None, None));
    // Without a model field, with a broken form, or any other type that is not JSON: still on load.
    let body = transcription(None);
    assert_eq!(
        route(p.decide(&form, Some(&body), PoolView::Fresh(&pool), 1_010, 1)).destination,
        "10.0.0.2:8000"
    );
    let broken = RequestInfo { content_type: Some("multipart/form-data"), ..info(path) };
    assert!(matches!(
        p.decide(&broken, Some(b"--x\r\n"), PoolView::Fresh(&pool), 1_010, 1),
        Outcome::Route(_)
    ));
    for ct in ["application/octet-stream", "audio/wav", "text/plain", "application/x-www-form-urlencoded"] {
        let other = RequestInfo { content_type: Some(ct), ..info(path) };
        let o = p.decide(&other, Some(b"\x00\x01 not json"), PoolView::Fresh(&pool), 1_010, 1);
        assert!(matches!(o, Outcome::Route(_)), "{ct}: {o:?}");
    }
    // JSON mislabelled (curl -d) is still read as JSON, with its stream flag.
    let curl = RequestInfo {
        content_type: Some("application/x-www-form-urlencoded"),
        ..info("/v1/chat/completions")
    };
    let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}"#;
    assert!(route(p.decide(&curl, Some(body), PoolView::Fresh(&pool), 1_010, 1)).streaming);
    // A JSON content type (or none) still gets the located 400.
    let json = RequestInfo { content_type: Some("application/json"), ..info("/v1/completions") };
    assert_eq!(reply(p.decide(&json, Some(b"not json"), PoolView::Fresh(&pool), 1_010, 1)).status, 400);
}

#[test]
fn a_form_body_is_never_rewritten() {
    let mut p = EndpointPicker::from_json(
        r#"{"modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "whisper-1"}}],
                                          "targets": [{"modelRewrite": "w2", "weight": 1}]}]}]}"#,
    )
    .unwrap();
    let pool = pool(&[0]);
    let form = RequestInfo {
        content_type: Some(FORM_TYPE),
        model_rewrite: Some("other"),
        ..info("/v1/audio/translations")
    };
    let body = transcription(Some("whisper-1"));
    let r = route(p.decide(&form, Some(&body), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!((r.body, r.rewritten_model, r.client_model), (None, None, None));
    let form = RequestInfo { model_rewrite: None, ..form };
    let r = route(p.decide(&form, Some(&body), PoolView::Fresh(&pool), 1_010, 1));
    assert_eq!((r.body, r.rewritten_model, r.client_model), (None, None, None));
}

#[test]
fn compressed_bodies_get_415_naming_the_encoding() {
    let mut p = EndpointPicker::from_json("").unwrap();
    let pool = pool(&[0]);
    for enc in ["gzip", "br", "GZIP", "deflate, identity", "zstd"] {
        let gz = RequestInfo { content_encoding: Some(enc), ..info("/v1/chat/completions") };
        let r = reply(p.decide(&gz, Some(b"\x1f\x8b\x08\x00"), PoolView::Fresh(&pool), 1_010, 1));
        assert_eq!((r.status, r.reason), (415, "unsupported_media_type"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "unsupported_content_encoding");
        assert!(v["error"]["param"].is_null());
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("\"{enc}\"")), "{message}");
    }
    // Identity passes, and a request without a body has nothing to decode.
    for enc in ["identity", "Identity", " ", ""] {
        let id = RequestInfo { content_encoding: Some(enc), ..info("/v1/chat/completions") };
        assert!(
            matches!(p.decide(&id, Some(CHAT), PoolView::Fresh(&pool), 1_010, 1), Outcome::Route(_)),
            "{enc}"
        );
    }
    let gz = RequestInfo { content_encoding: Some("gzip"), ..info("/v1/models") };
    assert!(matches!(p.decide(&gz, None, PoolView::Fresh(&pool), 1_010, 1), Outcome::Route(_)));
}

#[test]
fn a_passthrough_parser_leaves_the_bodies_it_claims_unread() {
    // llm-d's chart payload-agnostic config, with a rewrite rule that must not apply to unread bodies.
    let mut p = EndpointPicker::from_json(
        r#"{"plugins": [{"type": "passthrough-parser"}, {"type": "queue-scorer"}],
            "requestHandler": {"parsers": [{"pluginRef": "passthrough-parser"}]},
            "modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "m"}}],
                                          "targets": [{"modelRewrite": "m2", "weight": 1}]}]}]}"#,
    )
    .unwrap();
    let pool = pool(&[3, 0]);
    // Neither invalid JSON nor a compressed body is refused: the body is not read.
    for body in [&b"not json"[..], CHAT] {
        let r = route(p.decide(&info("/v1/chat/completions"), Some(body), PoolView::Fresh(&pool), 1_010, 1));
        assert_eq!(r.destination, "10.0.0.2:8000");
        assert_eq!(
            (r.body, r.rewritten_model, r.estimated_tokens, r.prefix_hashes.len()),
            (None, None, 0, 0)
        );
    }
    let gz = RequestInfo { content_encoding: Some("gzip"), ..info("/v1/completions") };
    assert_eq!(
        route(p.decide(&gz, Some(b"\x1f\x8b"), PoolView::Fresh(&pool), 1_010, 1)).destination,
        "10.0.0.2:8000"
    );

    // OpenAI listed first: its paths are read (400 for a bad body), the rest passed through.
    let mut p = EndpointPicker::from_json(
        r#"{"plugins": [{"type": "queue-scorer"}],
            "requestHandler": {"parsers": [{"pluginRef": "openai-parser"}, {"pluginRef": "passthrough-parser"}]}}"#,
    )
    .unwrap();
    assert_eq!(
        reply(p.decide(&info("/v1/completions"), Some(b"not json"), PoolView::Fresh(&pool), 1_010, 1)).status,
        400
    );
    let other = info("/v1/audio/speech");
    assert_eq!(
        route(p.decide(&other, Some(b"not json"), PoolView::Fresh(&pool), 1_010, 1)).destination,
        "10.0.0.2:8000"
    );
}

#[test]
fn prefix_evidence_of_endpoints_that_left_the_pool_is_forgotten() {
    // Pods come and go (a new address per restart): the prefix index must not keep a full LRU for
    // every address that ever served.
    let mut p = EndpointPicker::from_json("").unwrap();
    let mut pool = pool(&[0, 0, 0]);
    for i in 0..3u64 {
        let address = format!("10.0.0.{}:8000", i + 1);
        p.scheduler_mut().learn_prefix(&pool, &address, &[i * 10 + 1, i * 10 + 2]);
    }
    let before = p.scheduler().prefix_usage();
    assert_eq!((before.endpoints, before.entries, before.hashes), (3, 6, 6), "{before:?}");
    assert!(before.capacity >= 3 * 2, "{before:?}");

    // Endpoint 1 leaves in a newer snapshot; a decision on it prunes the index.
    pool.endpoints.remove(0);
    pool.generation = 2;
    route(p.decide(&info("/v1/chat/completions"), Some(CHAT), PoolView::Fresh(&pool), 1_010, 1));
    let after = p.scheduler().prefix_usage();
    assert_eq!(after.endpoints, 2, "{after:?}");
    let remaining: Vec<String> = p
        .scheduler()
        .shared()
        .prefix_indexes()
        .flat_map(|h| h.index().unwrap().endpoints().map(String::from).collect::<Vec<_>>())
        .collect();
    assert!(!remaining.iter().any(|a| a == "10.0.0.1:8000"), "{remaining:?}");
    // The endpoints still in the pool keep what they held (the routed request may have added its own).
    assert!(after.entries >= 4, "{after:?}");
}

#[test]
fn the_prefill_awaiting_the_first_token_is_the_prompt_less_what_the_destination_holds() {
    // 8,000 bytes of prompt ≈ 2,000 tokens. The second request repeats it: the prefix index says the
    // destination holds all of it but the last partial block, so only that part awaits a prefill there.
    let prompt = "a shared system prompt. ".repeat(334);
    let body = format!(r#"{{"model": "m", "prompt": "{prompt}", "max_tokens": 10}}"#);
    let pool = pool(&[0, 0, 0]);
    let mut p = EndpointPicker::from_json("").unwrap();
    let decide = |p: &mut EndpointPicker, id| {
        let info = RequestInfo { path: "/v1/completions", request_id: id, ..RequestInfo::default() };
        route(p.decide(&info, Some(body.as_bytes()), PoolView::Fresh(&pool), 1_010, 3))
    };
    let first = decide(&mut p, "r1");
    let whole = (prompt.len() as u64).div_ceil(4);
    assert_eq!(first.prompt_tokens, whole, "nothing cached yet: the whole prompt");
    let second = decide(&mut p, "r2");
    assert_eq!(second.destination, first.destination, "the prefix keeps it on the same endpoint");
    assert!(second.prompt_tokens < whole / 10, "{} of {whole} tokens still counted", second.prompt_tokens);

    // Without a prefix plugin nothing is known to be cached: the whole prompt, every time.
    let mut q = EndpointPicker::from_json(r#"{"plugins": [{"type": "queue-scorer"}]}"#).unwrap();
    assert_eq!(decide(&mut q, "r1").prompt_tokens, whole);
    assert_eq!(decide(&mut q, "r2").prompt_tokens, whole);
}
