use super::*;
use crate::host::fake::FakeHost;
use scheduler_core::model::{Endpoint, EndpointState, Metrics};
use scheduler_core::shared_state::InFlightTable;
use scheduler_core::snapshot_codec;

const NOW: u64 = 1_000_000;
/// Only the in-flight (gateway-counted) requests decide.
const ACTIVE: &str = r#"{"plugins": [{"type": "active-request-scorer"}, {"type": "max-score-picker"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "active-request-scorer"}, {"pluginRef": "max-score-picker"}]}]}"#;
const CHAT: &[u8] = br#"{"model": "m", "messages": [{"role": "user", "content": "hello"}]}"#;

fn info(request_id: &str) -> RequestInfo<'_> {
    RequestInfo { path: "/v1/chat/completions", request_id, ..RequestInfo::default() }
}

/// Publishes endpoints `10.0.0.{i+1}:8000` with the given queues, fresh at `NOW`.
fn publish(host: &FakeHost, keys: &Keys, generation: u64, waiting: &[u32]) {
    let endpoints = waiting
        .iter()
        .enumerate()
        .map(|(i, &w)| EndpointState {
            metrics: Some(Metrics { waiting: w, kv_usage: 0.1, updated_at_ms: NOW, ..Metrics::default() }),
            ..EndpointState::new(Endpoint::new(format!("10.0.0.{}:8000", i + 1)))
        })
        .collect();
    let s = PoolSnapshot {
        generation,
        published_at_ms: NOW,
        pool: "default".into(),
        endpoints,
        ..PoolSnapshot::default()
    };
    host.put(&keys.snapshot, &snapshot_codec::encode(&s));
    host.put(&keys.generation, &generation.to_le_bytes());
}

fn worker(host: &FakeHost, config: &str) -> Worker {
    let mut w = Worker::new(GatewayConfig::from_json(config).unwrap()).unwrap();
    w.start(host);
    w
}

fn destination(o: &Outcome) -> &str {
    match o {
        Outcome::Route(r) => &r.destination,
        Outcome::FailOpen { route: Some(r), .. } => &r.destination,
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn routes_on_published_metrics_and_counts_in_flight_until_finish() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, "");
    publish(&host, w.keys(), 1, &[5, 0, 5]);
    let (o, routed, _) = w.decide(&host, &info("a"), Some(CHAT));
    assert_eq!(destination(&o), "10.0.0.2:8000");
    let routed = routed.unwrap();
    assert_eq!(w.local_in_flight(), vec![("10.0.0.2:8000".to_string(), 1)]);
    // Alone, the worker leaves its table in shared data to the heartbeat.
    let key = w.keys().inflight(w.id().unwrap());
    let published = || InFlightTable::decode(&host.get(&key).unwrap()).unwrap();
    assert!(published().is_empty());
    w.finish(&host, &routed);
    assert!(w.local_in_flight().is_empty());
    assert_eq!(host.metric(stats::DECISIONS_ROUTED), 1);
    // New metrics: routing follows them (the generation is read at most once per millisecond).
    publish(&host, w.keys(), 2, &[0, 9, 9]);
    host.advance(1);
    assert_eq!(destination(&w.decide(&host, &info("b"), Some(CHAT)).0), "10.0.0.1:8000");
}

#[test]
fn another_workers_in_flight_steers_the_pick() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let config = ACTIVE;
    let mut a = worker(&host, config);
    let mut b = worker(&host, config);
    publish(&host, a.keys(), 1, &[0, 0]);
    // b announced itself when it joined; a hears it on its queue before routing.
    let queue_a = host.queue_resolve(&a.keys().prefix_queue(a.id().unwrap())).unwrap().unwrap();
    assert!(a.on_queue_ready(&host, queue_a));
    // (Hearing of b, a wrote its table; writes are at most one per millisecond.)
    host.advance(1);
    let (first, _, _) = a.decide(&host, &info("x"), Some(CHAT));
    let busy = destination(&first).to_string();
    // With another worker listed, the table is written as the request starts.
    let published = InFlightTable::decode(&host.get(&a.keys().inflight(a.id().unwrap())).unwrap()).unwrap();
    assert_eq!(published.iter().count(), 1);
    // Worker b has routed nothing itself, yet avoids the endpoint a has a request in flight on.
    for id in ["y", "z", "w"] {
        let (o, routed, _) = b.decide(&host, &info(id), Some(CHAT));
        assert_ne!(destination(&o), busy);
        b.finish(&host, &routed.unwrap());
    }
}

