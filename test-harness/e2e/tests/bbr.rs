//! Body-based routing end to end: two models behind one real Envoy, each base model its own pool of
//! model-sim replicas (one pool also serving a LoRA adapter), the model header set from the body before
//! the route is chosen. Once by the Wasm module's `bbr` role followed by one picker serving both pools
//! (`envoy-config/bbr-two-models/`: `pools` matched by the route's cluster), once by
//! the epp-shim's BBR port over ext_proc (`envoy-config/bbr-two-models-ext-proc/`). A small recording
//! upstream stands in for one pool in a second Envoy to show that the body arrives byte for byte. Then
//! both roles in one chain: the shim's two ports (GIE's two servers), and a picker with a `bbr` section
//! (one filter, one body read). And GIE's shape for two pools: the shim's BBR, then one picker shim per pool
//! chosen by the route (`envoy-config/bbr-two-models-ext-proc-pickers/`).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request, Response};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

const QWEN: &str = "Qwen/Qwen3-32B";
const QWEN_ADAPTER: &str = "food-review-1";
const DEEPSEEK: &str = "deepseek/DeepSeek-r1";
const DEEPSEEK_ADAPTER: &str = "ski-resorts";

/// The router's configuration, the same as the in-proxy bootstrap's (there, inline in the file).
const BBR_CONFIG: &str = r#"{"bbr": {"unknownModels": "reject", "plugins": [
  {"type": "body-field-to-header", "name": "model-extractor",
   "parameters": {"fieldName": "model", "headerName": "X-Gateway-Model-Name"}},
  {"type": "base-model-to-header", "name": "base-model-mapper",
   "parameters": {"baseModels": [
     {"baseModel": "Qwen/Qwen3-32B", "adapters": ["food-review-1"]},
     {"baseModel": "deepseek/DeepSeek-r1", "adapters": ["ski-resorts", "movie-critique"]}]}}]}}"#;

