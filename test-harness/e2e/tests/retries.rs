//! Retries where they are safe, with the real Envoy 1.40 and the shipped bootstraps: a request whose
//! connection to its pod fails is retried on another pool member, and nothing that reached a model
//! server is ever sent again (see envoy-config/README.md, "Retries").
//!
//! - `wasm-picker-override-host/` with the picker listing a fallback (`routing.maxEndpoints` 2 and the
//!   picker plugin's `maxNumOfEndpoints` 2): a replica is killed while the picker still routes to it; the
//!   requests that go to it first are retried on the fallback, and the client sees no failure.
//! - The same without a fallback list: the retry goes to override_host's least-request fallback, which
//!   the `previous_hosts` predicate keeps off the dead replica.
//! - A stream that has started and is then cut is not replayed; a request reset after it reached its
//!   replica is not replayed either, even when the client asks for retries with Envoy's headers.
//! - `round-robin/`: retries around a dead replica, then outlier detection or the `/health` checks take
//!   it out of rotation.
//!
//! Replicas are stopped by dropping their [`ModelSim`] (the test's own child process). Without Envoy every
//! test skips with a notice.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, ModelSim, Request, Response};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SERVED: &str = "x-gateway-destination-endpoint-served";

/// `n` fast replicas (time 20x faster than real) with `extra` flags.
fn start_sims(n: usize, extra: &[&str]) -> Vec<ModelSim> {
    let args: Vec<&str> =
        ["--time-scale", "0.05", "--default-output-tokens", "8"].iter().chain(extra).copied().collect();
    (0..n).map(|_| ModelSim::start(&args).unwrap()).collect()
}

fn addrs(sims: &[ModelSim]) -> Vec<String> {
    sims.iter().map(|s| s.addr().to_string()).collect()
}

/// The picker routes on prefix affinity alone, so which replica a request goes to first is known: the
/// one that served the same long system prompt before (the dead one stays first until the picker stops
/// trusting it). Scrapes every 3 s: after a kill right after a scrape the picker keeps the dead replica's
/// last metrics for seconds, like a real gateway between scrapes. `fallbacks` > 0 lists that many more
/// endpoints in the destination header, in score order.
fn affinity_config(pool: &[String], fallbacks: usize) -> String {
    let n = fallbacks + 1;
    json!({
        "pool": {"name": "retries", "endpoints": pool},
        "collector": {"intervalMs": 3000, "timeoutMs": 500},
        "plugins": [
            {"type": "prefix-cache-scorer"},
            {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": n}},
        ],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}]}],
        "routing": {"maxEndpoints": n},
    })
    .to_string()
}

fn start_override_host(wasm: &Path, config: &str, pool: &[String]) -> Envoy {
    let pool: Vec<&str> = pool.iter().map(String::as_str).collect();
    let template = EnvoyTemplate::load("wasm-picker-override-host/envoy.yaml")
        .unwrap()
        .wasm(wasm)
        .gateway_config(config)
        .pool_endpoints(&pool);
    Envoy::start(&template, &EnvoyOptions::default()).unwrap()
}

/// Waits until the collector has finished another scrape of every one of `replicas` (Envoy counts the
/// scrapes it proxies on the `epp-metrics` cluster), so the picker's snapshot is fresh.
fn wait_for_scrape_round(envoy: &Envoy, replicas: u64) {
    let scrapes = || envoy.stat("cluster.epp-metrics.upstream_rq_completed").unwrap_or(0);
    let target = scrapes() + replicas;
    let deadline = Instant::now() + Duration::from_secs(15);
    while scrapes() < target {
        assert!(Instant::now() < deadline, "no scrape round within 15 s ({} of {target})", scrapes());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A chat request sharing `system` (about 6 KB, enough blocks for the prefix scorer).
fn chat(system: &str, question: &str) -> Request {
    Request::post_json(
        "/v1/chat/completions",
        json!({"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": question}]})
        .to_string(),
    )
    .timeout(Duration::from_secs(20))
}

fn system_prompt() -> String {
    "You are the support assistant of an airline. Answer with care and cite the policy. ".repeat(75)
}