#[test]
fn prefixes_routed_by_one_worker_are_learned_by_the_other() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let config = r#"{"plugins": [{"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 4}}, {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}]}]}"#;
    let mut a = worker(&host, config);
    let mut b = worker(&host, config);
    publish(&host, a.keys(), 1, &[0, 0, 0, 0]);
    // b announced itself when it joined; a's thread hears it on its queue.
    let queue_a = host.queue_resolve(&a.keys().prefix_queue(a.id().unwrap())).unwrap().unwrap();
    assert!(a.on_queue_ready(&host, queue_a));
    a.decide(&host, &info("warm"), Some(CHAT)); // learns who is alive
    let queue = host.queue_resolve(&b.keys().prefix_queue(b.id().unwrap())).unwrap().unwrap();
    b.on_queue_ready(&host, queue);
    let mut picks = Vec::new();
    for i in 0..8 {
        let body = format!(
            r#"{{"model": "m", "messages": [{{"content": "{i}: a conversation whose prompt spans several blocks", "role": "user"}}]}}"#
        );
        let (o, _, _) = a.decide(&host, &info(&format!("a{i}")), Some(body.as_bytes()));
        picks.push((body, destination(&o).to_string()));
    }
    let spread: std::collections::BTreeSet<&String> = picks.iter().map(|(_, d)| d).collect();
    assert!(spread.len() > 1, "distinct prompts spread over the tied endpoints: {picks:?}");
    // Eight decisions in one millisecond: the first went out at once, the rest wait for the next send,
    // here the heartbeat (a later decision or stream end would do too).
    a.on_tick(&host);
    assert!(b.on_queue_ready(&host, queue));
    assert!(!b.on_queue_ready(&host, queue + 100), "not b's queue");
    for (i, (body, dest)) in picks.iter().enumerate() {
        let (o, _, _) = b.decide(&host, &info(&format!("b{i}")), Some(body.as_bytes()));
        assert_eq!(destination(&o), dest, "prompt {i}");
    }
}

#[test]
fn no_snapshot_fails_open_round_robin_over_configured_endpoints() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, r#"{"pool": {"endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"]}}"#);
    let picks: Vec<String> = (0..4)
        .map(|i| destination(&w.decide(&host, &info(&i.to_string()), Some(CHAT)).0).to_string())
        .collect();
    assert_eq!(picks, ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.1:8000", "10.0.0.2:8000"]);
    assert_eq!(host.metric(stats::FALLBACK_NO_SNAPSHOT), 4);
    assert_eq!(host.metric(stats::DECISIONS_FAIL_OPEN), 4);
    assert_eq!(w.local_in_flight().len(), 2, "blind routes are counted in flight too");
}

#[test]
fn stale_snapshot_fails_closed_when_configured() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, r#"{"failureMode": "FailClose", "limits": {"snapshotMaxAgeMs": 100}}"#);
    publish(&host, w.keys(), 1, &[0]);
    host.advance(101);
    let (o, routed, _) = w.decide(&host, &info("a"), Some(CHAT));
    let Outcome::Reply(r) = o else { panic!("expected a reply, got {o:?}") };
    assert_eq!(r.status, 503);
    assert!(routed.is_none());
    assert_eq!(host.metric(stats::FALLBACK_STALE_SNAPSHOT), 1);
    assert_eq!(host.metric(stats::UNAVAILABLE), 1);
    // A bad body is a 400 whatever the metrics, and not a fallback.
    w.decide(&host, &info("b"), Some(b"{"));
    assert_eq!(host.metric(stats::FALLBACK_STALE_SNAPSHOT), 1);
    assert_eq!(host.metric(stats::PARSE_ERRORS), 1);
}

#[test]
fn replies_are_counted_by_kind() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, r#"{"limits": {"maxBodyBytes": 100}}"#);
    publish(&host, w.keys(), 1, &[0]);
    let (o, _, _) = w.decide(&host, &info("a"), Some(b"not json"));
    assert!(matches!(o, Outcome::Reply(Reply { status: 400, .. })));
    w.count_reply(&host, &scheduler_core::endpoint_picker::body_too_large(100));
    assert_eq!((host.metric(stats::PARSE_ERRORS), host.metric(stats::BODY_TOO_LARGE)), (1, 1));
}

