//! Scraping each statically configured endpoint's `/metrics` through the proxy, and folding the answers
//! into the working snapshot: a good scrape replaces the endpoint's metrics, a failed one (error status,
//! reset, timeout, garbage) bumps `consecutive_scrape_failures` and lets the old metrics age into stale.

use super::CallResponse;
use crate::host::{Host, HttpGet};
use crate::stats::{self, Stats};
use scheduler_core::config::gateway::CollectorConfig;
use scheduler_core::metrics_text::{read_scrape, ScrapeFailure};
use scheduler_core::model::{Endpoint, EndpointState, PoolSnapshot};
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

#[derive(Debug)]
pub struct Scraper {
    pool: PoolSnapshot,
    /// Callout token → (endpoint index, dispatch time).
    pending: BTreeMap<u32, (usize, u64)>,
    /// Something changed since the last publication.
    dirty: bool,
    /// A dispatch failure is logged once, not every tick.
    dispatch_warned: bool,
    /// Endpoints whose pages lacked a core gauge, logged once each (with their engine).
    warned_missing: std::collections::BTreeSet<String>,
}

impl Scraper {
    pub fn new(pool: &str, endpoints: &[Endpoint]) -> Scraper {
        let snapshot = PoolSnapshot {
            pool: String::from(pool),
            endpoints: endpoints.iter().cloned().map(EndpointState::new).collect(),
            ..PoolSnapshot::default()
        };
        Scraper {
            pool: snapshot,
            pending: BTreeMap::new(),
            dirty: false,
            dispatch_warned: false,
            warned_missing: std::collections::BTreeSet::new(),
        }
    }

    pub fn snapshot_mut(&mut self) -> &mut PoolSnapshot {
        &mut self.pool
    }

    pub fn take_dirty(&mut self) -> bool {
        core::mem::take(&mut self.dirty)
    }

    /// No scrape is waiting for an answer.
    pub fn idle(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn owns(&self, token: u32) -> bool {
        self.pending.contains_key(&token)
    }

    /// Starts a scrape of every endpoint that has none in flight.
    pub fn dispatch(&mut self, host: &dyn Host, cfg: &CollectorConfig, stats: &mut Stats) {
        let now = host.now_ms();
        let busy: Vec<usize> = self.pending.values().map(|(i, _)| *i).collect();
        for (i, e) in self.pool.endpoints.iter_mut().enumerate() {
            if busy.contains(&i) {
                continue;
            }
            let address = e.endpoint.address.as_str();
            let headers = [(cfg.host_header.as_str(), address)];
            let request = HttpGet {
                cluster: &cfg.cluster,
                authority: address,
                path: &cfg.metrics_path,
                headers: &headers,
                timeout_ms: cfg.timeout_ms,
            };
            match host.http_get(&request) {
                Ok(token) => {
                    self.pending.insert(token, (i, now));
                }
                Err(err) => {
                    if !self.dispatch_warned {
                        log::warn!("cannot scrape {address} through cluster {:?}: {err}", cfg.cluster);
                        self.dispatch_warned = true;
                    }
                    stats.count(host, stats::SCRAPE_ERRORS);
                    e.record_scrape(Err::<_, ScrapeFailure>(ScrapeFailure::Unreachable(err.to_string())));
                    self.dirty = true;
                }
            }
        }
    }

    /// Counts scrapes whose answer never came (the host should time them out; this is the backstop).
    pub fn expire(&mut self, now_ms: u64, cfg: &CollectorConfig) {
        let deadline = cfg.timeout_ms.saturating_mul(2).saturating_add(cfg.interval_ms);
        let lost: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| now_ms.saturating_sub(*at) > deadline)
            .map(|(t, _)| *t)
            .collect();
        for token in lost {
            if let Some((i, _)) = self.pending.remove(&token) {
                self.expired(i, deadline);
            }
        }
    }

    /// Folds one answer in; false if the token is not one of ours.
    pub fn on_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        response: &CallResponse<'_>,
        stats: &mut Stats,
    ) -> bool {
        let Some((i, _)) = self.pending.remove(&token) else { return false };
        stats.count(host, stats::SCRAPES);
        let Some(e) = self.pool.endpoints.get_mut(i) else { return true };
        let result =
            read_scrape(e.endpoint.engine, response.status, response.body, host.now_ms()).map(|p| p.metrics);
        if let Err(why) = &result {
            stats.count(host, stats::SCRAPE_ERRORS);
            if matches!(why, ScrapeFailure::MissingGauges(_)) {
                stats.count(host, stats::SCRAPE_MISSING_GAUGES);
                if self.warned_missing.insert(e.endpoint.address.clone()) {
                    let engine = e.endpoint.engine.as_str();
                    log::warn!(
                        "scrape of {} ({engine}): {why}; its metrics are not used",
                        e.endpoint.address
                    );
                }
            } else {
                log::debug!("scrape of {}: {why}", e.endpoint.address);
            }
        }
        e.record_scrape(result);
        self.dirty = true;
        true
    }

    fn expired(&mut self, i: usize, after_ms: u64) {
        if let Some(e) = self.pool.endpoints.get_mut(i) {
            e.record_scrape(Err::<_, ScrapeFailure>(ScrapeFailure::TimedOut { after_ms }));
            self.dirty = true;
        }
    }

    /// Forgets scrapes in flight (leadership lost): their answers will be ignored.
    pub fn abandon(&mut self) {
        self.pending.clear();
    }

    /// Continues from what the previous leader published (metrics and failure counts of known endpoints).
    pub fn adopt(&mut self, published: &PoolSnapshot) {
        for e in self.pool.endpoints.iter_mut() {
            if let Some(p) = published.find(e.address()) {
                e.metrics = p.metrics.clone();
                e.consecutive_scrape_failures = p.consecutive_scrape_failures;
            }
        }
    }
}
