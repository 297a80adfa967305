use super::*;
use crate::host::fake::FakeHost;
use scheduler_core::config::objectives::ObjectivePriorities;
use scheduler_core::model::PoolSnapshot;
use scheduler_core::model_rewrite::ModelRewrites;

const CONFIG: &str = r#"{"pool": {"name": "p", "endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"]},
    "collector": {"intervalMs": 50, "timeoutMs": 200, "cluster": "scrape"}}"#;

fn vllm(waiting: u32, kv: f64) -> Vec<u8> {
    format!(
        "vllm:num_requests_waiting {waiting}\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc {kv}\n"
    )
    .into_bytes()
}

fn setup(config: &str) -> (FakeHost, Keys, Collector, Stats) {
    let host = FakeHost::default();
    host.set_now(1_000_000);
    let c = Collector::new(&GatewayConfig::from_json(config).unwrap());
    (host, Keys::new("p"), c, Stats::default())
}

fn published(host: &FakeHost, keys: &Keys) -> PoolSnapshot {
    snapshot_codec::decode(&host.get(&keys.snapshot).unwrap()).unwrap()
}

fn answer(
    c: &mut Collector,
    host: &FakeHost,
    keys: &Keys,
    stats: &mut Stats,
    token: u32,
    status: Option<u16>,
    body: &[u8],
) {
    assert!(c.owns(token));
    c.on_response(host, keys, token, &CallResponse { status, body }, stats);
}

#[test]
fn scrapes_every_endpoint_and_publishes_when_the_round_is_in() {
    let (host, keys, mut c, mut stats) = setup(CONFIG);
    c.tick(&host, &keys, &mut stats);
    let calls = host.calls();
    assert_eq!(calls.len(), 2);
    let (token, cluster, authority, path, headers) = &calls[0];
    assert_eq!(
        (cluster.as_str(), authority.as_str(), path.as_str()),
        ("scrape", "10.0.0.1:8000", "/metrics")
    );
    assert_eq!(headers, &[("x-envoy-original-dst-host".to_string(), "10.0.0.1:8000".to_string())]);
    answer(&mut c, &host, &keys, &mut stats, *token, Some(200), &vllm(3, 0.5));
    assert!(host.get(&keys.snapshot).is_none(), "waits for the whole round");
    answer(&mut c, &host, &keys, &mut stats, calls[1].0, Some(200), &vllm(0, 0.1));
    let s = published(&host, &keys);
    assert_eq!(s.generation, 1);
    assert_eq!(s.published_at_ms, 1_000_000);
    assert_eq!(s.endpoints[0].metrics.as_ref().unwrap().waiting, 3);
    assert_eq!(s.endpoints[1].metrics.as_ref().unwrap().kv_usage, 0.1);
    assert_eq!(host.get(&keys.generation).unwrap(), 1u64.to_le_bytes());
    assert_eq!(host.metric(stats::SNAPSHOTS_PUBLISHED), 1);
}

#[test]
fn failed_scrapes_mark_endpoints_and_keep_their_last_metrics() {
    let (host, keys, mut c, mut stats) = setup(CONFIG);
    c.tick(&host, &keys, &mut stats);
    let first = host.calls();
    answer(&mut c, &host, &keys, &mut stats, first[0].0, Some(200), &vllm(3, 0.5));
    answer(&mut c, &host, &keys, &mut stats, first[1].0, Some(200), &vllm(1, 0.5));
    host.advance(50);
    c.tick(&host, &keys, &mut stats);
    let second = &host.calls()[2..];
    // Garbage from one endpoint, a timeout (Envoy answers 504) from the other.
    answer(&mut c, &host, &keys, &mut stats, second[0].0, Some(200), b"<html>oops</html>");
    answer(&mut c, &host, &keys, &mut stats, second[1].0, Some(504), b"upstream request timeout");
    let s = published(&host, &keys);
    assert_eq!(s.generation, 2);
    assert_eq!(s.endpoints[0].consecutive_scrape_failures, 1);
    assert_eq!(s.endpoints[0].metrics.as_ref().unwrap().waiting, 3, "old metrics kept, aging");
    assert_eq!(s.endpoints[1].consecutive_scrape_failures, 1);
    assert_eq!(host.metric(stats::SCRAPE_ERRORS), 2);
    // A reset without a response counts too; a good scrape clears the count.
    host.advance(50);
    c.tick(&host, &keys, &mut stats);
    let third = &host.calls()[4..];
    answer(&mut c, &host, &keys, &mut stats, third[0].0, None, b"");
    answer(&mut c, &host, &keys, &mut stats, third[1].0, Some(200), &vllm(0, 0.0));
    let s = published(&host, &keys);
    assert_eq!(s.endpoints[0].consecutive_scrape_failures, 2);
    assert_eq!(s.endpoints[1].consecutive_scrape_failures, 0);
}