#[test]
fn heartbeat_relists_a_pruned_worker() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, "");
    let id = w.id().unwrap();
    crate::worker_directory::prune(&host, w.keys(), &[id]).unwrap();
    w.on_tick(&host);
    assert!(
        crate::worker_directory::read(&host, w.keys()).unwrap().is_empty(),
        "checked with the heartbeat only"
    );
    host.advance(crate::inflight::HEARTBEAT_MS);
    w.on_tick(&host);
    assert_eq!(crate::worker_directory::read(&host, w.keys()).unwrap(), vec![id]);
}

#[test]
fn seeds_follow_the_request_id_alone_unless_it_is_missing() {
    // Same id on two VMs (or in the shim) after different numbers of decisions: same seed.
    assert_eq!(seed_for("abc", 1), request_seed("abc"));
    assert_eq!(seed_for("abc", 1), seed_for("abc", 977));
    // Without an id, consecutive decisions still draw differently.
    assert_ne!(seed_for("", 1), seed_for("", 2));
}

/// Worker a routes once (reading the directory then), then worker b joins and keeps a request in flight:
/// the host, a, and the address b's request is on.
fn late_joiner_with_a_request_in_flight() -> (FakeHost, Worker, String) {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut a = worker(&host, ACTIVE);
    publish(&host, a.keys(), 1, &[0, 0]);
    let (o, routed, _) = a.decide(&host, &info("first"), Some(CHAT));
    assert!(matches!(o, Outcome::Route(_)));
    a.finish(&host, &routed.unwrap());
    let mut b = worker(&host, ACTIVE);
    host.advance(1);
    let (first, _, _) = b.decide(&host, &info("b"), Some(CHAT));
    (host, a, destination(&first).to_string())
}

#[test]
fn a_worker_that_joins_later_is_counted_after_one_heartbeat_period() {
    let (host, mut a, busy) = late_joiner_with_a_request_in_flight();
    // a read the directory before b joined: b's counts are not visible yet...
    let seen_now: Vec<String> = (0..8)
        .map(|i| {
            let (o, r, _) = a.decide(&host, &info(&format!("early{i}")), Some(CHAT));
            a.finish(&host, &r.unwrap());
            destination(&o).to_string()
        })
        .collect();
    assert!(seen_now.contains(&busy), "ties alternate over both endpoints: {seen_now:?}");
    // ...and are once the directory is due again (the heartbeat period).
    host.advance(HEARTBEAT_MS);
    for i in 0..4 {
        let (o, r, _) = a.decide(&host, &info(&format!("late{i}")), Some(CHAT));
        a.finish(&host, &r.unwrap());
        assert_ne!(destination(&o), busy);
    }
}

#[test]
fn the_heartbeat_reports_the_snapshot_age() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, "");
    publish(&host, w.keys(), 1, &[0]);
    w.decide(&host, &info("a"), Some(CHAT));
    host.advance(HEARTBEAT_MS + 250);
    w.on_tick(&host);
    assert_eq!(host.metric(stats::SNAPSHOT_AGE_MS), i64::try_from(HEARTBEAT_MS + 250).unwrap());
}

#[test]
fn a_worker_that_joins_later_is_counted_as_soon_as_its_announcement_arrives() {
    let (host, mut a, busy) = late_joiner_with_a_request_in_flight();
    let queue_a = host.queue_resolve(&a.keys().prefix_queue(a.id().unwrap())).unwrap().unwrap();
    assert!(a.on_queue_ready(&host, queue_a));
    for i in 0..8 {
        let (o, r, _) = a.decide(&host, &info(&format!("after{i}")), Some(CHAT));
        a.finish(&host, &r.unwrap());
        assert_ne!(destination(&o), busy, "decision {i}");
    }
}

#[test]
fn health_and_age_stats_are_reported_every_second_under_steady_traffic_and_when_idle() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, r#"{"health": {"baseEjectionTimeMs": 5000}}"#);
    publish(&host, w.keys(), 1, &[0, 0]);
    let ejected = stats::endpoint_metric(stats::ENDPOINT_HEALTH, "10.0.0.1:8000");
    // Requests keep the in-flight table busy between ticks (the heartbeat then has nothing to do).
    for step in 0..3u64 {
        host.set_now(NOW + step * 1_000);
        let (_, routed, _) = w.decide(&host, &info(&format!("r{step}")), Some(CHAT));
        w.finish(&host, &routed.unwrap());
        w.on_tick(&host);
    }
    assert_eq!(host.metric(&ejected), 0, "usable");
    // Three gateway failures eject endpoint 1: the next report shows it (2 = ejected), no request needed.
    for _ in 0..3 {
        w.answered(&host, "10.0.0.1:8000", 503);
    }
    host.set_now(NOW + 3_000);
    w.on_tick(&host);
    assert_eq!(host.metric(&ejected), 2);
    assert_eq!(host.metric(stats::SNAPSHOT_AGE_MS), 3_000);
}

