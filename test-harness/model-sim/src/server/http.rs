//! HTTP routing and response bodies: JSON answers, SSE streams fed by engine events, metrics, faults.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use model_sim::engine::{Event, EventKind, SubmitError, Usage};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::faults::{Faults, FaultsPatch, GARBAGE_METRICS};
use super::metrics;
use super::openai::{self, Api, ApiError, Envelope};
use super::sim::Shared;

/// Larger bodies get 413 (vLLM itself has no limit; this only keeps a runaway client from eating memory).
const MAX_BODY_BYTES: usize = 64 << 20;
const REPLICA_HEADER: &str = "x-model-sim-replica";
/// How long a fault patch that opens or closes the main port waits for the listener to have done it.
const LISTENER_WAIT: Duration = Duration::from_secs(5);

/// Why a stream ended early (the connection-drop fault).
#[derive(Debug)]
pub struct StreamCut;

impl fmt::Display for StreamCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("model-sim fault: connection dropped mid-stream")
    }
}

impl std::error::Error for StreamCut {}

pub enum SimBody {
    Full(Option<Bytes>),
    Sse(Box<SseStream>),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = StreamCut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamCut>>> {
        match self.get_mut() {
            SimBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            SimBody::Sse(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Sse(_) => SizeHint::default(),
        }
    }
}

/// Turns one request's engine events into SSE chunks as they happen.
pub struct SseStream {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Event>,
    id: u64,
    api: Api,
    response_id: String,
    created: u64,
    model: String,
    finish_reason: &'static str,
    include_usage: bool,
    drop_after: u32,
    /// Set once the drop fault triggers: a short pause lets the chunks already written reach the client
    /// before the connection is cut.
    cut: Option<Pin<Box<tokio::time::Sleep>>>,
    tokens: u32,
    chunks_sent: u32,
    pending: VecDeque<Bytes>,
    finished: bool,
}

impl SseStream {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamCut>>> {
        loop {
            if let Some(cut) = self.cut.as_mut() {
                return cut.as_mut().poll(cx).map(|()| Some(Err(StreamCut)));
            }
            if let Some(chunk) = self.pending.pop_front() {
                if self.drop_after > 0 && self.chunks_sent >= self.drop_after {
                    self.cut = Some(Box::pin(tokio::time::sleep(Duration::from_millis(20))));
                    continue;
                }
                self.chunks_sent += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                // The engine forgot the request (it was aborted): end the stream.
                Poll::Ready(None) => self.finished = true,
                Poll::Ready(Some(ev)) => self.on_event(ev),
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let env = Envelope { id: &self.response_id, created: self.created, model: &self.model };
        match ev.kind {
            EventKind::FirstToken | EventKind::Token => {
                let text = openai::token_text(self.tokens);
                let chunk = openai::delta_chunk(self.api, &env, text, self.tokens == 0, None);
                self.tokens += 1;
                self.pending.push_back(sse(&chunk));
            }
            EventKind::Preempted => {}
            EventKind::Finished(usage) => {
                // Every token already went out with its own event; close with the finish reason.
                let last = openai::delta_chunk(self.api, &env, "", false, Some(self.finish_reason));
                self.pending.push_back(sse(&last));
                if self.include_usage {
                    self.pending.push_back(sse(&openai::usage_chunk(self.api, &env, &usage)));
                }
                self.pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                self.finished = true;
            }
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.abort(self.id);
        }
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Aborts the engine request if a non-streaming handler is dropped (client gone) before it finished.
struct AbortGuard<'a> {
    shared: &'a Shared,
    id: u64,
    armed: bool,
}

impl Drop for AbortGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abort(self.id);
        }
    }
}

fn response(
    shared: &Shared,
    status: StatusCode,
    content_type: &'static str,
    body: SimBody,
) -> Response<SimBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&shared.replica) {
        headers.insert(REPLICA_HEADER, v);
    }
    resp
}

fn json_response(shared: &Shared, status: StatusCode, v: &Value) -> Response<SimBody> {
    response(shared, status, "application/json", SimBody::Full(Some(Bytes::from(v.to_string()))))
}

