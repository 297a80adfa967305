//! Flow control in the real binary: ext_proc streams wait in the queue while the pool is full, go in
//! priority order as places free, leave the queue when the gateway resets them, are refused 429 with an
//! OpenAI-shaped body when the queue is full, and time out (429) after `defaultRequestTTL`. The pool is
//! one model-sim replica; the concurrency detector counts the gateway's own in-flight requests (one
//! place), so what is in flight is what the test holds open.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{epp_shim, http, model_sim, wait_for, Proc};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use scheduler_core::snapshot_codec;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const CHAT: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;

fn config(replica: &Proc, flow_control: &str) -> String {
    format!(
        r#"{{"pool": {{"name": "sim", "endpoints": ["{}"]}},
            "featureGates": ["flowControl"],
            "plugins": [{{"type": "queue-scorer"}},
                        {{"type": "concurrency-detector", "parameters": {{"maxConcurrency": 1, "headroom": 10}}}}],
            "flowControl": {flow_control},
            "objectives": [{{"name": "high", "priority": 10}}, {{"name": "batch", "priority": -1}}]}}"#,
        replica.addr("model-sim listening")
    )
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue { key: key.into(), value: value.into(), raw_value: Vec::new() }
}

fn request(id: &str, objective: Option<&str>) -> Vec<ProcessingRequest> {
    let mut headers = vec![
        header(":method", "POST"),
        header(":path", "/v1/chat/completions"),
        header("content-type", "application/json"),
        header("x-request-id", id),
    ];
    if let Some(o) = objective {
        headers.push(header("x-gateway-inference-objective", o));
    }
    let head = HttpHeaders { headers: Some(HeaderMap { headers }), ..HttpHeaders::default() };
    vec![
        ProcessingRequest { request: Some(In::RequestHeaders(head)), ..ProcessingRequest::default() },
        ProcessingRequest {
            request: Some(In::RequestBody(HttpBody {
                body: CHAT.to_vec(),
                end_of_stream: true,
                ..HttpBody::default()
            })),
            ..ProcessingRequest::default()
        },
    ]
}

/// A stream the test holds open, as Envoy holds it while the request is served.
struct Stream {
    tx: Option<mpsc::Sender<ProcessingRequest>>,
    rx: Streaming<ProcessingResponse>,
}

