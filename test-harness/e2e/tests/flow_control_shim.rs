//! Flow control in the ext_proc shim, end to end: real Envoy (`envoy-config/ext-proc/envoy.yaml`) in
//! front of two model-sim replicas that take 1.5 s to answer, asking the real epp-shim with the
//! `flowControl` feature gate on. The concurrency detector gives the pool 4 places (2 per replica,
//! counted from the gateway's own in-flight requests), so what waits in the queue is known:
//!
//! - a burst of 3× the pool's capacity with mixed priorities is served, nothing lost, band after band
//!   (every high request answered before any normal one, every normal one before any sheddable one);
//! - a full band refuses with 429 and an OpenAI-shaped body, through Envoy;
//! - a client that hangs up while waiting leaves the queue, and once the pool drains the queue and
//!   in-flight gauges read zero;
//! - with `enableEviction`, a high request arriving at a pool full of sheddable requests gets the place
//!   of one of them, which Envoy answers 429 (the shim's ImmediateResponse) before any other finishes.
//!
//! Skipped with a notice when Envoy is not installed (`.venv/bin/envoy` or `ENVOY_BIN`).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long each replica holds a request before answering: the burst's generations are this far apart.
const SERVICE_MS: &str = "1500";
const BODY: &[u8] = br#"{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;

fn setup(flow_control: &str) -> (Vec<ModelSim>, EppShim, Envoy) {
    let sims = ModelSim::start_many(2, |_| {
        ["--time-scale", "0.01", "--default-output-tokens", "2", "--response-delay-ms", SERVICE_MS]
            .map(String::from)
            .to_vec()
    })
    .unwrap();
    let config = format!(
        r#"{{"pool": {{"name": "sim", "endpoints": ["{}", "{}"]}},
            "featureGates": ["flowControl"],
            "plugins": [{{"type": "queue-scorer"}},
                        {{"type": "concurrency-detector", "parameters": {{"maxConcurrency": 2, "headroom": 10}}}}],
            "flowControl": {flow_control},
            "objectives": [{{"name": "high", "priority": 10}}, {{"name": "batch", "priority": -1}}]}}"#,
        sims[0].addr(),
        sims[1].addr()
    );
    let shim = EppShim::start(&config, &[]).unwrap();
    let port = shim.ext_proc().rsplit_once(':').map_or("", |(_, p)| p).to_string();
    let template = EnvoyTemplate::load("ext-proc/envoy.yaml").unwrap().set("PORT_EXT_PROC", port);
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap_or_else(|e| panic!("Envoy with ext-proc/envoy.yaml: {e}"));
    // The picker needs a scraped snapshot to gate on.
    wait(&shim, "both replicas scraped", |m| m.contains("epp_shim_pool_endpoints 2"));
    (sims, shim, envoy)
}

fn post(objective: Option<&str>) -> Request {
    let r = Request { method: "POST".into(), body: BODY.to_vec(), ..Request::get("/v1/chat/completions") }
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(60));
    match objective {
        Some(o) => r.header("x-gateway-inference-objective", o),
        None => r,
    }
}

fn metrics(shim: &EppShim) -> String {
    let r = Request::get("/metrics").send(shim.addr("http")).unwrap();
    r.text()
}