fn error_response(shared: &Shared, e: &ApiError) -> Response<SimBody> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(shared, status, &e.body())
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<SimBody>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/completions") => generate(&shared, Api::Completions, req).await,
        (&Method::POST, "/v1/chat/completions") => generate(&shared, Api::Chat, req).await,
        (&Method::GET, "/v1/models") => json_response(&shared, StatusCode::OK, &models(&shared)),
        (&Method::GET, "/health") => {
            response(&shared, StatusCode::OK, "application/json", SimBody::Full(None))
        }
        (&Method::GET, "/metrics") => metrics_response(&shared).await,
        (&Method::GET, "/admin/faults") => faults_json(&shared),
        (&Method::POST, "/admin/faults") => set_faults(&shared, req).await,
        (
            _,
            "/v1/completions"
            | "/v1/chat/completions"
            | "/v1/models"
            | "/health"
            | "/metrics"
            | "/admin/faults",
        ) => json_response(&shared, StatusCode::METHOD_NOT_ALLOWED, &json!({"detail": "Method Not Allowed"})),
        _ => json_response(&shared, StatusCode::NOT_FOUND, &json!({"detail": "Not Found"})),
    };
    Ok(resp)
}

/// The `--control-port` listener: only the fault knobs, reachable while the main port refuses.
pub async fn handle_control(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/admin/faults") => faults_json(&shared),
        (&Method::POST, "/admin/faults") => set_faults(&shared, req).await,
        (_, "/admin/faults") => {
            json_response(&shared, StatusCode::METHOD_NOT_ALLOWED, &json!({"detail": "Method Not Allowed"}))
        }
        _ => json_response(
            &shared,
            StatusCode::NOT_FOUND,
            &json!({"detail": "Not Found: the control port serves /admin/faults only"}),
        ),
    };
    Ok(resp)
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError {
            status: 413,
            kind: "RequestEntityTooLarge",
            message: format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            param: None,
        }),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"), None)),
    }
}

fn models(shared: &Shared) -> Value {
    let created = shared.unix_now() as u64;
    let o = &shared.opts;
    let max_len = (u64::from(o.engine.num_gpu_blocks) * u64::from(o.engine.block_size)).min(131_072);
    let mut data = vec![json!({
        "id": o.model, "object": "model", "created": created, "owned_by": "vllm", "root": o.model,
        "parent": null, "max_model_len": max_len, "permission": [],
    })];
    for name in &o.loras {
        data.push(json!({
            "id": name, "object": "model", "created": created, "owned_by": "vllm",
            "root": format!("/adapters/{name}"), "parent": o.model, "max_model_len": null, "permission": [],
        }));
    }
    json!({"object": "list", "data": data})
}

async fn generate(shared: &Arc<Shared>, api: Api, req: Request<Incoming>) -> Response<SimBody> {
    match generate_inner(shared, api, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(shared, &e),
    }
}

async fn generate_inner(
    shared: &Arc<Shared>,
    api: Api,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, ApiError> {
    let body = read_body(req).await?;
    let faults = shared.faults();
    if faults.completions_hang {
        // Read, never answered: the future ends only when hyper drops it because the client hung up.
        std::future::pending::<()>().await;
    }
    if faults.response_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.response_delay_ms)).await;
    }
    let opts = &shared.opts;
    let parsed = openai::parse(api, &body, opts.engine.block_size)?;
    let model = parsed.model.clone().unwrap_or_else(|| opts.model.clone());
    let lora = if model == opts.model {
        None
    } else {
        let pos = opts.loras.iter().position(|l| *l == model).ok_or_else(|| ApiError {
            status: 404,
            kind: "NotFoundError",
            message: format!("The model `{model}` does not exist."),
            param: Some("model"),
        })?;
        Some(u32::try_from(pos + 1).unwrap_or(u32::MAX))
    };
    let (max_tokens, finish_reason) = {
        let mut sim = shared.lock();
        if faults.error_rate > 0.0 && sim.rng.next_f64() < faults.error_rate {
            return Err(injected_error(&faults));
        }
        match parsed.max_tokens {
            Some(n) => (n, "length"),
            None => {
                let mean = opts.default_output_tokens;
                let lo = (mean / 2).max(1);
                (lo + sim.rng.below(mean as usize + 1) as u32, "stop")
            }
        }
    };
    let (id, mut rx) = shared.submit(parsed.prompt, max_tokens, lora).map_err(|e| match e {
        SubmitError::TooLong { tokens, capacity, .. } => ApiError::bad_request(
            format!(
                "This model's maximum context length is {capacity} tokens. However, you requested {tokens} \
                 tokens (prompt plus max_tokens). Please reduce the length of the prompt or max_tokens."
            ),
            None,
        ),
        other => ApiError::bad_request(other.to_string(), None),
    })?;
    let created = shared.unix_now() as u64;
    let response_id = match api {
        Api::Completions => format!("cmpl-{}-{id}", opts.engine.seed),
        Api::Chat => format!("chatcmpl-{}-{id}", opts.engine.seed),
    };
    if parsed.stream {
        let stream = SseStream {
            shared: shared.clone(),
            rx,
            id,
            api,
            response_id,
            created,
            model,
            finish_reason,
            include_usage: parsed.include_usage || opts.force_include_usage,
            drop_after: faults.drop_after_chunks,
            cut: None,
            tokens: 0,
            chunks_sent: 0,
            pending: VecDeque::new(),
            finished: false,
        };
        let mut resp = response(
            shared,
            StatusCode::OK,
            "text/event-stream; charset=utf-8",
            SimBody::Sse(Box::new(stream)),
        );
        resp.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }
    let mut guard = AbortGuard { shared, id, armed: true };
    let usage: Usage = loop {
        match rx.recv().await {
            Some(Event { kind: EventKind::Finished(u), .. }) => break u,
            Some(_) => {}
            None => {
                return Err(ApiError {
                    status: 500,
                    kind: "InternalServerError",
                    message: "request was dropped by the engine".into(),
                    param: None,
                })
            }
        }
    };
    guard.armed = false;
    let env = Envelope { id: &response_id, created, model: &model };
    let text = openai::output_text(usage.completion_tokens);
    Ok(json_response(shared, StatusCode::OK, &openai::full_response(api, &env, &text, finish_reason, &usage)))
}