/// A YAML flow list of `lb_endpoints` for `{{*_LB_ENDPOINTS}}`.
fn lb_endpoints(addrs: &[&str]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .map(|a| {
            let (ip, port) = a.rsplit_once(':').unwrap();
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: \"{ip}\", port_value: {port}}}}}}}}}"
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

struct Pools {
    qwen: Vec<ModelSim>,
    deepseek: Vec<ModelSim>,
}

impl Pools {
    /// Two Qwen replicas and two DeepSeek replicas, each serving its base model's adapter. A
    /// replica answers 404 for a model it does not serve, so a request in the wrong pool cannot pass.
    fn start() -> Pools {
        let sim = |model: &str, lora: Option<&str>| {
            let mut args = vec!["--time-scale", "0.01", "--default-output-tokens", "8", "--model", model];
            if let Some(l) = lora {
                args.extend(["--lora", l]);
            }
            ModelSim::start(&args).unwrap()
        };
        Pools {
            qwen: vec![sim(QWEN, Some(QWEN_ADAPTER)), sim(QWEN, Some(QWEN_ADAPTER))],
            deepseek: vec![sim(DEEPSEEK, Some(DEEPSEEK_ADAPTER)), sim(DEEPSEEK, Some(DEEPSEEK_ADAPTER))],
        }
    }

    fn addrs(pool: &[ModelSim]) -> Vec<&str> {
        pool.iter().map(ModelSim::addr).collect()
    }

    fn replicas(pool: &[ModelSim]) -> Vec<&str> {
        pool.iter().map(ModelSim::replica).collect()
    }
}

fn chat(model: &str, extra: Value) -> Request {
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    Request::post_json("/v1/chat/completions", body.to_string())
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// Everything the issue asks of the two-model gateway, against `envoy` in front of `pools`.
fn check_two_models(envoy: &Envoy, pools: &Pools) {
    let qwen = Pools::replicas(&pools.qwen);
    let deepseek = Pools::replicas(&pools.deepseek);
    // Each model, base or adapter, only ever reaches its base model's pool (several times: the pools
    // balance, the route does not).
    for (model, pool) in
        [(QWEN, &qwen), (QWEN_ADAPTER, &qwen), (DEEPSEEK, &deepseek), (DEEPSEEK_ADAPTER, &deepseek)]
    {
        for _ in 0..3 {
            let r = envoy.send(&chat(model, json!({}))).unwrap();
            assert_eq!(r.status, 200, "{model}: {}", r.text());
            let replica = r.header("x-model-sim-replica").unwrap_or("<none>");
            assert!(pool.contains(&replica), "{model} reached {replica}, not its pool {pool:?}");
            assert_eq!(json_of(&r)["model"], model);
        }
    }

    // A model nobody serves: the router's 404, OpenAI-shaped, naming it.
    let r = envoy.send(&chat("gpt-4o", json!({}))).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let err = json_of(&r);
    assert_eq!(err["error"]["code"], "model_not_found");
    assert!(err["error"]["message"].as_str().unwrap().contains("`gpt-4o`"), "{err}");

    // A client cannot steer: its copies of the routing headers are removed before the route is chosen.
    let steer = chat(QWEN, json!({}))
        .header("x-gateway-base-model-name", DEEPSEEK)
        .header("X-Gateway-Model-Name", DEEPSEEK);
    let r = envoy.send(&steer).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        qwen.contains(&r.header("x-model-sim-replica").unwrap()),
        "a client-set header steered the request"
    );
    // ... nor reach a pool with a body that names no model.
    let r = envoy.send(&Request::get("/v1/models").header("x-gateway-base-model-name", QWEN)).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(json_of(&r)["error"]["code"], "model_not_found");

    // Streaming passes through, token by token, from the adapter's pool.
    let r = envoy.send(&chat(DEEPSEEK_ADAPTER, json!({"stream": true}))).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap_or("").starts_with("text/event-stream"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert!(data.len() > 2, "{data:?}");
    assert!(deepseek.contains(&r.header("x-model-sim-replica").unwrap()));

    // A body that is not JSON: the picker's own 400, OpenAI-shaped.
    let r = envoy.send(&Request::post_json("/v1/chat/completions", "{\"model\": ")).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(json_of(&r)["error"]["type"], "invalid_request_error");
}

/// An HTTP/1.1 upstream that records each request body (by content-length or chunked) and answers a small JSON
/// 200: what arrived, byte for byte, which model-sim does not report.
fn recording_upstream() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    // One request per loop on a kept-alive connection.
                    let head_end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let chunked =
                        head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
                    let (body, used) = if chunked {
                        // Chunk by chunk until the zero-size one (no trailers expected).
                        let mut body = Vec::new();
                        let mut at = head_end;
                        loop {
                            let line_end = loop {
                                if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                                    break at + p;
                                }
                                match conn.read(&mut chunk) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            };
                            let size_text = String::from_utf8_lossy(&buf[at..line_end]).to_string();
                            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                                .unwrap();
                            let end = line_end + 2 + size + 2;
                            while buf.len() < end {
                                match conn.read(&mut chunk) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                            at = end;
                            if size == 0 {
                                break (body, at);
                            }
                        }
                    } else {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap_or(0));
                        while buf.len() < head_end + len {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        (buf[head_end..head_end + len].to_vec(), head_end + len)
                    };
                    seen.lock().unwrap().push(body);
                    buf.drain(..used);
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, bodies)
}

/// A body with what a re-serialising router would change (spacing, key order, escapes, non-ASCII, a
/// duplicate-free but unusual layout) and a 300 KB prompt (several 62,000-byte ext_proc chunks).
fn awkward_body() -> Vec<u8> {
    let prompt = "lorem \\u00e9 ipsum ".repeat(16_000);
    format!(
        "{{ \"messages\" : [ {{\"content\":\"{prompt}\",\"role\":\"user\"}} ],\n\t\"max_tokens\":4 ,\"model\" :\"ski-resorts\",\"x\":\"\u{1F600}\\\"\" }}"
    )
    .into_bytes()
}

/// `place` puts the recording upstream in DeepSeek's pool of `template`.
fn check_body_arrives_unchanged(
    template: EnvoyTemplate,
    place: impl Fn(EnvoyTemplate, &str) -> EnvoyTemplate,
) {
    let (recorder, bodies) = recording_upstream();
    let template = place(template, &recorder);
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap();
    let body = awkward_body();
    let r = envoy.send(&Request::post_json("/v1/chat/completions", body.clone())).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A collector's scrapes (GET /metrics) reach it too: only request bodies count.
    let got: Vec<Vec<u8>> = bodies.lock().unwrap().iter().filter(|b| !b.is_empty()).cloned().collect();
    assert_eq!(got.len(), 1, "one request reached the recording upstream");
    assert!(
        got[0] == body,
        "the body changed on the way ({} bytes sent, {} arrived)",
        body.len(),
        got[0].len()
    );
}

/// The picker's configuration for `bbr-two-models/`: one pool per cluster the route table names.
fn two_pools(qwen: &[&str], deepseek: &[&str]) -> String {
    json!({"pools": [
        {"match": {"clusters": ["qwen"]}, "pool": {"name": "qwen", "endpoints": qwen}},
        {"match": {"clusters": ["deepseek"]}, "pool": {"name": "deepseek", "endpoints": deepseek}}]})
    .to_string()
}

/// The picker chose the pod in each pool: the pod that answered is the one it named, and a long shared
/// prompt keeps going to one pod of its pool (prefix affinity) while each pool serves several prompts.
fn check_the_picker_chose(envoy: &Envoy, pools: &Pools) {
    for (model, pool) in
        [(QWEN, Pools::replicas(&pools.qwen)), (DEEPSEEK_ADAPTER, Pools::replicas(&pools.deepseek))]
    {
        let mut seen = Vec::new();
        for topic in 0..10 {
            let prompt = format!("topic {topic}: the shared context. ").repeat(300);
            let mut served_by = Vec::new();
            for _ in 0..3 {
                let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4});
                let r = envoy.send(&Request::post_json("/v1/chat/completions", body.to_string())).unwrap();
                assert_eq!(r.status, 200, "{model}: {}", r.text());
                let served =
                    r.header("x-gateway-destination-endpoint-served").expect("the picker's served header");
                let replica = r.header("x-model-sim-replica").unwrap();
                assert_eq!(served, replica, "{model}: the pod the picker chose answered");
                assert!(pool.contains(&replica), "{model} reached {replica}, not its pool {pool:?}");
                served_by.push(replica.to_string());
            }
            served_by.dedup();
            assert_eq!(served_by.len(), 1, "{model}, topic {topic}: one prompt, one pod: {served_by:?}");
            seen.extend(served_by);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), pool.len(), "{model}: ten prompts spread over the pool's pods: {seen:?}");
    }
}

