//! NGINX through the shim, end to end: the real NGINX and njs from Debian (`nginx-light`,
//! `libnginx-mod-http-js`; `cargo xtask test` installs them) running `envoy-config/nginx/`, asking the
//! real `epp-shim --pick-port`, in front of model-sim replicas. Skipped with a notice when NGINX or njs
//! is missing; the comparison with the ext_proc path also needs Envoy.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{
    envoy_binary, nginx_binary, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Nginx, NginxOptions,
};
use e2e::{Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

macro_rules! require_nginx {
    () => {
        if nginx_binary().is_none() {
            eprintln!("SKIPPED: no nginx with njs (`cargo xtask test` installs nginx-light and libnginx-mod-http-js)");
            return;
        }
    };
}

const SERVED_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn sims(n: usize, extra: &[&str]) -> Vec<ModelSim> {
    ModelSim::start_many(n, |_| {
        let mut a: Vec<String> =
            ["--time-scale", "0.01", "--default-output-tokens", "8"].map(String::from).to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    })
    .unwrap()
}

fn addrs(sims: &[ModelSim]) -> Vec<String> {
    sims.iter().map(|s| s.addr().to_string()).collect()
}

/// The shim's configuration: `sims` as the pool, plus `extra` top-level keys.
fn config(sims: &[ModelSim], extra: Value) -> String {
    let mut c = json!({"pool": {"name": "sim", "endpoints": addrs(sims)}});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c.to_string()
}

fn shim(config: &str) -> EppShim {
    EppShim::start(config, &["--pick-port", "0"]).unwrap()
}

fn nginx(pick: &str, sims: &[ModelSim], failure_mode: &str) -> Nginx {
    let options =
        NginxOptions { pick: pick.to_string(), pool: addrs(sims), failure_mode: failure_mode.to_string() };
    Nginx::start(&options).unwrap_or_else(|e| panic!("nginx: {e}"))
}

fn chat(content: &str) -> Request {
    Request::post_json(
        "/v1/chat/completions",
        json!({"model": SERVED_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 3})
            .to_string(),
    )
}

/// The OpenAI error object of a local reply, checked for its shape.
fn openai_error(reply: &Response) -> Value {
    assert_eq!(reply.header("content-type"), Some("application/json"), "{}", reply.text());
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.text()));
    assert!(body["error"]["message"].is_string() && body["error"]["type"].is_string(), "{body}");
    body["error"].clone()
}

