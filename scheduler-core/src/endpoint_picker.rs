//! One request, start to finish, as a gateway decides it: body limit, parsing, model rewrite, priority,
//! fail-open policy, admission and scheduling, and the answer as headers or an OpenAI-shaped reply.
//!
//! The Wasm filter, the ext_proc shim and the simulator all call [`EndpointPicker::decide`], so given the
//! same configuration, snapshot, clock and seed they make the same decision. What stays outside is I/O:
//! reading headers and bodies, the snapshot, in-flight counts, and writing the result back; the request's
//! conversation around the decision (headers stripped, body buffered, response read) is
//! [`crate::exchange`].

use crate::admission::{admit_with, Admit, Decision, RejectReason};
use crate::config::gateway::{FailOpenStrategy, FailureMode, GatewayConfig};
use crate::config::ConfigError;
use crate::flow_control::{FlowController, Gate, QueueOutcome, QueueRequest, Ticket};
use crate::health::{HealthTracker, UpstreamResult};
use crate::model::{EndpointState, PoolSnapshot};
use crate::openai_error::OpenAiError;
use crate::request::{parse_form, parse_request, rewrite_model, BodyFormat, InferenceRequest, RequestMeta};
use crate::rng::Rng;
use crate::scheduling::pipeline::Scheduler;
use crate::scheduling::{SchedulingContext, SchedulingRequest};
use alloc::string::String;
use alloc::vec::Vec;

/// Request facts that come from headers (the body is passed separately).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestInfo<'a> {
    /// `:path`, which selects the API (`/v1/chat/completions`, ...).
    pub path: &'a str,
    /// `x-request-id` (logs, deterministic coins).
    pub request_id: &'a str,
    /// `x-gateway-inference-objective`.
    pub objective: Option<&'a str>,
    /// `x-llm-d-inference-fairness-id` (or `x-gateway-inference-fairness-id`): the request's flow in
    /// flow control; `None` → `default-flow`.
    pub fairness_id: Option<&'a str>,
    /// `x-gateway-model-name-rewrite`: forces the target model.
    pub model_rewrite: Option<&'a str>,
    /// `x-session-token`.
    pub session_token: Option<&'a str>,
    /// The gateway's subset hint (`ip:port` or bare `ip` entries), when present.
    pub subset: Option<&'a [&'a str]>,
    /// `content-type`: selects how the body is read ([`BodyFormat`]); `None` reads it as JSON.
    pub content_type: Option<&'a str>,
    /// `content-encoding`: anything but `identity` on a body is answered 415.
    pub content_encoding: Option<&'a str>,
    /// The request headers configured plugins read (see `SchedulingRequest::headers`).
    pub headers: &'a [(String, String)],
}

/// Why the picker could not decide from metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// No snapshot was ever published (collector not running yet, or not configured).
    NoSnapshot,
    /// The last snapshot is older than `limits.snapshotMaxAgeMs`.
    StaleSnapshot,
    /// The published bytes could not be decoded (corrupt, or a newer format).
    UndecodableSnapshot,
    /// No endpoint is usable: scrapes failing, metrics missing or stale, or ejected for failures.
    NoUsableEndpoint,
}

impl Fallback {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NoSnapshot => "no_snapshot",
            Fallback::StaleSnapshot => "stale_snapshot",
            Fallback::UndecodableSnapshot => "undecodable_snapshot",
            Fallback::NoUsableEndpoint => "no_usable_endpoint",
        }
    }
}