#[test]
fn in_proxy_router_and_one_picker_for_both_pools() {
    let wasm = require!(filter);
    let pools = Pools::start();
    let template = EnvoyTemplate::load("bbr-two-models/envoy.yaml").unwrap().wasm(&wasm);
    let envoy = Envoy::start(
        &template
            .clone()
            .gateway_config(&two_pools(&Pools::addrs(&pools.qwen), &Pools::addrs(&pools.deepseek))),
        &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() },
    )
    .unwrap();
    // The collector scraped both pools before the picks that follow are judged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while envoy.stat_sum("pool.deepseek.epp_snapshots_published").unwrap_or(0) == 0
        || envoy.stat_sum("pool.qwen.epp_snapshots_published").unwrap_or(0) == 0
    {
        assert!(std::time::Instant::now() < deadline, "no snapshot published for both pools");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check_two_models(&envoy, &pools);
    check_the_picker_chose(&envoy, &pools);
    // Each pool's decisions are its own stats.
    let routed = |pool: &str| envoy.stat_sum(&format!("pool.{pool}.epp_decisions_routed")).unwrap_or(0);
    assert!(routed("qwen") >= 30 && routed("deepseek") >= 30, "{} {}", routed("qwen"), routed("deepseek"));
    assert_eq!(envoy.stat_sum("pool.qwen.epp_fallback_no_snapshot").unwrap_or(0), 0);
    check_body_arrives_unchanged(template, |t, recorder| {
        t.gateway_config(&two_pools(&Pools::addrs(&pools.qwen), &[recorder]))
    });
}

#[test]
fn shim_router_over_ext_proc_sends_each_model_to_its_pool() {
    require!(envoy);
    let pools = Pools::start();
    let shim = EppShim::start(BBR_CONFIG, &["--bbr-port", "0"]).unwrap();
    let port = shim.addr("bbr").rsplit_once(':').map(|(_, p)| p.to_string()).expect("the shim's bbr port");
    let template = EnvoyTemplate::load("bbr-two-models-ext-proc/envoy.yaml").unwrap().set("PORT_BBR", port);
    let envoy = Envoy::start(
        &template
            .clone()
            .set("QWEN_LB_ENDPOINTS", lb_endpoints(&Pools::addrs(&pools.qwen)))
            .set("DEEPSEEK_LB_ENDPOINTS", lb_endpoints(&Pools::addrs(&pools.deepseek))),
        &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() },
    )
    .unwrap();
    check_two_models(&envoy, &pools);
    let qwen = Pools::addrs(&pools.qwen);
    check_body_arrives_unchanged(template, |t, recorder| {
        t.set("QWEN_LB_ENDPOINTS", lb_endpoints(&qwen))
            .set("DEEPSEEK_LB_ENDPOINTS", lb_endpoints(&[recorder]))
    });
    // The in-proxy bootstrap's router configuration is the one the shim ran with.
    let file = std::fs::read_to_string(e2e::workspace_root().join("envoy-config/bbr-two-models/envoy.yaml"))
        .unwrap();
    let strip = |s: &str| s.split_whitespace().collect::<String>();
    assert!(strip(&file).contains(&strip(BBR_CONFIG)), "bbr-two-models/envoy.yaml and BBR_CONFIG differ");
}