/// The `error_rate` fault's answer, with the `error_status` status.
fn injected_error(faults: &Faults) -> ApiError {
    let kind = match faults.error_status {
        500 => "InternalServerError",
        501 => "NotImplementedError",
        502 => "BadGatewayError",
        503 => "ServiceUnavailableError",
        504 => "GatewayTimeoutError",
        _ => "ServerError",
    };
    ApiError {
        status: faults.error_status,
        kind,
        message: format!("model-sim fault: injected server error ({})", faults.error_status),
        param: None,
    }
}

async fn metrics_response(shared: &Arc<Shared>) -> Response<SimBody> {
    let faults = shared.faults();
    if faults.metrics_hang {
        // Long enough that any scraper times out first; the connection is the scraper's to close.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if faults.metrics_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.metrics_delay_ms)).await;
    }
    if faults.metrics_garbage {
        return response(
            shared,
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            SimBody::Full(Some(Bytes::from_static(GARBAGE_METRICS))),
        );
    }
    let page = shared.metrics_page(faults.metrics_frozen, || {
        shared.pump();
        let (m, ttft) = {
            let sim = shared.lock();
            (sim.engine.metrics(), sim.ttft.clone())
        };
        let ctx = metrics::Context {
            model: &shared.opts.model,
            lora_names: &shared.opts.loras,
            enable_prefix_caching: shared.opts.engine.enable_prefix_caching,
            started_unix: shared.started_unix(),
            now_unix: shared.unix_now(),
        };
        metrics::render(shared.opts.engine_kind, &m, &ttft, &ctx)
    });
    let text = metrics::drop_families(&page, &faults.drop_gauges);
    response(
        shared,
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        SimBody::Full(Some(Bytes::from(text))),
    )
}

fn faults_json(shared: &Shared) -> Response<SimBody> {
    let v = serde_json::to_value(shared.faults()).unwrap_or(Value::Null);
    json_response(shared, StatusCode::OK, &v)
}

async fn set_faults(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return error_response(shared, &e),
    };
    let patch = match FaultsPatch::from_json(&body) {
        Ok(p) => p,
        Err(e) => return error_response(shared, &ApiError::bad_request(e.to_string(), e.knob())),
    };
    let touches_port = Faults::touches_refusal(&patch);
    if let Err(e) = shared.apply_faults(patch) {
        return error_response(shared, &ApiError::bad_request(e.to_string(), Some(e.knob)));
    }
    if touches_port {
        // Answer once the port is as asked: a driver that got this answer can connect (or be refused)
        // right away. A timed refusal may already have ended; then the port is open again.
        let mut listening = shared.watch_listening();
        let ready = tokio::time::timeout(LISTENER_WAIT, async {
            let mut faults_now = shared.watch_faults();
            loop {
                let want_open = !faults_now.borrow_and_update().refuse_connections;
                if *listening.borrow_and_update() == want_open {
                    return;
                }
                tokio::select! {
                    r = listening.changed() => if r.is_err() { return },
                    r = faults_now.changed() => if r.is_err() { return },
                }
            }
        })
        .await;
        if ready.is_err() {
            let e = ApiError {
                status: 503,
                kind: "ServiceUnavailableError",
                message: "fault knobs applied, but the main port could not be re-opened yet (its address \
                          is in use; see stderr); model-sim keeps trying"
                    .into(),
                param: None,
            };
            return error_response(shared, &e);
        }
    }
    json_response(shared, StatusCode::OK, &serde_json::to_value(shared.faults()).unwrap_or(Value::Null))
}
