//! Body-based routing over ext_proc (`--bbr-port`): what GIE's Body-Based Router speaks, on the same core
//! as the Wasm filter's `bbr` role ([`scheduler_core::bbr`]), so the shim can stand in for both of GIE's
//! servers.
//!
//! Protocol, as GIE's BBR (`pkg/bbr/handlers`, run with `--streaming` by its Helm chart, whose gateway
//! configuration asks for request/response headers and trailers `SEND`, bodies `FULL_DUPLEX_STREAMED`):
//! - full duplex: the request headers response is held until the body ends, then sent with
//!   `clear_route_cache: true`, the promoted headers and the body's `Content-Length`, followed by the body
//!   echoed as streamed mutations (≤ 62,000 bytes each); trailers, if any, answered after it.
//! - buffered: the headers are answered at once (client copies of the router's headers removed); the body
//!   message is answered with the header mutation and `clear_route_cache: true`.
//! - response events, if the gateway sends them, pass unchanged (headers and trailers answered empty, a
//!   full-duplex body echoed chunk by chunk).
//! - errors: GIE answers a body that is not JSON with a plain-text 400; here every refusal is the
//!   picker's OpenAI-shaped answer (400, 413, 415, and 404 for an unknown model with
//!   `bbr.unknownModels: reject`), as an ImmediateResponse.

use crate::extproc::machine::{
    headers_response, response, streamed, streamed_chunks, BodyMode, ProtocolError,
};
use crate::extproc::proto::{header, immediate, Mutation};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeadersResponse, HttpBody, ProcessingRequest, ProcessingResponse,
    TrailersResponse,
};
use scheduler_core::bbr::{BbrExchange, BbrStep, BodyRouting};
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::exchange::headers::CONTENT_LENGTH;
use scheduler_core::exchange::HeaderLookup;
use std::borrow::Cow;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status, Streaming};

/// What every BBR stream reads.
#[derive(Clone, Debug)]
pub struct BbrSettings {
    pub config: GatewayConfig,
    pub routing: BodyRouting,
    /// Used when the gateway does not announce its body mode.
    pub default_mode: BodyMode,
    /// Ignore what the gateway announces.
    pub forced_mode: Option<BodyMode>,
}

impl BbrSettings {
    /// The configuration's `bbr` section, or GIE's default plugins when it has none.
    pub fn new(config: &GatewayConfig, default_mode: BodyMode, forced_mode: Option<BodyMode>) -> BbrSettings {
        BbrSettings {
            routing: config.bbr.clone().unwrap_or_default(),
            config: config.clone(),
            default_mode,
            forced_mode,
        }
    }
}

struct ProtoHeaders<'m>(Option<&'m HeaderMap>);

impl HeaderLookup for ProtoHeaders<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        header(self.0, name).map(Cow::Borrowed)
    }
}

fn mode_of(mode: i32) -> BodyMode {
    match BodySendMode::try_from(mode) {
        Ok(BodySendMode::FullDuplexStreamed) => BodyMode::FullDuplex,
        Ok(BodySendMode::None) => BodyMode::None,
        _ => BodyMode::Buffered,
    }
}

/// One BBR stream as a state machine: messages in, responses out, no I/O.
pub struct BbrMachine {
    settings: Arc<BbrSettings>,
    modes: Option<(BodyMode, BodyMode)>,
    exchange: BbrExchange,
    headers_seen: bool,
    routed: bool,
    refused: bool,
    body: Vec<u8>,
    /// Client copies of the router's headers, removed with the first request headers response.
    head: Mutation,
}

impl BbrMachine {
    pub fn new(settings: Arc<BbrSettings>) -> BbrMachine {
        BbrMachine {
            settings,
            modes: None,
            exchange: BbrExchange::new(),
            headers_seen: false,
            routed: false,
            refused: false,
            body: Vec::new(),
            head: Mutation::default(),
        }
    }

    fn request_mode(&self) -> BodyMode {
        self.modes.map_or(BodyMode::FullDuplex, |m| m.0)
    }

    fn response_mode(&self) -> BodyMode {
        self.modes.map_or(BodyMode::FullDuplex, |m| m.1)
    }

    pub fn on_message(&mut self, msg: ProcessingRequest) -> Result<Vec<ProcessingResponse>, ProtocolError> {
        if self.refused {
            return Ok(Vec::new());
        }
        if self.modes.is_none() {
            self.modes = Some(match (&msg.protocol_config, self.settings.forced_mode) {
                (_, Some(forced)) => (forced, forced),
                (Some(pc), None) => (mode_of(pc.request_body_mode), mode_of(pc.response_body_mode)),
                (None, None) => (self.settings.default_mode, self.settings.default_mode),
            });
        }
        match msg.request {
            Some(In::RequestHeaders(h)) => {
                if std::mem::replace(&mut self.headers_seen, true) {
                    return Err(ProtocolError("request headers arrived twice".into()));
                }
                let s = Arc::clone(&self.settings);
                let head = self.exchange.on_request_headers(
                    &s.routing,
                    Some(&ProtoHeaders(h.headers.as_ref())),
                    h.end_of_stream,
                );
                for name in &head.remove {
                    self.head.remove(name);
                }
                match head.next {
                    BbrStep::Route { .. } => Ok(self.route(At::Headers)),
                    // Held: nothing may reach Envoy before the headers response, and that needs the body.
                    _ if self.request_mode() == BodyMode::FullDuplex => Ok(Vec::new()),
                    _ => Ok(vec![response(Out::RequestHeaders(headers_response(std::mem::take(
                        &mut self.head,
                    ))))]),
                }
            }
            Some(In::RequestBody(b)) => self.request_body(b),
            Some(In::RequestTrailers(_)) => {
                if !self.headers_seen {
                    return Err(ProtocolError("request trailers arrived before request headers".into()));
                }
                if self.routed {
                    return Ok(vec![response(Out::RequestTrailers(TrailersResponse::default()))]);
                }
                let step = self.exchange.on_request_trailers();
                Ok(self.step(step, At::Trailers))
            }
            Some(In::ResponseHeaders(_)) => {
                Ok(vec![response(Out::ResponseHeaders(HeadersResponse::default()))])
            }
            Some(In::ResponseBody(b)) => Ok(vec![match self.response_mode() {
                BodyMode::FullDuplex => streamed(b.body, b.end_of_stream, false),
                _ => response(Out::ResponseBody(BodyResponse::default())),
            }]),
            Some(In::ResponseTrailers(_)) => {
                Ok(vec![response(Out::ResponseTrailers(TrailersResponse::default()))])
            }
            None => Ok(Vec::new()),
        }
    }