/// One picker shim for `pool` (its endpoints only, as GIE runs one EPP per InferencePool), once its
/// collector has scraped every replica; returns it and its ext_proc port.
fn pool_picker(name: &str, pool: &[ModelSim]) -> (EppShim, String) {
    let config = json!({"pool": {"name": name, "endpoints": Pools::addrs(pool)},
                        "collector": {"intervalMs": 50, "timeoutMs": 500}});
    let shim = EppShim::start(&config.to_string(), &[]).unwrap();
    let scraped = format!("epp_shim_pool_endpoints {}", pool.len());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !Request::get("/metrics").send(shim.addr("http")).is_ok_and(|r| r.text().contains(&scraped)) {
        assert!(std::time::Instant::now() < deadline, "{name}: the picker never scraped its pool");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let port = shim.ext_proc().rsplit_once(':').map(|(_, p)| p.to_string()).unwrap();
    (shim, port)
}

#[test]
fn shim_router_then_one_picker_shim_per_pool() {
    require!(envoy);
    let pools = Pools::start();
    let router = EppShim::start(BBR_CONFIG, &["--bbr-port", "0"]).unwrap();
    let bbr_port = router.addr("bbr").rsplit_once(':').map(|(_, p)| p.to_string()).unwrap();
    // Each picker knows only its own pool: a pod it names proves which picker the route asked.
    let (_qwen_picker, qwen_port) = pool_picker("qwen", &pools.qwen);
    let (_deepseek_picker, deepseek_port) = pool_picker("deepseek", &pools.deepseek);
    let template = EnvoyTemplate::load("bbr-two-models-ext-proc-pickers/envoy.yaml")
        .unwrap()
        .set("PORT_BBR", bbr_port)
        .set("PORT_EPP_QWEN", qwen_port)
        .set("PORT_EPP_DEEPSEEK", deepseek_port);
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap();
    check_two_models(&envoy, &pools);
    check_the_picker_chose(&envoy, &pools);
    // Every model, adapters included, was picked by its own pool's picker, whatever the client sets.
    let qwen = Pools::replicas(&pools.qwen);
    let deepseek = Pools::replicas(&pools.deepseek);
    for (model, pool, other, other_model) in [
        (QWEN, &qwen, &pools.deepseek, DEEPSEEK),
        (QWEN_ADAPTER, &qwen, &pools.deepseek, DEEPSEEK),
        (DEEPSEEK, &deepseek, &pools.qwen, QWEN),
        (DEEPSEEK_ADAPTER, &deepseek, &pools.qwen, QWEN),
    ] {
        let steer = chat(model, json!({}))
            .header("x-gateway-destination-endpoint", other[0].addr())
            .header("x-gateway-base-model-name", other_model);
        let r = envoy.send(&steer).unwrap();
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let served = r.header("x-gateway-destination-endpoint-served").expect("the picker's served header");
        assert_eq!(
            r.header("x-model-sim-replica"),
            Some(served),
            "{model}: the pod the picker chose answered"
        );
        assert!(pool.contains(&served), "{model}: {served} is not in its pool {pool:?}");
    }
}

/// GIE's whole shape from one shim: its BBR port, then its picker port, in one Envoy chain (the router's
/// headers choose the route, the picker's header the pod). The picker must pass the router's headers on:
/// its headers response clears the route cache again.
const TWO_SERVERS: &str = r#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_ADMIN}}}}}
static_resources:
  listeners:
  - name: gateway
    address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_LISTENER}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: inference
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  headers:
                  - {name: x-gateway-base-model-name, string_match: {exact: "Qwen/Qwen3-32B"}}
                  - {name: x-gateway-destination-endpoint, present_match: true}
                route: {cluster: pool, timeout: 60s}
              - match: {prefix: "/"}
                direct_response: {status: 404, body: {inline_string: "no route"}}
          http_filters:
          - name: bbr
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {envoy_grpc: {cluster_name: bbr}, timeout: 10s}
              message_timeout: 1000s
              processing_mode: {request_header_mode: SEND, response_header_mode: SKIP, request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND}
          - name: picker
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {envoy_grpc: {cluster_name: epp}, timeout: 10s}
              message_timeout: 1000s
              processing_mode: {request_header_mode: SEND, response_header_mode: SEND, request_body_mode: FULL_DUPLEX_STREAMED, response_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND, response_trailer_mode: SEND}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: pool
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {use_http_header: true, http_header_name: x-gateway-destination-endpoint}
  - name: bbr
    type: STATIC
    connect_timeout: 2s
    load_assignment: {cluster_name: bbr, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_BBR}}}}}}]}]}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
  - name: epp
    type: STATIC
    connect_timeout: 2s
    load_assignment: {cluster_name: epp, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_EXT_PROC}}}}}}]}]}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#;