const STREAM: &[u8] =
    br#"{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hello"}]}"#;

#[test]
fn streams_that_get_no_headers_in_time_eject_their_endpoint_and_the_other_workers_learn_it() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let config = r#"{"limits": {"snapshotMaxAgeMs": 60000}}"#;
    let mut a = worker(&host, config);
    let mut b = worker(&host, config);
    publish(&host, a.keys(), 1, &[0, 5]);
    // Three streams go to the idle endpoint 1 and are never answered; one is answered in time.
    let mut tickets = Vec::new();
    for i in 0..4 {
        let (o, _, ticket) = a.decide(&host, &info(&format!("s{i}")), Some(STREAM));
        assert_eq!(destination(&o), "10.0.0.1:8000");
        tickets.push(ticket.expect("a routed request has a ticket"));
    }
    a.first_byte(tickets[3], true);
    host.advance(999);
    a.on_tick(&host);
    assert_eq!(host.metric(stats::FIRST_BYTE_TIMEOUTS), 0, "within the bound");
    host.advance(1);
    a.on_tick(&host);
    assert_eq!(host.metric(stats::FIRST_BYTE_TIMEOUTS), 3);
    assert_eq!(host.metric(stats::EJECTIONS), 1);
    // The other worker reads the ejection from shared data and sends its next request elsewhere.
    host.advance(10);
    let (o, _, _) = b.decide(&host, &info("after"), Some(STREAM));
    assert_eq!(destination(&o), "10.0.0.2:8000");
}

#[test]
fn a_request_not_streamed_is_late_only_once_the_server_shows_nothing_running() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, r#"{"limits": {"snapshotMaxAgeMs": 60000}}"#);
    publish(&host, w.keys(), 1, &[0]);
    for i in 0..3 {
        w.decide(&host, &info(&format!("n{i}")), Some(CHAT));
    }
    // The only scrape predates the requests: nothing is known, nothing is counted.
    host.advance(5_000);
    w.on_tick(&host);
    assert_eq!(host.metric(stats::FIRST_BYTE_TIMEOUTS), 0);
    // A later scrape shows them running: generating for long is normal.
    let keys = w.keys().clone();
    let scraped = |generation: u64, running: u32| {
        let m = Metrics { running, updated_at_ms: NOW + 5_000, ..Metrics::default() };
        let e = EndpointState { metrics: Some(m), ..EndpointState::new(Endpoint::new("10.0.0.1:8000")) };
        let s = PoolSnapshot {
            generation,
            published_at_ms: NOW + 5_000,
            pool: "default".into(),
            endpoints: vec![e],
            ..PoolSnapshot::default()
        };
        host.put(&keys.snapshot, &snapshot_codec::encode(&s));
        host.put(&keys.generation, &generation.to_le_bytes());
    };
    scraped(2, 3);
    host.advance(1_000);
    w.on_tick(&host);
    assert_eq!(host.metric(stats::FIRST_BYTE_TIMEOUTS), 0);
    // The server shows nothing running or waiting: it does not have them.
    scraped(3, 0);
    host.advance(1_000);
    w.on_tick(&host);
    assert_eq!(host.metric(stats::FIRST_BYTE_TIMEOUTS), 3);
}

#[test]
fn the_heartbeat_reports_pool_load_over_the_usable_endpoints() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, r#"{"health": {"baseEjectionTimeMs": 5000}}"#);
    publish(&host, w.keys(), 1, &[2, 5]);
    let (_, routed, _) = w.decide(&host, &info("a"), Some(CHAT));
    w.finish(&host, &routed.unwrap());
    host.set_now(NOW + 1_000);
    w.on_tick(&host);
    let pool = |host: &FakeHost| {
        [stats::POOL_READY_ENDPOINTS, stats::POOL_QUEUE_SIZE, stats::POOL_KV_CACHE_PERMILLE]
            .map(|m| host.metric(m))
    };
    assert_eq!(pool(&host), [2, 7, 200]);
    assert_eq!(host.metric(&stats::endpoint_metric(stats::ENDPOINT_QUEUE_SIZE, "10.0.0.2:8000")), 5);
    // An ejected endpoint leaves the pool's load (its queue is still reported on its own).
    for _ in 0..3 {
        w.answered(&host, "10.0.0.1:8000", 503);
    }
    host.set_now(NOW + 2_000);
    w.on_tick(&host);
    assert_eq!(pool(&host), [1, 5, 100]);
    assert_eq!(host.metric(&stats::endpoint_metric(stats::ENDPOINT_QUEUE_SIZE, "10.0.0.1:8000")), 2);
}

