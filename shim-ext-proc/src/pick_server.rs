//! The plain-HTTP pick endpoint, for proxies that cannot speak ext_proc (NGINX through njs): one call
//! with the client's headers and body asks for a destination, a second call when the response has
//! ended releases it. The request's conversation is the core's [`Exchange`], as on the ext_proc path,
//! with the same picker thread, limits, failure mode and counters; only the framing differs.
//!
//! # Protocol (`--pick-port`)
//! `POST /pick`: the client's request headers as they came, its body, and `x-epp-path` (the client's
//! request URI, which the proxy does not otherwise pass on). Answers:
//! - `200` with `x-gateway-destination-endpoint: ip:port` (the primary; NGINX Gateway Fabric's EPP shim
//!   answers the same way), `x-gateway-destination-endpoint-fallback` (the others, comma separated, when
//!   `routing.maxEndpoints` > 1), `x-prefiller-host-port` (disaggregated serving), `x-request-id` (the
//!   id to forward; generated when the client sent none) and `x-epp-pick` (the ticket for `/pick/done`).
//!   When the model was rewritten the body is the request body to send instead (`x-epp-body: rewritten`).
//! - `200` with `x-epp-fail-open: true` and no destination: the picker fails open without a choice
//!   (`failureMode: FailOpen`); the proxy balances over the pool itself.
//! - the local reply (400, 413, 415, 429, 503, ...): its status, its OpenAI-shaped JSON body,
//!   `content-type: application/json` and `x-epp-local-reply: <reason>`; the proxy answers the client
//!   with it as it is.
//!
//! Anything else (no `x-epp-local-reply`, or the shim unreachable) means the pick itself failed: the proxy
//! follows its own failure mode, as it would with the reference picker down.
//!
//! `POST /pick/done` with `x-epp-pick`, `x-epp-upstream` (NGINX's `$upstream_addr`) and `x-epp-status`
//! (`$upstream_status`): the response ended; its in-flight count is released, the status goes to the
//! endpoint's health and the request metrics. A ticket never reported is released after `--pick-lease-secs`.
//!
//! # What the ext_proc path does that this one cannot
//! The proxy reports only the end of the response, so the first-byte timeout does not apply (NGINX's own
//! `proxy_read_timeout` and the 502/504 it then reports stand in), and the response body is not read:
//! no usage tokens, no client model name put back after a rewrite, no session token.

use crate::extproc::machine::{new_request_id, DecisionInput};
use crate::metrics::{request_model, Metrics, RequestRecord};
use crate::picker::PickerHandle;
use crate::snapshot_server::plain;
use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingRequest};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use scheduler_core::endpoint_picker::Reply;
use scheduler_core::exchange::headers::PATH;
use scheduler_core::exchange::{
    Decided, Exchange, ExchangeSettings, HeaderLookup, RequestStep, ResponseHead,
};
use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The client's request URI (`:path` on the ext_proc path).
pub const PATH_HEADER: &str = "x-epp-path";
/// The ticket of a routed pick, to quote in `/pick/done`.
pub const PICK_HEADER: &str = "x-epp-pick";
/// `/pick/done`: the upstream(s) the proxy tried (`$upstream_addr`).
pub const UPSTREAM_HEADER: &str = "x-epp-upstream";
/// `/pick/done`: their statuses (`$upstream_status`).
pub const STATUS_HEADER: &str = "x-epp-status";
/// On a local reply: why (the metrics reason).
pub const LOCAL_REPLY_HEADER: &str = "x-epp-local-reply";
/// The picker failed open without a destination.
pub const FAIL_OPEN_HEADER: &str = "x-epp-fail-open";
/// The body of a 200 is the rewritten request body.
pub const BODY_HEADER: &str = "x-epp-body";
/// Where the primary destination goes in the pick answer (whatever `routing.destinationHeader` says:
/// that name is for the proxy's own routing, this answer is read by the njs script).
pub const DESTINATION: &str = "x-gateway-destination-endpoint";
pub const FALLBACKS: &str = "x-gateway-destination-endpoint-fallback";
pub const PREFILL: &str = "x-prefiller-host-port";
const REQUEST_ID: &str = "x-request-id";

/// A routed request the proxy has not reported the end of yet.
struct Lease {
    exchange: Exchange,
    record: RequestRecord,
    expires: Instant,
}

