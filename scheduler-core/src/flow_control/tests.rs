use super::*;
use crate::config::gateway::GatewayConfig;
use crate::endpoint_picker::{
    Admission, EndpointPicker, Outcome, PoolView, RequestInfo, Settled, WaitingRequests,
};
use crate::model::{Endpoint, EndpointState, Metrics, PoolSnapshot};
use alloc::format;
use alloc::string::ToString;
use proptest::prelude::*;
use std::collections::HashMap;

const BODY: &[u8] = br#"{"model": "m", "prompt": "hello", "max_tokens": 4}"#;

/// Two endpoints; the concurrency detector gates at 2 requests each (capacity 4).
fn config(flow_control: &str) -> String {
    format!(
        r#"{{"featureGates": ["flowControl"],
            "plugins": [{{"type": "queue-scorer"}}, {{"type": "round-robin-fairness-policy"}},
                        {{"type": "edf-ordering-policy"}},
                        {{"type": "concurrency-detector", "parameters": {{"maxConcurrency": 2}}}}],
            "flowControl": {flow_control},
            "objectives": [{{"name": "high", "priority": 10}}, {{"name": "low", "priority": -1}}]}}"#
    )
}

fn picker(flow_control: &str) -> EndpointPicker {
    let mut fc = String::from(flow_control);
    if !fc.contains("saturationDetector") {
        fc = fc.replacen('{', r#"{"saturationDetector": {"pluginRef": "concurrency-detector"}, "#, 1);
        fc = fc.replace(", }", "}");
    }
    EndpointPicker::new(GatewayConfig::from_json(&config(&fc)).unwrap()).unwrap()
}

fn pool(n: u8) -> PoolSnapshot {
    let mut p = PoolSnapshot { generation: 1, published_at_ms: 0, ..PoolSnapshot::default() };
    for i in 0..n {
        let m = Metrics { updated_at_ms: 0, ..Metrics::default() };
        p.endpoints.push(EndpointState {
            metrics: Some(m),
            ..EndpointState::new(Endpoint::new(format!("10.0.0.{}:8000", i + 1)))
        });
    }
    p
}

/// What a caller keeps while a request waits: its id, objective, flow and body.
#[derive(Default)]
struct Store {
    waiting: HashMap<Ticket, (String, Option<&'static str>, Option<&'static str>)>,
}

impl WaitingRequests for Store {
    fn with_request(&mut self, t: Ticket, f: &mut dyn FnMut(&RequestInfo<'_>, Option<&[u8]>)) -> bool {
        let Some((id, objective, flow)) = self.waiting.remove(&t) else { return false };
        let info = RequestInfo {
            path: "/v1/completions",
            request_id: &id,
            objective,
            fairness_id: flow,
            ..RequestInfo::default()
        };
        f(&info, Some(BODY));
        true
    }
}

/// A gateway in miniature: the picker, the snapshot with in-flight counted on it, the waiting store.
struct Gateway {
    picker: EndpointPicker,
    pool: PoolSnapshot,
    store: Store,
    /// Requests in flight: id → destination.
    in_flight: Vec<(String, String)>,
    /// Request ids in the order they were sent upstream.
    sent: Vec<String>,
    /// (id, status) of local replies.
    replied: Vec<(String, u16, String)>,
    now: u64,
}

impl Gateway {
    fn new(flow_control: &str, endpoints: u8) -> Gateway {
        Gateway {
            picker: picker(flow_control),
            pool: pool(endpoints),
            store: Store::default(),
            in_flight: Vec::new(),
            sent: Vec::new(),
            replied: Vec::new(),
            now: 0,
        }
    }

    fn merge(&mut self) {
        for e in &mut self.pool.endpoints {
            e.in_flight = Default::default();
        }
        for (_, dest) in &self.in_flight {
            if let Some(e) = self.pool.find_mut(dest) {
                e.in_flight.add(5);
            }
        }
        self.pool.published_at_ms = self.now;
        for e in &mut self.pool.endpoints {
            if let Some(m) = &mut e.metrics {
                m.updated_at_ms = self.now;
            }
        }
    }

    fn apply(&mut self, id: String, outcome: Outcome) {
        match outcome {
            Outcome::Route(r) => {
                self.in_flight.push((id.clone(), r.destination));
                self.sent.push(id);
            }
            Outcome::Reply(r) => self.replied.push((id, r.status, r.body)),
            Outcome::FailOpen { .. } => panic!("fresh metrics never fail open"),
        }
    }

    /// A request arrives; returns its ticket if it waits.
    fn arrive(
        &mut self,
        id: &str,
        objective: Option<&'static str>,
        flow: Option<&'static str>,
    ) -> Option<Ticket> {
        self.merge();
        let info = RequestInfo {
            path: "/v1/completions",
            request_id: id,
            objective,
            fairness_id: flow,
            ..RequestInfo::default()
        };
        match self.picker.decide_or_queue(&info, Some(BODY), PoolView::Fresh(&self.pool), self.now, 1) {
            Admission::Decided { outcome, .. } => {
                self.apply(id.to_string(), outcome);
                None
            }
            Admission::Queued(t) => {
                self.store.waiting.insert(t, (id.to_string(), objective, flow));
                Some(t)
            }
        }
    }

    fn poll(&mut self) -> Vec<Settled> {
        self.merge();
        let ids: HashMap<Ticket, String> =
            self.store.waiting.iter().map(|(t, (id, _, _))| (*t, id.clone())).collect();
        let poll = self.picker.poll(Some(&mut self.pool), false, self.now, &mut self.store);
        for s in &poll.settled {
            let id = ids.get(&s.ticket).cloned().unwrap_or_default();
            self.store.waiting.remove(&s.ticket);
            self.apply(id, s.outcome.clone());
        }
        poll.settled
    }

    /// The oldest request in flight finishes.
    fn finish_one(&mut self) {
        if !self.in_flight.is_empty() {
            self.in_flight.remove(0);
        }
    }
}

#[test]
fn a_burst_is_served_in_priority_order_with_nothing_lost() {
    let mut g = Gateway::new("{}", 2);
    let classes = [Some("low"), None, Some("high")];
    let mut waiting = 0;
    for i in 0..12 {
        let objective = classes[i % 3];
        if g.arrive(&format!("r{i}-{}", objective.unwrap_or("normal")), objective, None).is_some() {
            waiting += 1;
        }
    }
    assert_eq!(g.sent.len(), 4, "the pool's capacity (2 endpoints × 2) goes at once");
    assert_eq!(waiting, 8);
    assert_eq!(g.picker.flow_control().unwrap().len(), 8);
    assert!(g.poll().is_empty(), "no room, nothing dispatched");
    let before = g.sent.len();
    while g.sent.len() < 12 {
        g.now += 10;
        g.finish_one();
        let settled = g.poll();
        assert!(settled.len() <= 1, "one finished request frees one place");
        assert!(g.in_flight.len() <= 4);
    }
    let order: Vec<&str> = g.sent[before..].iter().map(|id| id.split('-').nth(1).unwrap()).collect();
    assert_eq!(
        order,
        ["high", "high", "high", "normal", "normal", "normal", "low", "low"],
        "strict priority between bands"
    );
    // FCFS within a band.
    let highs: Vec<&String> = g.sent[before..].iter().take(3).collect();
    assert_eq!(highs, ["r5-high", "r8-high", "r11-high"]);
    assert!(g.replied.is_empty());
    let stats = g.picker.flow_control().unwrap().stats();
    assert_eq!(stats.count(QueueOutcome::Dispatched), 8);
    assert_eq!((stats.queued(), stats.bytes()), (0, 0));
    assert_eq!(stats.band(10).unwrap().wait(QueueOutcome::Dispatched).unwrap().count(), 3);
}

#[test]
fn a_sheddable_request_waits_instead_of_being_shed() {
    let mut g = Gateway::new("{}", 1);
    g.arrive("a", None, None);
    g.arrive("b", None, None);
    assert!(
        g.arrive("shed-me", Some("low"), None).is_some(),
        "saturated: it waits (llm-d buffers sheddables)"
    );
    g.finish_one();
    g.now += 5;
    assert_eq!(g.poll().len(), 1);
    assert_eq!(g.sent.last().unwrap(), "shed-me");
}

#[test]
fn a_full_queue_refuses_with_429_and_an_openai_body() {
    let mut g =
        Gateway::new(r#"{"priorityBands": [{"priority": 0, "maxRequests": 2}], "maxBytes": "1Gi"}"#, 1);
    for id in ["a", "b", "c", "d"] {
        g.arrive(id, None, None);
    }
    assert_eq!(g.sent, ["a", "b"]);
    assert!(g.replied.is_empty(), "two wait");
    g.arrive("e", None, None);
    let (id, status, body) = g.replied.last().unwrap();
    assert_eq!((id.as_str(), *status), ("e", 429));
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "flow_control_capacity");
    assert!(json["error"]["message"].as_str().unwrap().contains("queue is full"));
    // Another band has its own capacity (defaults), the global one has room.
    assert!(g.arrive("f", Some("high"), None).is_some());
    let stats = g.picker.flow_control().unwrap().stats();
    assert_eq!(stats.count(QueueOutcome::RejectedCapacity), 1);
}

#[test]
fn the_global_byte_limit_counts_body_bytes() {
    let limit = BODY.len() * 2;
    let mut g = Gateway::new(&format!(r#"{{"maxBytes": {limit}}}"#), 1);
    for id in ["a", "b", "c", "d", "e"] {
        g.arrive(id, Some("high"), None);
    }
    assert_eq!(g.replied.iter().map(|r| (r.0.as_str(), r.1)).collect::<Vec<_>>(), [("e", 429)]);
    assert_eq!(g.picker.flow_control().unwrap().bytes(), limit as u64);
}

#[test]
fn a_request_past_its_ttl_gets_429_or_503_with_no_endpoints() {
    let mut g = Gateway::new(r#"{"defaultRequestTTL": "1s", "noEndpointRequestTTL": "3s"}"#, 1);
    g.arrive("a", None, None);
    g.arrive("b", None, None);
    g.now = 100;
    g.arrive("late", None, None);
    g.now = 1_099;
    assert!(g.poll().is_empty());
    g.now = 1_100;
    let settled = g.poll();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].how, QueueOutcome::EvictedTtl);
    assert_eq!(settled[0].waited_ms, 1_000);
    assert_eq!(g.replied.last().map(|r| (r.0.as_str(), r.1)), Some(("late", 429)));

    // No endpoints: the queue is a waiting room, on the longer budget, and its timeout is 503.
    let mut g = Gateway::new(r#"{"defaultRequestTTL": "1s", "noEndpointRequestTTL": "3s"}"#, 0);
    assert!(g.arrive("cold", None, None).is_some());
    g.now = 2_000;
    assert!(g.poll().is_empty(), "the no-endpoint budget applies");
    g.now = 3_000;
    let settled = g.poll();
    assert_eq!(settled[0].how, QueueOutcome::EvictedNoEndpoints);
    assert_eq!(g.replied.last().map(|r| r.1), Some(503));
}

#[test]
fn a_pool_that_scales_up_dispatches_its_waiting_room() {
    let mut g = Gateway::new(r#"{"defaultRequestTTL": "1s", "noEndpointRequestTTL": "30s"}"#, 0);
    g.arrive("cold", None, None);
    g.now = 10_000;
    assert!(g.poll().is_empty());
    g.pool = pool(1);
    g.now = 10_500;
    assert_eq!(g.poll().len(), 1, "an endpoint appeared: dispatched, not expired");
    assert_eq!(g.sent, ["cold"]);
}

#[test]
fn cancelling_frees_the_place_once() {
    let mut g = Gateway::new(r#"{"priorityBands": [{"priority": 0, "maxRequests": 1}]}"#, 1);
    g.arrive("a", None, None);
    g.arrive("b", None, None);
    let t = g.arrive("gone", None, None).unwrap();
    g.arrive("refused", None, None);
    assert_eq!(g.replied.len(), 1);
    assert!(g.picker.cancel(t, 5));
    assert!(!g.picker.cancel(t, 6), "a ticket ends once");
    g.store.waiting.remove(&t);
    let fc = g.picker.flow_control().unwrap();
    assert_eq!((fc.len(), fc.bytes()), (0, 0));
    assert_eq!(fc.stats().count(QueueOutcome::EvictedContextCancelled), 1);
    assert!(g.arrive("next", None, None).is_some(), "the place is free again");
    g.finish_one();
    g.poll();
    assert_eq!(g.sent, ["a", "b", "next"]);
}

#[test]
fn round_robin_takes_flows_in_turn_and_global_strict_takes_arrival_order() {
    let fc = r#"{"priorityBands": [{"priority": 0, "fairnessPolicyRef": "round-robin-fairness-policy"}]}"#;
    let mut g = Gateway::new(fc, 1);
    g.arrive("x", None, None);
    g.arrive("y", None, None);
    for i in 0..4 {
        g.arrive(&format!("A{i}"), None, Some("tenant-a"));
    }
    g.arrive("B0", None, Some("tenant-b"));
    g.arrive("D0", None, None);
    for _ in 0..6 {
        g.finish_one();
        g.now += 1;
        g.poll();
    }
    assert_eq!(g.sent[2..], ["D0", "A0", "B0", "A1", "A2", "A3"], "flows sorted by id, one each in turn");

    let mut g = Gateway::new("{}", 1);
    g.arrive("x", None, None);
    g.arrive("y", None, None);
    for (i, flow) in ["tenant-a", "tenant-a", "tenant-b", "tenant-a"].iter().enumerate() {
        g.now += 1;
        g.arrive(&format!("{flow}-{i}"), None, Some(flow));
    }
    for _ in 0..4 {
        g.finish_one();
        g.now += 1;
        g.poll();
    }
    assert_eq!(g.sent[2..], ["tenant-a-0", "tenant-a-1", "tenant-b-2", "tenant-a-3"]);
}

#[test]
fn usage_limits_hold_lower_bands_back_first() {
    let mut p = EndpointPicker::new(
        GatewayConfig::from_json(
            r#"{"featureGates": ["flowControl"],
                "plugins": [{"type": "queue-scorer"},
                            {"type": "concurrency-detector", "parameters": {"maxConcurrency": 4}},
                            {"type": "priority-holdback-policy", "name": "holdback", "parameters": {"minCeiling": 0.5}}],
                "flowControl": {"saturationDetector": {"pluginRef": "concurrency-detector"},
                                "usageLimitPolicyPluginRef": "holdback", "priorityBands": [{"priority": 10}, {"priority": -1}]},
                "objectives": [{"name": "high", "priority": 10}, {"name": "low", "priority": -1}]}"#
        )
        .unwrap(),
    )
    .unwrap();
    let mut s = pool(1);
    // Two of four in flight: saturation 0.5 — at the low band's ceiling, below the high band's 1.0.
    s.endpoints[0].in_flight.add(1);
    s.endpoints[0].in_flight.add(1);
    let info = |objective| RequestInfo {
        path: "/v1/completions",
        request_id: "r",
        objective,
        ..RequestInfo::default()
    };
    let low = p.decide_or_queue(&info(Some("low")), Some(BODY), PoolView::Fresh(&s), 0, 1);
    assert!(matches!(low, Admission::Queued(_)), "{low:?}");
    let high = p.decide_or_queue(&info(Some("high")), Some(BODY), PoolView::Fresh(&s), 0, 1);
    assert!(matches!(high, Admission::Decided { outcome: Outcome::Route(_), .. }), "{high:?}");
}

#[test]
fn in_flight_eviction_ends_sheddable_requests_for_a_blocked_higher_band() {
    let mut g = Gateway::new(r#"{"enableEviction": true}"#, 1);
    let info = |id, objective| RequestInfo {
        path: "/v1/completions",
        request_id: id,
        objective,
        ..RequestInfo::default()
    };
    let mut leases = Vec::new();
    for (id, objective) in [("n", None), ("s1", Some("low"))] {
        g.merge();
        match g.picker.decide_or_queue(&info(id, objective), Some(BODY), PoolView::Fresh(&g.pool), 0, 1) {
            Admission::Decided { outcome: Outcome::Route(r), lease } => {
                g.in_flight.push((id.to_string(), r.destination));
                leases.push(lease);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(leases[0], None, "priority 0 is never evicted");
    let s1 = leases[1].expect("a sheddable request in flight has a lease");
    assert!(g.arrive("urgent", Some("high"), None).is_some());
    g.merge();
    let poll = g.picker.poll(Some(&mut g.pool), false, 10, &mut g.store);
    assert_eq!(poll.revoked.len(), 1);
    assert_eq!(poll.revoked[0].lease, s1);
    assert_eq!(poll.revoked[0].reply.status, 429);
    // Stop-and-wait: no second decision before the first one ended.
    let again = g.picker.poll(Some(&mut g.pool), false, 20, &mut g.store);
    assert!(again.revoked.is_empty());
    g.in_flight.retain(|(id, _)| id != "s1");
    g.picker.finished(s1, 30);
    g.now = 40;
    let settled = g.poll();
    assert_eq!(settled.len(), 1);
    assert_eq!(g.sent.last().unwrap(), "urgent");
    assert_eq!(g.picker.flow_control().unwrap().stats().evicted_in_flight(), 1);
    assert_eq!(g.picker.flow_control().unwrap().leases(), 0);
}

#[test]
fn a_bad_request_is_refused_before_it_takes_a_place() {
    let mut g = Gateway::new("{}", 1);
    g.arrive("a", None, None);
    g.arrive("b", None, None);
    let info = RequestInfo { path: "/v1/completions", request_id: "bad", ..RequestInfo::default() };
    let a = g.picker.decide_or_queue(&info, Some(b"{not json"), PoolView::Fresh(&g.pool), 0, 1);
    assert!(
        matches!(a, Admission::Decided { outcome: Outcome::Reply(ref r), .. } if r.status == 400),
        "{a:?}"
    );
    assert_eq!(g.picker.flow_control().unwrap().len(), 0);
}

#[test]
fn without_the_gate_nothing_waits() {
    let doc = config(r#"{"saturationDetector": {"pluginRef": "concurrency-detector"}, "maxRequests": 5}"#)
        .replace(r#""featureGates": ["flowControl"],"#, "");
    let cfg = GatewayConfig::from_json(&doc).unwrap();
    assert!(cfg.picker.flow_control.is_none());
    assert!(cfg
        .picker
        .warnings
        .iter()
        .any(|w| w.path == "flowControl" && w.message.contains("feature gate")));
    let mut p = EndpointPicker::new(cfg).unwrap();
    let mut s = pool(1);
    s.endpoints[0].in_flight.add(1);
    s.endpoints[0].in_flight.add(1);
    let info = RequestInfo { path: "/v1/completions", request_id: "r", ..RequestInfo::default() };
    let a = p.decide_or_queue(&info, Some(BODY), PoolView::Fresh(&s), 0, 1);
    assert!(matches!(a, Admission::Decided { .. }));
}

#[test]
fn configuration_keys_have_llm_d_meanings_and_errors_name_the_field() {
    let plugins: Vec<crate::config::PluginSpec> = Vec::new();
    let build = |v: serde_json::Value| {
        let mut w = Vec::new();
        FlowControlConfig::from_value("flowControl", &v, &plugins, &mut w)
    };
    let c = build(serde_json::json!({})).unwrap();
    assert_eq!(c, FlowControlConfig::default());
    assert_eq!((c.request_ttl_ms, c.no_endpoint_request_ttl_ms), (60_000, 60_000));
    assert_eq!(c.band(3).max_requests, 5_000);
    let c = build(serde_json::json!({
        "maxBytes": "1Gi", "maxRequests": "1k", "defaultRequestTTL": "30s",
        "priorityBands": [{"priority": 5, "maxRequests": 10, "maxBytes": "500M"}],
        "defaultNegativePriorityBand": {"maxRequests": 3}, "enableEviction": true
    }))
    .unwrap();
    assert_eq!((c.max_bytes, c.max_requests), (1_073_741_824, 1_000));
    assert_eq!(
        (c.request_ttl_ms, c.no_endpoint_request_ttl_ms),
        (30_000, 30_000),
        "follows defaultRequestTTL"
    );
    assert_eq!((c.band(5).max_requests, c.band(5).max_bytes), (10, 500_000_000));
    assert_eq!((c.band(-4).max_requests, c.band(-4).priority), (3, -4));
    assert_eq!(c.band(4).max_requests, 5_000);
    assert!(c.enable_eviction);
    let err = |v| build(v).unwrap_err().to_string();
    assert_eq!(
        err(serde_json::json!({"maxBytes": "lots"})),
        r#"flowControl.maxBytes: expected a non-negative quantity such as 100, "1k", "500M" or "1Gi", got "lots""#
    );
    assert_eq!(
        err(serde_json::json!({"maxRequests": -1})),
        r#"flowControl.maxRequests: expected a non-negative quantity such as 100, "1k", "500M" or "1Gi", got -1"#
    );
    assert_eq!(
        err(serde_json::json!({"defaultRequestTTL": 30})),
        r#"flowControl.defaultRequestTTL: expected a duration such as "30s", "1m30s" or "0s", got 30"#
    );
    assert_eq!(
        err(serde_json::json!({"priorityBands": [{"priority": 1}, {"priority": 1}]})),
        "flowControl.priorityBands[1].priority: expected a priority no other band has, got 1, already used by flowControl.priorityBands[0]"
    );
    assert_eq!(
        err(serde_json::json!({"priorityBands": [{"maxRequests": 1}]})),
        "flowControl.priorityBands[0].priority: expected an integer priority, got nothing"
    );
    assert!(err(serde_json::json!({"maxQueue": 1}))
        .starts_with("flowControl.maxQueue: expected one of the fields"));
    assert_eq!(
        err(serde_json::json!({"usageLimitPolicyPluginRef": "nope"})),
        r#"flowControl.usageLimitPolicyPluginRef: expected the name of an entry in plugins or a built-in policy (static-usage-limit-policy), got "nope""#
    );
    for (q, want) in [("100", 100), ("1k", 1_000), ("1Ki", 1_024), ("1.5", 2), ("1e3", 1_000), ("500m", 1)] {
        assert_eq!(config::parse_quantity(q), Some(want), "{q}");
    }
    for bad in ["", "k", "1x", "-1", "1..2"] {
        assert_eq!(config::parse_quantity(bad), None, "{bad}");
    }
}

// --- The controller alone: properties over arbitrary operation sequences. ---

#[derive(Clone, Debug)]
enum Op {
    Arrive { priority: i32, flow: u8, bytes: u64 },
    Cancel(usize),
    Tick { ms: u64, saturation: Option<u8>, no_endpoints: bool },
    Finish(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-2i32..3, 0u8..4, 0u64..300).prop_map(|(priority, flow, bytes)| Op::Arrive { priority, flow, bytes }),
        1 => (0usize..64).prop_map(Op::Cancel),
        2 => (0u64..400, proptest::option::of(0u8..12), proptest::bool::weighted(0.1))
            .prop_map(|(ms, saturation, no_endpoints)| Op::Tick { ms, saturation, no_endpoints }),
        1 => (0usize..64).prop_map(Op::Finish),
    ]
}

fn controller(fairness: Fairness, ordering: Ordering, eviction: bool) -> FlowController {
    FlowController::new(FlowControlConfig {
        max_requests: 20,
        max_bytes: 2_000,
        request_ttl_ms: 1_000,
        no_endpoint_request_ttl_ms: 1_500,
        default_band: BandConfig {
            max_requests: 8,
            fairness,
            ordering,
            ..FlowControlConfig::default().default_band
        },
        enable_eviction: eviction,
        ..FlowControlConfig::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every ticket ends exactly once; what waits is exactly what was queued and not ended; the limits
    /// hold; a dispatch never skips a waiting request of a higher band; nothing is left after a drain.
    #[test]
    fn every_ticket_ends_once_and_nothing_leaks(
        ops in proptest::collection::vec(op(), 1..120),
        rr in any::<bool>(),
        edf in any::<bool>(),
        eviction in any::<bool>(),
    ) {
        let fairness = if rr { Fairness::RoundRobin } else { Fairness::GlobalStrict };
        let ordering = if edf { Ordering::Edf } else { Ordering::Fcfs };
        let mut fc = controller(fairness, ordering, eviction);
        let mut now = 0u64;
        let mut live: Vec<(Ticket, i32)> = Vec::new();
        let mut ended: HashMap<Ticket, QueueOutcome> = HashMap::new();
        let mut leases: Vec<Ticket> = Vec::new();
        let mut queued = 0u64;
        let mut refused = 0u64;
        let mut gate = Gate { saturation: Some(0.0), no_endpoints: false };
        for op in ops {
            match op {
                Op::Arrive { priority, flow, bytes } => {
                    let name = format!("f{flow}");
                    let req = QueueRequest { priority, flow: &name, bytes };
                    match fc.admit(&req, &gate, now) {
                        Admit::Now => {
                            if let Some(l) = fc.lease(None, priority, now) {
                                leases.push(l);
                            }
                        }
                        Admit::Queued(t) => {
                            prop_assert!(!ended.contains_key(&t) && live.iter().all(|(x, _)| *x != t));
                            live.push((t, priority));
                            queued += 1;
                        }
                        Admit::Rejected(o) => {
                            prop_assert!(matches!(o, QueueOutcome::RejectedCapacity | QueueOutcome::RejectedNoEndpoints));
                            refused += 1;
                        }
                    }
                }
                Op::Cancel(i) if !live.is_empty() => {
                    let (t, _) = live.remove(i % live.len());
                    prop_assert!(fc.cancel(t, now));
                    prop_assert!(!fc.cancel(t, now));
                    ended.insert(t, QueueOutcome::EvictedContextCancelled);
                }
                Op::Cancel(_) => {}
                Op::Finish(i) if !leases.is_empty() => {
                    let l = leases.remove(i % leases.len());
                    fc.finished(l, now);
                }
                Op::Finish(_) => {}
                Op::Tick { ms, saturation, no_endpoints } => {
                    now += ms;
                    gate = Gate { saturation: saturation.map(|s| f64::from(s) / 10.0), no_endpoints };
                    for r in fc.expire(&gate, now) {
                        prop_assert!(ended.insert(r.ticket, r.outcome).is_none());
                        live.retain(|(t, _)| *t != r.ticket);
                    }
                    while let Some(r) = fc.next(&gate, 4, now) {
                        let top = live.iter().map(|(_, p)| *p).max();
                        prop_assert_eq!(Some(r.priority), top, "strict priority");
                        prop_assert!(ended.insert(r.ticket, r.outcome).is_none());
                        live.retain(|(t, _)| *t != r.ticket);
                        if let Some(l) = fc.lease(Some(r.ticket), r.priority, now) {
                            leases.push(l);
                        }
                    }
                    for (t, _) in fc.take_revoked() {
                        leases.retain(|l| *l != t);
                        fc.finished(t, now);
                    }
                }
            }
            prop_assert_eq!(fc.len(), live.len() as u64);
            prop_assert!(fc.len() <= 20 && fc.bytes() <= 2_000);
            prop_assert_eq!(fc.stats().queued(), fc.len());
            prop_assert_eq!(fc.stats().bytes(), fc.bytes());
            for (t, _) in &live {
                prop_assert!(fc.is_waiting(*t));
            }
        }
        // Drain: an open gate dispatches everything.
        let open = Gate { saturation: Some(0.0), no_endpoints: false };
        while let Some(r) = fc.next(&open, 0, now) {
            prop_assert!(ended.insert(r.ticket, r.outcome).is_none());
            live.retain(|(t, _)| *t != r.ticket);
        }
        prop_assert!(live.is_empty());
        prop_assert_eq!((fc.len(), fc.bytes()), (0, 0));
        prop_assert!(fc.bands.is_empty() && fc.waiting.is_empty(), "no empty band or flow left behind");
        prop_assert_eq!(ended.len() as u64, queued);
        let s = fc.stats();
        let waited: u64 = [QueueOutcome::Dispatched, QueueOutcome::EvictedTtl, QueueOutcome::EvictedNoEndpoints,
            QueueOutcome::EvictedContextCancelled].iter().map(|&o| s.count(o)).sum();
        prop_assert_eq!(waited, queued);
        prop_assert_eq!(s.count(QueueOutcome::RejectedCapacity) + s.count(QueueOutcome::RejectedNoEndpoints), refused);
        for l in leases {
            fc.finished(l, now);
        }
        prop_assert_eq!(fc.leases(), 0);
    }

    /// Within a band and a flow, requests leave in arrival order (FCFS; EDF with one TTL is the same).
    #[test]
    fn one_flow_is_first_come_first_served(n in 1usize..30, edf in any::<bool>()) {
        let ordering = if edf { Ordering::Edf } else { Ordering::Fcfs };
        let mut fc = controller(Fairness::GlobalStrict, ordering, false);
        let closed = Gate { saturation: Some(1.0), no_endpoints: false };
        let tickets: Vec<Ticket> = (0..n.min(8))
            .filter_map(|i| match fc.admit(&QueueRequest { priority: 0, flow: "", bytes: 1 }, &closed, i as u64) {
                Admit::Queued(t) => Some(t),
                _ => None,
            })
            .collect();
        let open = Gate { saturation: Some(0.0), no_endpoints: false };
        let out: Vec<Ticket> = core::iter::from_fn(|| fc.next(&open, 0, 100).map(|r| r.ticket)).collect();
        prop_assert_eq!(out, tickets);
    }
}

proptest! {
    /// Round-robin: while flows wait, none gets a second turn before every other waiting flow had one;
    /// global-strict: arrival order across flows.
    #[test]
    fn round_robin_is_fair_and_global_strict_is_arrival_order(
        arrivals in proptest::collection::vec(0u8..5, 1..8),
    ) {
        for fairness in [Fairness::RoundRobin, Fairness::GlobalStrict] {
            let mut fc = controller(fairness, Ordering::Fcfs, false);
            let closed = Gate { saturation: Some(1.0), no_endpoints: false };
            let mut flow_of = HashMap::new();
            for (i, f) in arrivals.iter().enumerate() {
                let name = format!("f{f}");
                if let Admit::Queued(t) = fc.admit(&QueueRequest { priority: 0, flow: &name, bytes: 1 }, &closed, i as u64) {
                    flow_of.insert(t, *f);
                }
            }
            let open = Gate { saturation: Some(0.0), no_endpoints: false };
            let order: Vec<(Ticket, u8)> = core::iter::from_fn(|| fc.next(&open, 0, 100))
                .map(|r| (r.ticket, flow_of[&r.ticket]))
                .collect();
            prop_assert_eq!(order.len(), flow_of.len());
            match fairness {
                Fairness::GlobalStrict => {
                    let tickets: Vec<Ticket> = order.iter().map(|(t, _)| *t).collect();
                    let mut sorted = tickets.clone();
                    sorted.sort();
                    prop_assert_eq!(tickets, sorted);
                }
                Fairness::RoundRobin => {
                    let mut left: HashMap<u8, usize> = HashMap::new();
                    for f in flow_of.values() {
                        *left.entry(*f).or_default() += 1;
                    }
                    let mut served_since: HashMap<u8, std::collections::HashSet<u8>> = HashMap::new();
                    for (_, f) in &order {
                        if let Some(since) = served_since.get(f) {
                            for (other, n) in &left {
                                if other != f && *n > 0 {
                                    prop_assert!(since.contains(other), "flow {} served twice before {}", f, other);
                                }
                            }
                        }
                        served_since.insert(*f, std::collections::HashSet::new());
                        for (g, set) in served_since.iter_mut() {
                            if g != f {
                                set.insert(*f);
                            }
                        }
                        *left.get_mut(f).unwrap() -= 1;
                    }
                }
            }
        }
    }
}

#[test]
fn wait_histogram_uses_llm_d_buckets() {
    let mut h = WaitHistogram::default();
    for ms in [0, 1, 7, 60_000, 60_001] {
        h.record(ms);
    }
    assert_eq!(h.counts[0], 1, "0 ms ≤ 0.1 ms");
    assert_eq!(h.counts[2], 1, "1 ms ≤ 1 ms");
    assert_eq!(h.counts[4], 1, "7 ms ≤ 10 ms");
    assert_eq!(h.counts[15], 1, "60 s");
    assert_eq!(h.counts[16], 1, "above 60 s");
    assert_eq!(h.count(), 5);
    assert_eq!(WAIT_BUCKETS_S.len() + 1, h.counts.len());
}

#[test]
fn expiry_takes_every_request_past_its_budget_in_every_band_and_flow() {
    for ordering in [Ordering::Fcfs, Ordering::Edf] {
        let mut fc = controller(Fairness::RoundRobin, ordering, false);
        let closed = Gate { saturation: Some(1.0), no_endpoints: false };
        let mut arrivals = Vec::new();
        for (i, (priority, flow)) in
            [(0, "a"), (1, "b"), (0, "b"), (-1, "a"), (0, "a"), (1, "c")].iter().enumerate()
        {
            let t = i as u64 * 100;
            match fc.admit(&QueueRequest { priority: *priority, flow, bytes: 1 }, &closed, t) {
                Admit::Queued(ticket) => arrivals.push((ticket, t)),
                other => panic!("{other:?}"),
            }
        }
        // TTL 1 s: at 1 250 ms the requests that arrived at 0, 100 and 200 ms are due, in three flows.
        let out = fc.expire(&closed, 1_250);
        let due: Vec<Ticket> = arrivals.iter().filter(|(_, t)| t + 1_000 <= 1_250).map(|(k, _)| *k).collect();
        assert_eq!(out.iter().map(|r| r.ticket).collect::<Vec<_>>(), due, "{ordering:?}");
        assert!(out.iter().all(|r| r.outcome == QueueOutcome::EvictedTtl));
        assert_eq!(fc.len(), 3);
        assert_eq!(fc.expire(&closed, 1_299).len(), 0);
        assert_eq!(fc.expire(&closed, 1_500).len(), 3);
        assert!(fc.is_empty());
    }
}

/// A picker whose gate is `prefill-backlog-detector` (ours): full at `max_requests` requests or
/// `max_prefill` prompt tokens awaiting their first token per endpoint.
fn backlog_picker(max_requests: u32, max_prefill: u32) -> EndpointPicker {
    let json = format!(
        r#"{{"featureGates": ["flowControl"],
            "plugins": [{{"type": "queue-scorer"}},
                        {{"type": "prefill-backlog-detector",
                          "parameters": {{"maxConcurrency": {max_requests}, "maxPrefillTokens": {max_prefill}}}}}],
            "flowControl": {{"saturationDetector": {{"pluginRef": "prefill-backlog-detector"}}}},
            "objectives": [{{"name": "high", "priority": 10}}, {{"name": "low", "priority": -1}}]}}"#
    );
    EndpointPicker::new(GatewayConfig::from_json(&json).unwrap()).unwrap()
}

/// Waiting requests with a prompt of their own (so their prefill sizes differ).
#[derive(Default)]
struct Prompts {
    waiting: HashMap<Ticket, (String, Option<&'static str>, Vec<u8>)>,
}

impl WaitingRequests for Prompts {
    fn with_request(&mut self, t: Ticket, f: &mut dyn FnMut(&RequestInfo<'_>, Option<&[u8]>)) -> bool {
        let Some((id, objective, body)) = self.waiting.get(&t) else { return false };
        let info = RequestInfo {
            path: "/v1/completions",
            request_id: id,
            objective: *objective,
            ..RequestInfo::default()
        };
        f(&info, Some(body));
        true
    }
}

fn prompt_body(words: usize) -> Vec<u8> {
    let prompt = "word ".repeat(words);
    format!(r#"{{"model": "m", "prompt": "{prompt}", "max_tokens": 4}}"#).into_bytes()
}

fn route_of(outcome: &Outcome) -> &crate::endpoint_picker::Route {
    match outcome {
        Outcome::Route(r) => r,
        other => panic!("not routed: {other:?}"),
    }
}

#[test]
fn the_prefill_backlog_gate_holds_until_first_tokens_come() {
    let mut p = backlog_picker(1000, 200);
    let mut s = pool(1);
    let mut store = Prompts::default();
    let body = prompt_body(100);
    let info = |id, objective| RequestInfo {
        path: "/v1/completions",
        request_id: id,
        objective,
        ..RequestInfo::default()
    };
    // A pod with 250 prompt tokens awaiting their first token is full at 200, with 1 of 1000 requests.
    s.endpoints[0].in_flight.add(300);
    s.endpoints[0].in_flight.await_first_token(250);
    let ids = ["low-0", "normal-1", "high-2", "low-3", "high-4"];
    for id in ids {
        let objective = match id.split('-').next() {
            Some("high") => Some("high"),
            Some("low") => Some("low"),
            _ => None,
        };
        match p.decide_or_queue(&info(id, objective), Some(&body), PoolView::Fresh(&s), 0, 1) {
            Admission::Queued(t) => {
                store.waiting.insert(t, (id.to_string(), objective, body.clone()));
            }
            other => panic!("{id} must wait behind the backlog: {other:?}"),
        }
    }
    assert!(p.poll(Some(&mut s), false, 10, &mut store).settled.is_empty(), "still full");
    // The first tokens come: nothing finished, the request count is as high as before.
    s.endpoints[0].in_flight.first_token(250);
    let settled = p.poll(Some(&mut s), false, 20, &mut store).settled;
    assert!(!settled.is_empty());
    let prompt = route_of(&settled[0].outcome).prompt_tokens;
    assert!(prompt > 0 && prompt < 200, "{prompt}");
    // The poll counted each prompt it sent on the pod and stopped once the backlog reached the limit.
    let expected = 200u64.div_ceil(prompt) as usize;
    assert_eq!(settled.len(), expected.min(ids.len()));
    assert_eq!(s.endpoints[0].in_flight.awaiting_first_token, prompt * settled.len() as u64);
    let order: Vec<&str> =
        settled.iter().map(|x| store.waiting.get(&x.ticket).map_or("", |w| w.0.as_str())).collect();
    assert_eq!(order[..2.min(order.len())], ["high-2", "high-4"][..2.min(order.len())], "strict priority");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// One poll with the prefill-backlog gate dispatches while the pool's backlog and request count are
    /// below their limits and no further: each request it sends is counted (requests and prompt
    /// tokens) before the next is considered, so the pool overshoots by at most the last prompt; what
    /// it leaves waiting, it leaves because the gate is closed.
    #[test]
    fn one_poll_stops_at_the_prefill_backlog_limit(
        endpoints in 1u8..4,
        max_requests in 1u32..12,
        max_prefill in 20u32..400,
        prompts in proptest::collection::vec(1usize..120, 1..30),
        backlog in proptest::collection::vec(0u64..300, 3),
    ) {
        let mut p = backlog_picker(max_requests, max_prefill);
        let mut s = pool(endpoints);
        for (e, b) in s.endpoints.iter_mut().zip(&backlog) {
            e.in_flight.add(*b);
            e.in_flight.await_first_token(*b);
        }
        let mut store = Prompts::default();
        let closed = {
            let mut full = s.clone();
            for e in &mut full.endpoints {
                e.in_flight.await_first_token(u64::from(max_prefill) * 4);
            }
            full
        };
        for (i, words) in prompts.iter().enumerate() {
            let id = format!("r{i}");
            let info = RequestInfo { path: "/v1/completions", request_id: &id, ..RequestInfo::default() };
            let body = prompt_body(*words);
            match p.decide_or_queue(&info, Some(&body), PoolView::Fresh(&closed), 0, 1) {
                Admission::Queued(t) => { store.waiting.insert(t, (id, None, body)); }
                other => prop_assert!(false, "a full pool queues: {:?}", other),
            }
        }
        let n = u64::from(endpoints);
        let limit_tokens = n * u64::from(max_prefill);
        let limit_requests = n * u64::from(max_requests);
        let totals = |s: &PoolSnapshot| {
            s.endpoints.iter().fold((0u64, 0u64), |(r, a), e| {
                (r + u64::from(e.in_flight.requests), a + e.in_flight.awaiting_first_token)
            })
        };
        let settled = p.poll(Some(&mut s), false, 5, &mut store).settled;
        let (mut requests, mut awaiting) = totals(&s);
        // Undo the sends one by one, last first: before each, the gate was open.
        for x in settled.iter().rev() {
            let r = route_of(&x.outcome);
            prop_assert!(r.prompt_tokens > 0);
            requests -= 1;
            awaiting -= r.prompt_tokens;
            prop_assert!(requests < limit_requests && awaiting < limit_tokens,
                "sent at {} requests / {} tokens awaiting (limits {}, {})", requests, awaiting, limit_requests, limit_tokens);
        }
        let (requests, awaiting) = totals(&s);
        if p.flow_control().is_some_and(|fc| !fc.is_empty()) {
            prop_assert!(requests >= limit_requests || awaiting >= limit_tokens, "left waiting with the gate open");
        }
        prop_assert_eq!(settled.len() + p.flow_control().map_or(0, |fc| fc.len() as usize), prompts.len());
    }
}
