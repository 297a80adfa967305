use super::*;
use crate::config::EndpointPickerConfig;
use crate::model::{Endpoint, EndpointState, Role};
use crate::scheduling::test_support::{pool, pool_with_roles, registry};
use alloc::vec;

fn scheduler(json: &str) -> Scheduler {
    let cfg = EndpointPickerConfig::from_json(json).unwrap();
    Scheduler::from_config_with(&cfg, &registry()).unwrap()
}

const SATURATED: &str = r#"{"plugins": [{"type": "fixed-scorer", "parameters": {"scores": [0.1, 0.9, 0.5]}},
    {"name": "d", "type": "fixed-detector", "parameters": {"saturation": 1.0}}],
    "flowControl": {"saturationDetector": {"pluginRef": "d"}}}"#;

fn status(d: &Decision) -> Option<(u16, RejectReason)> {
    match d {
        Decision::Reject { status, reason, .. } => Some((*status, *reason)),
        Decision::Route { .. } => None,
    }
}

fn admit_with(s: &mut Scheduler, priority: i32, pool: &PoolSnapshot, subset: Option<&[&str]>) -> Decision {
    let req = SchedulingRequest { priority, ..SchedulingRequest::default() };
    admit(s, &req, pool, subset, 0, &mut Rng::new(7))
}

#[test]
fn routes_to_the_best_endpoint() {
    let mut s = scheduler(SATURATED);
    assert_eq!(
        admit_with(&mut s, 0, &pool(3), None),
        Decision::Route {
            destination: String::from("10.0.0.1:8000"),
            fallbacks: vec![],
            prefill: None,
            prefix_hashes: vec![],
            cached_tokens: 0,
        }
    );
}

#[test]
fn no_endpoints_is_503() {
    let mut s = scheduler(SATURATED);
    assert_eq!(status(&admit_with(&mut s, 0, &pool(0), None)), Some((503, RejectReason::NoEndpoints)));
}

#[test]
fn subset_hint_restricts_candidates() {
    let mut s = scheduler(SATURATED);
    let p = pool(3);
    // The best endpoint (e1) is outside the subset: the best inside it wins.
    let d = admit_with(&mut s, 0, &p, Some(&["10.0.0.0:8000", "10.0.0.2:8000"]));
    assert!(matches!(d, Decision::Route { ref destination, .. } if destination == "10.0.0.2:8000"), "{d:?}");
    // A bare IP matches every port of that pod; a comma list in one entry is split.
    let d = admit_with(&mut s, 0, &p, Some(&["10.0.0.1"]));
    assert!(matches!(d, Decision::Route { ref destination, .. } if destination == "10.0.0.1:8000"), "{d:?}");
    let d = admit_with(&mut s, 0, &p, Some(&["10.0.0.9:1, 10.0.0.0:8000"]));
    assert!(matches!(d, Decision::Route { ref destination, .. } if destination == "10.0.0.0:8000"), "{d:?}");
}

#[test]
fn subset_empty_or_unmatched_is_503() {
    let mut s = scheduler(SATURATED);
    let p = pool(3);
    assert_eq!(status(&admit_with(&mut s, 0, &p, Some(&[]))), Some((503, RejectReason::EmptySubset)));
    assert_eq!(status(&admit_with(&mut s, 0, &p, Some(&[""]))), Some((503, RejectReason::EmptySubset)));
    assert_eq!(
        status(&admit_with(&mut s, 0, &p, Some(&["10.0.0.1:9000", "10.0.0.10"]))),
        Some((503, RejectReason::SubsetNotInPool)),
        "same IP on another port, or a longer IP, does not match"
    );
}

