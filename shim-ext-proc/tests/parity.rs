//! Parity (issue 6): for the same snapshot, requests, clock and seed, the shim decides exactly as the
//! Wasm filter (the built `.wasm` in the host emulator) and as the core called directly, and their
//! clients receive the same response bodies. The seed rule is the core's
//! `endpoint_picker::request_seed(x-request-id)`; changing it in one product, giving the shim another
//! clock, or dropping the model restore in one makes these tests fail (checked by mutation).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HeaderMutation, HeadersResponse, HttpBody, HttpHeaders, ProcessingRequest,
};
use epp_shim::extproc::machine::{BodyMode, StreamSettings};
use epp_shim::extproc::service::ExtProcService;
use epp_shim::metrics::Metrics;
use epp_shim::picker::PickerHandle;
use epp_shim::pool::Pool;
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::endpoint_picker::{request_seed, EndpointPicker, Outcome, PoolView, RequestInfo};
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
    destination_of(h)
}

/// The destination header the shim set in its request-headers response.
fn destination_of(h: HeadersResponse) -> String {
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
        pool.record_scrape(&e.address, Ok(m));
    }
    pool.publish(now).unwrap();
    let metrics = Arc::new(Metrics::default());
    let picker = PickerHandle::spawn(config.clone(), Arc::clone(&pool), Arc::clone(&metrics)).unwrap();
    let channel = serve(config, picker, Arc::clone(&metrics)).await;
    (channel, metrics, pool)
}