struct Leases {
    /// The last ticket given. Starts at random, so that a `/pick/done` for a ticket of an earlier
    /// process (NGINX outlived a shim restart) finds nothing rather than another request's count.
    next: u64,
    open: HashMap<u64, Lease>,
}

impl Default for Leases {
    fn default() -> Leases {
        use std::hash::{BuildHasher, RandomState};
        Leases { next: RandomState::new().hash_one(0u64), open: HashMap::new() }
    }
}

/// Shared by every connection of the pick server.
pub struct PickService {
    picker: PickerHandle,
    settings: Arc<ExchangeSettings>,
    metrics: Arc<Metrics>,
    lease: Duration,
    leases: Mutex<Leases>,
}

/// The client's headers as the core reads them, with `:path` taken from [`PATH_HEADER`].
struct Forwarded<'a>(&'a HeaderMap);

impl HeaderLookup for Forwarded<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let name = if name == PATH { PATH_HEADER } else { name };
        self.0.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()))
    }
}

impl PickService {
    /// `lease`: how long a routed pick holds its in-flight count without a `/pick/done`.
    pub fn new(
        picker: PickerHandle,
        settings: ExchangeSettings,
        metrics: Arc<Metrics>,
        lease: Duration,
    ) -> Arc<PickService> {
        Arc::new(PickService {
            picker,
            settings: Arc::new(settings),
            metrics,
            lease,
            leases: Mutex::new(Leases::default()),
        })
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers one HTTP request of the pick port.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only POST /pick and POST /pick/done\n");
        }
        match req.uri().path() {
            "/pick" => self.pick(req).await,
            "/pick/done" => self.done(req.headers()),
            _ => plain(StatusCode::NOT_FOUND, "not found: POST /pick or /pick/done\n"),
        }
    }

    async fn pick(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let s = Arc::clone(&self.settings);
        let (parts, mut body) = req.into_parts();
        if parts.headers.get(PATH_HEADER).is_none_or(|v| v.is_empty()) {
            return plain(
                StatusCode::BAD_REQUEST,
                "x-epp-path: expected the client's request URI (e.g. /v1/chat/completions)\n",
            );
        }
        self.metrics.stream_started();
        // Ends the request in the metrics however this returns, also when the caller goes away while
        // the pick waits in flow control (hyper then drops this future).
        let mut pending = Pending { service: self, record: RequestRecord::new(), open: true };
        let mut exchange = Exchange::new();
        let head = exchange.on_request_headers(
            &s,
            Some(&Forwarded(&parts.headers)),
            None,
            body.is_end_stream(),
            &mut new_request_id,
        );
        let generated_id = head.set.into_iter().find(|(n, _)| n == REQUEST_ID).map(|(_, v)| v);
        let mut buffered = Vec::new();
        let mut step = head.next;
        while step == RequestStep::Wait {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buffered.extend_from_slice(&data);
                        step = exchange.on_request_body(&s, buffered.len(), false);
                    }
                }
                Some(Err(e)) => {
                    return answer(StatusCode::BAD_REQUEST, &[], format!("request body: {e}\n").into_bytes());
                }
                None => step = exchange.on_request_body(&s, buffered.len(), true),
            }
        }
        count_request_bytes(&mut pending.record, &mut buffered);
        let with_body = match step {
            RequestStep::Decide { with_body } => with_body,
            RequestStep::Reply(reply) => {
                self.metrics.record_early_reply(reply.reason);
                self.metrics.request_refused_early(&mut pending.record);
                return local_reply(&reply);
            }
            RequestStep::Wait | RequestStep::Pass => {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the request lifecycle did not ask to decide\n",
                );
            }
        };
        let facts = exchange.facts().clone();
        let request_id = generated_id.unwrap_or_else(|| facts.request_id.clone());
        let input = DecisionInput { facts, body: with_body.then_some(buffered) };
        let model = request_model(input.facts.content_type.as_deref(), input.body.as_deref());
        let (outcome, ticket) = self.picker.decide(input).await;
        self.metrics.request_decided(&mut pending.record, &model, &outcome);
        if let Some(ticket) = ticket {
            // NGINX reports only the end of the response; for a long stream that is far past the
            // first-byte timeout, which must not count against the endpoint. No longer waited for.
            self.picker.first_byte(ticket, false);
        }
        let forward = match exchange.on_outcome(&s, outcome) {
            Decided::Reply(reply) => {
                return local_reply(&reply);
            }
            Decided::Forward(f) => f,
        };
        let mut headers = vec![(REQUEST_ID, request_id)];
        let Some(destination) = forward.destination else {
            headers.push((FAIL_OPEN_HEADER, "true".into()));
            return answer(StatusCode::OK, &headers, Vec::new());
        };
        let mut endpoints = destination.split(',').map(str::trim).filter(|e| !e.is_empty());
        headers.push((DESTINATION, endpoints.next().unwrap_or_default().to_string()));
        let fallbacks: Vec<&str> = endpoints.collect();
        if !fallbacks.is_empty() {
            headers.push((FALLBACKS, fallbacks.join(",")));
        }
        if let Some((_, prefill)) = forward.set.iter().find(|(n, _)| *n == s.prefill_header) {
            headers.push((PREFILL, prefill.clone()));
        }
        let body = match forward.body {
            Some(b) => {
                headers.push((BODY_HEADER, "rewritten".into()));
                b
            }
            None => Vec::new(),
        };
        let id = {
            let mut leases = self.leases();
            leases.next = leases.next.wrapping_add(1);
            let id = leases.next;
            pending.open = false;
            let record = std::mem::take(&mut pending.record);
            leases.open.insert(id, Lease { exchange, record, expires: Instant::now() + self.lease });
            id
        };
        headers.push((PICK_HEADER, id.to_string()));
        answer(StatusCode::OK, &headers, body)
    }

    fn done(&self, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        let Ok(id) = text(PICK_HEADER).parse::<u64>() else {
            return plain(StatusCode::BAD_REQUEST, "x-epp-pick: expected the ticket /pick answered with\n");
        };
        let Some(lease) = self.leases().open.remove(&id) else {
            return plain(StatusCode::NOT_FOUND, "x-epp-pick: no such pick (already reported, or expired)\n");
        };
        let upstream = last_entry(text(UPSTREAM_HEADER));
        let status = last_entry(text(STATUS_HEADER)).and_then(|s| s.parse::<u16>().ok());
        self.complete(lease, upstream, status);
        answer(StatusCode::NO_CONTENT, &[], Vec::new())
    }

    /// The response ended (or its lease expired: `status` and `upstream` unknown).
    fn complete(&self, mut lease: Lease, upstream: Option<&str>, status: Option<u16>) {
        let s = &self.settings;
        let head = ResponseHead { status, content_type: None, upstream, end_of_stream: true };
        let step = lease.exchange.on_response_headers(s, &head);
        if let Some(m) = step.moved {
            self.picker.answered(&m.from, 503);
            self.picker.moved(&m.from, &m.to, m.tokens, m.awaiting);
            self.metrics.record_served_elsewhere();
        }
        // NGINX reports a response only when it has ended, so its first token is released here (a
        // stream's backlog is over-counted by its generation time on this path).
        if let (Some(prompt_tokens), Some(endpoint)) = (step.first_token, lease.exchange.counted_on()) {
            self.picker.first_token(endpoint, prompt_tokens);
        }
        if let Some((endpoint, status)) = step.answered {
            if status >= 500 {
                self.metrics.record_upstream_5xx(&endpoint);
            }
            self.picker.answered(&endpoint, status);
            self.metrics.request_answered(&mut lease.record, status);
            self.metrics.response_complete(&mut lease.record);
        }
        if let Some(f) = lease.exchange.on_stream_end() {
            self.picker.finish(&f.address, f.tokens, f.awaiting);
        }
        self.end(&mut lease.record);
    }

    fn end(&self, record: &mut RequestRecord) {
        self.metrics.request_ended(record);
        self.metrics.stream_ended();
    }

    /// Releases the picks whose end was never reported (NGINX restarted, a lost `/pick/done`).
    pub fn expire(&self, now: Instant) -> usize {
        let expired: Vec<Lease> = {
            let mut leases = self.leases();
            let ids: Vec<u64> =
                leases.open.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
            ids.iter().filter_map(|id| leases.open.remove(id)).collect()
        };
        let n = expired.len();
        for lease in expired {
            self.complete(lease, None, None);
        }
        if n > 0 {
            log::warn!("{n} pick(s) released without a /pick/done after {} s", self.lease.as_secs());
        }
        n
    }

    /// Picks routed and not yet reported done.
    pub fn open(&self) -> usize {
        self.leases().open.len()
    }
}