impl Stream {
    async fn open(channel: &Channel, id: &str, objective: Option<&str>) -> Stream {
        let (tx, rx) = mpsc::channel(8);
        for m in request(id, objective) {
            tx.send(m).await.unwrap();
        }
        let mut client = ExternalProcessorClient::new(channel.clone());
        let rx = client.process(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Stream { tx: Some(tx), rx }
    }

    /// The next answer, past the request body echoed back: routed (`Ok(destination)`) or answered
    /// locally (`Err((status, body))`).
    async fn answer(&mut self) -> Result<String, (u32, serde_json::Value)> {
        let mut r = self.rx.message().await.unwrap().expect("an answer");
        while let Some(Out::RequestBody(_)) = r.response {
            r = self.rx.message().await.unwrap().expect("an answer");
        }
        match r.response {
            Some(Out::RequestHeaders(h)) => {
                let m = h.response.unwrap().header_mutation.unwrap();
                let h = m.set_headers.iter().filter_map(|o| o.header.as_ref());
                let d = h.into_iter().find(|h| h.key == "x-gateway-destination-endpoint").unwrap();
                Ok(String::from_utf8(d.raw_value.clone()).unwrap())
            }
            Some(Out::ImmediateResponse(i)) => {
                Err((i.status.unwrap().code as u32, serde_json::from_slice(&i.body).unwrap()))
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// The request is done: the gateway half-closes and the stream ends.
    async fn end(mut self) {
        self.tx.take();
        while let Ok(Some(_)) = self.rx.message().await {}
    }
}

fn metric(shim: &Proc, series: &str) -> Option<f64> {
    let (_, _, body) = http(shim.addr("epp-shim http"), "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every series of `family` (0 when it has none).
fn total(shim: &Proc, family: &str) -> f64 {
    let (_, _, body) = http(shim.addr("epp-shim http"), "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    let prefix = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn wait_metric(shim: &Proc, series: &'static str, want: f64) {
    wait_until(series, || metric(shim, series) == Some(want)).await;
}

/// Nothing queued, nothing in flight: the gateway's own gauges and the reference running gauge.
async fn wait_idle(shim: &Proc) {
    wait_until("queue and in-flight gauges at zero", || {
        total(shim, "llm_d_epp_flow_control_queue_size") == 0.0
            && total(shim, "epp_shim_endpoint_in_flight_requests") == 0.0
            && total(shim, "llm_d_epp_request_running") == 0.0
    })
    .await;
}

fn start(flow_control: &str) -> (Proc, Proc, common::tempdir::Dir) {
    let sim = model_sim(&[]);
    let (shim, dir) = epp_shim(&config(&sim, flow_control), &["--plaintext"]);
    let http_addr = shim.addr("epp-shim http");
    wait_for(20, "the replica scraped", || {
        let (status, _, body) = http(http_addr, "GET", "/snapshot", &[], b"");
        let snap = (status == 200).then(|| snapshot_codec::decode(&body).unwrap())?;
        snap.endpoints.iter().all(|e| e.metrics.is_some()).then_some(())
    });
    (sim, shim, dir)
}

async fn channel(shim: &Proc) -> Channel {
    Channel::from_shared(format!("http://{}", shim.addr("epp-shim ext_proc")))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

const QUEUED: &str = r#"llm_d_epp_flow_control_queue_size{priority="0",inference_pool="sim"}"#;
const QUEUED_HIGH: &str = r#"llm_d_epp_flow_control_queue_size{priority="10",inference_pool="sim"}"#;
const QUEUED_BATCH: &str = r#"llm_d_epp_flow_control_queue_size{priority="-1",inference_pool="sim"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_streams_go_in_priority_order_as_the_place_frees() {
    let (sim, shim, _dir) = start(r#"{"saturationDetector": {"pluginRef": "concurrency-detector"}}"#);
    let ch = channel(&shim).await;
    let mut first = Stream::open(&ch, "first", None).await;
    let replica = sim.addr("model-sim listening").to_string();
    assert_eq!(first.answer().await.unwrap(), replica);

    let mut batch = Stream::open(&ch, "batch", Some("batch")).await;
    wait_metric(&shim, QUEUED_BATCH, 1.0).await;
    let mut normal = Stream::open(&ch, "normal", None).await;
    wait_metric(&shim, QUEUED, 1.0).await;
    let mut high = Stream::open(&ch, "high", Some("high")).await;
    wait_metric(&shim, QUEUED_HIGH, 1.0).await;

    // One place: each end lets exactly the highest waiting request go.
    first.end().await;
    assert_eq!(high.answer().await.unwrap(), replica);
    wait_metric(&shim, QUEUED_HIGH, 0.0).await;
    assert_eq!(metric(&shim, QUEUED), Some(1.0), "normal still waits behind high");
    assert_eq!(metric(&shim, QUEUED_BATCH), Some(1.0));
    high.end().await;
    assert_eq!(normal.answer().await.unwrap(), replica);
    normal.end().await;
    assert_eq!(batch.answer().await.unwrap(), replica, "a sheddable request waited instead of being shed");
    batch.end().await;
    wait_idle(&shim).await;
    let dispatched =
        r#"llm_d_epp_flow_control_requests_total{outcome="Dispatched",priority="10",inference_pool="sim"}"#;
    assert_eq!(metric(&shim, dispatched), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_leaves_the_queue_and_a_full_queue_refuses_429() {
    let (sim, shim, _dir) = start(
        r#"{"saturationDetector": {"pluginRef": "concurrency-detector"},
            "priorityBands": [{"priority": 0, "maxRequests": 1}]}"#,
    );
    let ch = channel(&shim).await;
    let mut first = Stream::open(&ch, "first", None).await;
    assert!(first.answer().await.is_ok());
    let waiting = Stream::open(&ch, "waiting", None).await;
    wait_metric(&shim, QUEUED, 1.0).await;

    let mut refused = Stream::open(&ch, "refused", None).await;
    let (status, body) = refused.answer().await.unwrap_err();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "flow_control_capacity");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");

    // The gateway resets the waiting stream (its client went away): its place frees at once.
    drop(waiting);
    wait_metric(&shim, QUEUED, 0.0).await;
    let cancelled = r#"llm_d_epp_flow_control_requests_total{outcome="EvictedContextCancelled",priority="0",inference_pool="sim"}"#;
    wait_metric(&shim, cancelled, 1.0).await;
    let mut next = Stream::open(&ch, "next", None).await;
    wait_metric(&shim, QUEUED, 1.0).await;
    first.end().await;
    assert_eq!(next.answer().await.unwrap(), sim.addr("model-sim listening").to_string());
    next.end().await;
    wait_idle(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_past_its_ttl_is_answered_429() {
    let (_sim, shim, _dir) = start(
        r#"{"saturationDetector": {"pluginRef": "concurrency-detector"}, "defaultRequestTTL": "300ms"}"#,
    );
    let ch = channel(&shim).await;
    let mut first = Stream::open(&ch, "first", None).await;
    assert!(first.answer().await.is_ok());
    let mut late = Stream::open(&ch, "late", None).await;
    let (status, body) = late.answer().await.unwrap_err();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "flow_control_ttl");
    assert_eq!(metric(&shim, QUEUED), Some(0.0));
    let expired =
        r#"llm_d_epp_flow_control_requests_total{outcome="EvictedTTL",priority="0",inference_pool="sim"}"#;
    assert_eq!(metric(&shim, expired), Some(1.0));
    first.end().await;
    wait_idle(&shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_ends_a_sheddable_request_in_flight_for_a_waiting_higher_one() {
    let (sim, shim, _dir) =
        start(r#"{"saturationDetector": {"pluginRef": "concurrency-detector"}, "enableEviction": true}"#);
    let ch = channel(&shim).await;
    let replica = sim.addr("model-sim listening").to_string();
    let mut batch = Stream::open(&ch, "batch", Some("batch")).await;
    assert_eq!(batch.answer().await.unwrap(), replica, "sent, and evictable (priority < 0)");
    let mut high = Stream::open(&ch, "high", Some("high")).await;
    // The high request is blocked by the sheddable one: eviction ends it with 429...
    let (status, body) = batch.answer().await.unwrap_err();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "flow_control_evicted", "{body}");
    assert!(batch.rx.message().await.unwrap().is_none(), "the evicted stream ends");
    // ...and the place it held goes to the high request.
    assert_eq!(high.answer().await.unwrap(), replica);
    let revoked = r#"llm_d_epp_flow_control_revocations_total{outcome="confirmed",inference_pool="sim"}"#;
    assert_eq!(metric(&shim, revoked), Some(1.0));
    high.end().await;
    wait_idle(&shim).await;

    // A request of priority 0 in flight is never evicted: a high one waits for it instead.
    let mut normal = Stream::open(&ch, "normal", None).await;
    assert!(normal.answer().await.is_ok());
    let mut high = Stream::open(&ch, "high-2", Some("high")).await;
    wait_metric(&shim, QUEUED_HIGH, 1.0).await;
    normal.end().await;
    assert_eq!(high.answer().await.unwrap(), replica);
    high.end().await;
    assert_eq!(metric(&shim, revoked), Some(1.0));
    wait_idle(&shim).await;
}
