//! A pod that accepts completions and never answers them while its `/metrics` keeps answering: caught
//! by `health.firstByteTimeoutMs` (a stream's response headers come before generation, so a stream
//! without them for a second means the pod is not answering), through the Wasm filter (2 workers) and the
//! ext_proc shim, with the real proxy. Its scrapes stay good, so only the trial requests of the back-off
//! reach it afterwards. Skipped with a notice when Envoy is not installed.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{filter_wasm, require, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request};
use serde_json::json;
use std::time::{Duration, Instant};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const CLIENTS: usize = 6;
/// How long a client waits for a streamed answer before it gives up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn sims() -> Vec<ModelSim> {
    ModelSim::start_many(3, |_| {
        ["--time-scale", "0.02", "--default-output-tokens", "4"].map(String::from).to_vec()
    })
    .unwrap()
}

fn config(sims: &[ModelSim]) -> String {
    json!({
        "pool": {"name": "hang", "endpoints": sims.iter().map(|s| s.addr()).collect::<Vec<_>>()},
        "collector": {"intervalMs": 50, "timeoutMs": 300},
    })
    .to_string()
}

fn stream(i: usize) -> Request {
    Request::post_json(
        "/v1/completions",
        json!({"model": MODEL, "prompt": format!("q{i}"), "max_tokens": 4, "stream": true}).to_string(),
    )
    .timeout(CLIENT_TIMEOUT)
}

#[derive(Debug)]
struct Sent {
    sent: Duration,
    status: u16,
    replica: Option<String>,
}

/// `CLIENTS` clients stream completions for `length`; the first pod stops answering completions at
/// `hang_at`.
fn drive(envoy: &Envoy, sims: &[ModelSim], length: Duration, hang_at: Duration) -> Vec<Sent> {
    let start = Instant::now();
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..CLIENTS {
            let results = &results;
            s.spawn(move || {
                let mut i = t;
                while start.elapsed() < length {
                    let sent = start.elapsed();
                    let r = envoy.send(&stream(i));
                    let (status, replica) = match r {
                        Ok(r) => (r.status, r.header("x-model-sim-replica").map(String::from)),
                        Err(_) => (0, None),
                    };
                    results.lock().unwrap().push(Sent { sent, status, replica });
                    i += CLIENTS;
                }
            });
        }
        std::thread::sleep(hang_at);
        sims[0].set_faults(r#"{"completions_hang": true}"#).unwrap();
    });
    results.into_inner().unwrap()
}

fn hung_pod_is_caught(envoy: &Envoy, sims: &[ModelSim], product: &str) {
    let hang_at = Duration::from_millis(1000);
    let sent = drive(envoy, sims, Duration::from_millis(7000), hang_at);
    let failed = |from: Duration| sent.iter().filter(|s| s.sent >= from && s.status != 200).count();
    // Caught a second after its first unanswered stream, plus a tick.
    let caught = hang_at + Duration::from_millis(1300);
    let after = sent.iter().filter(|s| s.sent >= caught).count();
    eprintln!(
        "{product}: {} requests, {} failed ({} sent after it was caught), {after} sent after",
        sent.len(),
        failed(Duration::ZERO),
        failed(caught)
    );
    // (A request sent just before the switch may reach the pod after it.)
    let before = hang_at - Duration::from_millis(100);
    assert_eq!(failed(Duration::ZERO), failed(before), "{product}: failures before the fault");
    // The fault is switched on by an HTTP call after `hang_at`: a request sent in that window is answered.
    let switched = hang_at + Duration::from_millis(100);
    assert!(
        sent.iter().all(|s| s.sent < switched || s.replica.as_deref() != Some(sims[0].replica())),
        "{product}: the hung pod answered"
    );
    // Afterwards only the back-off's trial requests go there (after 1 s, then 2 s; each gateway worker
    // may send its own), out of hundreds.
    assert!(failed(caught) <= 6, "{product}: {} requests sent after the pod was caught hung", failed(caught));
    assert!(after > 300, "{product}: the clients kept sending after the pod was caught: {after}");
}

#[test]
fn filter_a_pod_that_stops_answering_completions_is_ejected_within_its_first_byte_timeout() {
    require!(envoy);
    let sims = sims();
    let wasm = filter_wasm().unwrap_or_else(|e| panic!("the filter does not build: {e}"));
    let template = EnvoyTemplate::load("wasm-picker/envoy.yaml")
        .unwrap()
        .wasm(&wasm)
        .gateway_config(&config(&sims))
        .pool_endpoints(&sims.iter().map(|s| s.addr()).collect::<Vec<_>>());
    let options = EnvoyOptions { concurrency: 2, log_level: "warn".into(), ..EnvoyOptions::default() };
    let envoy = Envoy::start(&template, &options).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    hung_pod_is_caught(&envoy, &sims, "filter");
    assert!(envoy.stat_sum("epp_first_byte_timeouts").unwrap_or(0) >= 1);
    assert!(envoy.stat_sum("epp_endpoint_ejections").unwrap_or(0) >= 1);
}

#[test]
fn shim_a_pod_that_stops_answering_completions_is_ejected_within_its_first_byte_timeout() {
    require!(envoy);
    let sims = sims();
    let shim = EppShim::start(&config(&sims), &[]).unwrap();
    let port = shim.ext_proc().rsplit_once(':').map_or("", |(_, p)| p).to_string();
    let template = EnvoyTemplate::load("ext-proc/envoy.yaml").unwrap().set("PORT_EXT_PROC", port);
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    hung_pod_is_caught(&envoy, &sims, "shim");
    let metrics = Request::get("/metrics").send(shim.addr("http")).unwrap().text();
    let count = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    assert!(count("epp_shim_first_byte_timeouts_total") >= 1, "{metrics}");
    assert!(count("epp_shim_endpoint_ejections_total") >= 1, "{metrics}");
}