#[test]
fn an_endpoint_still_being_scraped_is_not_scraped_again_and_lost_answers_expire() {
    let (host, keys, mut c, mut stats) = setup(CONFIG);
    c.tick(&host, &keys, &mut stats);
    let first = host.calls();
    answer(&mut c, &host, &keys, &mut stats, first[0].0, Some(200), &vllm(0, 0.0));
    host.advance(50);
    c.tick(&host, &keys, &mut stats);
    // Endpoint 1 answered, endpoint 2 did not: only endpoint 1 is scraped again, and the tick published.
    assert_eq!(host.calls().len(), 3);
    assert_eq!(host.calls()[2].2, "10.0.0.1:8000");
    assert_eq!(published(&host, &keys).generation, 1);
    // Never answered (timeout 200 ms: the backstop is 2 x timeout + interval).
    host.advance(451);
    c.tick(&host, &keys, &mut stats);
    assert!(!c.owns(first[1].0));
    assert_eq!(published(&host, &keys).endpoints[1].consecutive_scrape_failures, 1);
}

#[test]
fn an_idle_collector_republishes_to_stay_fresh() {
    let (host, keys, mut c, mut stats) = setup(
        r#"{"pool": {"name": "p", "endpoints": ["10.0.0.1:8000"]},
        "limits": {"snapshotMaxAgeMs": 1000}, "collector": {"timeoutMs": 5000}}"#,
    );
    c.tick(&host, &keys, &mut stats);
    answer(&mut c, &host, &keys, &mut stats, host.calls()[0].0, Some(200), &vllm(0, 0.0));
    assert_eq!(published(&host, &keys).generation, 1);
    c.tick(&host, &keys, &mut stats); // scrape 2 starts and hangs
    host.advance(249);
    c.tick(&host, &keys, &mut stats);
    assert_eq!(published(&host, &keys).generation, 1);
    host.advance(1);
    c.tick(&host, &keys, &mut stats);
    let s = published(&host, &keys);
    assert_eq!((s.generation, s.published_at_ms), (2, 1_000_250));
}

#[test]
fn discovery_publishes_the_served_snapshot_and_refuses_garbage() {
    let (host, keys, mut c, mut stats) =
        setup(r#"{"pool": {"name": "p", "discoveryUrl": "http://collector.epp:9090/v1/snapshot"}}"#);
    c.tick(&host, &keys, &mut stats);
    let (token, cluster, authority, path, headers) = host.calls()[0].clone();
    assert_eq!(
        (cluster.as_str(), authority.as_str(), path.as_str()),
        ("collector.epp", "collector.epp:9090", "/v1/snapshot")
    );
    assert_eq!(
        headers,
        &[("x-epp-snapshot-version".to_string(), snapshot_codec::FORMAT_VERSION.to_string())],
        "the poll asks for the newest format this build reads (the pool's Kubernetes resources need 2)"
    );
    c.tick(&host, &keys, &mut stats);
    assert_eq!(host.calls().len(), 1, "one poll at a time");
    let served =
        snapshot_codec::encode(&PoolSnapshot { generation: 77, pool: "p".into(), ..Default::default() });
    answer(&mut c, &host, &keys, &mut stats, token, Some(200), &served);
    assert_eq!(host.get(&keys.snapshot).unwrap(), served);
    assert_eq!(host.get(&keys.generation).unwrap(), 1u64.to_le_bytes());
    c.tick(&host, &keys, &mut stats);
    answer(&mut c, &host, &keys, &mut stats, host.calls()[1].0, Some(200), b"not a snapshot");
    assert_eq!(host.get(&keys.generation).unwrap(), 1u64.to_le_bytes(), "garbage is never published");
    assert_eq!(host.metric(stats::SCRAPE_ERRORS), 1);
    // A version-2 snapshot (the pool's objectives and rewrites) is published as served, and reads back.
    let resources = scheduler_core::model::PoolResources {
        objectives: ObjectivePriorities::from_json(r#"[{"name": "batch", "priority": -1}]"#).unwrap(),
        rewrites: ModelRewrites::from_json(r#"[{"rules": [{"targets": [{"modelRewrite": "m-v2"}]}]}]"#)
            .unwrap(),
    };
    let v2 = snapshot_codec::encode(&PoolSnapshot { generation: 78, resources, ..Default::default() });
    assert_eq!(snapshot_codec::peek_version(&v2), Some(2));
    c.tick(&host, &keys, &mut stats);
    answer(&mut c, &host, &keys, &mut stats, host.calls()[2].0, Some(200), &v2);
    assert_eq!(host.get(&keys.snapshot).unwrap(), v2);
    assert_eq!(published(&host, &keys).resources.objectives.get("batch"), Some(-1));
}

#[test]
fn a_new_leader_continues_from_the_published_snapshot() {
    let (host, keys, mut old, mut stats) = setup(CONFIG);
    old.tick(&host, &keys, &mut stats);
    for (t, ..) in host.calls() {
        answer(&mut old, &host, &keys, &mut stats, t, Some(200), &vllm(9, 0.9));
    }
    let mut new = Collector::new(&GatewayConfig::from_json(CONFIG).unwrap());
    new.adopt_published(&host, &keys);
    host.advance(50);
    new.tick(&host, &keys, &mut stats);
    let calls = host.calls();
    answer(&mut new, &host, &keys, &mut stats, calls[2].0, Some(500), b"");
    answer(&mut new, &host, &keys, &mut stats, calls[3].0, Some(500), b"");
    let s = published(&host, &keys);
    assert_eq!(s.generation, 2);
    assert_eq!(s.endpoints[0].metrics.as_ref().unwrap().waiting, 9);
    assert_eq!(s.endpoints[0].consecutive_scrape_failures, 1);
}
