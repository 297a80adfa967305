//! The in-proxy collector: who scrapes (a bootstrap singleton, or the elected worker), what (each static
//! endpoint's `/metrics`, or one discovery URL serving a ready snapshot), and publishing the result into
//! shared data for every worker VM to read.
//!
//! Cadence: a scrape of every endpoint is started each `collector.intervalMs` (an endpoint whose previous
//! scrape is still out is skipped). The snapshot is published as soon as every outstanding scrape has
//! answered, and on the next tick otherwise; with nothing new it is re-published every quarter of
//! `limits.snapshotMaxAgeMs`, so pickers only see a stale snapshot when the collector itself stopped.

mod discovery;
pub mod leader;
pub mod publish;
mod scrape;

use crate::host::Host;
use crate::keys::Keys;
use crate::stats::{self, Stats};
use discovery::{Discovery, Polled};
use scheduler_core::config::gateway::{CollectorConfig, GatewayConfig};
use scheduler_core::model::PoolSnapshot;
use scheduler_core::snapshot_codec;
use scrape::Scraper;

/// An HTTP callout's answer as the collector needs it.
#[derive(Clone, Copy, Debug)]
pub struct CallResponse<'a> {
    /// `None` when the call failed without a response (reset, no healthy upstream).
    pub status: Option<u16>,
    pub body: &'a [u8],
}

#[derive(Debug)]
enum Source {
    Scrape(Scraper),
    Discovery(Discovery),
}

#[derive(Debug)]
pub struct Collector {
    cfg: CollectorConfig,
    refresh_ms: u64,
    source: Source,
    last_publish_ms: Option<u64>,
}

impl Collector {
    pub fn new(config: &GatewayConfig) -> Collector {
        let source = match &config.pool.discovery {
            Some(d) => Source::Discovery(Discovery::new(d.clone())),
            None => Source::Scrape(Scraper::new(&config.pool.name, &config.pool.endpoints)),
        };
        let refresh_ms = (config.limits.snapshot_max_age_ms / 4).max(config.collector.interval_ms);
        Collector { cfg: config.collector.clone(), refresh_ms, source, last_publish_ms: None }
    }

    pub fn interval_ms(&self) -> u64 {
        self.cfg.interval_ms
    }

    pub fn lease_ttl_ms(&self) -> u64 {
        self.cfg.lease_ttl_ms
    }

    /// One collection period: publish what is pending, then start the next scrapes.
    pub fn tick(&mut self, host: &dyn Host, keys: &Keys, stats: &mut Stats) {
        let now = host.now_ms();
        match &mut self.source {
            Source::Scrape(s) => {
                s.expire(now, &self.cfg);
                let due = self.last_publish_ms.is_some_and(|t| now.saturating_sub(t) >= self.refresh_ms);
                if s.take_dirty() || due {
                    publish_own(host, keys, s.snapshot_mut(), stats, &mut self.last_publish_ms);
                }
                s.dispatch(host, &self.cfg, stats);
            }
            Source::Discovery(d) => d.poll(host, &self.cfg, stats),
        }
    }

    /// True if the callout `token` is one of this collector's.
    pub fn owns(&self, token: u32) -> bool {
        match &self.source {
            Source::Scrape(s) => s.owns(token),
            Source::Discovery(d) => d.owns(token),
        }
    }

    pub fn on_response(
        &mut self,
        host: &dyn Host,
        keys: &Keys,
        token: u32,
        response: &CallResponse<'_>,
        stats: &mut Stats,
    ) {
        match &mut self.source {
            Source::Scrape(s) => {
                if s.on_response(host, token, response, stats) && s.idle() && s.take_dirty() {
                    publish_own(host, keys, s.snapshot_mut(), stats, &mut self.last_publish_ms);
                }
            }
            Source::Discovery(d) => {
                if d.on_response(host, token, response, stats) == Polled::Snapshot {
                    match publish::publish_bytes(host, keys, response.body) {
                        Ok(_) => {
                            self.last_publish_ms = Some(host.now_ms());
                            stats.count(host, stats::SNAPSHOTS_PUBLISHED);
                        }
                        Err(e) => log::warn!("snapshot from the discovery URL not published: {e}"),
                    }
                }
            }
        }
    }

    /// Leadership was lost: answers to scrapes in flight are ignored.
    pub fn abandon(&mut self) {
        match &mut self.source {
            Source::Scrape(s) => s.abandon(),
            Source::Discovery(d) => d.abandon(),
        }
    }

    /// Leadership was won: continue from what the previous leader published, if it decodes.
    pub fn adopt_published(&mut self, host: &dyn Host, keys: &Keys) {
        let Source::Scrape(s) = &mut self.source else { return };
        if let Ok(Some(v)) = host.shared_get(&keys.snapshot) {
            if let Ok(published) = snapshot_codec::decode(&v.value) {
                s.adopt(&published);
            }
        }
    }
}

fn publish_own(
    host: &dyn Host,
    keys: &Keys,
    snapshot: &mut PoolSnapshot,
    stats: &mut Stats,
    last: &mut Option<u64>,
) {
    match publish::publish_snapshot(host, keys, snapshot) {
        Ok(generation) => {
            *last = Some(host.now_ms());
            stats.count(host, stats::SNAPSHOTS_PUBLISHED);
            log::debug!(
                "published snapshot generation {generation} ({} endpoints)",
                snapshot.endpoints.len()
            );
        }
        Err(e) => log::warn!("snapshot not published: {e}"),
    }
}

#[cfg(test)]
mod tests;
