//! The HTTP context: translates the proxy's callbacks into events of the core's request lifecycle
//! ([`Exchange`]) and its steps into host calls. Decisions are the worker's; what to strip, set, answer,
//! hold and count is the exchange's. What stays here is how Envoy's Proxy-Wasm host works: a paused
//! response body keeps growing in the proxy's buffer, so only its new bytes are read each time.

use super::abi;
use super::headers;
use super::host_impl::ProxyHost;
use super::waiting::{SharedState, StreamState, Waiting};
use crate::header_map::HeaderMap;
use crate::host::Host;
use crate::stats::{self, Stats};
use crate::worker::{Admitted, Worker};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::config::pools::PoolChoice;
use scheduler_core::endpoint_picker::{read_body, Admission, Outcome, ReadBody, Reply};
use scheduler_core::exchange::headers::{CONTENT_LENGTH, CONTENT_TYPE, STATUS};
use scheduler_core::exchange::{
    BodyOut, Decided, ExchangeSettings, FlowEnd, Forward, HeaderLookup, RequestStep, ResponseBodyStep,
    ResponseHead,
};
use std::cell::RefCell;
use std::rc::Rc;

/// One pool's worker and its waiting streams.
pub type Member = (Rc<RefCell<Worker>>, Rc<RefCell<Waiting>>);

/// A picker serving several pools (`pools`): what a stream needs to choose its pool. The stream reads
/// the body with the top-level configuration (routing, limits and `bbr` are top-level only), promotes
/// the `bbr` headers, then asks the core which pool serves it (by the route's cluster, Envoy's
/// `xds.cluster_name`, and the model) and goes on with that pool's worker as a single-pool stream does.
pub struct PoolSet {
    config: GatewayConfig,
    /// What the exchange reads before a pool is chosen: the top level's routing and limits, and every
    /// pool's scheduling headers (kept in the request's facts for whichever pool decides).
    settings: Rc<ExchangeSettings>,
    members: Vec<Member>,
    /// Answers given before a pool was chosen (400/413/415, a model no pool serves), unlabelled.
    stats: RefCell<Stats>,
}

impl PoolSet {
    pub fn new(config: GatewayConfig, members: Vec<Member>) -> PoolSet {
        let mut settings = ExchangeSettings::new(&config);
        for (w, _) in &members {
            if let Ok(w) = w.try_borrow() {
                settings.scheduling_headers.extend(w.exchange_settings().scheduling_headers.iter().cloned());
            }
        }
        settings.scheduling_headers.sort();
        settings.scheduling_headers.dedup();
        PoolSet { config, settings: Rc::new(settings), members, stats: RefCell::new(Stats::default()) }
    }

    fn count_reply(&self, host: &dyn Host, reply: &Reply) {
        if let Ok(mut s) = self.stats.try_borrow_mut() {
            s.count(host, stats::DECISIONS_REPLIED);
            s.reply(host, reply.status);
        }
    }
}

/// The upstream cluster the route chose, as Envoy reports it when asked (`xds.cluster_name`).
fn route_cluster() -> Option<String> {
    match abi::get_property(&["xds", "cluster_name"]) {
        Ok(Some(b)) => String::from_utf8(b).ok().filter(|c| !c.is_empty()),
        Ok(None) => None,
        Err(s) => {
            log::debug!("xds.cluster_name not readable ({s}): choosing the pool by model");
            None
        }
    }
}

pub struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    /// With `pools`: the pools to choose from, until `worker` is chosen.
    choice: Option<Rc<PoolSet>>,
    /// The worker's waiting streams (flow control), shared with the root context.
    waiting: Option<Rc<RefCell<Waiting>>>,
    host: Rc<ProxyHost>,
    context_id: u32,
    /// The exchange and the health ticket, shared with the root while the request waits.
    state: SharedState,
    /// The worker's settings, from the request headers on.
    settings: Rc<ExchangeSettings>,
    /// Response body bytes the exchange already has while the body is held (the proxy's buffer then
    /// holds them too, followed by the new ones).
    response_seen: usize,
}