fn served(r: &Response) -> String {
    r.header(SERVED).unwrap_or("<none>").to_string()
}

/// Envoy's retry counters for the `pool` cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RetryStats {
    /// Requests Envoy sent to a model server, retries included (a refused connection sends none).
    sent: u64,
    retries: u64,
    /// Retried requests whose retry got a response Envoy did not retry again.
    retry_successes: u64,
    connect_failures: u64,
}

impl RetryStats {
    fn read(envoy: &Envoy) -> RetryStats {
        let stat = |name: &str| envoy.stat(&format!("cluster.pool.{name}")).unwrap_or(0);
        RetryStats {
            sent: stat("upstream_rq_total"),
            retries: stat("upstream_rq_retry"),
            retry_successes: stat("upstream_rq_retry_success"),
            connect_failures: stat("upstream_cx_connect_fail"),
        }
    }

    fn since(self, before: RetryStats) -> RetryStats {
        RetryStats {
            sent: self.sent - before.sent,
            retries: self.retries - before.retries,
            retry_successes: self.retry_successes - before.retry_successes,
            connect_failures: self.connect_failures - before.connect_failures,
        }
    }
}

/// One sample of a replica's own /metrics (counters and gauges have one sample each here).
fn sample(sim: &ModelSim, name: &str) -> f64 {
    let text = sim.metrics().unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or_else(|| panic!("{}: no {name} in its /metrics", sim.replica()))
}

/// Requests a replica has started generating for: its time-to-first-token observations.
fn started_generations(sim: &ModelSim) -> f64 {
    sample(sim, "vllm:time_to_first_token_seconds_count")
}

/// Sends `n` requests from `threads` client threads at once; every reply, in no particular order.
fn burst(
    envoy: &Envoy,
    n: usize,
    threads: usize,
    request: impl Fn(usize) -> Request + Sync,
) -> Vec<Response> {
    let listener = envoy.listener();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let request = &request;
                s.spawn(move || {
                    (t..n).step_by(threads).map(|i| request(i).send(listener)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).map(|r| r.unwrap()).collect()
    })
}

/// Starts `replicas` replicas and the override_host gateway (the picker listing `fallbacks` more
/// endpoints), makes the picker stick a system prompt to one replica, kills that replica right after a
/// scrape and returns (gateway, the survivors, the dead replica's address).
fn gateway_with_a_freshly_dead_favourite(
    wasm: &Path,
    replicas: usize,
    fallbacks: usize,
) -> (Envoy, Vec<ModelSim>, String) {
    let mut sims = start_sims(replicas, &[]);
    let pool = addrs(&sims);
    let envoy = start_override_host(wasm, &affinity_config(&pool, fallbacks), &pool);
    wait_for_scrape_round(&envoy, replicas as u64);

    let system = system_prompt();
    let first = envoy.send(&chat(&system, "warm-up 0")).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let favourite = served(&first);
    for i in 1..3 {
        let r = envoy.send(&chat(&system, &format!("warm-up {i}"))).unwrap();
        assert_eq!((r.status, served(&r)), (200, favourite.clone()), "the prompt should stick: {}", r.text());
    }

    // Right after a scrape, so the picker keeps its last (healthy-looking) metrics for the next seconds.
    wait_for_scrape_round(&envoy, replicas as u64);
    let dead = sims.iter().position(|s| s.addr() == favourite).expect("the favourite is a replica");
    drop(sims.remove(dead));
    // Envoy closes its idle connections to the dead replica as their FIN arrives.
    std::thread::sleep(Duration::from_millis(200));
    (envoy, sims, favourite)
}

