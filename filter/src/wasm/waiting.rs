//! Streams paused in flow control's queue, and streams in flight under an eviction lease: what the root
//! context needs to act on a stream it does not own. Proxy-Wasm lets any callback of the VM make
//! another context of the same VM the *effective* one (`proxy_set_effective_context`): host calls then
//! read and change that stream's headers and buffered body, answer it, or continue it (applied once
//! the callback returned). The SDK offers no way to reach another context's object, so each stream
//! shares its lifecycle state ([`StreamState`]) with this registry.
//!
//! Invariants: a stream is listed here only while it is paused waiting (or in flight with a lease);
//! it removes itself at its end (`on_log` / `on_done`, see `Stream::finish`), so the root never
//! targets a context that is gone (Envoy keeps a destroyed stream's context until the next event-loop
//! turn, and continuing it then would be undefined). Every ticket ends exactly once: dispatched or
//! answered from the root, or cancelled by the stream's end, or answered at VM end.

use super::abi;
use super::host_impl::ProxyHost;
use super::stream::{apply_forward, reply_locally};
use crate::memory::Size;
use crate::worker::Worker;
use proxy_wasm::types::BufferType;
use scheduler_core::endpoint_picker::{shutdown_reply, Outcome, RequestInfo, WaitingRequests};
use scheduler_core::exchange::{Decided, Exchange, ExchangeSettings};
use scheduler_core::flow_control::Ticket;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

/// How often the root looks at the queue while anything waits (dispatch, time-outs): llm-d's
/// dispatch cycle is event-driven with a short poll; 10 ms is well under a model server's step.
pub const FLOW_TICK_MS: u64 = 10;

/// A stream's request lifecycle, shared between its HTTP context and this registry.
#[derive(Default)]
pub struct StreamState {
    pub exchange: Exchange,
    /// The worker waits for this routed request's response headers under this ticket.
    pub health: Option<u64>,
}

pub type SharedState = Rc<RefCell<StreamState>>;

struct Waiter {
    context_id: u32,
    state: SharedState,
    queued_ms: u64,
}

/// One worker VM's waiting streams and leases.
pub struct Waiting {
    waiters: BTreeMap<u64, Waiter>,
    /// Eviction leases of requests in flight → their stream's context.
    leases: BTreeMap<u64, u32>,
    /// The tick period while nothing waits; [`FLOW_TICK_MS`] while something does.
    base_tick_ms: u64,
    fast: bool,
    /// The root context: made effective again after acting on streams, so what the root does next
    /// (a scrape callout, above all) is not attributed to a stream (a stream's callouts die with it).
    root_id: u32,
    /// How many of the root's waiting lists (one per pool) tick fast: the root has one tick, slowed
    /// down only when none of them needs it fast.
    fast_lists: Rc<Cell<usize>>,
}

impl Waiting {
    pub fn new(base_tick_ms: u64, root_id: u32, fast_lists: Rc<Cell<usize>>) -> Waiting {
        Waiting {
            waiters: BTreeMap::new(),
            leases: BTreeMap::new(),
            base_tick_ms,
            fast: false,
            root_id,
            fast_lists,
        }
    }

    /// Ticks fast (true) or at the base period once no other list ticks fast.
    fn tick_fast(&mut self, fast: bool) {
        if self.fast == fast {
            return;
        }
        let others = self.fast_lists.get().saturating_sub(usize::from(self.fast));
        let changed = match (fast, others) {
            (true, 0) => set_tick(FLOW_TICK_MS.min(self.base_tick_ms)),
            (false, 0) => set_tick(self.base_tick_ms),
            _ => true,
        };
        if changed {
            self.fast = fast;
            self.fast_lists.set(if fast { others + 1 } else { others });
        }
    }

    /// Host calls act on the root context again.
    fn back_to_root(&self) {
        if let Err(e) = abi::set_effective_context(self.root_id) {
            log::warn!("root context {} not made effective again: {e}", self.root_id);
        }
    }

    /// Streams paused in the queue and streams in flight under an eviction lease, for the memory
    /// gauges: bounded by flow control's queue and lease caps, which they mirror.
    pub fn sizes(&self, worker: &Worker) -> [Size; 2] {
        let flow = worker.flow_sizes();
        [
            Size::new("waiting_streams", self.waiters.len(), flow.waiting_cap),
            Size::new("waiting_leases", self.leases.len(), flow.leases_cap as u64),
        ]
    }

    /// A stream paused under `ticket`. The root ticks fast from now on, until nothing waits.
    pub fn queued(&mut self, ticket: Ticket, context_id: u32, state: SharedState, now_ms: u64) {
        self.waiters.insert(ticket.0, Waiter { context_id, state, queued_ms: now_ms });
        self.tick_fast(true);
    }

    /// The stream of `ticket` ended while waiting: how long it waited, if it was listed.
    pub fn forget(&mut self, ticket: Ticket, now_ms: u64) -> Option<u64> {
        self.waiters.remove(&ticket.0).map(|w| now_ms.saturating_sub(w.queued_ms))
    }

    pub fn leased(&mut self, lease: Ticket, context_id: u32) {
        self.leases.insert(lease.0, context_id);
    }

    pub fn lease_ended(&mut self, lease: Ticket) {
        self.leases.remove(&lease.0);
    }