/// Host calls that change the request or response: a refusal is logged, never fatal.
fn log_err<E: std::fmt::Display>(what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        log::warn!("{what} not changed: {e}");
    }
}

impl Stream {
    pub fn new(
        worker: Option<Rc<RefCell<Worker>>>,
        waiting: Option<Rc<RefCell<Waiting>>>,
        host: Rc<ProxyHost>,
        context_id: u32,
    ) -> Stream {
        let settings = match &worker {
            Some(w) => w.try_borrow().map(|w| w.exchange_settings()).unwrap_or_default(),
            None => Rc::default(),
        };
        let state = Rc::new(RefCell::new(StreamState::default()));
        Stream { worker, choice: None, waiting, host, context_id, state, settings, response_seen: 0 }
    }

    /// A stream of a picker serving several pools: its pool is chosen when it decides.
    pub fn among(set: Rc<PoolSet>, host: Rc<ProxyHost>, context_id: u32) -> Stream {
        let settings = Rc::clone(&set.settings);
        let state = Rc::new(RefCell::new(StreamState::default()));
        Stream {
            worker: None,
            choice: Some(set),
            waiting: None,
            host,
            context_id,
            state,
            settings,
            response_seen: 0,
        }
    }

    /// Carries out a request step on the stream's worker; before a pool is chosen, on the pool set.
    fn run_step(&mut self, st: &mut StreamState, step: RequestStep, body_size: usize) -> Action {
        if let (None, Some(set)) = (&self.worker, self.choice.clone()) {
            return match step {
                RequestStep::Wait => Action::Pause,
                RequestStep::Pass => Action::Continue,
                RequestStep::Reply(reply) => {
                    set.count_reply(&*self.host, &reply);
                    reply_locally(&reply)
                }
                RequestStep::Decide { with_body } => self.choose(&set, st, with_body.then_some(body_size)),
            };
        }
        let Some(worker) = self.worker() else { return Action::Continue };
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        self.request_step(&mut w, st, step, body_size)
    }

    /// Reads the buffered request body (`None`: decide from the headers alone).
    fn request_body(body_size: Option<usize>) -> Option<Vec<u8>> {
        match body_size.map(|n| abi::get_buffer(BufferType::HttpRequestBody, 0, n)) {
            Some(Ok(b)) => Some(b),
            Some(Err(s)) => {
                log::warn!("request body not readable ({s}): deciding from the headers alone");
                None
            }
            None => None,
        }
    }

    /// Chooses the request's pool (see `scheduler_core::config::pools`) and decides on it; or passes
    /// the request (no pool's business), or answers it (a body refused, a model no pool serves).
    fn choose(&mut self, set: &PoolSet, st: &mut StreamState, body_size: Option<usize>) -> Action {
        let body = Stream::request_body(body_size);
        let facts = st.exchange.facts().clone();
        let subset = facts.subset_refs();
        let info = facts.info(subset.as_deref());
        let mut read = read_body(&set.config, &info, body.as_deref());
        if let (Some(bbr), Ok(r)) = (&set.config.bbr, &read) {
            match bbr.headers(r, info.content_type) {
                // Set before the cluster is read: each change clears Envoy's route cache.
                Ok(headers) => {
                    for (name, value) in &headers {
                        log_err(
                            name,
                            abi::replace_header(MapType::HttpRequestHeaders, name, value.as_bytes()),
                        );
                    }
                }
                Err(reply) => read = Err(reply),
            }
        }
        let read = match read {
            Ok(read) => read,
            Err(reply) => return self.answer(set, st, reply),
        };
        let cluster = route_cluster();
        let model = read.parsed.as_ref().map(|p| p.model.as_ref());
        let i = match set.config.choose_pool(cluster.as_deref(), model) {
            PoolChoice::Pool(i) => i,
            PoolChoice::Pass => {
                log::debug!(
                    "request {:?}: cluster {cluster:?} is no pool's, passed through",
                    facts.request_id
                );
                return Action::Continue;
            }
            PoolChoice::Reply(reply) => return self.answer(set, st, reply),
        };
        let Some((worker, waiting)) = set.members.get(i) else { return Action::Continue };
        self.worker = Some(Rc::clone(worker));
        self.waiting = Some(Rc::clone(waiting));
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        self.settings = w.exchange_settings();
        // The read stands for the pool's own unless its parsers read this path's bodies otherwise.
        let read = if w.config().parsers.reads_body(info.path) == set.config.parsers.reads_body(info.path) {
            Ok(read)
        } else {
            read_body(w.config(), &info, body.as_deref())
        };
        self.decide_with(&mut w, st, body_size, body.as_deref(), Some(read))
    }

