//! Parity: for the same snapshot, requests and seeds, the shim's gRPC answers name exactly the
//! endpoints the core picks when called directly (what the Wasm filter does), request after request.
//! The seed rule is `picker::request_seed(x-request-id)`.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use epp_shim::extproc::machine::{BodyMode, StreamSettings};
use epp_shim::extproc::service::ExtProcService;
use epp_shim::metrics::Metrics;
use epp_shim::picker::{request_seed, PickerHandle};
use epp_shim::pool::Pool;
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::endpoint_picker::{EndpointPicker, Outcome, PoolView, RequestInfo};
use scheduler_core::model::{Endpoint, Metrics as ServerMetrics};
use std::sync::Arc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;

fn raw(k: &str, v: &str) -> HeaderValue {
    HeaderValue { key: k.into(), value: String::new(), raw_value: v.as_bytes().to_vec() }
}

async fn ask(channel: Channel, id: &str, body: &str) -> String {
    let headers = HttpHeaders {
        headers: Some(HeaderMap { headers: vec![raw(":path", "/v1/completions"), raw("x-request-id", id)] }),
        ..HttpHeaders::default()
    };
    let msgs = vec![
        ProcessingRequest { request: Some(In::RequestHeaders(headers)), ..Default::default() },
        ProcessingRequest {
            request: Some(In::RequestBody(HttpBody {
                body: body.as_bytes().to_vec(),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        },
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    let mut stream =
        ExternalProcessorClient::new(channel).process(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    while stream.message().await.unwrap().is_some() {}
    let Some(Out::RequestHeaders(h)) = first.response else {
        panic!("expected a headers response: {first:?}")
    };
    let m = h.response.unwrap().header_mutation.unwrap();
    let v = m
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == "x-gateway-destination-endpoint")
        .unwrap();
    String::from_utf8(v.raw_value.clone()).unwrap()
}

/// Six equally loaded endpoints published now, and the shim's gRPC service on a loopback port.
async fn start(config: &GatewayConfig) -> (Channel, Arc<Metrics>, Arc<Pool>) {
    let pool = Pool::new("parity");
    let endpoints: Vec<Endpoint> = (1..=6).map(|i| Endpoint::new(format!("10.9.0.{i}:8000"))).collect();
    pool.set_endpoints(&endpoints);
    let now = epp_shim::unix_ms();
    for e in &endpoints {
        let m = ServerMetrics { kv_usage: 0.2, updated_at_ms: now, ..ServerMetrics::default() };
        pool.record_scrape(&e.address, Some(m));
    }
    pool.publish(now).unwrap();
    let metrics = Arc::new(Metrics::default());
    let picker = PickerHandle::spawn(config.clone(), Arc::clone(&pool), Arc::clone(&metrics)).unwrap();
    let settings = StreamSettings {
        destination_header: config.routing.destination_header.clone(),
        prefill_header: config.routing.prefill_header.clone(),
        served_header: config.routing.served_header.clone(),
        max_body_bytes: config.limits.max_body_bytes,
        default_mode: BodyMode::FullDuplex,
        forced_mode: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ExtProcService::new(picker, settings, Arc::clone(&metrics)).into_server();
    tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming(service, TcpListenerStream::new(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    (channel, metrics, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_picks_what_the_core_picks_for_the_same_snapshot_request_and_seed() {
    let config = GatewayConfig::from_json("").unwrap();
    // Ties between equal endpoints are broken by the seed, so a wrong seed rule shows at once; two
    // prompts repeat, so the prefix index (state carried from pick to pick) must evolve the same way too.
    let (channel, _, pool) = start(&config).await;
    let snapshot = pool.latest().unwrap().snapshot;
    let mut reference = EndpointPicker::new(config).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..24 {
        let id = format!("req-{i}");
        let prompt = match i % 3 {
            0 => "a long shared system prompt that several requests start with ".repeat(20),
            1 => "another prompt entirely, repeated so it spans several prefix blocks ".repeat(20),
            _ => format!("unique prompt number {i}"),
        };
        let body = format!(r#"{{"model":"m","prompt":"{prompt}","max_tokens":8}}"#);
        let got = ask(channel.clone(), &id, &body).await;
        let info = RequestInfo { path: "/v1/completions", request_id: &id, ..RequestInfo::default() };
        let expected = match reference.pick(
            &info,
            Some(body.as_bytes()),
            PoolView::Fresh(&snapshot),
            epp_shim::unix_ms(),
            request_seed(&id),
        ) {
            Outcome::Route(r) => r.header_value,
            other => panic!("the core did not route: {other:?}"),
        };
        assert_eq!(got, expected, "request {id}");
        seen.insert(got);
    }
    assert!(seen.len() > 1, "the seeds spread the picks: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_streams_all_get_answers_and_release_their_in_flight() {
    let config = GatewayConfig::from_json("").unwrap();
    let (channel, metrics, pool) = start(&config).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"model":"m","prompt":"concurrent request {i}","max_tokens":8}}"#);
            ask(channel, &format!("c-{i}"), &body).await
        }));
    }
    for t in tasks {
        let dest = t.await.unwrap();
        assert!(dest.starts_with("10.9.0."), "{dest}");
    }
    let text = metrics.render(&pool, epp_shim::unix_ms());
    assert!(text.contains("epp_shim_decisions_total{outcome=\"route\",reason=\"\"} 300"), "{text}");
    // Releases are queued behind the last answers; give the picker thread a moment.
    for _ in 0..100 {
        if !metrics.render(&pool, epp_shim::unix_ms()).contains("epp_shim_endpoint_in_flight_requests{") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("in-flight counts never returned to zero");
}