/// What the caller knows about the pool right now.
#[derive(Clone, Copy, Debug)]
pub enum PoolView<'a> {
    /// A snapshot fresh enough to schedule on (gateway in-flight counts already merged in).
    Fresh(&'a PoolSnapshot),
    /// Metrics are unusable; `known` is the last decodable snapshot, if any (its endpoint list is still
    /// the best guess of who exists).
    Unusable { reason: Fallback, known: Option<&'a PoolSnapshot> },
}

/// A routing decision to apply to the request.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Value for the destination header: one `ip:port`, or primary-then-fallbacks joined by `,` when
    /// `routing.maxEndpoints` > 1.
    pub header_value: String,
    /// The primary endpoint alone (for in-flight accounting).
    pub destination: String,
    /// `ip:port` for the prefill header (disaggregated serving).
    pub prefill: Option<String>,
    /// The model the server should run, when it differs from the body's.
    pub rewritten_model: Option<String>,
    /// The body to send instead of the client's: the same bytes with `model` set to `rewritten_model`
    /// (`None` when the model is unchanged or the request has no body).
    pub body: Option<Vec<u8>>,
    /// The model the client asked for, when the body was rewritten (responses name it again).
    pub client_model: Option<String>,
    /// Estimated tokens this request will hold on the server (input + expected output), for in-flight.
    pub estimated_tokens: u64,
    /// Estimated prompt tokens the destination must prefill (the scorers' estimate, less what the prefix
    /// index consulted when deciding says the destination holds), counted as awaiting the first token
    /// until the response shows it (`prefill-backlog-scorer`, `prefill-backlog-detector`).
    pub prompt_tokens: u64,
    /// Prefix block hashes recorded on the destination (for other workers' `learn_prefix`).
    pub prefix_hashes: Vec<u64>,
    /// The client asked for a streamed response (its headers come before any token is generated).
    pub streaming: bool,
}

/// A local reply instead of routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// OpenAI-shaped JSON error body.
    pub body: String,
    /// Stable label for metrics (`bad_request`, `body_too_large`, `saturated`, ...).
    pub reason: &'static str,
}

/// The decision for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Scheduled on fresh metrics.
    Route(Route),
    /// Metrics unusable and failing open: route blind (`Some`), or leave the destination unset so the
    /// proxy's own load balancing decides (`None`).
    FailOpen {
        reason: Fallback,
        route: Option<Route>,
    },
    Reply(Reply),
}

/// A configured picker. Holds the scheduler (and so the prefix index); one per proxy worker.
pub struct EndpointPicker {
    scheduler: Scheduler,
    config: GatewayConfig,
    health: HealthTracker,
    /// The snapshot generation health last forgot departed endpoints for.
    health_generation: u64,
    /// Cursor for fail-open round-robin.
    next_blind: usize,
    /// Flow control's queues, when the `flowControl` feature gate is on.
    flow: Option<FlowController>,
}

/// The answer to [`EndpointPicker::decide_or_queue`].
// Returned by value once per request, as `Outcome` is: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Decided now. `lease`: flow control tracks this request in flight (in-flight eviction is on and
    /// it is sheddable): report its end with [`EndpointPicker::finished`].
    Decided { outcome: Outcome, lease: Option<Ticket> },
    /// Waiting in flow control. The ticket ends exactly once: dispatched or expired by
    /// [`EndpointPicker::poll`], or cancelled by [`EndpointPicker::cancel`].
    Queued(Ticket),
}

/// The caller's store of waiting requests: what it gave [`EndpointPicker::decide_or_queue`] for a
/// ticket, given back at dispatch time (the body stays with the caller while the request waits).
pub trait WaitingRequests {
    /// Calls `f` with the request facts and body (`None`: no body) of the waiting request `ticket`;
    /// returns false, without calling `f`, when the caller no longer holds it.
    fn with_request(&mut self, ticket: Ticket, f: &mut dyn FnMut(&RequestInfo<'_>, Option<&[u8]>)) -> bool;
}

/// A waiting request that left the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    pub ticket: Ticket,
    /// Dispatched: the decision made now, on the current snapshot (a route, or a reply such as 429 when
    /// every endpoint was filtered out). Expired: the queue's reply (429, or 503 with no endpoints).
    pub outcome: Outcome,
    /// Dispatched and tracked for in-flight eviction: report its end with [`EndpointPicker::finished`].
    pub lease: Option<Ticket>,
    pub waited_ms: u64,
    /// How it left: `Dispatched`, `EvictedTTL` or `EvictedNoEndpoints`.
    pub how: QueueOutcome,
}

/// A request already sent that in-flight eviction ends: answer it `reply` (429) and abort it upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub lease: Ticket,
    pub reply: Reply,
}

/// What one [`EndpointPicker::poll`] released.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Poll {
    pub settled: Vec<Settled>,
    pub revoked: Vec<Revoked>,
}

impl EndpointPicker {
    /// Builds the scheduler; every plugin and reference error surfaces here, with its path.
    pub fn new(config: GatewayConfig) -> Result<EndpointPicker, ConfigError> {
        let mut scheduler = Scheduler::from_config(&config.picker)?;
        scheduler.set_max_endpoints(config.routing.max_endpoints);
        let health = HealthTracker::new(config.health, config.limits.snapshot_max_age_ms);
        let flow = config.picker.flow_control.clone().map(FlowController::new);
        Ok(EndpointPicker { scheduler, config, health, health_generation: 0, next_blind: 0, flow })
    }

