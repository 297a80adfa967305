use super::*;
use crate::model::{Endpoint, Metrics};
use alloc::format;
use alloc::string::ToString;
use serde_json::{json, Value};

const NOW: u64 = 100_000;

fn addr(i: usize) -> String {
    format!("10.0.0.{i}:8000")
}

/// `n` endpoints scraped at `NOW`.
fn pool(n: usize) -> PoolSnapshot {
    pool_at(n, NOW)
}

/// `n` endpoints scraped at `t`.
fn pool_at(n: usize, t: u64) -> PoolSnapshot {
    let mut p = PoolSnapshot { generation: 1, published_at_ms: t, ..PoolSnapshot::default() };
    for i in 1..=n {
        let m = Metrics { updated_at_ms: t, ..Metrics::default() };
        p.endpoints.push(EndpointState { metrics: Some(m), ..EndpointState::new(Endpoint::new(addr(i))) });
    }
    p
}

fn tracker() -> HealthTracker {
    HealthTracker::new(HealthConfig::default(), 5_000)
}

fn excluded(t: &HealthTracker, p: &PoolSnapshot, now: u64) -> Vec<(String, Unusable)> {
    let x = t.exclusions(p, now);
    x.excluded
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (p.endpoints[i].address().to_string(), v)))
        .collect()
}

#[test]
fn a_healthy_pool_excludes_nothing_and_allocates_nothing() {
    let x = tracker().exclusions(&pool(4), NOW + 10);
    assert_eq!(x, Exclusions::default());
    assert!(!x.is_excluded(0));
}

#[test]
fn failing_scrapes_stale_and_missing_metrics_exclude_an_endpoint() {
    let t = tracker();
    let mut p = pool(8);
    p.endpoints[0].consecutive_scrape_failures = 2;
    p.endpoints[1].consecutive_scrape_failures = 1; // one failure is not yet evidence
    p.endpoints[2].metrics.as_mut().unwrap().updated_at_ms = NOW - 6_000;
    p.endpoints[3].metrics = None;
    assert_eq!(
        excluded(&t, &p, NOW),
        [
            (addr(1), Unusable::ScrapeFailing),
            (addr(3), Unusable::StaleMetrics),
            (addr(4), Unusable::NoMetrics)
        ]
    );
    // `metricsMaxAgeMs` overrides the snapshot limit.
    let strict = HealthConfig { metrics_max_age_ms: Some(500), ..HealthConfig::default() };
    let t = HealthTracker::new(strict, 5_000);
    let mut p = pool(4);
    p.endpoints[3].metrics.as_mut().unwrap().updated_at_ms = NOW + 400;
    assert_eq!(excluded(&t, &p, NOW + 500), []);
    assert_eq!(excluded(&t, &p, NOW + 501).len(), 2, "three are stale: capped at half the pool");
}

#[test]
fn gateway_failures_in_a_row_eject_with_exponential_back_off_and_a_single_trial() {
    let mut t = tracker();
    let p = pool(4);
    let a = addr(2);
    t.record(&a, UpstreamResult::GatewayFailure, NOW);
    t.record(&a, UpstreamResult::GatewayFailure, NOW);
    assert!(excluded(&t, &p, NOW).is_empty(), "two are not three");
    t.record(&a, UpstreamResult::GatewayFailure, NOW);
    assert_eq!(excluded(&t, &p, NOW), [(a.clone(), Unusable::Ejected)]);
    assert_eq!(t.take_events(), [HealthEvent::Ejected { address: a.clone(), for_ms: 1_000 }]);
    assert_eq!(excluded(&t, &p, NOW + 999).len(), 1);
    // Time is up: one trial request may go.
    assert!(excluded(&t, &p, NOW + 1_000).is_empty());
    t.routed(&a, NOW + 1_000);
    assert_eq!(excluded(&t, &p, NOW + 1_001), [(a.clone(), Unusable::Ejected)], "one trial at a time");
    // The trial fails: twice as long.
    t.record(&a, UpstreamResult::GatewayFailure, NOW + 1_010);
    assert_eq!(t.take_events(), [HealthEvent::Ejected { address: a.clone(), for_ms: 2_000 }]);
    assert_eq!(excluded(&t, &p, NOW + 3_009).len(), 1);
    assert!(excluded(&t, &p, NOW + 3_010).is_empty());
    t.routed(&a, NOW + 3_010);
    // The trial succeeds: back.
    t.record(&a, UpstreamResult::Answered, NOW + 3_100);
    assert_eq!(t.take_events(), [HealthEvent::Readmitted { address: a.clone() }]);
    assert!(excluded(&t, &p, NOW + 3_101).is_empty());
    // Failing again soon after (a flapping pod): the back-off goes on growing, it does not restart.
    for _ in 0..3 {
        t.record(&a, UpstreamResult::GatewayFailure, NOW + 4_000);
    }
    assert_eq!(t.take_events(), [HealthEvent::Ejected { address: a.clone(), for_ms: 4_000 }]);
    t.routed(&a, NOW + 8_000);
    t.record(&a, UpstreamResult::Answered, NOW + 8_010);
    // After maxEjectionTimeMs (30 s) without an ejection, it is forgotten.
    for _ in 0..3 {
        t.record(&a, UpstreamResult::GatewayFailure, NOW + 38_010);
    }
    assert_eq!(
        t.take_events(),
        [HealthEvent::Readmitted { address: a.clone() }, HealthEvent::Ejected { address: a, for_ms: 1_000 }]
    );
}