    /// Settles what flow control lets go now (on the tick): each dispatched stream gets its routing
    /// headers (and body, if the decision changed it) and is continued; a stream whose time ran out, or
    /// that the decision refused, is answered. Requests in flight that eviction ends are answered too.
    pub fn dispatch(&mut self, worker: &mut Worker, host: &ProxyHost, settings: &ExchangeSettings) {
        if !self.waiters.is_empty() || worker.flow_waiting() {
            let polled = worker.poll(host, &mut Lookup { waiters: &self.waiters });
            for d in polled.settled {
                let Some(waiter) = self.waiters.remove(&d.ticket.0) else {
                    // Not ours any more: give back what the decision counted.
                    release(worker, host, d.routed.as_ref(), d.health, d.lease);
                    continue;
                };
                let applied =
                    match (abi::set_effective_context(waiter.context_id), waiter.state.try_borrow_mut()) {
                        (Ok(()), Ok(mut st)) => {
                            st.health = d.health;
                            let decided = st.exchange.on_outcome(settings, d.outcome);
                            let body_len = st.exchange.request_body_len();
                            match decided {
                                Decided::Reply(reply) => {
                                    log::debug!(
                                        "waiting request answered {} ({}) after {} ms",
                                        reply.status,
                                        reply.reason,
                                        d.waited_ms
                                    );
                                    reply_locally(&reply);
                                }
                                Decided::Forward(forward) => {
                                    log::debug!(
                                        "waiting request dispatched to {:?} after {} ms",
                                        forward.destination,
                                        d.waited_ms
                                    );
                                    apply_forward(&forward, (body_len > 0).then_some(body_len));
                                    if let Err(e) = abi::continue_request() {
                                        log::warn!("waiting request not resumed: {e}");
                                    }
                                }
                            }
                            st.exchange.on_lease(d.lease);
                            if let Some(lease) = d.lease {
                                self.leases.insert(lease.0, waiter.context_id);
                            }
                            true
                        }
                        _ => false,
                    };
                if !applied {
                    log::warn!("waiting stream (context {}) gone before its dispatch", waiter.context_id);
                    release(worker, host, d.routed.as_ref(), d.health, d.lease);
                }
            }
            self.back_to_root();
            for revoked in polled.revoked {
                match self.leases.get(&revoked.lease.0) {
                    Some(&ctx) if abi::set_effective_context(ctx).is_ok() => {
                        log::debug!("request in flight (context {ctx}) evicted for a higher band");
                        reply_locally(&revoked.reply);
                    }
                    _ => worker.flow_finished(host, revoked.lease),
                }
            }
            self.back_to_root();
        }
        if self.fast && self.waiters.is_empty() && !worker.flow_waiting() {
            self.tick_fast(false);
        }
    }

    /// The VM is ending: every waiting stream is answered 503 (its queue is gone), none dropped in
    /// silence, and this worker's queue stops counting for the others.
    pub fn shutdown(&mut self, worker: &mut Worker, host: &ProxyHost, settings: &ExchangeSettings) {
        let now_ms = crate::host::Host::now_ms(host);
        let waiters = std::mem::take(&mut self.waiters);
        if !waiters.is_empty() {
            log::warn!("VM ending: answering {} waiting requests 503", waiters.len());
        }
        for (ticket, w) in waiters {
            worker.cancel(host, Ticket(ticket), now_ms.saturating_sub(w.queued_ms));
            if abi::set_effective_context(w.context_id).is_err() {
                continue;
            }
            if let Ok(mut st) = w.state.try_borrow_mut() {
                if let Decided::Reply(reply) =
                    st.exchange.on_outcome(settings, Outcome::Reply(shutdown_reply()))
                {
                    reply_locally(&reply);
                }
            }
        }
        self.back_to_root();
        self.leases.clear();
        worker.flow_shutdown(host);
    }
}

/// Gives back what a decision counted for a stream that will never carry it.
fn release(
    worker: &mut Worker,
    host: &ProxyHost,
    routed: Option<&scheduler_core::exchange::InFlight>,
    health: Option<u64>,
    lease: Option<Ticket>,
) {
    if let Some(r) = routed {
        worker.finish(host, r);
    }
    if let Some(t) = health {
        worker.first_byte(t, false);
    }
    if let Some(l) = lease {
        worker.flow_finished(host, l);
    }
}

fn set_tick(ms: u64) -> bool {
    match abi::set_tick_period_ms(ms) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("tick period not changed to {ms} ms: {e}");
            false
        }
    }
}

/// The waiting streams as flow control reads them at dispatch: the facts from the stream's exchange,
/// the body from the proxy's buffer (read through the stream's context).
struct Lookup<'a> {
    waiters: &'a BTreeMap<u64, Waiter>,
}

impl WaitingRequests for Lookup<'_> {
    fn with_request(&mut self, ticket: Ticket, f: &mut dyn FnMut(&RequestInfo<'_>, Option<&[u8]>)) -> bool {
        let Some(w) = self.waiters.get(&ticket.0) else { return false };
        if let Err(e) = abi::set_effective_context(w.context_id) {
            log::warn!("waiting stream (context {}) not reachable: {e}", w.context_id);
            return false;
        }
        let Ok(st) = w.state.try_borrow() else { return false };
        let len = st.exchange.request_body_len();
        let body = match len {
            0 => None,
            _ => match abi::get_buffer(BufferType::HttpRequestBody, 0, len) {
                Ok(b) if !b.is_empty() => Some(b),
                Ok(_) => {
                    log::warn!("waiting request's body not readable at dispatch: deciding from the headers");
                    None
                }
                Err(e) => {
                    log::warn!(
                        "waiting request's body not readable at dispatch ({e}): deciding from the headers"
                    );
                    None
                }
            },
        };
        let facts = st.exchange.facts();
        let subset = facts.subset_refs();
        f(&facts.info(subset.as_deref()), body.as_deref());
        true
    }
}