#[test]
fn a_routed_prompt_awaits_its_first_token_in_the_published_table_until_released() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut a = worker(&host, "");
    let b = worker(&host, "");
    publish(&host, a.keys(), 1, &[0, 0]);
    let queue_a = host.queue_resolve(&a.keys().prefix_queue(a.id().unwrap())).unwrap().unwrap();
    assert!(a.on_queue_ready(&host, queue_a));
    host.advance(1);
    let (o, routed, _) = a.decide(&host, &info("x"), Some(CHAT));
    let routed = routed.unwrap();
    let Outcome::Route(route) = &o else { panic!("{o:?}") };
    assert!(route.prompt_tokens > 0);
    assert_eq!(routed.awaiting, route.prompt_tokens);
    let key = a.keys().inflight(a.id().unwrap());
    let published = || InFlightTable::decode(&host.get(&key).unwrap()).unwrap().get(&routed.address);
    assert_eq!(published().awaiting_first_token, route.prompt_tokens);
    // The first token: the prompt no longer awaits it, published with the table's next write (here the
    // request's end in the same millisecond, which is not held back by it).
    host.advance(1);
    a.first_token(&routed.address, routed.awaiting);
    assert_eq!(published().awaiting_first_token, route.prompt_tokens, "not written on its own");
    a.finish(&host, &InFlight { awaiting: 0, ..routed.clone() });
    assert_eq!(published(), scheduler_core::model::InFlight::default());
    drop(b);
}

#[test]
fn memory_gauges_follow_the_tables_and_their_bounds() {
    let host = FakeHost::default();
    host.set_now(NOW);
    let mut w = worker(&host, "");
    publish(&host, w.keys(), 1, &[0, 0, 0]);
    let long = |i: usize| {
        format!(r#"{{"model": "m", "prompt": "{}", "max_tokens": 1}}"#, format!("prompt {i} ").repeat(40))
    };
    let mut routed = Vec::new();
    for i in 0..20 {
        let body = long(i);
        let info = RequestInfo { path: "/v1/completions", request_id: "x", ..RequestInfo::default() };
        let (_, r, _) = w.decide(&host, &info, Some(body.as_bytes()));
        routed.push(r.unwrap());
    }
    w.report_memory(&host, 7 * crate::memory::WASM_PAGE_BYTES, &[]);
    let gauge = |t: &str| host.metric(&format!("{}{t}", crate::memory::TABLE_PREFIX));
    assert_eq!(host.metric(crate::memory::WASM_MEMORY_BYTES), 7 * 65_536);
    assert_eq!(gauge("pool_endpoints"), 3);
    assert!(gauge("prefix_entries") >= 20, "every prompt leaves blocks: {}", gauge("prefix_entries"));
    assert!(gauge("prefix_entries") <= gauge("prefix_entries_cap"));
    assert!(gauge("prefix_endpoints") <= gauge("prefix_endpoints_cap"));
    assert!(gauge("inflight_endpoints") >= 1 && gauge("inflight_endpoints") <= 3);
    assert_eq!(gauge("health_awaiting"), 20);
    assert_eq!(gauge("health_awaiting_cap"), scheduler_core::health::MAX_AWAITING as i64);
    for r in &routed {
        w.finish(&host, r);
    }
    // Once per heartbeat: the in-flight table empties when the requests end.
    host.advance(HEARTBEAT_MS);
    w.report_memory(&host, 7 * crate::memory::WASM_PAGE_BYTES, &[]);
    assert_eq!(gauge("inflight_endpoints"), 0);
    w.clear_memory(&host);
    assert_eq!(gauge("prefix_entries"), 0);
    assert_eq!(host.metric(crate::memory::WASM_MEMORY_BYTES), 0);
}