#[test]
fn a_dead_primary_is_retried_on_the_pickers_fallback_and_no_client_sees_it() {
    let wasm = require!(filter);
    let (envoy, survivors, dead) = gateway_with_a_freshly_dead_favourite(&wasm, 2, 1);
    let survivor = survivors[0].addr().to_string();

    let before = RetryStats::read(&envoy);
    let started = Instant::now();
    let system = system_prompt();
    let n = 12;
    let replies = burst(&envoy, n, 4, |i| chat(&system, &format!("question {i}")));
    let took = started.elapsed();
    let delta = RetryStats::read(&envoy).since(before);
    eprintln!("{n} requests in {took:?} after the kill: {delta:?}");

    for r in &replies {
        assert_eq!(r.status, 200, "a client saw the failure: {}", r.text());
        assert_eq!(served(r), survivor, "served by the survivor");
    }
    // The picker put the dead replica first (its prompt is cached there) until the refusals Envoy retried
    // elsewhere ejected it (3 gateway failures): each of those was refused once and retried once, on the
    // fallback, successfully (a pooled connection to it may also reset before the request was sent, which
    // is retried too); the rest went to the survivor directly.
    assert!(delta.connect_failures >= 1, "refused connections to {dead}: {delta:?}");
    assert!(delta.retries < n as u64, "the picker never learnt: {delta:?}");
    assert!(delta.retries >= delta.connect_failures, "{delta:?}");
    assert_eq!(delta.retry_successes, delta.retries, "{delta:?}");
    assert_eq!(delta.sent, n as u64, "each reached one replica, once: {delta:?}");
}

#[test]
fn without_a_fallback_list_the_retry_goes_to_another_member_by_least_request() {
    let wasm = require!(filter);
    // The picker names one endpoint (the default): past it, override_host's least-request fallback picks,
    // and the previous_hosts predicate keeps it off the replica that just refused.
    let (envoy, survivors, dead) = gateway_with_a_freshly_dead_favourite(&wasm, 3, 0);
    let survivors: Vec<String> = addrs(&survivors);

    let before = RetryStats::read(&envoy);
    let system = system_prompt();
    let n = 12;
    for i in 0..n {
        let r = envoy.send(&chat(&system, &format!("question {i}"))).unwrap();
        assert_eq!(r.status, 200, "a client saw the failure: {}", r.text());
        assert!(survivors.contains(&served(&r)), "served by {} (dead: {dead})", served(&r));
    }
    let delta = RetryStats::read(&envoy).since(before);
    eprintln!("{n} requests without a fallback list: {delta:?}");
    // Requests went to the dead replica first until the retried refusals ejected it (sequential requests:
    // the third one trips it), each ending on a successful retry elsewhere; the rest went elsewhere first.
    assert_eq!(delta.retry_successes, delta.retries, "{delta:?}");
    assert_eq!(delta.retries, delta.connect_failures, "only refused connections were retried: {delta:?}");
    assert!((1..=3).contains(&delta.retries), "{delta:?}");
    assert_eq!(delta.sent, n as u64, "each reached one replica, once: {delta:?}");
}

