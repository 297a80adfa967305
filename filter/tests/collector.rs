//! The collector through the host emulator: scraping, failures, discovery, and leader election across
//! several worker VMs.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proxy_wasm_emulator::{CalloutResponse, Fault, Host, Status};
use std::time::Duration;

fn tick(host: &mut Host) {
    host.advance(Duration::from_millis(50));
}

#[test]
fn scrapes_go_through_the_configured_cluster_to_each_pod() {
    let mut host = host();
    host.start_vm(collector(&config(2, r#""collector": {"timeoutMs": 300}"#))).unwrap();
    tick(&mut host);
    let calls = host.pending_callouts();
    assert_eq!(calls.len(), 2);
    for (call, i) in calls.iter().zip(1..) {
        assert_eq!(call.cluster, SCRAPE_CLUSTER);
        assert_eq!(call.header(":method"), Some("GET"));
        assert_eq!(call.header(":path"), Some("/metrics"));
        assert_eq!(call.header(":authority"), Some(addr(i).as_str()));
        assert_eq!(call.header("x-envoy-original-dst-host"), Some(addr(i).as_str()));
        assert_eq!(call.timeout, Some(Duration::from_millis(300)));
    }
}

#[test]
fn garbage_metrics_timeouts_and_resets_mark_endpoints_failing() {
    let mut host = host();
    host.start_vm(collector(&config(3, r#""collector": {"timeoutMs": 200}"#))).unwrap();
    scrape_round(&mut host, &[1, 2, 3]);
    assert_eq!(published(&host).unwrap().endpoints[2].metrics.as_ref().unwrap().waiting, 3);
    // Next round: pod 1 answers garbage, pod 2's connection resets, pod 3 never answers (times out).
    tick(&mut host);
    for call in host.pending_callouts() {
        match call.header(":authority") {
            Some(a) if a == addr(1) => {
                host.answer_callout(call.id, CalloutResponse::new(200).body("<html>502</html>")).unwrap()
            }
            Some(a) if a == addr(2) => host.fail_callout(call.id).unwrap(),
            _ => {}
        }
    }
    // The timeout fires at +200 ms; the next tick publishes it.
    host.advance(Duration::from_millis(250));
    let s = published(&host).unwrap();
    let failures: Vec<u32> = s.endpoints.iter().map(|e| e.consecutive_scrape_failures).collect();
    assert!(failures.iter().all(|f| *f >= 1), "{failures:?}");
    assert_eq!(s.endpoints[2].metrics.as_ref().unwrap().waiting, 3, "last metrics kept while failing");
    assert!(host.metric_value("epp_scrape_errors").unwrap() >= 3);
    assert_no_traps(&host);
}

#[test]
fn a_page_without_a_core_gauge_is_a_failed_scrape_logged_once_never_an_idle_pod() {
    let mut host = host();
    host.start_vm(collector(&config(2, ""))).unwrap();
    scrape_round(&mut host, &[4, 4]);
    // Pod 1 drops vllm:kv_cache_usage_perc from its page, three rounds in a row.
    for _ in 0..3 {
        tick(&mut host);
        answer_scrapes(&mut host, |authority| {
            let page = if authority == addr(1) {
                String::from("vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n")
            } else {
                vllm(4, 0.5)
            };
            Some(CalloutResponse::new(200).body(page))
        });
    }
    tick(&mut host);
    let s = published(&host).unwrap();
    assert_eq!(s.endpoints[0].consecutive_scrape_failures, 3);
    assert_eq!(s.endpoints[0].metrics.as_ref().unwrap().waiting, 4, "the last good metrics, not zeros");
    assert_eq!(host.metric_value("epp_scrape_missing_gauges"), Some(3));
    let warnings = host.logs_at(proxy_wasm_emulator::LogLevel::Warn);
    let about: Vec<&String> = warnings.iter().filter(|l| l.contains("kv_cache_usage_perc")).collect();
    assert_eq!(about.len(), 1, "logged once: {warnings:?}");
    assert!(about[0].contains(&addr(1)) && about[0].contains("vllm"), "{about:?}");
}

#[test]
fn an_unknown_scrape_cluster_is_counted_not_fatal() {
    let mut host = Host::new(); // no clusters at all
    let vm = host.start_vm(collector(&config(1, ""))).unwrap();
    tick(&mut host);
    tick(&mut host);
    assert_eq!(host.metric_value("epp_scrape_errors"), Some(2));
    let warnings = host.logs_at(proxy_wasm_emulator::LogLevel::Warn);
    assert_eq!(
        warnings.iter().filter(|l| l.contains("cannot scrape")).count(),
        1,
        "logged once: {warnings:?}"
    );
    assert!(!host.vm_failed(vm));
}

#[test]
fn discovery_url_snapshots_are_published_and_used() {
    let mut host = host();
    host.add_cluster("epp-collector");
    let cfg = r#"{"pool": {"name": "pool", "discoveryUrl": "http://epp-collector:9090/snapshot"}}"#;
    let worker = host.start_vm(picker(cfg)).unwrap();
    host.start_vm(collector(cfg)).unwrap();
    tick(&mut host);
    let call = host.pending_callouts().remove(0);
    assert_eq!((call.cluster.as_str(), call.header(":path")), ("epp-collector", Some("/snapshot")));
    // The service's snapshot: pod 2 idle.
    let mut served = Host::new();
    write_snapshot(&mut served, 41, &[8, 0]);
    let (bytes, _) = served.shared_data(VM_ID, "epp/pool/snapshot").unwrap();
    host.answer_callout(call.id, CalloutResponse::new(200).body(bytes.clone())).unwrap();
    assert_eq!(host.shared_data(VM_ID, "epp/pool/snapshot").unwrap().0, bytes);
    assert_eq!(destination(&send(&mut host, worker, CHAT, &[])), Some(addr(2).as_str()));
    // Garbage from the service is not published.
    tick(&mut host);
    let call = host.pending_callouts().remove(0);
    host.answer_callout(call.id, CalloutResponse::new(200).body("oops")).unwrap();
    assert_eq!(host.shared_data(VM_ID, "epp/pool/snapshot").unwrap().0, bytes);
}

/// Which VMs dispatched scrapes during the last tick.
fn scrapers(host: &Host, since: usize) -> Vec<proxy_wasm_emulator::VmId> {
    let mut vms: Vec<_> = host.callouts().iter().skip(since).map(|c| c.vm).collect();
    vms.sort();
    vms.dedup();
    vms
}

#[test]
fn one_worker_is_elected_and_a_leader_cut_off_from_shared_data_is_replaced() {
    let mut host = host();
    let cfg = config(2, r#""collector": {"mode": "leader-elected", "leaseTtlMs": 200}"#);
    let workers: Vec<_> = (0..3).map(|_| host.start_vm(picker(&cfg)).unwrap()).collect();
    tick(&mut host);
    let leaders = scrapers(&host, 0);
    assert_eq!(leaders.len(), 1, "exactly one worker scrapes");
    let leader = leaders[0];
    answer_scrapes(&mut host, |_| Some(CalloutResponse::new(200).body(vllm(0, 0.1))));
    assert!(published(&host).is_some());
    // Several ticks later: still the same single leader.
    for _ in 0..4 {
        let seen = host.callouts().len();
        tick(&mut host);
        assert_eq!(scrapers(&host, seen), vec![leader]);
        answer_scrapes(&mut host, |_| Some(CalloutResponse::new(200).body(vllm(0, 0.1))));
    }
    // The leader can no longer read shared data (so not its lease either): it steps down rather than
    // scrape on a lease it cannot see, and its VM keeps serving.
    host.inject_fault(Fault::new("proxy_get_shared_data", Status::InternalFailure).in_vm(leader));
    let cut_at = host.callouts().len();
    tick(&mut host);
    assert!(!host.vm_failed(leader));
    let died_at = host.now();
    let mut new_leader = None;
    for _ in 0..10 {
        let seen = host.callouts().len();
        tick(&mut host);
        if let [vm] = scrapers(&host, seen).as_slice() {
            new_leader = Some(*vm);
            break;
        }
    }
    let new_leader = new_leader.expect("a follower took over");
    assert_ne!(new_leader, leader);
    assert!(workers.contains(&new_leader));
    assert!(host.now() - died_at <= Duration::from_millis(200 + 2 * 50), "within the TTL plus a tick");
    // It publishes, continuing the generation sequence.
    let before = published(&host).unwrap().generation;
    answer_scrapes(&mut host, |_| Some(CalloutResponse::new(200).body(vllm(1, 0.1))));
    assert_eq!(published(&host).unwrap().generation, before + 1);
    // The cut-off leader never scraped again.
    assert!(!scrapers(&host, cut_at).contains(&leader));
    assert!(host.traps().is_empty(), "{:?}", host.traps());
}

#[test]
fn singleton_mode_workers_never_scrape() {
    let mut host = host();
    let cfg = config(2, "");
    host.start_vm(picker(&cfg)).unwrap();
    host.start_vm(picker(&cfg)).unwrap();
    host.advance(Duration::from_secs(2));
    assert!(host.callouts().is_empty());
    let c = host.start_vm(collector(&cfg)).unwrap();
    tick(&mut host);
    assert_eq!(scrapers(&host, 0), vec![c]);
}