    pub fn from_json(text: &str) -> Result<EndpointPicker, ConfigError> {
        EndpointPicker::new(GatewayConfig::from_json(text)?)
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn scheduler_mut(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }

    pub fn health(&self) -> &HealthTracker {
        &self.health
    }

    pub fn health_mut(&mut self) -> &mut HealthTracker {
        &mut self.health
    }

    /// What the gateway saw of a request it sent to `address` (the response status; 502/503/504 also
    /// stand for a refused connection, a reset or a timeout).
    pub fn record_upstream(&mut self, address: &str, status: u16, now_ms: u64) {
        self.health.record(address, UpstreamResult::of_status(status), now_ms);
    }

    /// How to treat `snapshot` at `now_ms`: fresh, or why not.
    pub fn view<'a>(
        &self,
        snapshot: Option<&'a PoolSnapshot>,
        undecodable: bool,
        now_ms: u64,
    ) -> PoolView<'a> {
        match snapshot {
            _ if undecodable => PoolView::Unusable { reason: Fallback::UndecodableSnapshot, known: snapshot },
            None => PoolView::Unusable { reason: Fallback::NoSnapshot, known: None },
            Some(s) if now_ms.saturating_sub(s.published_at_ms) > self.config.limits.snapshot_max_age_ms => {
                PoolView::Unusable { reason: Fallback::StaleSnapshot, known: Some(s) }
            }
            Some(s) => PoolView::Fresh(s),
        }
    }

    /// 413 as soon as the body is known to exceed the limit (call while buffering, to stop early).
    pub fn body_too_large(&self, body_len: usize) -> Option<Reply> {
        let limit = self.config.limits.max_body_bytes;
        (body_len > limit).then(|| body_too_large(limit))
    }

    /// Flow control's queues and stats, when it is on.
    pub fn flow_control(&self) -> Option<&FlowController> {
        self.flow.as_ref()
    }

    pub fn flow_control_mut(&mut self) -> Option<&mut FlowController> {
        self.flow.as_mut()
    }

    /// What the dispatch gate reads of `pool`: the configured saturation detector's value on a fresh
    /// snapshot (in-flight counts merged in, so it moves as requests finish when the detector counts
    /// them), nothing when metrics are unusable (the request then fails open or closed when decided).
    pub fn gate(&self, pool: PoolView<'_>, now_ms: u64) -> Gate {
        match pool {
            PoolView::Fresh(s) => {
                let req = SchedulingRequest::default();
                let ctx = SchedulingContext { request: &req, pool: s, now_ms };
                Gate {
                    saturation: Some(self.scheduler.saturation(&ctx).unwrap_or(0.0)),
                    no_endpoints: s.endpoints.is_empty(),
                }
            }
            PoolView::Unusable { known, .. } => Gate {
                saturation: None,
                no_endpoints: known.map_or(self.config.pool.endpoints.is_empty(), |s| s.endpoints.is_empty()),
            },
        }
    }

    /// The request's priority: its objective in the configuration, else in the pool's resources, else 0.
    fn priority(&self, info: &RequestInfo<'_>, pool: PoolView<'_>) -> i32 {
        let resources = match pool {
            PoolView::Fresh(s) => Some(&s.resources),
            PoolView::Unusable { known, .. } => known.map(|s| &s.resources),
        };
        self.config.objectives.priority_or(resources.map(|r| &r.objectives), info.objective)
    }

    /// Decides for one request, or queues it when flow control is on and the pool has no room for it
    /// (see [`crate::flow_control`]). Without flow control, the same as [`EndpointPicker::decide`].
    /// A request that would wait is first checked as [`EndpointPicker::decide`] would (413, 415, 400),
    /// so a bad request never takes a place in the queue.
    pub fn decide_or_queue(
        &mut self,
        info: &RequestInfo<'_>,
        body: Option<&[u8]>,
        pool: PoolView<'_>,
        now_ms: u64,
        seed: u64,
    ) -> Admission {
        if self.flow.is_none() {
            return Admission::Decided { outcome: self.decide(info, body, pool, now_ms, seed), lease: None };
        }
        let gate = self.gate(pool, now_ms);
        let priority = self.priority(info, pool);
        let req = QueueRequest {
            priority,
            flow: info.fairness_id.unwrap_or(""),
            bytes: body.map_or(0, |b| b.len() as u64),
        };
        let goes_now = self.flow.as_mut().is_some_and(|fc| fc.goes_now(&req, &gate, now_ms));
        if !goes_now {
            if let Some(reply) = self.precheck(info, body) {
                return Admission::Decided { outcome: Outcome::Reply(reply), lease: None };
            }
            let queued = self.flow.as_mut().map(|fc| fc.enqueue(&req, now_ms));
            match queued {
                Some(Ok(ticket)) => return Admission::Queued(ticket),
                Some(Err(outcome)) => {
                    return Admission::Decided { outcome: Outcome::Reply(flow_reply(outcome)), lease: None }
                }
                None => {}
            }
        }
        let outcome = self.decide_with(info, body, pool, now_ms, seed, false);
        let lease = match (&outcome, self.flow.as_mut()) {
            (Outcome::Route(_) | Outcome::FailOpen { route: Some(_), .. }, Some(fc)) => {
                fc.lease(None, priority, now_ms)
            }
            _ => None,
        };
        Admission::Decided { outcome, lease }
    }

    /// The checks [`EndpointPicker::decide`] answers before anything else (413, 415, 400), alone: the
    /// body read of [`read_body`], kept only for its refusal.
    fn precheck(&self, info: &RequestInfo<'_>, body: Option<&[u8]>) -> Option<Reply> {
        read_body(&self.config, info, body).err()
    }

    /// Lets flow control go on: answers the waiting requests whose time ran out, then dispatches
    /// waiting requests while the gate is open, deciding each on the snapshot as it is now. Call it on
    /// a short tick (10–20 ms) and whenever a request finishes. `snapshot` is the caller's working copy
    /// (in-flight merged in): each request dispatched is counted on its destination there at once, so
    /// the next one sees it; the caller still records every route in its own in-flight table, as for any
    /// decision. Tickets `waiting` no longer holds are dropped (they count as dispatched).
    pub fn poll(
        &mut self,
        mut snapshot: Option<&mut PoolSnapshot>,
        undecodable: bool,
        now_ms: u64,
        waiting: &mut dyn WaitingRequests,
    ) -> Poll {
        let mut out = Poll::default();
        let Some(mut fc) = self.flow.take() else { return out };
        let gate = self.gate(self.view(snapshot.as_deref(), undecodable, now_ms), now_ms);
        for r in fc.expire(&gate, now_ms) {
            out.settled.push(Settled {
                ticket: r.ticket,
                outcome: Outcome::Reply(flow_reply(r.outcome)),
                lease: None,
                waited_ms: r.waited_ms,
                how: r.outcome,
            });
        }
        loop {
            let view = self.view(snapshot.as_deref(), undecodable, now_ms);
            let gate = self.gate(view, now_ms);
            let in_flight = match view {
                PoolView::Fresh(s) => s.endpoints.iter().map(|e| u64::from(e.in_flight.requests)).sum(),
                PoolView::Unusable { .. } => 0,
            };
            let Some(released) = fc.next(&gate, in_flight, now_ms) else { break };
            let mut decided = None;
            waiting.with_request(released.ticket, &mut |info, body| {
                decided =
                    Some(self.decide_with(info, body, view, now_ms, request_seed(info.request_id), false));
            });
            let Some(outcome) = decided else { continue };
            let route = match &outcome {
                Outcome::Route(r) | Outcome::FailOpen { route: Some(r), .. } => Some(r),
                _ => None,
            };
            let lease = match route {
                Some(r) => {
                    if let Some(e) = snapshot.as_deref_mut().and_then(|s| s.find_mut(&r.destination)) {
                        e.in_flight.add(r.estimated_tokens);
                        e.in_flight.await_first_token(r.prompt_tokens);
                    }
                    fc.lease(Some(released.ticket), released.priority, now_ms)
                }
                None => None,
            };
            out.settled.push(Settled {
                ticket: released.ticket,
                outcome,
                lease,
                waited_ms: released.waited_ms,
                how: released.outcome,
            });
        }
        for (lease, _) in fc.take_revoked() {
            out.revoked.push(Revoked { lease, reply: evicted_reply() });
        }
        self.flow = Some(fc);
        out
    }

    /// The client of a waiting request went away: it leaves the queue (false if it was not waiting).
    pub fn cancel(&mut self, ticket: Ticket, now_ms: u64) -> bool {
        self.flow.as_mut().is_some_and(|fc| fc.cancel(ticket, now_ms))
    }

    /// A request decided with a lease ended (answered, failed, reset or evicted).
    pub fn finished(&mut self, lease: Ticket, now_ms: u64) {
        if let Some(fc) = self.flow.as_mut() {
            fc.finished(lease, now_ms);
        }
    }

    /// Decides for one request. `body` is `None` for requests without one (picked on load alone).
    pub fn decide(
        &mut self,
        info: &RequestInfo<'_>,
        body: Option<&[u8]>,
        pool: PoolView<'_>,
        now_ms: u64,
        seed: u64,
    ) -> Outcome {
        self.decide_with(info, body, pool, now_ms, seed, true)
    }

    /// [`EndpointPicker::decide`]; `shed` false when flow control admitted the request (a sheddable
    /// request is then held by the queue, not refused for saturation).
    fn decide_with(
        &mut self,
        info: &RequestInfo<'_>,
        body: Option<&[u8]>,
        pool: PoolView<'_>,
        now_ms: u64,
        seed: u64,
        shed: bool,
    ) -> Outcome {
        match read_body(&self.config, info, body) {
            Ok(read) => self.decide_read_with(info, read, pool, now_ms, seed, shed),
            Err(reply) => Outcome::Reply(reply),
        }
    }

    /// [`EndpointPicker::decide`] on a body already read by [`read_body`] (with this picker's
    /// configuration): a gateway that also routes on the body ([`crate::bbr`]) reads it once for both.
    pub fn decide_read(
        &mut self,
        info: &RequestInfo<'_>,
        read: ReadBody<'_>,
        pool: PoolView<'_>,
        now_ms: u64,
        seed: u64,
    ) -> Outcome {
        self.decide_read_with(info, read, pool, now_ms, seed, true)
    }

    /// [`EndpointPicker::decide_read`]; `shed` as in [`EndpointPicker::decide_with`].
    fn decide_read_with(
        &mut self,
        info: &RequestInfo<'_>,
        read: ReadBody<'_>,
        pool: PoolView<'_>,
        now_ms: u64,
        seed: u64,
        shed: bool,
    ) -> Outcome {
        let ReadBody { body, parsed, json_body } = read;
        let mut rng = Rng::new(seed);
        let body_model = parsed.as_ref().map(|r| r.model.as_ref()).unwrap_or("");
        // The pool's InferenceObjective / InferenceModelRewrite resources (from the collector) apply after
        // the configuration's own, which win where both speak.
        let resources = match pool {
            PoolView::Fresh(s) => Some(&s.resources),
            PoolView::Unusable { known, .. } => known.map(|s| &s.resources),
        };
        let rewritten: Option<String> = match info.model_rewrite.filter(|m| !m.is_empty()) {
            Some(m) => Some(String::from(m)),
            None => self
                .config
                .rewrites
                .rewrite_or(resources.map(|r| &r.rewrites), body_model, &mut rng)
                .map(String::from),
        }
        .filter(|m| m != body_model && json_body);
        // The body must name the model the server runs; a body that cannot is refused before anything is
        // counted, never forwarded with the wrong model.
        let mut rewritten_body = None;
        if let (Some(target), Some(b)) = (rewritten.as_deref(), body) {
            match rewrite_model(b, target) {
                Ok(r) => rewritten_body = Some((r.body, r.previous_model)),
                Err(e) => {
                    return Outcome::Reply(Reply {
                        status: 400,
                        body: OpenAiError::invalid_request(&e).body(),
                        reason: "bad_request",
                    })
                }
            }
        }
        let meta = RequestMeta {
            request_id: info.request_id,
            priority: self.config.objectives.priority_or(resources.map(|r| &r.objectives), info.objective),
            session_token: info.session_token,
            model_override: rewritten.as_deref(),
            headers: info.headers,
        };
        let req = match &parsed {
            Some(p) => p.scheduling_request(meta),
            None => SchedulingRequest {
                request_id: info.request_id,
                model: rewritten.as_deref().unwrap_or(""),
                priority: meta.priority,
                session_token: info.session_token,
                headers: info.headers,
                ..SchedulingRequest::default()
            },
        };
        let estimated_tokens = req.estimated_total_tokens();
        let response = ResponseExpected {
            streaming: parsed.as_ref().is_some_and(|p| p.stream),
            prompt_tokens: req.estimated_input_tokens(),
        };

        let snapshot = match pool {
            PoolView::Fresh(s) => s,
            PoolView::Unusable { reason, known } => {
                let outcome = self.fail_open_or_closed(reason, known, info.subset, estimated_tokens);
                return with_rewrite(outcome, rewritten, rewritten_body, response);
            }
        };
        if snapshot.generation != self.health_generation {
            self.health_generation = snapshot.generation;
            self.health.retain(snapshot);
            self.scheduler.retain_prefix_endpoints(snapshot);
        }
        let exclusions = self.health.exclusions(snapshot, now_ms);
        if exclusions.all_unusable && self.config.failure_mode == FailureMode::FailClose {
            let outcome =
                self.fail_open_or_closed(Fallback::NoUsableEndpoint, Some(snapshot), info.subset, 0);
            return with_rewrite(outcome, rewritten, rewritten_body, response);
        }
        let decision = admit_with(
            &mut self.scheduler,
            &req,
            snapshot,
            Admit { subset: info.subset, exclusions: &exclusions, shed_sheddable: shed },
            now_ms,
            &mut rng,
        );
        // What awaits the first token on the destination is its prefill: the prompt less what its prefix
        // match says the destination holds.
        let response = match &decision {
            Decision::Route { destination, cached_tokens, .. } => {
                self.health.routed(destination, now_ms);
                ResponseExpected {
                    prompt_tokens: response.prompt_tokens.saturating_sub(*cached_tokens),
                    ..response
                }
            }
            Decision::Reject { .. } => response,
        };
        let outcome = match decision {
            Decision::Route { destination, fallbacks, prefill, prefix_hashes, .. } => {
                let mut header_value = destination.clone();
                for f in fallbacks.iter().take(self.config.routing.max_endpoints.saturating_sub(1)) {
                    header_value.push(',');
                    header_value.push_str(f);
                }
                Outcome::Route(Route {
                    header_value,
                    destination,
                    prefill,
                    rewritten_model: None,
                    body: None,
                    client_model: None,
                    estimated_tokens,
                    prompt_tokens: 0,
                    prefix_hashes,
                    streaming: false,
                })
            }
            Decision::Reject { reason, message, .. } => Outcome::Reply(reject_reply(reason, &message)),
        };
        // Every endpoint unusable and failing open: routed on what the metrics say, and counted as such.
        let outcome = match outcome {
            Outcome::Route(route) if exclusions.all_unusable => {
                Outcome::FailOpen { reason: Fallback::NoUsableEndpoint, route: Some(route) }
            }
            other => other,
        };
        with_rewrite(outcome, rewritten, rewritten_body, response)
    }

    fn fail_open_or_closed(
        &mut self,
        reason: Fallback,
        known: Option<&PoolSnapshot>,
        subset: Option<&[&str]>,
        estimated_tokens: u64,
    ) -> Outcome {
        if self.config.failure_mode == FailureMode::FailClose {
            let message = match reason {
                Fallback::NoSnapshot => "no endpoint metrics are available yet and the gateway fails closed",
                Fallback::StaleSnapshot => "endpoint metrics are stale and the gateway fails closed",
                Fallback::UndecodableSnapshot => {
                    "endpoint metrics are unreadable and the gateway fails closed"
                }
                Fallback::NoUsableEndpoint => {
                    "no endpoint is usable (metrics missing or stale, or failing) and the gateway fails closed"
                }
            };
            return Outcome::Reply(Reply {
                status: 503,
                body: OpenAiError::service_unavailable(message, Some("metrics_unavailable")).body(),
                reason: reason.as_str(),
            });
        }
        if self.config.fail_open.strategy == FailOpenStrategy::LeaveUnset {
            return Outcome::FailOpen { reason, route: None };
        }
        // Blind round-robin over whoever is known to exist, within the subset hint.
        let from_snapshot = known.map(|s| s.endpoints.iter().map(EndpointState::address));
        let addresses: Vec<&str> = match from_snapshot {
            Some(a) => a.collect(),
            None => self.config.pool.endpoints.iter().map(|e| e.address.as_str()).collect(),
        };
        let allowed: Vec<&str> = match subset {
            Some(hint) => addresses.into_iter().filter(|a| in_subset(a, hint)).collect(),
            None => addresses,
        };
        if allowed.is_empty() {
            return Outcome::Reply(reject_reply(
                RejectReason::NoEndpoints,
                "no model server endpoints are known to the gateway",
            ));
        }
        let pick = allowed.get(self.next_blind % allowed.len()).copied().unwrap_or_default();
        self.next_blind = self.next_blind.wrapping_add(1);
        let destination = String::from(pick);
        Outcome::FailOpen {
            reason,
            route: Some(Route {
                header_value: destination.clone(),
                destination,
                prefill: None,
                rewritten_model: None,
                body: None,
                client_model: None,
                estimated_tokens,
                prompt_tokens: 0,
                prefix_hashes: Vec::new(),
                streaming: false,
            }),
        }
    }
}