/// The sum of every series of `family` on the shim's metrics page (0 without any).
fn total(text: &str, family: &str) -> f64 {
    let prefix = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn band(text: &str, family: &str, priority: i32) -> f64 {
    let series = format!("{family}{{priority=\"{priority}\",inference_pool=\"sim\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok()).unwrap_or(0.0)
}

fn wait(shim: &EppShim, what: &str, f: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(shim);
        if f(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Answers in the order they came back: (position, label, the response or why none came).
type Answers = Arc<Mutex<Vec<(usize, &'static str, Result<Response, String>)>>>;

/// Sends `request` on its own thread; the answer lands in `answers` with the order it came back in.
fn send_async(
    envoy: &Envoy,
    label: &'static str,
    request: Request,
    order: &Arc<AtomicUsize>,
    answers: &Answers,
) -> std::thread::JoinHandle<()> {
    let (addr, order, answers) = (envoy.listener().to_string(), Arc::clone(order), Arc::clone(answers));
    std::thread::spawn(move || {
        let r = request.send(&addr);
        let n = order.fetch_add(1, Ordering::SeqCst);
        answers.lock().unwrap().push((n, label, r));
    })
}

#[test]
fn a_burst_of_three_times_capacity_is_served_band_by_band_with_nothing_lost() {
    require!(envoy);
    let (_sims, shim, envoy) =
        setup(r#"{"saturationDetector": {"pluginRef": "concurrency-detector"}, "defaultRequestTTL": "30s"}"#);
    let order = Arc::new(AtomicUsize::new(0));
    let answers: Answers = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    // The pool's 4 places, then 12 more (3× capacity), lowest band first: the queue must reorder them.
    for _ in 0..4 {
        threads.push(send_async(&envoy, "first", post(None), &order, &answers));
    }
    wait(&shim, "the pool full", |m| total(m, "epp_shim_endpoint_in_flight_requests") == 4.0);
    for (label, objective, priority) in
        [("batch", Some("batch"), -1), ("normal", None, 0), ("high", Some("high"), 10)]
    {
        for i in 0..4 {
            threads.push(send_async(&envoy, label, post(objective), &order, &answers));
            let want = f64::from(i + 1);
            wait(&shim, label, |m| band(m, "llm_d_epp_flow_control_queue_size", priority) == want);
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    let mut answers = std::mem::take(&mut *answers.lock().unwrap());
    answers.sort_by_key(|(n, _, _)| *n);
    for (_, label, r) in &answers {
        let r = r.as_ref().unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(r.status, 200, "{label}: {}", r.text());
    }
    let labels: Vec<&str> = answers.iter().map(|(_, l, _)| *l).collect();
    let last = |l: &str| labels.iter().rposition(|x| *x == l).unwrap();
    let first = |l: &str| labels.iter().position(|x| *x == l).unwrap();
    assert_eq!(labels.len(), 16, "nothing lost");
    assert!(last("first") < first("high"), "{labels:?}");
    assert!(last("high") < first("normal"), "every high answered before any normal: {labels:?}");
    assert!(last("normal") < first("batch"), "every normal answered before any sheddable: {labels:?}");
    let m = metrics(&shim);
    let dispatched = |p: i32| {
        let s = format!(
            "llm_d_epp_flow_control_requests_total{{outcome=\"Dispatched\",priority=\"{p}\",inference_pool=\"sim\"}} "
        );
        m.lines().find_map(|l| l.strip_prefix(&s)?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    assert_eq!((dispatched(10), dispatched(0), dispatched(-1)), (4.0, 4.0, 4.0));
    assert!(!m.contains("outcome=\"EvictedTTL\""), "nothing timed out");
    wait(&shim, "queue and in-flight gauges at zero", |m| {
        total(m, "llm_d_epp_flow_control_queue_size") == 0.0
            && total(m, "epp_shim_endpoint_in_flight_requests") == 0.0
            && total(m, "llm_d_epp_request_running") == 0.0
    });
}

#[test]
fn a_full_band_refuses_429_and_a_client_that_leaves_frees_its_place() {
    require!(envoy);
    let (_sims, shim, envoy) = setup(
        r#"{"saturationDetector": {"pluginRef": "concurrency-detector"},
            "priorityBands": [{"priority": 0, "maxRequests": 2}]}"#,
    );
    let order = Arc::new(AtomicUsize::new(0));
    let answers: Answers = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for _ in 0..4 {
        threads.push(send_async(&envoy, "first", post(None), &order, &answers));
    }
    wait(&shim, "the pool full", |m| total(m, "epp_shim_endpoint_in_flight_requests") == 4.0);
    // A client that gives up after 300 ms, while its request waits.
    let impatient = post(None).timeout(Duration::from_millis(300));
    threads.push(send_async(&envoy, "impatient", impatient, &order, &answers));
    threads.push(send_async(&envoy, "waits", post(None), &order, &answers));
    wait(&shim, "two waiting", |m| band(m, "llm_d_epp_flow_control_queue_size", 0) == 2.0);

    // The band is full: refused at once, 429, in the OpenAI error shape.
    let refused = post(None).send(envoy.listener()).unwrap();
    assert_eq!(refused.status, 429, "{}", refused.text());
    let err: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(err["error"]["code"], "flow_control_capacity", "{err}");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    assert!(err["error"]["message"].as_str().unwrap().contains("queue is full"));

    // The impatient client hung up: Envoy resets its ext_proc stream and the shim cancels its ticket.
    let cancelled =
        "llm_d_epp_flow_control_requests_total{outcome=\"EvictedContextCancelled\",priority=\"0\",inference_pool=\"sim\"} 1";
    wait(&shim, "the impatient request cancelled", |m| m.contains(cancelled));
    wait(&shim, "one waiting", |m| band(m, "llm_d_epp_flow_control_queue_size", 0) == 1.0);
    for t in threads {
        t.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    for (_, label, r) in answers.iter() {
        match *label {
            "impatient" => {
                assert!(r.is_err(), "the impatient client got no answer: {:?}", r.as_ref().map(|r| r.status))
            }
            _ => assert_eq!(r.as_ref().unwrap().status, 200, "{label}"),
        }
    }
    wait(&shim, "queue and in-flight gauges at zero", |m| {
        total(m, "llm_d_epp_flow_control_queue_size") == 0.0
            && total(m, "epp_shim_endpoint_in_flight_requests") == 0.0
            && total(m, "llm_d_epp_request_running") == 0.0
    });
}

#[test]
fn eviction_ends_sheddable_requests_in_flight_for_a_higher_band_through_envoy() {
    require!(envoy);
    let (_sims, shim, envoy) =
        setup(r#"{"saturationDetector": {"pluginRef": "concurrency-detector"}, "enableEviction": true}"#);
    let order = Arc::new(AtomicUsize::new(0));
    let answers: Answers = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    // The pool's 4 places taken by sheddable requests, then one high request.
    for _ in 0..4 {
        threads.push(send_async(&envoy, "batch", post(Some("batch")), &order, &answers));
    }
    wait(&shim, "the pool full", |m| total(m, "epp_shim_endpoint_in_flight_requests") == 4.0);
    threads.push(send_async(&envoy, "high", post(Some("high")), &order, &answers));
    for t in threads {
        t.join().unwrap();
    }
    let mut answers = std::mem::take(&mut *answers.lock().unwrap());
    answers.sort_by_key(|(n, _, _)| *n);
    let status = |label: &str| -> Vec<u16> {
        answers.iter().filter(|(_, l, _)| *l == label).map(|(_, _, r)| r.as_ref().unwrap().status).collect()
    };
    assert_eq!(status("high"), [200]);
    let batch = status("batch");
    let evicted = batch.iter().filter(|s| **s == 429).count();
    // Saturation 4/4 = the ceiling 1.0: llm-d's sizing, max(1, ⌈(1.0 − 1.0) / credit⌉), evicts one.
    assert_eq!(evicted, 1, "{batch:?}");
    assert_eq!(batch.iter().filter(|s| **s == 200).count(), 4 - evicted, "{batch:?}");
    let (_, _, r) =
        answers.iter().find(|(_, l, r)| *l == "batch" && r.as_ref().unwrap().status == 429).unwrap();
    let err: serde_json::Value = serde_json::from_slice(&r.as_ref().unwrap().body).unwrap();
    assert_eq!(err["error"]["code"], "flow_control_evicted", "{err}");
    // The evicted requests were answered first, before any request finished on a replica.
    let first: Vec<u16> = answers.iter().take(evicted).map(|(_, _, r)| r.as_ref().unwrap().status).collect();
    assert!(first.iter().all(|s| *s == 429), "{:?}", answers.iter().map(|a| a.1).collect::<Vec<_>>());
    let revoked = format!(
        "llm_d_epp_flow_control_revocations_total{{outcome=\"confirmed\",inference_pool=\"sim\"}} {evicted}"
    );
    wait(&shim, "the evictions counted", |m| m.contains(&revoked));
    wait(&shim, "queue and in-flight gauges at zero", |m| {
        total(m, "llm_d_epp_flow_control_queue_size") == 0.0
            && total(m, "epp_shim_endpoint_in_flight_requests") == 0.0
            && total(m, "llm_d_epp_request_running") == 0.0
    });
}