    fn request_body(&mut self, b: HttpBody) -> Result<Vec<ProcessingResponse>, ProtocolError> {
        if !self.headers_seen {
            return Err(ProtocolError("request body arrived before request headers".into()));
        }
        if self.routed {
            return Err(ProtocolError("request body arrived after the request ended".into()));
        }
        self.body.extend_from_slice(&b.body);
        let complete = b.end_of_stream || self.request_mode() != BodyMode::FullDuplex;
        let step = self.exchange.on_request_body(
            self.settings.config.limits.max_body_bytes,
            self.body.len(),
            complete,
        );
        Ok(self.step(step, At::Body))
    }

    fn step(&mut self, step: BbrStep, at: At) -> Vec<ProcessingResponse> {
        match step {
            BbrStep::Wait | BbrStep::Pass => Vec::new(),
            BbrStep::Route { .. } => self.route(at),
            BbrStep::Reply(reply) => {
                self.refused = true;
                vec![response(Out::ImmediateResponse(immediate(reply.status, &reply.body, reply.reason)))]
            }
        }
    }

    fn route(&mut self, at: At) -> Vec<ProcessingResponse> {
        self.routed = true;
        let s = Arc::clone(&self.settings);
        let body = (at != At::Headers && !self.body.is_empty()).then_some(self.body.as_slice());
        let set = match s.routing.route(&s.config, self.exchange.facts(), body) {
            Ok(set) => set,
            Err(reply) => {
                self.refused = true;
                return vec![response(Out::ImmediateResponse(immediate(
                    reply.status,
                    &reply.body,
                    reply.reason,
                )))];
            }
        };
        let mut mutation = std::mem::take(&mut self.head);
        for (name, value) in &set {
            mutation.set(name, value);
        }
        let body = std::mem::take(&mut self.body);
        match (at, self.request_mode()) {
            (At::Headers, _) => vec![response(Out::RequestHeaders(headers_response(mutation)))],
            (At::Body | At::Trailers, BodyMode::FullDuplex) => {
                // The body goes back as streamed mutations: its length is declared as sent (GIE does too).
                mutation.set(CONTENT_LENGTH, &body.len().to_string());
                let mut out = vec![response(Out::RequestHeaders(headers_response(mutation)))];
                let trailers_follow = at == At::Trailers;
                out.extend(streamed_chunks(&body, !trailers_follow, true));
                if trailers_follow {
                    out.push(response(Out::RequestTrailers(TrailersResponse::default())));
                }
                out
            }
            (At::Body | At::Trailers, _) => {
                let common = CommonResponse {
                    header_mutation: mutation.into_option(),
                    clear_route_cache: true,
                    ..CommonResponse::default()
                };
                vec![response(Out::RequestBody(BodyResponse { response: Some(common) }))]
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Headers,
    Body,
    Trailers,
}

/// The gRPC `ExternalProcessor/Process` service of the BBR port.
#[derive(Clone, Debug)]
pub struct BbrService {
    settings: Arc<BbrSettings>,
}

impl BbrService {
    pub fn new(settings: BbrSettings) -> BbrService {
        BbrService { settings: Arc::new(settings) }
    }

    pub fn into_server(self) -> ExternalProcessorServer<BbrService> {
        let limit = self.settings.config.limits.max_body_bytes.saturating_mul(2).max(4 * 1024 * 1024);
        ExternalProcessorServer::new(self).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl ExternalProcessor for BbrService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let mut machine = BbrMachine::new(Arc::clone(&self.settings));
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match machine.on_message(msg) {
                    Ok(responses) => {
                        for r in responses {
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!("bbr: {e}");
                        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the BBR port until shutdown (TLS as the ext_proc port's, when given).
pub async fn serve(listener: tokio::net::TcpListener, settings: BbrSettings, tls: Option<ServerTlsConfig>) {
    let mut builder = tonic::transport::Server::builder();
    if let Some(config) = tls {
        builder = match builder.tls_config(config) {
            Ok(b) => b,
            Err(e) => {
                log::error!("bbr: TLS configuration rejected, not serving: {e}");
                return;
            }
        };
    }
    let service = BbrService::new(settings).into_server();
    let served = builder
        .serve_with_incoming_shutdown(service, crate::app::nodelay(listener), crate::app::shutdown())
        .await;
    if let Err(e) = served {
        log::error!("bbr server failed: {e}");
    }
}

#[cfg(test)]
mod tests;