#[test]
fn one_shim_serves_both_of_gies_servers_in_one_chain() {
    require!(envoy);
    let pools = Pools::start();
    let qwen = Pools::addrs(&pools.qwen);
    let config = BBR_CONFIG.replacen(
        "{\"bbr\"",
        &format!(
            "{{\"pool\": {{\"name\": \"qwen\", \"endpoints\": [\"{}\", \"{}\"]}}, \"bbr\"",
            qwen[0], qwen[1]
        ),
        1,
    );
    let shim = EppShim::start(&config, &["--bbr-port", "0", "--plaintext"]).unwrap();
    let port = |what: &str| shim.addr(what).rsplit_once(':').map(|(_, p)| p.to_string()).unwrap();
    let template = EnvoyTemplate::inline("bbr-then-picker", TWO_SERVERS)
        .set("PORT_BBR", port("bbr"))
        .set("PORT_EXT_PROC", port("ext_proc"));
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap();
    let replicas = Pools::replicas(&pools.qwen);
    for model in [QWEN, QWEN_ADAPTER, QWEN, QWEN_ADAPTER] {
        let r = envoy.send(&chat(model, json!({}))).unwrap();
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let served = r.header("x-gateway-destination-endpoint-served").expect("the picker's served header");
        assert_eq!(r.header("x-model-sim-replica"), Some(served), "the pod the picker chose answered");
        assert!(replicas.contains(&served), "{served}");
    }
    // The other model has no route here: the router's headers, not the client's, decided.
    let r = envoy.send(&chat(DEEPSEEK, json!({})).header("x-gateway-base-model-name", QWEN)).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
}

/// A picker whose configuration has a `bbr` section: one filter, one body read, the headers set in the
/// same body callback as the destination. The route is chosen after it (Envoy clears the route cache when
/// a Wasm filter changes request headers), on the router's header and the picker's.
const PICKER_WITH_BBR: &str = r#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_ADMIN}}}}}
static_resources:
  listeners:
  - name: gateway
    address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_LISTENER}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: inference
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  headers:
                  - {name: x-gateway-base-model-name, string_match: {exact: "Qwen/Qwen3-32B"}}
                  - {name: x-gateway-destination-endpoint, present_match: true}
                route: {cluster: pool, timeout: 60s}
              - match: {prefix: "/"}
                direct_response: {status: 404, body: {inline_string: "no route"}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: picker
                root_id: picker
                allow_on_headers_stop_iteration: true
                configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: {{GATEWAY_CONFIG}}}
                vm_config: {vm_id: epp, runtime: envoy.wasm.runtime.v8, code: {local: {filename: "{{WASM_PATH}}"}}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: pool
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {use_http_header: true, http_header_name: x-gateway-destination-endpoint}
"#;

#[test]
fn a_picker_with_a_bbr_section_routes_on_its_own_headers() {
    let wasm = require!(filter);
    let pools = Pools::start();
    let qwen = Pools::addrs(&pools.qwen);
    // No collector: the picker fails open over its static endpoints, which is enough to route.
    let config = BBR_CONFIG.replacen(
        "{\"bbr\"",
        &format!(
            "{{\"pool\": {{\"name\": \"qwen\", \"endpoints\": [\"{}\", \"{}\"]}}, \"bbr\"",
            qwen[0], qwen[1]
        ),
        1,
    );
    let template =
        EnvoyTemplate::inline("picker-with-bbr", PICKER_WITH_BBR).wasm(&wasm).gateway_config(&config);
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap();
    let replicas = Pools::replicas(&pools.qwen);
    for model in [QWEN, QWEN_ADAPTER, QWEN] {
        let r = envoy.send(&chat(model, json!({}))).unwrap();
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert!(replicas.contains(&r.header("x-model-sim-replica").unwrap()));
    }
    // DeepSeek is known to the router but has no route here: picked, then refused by the route table,
    // whatever the client claims.
    let r = envoy.send(&chat(DEEPSEEK, json!({})).header("x-gateway-base-model-name", QWEN)).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.text(), "no route");
    let r = envoy.send(&chat("gpt-4o", json!({}))).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(json_of(&r)["error"]["code"], "model_not_found");
}
