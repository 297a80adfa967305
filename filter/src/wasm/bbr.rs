//! The body-routing role (`root_id: bbr`): GIE's Body-Based Router inside the proxy. Each HTTP context
//! drives the core's [`BbrExchange`]: client copies of the router's headers are removed, the body is
//! buffered (paused, `allow_on_headers_stop_iteration: true`) up to `limits.maxBodyBytes`, read once by
//! the picker's reader, and the promoted headers are set before the request continues. Envoy clears the
//! route cache on every request-header change a Wasm filter makes (its `Context::replaceHeaderMapValue`
//! calls `clearRouteCache()`), so the router filter matches the route table on the new headers.
//!
//! A picker configured with a `bbr` section does the same inside its own filter, on the body it reads
//! anyway (`stream.rs`), so the body is read once for both.

use super::abi;
use super::headers;
use super::host_impl::ProxyHost;
use super::stream::reply_locally;
use crate::host::Host;
use crate::stats::{self, Stats};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use scheduler_core::bbr::{BbrExchange, BbrStep, BodyRouting};
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::exchange::HeaderLookup;
use std::cell::RefCell;
use std::rc::Rc;

/// What every stream of the role reads, and the VM's counters.
pub struct BbrRole {
    pub config: GatewayConfig,
    pub routing: BodyRouting,
    pub host: Rc<ProxyHost>,
    pub stats: RefCell<Stats>,
}

impl BbrRole {
    fn count(&self, f: impl FnOnce(&mut Stats, &dyn Host)) {
        if let Ok(mut s) = self.stats.try_borrow_mut() {
            f(&mut s, &*self.host);
        }
    }
}

pub struct BbrStream {
    role: Rc<BbrRole>,
    exchange: BbrExchange,
}

impl BbrStream {
    pub fn new(role: Rc<BbrRole>) -> BbrStream {
        BbrStream { role, exchange: BbrExchange::new() }
    }

    fn step(&mut self, step: BbrStep, body_size: usize) -> Action {
        match step {
            BbrStep::Wait => Action::Pause,
            BbrStep::Pass => Action::Continue,
            BbrStep::Reply(reply) => {
                self.role.count(|s, h| s.reply(h, reply.status));
                reply_locally(&reply)
            }
            BbrStep::Route { with_body } => {
                let body = match with_body.then(|| abi::get_buffer(BufferType::HttpRequestBody, 0, body_size))
                {
                    Some(Ok(b)) => Some(b),
                    Some(Err(s)) => {
                        // Nothing to route on: the route table sees no model header.
                        log::warn!("request body not readable ({s}): no header promoted");
                        return Action::Continue;
                    }
                    None => None,
                };
                let role = &self.role;
                match role.routing.route(&role.config, self.exchange.facts(), body.as_deref()) {
                    Ok(set) => {
                        let counter =
                            if set.is_empty() { stats::BBR_NOTHING_PROMOTED } else { stats::BBR_PROMOTED };
                        role.count(|s, h| s.count(h, counter));
                        for (name, value) in &set {
                            // Each change clears Envoy's route cache: the route is chosen on these.
                            if let Err(e) =
                                abi::replace_header(MapType::HttpRequestHeaders, name, value.as_bytes())
                            {
                                log::warn!("{name} not set: {e}");
                            }
                        }
                        Action::Continue
                    }
                    Err(reply) => {
                        role.count(|s, h| s.reply(h, reply.status));
                        reply_locally(&reply)
                    }
                }
            }
        }
    }
}

impl Context for BbrStream {}

impl HttpContext for BbrStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let map = headers::read(MapType::HttpRequestHeaders)
            .map_err(|e| log::warn!("request headers not readable, removing every body-routing header: {e}"))
            .ok();
        let head = self.exchange.on_request_headers(
            &self.role.routing,
            map.as_ref().map(|m| m as &dyn HeaderLookup),
            end_of_stream,
        );
        for name in &head.remove {
            if let Err(e) = abi::remove_header(MapType::HttpRequestHeaders, name) {
                log::warn!("{name} not removed: {e}");
            }
        }
        self.step(head.next, 0)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let step =
            self.exchange.on_request_body(self.role.config.limits.max_body_bytes, body_size, end_of_stream);
        self.step(step, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let step = self.exchange.on_request_trailers();
        let size = self.exchange.request_body_len();
        self.step(step, size)
    }
}