    /// Answers a request before any pool decided it.
    fn answer(&mut self, set: &PoolSet, st: &mut StreamState, reply: Reply) -> Action {
        set.count_reply(&*self.host, &reply);
        match st.exchange.on_outcome(&self.settings, Outcome::Reply(reply)) {
            Decided::Reply(reply) => reply_locally(&reply),
            Decided::Forward(_) => Action::Continue,
        }
    }

    fn worker(&self) -> Option<Rc<RefCell<Worker>>> {
        self.worker.clone()
    }

    /// Carries out a request step: wait, decide, reply or pass.
    fn request_step(
        &mut self,
        w: &mut Worker,
        st: &mut StreamState,
        step: RequestStep,
        body_size: usize,
    ) -> Action {
        match step {
            RequestStep::Wait => Action::Pause,
            RequestStep::Pass => Action::Continue,
            RequestStep::Reply(reply) => {
                w.count_reply(&*self.host, &reply);
                reply_locally(&reply)
            }
            RequestStep::Decide { with_body } => self.decide(w, st, with_body.then_some(body_size)),
        }
    }

    /// Admits the request on the buffered body (`None`: from the headers alone): applies the decision,
    /// or keeps the stream paused in flow control's queue, for the root to resume.
    fn decide(&mut self, w: &mut Worker, st: &mut StreamState, body_size: Option<usize>) -> Action {
        let body = Stream::request_body(body_size);
        self.decide_with(w, st, body_size, body.as_deref(), None)
    }

    /// [`Stream::decide`] on `body`, already read (and routed on) when `read` is given.
    fn decide_with(
        &mut self,
        w: &mut Worker,
        st: &mut StreamState,
        body_size: Option<usize>,
        body: Option<&[u8]>,
        read: Option<Result<ReadBody<'_>, Reply>>,
    ) -> Action {
        let admitted = {
            let facts = st.exchange.facts();
            let subset = facts.subset_refs();
            let info = facts.info(subset.as_deref());
            let read = match read {
                Some(read) => Some(read),
                None => {
                    let mut read = w.config().bbr.as_ref().map(|_| read_body(w.config(), &info, body));
                    if let (Some(bbr), Some(Ok(r))) = (&w.config().bbr, &read) {
                        // Body-based routing in the picker's own filter, on the same read (see `bbr.rs`).
                        match bbr.headers(r, info.content_type) {
                            Ok(set) => {
                                for (name, value) in &set {
                                    log_err(
                                        name,
                                        abi::replace_header(
                                            MapType::HttpRequestHeaders,
                                            name,
                                            value.as_bytes(),
                                        ),
                                    );
                                }
                            }
                            Err(reply) => read = Some(Err(reply)),
                        }
                    }
                    read
                }
            };
            match read {
                // Decided on that same read; with flow control on, a request that may wait is admitted
                // through the queue, which reads the body again when it decides.
                Some(read) if read.is_err() || !w.flow_enabled() => {
                    let (outcome, routed, health) = w.decide_read(&*self.host, &info, read);
                    Admitted::Decided { outcome, routed, health, lease: None }
                }
                _ => w.admit(&*self.host, &info, body),
            }
        };
        let (outcome, health, lease) = match admitted {
            Admitted::Queued(ticket) => {
                st.exchange.on_admission(&self.settings, Admission::Queued(ticket));
                match &self.waiting {
                    Some(waiting) => match waiting.try_borrow_mut() {
                        Ok(mut waiting) => {
                            let now_ms = self.host.now_ms();
                            waiting.queued(ticket, self.context_id, Rc::clone(&self.state), now_ms);
                            log::debug!("request {:?} waits in the queue", st.exchange.facts().request_id);
                            return Action::Pause;
                        }
                        Err(_) => log::warn!("waiting list busy: the request is withdrawn from the queue"),
                    },
                    None => log::warn!("no waiting list: the request is withdrawn from the queue"),
                }
                // Never left paused with nobody to resume it: withdrawn and answered.
                if let Some(FlowEnd::Cancel(t)) = st.exchange.flow_at_end() {
                    w.cancel(&*self.host, t, 0);
                }
                let reply = scheduler_core::endpoint_picker::shutdown_reply();
                return reply_locally(&reply);
            }
            Admitted::Decided { outcome, routed: _, health, lease } => (outcome, health, lease),
        };
        st.health = health;
        let action = match st.exchange.on_outcome(&self.settings, outcome) {
            Decided::Reply(reply) => reply_locally(&reply),
            Decided::Forward(forward) => {
                log::debug!(
                    "request {:?} routed to {:?}",
                    st.exchange.facts().request_id,
                    forward.destination
                );
                apply_forward(&forward, body_size);
                Action::Continue
            }
        };
        st.exchange.on_lease(lease);
        if let (Some(lease), Some(waiting)) = (lease, &self.waiting) {
            if let Ok(mut waiting) = waiting.try_borrow_mut() {
                waiting.leased(lease, self.context_id);
            }
        }
        action
    }

