//! The gRPC `ExternalProcessor/Process` service: one task per stream feeds messages to a [`Machine`],
//! asks the picker thread when the machine says so, and writes the responses back in order.

use super::machine::{Machine, Step, StreamSettings};
use crate::metrics::{request_model, Metrics, RequestRecord};
use crate::picker::{Lease, PickerHandle};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use scheduler_core::exchange::InFlight;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Debug)]
pub struct ExtProcService {
    picker: PickerHandle,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
}

impl ExtProcService {
    pub fn new(picker: PickerHandle, settings: StreamSettings, metrics: Arc<Metrics>) -> ExtProcService {
        ExtProcService { picker, settings: Arc::new(settings), metrics }
    }

    pub fn into_server(self) -> ExternalProcessorServer<ExtProcService> {
        // Bodies up to the core's limit travel in one buffered message; leave room for the envelope.
        let limit = self.settings.exchange.max_body_bytes.saturating_mul(2).max(4 * 1024 * 1024);
        ExternalProcessorServer::new(self).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }
}

/// Releases the stream's in-flight count however the stream ends (done, reset, or error).
struct StreamGuard {
    picker: PickerHandle,
    metrics: Arc<Metrics>,
    in_flight: Option<InFlight>,
    /// The picker waits for the response headers under this ticket.
    ticket: Option<u64>,
    /// The request as the reference picker's metrics count it.
    record: RequestRecord,
    /// Flow control tracks the request in flight (in-flight eviction); dropped with the guard.
    lease: Option<Lease>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.picker.first_byte(ticket, false);
        }
        if let Some(f) = self.in_flight.take() {
            self.picker.finish(&f.address, f.tokens, f.awaiting);
        }
        self.metrics.request_ended(&mut self.record);
        self.metrics.stream_ended();
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        self.metrics.stream_started();
        let guard = StreamGuard {
            picker: self.picker.clone(),
            metrics: Arc::clone(&self.metrics),
            in_flight: None,
            ticket: None,
            record: RequestRecord::new(),
            lease: None,
        };
        let machine = Machine::new(Arc::clone(&self.settings));
        tokio::spawn(drive(inbound, tx, machine, guard));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn drive(
    mut inbound: Streaming<ProcessingRequest>,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    mut machine: Machine,
    mut guard: StreamGuard,
) {
    // Messages that came while the request waited in flow control, handled once it is decided.
    let mut held: VecDeque<ProcessingRequest> = VecDeque::new();
    'stream: loop {
        let msg = match held.pop_front() {
            Some(m) => m,
            None => {
                let next = match guard.lease.as_mut() {
                    None => inbound.message().await,
                    // In flight and evictable: eviction's reply may come first.
                    Some(lease) => tokio::select! {
                        m = inbound.message() => m,
                        reply = &mut lease.evicted => {
                            if let Ok(reply) = reply {
                                guard.metrics.record_eviction();
                                guard.metrics.request_answered(&mut guard.record, reply.status);
                                let _ = tx.send(Ok(machine.evicted(&reply))).await;
                                break 'stream;
                            }
                            // The picker let go of the lease without evicting: wait for messages only.
                            guard.lease = None;
                            inbound.message().await
                        }
                    },
                };
                match next {
                    Ok(Some(m)) => m,
                    // Half-close (NGINX's bridge after its last message) or the gateway went away.
                    Ok(None) | Err(_) => break 'stream,
                }
            }
        };
        let response_ends = guard.record.observe(&msg);
        let steps = match machine.on_message(msg) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{e}");
                let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                break 'stream;
            }
        };
        for step in steps {
            let sent = match step {
                Step::Send(r) => tx.send(Ok(r)).await.is_ok(),
                Step::Decide(input) => {
                    let model = request_model(input.facts.content_type.as_deref(), input.body.as_deref());
                    // The answer may wait in flow control's queue. If the gateway resets the stream (the
                    // client went away) meanwhile, dropping the wait takes the request out of the queue.
                    let decide = guard.picker.decide_leased(input);
                    tokio::pin!(decide);
                    let mut half_closed = false;
                    let decided = loop {
                        tokio::select! {
                            d = &mut decide => break Some(d),
                            () = tx.closed() => break None,
                            m = inbound.message(), if !half_closed => match m {
                                Ok(Some(m)) => held.push_back(m),
                                // NGINX's bridge half-closes after its last message: keep waiting.
                                Ok(None) => half_closed = true,
                                Err(_) => break None,
                            },
                        }
                    };
                    let Some((outcome, ticket, lease)) = decided else { break 'stream };
                    guard.lease = lease;
                    guard.metrics.request_decided(&mut guard.record, &model, &outcome);
                    guard.ticket = ticket;
                    let responses = machine.on_outcome(outcome);
                    guard.in_flight = machine.in_flight();
                    let mut ok = true;
                    for r in responses {
                        ok = ok && tx.send(Ok(r)).await.is_ok();
                    }
                    ok
                }
                Step::Served { routed, served, tokens, awaiting } => {
                    guard.picker.moved(&routed, &served, tokens, awaiting);
                    guard.metrics.record_served_elsewhere();
                    guard.in_flight = Some(InFlight { address: served, tokens, awaiting });
                    true
                }
                Step::FirstToken { endpoint, prompt_tokens } => {
                    guard.picker.first_token(&endpoint, prompt_tokens);
                    if let Some(f) = &mut guard.in_flight {
                        f.awaiting = 0;
                    }
                    true
                }
                Step::EarlyReply(reason) => {
                    guard.metrics.record_early_reply(reason);
                    guard.metrics.request_refused_early(&mut guard.record);
                    true
                }
                Step::Answered { endpoint, status } => {
                    if let Some(ticket) = guard.ticket.take() {
                        // A retry shows first as a 503 of the pod it was sent to.
                        guard.picker.first_byte(ticket, status < 500);
                    }
                    if status >= 500 {
                        guard.metrics.record_upstream_5xx(&endpoint);
                    }
                    guard.picker.answered(&endpoint, status);
                    guard.metrics.request_answered(&mut guard.record, status);
                    true
                }
                Step::Usage(u) => {
                    guard.metrics.request_usage(&mut guard.record, u.prompt_tokens, u.completion_tokens);
                    true
                }
            };
            if !sent {
                break 'stream;
            }
        }
        if response_ends {
            guard.metrics.response_complete(&mut guard.record);
        }
    }
    // Release the in-flight count before the gateway sees the stream end, so the next request's pick
    // (queued behind this on the picker's channel) already sees it gone.
    drop(guard);
    drop(tx);
}