/// A pick being made: unless it is handed to a lease, dropping it ends the request in the metrics.
struct Pending<'a> {
    service: &'a PickService,
    record: RequestRecord,
    open: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.open {
            self.service.end(&mut self.record);
        }
    }
}

/// The request metrics count body bytes from ext_proc messages: hand them one (the body moves in and
/// back out, no copy).
fn count_request_bytes(record: &mut RequestRecord, body: &mut Vec<u8>) {
    let msg = ProcessingRequest {
        request: Some(In::RequestBody(HttpBody {
            body: std::mem::take(body),
            end_of_stream: true,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    };
    record.observe(&msg);
    if let Some(In::RequestBody(b)) = msg.request {
        *body = b.body;
    }
}

/// The last entry of an NGINX upstream list (`a, b : c`: retries, then internal redirects); `None` for
/// `-` or nothing.
pub fn last_entry(list: &str) -> Option<&str> {
    // `ip:port` itself holds a colon: split on the separators NGINX writes.
    let last = list.rsplit(", ").next()?.rsplit(" : ").next()?.trim();
    (!last.is_empty() && last != "-").then_some(last)
}

fn local_reply(reply: &Reply) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    answer(
        status,
        &[("content-type", "application/json".into()), (LOCAL_REPLY_HEADER, reply.reason.into())],
        reply.body.as_bytes().to_vec(),
    )
}

fn answer(status: StatusCode, headers: &[(&str, String)], body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

/// Serves until the task is dropped; expires unreported picks once a second.
pub async fn serve(listener: TcpListener, service: Arc<PickService>) {
    let sweeper = Arc::downgrade(&service);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match sweeper.upgrade() {
                Some(s) => {
                    s.expire(Instant::now());
                }
                None => return,
            }
        }
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("pick accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(service.handle(req).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;
    use scheduler_core::config::gateway::GatewayConfig;
    use scheduler_core::model::{Endpoint, Metrics as EndpointMetrics};
    use std::io::{Read, Write};

    /// A pick server over a two-endpoint pool with fresh metrics, on a loopback port.
    async fn start(config: &str, lease: Duration) -> (std::net::SocketAddr, Arc<PickService>) {
        let (addr, service, _, _) = start_observed(config, lease).await;
        (addr, service)
    }

    /// [`start`], with the metrics and the pool (to read `/metrics` as the shim renders it).
    async fn start_observed(
        config: &str,
        lease: Duration,
    ) -> (std::net::SocketAddr, Arc<PickService>, Arc<Metrics>, Arc<Pool>) {
        let config = GatewayConfig::from_json(config).unwrap();
        let pool = Pool::new("p");
        pool.set_endpoints(&[Endpoint::new("10.0.0.1:8000"), Endpoint::new("10.0.0.2:8000")]);
        for a in ["10.0.0.1:8000", "10.0.0.2:8000"] {
            pool.record_scrape(a, Ok(EndpointMetrics::default()));
        }
        pool.publish(crate::unix_ms()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let picker = PickerHandle::spawn(config.clone(), Arc::clone(&pool), Arc::clone(&metrics)).unwrap();
        let service = PickService::new(picker, ExchangeSettings::new(&config), Arc::clone(&metrics), lease);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::clone(&service)));
        (addr, service, metrics, pool)
    }

    /// One HTTP/1.1 exchange (blocking, on a helper thread): status, lower-case headers, body.
    async fn call(
        addr: std::net::SocketAddr,
        head: &str,
        body: Vec<u8>,
    ) -> (u16, Vec<(String, String)>, String) {
        let head = head.to_string();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let req = format!("{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            s.write_all(req.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
            let headers = lines
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect();
            (status, headers, body.to_string())
        })
        .await
        .unwrap()
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

    #[tokio::test]
    async fn a_pick_holds_its_endpoint_until_done_is_reported_once() {
        let (addr, service) = start("{}", Duration::from_secs(600)).await;
        let head = "POST /pick HTTP/1.1\r\nhost: x\r\nx-epp-path: /v1/chat/completions\r\ncontent-type: application/json\r\nx-gateway-destination-endpoint: 127.0.0.1:1";
        let (status, headers, body) = call(addr, head, CHAT.into()).await;
        assert_eq!(status, 200, "{body}");
        let to = header(&headers, DESTINATION).unwrap();
        assert!(["10.0.0.1:8000", "10.0.0.2:8000"].contains(&to), "a client's header does not steer: {to}");
        assert!(header(&headers, REQUEST_ID).is_some_and(|id| !id.is_empty()), "an id is generated");
        let ticket = header(&headers, PICK_HEADER).unwrap().to_string();
        assert_eq!(service.open(), 1);

        let done = format!("POST /pick/done HTTP/1.1\r\nhost: x\r\nx-epp-pick: {ticket}\r\nx-epp-upstream: {to}\r\nx-epp-status: 200");
        assert_eq!(call(addr, &done, Vec::new()).await.0, 204);
        assert_eq!(service.open(), 0);
        let (status, _, body) = call(addr, &done, Vec::new()).await;
        assert_eq!(status, 404, "reported twice: {body}");
        assert!(body.contains("x-epp-pick"), "{body}");
    }

    #[tokio::test]
    async fn an_unreported_pick_is_released_when_its_lease_ends() {
        let (addr, service) = start("{}", Duration::from_secs(30)).await;
        let head = "POST /pick HTTP/1.1\r\nhost: x\r\nx-epp-path: /v1/chat/completions\r\ncontent-type: application/json";
        assert_eq!(call(addr, head, CHAT.into()).await.0, 200);
        assert_eq!(service.expire(Instant::now()), 0, "not yet");
        assert_eq!(service.expire(Instant::now() + Duration::from_secs(31)), 1);
        assert_eq!(service.open(), 0);
    }

    #[tokio::test]
    async fn local_replies_carry_their_status_reason_and_openai_body() {
        let (addr, service) = start(r#"{"limits": {"maxBodyBytes": 1024}}"#, Duration::from_secs(600)).await;
        let head =
            "POST /pick HTTP/1.1\r\nhost: x\r\nx-epp-path: /v1/completions\r\ncontent-type: application/json";
        let (status, headers, body) = call(addr, head, "{oops".into()).await;
        assert_eq!((status, header(&headers, LOCAL_REPLY_HEADER)), (400, Some("bad_request")), "{body}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert!(body.starts_with(r#"{"error":{"#), "{body}");
        let big = format!(r#"{{"model":"m","prompt":"{}"}}"#, "x".repeat(2000));
        let (status, headers, body) = call(addr, head, big.into_bytes()).await;
        assert_eq!((status, header(&headers, LOCAL_REPLY_HEADER)), (413, Some("body_too_large")), "{body}");
        assert_eq!(service.open(), 0, "nothing routed, nothing held");

        // A call NGINX's config got wrong is not a local reply: the proxy then follows its failure mode.
        let (status, headers, body) = call(addr, "POST /pick HTTP/1.1\r\nhost: x", CHAT.into()).await;
        assert_eq!((status, header(&headers, LOCAL_REPLY_HEADER)), (400, None));
        assert!(body.contains("x-epp-path"), "{body}");
        assert_eq!(call(addr, "GET /pick HTTP/1.1\r\nhost: x", Vec::new()).await.0, 405);
    }

    /// A gauge of the shim's `/metrics` text.
    fn gauge(text: &str, name: &str) -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_prefix_index_gauges_follow_the_picks_up_to_the_cap() {
        // 4 blocks per endpoint, 11 blocks per prompt (64 bytes each): every pick fills its endpoint's LRU,
        // and the gauges never show more than the cap of the endpoints picked so far.
        let config = r#"{"plugins": [{"type": "prefix-cache-scorer",
            "parameters": {"lruCapacityPerServer": 4, "autoTune": false}}]}"#;
        let (addr, _service, metrics, pool) = start_observed(config, Duration::from_secs(600)).await;
        let head =
            "POST /pick HTTP/1.1\r\nhost: x\r\nx-epp-path: /v1/completions\r\ncontent-type: application/json";
        let mut seen = Vec::new();
        for i in 0..200 {
            let prompt = format!("{i:04} {}", "lorem ipsum ".repeat(60));
            let body = serde_json::json!({"model": "m", "prompt": prompt}).to_string();
            let (status, _, body) = call(addr, head, body.into_bytes()).await;
            assert_eq!(status, 200, "{body}");
            // The picker thread reports once a second: wait for a report after this pick.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let text = metrics.render(&pool, crate::unix_ms());
            let read = |n: &str| gauge(&text, &format!("epp_shim_prefix_index_{n}"));
            let (Some(entries), Some(cap), Some(hashes), Some(endpoints)) =
                (read("entries"), read("capacity"), read("hashes"), read("endpoints"))
            else {
                panic!("prefix index gauges missing:\n{text}");
            };
            assert!(entries <= cap && hashes <= entries && endpoints <= 2, "{text}");
            seen.push(entries);
            if (entries, cap, endpoints) == (8, 8, 2) {
                return;
            }
        }
        panic!("the index never showed both endpoints' LRUs full: {seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_flow_control_a_pick_waits_for_a_place_and_goes_when_one_is_done() {
        let config = r#"{"featureGates": ["flowControl"],
            "plugins": [{"type": "queue-scorer"},
                        {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1, "headroom": 10}}],
            "flowControl": {"saturationDetector": {"pluginRef": "concurrency-detector"}}}"#;
        let (addr, service, metrics, pool) = start_observed(config, Duration::from_secs(600)).await;
        let head = "POST /pick HTTP/1.1\r\nhost: x\r\nx-epp-path: /v1/chat/completions\r\ncontent-type: application/json";
        let mut tickets = Vec::new();
        for _ in 0..2 {
            let (status, headers, body) = call(addr, head, CHAT.into()).await;
            assert_eq!(status, 200, "{body}");
            let to = header(&headers, DESTINATION).unwrap().to_string();
            tickets.push((header(&headers, PICK_HEADER).unwrap().to_string(), to));
        }
        // Both places taken: the third pick waits in the queue.
        let third = tokio::spawn(call(addr, head, CHAT.into()));
        let queued = r#"llm_d_epp_flow_control_queue_size{priority="0",inference_pool="p"} 1"#;
        for _ in 0..500 {
            if metrics.render(&pool, crate::unix_ms()).contains(queued) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metrics.render(&pool, crate::unix_ms()).contains(queued));
        assert!(!third.is_finished());
        let (ticket, to) = &tickets[0];
        let done = format!("POST /pick/done HTTP/1.1\r\nhost: x\r\nx-epp-pick: {ticket}\r\nx-epp-upstream: {to}\r\nx-epp-status: 200");
        assert_eq!(call(addr, &done, Vec::new()).await.0, 204);
        let (status, headers, body) = third.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(header(&headers, DESTINATION).is_some());
        assert_eq!(service.open(), 2);
        let empty = r#"llm_d_epp_flow_control_queue_size{priority="0",inference_pool="p"} 0"#;
        assert!(metrics.render(&pool, crate::unix_ms()).contains(empty));

        // A caller that gives up while its pick waits (NGINX's subrequest timed out, its client left).
        let mut gone = std::net::TcpStream::connect(addr).unwrap();
        let req = format!("{head}\r\ncontent-length: {}\r\n\r\n{CHAT}", CHAT.len());
        gone.write_all(req.as_bytes()).unwrap();
        for _ in 0..500 {
            if metrics.render(&pool, crate::unix_ms()).contains(queued) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metrics.render(&pool, crate::unix_ms()).contains(queued));
        drop(gone);
        let cancelled = r#"outcome="EvictedContextCancelled""#;
        let mut seen = false;
        for _ in 0..300 {
            let m = metrics.render(&pool, crate::unix_ms());
            if m.contains(empty) && m.contains(cancelled) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "{}", metrics.render(&pool, crate::unix_ms()));
        // The request that went away is ended in the metrics too: two open picks remain.
        let streams = "epp_shim_active_streams 2";
        for _ in 0..300 {
            if metrics.render(&pool, crate::unix_ms()).contains(streams) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metrics.render(&pool, crate::unix_ms()).contains(streams));
    }

    #[test]
    fn the_last_upstream_nginx_tried_is_the_one_that_served() {
        assert_eq!(last_entry("127.0.0.1:8000"), Some("127.0.0.1:8000"));
        assert_eq!(last_entry("127.0.0.1:8000, 127.0.0.1:8001"), Some("127.0.0.1:8001"));
        assert_eq!(last_entry("10.0.0.1:80 : 10.0.0.2:80"), Some("10.0.0.2:80"));
        assert_eq!(last_entry("502, 200"), Some("200"));
        assert_eq!(last_entry("-"), None);
        assert_eq!(last_entry(""), None);
    }
}