    fn finish(&mut self) {
        let (flow_end, ticket, in_flight) = match self.state.try_borrow_mut() {
            Ok(mut st) => (st.exchange.flow_at_end(), st.health.take(), st.exchange.on_stream_end()),
            Err(_) => {
                log::warn!("stream state busy at the stream's end: nothing released");
                return;
            }
        };
        if flow_end.is_none() && ticket.is_none() && in_flight.is_none() {
            return;
        }
        let Some(worker) = &self.worker else { return };
        let now_ms = self.host.now_ms();
        let waited = match (flow_end, &self.waiting) {
            (Some(FlowEnd::Cancel(t)), Some(waiting)) => {
                waiting.try_borrow_mut().ok().and_then(|mut waiting| waiting.forget(t, now_ms))
            }
            (Some(FlowEnd::Finished(l)), Some(waiting)) => {
                if let Ok(mut waiting) = waiting.try_borrow_mut() {
                    waiting.lease_ended(l);
                }
                None
            }
            _ => None,
        };
        match worker.try_borrow_mut() {
            Ok(mut w) => {
                match flow_end {
                    Some(FlowEnd::Cancel(t)) => {
                        log::debug!("client left while waiting: its place in the queue is freed");
                        w.cancel(&*self.host, t, waited.unwrap_or(0));
                    }
                    Some(FlowEnd::Finished(l)) => w.flow_finished(&*self.host, l),
                    None => {}
                }
                if let Some(t) = ticket {
                    w.first_byte(t, false);
                }
                if let Some(f) = &in_flight {
                    w.finish(&*self.host, f);
                    // A place freed: the root dispatches at once, in an event of its own.
                    w.wake(&*self.host);
                }
            }
            Err(_) => log::warn!("in-flight count for {:?} not released (worker busy)", in_flight),
        }
    }

    /// Applies a response body step; `body_size` is what the proxy holds now, `start` where this chunk
    /// began in it.
    fn response_step(&mut self, step: ResponseBodyStep, start: usize, body_size: usize) -> Action {
        if let Some(u) = step.usage {
            if let Some(Ok(mut w)) = self.worker.as_ref().map(|w| w.try_borrow_mut()) {
                w.stats().usage(&*self.host, u);
            }
        }
        let buffer = BufferType::HttpResponseBody;
        match step.out {
            BodyOut::Pass => {}
            BodyOut::Replace(bytes) => {
                let len = body_size.saturating_sub(start);
                log_err("response body", abi::set_buffer(buffer, start, len, &bytes));
            }
            BodyOut::Hold => {
                self.response_seen = body_size;
                return Action::Pause;
            }
            BodyOut::Release { body, changed } => {
                if changed {
                    log_err("response body", abi::set_buffer(buffer, 0, body_size, &body));
                }
            }
        }
        self.response_seen = 0;
        Action::Continue
    }
}