#[test]
fn ipv6_subset_entries() {
    let mut s = scheduler(r#"{"plugins": [{"type": "fixed-scorer"}]}"#);
    let p = PoolSnapshot {
        endpoints: vec![
            EndpointState::new(Endpoint::new("[fd00::1]:8000")),
            EndpointState::new(Endpoint::new("[fd00::2]:8000")),
        ],
        ..PoolSnapshot::default()
    };
    for entry in ["fd00::2", "[fd00::2]", "[fd00::2]:8000"] {
        let d = admit_with(&mut s, 0, &p, Some(&[entry]));
        assert!(
            matches!(d, Decision::Route { ref destination, .. } if destination == "[fd00::2]:8000"),
            "{entry}: {d:?}"
        );
    }
}

#[test]
fn sheddable_requests_are_shed_at_saturation_with_429() {
    let mut s = scheduler(SATURATED);
    let p = pool(3);
    let d = admit_with(&mut s, -1, &p, None);
    assert_eq!(status(&d), Some((429, RejectReason::Saturated)));
    // Priority 0 and above are never shed.
    assert!(matches!(admit_with(&mut s, 0, &p, None), Decision::Route { .. }));
    // Below saturation, sheddable requests go through.
    let mut s = scheduler(&SATURATED.replace(r#""saturation": 1.0"#, r#""saturation": 0.99"#));
    assert!(matches!(admit_with(&mut s, -1, &p, None), Decision::Route { .. }));
}

#[test]
fn all_filtered_is_429() {
    let mut s = scheduler(r#"{"plugins": [{"type": "drop-all-filter"}]}"#);
    let d = admit_with(&mut s, 0, &pool(3), None);
    assert_eq!(status(&d), Some((429, RejectReason::AllFiltered)));
    if let Decision::Reject { message, .. } = d {
        assert_eq!(message, "every candidate endpoint was filtered out by profile \"default\"");
    }
}

#[test]
fn fallbacks_and_prefill_become_addresses() {
    let mut s = scheduler(
        r#"{"plugins": [{"type": "pd-profile-handler"}, {"type": "prefill-filter"}, {"type": "decode-filter"},
            {"type": "fixed-scorer", "parameters": {"scores": [0.9, 0.8, 0.7, 0.6]}},
            {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 2}}],
          "schedulingProfiles": [
            {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, {"pluginRef": "fixed-scorer"}]},
            {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}, {"pluginRef": "fixed-scorer"}]}]}"#,
    );
    let p = pool_with_roles(&[Role::Prefill, Role::Decode, Role::Prefill, Role::Decode]);
    assert_eq!(
        admit_with(&mut s, 0, &p, None),
        Decision::Route {
            destination: String::from("10.0.0.1:8000"),
            fallbacks: vec![String::from("10.0.0.3:8000")],
            prefill: Some(String::from("10.0.0.0:8000")),
            prefix_hashes: vec![],
            cached_tokens: 0,
        }
    );
}

#[test]
fn probabilistic_admitter_sheds_sheddable_requests_over_the_candidates() {
    // llm-d's deploy/config/probabilistic-admitter-epp-config: the detector never saturates, the
    // admitter alone sheds.
    let mut s = scheduler(
        r#"{"plugins": [{"type": "probabilistic-admitter"}, {"type": "random-picker"},
            {"type": "fixed-detector", "parameters": {"saturation": 0.0}}],
          "flowControl": {"saturationDetector": {"pluginRef": "fixed-detector"}}}"#,
    );
    let mut p = pool(2);
    for e in &mut p.endpoints {
        e.metrics = Some(crate::model::Metrics { waiting: 5, ..crate::model::Metrics::default() });
    }
    // Load 1.0: every sheddable request is refused, with 429; the others are routed.
    let d = admit_with(&mut s, -1, &p, None);
    assert_eq!(status(&d), Some((429, RejectReason::Saturated)), "{d:?}");
    assert_eq!(status(&admit_with(&mut s, 0, &p, None)), None);
    // Only the candidates count: an idle endpoint in the subset admits.
    p.endpoints[1].metrics = Some(crate::model::Metrics::default());
    assert_eq!(status(&admit_with(&mut s, -1, &p, Some(&["10.0.0.1:8000"]))), None);
}