/// What a route tells the response path about the response to come.
#[derive(Clone, Copy)]
struct ResponseExpected {
    streaming: bool,
    prompt_tokens: u64,
}

/// A request body as the picker reads it: the bytes, what parsing found, and whether the body is JSON
/// (only a JSON body can have its model rewritten).
#[derive(Clone, Debug)]
pub struct ReadBody<'b> {
    pub body: Option<&'b [u8]>,
    pub parsed: Option<InferenceRequest<'b>>,
    pub json_body: bool,
}

/// Reads a request body the way every decision does: 413 over `limits.maxBodyBytes`, 415 for an encoded
/// body, 400 (naming the field) for a JSON body the API refuses; a body the configured passthrough
/// parser claims, or one of another type that is not JSON, is not parsed.
pub fn read_body<'b>(
    config: &GatewayConfig,
    info: &RequestInfo<'_>,
    body: Option<&'b [u8]>,
) -> Result<ReadBody<'b>, Reply> {
    if body.is_some_and(|b| b.len() > config.limits.max_body_bytes) {
        return Err(body_too_large(config.limits.max_body_bytes));
    }
    // A body the configured passthrough parser claims is not read at all (llm-d's passthrough-parser).
    let read = config.parsers.reads_body(info.path);
    let body_read = body.filter(|_| read);
    if let Some(reply) = body_read.and_then(|_| unsupported_encoding(info.content_encoding)) {
        return Err(reply);
    }
    // Only a JSON body can have its model rewritten; any other body is routed as it came.
    let mut json_body = read;
    let parsed: Option<InferenceRequest<'b>> = match (body_read, BodyFormat::of(info.content_type)) {
        (Some(b), BodyFormat::Json) => match parse_request(info.path, b) {
            Ok(r) => Some(r),
            Err(e) => {
                return Err(Reply {
                    status: 400,
                    body: OpenAiError::invalid_request(&e).body(),
                    reason: "bad_request",
                })
            }
        },
        (Some(b), BodyFormat::Form { boundary }) => {
            json_body = false;
            parse_form(b, boundary)
        }
        (Some(b), BodyFormat::Other) => {
            let r = parse_request(info.path, b).ok();
            json_body = r.is_some();
            r
        }
        (None, _) => None,
    };
    Ok(ReadBody { body, parsed, json_body })
}