/// Sets the routing headers (and the new body, if the decision changed it) of the current or effective
/// stream. Before continuing it: host calls on the request are refused once it continued.
pub fn apply_forward(forward: &Forward, body_size: Option<usize>) {
    for (name, value) in &forward.set {
        log_err(name, abi::replace_header(MapType::HttpRequestHeaders, name, value.as_bytes()));
    }
    if let (Some(new), Some(size)) = (&forward.body, body_size) {
        log_err("request body", abi::set_buffer(BufferType::HttpRequestBody, 0, size, new));
    }
}

/// Sends `reply` as the answer; the request goes no further.
pub fn reply_locally(reply: &Reply) -> Action {
    log::debug!("answered {} ({})", reply.status, reply.reason);
    let headers: [(&str, &[u8]); 1] = [(CONTENT_TYPE, b"application/json")];
    if let Err(e) = abi::send_local_response(u32::from(reply.status), &headers, reply.body.as_bytes()) {
        log::warn!("local reply {} not sent: {e}", reply.status);
    }
    Action::Pause
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        // on_log normally ran first; this covers a host that skips it.
        self.finish();
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // With several pools, the first one's worker names requests that come without an id (and has
        // the top-level `bbr` section, as every pool does).
        let first = self.choice.as_ref().and_then(|set| set.members.first()).map(|(w, _)| Rc::clone(w));
        let Some(worker) = self.worker().or(first) else { return Action::Continue };
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        // One read of the whole map (one copy into the VM rather than one per header).
        let map = headers::read(MapType::HttpRequestHeaders)
            .map_err(|e| log::warn!("request headers not readable, removing every routing header: {e}"))
            .ok();
        let host = Rc::clone(&self.host);
        let state = Rc::clone(&self.state);
        let Ok(mut st) = state.try_borrow_mut() else { return Action::Continue };
        let mut new_id = || w.new_request_id(&*host);
        let step = st.exchange.on_request_headers(
            &self.settings,
            map.as_ref().map(|m| m as &dyn HeaderLookup),
            None,
            end_of_stream,
            &mut new_id,
        );
        for name in &step.remove {
            log_err(name, abi::remove_header(MapType::HttpRequestHeaders, name));
        }
        // A picker that also routes on the body (`bbr` section) owns those headers: a client's copies go
        // (unreadable headers: all of them), as the `bbr` role removes them.
        if let Some(bbr) = &w.config().bbr {
            for name in bbr.strip() {
                if map.as_ref().is_none_or(|m| m.get(name).is_some()) {
                    log_err(name, abi::remove_header(MapType::HttpRequestHeaders, name));
                }
            }
        }
        for (name, value) in &step.set {
            log_err(name, abi::replace_header(MapType::HttpRequestHeaders, name, value.as_bytes()));
        }
        drop(w);
        // Waiting for the body: with `allow_on_headers_stop_iteration` Envoy keeps feeding it to us.
        self.run_step(&mut st, step.next, 0)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.worker.is_none() && self.choice.is_none() {
            return Action::Continue;
        }
        let state = Rc::clone(&self.state);
        let Ok(mut st) = state.try_borrow_mut() else { return Action::Continue };
        if st.exchange.waiting().is_some() {
            // Already complete and queued (a late empty chunk): stay paused.
            return Action::Pause;
        }
        let step = st.exchange.on_request_body(&self.settings, body_size, end_of_stream);
        self.run_step(&mut st, step, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.worker.is_none() && self.choice.is_none() {
            return Action::Continue;
        }
        let state = Rc::clone(&self.state);
        let Ok(mut st) = state.try_borrow_mut() else { return Action::Continue };
        if st.exchange.waiting().is_some() {
            return Action::Pause;
        }
        let step = st.exchange.on_request_trailers();
        let size = st.exchange.request_body_len();
        self.run_step(&mut st, step, size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let Ok(mut st) = state.try_borrow_mut() else { return Action::Continue };
        if !st.exchange.follows_response() {
            return Action::Continue;
        }
        let Some(worker) = self.worker() else { return Action::Continue };
        let Ok(mut w) = worker.try_borrow_mut() else { return Action::Continue };
        let ticket = st.health.take();
        let upstream = match st.exchange.wants_upstream_address(&self.settings) {
            true => abi::get_property(&["upstream", "address"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok()),
            false => None,
        };
        let map = headers::read(MapType::HttpResponseHeaders).unwrap_or_else(|e| {
            log::debug!("response headers not readable: {e}");
            HeaderMap::default()
        });
        let status = map.get_str(STATUS).and_then(|s| s.parse::<u16>().ok());
        let content_type = map.get_str(CONTENT_TYPE);
        let head = ResponseHead {
            status,
            content_type: content_type.as_deref(),
            upstream: upstream.as_deref(),
            end_of_stream,
        };
        let step = st.exchange.on_response_headers(&self.settings, &head);
        if let Some(t) = ticket {
            let alive = step.moved.is_none() && step.answered.as_ref().is_some_and(|(_, s)| *s < 500);
            w.first_byte(t, alive);
        }
        for (name, value) in step.served.iter().chain(&step.session_token) {
            log_err(name, abi::replace_header(MapType::HttpResponseHeaders, name, value.as_bytes()));
        }
        if let Some(m) = &step.moved {
            w.moved(&*self.host, m);
            // Envoy retried elsewhere: the first attempt failed before any response.
            w.answered(&*self.host, &m.from, 503);
        }
        if let Some((address, status)) = &step.answered {
            w.answered(&*self.host, address, *status);
        }
        // A response not streamed (or an error) comes whole: its headers mark the first token.
        if let (Some(prompt_tokens), Some(address)) = (step.first_token, st.exchange.counted_on()) {
            w.first_token(address, prompt_tokens);
        }
        if step.body_changes_length {
            // The headers leave before the body does: no length rather than a wrong one.
            log_err(CONTENT_LENGTH, abi::remove_header(MapType::HttpResponseHeaders, CONTENT_LENGTH));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let Ok(mut st) = state.try_borrow_mut() else { return Action::Continue };
        // A streamed response's first chunk is its first token, whether or not its bytes are read.
        if let Some(first) = st.exchange.on_response_data() {
            match self.worker.as_ref().map(|w| w.try_borrow_mut()) {
                Some(Ok(mut w)) => w.first_token(first.address, first.prompt_tokens),
                Some(Err(_)) => log::warn!("first token at {} not counted (worker busy)", first.address),
                None => {}
            }
        }
        if !st.exchange.reads_response_body() {
            return Action::Continue;
        }
        let start = self.response_seen.min(body_size);
        let len = body_size.saturating_sub(start);
        // The end of a body often comes as an empty last chunk: nothing to copy out of the proxy.
        let chunk =
            if len == 0 { Ok(Vec::new()) } else { abi::get_buffer(BufferType::HttpResponseBody, start, len) };
        let step = match chunk {
            Ok(chunk) => st.exchange.on_response_body(&self.settings, &chunk, end_of_stream),
            Err(s) => {
                log::debug!("response body not readable: {s}");
                st.exchange.response_body_unreadable()
            }
        };
        drop(st);
        self.response_step(step, start, body_size)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let step = match self.state.try_borrow_mut() {
            Ok(mut st) => st.exchange.on_response_trailers(),
            Err(_) => return Action::Continue,
        };
        if let BodyOut::Replace(rest) = &step.out {
            // The proxy offers no way to add body bytes with the trailers.
            log::debug!("{} bytes of an unfinished event line dropped at the trailers", rest.len());
        }
        let usage_only = ResponseBodyStep { out: BodyOut::Pass, usage: step.usage };
        self.response_step(usage_only, 0, 0)
    }

    fn on_log(&mut self) {
        self.finish();
    }
}