#[test]
fn a_flapping_endpoint_is_ejected_for_longer_each_time_not_at_the_base_period() {
    let mut t = tracker();
    let a = addr(1);
    let mut now = NOW;
    let mut lengths = Vec::new();
    for _ in 0..5 {
        // Three failures, ejected; the trial then succeeds; shortly after it fails again.
        for _ in 0..3 {
            t.record(&a, UpstreamResult::GatewayFailure, now);
        }
        let Some(HealthEvent::Ejected { for_ms, .. }) = t.take_events().pop() else { panic!("not ejected") };
        lengths.push(for_ms);
        now += for_ms;
        t.routed(&a, now);
        t.record(&a, UpstreamResult::Answered, now + 5);
        now += 200;
    }
    assert_eq!(lengths, [1_000, 2_000, 4_000, 8_000, 16_000]);
    // A healthy endpoint that never failed keeps no record.
    t.record(&addr(2), UpstreamResult::Answered, now);
    assert_eq!(t.ejections().count(), 0);
}

#[test]
fn back_off_stops_at_the_longest_ejection_and_an_unanswered_trial_is_given_up() {
    let config = HealthConfig {
        consecutive_gateway_failure: 1,
        max_ejection_time_ms: 5_000,
        ..HealthConfig::default()
    };
    let mut t = HealthTracker::new(config, 5_000);
    let a = addr(1);
    let mut now = NOW;
    let mut lengths = Vec::new();
    for _ in 0..6 {
        t.record(&a, UpstreamResult::GatewayFailure, now);
        if let Some(HealthEvent::Ejected { for_ms, .. }) = t.take_events().pop() {
            lengths.push(for_ms);
            now += for_ms;
        }
        t.routed(&a, now);
    }
    assert_eq!(lengths, [1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
    // A trial that never reports (its stream vanished) holds the endpoint back only so long.
    let probe_at = now;
    assert_eq!(excluded(&t, &pool_at(2, probe_at), probe_at + 1).len(), 1);
    assert!(excluded(&t, &pool_at(2, probe_at + 5_000), probe_at + 5_000).is_empty());
}

#[test]
fn answers_and_other_5xx_reset_the_gateway_count_and_5xx_trip_on_their_own() {
    let mut t = tracker();
    let p = pool(4);
    let a = addr(3);
    for _ in 0..2 {
        t.record(&a, UpstreamResult::GatewayFailure, NOW);
    }
    t.record(&a, UpstreamResult::Answered, NOW);
    t.record(&a, UpstreamResult::GatewayFailure, NOW);
    assert!(excluded(&t, &p, NOW).is_empty());
    let b = addr(4);
    for _ in 0..4 {
        t.record(&b, UpstreamResult::ServerError, NOW);
    }
    assert!(excluded(&t, &p, NOW).is_empty());
    t.record(&b, UpstreamResult::ServerError, NOW);
    assert_eq!(excluded(&t, &p, NOW), [(b, Unusable::Ejected)]);
    assert_eq!(UpstreamResult::of_status(503), UpstreamResult::GatewayFailure);
    assert_eq!(UpstreamResult::of_status(500), UpstreamResult::ServerError);
    assert_eq!(UpstreamResult::of_status(429), UpstreamResult::Answered);
}

#[test]
fn no_trial_goes_to_a_pod_whose_scrapes_fail_so_its_back_off_does_not_grow_while_down() {
    let mut t = tracker();
    let a = addr(1);
    for _ in 0..3 {
        t.record(&a, UpstreamResult::GatewayFailure, NOW);
    }
    // Long after the ejection ran out, the pod is still down: excluded for its scrapes, no trial.
    let mut p = pool_at(4, NOW + 60_000);
    p.endpoints[0].consecutive_scrape_failures = 9;
    p.endpoints[0].metrics.as_mut().unwrap().updated_at_ms = NOW;
    assert_eq!(excluded(&t, &p, NOW + 60_000), [(a.clone(), Unusable::ScrapeFailing)]);
    // Back up: the first good scrape clears it and the expired ejection lets a trial through at once.
    p.endpoints[0].consecutive_scrape_failures = 0;
    p.endpoints[0].metrics.as_mut().unwrap().updated_at_ms = NOW + 60_000;
    assert!(excluded(&t, &p, NOW + 60_010).is_empty());
}

#[test]
fn never_more_than_the_configured_share_and_all_unusable_is_reported_not_excluded() {
    let t = tracker();
    let mut p = pool(4);
    for e in &mut p.endpoints[..3] {
        e.consecutive_scrape_failures = 5;
    }
    p.endpoints[0].consecutive_scrape_failures = 2;
    p.endpoints[2].metrics.as_mut().unwrap().updated_at_ms = 0;
    let x = t.exclusions(&p, NOW);
    assert_eq!((x.count, x.all_unusable), (2, false), "half of four");
    assert_eq!(
        excluded(&t, &p, NOW),
        [(addr(1), Unusable::ScrapeFailing), (addr(2), Unusable::ScrapeFailing)]
    );
    p.endpoints[3].metrics = None;
    let all = t.exclusions(&p, NOW);
    assert!(all.all_unusable && all.excluded.is_empty());
    // At least one endpoint may always be excluded, even in a pool of one... which then is all of it.
    let one = HealthTracker::new(HealthConfig { max_ejection_percent: 0, ..HealthConfig::default() }, 5_000);
    let mut two = pool(2);
    two.endpoints[1].metrics = None;
    assert_eq!(excluded(&one, &two, NOW), [(addr(2), Unusable::NoMetrics)]);
}

#[test]
fn ejections_are_shared_and_forgotten_with_their_endpoint() {
    let mut a = tracker();
    let mut b = tracker();
    let p = pool(3);
    for _ in 0..3 {
        a.record(&addr(2), UpstreamResult::GatewayFailure, NOW);
    }
    let shared: Vec<(String, u64, u64, u32)> =
        a.ejections().map(|(ad, at, until, n)| (ad.to_string(), at, until, n)).collect();
    assert_eq!(shared, [(addr(2), NOW, NOW + 1_000, 1)]);
    for (ad, at, until, n) in &shared {
        b.adopt(ad, *at, *until, *n);
    }
    assert_eq!(excluded(&b, &p, NOW + 10), [(addr(2), Unusable::Ejected)]);
    b.adopt(&addr(2), NOW - 5, NOW + 500, 1);
    assert_eq!(excluded(&b, &p, NOW + 600).len(), 1, "an older ejection does not shorten a newer one");
    let mut smaller = pool(1);
    smaller.endpoints[0] = p.endpoints[0].clone();
    b.retain(&smaller);
    assert_eq!(b.ejections().count(), 0);
}

#[test]
fn the_section_is_parsed_with_errors_that_name_the_field() {
    let c = HealthConfig::from_value(
        &json!({"consecutiveGatewayFailure": 2, "consecutive5xx": 4, "maxEjectionPercent": 25}),
    )
    .unwrap();
    assert_eq!((c.consecutive_gateway_failure, c.consecutive_5xx, c.max_ejection_percent), (2, 4, 25));
    assert_eq!(HealthConfig::from_value(&Value::Null).unwrap(), HealthConfig::default());
    let err = |v: Value| HealthConfig::from_value(&v).unwrap_err().at("health").to_string();
    assert_eq!(
        err(json!({"maxEjectionPercent": 120})),
        "health.maxEjectionPercent: expected a percentage in [0, 100], got 120"
    );
    assert_eq!(
        err(json!({"baseEjectionTimeMs": 0})),
        "health.baseEjectionTimeMs: expected a number > 0, got 0"
    );
    assert!(err(json!({"maxEjectionTimeMs": 10})).starts_with("health.maxEjectionTimeMs"));
    assert_eq!(
        err(json!({"firstByteTimeoutMs": 0})),
        "health.firstByteTimeoutMs: expected a number > 0, got 0"
    );
    assert_eq!(
        HealthConfig::from_value(&json!({"firstByteTimeoutMs": 2500})).unwrap().first_byte_timeout_ms,
        2500
    );
    assert!(err(json!({"consecutiveGatewayFailures": 3})).contains("consecutiveGatewayFailures"));
}

#[test]
fn a_stream_without_headers_past_the_bound_ejects_an_endpoint_that_answers_nothing() {
    let mut t = tracker();
    let p = pool(4);
    t.sent(1, &addr(1), true, NOW);
    t.sent(2, &addr(2), true, NOW);
    t.first_byte(2, true); // answered in time
    assert_eq!(t.sweep(Some(&p), NOW + 999), 0, "not yet past the bound");
    assert_eq!(t.sweep(Some(&p), NOW + 1_000), 1);
    assert_eq!(t.awaiting(), 0, "counted once, then no longer waited for");
    assert_eq!(excluded(&t, &p, NOW + 1_010), [(addr(1), Unusable::Ejected)]);
    assert_eq!(t.sweep(Some(&p), NOW + 5_000), 0);
}

#[test]
fn late_streams_of_an_endpoint_that_answers_later_requests_need_a_run_of_failures() {
    let mut t = tracker();
    let p = pool(4);
    // Slow for these, but answering what was sent after them: only a run of failures ejects.
    for ticket in 0..2 {
        t.sent(ticket, &addr(1), true, NOW);
    }
    t.sent(9, &addr(1), true, NOW + 1);
    t.first_byte(9, true);
    assert_eq!(t.sweep(Some(&p), NOW + 1_000), 2);
    assert!(excluded(&t, &p, NOW + 1_001).is_empty(), "two late ones are not yet a run");
    // The endpoint answers something else: the run of failures is broken.
    t.record(&addr(1), UpstreamResult::Answered, NOW + 1_001);
    for ticket in 10..13 {
        t.sent(ticket, &addr(1), true, NOW);
    }
    assert_eq!(t.sweep(Some(&p), NOW + 1_002), 3);
    assert_eq!(excluded(&t, &p, NOW + 1_003), [(addr(1), Unusable::Ejected)], "three in a row eject");
}

#[test]
fn a_stream_that_ends_unanswered_proves_nothing_about_the_endpoint() {
    let mut t = tracker();
    let p = pool(4);
    t.sent(1, &addr(1), true, NOW);
    t.sent(2, &addr(1), true, NOW + 10);
    t.first_byte(2, false); // the client went away: not an answer
    assert_eq!(t.sweep(Some(&p), NOW + 1_000), 1);
    assert_eq!(excluded(&t, &p, NOW + 1_001), [(addr(1), Unusable::Ejected)]);
}

#[test]
fn an_unstreamed_request_is_late_only_when_the_server_shows_nothing_running() {
    let mut t = tracker();
    t.sent(1, &addr(1), false, NOW);
    // Generating for longer than the bound is normal: the server shows it running.
    let mut busy = pool_at(2, NOW + 900);
    busy.endpoints[0].metrics.as_mut().unwrap().running = 3;
    assert_eq!(t.sweep(Some(&busy), NOW + 5_000), 0);
    // A scrape from before the request could have reached the server proves nothing.
    let early = pool_at(2, NOW + 100);
    assert_eq!(t.sweep(Some(&early), NOW + 5_000), 0);
    assert_eq!(t.sweep(None, NOW + 5_000), 0);
    // Scraped since, nothing running or waiting: the server does not have it.
    let idle = pool_at(2, NOW + 900);
    assert_eq!(t.sweep(Some(&idle), NOW + 5_000), 1);
    assert_eq!(excluded(&t, &idle, NOW + 5_001), [(addr(1), Unusable::Ejected)]);
}

#[test]
fn the_awaiting_table_is_bounded() {
    let mut t = tracker();
    for ticket in 0..(MAX_AWAITING as u64 + 10) {
        t.sent(ticket, &addr(1), false, NOW);
    }
    assert_eq!(t.awaiting(), MAX_AWAITING);
    t.first_byte(0, true);
    t.first_byte(u64::MAX, true); // unknown: nothing happens
    assert_eq!(t.awaiting(), MAX_AWAITING - 1);
}