/// Puts what the request asked for on a route: the rewrite (the model, the rewritten body, the client's
/// model), whether the response is streamed and the prompt tokens awaiting its first token.
fn with_rewrite(
    outcome: Outcome,
    model: Option<String>,
    body: Option<(Vec<u8>, String)>,
    response: ResponseExpected,
) -> Outcome {
    let ResponseExpected { streaming, prompt_tokens } = response;
    let (body, client_model) = match body {
        Some((b, m)) => (Some(b), Some(m)),
        None => (None, None),
    };
    match outcome {
        Outcome::Route(mut r) => {
            (r.rewritten_model, r.body, r.client_model) = (model, body, client_model);
            (r.streaming, r.prompt_tokens) = (streaming, prompt_tokens);
            Outcome::Route(r)
        }
        Outcome::FailOpen { reason, route: Some(mut r) } => {
            (r.rewritten_model, r.body, r.client_model) = (model, body, client_model);
            (r.streaming, r.prompt_tokens) = (streaming, prompt_tokens);
            Outcome::FailOpen { reason, route: Some(r) }
        }
        other => other,
    }
}

/// The 415 answer to a body sent with a `content-encoding` other than `identity` (a list such as
/// `gzip, identity` counts as compressed). The gateway does not decode bodies: it would have to inflate
/// them within the body limit only to route them, and the model servers behind it (vLLM, SGLang) do not
/// decode compressed requests either, so the client learns here, plainly, what to change.
fn unsupported_encoding(encoding: Option<&str>) -> Option<Reply> {
    let encoding = encoding?.trim();
    let identity =
        encoding.split(',').map(str::trim).all(|e| e.is_empty() || e.eq_ignore_ascii_case("identity"));
    if identity {
        return None;
    }
    let err = OpenAiError::unsupported_encoding(encoding);
    Some(Reply { status: err.status, body: err.body(), reason: "unsupported_media_type" })
}