/// The shim's in-flight gauge per endpoint (only endpoints with a count are listed).
fn in_flight(shim: &EppShim) -> HashMap<String, u64> {
    let text = Request::get("/metrics").send(shim.addr("http")).unwrap().text();
    text.lines()
        .filter_map(|l| l.strip_prefix("epp_shim_endpoint_in_flight_requests{endpoint=\""))
        .filter_map(|l| {
            let (endpoint, value) = l.split_once("\"} ")?;
            Some((endpoint.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Waits until the shim holds no request in flight (NGINX reported every end), or fails.
fn settle(shim: &EppShim) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = in_flight(shim);
        if open.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "NGINX never reported the end of these requests: {open:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the shim has scraped every one of `sims`, and `busy` (if any) shows a waiting queue.
fn wait_scraped(shim: &EppShim, sims: &[ModelSim], busy: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = Request::get("/metrics").send(shim.addr("http")).unwrap().text();
        let queue = |addr: &str| {
            let key = format!("model_server_endpoint=\"{addr}\"}} ");
            text.lines()
                .filter(|l| l.starts_with("llm_d_epp_per_endpoint_queue_size{"))
                .find_map(|l| l.split_once(&key).and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        };
        let all = sims.iter().all(|s| queue(s.addr()).is_some());
        if all && busy.is_none_or(|b| queue(b).is_some_and(|q| q > 0.0)) {
            return;
        }
        assert!(Instant::now() < deadline, "the shim never scraped {:?}:\n{text}", addrs(sims));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn served(reply: &Response) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served = reply.header("x-gateway-destination-endpoint-served").expect("served header").to_string();
    assert_eq!(
        reply.header("x-model-sim-replica"),
        Some(served.as_str()),
        "the replica that answered is the one picked"
    );
    served
}

#[test]
fn requests_route_through_the_pick_endpoint_and_local_replies_arrive_as_openai_json() {
    require_nginx!();
    let sims = sims(2, &[]);
    let shim = shim(&config(
        &sims,
        json!({"limits": {"maxBodyBytes": 65536},
               "modelRewrites": [{"rules": [{"matches": [{"model": {"type": "Exact", "value": "llama"}}],
                                             "targets": [{"modelRewrite": SERVED_MODEL, "weight": 1}]}]}]}),
    ));
    let nginx = nginx(shim.addr("pick"), &sims, "FailClose");
    let pool = addrs(&sims);

    let reply = chat("hello").send(nginx.addr()).unwrap();
    assert!(pool.contains(&served(&reply)));

    // The model rewritten on the way in: the replica serves only SERVED_MODEL.
    let body = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let reply = Request::post_json("/v1/chat/completions", body.to_string()).send(nginx.addr()).unwrap();
    assert!(pool.contains(&served(&reply)), "{}", reply.text());

    // A client's routing headers do not steer: every request lands on a pool member, never on 127.0.0.1:1.
    for i in 0..6 {
        let reply = chat(&format!("steer {i}"))
            .header("x-gateway-destination-endpoint", "127.0.0.1:1")
            .header("x-gateway-destination-endpoint-served", "127.0.0.1:1")
            // The pick protocol's own header, forged: the shim would read a chat body as a completion.
            .header("X-Epp-Path", "/v1/completions")
            .send(nginx.addr())
            .unwrap();
        assert!(pool.contains(&served(&reply)));
    }

    // Server-sent events pass through as they come.
    let body = json!({"model": SERVED_MODEL, "messages": [{"role": "user", "content": "stream"}],
                      "max_tokens": 5, "stream": true});
    let reply = Request::post_json("/v1/chat/completions", body.to_string()).send(nginx.addr()).unwrap();
    assert!(pool.contains(&served(&reply)));
    assert!(
        reply.header("content-type").unwrap_or("").starts_with("text/event-stream"),
        "{:?}",
        reply.headers
    );
    let events = reply.sse_data();
    assert!(events.len() >= 3 && events.last().map(String::as_str) == Some("[DONE]"), "{events:?}");

    // Not JSON: the picker's 400; over limits.maxBodyBytes: its 413. Both from the shim, as JSON.
    let reply = Request::post_json("/v1/chat/completions", "{oops").send(nginx.addr()).unwrap();
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(openai_error(&reply)["type"], "invalid_request_error");
    let big = format!(r#"{{"model":"{SERVED_MODEL}","prompt":"{}"}}"#, "x".repeat(100_000));
    let reply = Request::post_json("/v1/completions", big).send(nginx.addr()).unwrap();
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(openai_error(&reply)["message"].as_str().unwrap().contains("65536"), "{}", reply.text());

    // Every routed request's end was reported: nothing stays counted in flight.
    settle(&shim);
}

#[test]
fn sheddable_requests_get_429_json_when_every_replica_is_saturated() {
    require_nginx!();
    let sims = sims(2, &["--max-num-seqs", "2", "--busy", "30", "--busy-output-tokens", "400"]);
    let shim = shim(&config(&sims, json!({"objectives": [{"name": "batch", "priority": -1}]})));
    let nginx = nginx(shim.addr("pick"), &sims, "FailClose");
    // The shim's first scrape may not be in yet: the saturation detector sees the pool once it is.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let reply =
            chat("later").header("x-gateway-inference-objective", "batch").send(nginx.addr()).unwrap();
        if reply.status == 429 || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(shed.status, 429, "{}", shed.text());
    assert_eq!(openai_error(&shed)["type"], "rate_limit_error");
    let normal = chat("now").timeout(Duration::from_secs(60)).send(nginx.addr()).unwrap();
    assert_eq!(normal.status, 200, "{}", normal.text());
}

#[test]
fn picks_avoid_a_saturated_replica_and_count_what_nginx_has_in_flight() {
    require_nginx!();
    // Replica 0 runs 4 sequences at a time and always has ~20 more waiting; replica 2 runs in real time.
    let busy = ModelSim::start(&[
        "--time-scale",
        "0.01",
        "--max-num-seqs",
        "4",
        "--busy",
        "24",
        "--busy-output-tokens",
        "400",
    ])
    .unwrap();
    let idle = ModelSim::start(&["--time-scale", "0.01"]).unwrap();
    let sims = vec![busy, idle];
    let shim = shim(&config(&sims, json!({})));
    let nginx = nginx(shim.addr("pick"), &sims, "FailClose");
    wait_scraped(&shim, &sims, Some(sims[0].addr()));
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..20 {
        let reply = chat(&format!("distinct prompt number {i}")).send(nginx.addr()).unwrap();
        *counts.entry(served(&reply)).or_default() += 1;
    }
    let to_busy = counts.get(sims[0].addr()).copied().unwrap_or(0);
    assert!(to_busy <= 1, "{to_busy} of 20 went to the saturated replica: {counts:?}");

    // A long stream is counted on its pod while it runs and released when NGINX reports its end.
    let body = json!({"model": SERVED_MODEL, "messages": [{"role": "user", "content": "long"}],
                      "max_tokens": 400_000, "stream": true});
    let long = Request::post_json("/v1/chat/completions", body.to_string()).timeout(Duration::from_secs(3));
    let addr = nginx.addr().to_string();
    let streaming = std::thread::spawn(move || long.send(&addr));
    let deadline = Instant::now() + Duration::from_secs(2);
    let during = loop {
        let open = in_flight(&shim);
        if !open.is_empty() || Instant::now() > deadline {
            break open;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(during.values().sum::<u64>(), 1, "one stream in flight: {during:?}");
    // The client gives up after 3 s: NGINX still reports the end, and the count goes back.
    let _ = streaming.join();
    settle(&shim);
}

#[test]
fn shim_down_fail_open_serves_from_the_pool_and_fail_close_answers_503_json() {
    require_nginx!();
    let sims = sims(2, &[]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let open = nginx(&closed, &sims, "FailOpen");
    let reply = chat("anyone").send(open.addr()).unwrap();
    assert!(addrs(&sims).contains(&served(&reply)));
    let shut = nginx(&closed, &sims, "FailClose");
    let reply = chat("anyone").send(shut.addr()).unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(openai_error(&reply)["type"], "service_unavailable_error");
}

/// The requests both paths are sent: three long shared prefixes, each asked about several times, with
/// fixed request ids (they seed the picker's tie-breaks).
fn prefix_traffic() -> Vec<(String, String)> {
    let prefixes: Vec<String> = (0..3)
        .map(|p| {
            format!(
                "You are assistant number {p}. {}",
                format!("Background fact {p} about the world. ").repeat(60)
            )
        })
        .collect();
    (0..12)
        .map(|i| {
            let p = &prefixes[i % 3];
            let body = json!({"model": SERVED_MODEL, "max_tokens": 2,
                              "messages": [{"role": "system", "content": p}, {"role": "user", "content": format!("question {i}")}]});
            (format!("parity-{i}"), body.to_string())
        })
        .collect()
}

/// Sends the traffic one request at a time, each after the previous one's end was counted, and returns
/// where each went.
fn run_traffic(addr: &str, shim: &EppShim) -> Vec<String> {
    prefix_traffic()
        .into_iter()
        .map(|(id, body)| {
            let reply = Request::post_json("/v1/chat/completions", body)
                .header("x-request-id", &id)
                .send(addr)
                .unwrap();
            let to = served(&reply);
            settle(shim);
            // Let the next scrape see the replica idle again, as the other run did.
            std::thread::sleep(Duration::from_millis(150));
            to
        })
        .collect()
}

#[test]
fn nginx_makes_the_same_decisions_as_envoy_through_ext_proc() {
    require_nginx!();
    if envoy_binary().is_none() {
        eprintln!(
            "SKIPPED nginx_makes_the_same_decisions_as_envoy_through_ext_proc: no Envoy (.venv/bin/envoy)"
        );
        return;
    }
    let sims = sims(3, &[]);
    let config = config(&sims, json!({}));

    let envoy_run = {
        let shim = shim(&config);
        let port = shim.ext_proc().rsplit_once(':').map_or("", |(_, p)| p).to_string();
        let template = EnvoyTemplate::load("ext-proc/envoy.yaml").unwrap().set("PORT_EXT_PROC", port);
        let envoy =
            Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
                .unwrap();
        wait_scraped(&shim, &sims, None);
        run_traffic(envoy.listener(), &shim)
    };
    let nginx_run = {
        let shim = shim(&config);
        let nginx = nginx(shim.addr("pick"), &sims, "FailClose");
        wait_scraped(&shim, &sims, None);
        run_traffic(nginx.addr(), &shim)
    };
    assert_eq!(nginx_run, envoy_run, "the same replicas, the same traffic: the same decisions");
    // Picks follow the prefix: every request after the first of its prefix goes where that one went.
    for (i, to) in nginx_run.iter().enumerate().skip(3) {
        assert_eq!(to, &nginx_run[i % 3], "request {i} shares request {}'s prefix: {nginx_run:?}", i % 3);
    }
}