/// The shim's gRPC service around `picker` on a loopback port (FULL_DUPLEX_STREAMED unless told).
async fn serve(config: &GatewayConfig, picker: PickerHandle, metrics: Arc<Metrics>) -> Channel {
    let settings = StreamSettings::new(config, BodyMode::FullDuplex, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ExtProcService::new(picker, settings, metrics).into_server();
    tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming(service, TcpListenerStream::new(listener)),
    );
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
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
        let expected = match reference.decide(
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

// The shim against the built Wasm filter.

use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation as BodyMut;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use proxy_wasm_emulator::{build_wasm_crate, workspace_root, Host, Plugin, StreamId};
use scheduler_core::model::Endpoint as PoolEndpoint;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a client would notice: where the request went and the body the server received, or the status
/// of the local reply.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decided {
    Route { destination: String, upstream_body: String },
    Reply(u32),
}

/// One request of the sequence both products see.
struct Req {
    id: String,
    path: &'static str,
    body: String,
    objective: Option<&'static str>,
    session: Option<String>,
    /// Further request headers (a forced model, a routing header a client should not set).
    headers: Vec<(&'static str, String)>,
}

fn requests(n: usize) -> Vec<Req> {
    let systems = [
        "You are a careful assistant for the billing team. Answer in one short paragraph. ".repeat(6),
        "You translate user manuals from German into plain English, keeping units intact. ".repeat(6),
    ];
    let models = ["llama", "llama", "lora-a", "lora-b", "lora-c", "llama-v2"];
    (0..n)
        .map(|i| {
            let model = models[(i * 7 + i / 5) % models.len()];
            let user = format!("question {} about invoice {}", i % 9, i * 31 % 17);
            let max_tokens = 16 + (i * 13) % 200;
            let (path, body) = if i % 4 == 3 {
                let prompt = format!("{}{user}", systems[i % 2]);
                ("/v1/completions", format!(r#"{{"model": "{model}", "prompt": "{prompt}", "max_tokens": {max_tokens}}}"#))
            } else {
                let system = &systems[(i / 3) % 2];
                (
                    "/v1/chat/completions",
                    format!(
                        r#"{{"model":"{model}","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}],"max_tokens":{max_tokens}}}"#
                    ),
                )
            };
            Req {
                id: format!("parity-{i:03}"),
                path,
                body,
                objective: [None, Some("batch"), Some("interactive"), None][i % 4],
                session: (i % 5 == 0).then(|| format!("session-{}", i % 3)),
                headers: Vec::new(),
            }
        })
        .collect()
}

/// Metrics of endpoint `i` (1-based) in publishing round `round`: the shortest queue moves from round to
/// round, memory and LoRA slots differ, and endpoints 5 and 6 stay identical so only the seed separates
/// them.
fn metrics_of(i: usize, round: usize, now_ms: u64) -> ServerMetrics {
    let twin = i.min(5);
    let (running_loras, waiting_loras): (&[&str], &[&str]) = match i {
        1 => (&["lora-a"], &[]),
        2 => (&["lora-a", "lora-b"], &[]),
        3 => (&["lora-b"], &["lora-c"]),
        4 => (&["lora-c", "lora-a"], &[]),
        _ => (&[], &[]),
    };
    // Round 3 saturates the pool: sheddable (batch) requests are refused there, by both.
    let saturated = round == 3;
    ServerMetrics {
        waiting: ((twin + 2 * round) % 5) as u32 + if saturated { 8 } else { 0 },
        running: 2 + ((twin + round) % 4) as u32,
        kv_usage: if saturated { 0.95 } else { 0.2 + 0.1 * ((twin * 3 + round) % 5) as f64 },
        running_loras: running_loras.iter().map(|s| s.to_string()).collect(),
        waiting_loras: waiting_loras.iter().map(|s| s.to_string()).collect(),
        max_lora: Some(2),
        updated_at_ms: now_ms.saturating_sub(20 + twin as u64 * 3),
        ..ServerMetrics::default()
    }
}

/// Our sections for both products; `picker` is the `EndpointPickerConfig` part.
fn parity_config(picker: &str) -> String {
    let sep = if picker.is_empty() { "" } else { "," };
    format!(
        r#"{{"pool": {{"name": "parity"}}, "collector": {{"mode": "off"}},
            "objectives": [{{"name": "batch", "priority": -1}}, {{"name": "interactive", "priority": 5}}],
            "modelRewrites": [{{"rules": [{{"matches": [{{"model": {{"type": "Exact", "value": "llama"}}}}],
                "targets": [{{"modelRewrite": "llama-v2", "weight": 50}}, {{"modelRewrite": "llama", "weight": 50}}]}}]}}]
            {sep}{picker}}}"#
    )
}

/// GIE's default scorers plus seed- and clock-sensitive plugins: a weighted random pick, the prefix
/// affinity filter (its exploration roll hashes the clock), LoRA (GIE's scorer and ours) and session
/// affinity.
const RICH: &str = r#""plugins": [
    {"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 8}},
    {"type": "prefix-cache-affinity-filter", "parameters": {"affinityThreshold": 0.5, "maxTTFTPenaltyMs": 1000}},
    {"type": "inflight-aware-queue-scorer"},
    {"type": "kv-cache-utilization-scorer"},
    {"type": "lora-affinity-scorer"},
    {"type": "lora-slot-scorer", "parameters": {"baseModels": ["llama"]}},
    {"type": "session-affinity-scorer"},
    {"type": "weighted-random-picker"}
  ],
  "schedulingProfiles": [{"name": "default", "plugins": [
    {"pluginRef": "prefix-cache-affinity-filter"},
    {"pluginRef": "inflight-aware-queue-scorer", "weight": 2},
    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
    {"pluginRef": "prefix-cache-scorer", "weight": 3},
    {"pluginRef": "lora-affinity-scorer", "weight": 1},
    {"pluginRef": "lora-slot-scorer", "weight": 2},
    {"pluginRef": "session-affinity-scorer", "weight": 1},
    {"pluginRef": "weighted-random-picker"}
  ]}]"#;

fn filter_wasm() -> std::path::PathBuf {
    let root = workspace_root();
    build_wasm_crate(&root.join("filter/Cargo.toml"), "epp_filter", &root.join("target/filter-wasm"))
        .unwrap_or_else(|e| panic!("building the filter failed: {e}"))
}

fn host_now_ms(host: &Host) -> u64 {
    proxy_wasm_emulator::host::DEFAULT_START_UNIX_NS / 1_000_000 + host.now().as_millis() as u64
}

/// A shim stream held open after its decision (the request is still being served).
struct Held {
    tx: tokio::sync::mpsc::Sender<ProcessingRequest>,
    responses: tonic::Streaming<ProcessingResponse>,
}

impl Held {
    /// The upstream answers and the request completes: returns the body the client receives. The shim
    /// releases its in-flight count as the stream ends; waiting for the server's end of stream orders
    /// that release before the next pick.
    async fn finish(self, content_type: &str, chunks: &[Vec<u8>]) -> String {
        let Held { tx, mut responses } = self;
        let headers = HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![raw(":status", "200"), raw("content-type", content_type)],
            }),
            ..HttpHeaders::default()
        };
        tx.send(ProcessingRequest { request: Some(In::ResponseHeaders(headers)), ..Default::default() })
            .await
            .unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            let body =
                HttpBody { body: chunk.clone(), end_of_stream: i + 1 == chunks.len(), ..Default::default() };
            tx.send(ProcessingRequest { request: Some(In::ResponseBody(body)), ..Default::default() })
                .await
                .unwrap();
        }
        drop(tx);
        let mut client = Vec::new();
        while let Some(msg) = responses.message().await.unwrap() {
            if let Some(Out::ResponseBody(b)) = msg.response {
                if let Some(BodyMut::StreamedResponse(s)) = b.response.and_then(|c| c.body_mutation?.mutation)
                {
                    client.extend_from_slice(&s.body);
                }
            }
        }
        String::from_utf8(client).unwrap()
    }
}