/// The 413 answer to a body over `limit` bytes.
pub fn body_too_large(limit: usize) -> Reply {
    Reply { status: 413, body: OpenAiError::body_too_large(limit).body(), reason: "body_too_large" }
}

/// The seed of one request's decision (the `seed` passed to [`EndpointPicker::decide`]).
///
/// A pure function of the request id, with no per-process state mixed in: every gateway replica, every
/// proxy worker and both products (the Wasm filter and the ext_proc shim) draw the same coins for the
/// same request on the same snapshot, and a replayed request is decided the same way. Envoy sets
/// `x-request-id` on every request it proxies, so the id is normally present and unique; callers that
/// can meet an empty id should vary the seed themselves rather than give every such request one draw.
pub fn request_seed(request_id: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(request_id.as_bytes(), 0)
}

fn in_subset(address: &str, hint: &[&str]) -> bool {
    let ip = address.rsplit_once(':').map_or(address, |(ip, _)| ip);
    hint.iter().flat_map(|h| h.split(',')).map(str::trim).any(|h| h == address || h == ip)
}

/// Flow control's answer to a request it refused or let expire (llm-d's status for each).
pub fn flow_reply(outcome: QueueOutcome) -> Reply {
    let (status, message, reason) = match outcome {
        QueueOutcome::RejectedNoEndpoints => (
            503,
            "the gateway's request queue is full and the pool has no endpoints",
            "flow_control_no_endpoints",
        ),
        QueueOutcome::EvictedNoEndpoints => (
            503,
            "the request timed out in the gateway's queue and the pool has no endpoints",
            "flow_control_ttl_no_endpoints",
        ),
        QueueOutcome::EvictedTtl => {
            (429, "the request timed out in the gateway's queue (the pool is saturated)", "flow_control_ttl")
        }
        QueueOutcome::EvictedContextCancelled => {
            (503, "the client disconnected while the request waited", "flow_control_cancelled")
        }
        QueueOutcome::RejectedCapacity | QueueOutcome::Dispatched => {
            (429, "the gateway's request queue is full (the pool is saturated)", "flow_control_capacity")
        }
    };
    let err = match status {
        429 => OpenAiError::too_many_requests(message, Some(reason)),
        _ => OpenAiError::service_unavailable(message, Some(reason)),
    };
    Reply { status: err.status, body: err.body(), reason }
}

/// The answer to a sheddable request in flight that eviction ended to make room for a higher band
/// (429, as llm-d).
pub fn evicted_reply() -> Reply {
    let reason = "flow_control_evicted";
    let err = OpenAiError::too_many_requests(
        "the request was evicted to make room for higher-priority requests (it is sheddable)",
        Some(reason),
    );
    Reply { status: err.status, body: err.body(), reason }
}

/// The answer to a request still waiting when its queue goes away (the proxy stops or reloads the
/// filter): 503, as llm-d answers requests its flow controller drops while shutting down.
pub fn shutdown_reply() -> Reply {
    let reason = "flow_control_shutting_down";
    let err = OpenAiError::service_unavailable(
        "the gateway's request queue is shutting down (the proxy is reloading or stopping)",
        Some(reason),
    );
    Reply { status: err.status, body: err.body(), reason }
}

fn reject_reply(reason: RejectReason, message: &str) -> Reply {
    let err = match reason.status() {
        429 => OpenAiError::too_many_requests(message, Some(reason.as_str())),
        _ => OpenAiError::service_unavailable(message, Some(reason.as_str())),
    };
    Reply { status: err.status, body: err.body(), reason: reason.as_str() }
}

#[cfg(test)]
mod tests;