#[test]
fn a_stream_cut_after_it_started_is_not_replayed() {
    let wasm = require!(filter);
    // Every replica cuts its SSE streams after 3 chunks; the picker lists a fallback, which must stay
    // unused.
    let sims = start_sims(2, &["--drop-after-chunks", "3"]);
    let pool = addrs(&sims);
    let envoy = start_override_host(&wasm, &affinity_config(&pool, 1), &pool);
    wait_for_scrape_round(&envoy, 2);

    let body = json!({"model": MODEL, "max_tokens": 40, "stream": true,
                      "messages": [{"role": "user", "content": "tell me a long story"}]});
    let r = envoy
        .send(&Request::post_json("/v1/chat/completions", body.to_string()).timeout(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.truncated, "the client should see the cut: {}", r.text());
    let data = r.sse_data();
    assert!(!data.is_empty() && !data.iter().any(|d| d == "[DONE]"), "{data:?}");

    let stats = RetryStats::read(&envoy);
    assert_eq!((stats.sent, stats.retries), (1, 0), "sent once, never retried: {stats:?}");
    let generations: Vec<f64> = sims.iter().map(started_generations).collect();
    assert_eq!(generations.iter().sum::<f64>(), 1.0, "one generation in all: {generations:?}");
}

#[test]
fn a_request_reset_after_it_reached_its_replica_is_not_replayed_even_when_the_client_asks() {
    let wasm = require!(filter);
    let mut sims = start_sims(2, &[]);
    let pool = addrs(&sims);
    let envoy = start_override_host(&wasm, &affinity_config(&pool, 1), &pool);
    wait_for_scrape_round(&envoy, 2);

    // A long generation (~1.6 s here); the client asks Envoy to retry resets and 5xx, which the
    // gateway must not honour (Envoy strips these headers from clients it does not trust).
    let request = Request::post_json(
        "/v1/completions",
        json!({"model": MODEL, "prompt": "a long answer please", "max_tokens": 4000}).to_string(),
    )
    .header("x-envoy-retry-on", "reset,5xx,gateway-error,connect-failure")
    .header("x-envoy-max-retries", "3")
    .timeout(Duration::from_secs(30));
    let listener = envoy.listener().to_string();
    let client = std::thread::spawn(move || request.send(&listener));

    // Kill the replica generating it, mid-generation.
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = loop {
        if let Some(i) = sims.iter().position(|s| sample(s, "vllm:num_requests_running") >= 1.0) {
            break i;
        }
        assert!(Instant::now() < deadline, "no replica started the request within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(sims.remove(busy));
    let r = client.join().unwrap().unwrap();
    let survivor = &sims[0];

    assert_eq!(r.status, 503, "the reset is the client's answer: {}", r.text());
    let stats = RetryStats::read(&envoy);
    assert_eq!((stats.sent, stats.retries), (1, 0), "not retried: {stats:?}");
    assert_eq!(started_generations(survivor), 0.0, "the survivor never saw it");
    assert_eq!(sample(survivor, "vllm:prompt_tokens_total"), 0.0);
}

#[test]
fn round_robin_retries_around_a_dead_replica_until_outlier_detection_or_health_checks_remove_it() {
    require!(envoy);
    let mut sims = start_sims(3, &[]);
    let pool = addrs(&sims);
    let template = EnvoyTemplate::load("round-robin/envoy.yaml")
        .unwrap()
        .pool_endpoints(&pool.iter().map(String::as_str).collect::<Vec<_>>());
    let envoy = Envoy::start(&template, &EnvoyOptions::default()).unwrap();
    let completion = |i: usize| {
        Request::post_json(
            "/v1/completions",
            json!({"model": MODEL, "prompt": format!("hello {i}"), "max_tokens": 4}).to_string(),
        )
        .timeout(Duration::from_secs(20))
    };
    for i in 0..6 {
        assert_eq!(envoy.send(&completion(i)).unwrap().status, 200);
    }

    let dead = sims[1].addr().to_string();
    drop(sims.remove(1));
    std::thread::sleep(Duration::from_millis(200));
    let before = RetryStats::read(&envoy);
    let n = 12;
    for i in 0..n {
        let r = envoy.send(&completion(i)).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let delta = RetryStats::read(&envoy).since(before);
    eprintln!("round-robin, {n} requests after the kill: {delta:?}");
    assert!(delta.retries >= 1, "round-robin sent some to {dead} first: {delta:?}");
    assert_eq!(delta.retry_successes, delta.retries, "{delta:?}");
    assert_eq!(delta.sent, n as u64, "each reached one replica, once: {delta:?}");

    // Three refused connections in a row eject it (or two failed /health checks mark it): then it gets
    // no first attempts, and nothing is retried any more.
    let flags = |envoy: &Envoy| {
        let text =
            Request::get("/clusters").timeout(Duration::from_secs(5)).send(envoy.admin()).unwrap().text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("pool::{dead}::health_flags::")).map(str::to_string))
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(flags(&envoy).contains("failed_outlier_check") || flags(&envoy).contains("failed_active_hc")) {
        assert!(Instant::now() < deadline, "{dead} still in rotation after 15 s: {:?}", flags(&envoy));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{dead} out of rotation: {}", flags(&envoy));
    let before = RetryStats::read(&envoy);
    for i in 0..n {
        assert_eq!(envoy.send(&completion(i)).unwrap().status, 200);
    }
    let delta = RetryStats::read(&envoy).since(before);
    assert_eq!((delta.retries, delta.sent), (0, n as u64), "{delta:?}");
}
