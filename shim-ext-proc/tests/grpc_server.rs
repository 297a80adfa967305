//! The real binary's gRPC server driven by tonic clients the way gateways drive it, against model-sim
//! replicas on loopback: an NGINX-style client (headers with `value` only, one body message with
//! end-of-stream, then half-close), TLS with ALPN h2, gRPC health names, and the metrics page.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{epp_shim, http, model_sim, wait_for, Proc};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation as BodyMut;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use scheduler_core::snapshot_codec;
use std::net::SocketAddr;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn config(replicas: &[&Proc]) -> String {
    let eps: Vec<String> =
        replicas.iter().map(|p| format!("\"{}\"", p.addr("model-sim listening"))).collect();
    format!(r#"{{"pool": {{"name": "sim", "endpoints": [{}]}}}}"#, eps.join(","))
}

/// Waits until the shim's snapshot has metrics for every endpoint (so picks are made on real load).
fn wait_scraped(shim: &Proc, endpoints: usize) {
    let http_addr = shim.addr("epp-shim http");
    wait_for(20, "every endpoint scraped", || {
        let (status, _, body) = http(http_addr, "GET", "/snapshot", &[], b"");
        let snap = (status == 200).then(|| snapshot_codec::decode(&body).unwrap())?;
        (snap.endpoints.len() == endpoints && snap.endpoints.iter().all(|e| e.metrics.is_some()))
            .then_some(())
    });
}

fn value_only(key: &str, value: &str) -> HeaderValue {
    HeaderValue { key: key.into(), value: value.into(), raw_value: Vec::new() }
}

/// Sends `messages`, half-closes, and returns everything the server answered until it ended the stream.
async fn exchange(channel: Channel, messages: Vec<ProcessingRequest>) -> Vec<ProcessingResponse> {
    let mut client = ExternalProcessorClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(messages.len().max(1));
    for m in messages {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    let mut stream = client.process(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        out.push(r);
    }
    out
}

fn nginx_request(body: &[u8]) -> Vec<ProcessingRequest> {
    let headers = HttpHeaders {
        headers: Some(HeaderMap {
            headers: vec![
                value_only(":method", "POST"),
                value_only(":path", "/v1/chat/completions"),
                value_only("content-type", "application/json"),
            ],
        }),
        ..HttpHeaders::default()
    };
    vec![
        ProcessingRequest { request: Some(In::RequestHeaders(headers)), ..ProcessingRequest::default() },
        ProcessingRequest {
            request: Some(In::RequestBody(HttpBody {
                body: body.to_vec(),
                end_of_stream: true,
                ..HttpBody::default()
            })),
            ..ProcessingRequest::default()
        },
    ]
}

fn destination(r: &ProcessingResponse) -> Option<String> {
    let Some(Out::RequestHeaders(h)) = &r.response else { return None };
    let m = h.response.as_ref()?.header_mutation.as_ref()?;
    m.set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == "x-gateway-destination-endpoint")
        .map(|h| String::from_utf8(h.raw_value.clone()).unwrap())
}

const CHAT: &[u8] = br#"{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_style_client_is_routed_to_a_replica_that_then_serves_the_request() {
    let (a, b) = (model_sim(&[]), model_sim(&[]));
    let (shim, _dir) = epp_shim(&config(&[&a, &b]), &["--plaintext"]);
    wait_scraped(&shim, 2);
    let channel = Channel::from_shared(format!("http://{}", shim.addr("epp-shim ext_proc")))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let out = exchange(channel.clone(), nginx_request(CHAT)).await;
    assert_eq!(out.len(), 2, "headers response then the echoed body: {out:?}");
    let dest = destination(&out[0]).expect("a destination header");
    let replicas = [a.addr("model-sim listening").to_string(), b.addr("model-sim listening").to_string()];
    assert!(replicas.contains(&dest), "{dest} is not one of {replicas:?}");
    let Some(Out::RequestBody(body)) = &out[1].response else {
        panic!("expected the body, got {:?}", out[1])
    };
    let Some(BodyMut::StreamedResponse(s)) =
        &body.response.as_ref().unwrap().body_mutation.as_ref().unwrap().mutation
    else {
        panic!("expected a streamed body mutation")
    };
    assert_eq!((s.body.as_slice(), s.end_of_stream), (CHAT, true));

    // What the gateway would do next: send the request where the picker said.
    let dest: SocketAddr = dest.parse().unwrap();
    let (status, _, reply) = tokio::task::spawn_blocking(move || {
        http(dest, "POST", "/v1/chat/completions", &[("content-type", "application/json")], CHAT)
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));

    // A body that is not JSON gets a 400 with an OpenAI-shaped error, as an ImmediateResponse.
    let out = exchange(channel, nginx_request(b"{not json")).await;
    let Some(Out::ImmediateResponse(imm)) = &out[0].response else {
        panic!("expected a local reply: {out:?}")
    };
    assert_eq!(imm.status.unwrap().code, 400);
    let err: serde_json::Value = serde_json::from_slice(&imm.body).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    let metrics_addr = shim.addr("epp-shim http");
    let (_, _, text) =
        tokio::task::spawn_blocking(move || http(metrics_addr, "GET", "/metrics", &[], b"")).await.unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("epp_shim_decisions_total{outcome=\"route\",reason=\"\"} 1"), "{text}");
    assert!(text.contains("epp_shim_decisions_total{outcome=\"reply\",reason=\"bad_request\"} 1"), "{text}");
    assert!(text.contains("epp_shim_endpoint_metrics_age_seconds{endpoint="), "{text}");
    assert!(text.contains("epp_shim_decision_duration_seconds_count 2"), "{text}");
    assert!(
        !text.contains("epp_shim_endpoint_in_flight_requests{"),
        "finished requests leave no in-flight: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_alpn_h2_and_every_health_name_serving() {
    let sim = model_sim(&[]);
    let dir = common::tempdir::Dir::new("epp-shim-cert");
    let pair = epp_shim::tls::self_signed(&["localhost"]).unwrap();
    let (cert, key) = (dir.path.join("tls.crt"), dir.path.join("tls.key"));
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let (shim, _cfg) = epp_shim(
        &config(&[&sim]),
        &["--cert-path", cert.to_str().unwrap(), "--key-path", key.to_str().unwrap()],
    );
    let line = shim.lines.iter().find(|l| l.starts_with("epp-shim ext_proc")).unwrap();
    assert!(line.contains("grpcs://"), "{line}");
    let tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pair.cert_pem)).domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", shim.addr("epp-shim ext_proc")))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let headers = HttpHeaders {
        headers: Some(HeaderMap {
            headers: vec![value_only(":method", "GET"), value_only(":path", "/v1/models")],
        }),
        end_of_stream: true,
        ..HttpHeaders::default()
    };
    let out = exchange(
        channel,
        vec![ProcessingRequest { request: Some(In::RequestHeaders(headers)), ..Default::default() }],
    )
    .await;
    assert_eq!(destination(&out[0]), Some(sim.addr("model-sim listening").to_string()));

    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let health = Channel::from_shared(format!("http://{}", shim.addr("epp-shim health")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(health);
    for name in
        ["", "liveness", "readiness", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor"]
    {
        let status = wait_for_serving(&mut client, name).await;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {name:?}");
    }
    let unknown = client.check(HealthCheckRequest { service: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

async fn wait_for_serving(
    client: &mut tonic_health::pb::health_client::HealthClient<Channel>,
    name: &str,
) -> i32 {
    let mut last = -1;
    for _ in 0..100 {
        if let Ok(r) = client.check(tonic_health::pb::HealthCheckRequest { service: name.into() }).await {
            last = r.into_inner().status;
            if last == 1 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    last
}

#[test]
fn help_explains_every_flag_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_epp-shim")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("--collector-only") && text.contains("--plaintext"), "{text}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_epp-shim")).arg("--bogus").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown flag \"--bogus\""));
}