/// What a model server answers to a request it received as `upstream_body`: JSON or server-sent
/// events naming the model it ran, with usage, cut into two chunks.
fn upstream_answer(i: usize, upstream_body: &str) -> (&'static str, Vec<Vec<u8>>) {
    let sent: serde_json::Value = serde_json::from_str(upstream_body).unwrap();
    let model = sent["model"].as_str().unwrap();
    let usage = format!(r#""usage":{{"prompt_tokens":{},"completion_tokens":{}}}"#, 10 + i, i % 7);
    let (content_type, body) = if i.is_multiple_of(2) {
        (
            "application/json",
            format!(r#"{{"id":"r{i}","model":"{model}","choices":[{{"text":"ok"}}],{usage}}}"#),
        )
    } else {
        let delta = format!(r#"data: {{"model":"{model}","choices":[{{"delta":{{"content":"o"}}}}]}}"#);
        let last = format!(r#"data: {{"model":"{model}","choices":[],{usage}}}"#);
        ("text/event-stream", format!("{delta}\n\n{last}\n\ndata: [DONE]\n\n"))
    };
    let (a, b) = body.as_bytes().split_at(37);
    (content_type, vec![a.to_vec(), b.to_vec()])
}

fn shim_headers(r: &Req) -> HttpHeaders {
    let mut h = vec![
        raw(":method", "POST"),
        raw(":path", r.path),
        raw(":authority", "gateway"),
        raw("content-type", "application/json"),
        raw("x-request-id", &r.id),
    ];
    if let Some(o) = r.objective {
        h.push(raw("x-gateway-inference-objective", o));
    }
    if let Some(s) = &r.session {
        h.push(raw("x-session-token", s));
    }
    h.extend(r.headers.iter().map(|(k, v)| raw(k, v)));
    HttpHeaders { headers: Some(HeaderMap { headers: h }), ..HttpHeaders::default() }
}

async fn shim_send(channel: Channel, r: &Req) -> (Decided, Option<Held>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ProcessingRequest { request: Some(In::RequestHeaders(shim_headers(r))), ..Default::default() })
        .await
        .unwrap();
    tx.send(ProcessingRequest {
        request: Some(In::RequestBody(HttpBody {
            body: r.body.as_bytes().to_vec(),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses =
        ExternalProcessorClient::new(channel).process(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let destination = match first.response {
        Some(Out::ImmediateResponse(ir)) => {
            return (Decided::Reply(ir.status.map_or(0, |s| s.code as u32)), None);
        }
        Some(Out::RequestHeaders(h)) => destination_of(h),
        other => panic!("unexpected first response {other:?}"),
    };
    // The body follows as streamed mutations (rewritten when the model changed).
    let mut upstream = Vec::new();
    loop {
        let msg = responses.message().await.unwrap().unwrap();
        let Some(Out::RequestBody(b)) = msg.response else { panic!("expected a body mutation: {msg:?}") };
        let Some(BodyMut::StreamedResponse(s)) = b.response.unwrap().body_mutation.unwrap().mutation else {
            panic!("expected a streamed body mutation")
        };
        upstream.extend_from_slice(&s.body);
        if s.end_of_stream {
            break;
        }
    }
    let decided = Decided::Route { destination, upstream_body: String::from_utf8(upstream).unwrap() };
    (decided, Some(Held { tx, responses }))
}

fn filter_send(host: &mut Host, vm: proxy_wasm_emulator::VmId, r: &Req) -> (Decided, Option<StreamId>) {
    let mut headers = vec![
        (":method", "POST"),
        (":path", r.path),
        (":authority", "gateway"),
        ("content-type", "application/json"),
        ("x-request-id", r.id.as_str()),
    ];
    if let Some(o) = r.objective {
        headers.push(("x-gateway-inference-objective", o));
    }
    if let Some(s) = &r.session {
        headers.push(("x-session-token", s.as_str()));
    }
    headers.extend(r.headers.iter().map(|(k, v)| (*k, v.as_str())));
    let id = host.request(vm, &headers, r.body.as_bytes()).unwrap();
    let s = host.stream(id);
    if let Some(reply) = &s.local_reply {
        return (Decided::Reply(reply.status), None);
    }
    let up = s.upstream_request.as_ref().expect("the filter neither replied nor forwarded");
    let destination = up.header("x-gateway-destination-endpoint").expect("no destination header").to_string();
    (Decided::Route { destination, upstream_body: String::from_utf8(up.body.clone()).unwrap() }, Some(id))
}

/// Publishes round `round` of the pool in the shim and copies the very same encoded snapshot into the
/// filter's shared data (where its collector would have written it).
fn publish_both(pool: &Pool, host: &mut Host, endpoints: &[PoolEndpoint], round: usize, now_ms: u64) {
    for (i, e) in endpoints.iter().enumerate() {
        pool.record_scrape(&e.address, Ok(metrics_of(i + 1, round, now_ms)));
    }
    let published = pool.publish(now_ms).unwrap();
    host.set_shared_data("epp", "epp/parity/snapshot", &published.encoded);
    host.set_shared_data("epp", "epp/parity/generation", &published.snapshot.generation.to_le_bytes());
}

/// The two products side by side: the filter in the host emulator and the shim's gRPC service, with
/// `n` endpoints, both reading the decision clock the test moves.
struct Both {
    host: Host,
    vm: proxy_wasm_emulator::VmId,
    clock: Arc<AtomicU64>,
    pool: Arc<Pool>,
    endpoints: Vec<PoolEndpoint>,
    channel: Channel,
}

async fn both(config_text: &str, n: usize) -> Both {
    let config = GatewayConfig::from_json(config_text).unwrap();
    let mut host = Host::builder().build();
    let plugin = Plugin::new(filter_wasm())
        .root_id("picker")
        .vm_id("epp")
        .configuration(config_text)
        .allow_on_headers_stop_iteration(true);
    let vm = host.start_vm(plugin).unwrap();
    let clock = Arc::new(AtomicU64::new(host_now_ms(&host)));
    let pool = Pool::new("parity");
    let endpoints: Vec<PoolEndpoint> =
        (1..=n).map(|i| PoolEndpoint::new(format!("10.9.0.{i}:8000"))).collect();
    pool.set_endpoints(&endpoints);
    let metrics = Arc::new(Metrics::default());
    let read = Arc::clone(&clock);
    let picker = PickerHandle::spawn_with_clock(
        config.clone(),
        Arc::clone(&pool),
        Arc::clone(&metrics),
        Arc::new(move || read.load(Ordering::SeqCst)),
    )
    .unwrap();
    let channel = serve(&config, picker, metrics).await;
    Both { host, vm, clock, pool, endpoints, channel }
}

/// Runs the same 60 requests through the shim (over gRPC) and the filter (in the host emulator), with
/// the same snapshots, clock and ids, keeping a few requests in flight at a time, and returns both
/// decision lists.
async fn run_both(picker_config: &str) -> (Run, Run) {
    let text = parity_config(picker_config);

    let Both { mut host, vm, clock, pool, endpoints, channel } = both(&text, 6).await;

    let mut shim_out = Run::default();
    let mut filter_out = Run::default();
    let mut open: std::collections::VecDeque<Open> = Default::default();
    for (i, r) in requests(60).iter().enumerate() {
        if i % 10 == 0 {
            host.advance(std::time::Duration::from_millis(40));
            let now = host_now_ms(&host);
            publish_both(&pool, &mut host, &endpoints, i / 10, now);
        }
        host.advance(std::time::Duration::from_millis(3));
        clock.store(host_now_ms(&host), Ordering::SeqCst);
        // Up to four requests stay in flight, so in-flight counts (not only metrics) steer the picks.
        if open.len() == 4 {
            let o = open.pop_front().unwrap();
            o.answer(&mut host, &mut shim_out, &mut filter_out).await;
        }
        let (s, held) = shim_send(channel.clone(), r).await;
        let (f, stream) = filter_send(&mut host, vm, r);
        let upstream_body = match &f {
            Decided::Route { upstream_body, .. } => Some(upstream_body.clone()),
            Decided::Reply(_) => None,
        };
        shim_out.decisions.push(s);
        filter_out.decisions.push(f);
        open.push_back(Open { index: i, held, stream, upstream_body });
    }
    while let Some(o) = open.pop_front() {
        o.answer(&mut host, &mut shim_out, &mut filter_out).await;
    }
    assert!(host.traps().is_empty(), "traps: {:?}", host.traps());
    (shim_out, filter_out)
}

/// What one product did with the sequence: its decisions, then what the clients of the routed
/// requests received from the upstream's answers (model names put back where they were rewritten).
#[derive(Debug, Default)]
struct Run {
    decisions: Vec<Decided>,
    /// (request index, body the client received).
    answers: Vec<(usize, String)>,
}

/// A request routed by both products and not yet answered.
struct Open {
    index: usize,
    held: Option<Held>,
    stream: Option<StreamId>,
    upstream_body: Option<String>,
}

impl Open {
    async fn answer(self, host: &mut Host, shim: &mut Run, filter: &mut Run) {
        let Some(upstream_body) = &self.upstream_body else {
            // Replied locally by the filter; the shim's stream (if any) just ends.
            if let Some(h) = self.held {
                h.finish("application/json", &[]).await;
            }
            return;
        };
        let (content_type, chunks) = upstream_answer(self.index, upstream_body);
        if let Some(h) = self.held {
            shim.answers.push((self.index, h.finish(content_type, &chunks).await));
        }
        if let Some(f) = self.stream {
            host.response_headers(f, &[(":status", "200"), ("content-type", content_type)], false).unwrap();
            for (i, chunk) in chunks.iter().enumerate() {
                host.response_body(f, chunk, i + 1 == chunks.len()).unwrap();
            }
            let body = host.stream(f).response.unwrap().body;
            filter.answers.push((self.index, String::from_utf8(body).unwrap()));
        }
    }
}

fn assert_same(shim: &Run, filter: &Run) {
    assert_eq!(shim.decisions.len(), filter.decisions.len());
    for (i, (s, f)) in shim.decisions.iter().zip(&filter.decisions).enumerate() {
        assert_eq!(s, f, "request parity-{i:03}: the shim and the Wasm filter decided differently");
    }
    assert_eq!(shim.answers.len(), filter.answers.len());
    for (s, f) in shim.answers.iter().zip(&filter.answers) {
        assert_eq!(s, f, "parity-{:03}: the clients received different response bodies", s.0);
    }
    let destinations: std::collections::BTreeSet<&str> = shim
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decided::Route { destination, .. } => Some(destination.as_str()),
            Decided::Reply(_) => None,
        })
        .collect();
    assert!(destinations.len() >= 3, "the sequence must exercise several endpoints: {destinations:?}");
    assert!(shim.decisions.contains(&Decided::Reply(429)), "the saturated round sheds batch requests");
    // Clients that asked for `llama` never see the name it was rewritten to.
    let requests = requests(60);
    let asked_llama: Vec<&String> = shim
        .answers
        .iter()
        .filter(|(i, _)| requests[*i].body.replace(' ', "").contains(r#""model":"llama","#))
        .map(|(_, a)| a)
        .collect();
    assert!(asked_llama.len() >= 5, "{asked_llama:?}");
    assert!(
        asked_llama.iter().all(|a| a.contains(r#""model":"llama""#) && !a.contains("llama-v2")),
        "{asked_llama:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_and_the_wasm_filter_pick_alike_with_gie_default_scorers() {
    let (shim, filter) = run_both("").await;
    assert_same(&shim, &filter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_and_the_wasm_filter_pick_alike_with_random_and_clock_driven_plugins() {
    let (shim, filter) = run_both(RICH).await;
    assert_same(&shim, &filter);
    // The model split is drawn from the seed too: requests for `llama` went both ways.
    let mut split = std::collections::BTreeSet::new();
    for (r, d) in requests(60).iter().zip(&shim.decisions) {
        if let (true, Decided::Route { upstream_body, .. }) = (r.body.contains(r#""model":"llama","#), d) {
            split.insert(upstream_body.contains(r#""model":"llama-v2""#));
        }
    }
    assert_eq!(split.len(), 2, "the 50/50 rewrite of llama must have gone both ways");
}

/// The cases where the two products once behaved differently, sent through both: a forced model the
/// body cannot take, a rewritten JSON answer larger than `limits.maxResponseBodyBytes`, a rewritten
/// event stream cut mid-line, and a client-set fallback header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn former_divergences_now_behave_alike() {
    let text = parity_config(r#""limits": {"maxResponseBodyBytes": 65536}"#);
    let Both { mut host, vm, pool, endpoints, channel, .. } = both(&text, 3).await;
    let now = host_now_ms(&host);
    publish_both(&pool, &mut host, &endpoints, 0, now);

    let chat = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello"}}],"max_tokens":8}}"#)
    };
    let req = |id: &str, body: String, headers: Vec<(&'static str, String)>| Req {
        id: id.to_string(),
        path: "/v1/chat/completions",
        body,
        objective: None,
        session: None,
        headers,
    };
    let forced = || vec![("x-gateway-model-name-rewrite", "llama-v2".to_string())];

    // 1. A forced model on a body with no `model` to replace: 400 from both (the filter answered 400 and
    //    the shim forwarded the body unchanged).
    let r = req("div-1", r#"{"messages":[{"role":"user","content":"hi"}]}"#.into(), forced());
    let (s, _) = shim_send(channel.clone(), &r).await;
    let (f, _) = filter_send(&mut host, vm, &r);
    assert_eq!((&s, &f), (&Decided::Reply(400), &Decided::Reply(400)));

    // 2. A rewritten JSON answer over the response limit (64 KiB here; the filter once stopped at 256 KiB
    //    and the shim at 8 MiB): both pass it through as the server sent it.
    let r = req("div-2", chat("llama"), forced());
    let (s, held) = shim_send(channel.clone(), &r).await;
    let (f, stream) = filter_send(&mut host, vm, &r);
    assert_eq!(s, f);
    let filler = "x".repeat(100 * 1024);
    let big =
        format!(r#"{{"model":"llama-v2","choices":[{{"text":"{filler}"}}],"usage":{{"prompt_tokens":1}}}}"#);
    let chunks: Vec<Vec<u8>> = big.as_bytes().chunks(40_000).map(<[u8]>::to_vec).collect();
    let shim_body = held.unwrap().finish("application/json", &chunks).await;
    let filter_body = filter_answer(&mut host, stream.unwrap(), "application/json", &chunks);
    assert_eq!(shim_body, big, "the shim changed an answer over the limit");
    assert_eq!(filter_body, big, "the filter changed an answer over the limit");
    //    ... and under the limit, both put the client's model back.
    let r = req("div-3", chat("llama"), forced());
    let (s, held) = shim_send(channel.clone(), &r).await;
    let (f, stream) = filter_send(&mut host, vm, &r);
    assert_eq!(s, f);
    let small = r#"{"model":"llama-v2","choices":[{"text":"ok"}]}"#;
    let chunks = vec![small.as_bytes()[..10].to_vec(), small.as_bytes()[10..].to_vec()];
    let shim_body = held.unwrap().finish("application/json", &chunks).await;
    let filter_body = filter_answer(&mut host, stream.unwrap(), "application/json", &chunks);
    assert_eq!(
        (shim_body.as_str(), filter_body.as_str()),
        (small.replace("llama-v2", "llama").as_str(), small.replace("llama-v2", "llama").as_str())
    );

    // 3. A rewritten event stream cut in the middle of a line: the same bytes reach both clients.
    let r = req("div-4", chat("llama"), forced());
    let (s, held) = shim_send(channel.clone(), &r).await;
    let (f, stream) = filter_send(&mut host, vm, &r);
    assert_eq!(s, f);
    let events = "data: {\"model\":\"llama-v2\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"model\":\"llama-v2\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
    let chunks: Vec<Vec<u8>> = events.as_bytes().chunks(23).map(<[u8]>::to_vec).collect();
    let shim_body = held.unwrap().finish("text/event-stream", &chunks).await;
    let filter_body = filter_answer(&mut host, stream.unwrap(), "text/event-stream", &chunks);
    assert_eq!(shim_body, events.replace("llama-v2", "llama"));
    assert_eq!(filter_body, shim_body);

    // 4. A client-set fallback header (protocol v0.3) never reaches the upstream through either.
    let r =
        req("div-5", chat("llama"), vec![("x-gateway-destination-endpoint-fallback", "6.6.6.6:80".into())]);
    let (s, f) = (shim_first_mutation(channel.clone(), &r).await, filter_send(&mut host, vm, &r));
    assert!(s.remove_headers.iter().any(|h| h == "x-gateway-destination-endpoint-fallback"), "{s:?}");
    let Decided::Route { .. } = f.0 else { panic!("not routed: {:?}", f.0) };
    let up = host.stream(f.1.unwrap()).upstream_request.clone().unwrap();
    assert_eq!(up.header("x-gateway-destination-endpoint-fallback"), None);
    assert!(host.traps().is_empty(), "traps: {:?}", host.traps());
}

/// The filter's client receives the upstream's answer in `chunks`: the body it gets.
fn filter_answer(host: &mut Host, f: StreamId, content_type: &str, chunks: &[Vec<u8>]) -> String {
    host.response_headers(f, &[(":status", "200"), ("content-type", content_type)], false).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        host.response_body(f, chunk, i + 1 == chunks.len()).unwrap();
    }
    String::from_utf8(host.stream(f).response.unwrap().body).unwrap()
}

/// The header mutation of the shim's first answer to `r` (its routing headers response).
async fn shim_first_mutation(channel: Channel, r: &Req) -> HeaderMutation {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = HttpBody { body: r.body.as_bytes().to_vec(), end_of_stream: true, ..Default::default() };
    for msg in [In::RequestHeaders(shim_headers(r)), In::RequestBody(body)] {
        tx.send(ProcessingRequest { request: Some(msg), ..Default::default() }).await.unwrap();
    }
    drop(tx);
    let mut responses =
        ExternalProcessorClient::new(channel).process(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let Some(Out::RequestHeaders(h)) = first.response else {
        panic!("expected a headers response: {first:?}")
    };
    h.response.unwrap().header_mutation.unwrap()
}
