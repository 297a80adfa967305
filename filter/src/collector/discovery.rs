//! Discovery-URL mode: instead of scraping M pods, poll one URL (the companion collector service) that
//! serves the pool already encoded with `snapshot_codec`, check that it decodes, and publish it unchanged.
//! Each poll names the newest snapshot format this build reads, so the collector includes the pool's
//! InferenceObjective / InferenceModelRewrite resources (format version 2) for it.

use super::CallResponse;
use crate::host::{Host, HttpGet};
use crate::stats::{self, Stats};
use scheduler_core::config::gateway::{CollectorConfig, DiscoveryConfig};
use scheduler_core::snapshot_codec;

/// The request header naming the newest snapshot format the poller reads (the collector's contract).
pub const SNAPSHOT_VERSION_HEADER: &str = "x-epp-snapshot-version";

#[derive(Debug)]
pub struct Discovery {
    target: DiscoveryConfig,
    /// `snapshot_codec::FORMAT_VERSION` as the poll's `x-epp-snapshot-version` header value.
    reads_version: String,
    /// The poll in flight: (token, dispatch time).
    pending: Option<(u32, u64)>,
    dispatch_warned: bool,
}

/// What one answer was worth.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    NotOurs,
    /// A decodable snapshot, to publish as is.
    Snapshot,
    Failed,
}

impl Discovery {
    pub fn new(target: DiscoveryConfig) -> Discovery {
        Discovery {
            target,
            reads_version: snapshot_codec::FORMAT_VERSION.to_string(),
            pending: None,
            dispatch_warned: false,
        }
    }

    pub fn owns(&self, token: u32) -> bool {
        self.pending.is_some_and(|(t, _)| t == token)
    }

    pub fn poll(&mut self, host: &dyn Host, cfg: &CollectorConfig, stats: &mut Stats) {
        let now = host.now_ms();
        if let Some((_, at)) = self.pending {
            // The host times calls out; this only unsticks a call whose answer never came.
            if now.saturating_sub(at) <= cfg.timeout_ms.saturating_mul(2).saturating_add(cfg.interval_ms) {
                return;
            }
            self.pending = None;
        }
        let request = HttpGet {
            cluster: &self.target.cluster,
            authority: &self.target.authority,
            path: &self.target.path,
            headers: &[(SNAPSHOT_VERSION_HEADER, &self.reads_version)],
            timeout_ms: cfg.timeout_ms,
        };
        match host.http_get(&request) {
            Ok(token) => self.pending = Some((token, now)),
            Err(err) => {
                if !self.dispatch_warned {
                    log::warn!(
                        "cannot poll the discovery URL through cluster {:?}: {err}",
                        self.target.cluster
                    );
                    self.dispatch_warned = true;
                }
                stats.count(host, stats::SCRAPE_ERRORS);
            }
        }
    }

    pub fn on_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        response: &CallResponse<'_>,
        stats: &mut Stats,
    ) -> Polled {
        if !self.owns(token) {
            return Polled::NotOurs;
        }
        self.pending = None;
        stats.count(host, stats::SCRAPES);
        let problem = match response.status {
            Some(200) => match snapshot_codec::decode(response.body) {
                Ok(_) => return Polled::Snapshot,
                Err(e) => format!("not a snapshot: {e}"),
            },
            Some(status) => format!("HTTP {status}"),
            None => String::from("connection failed or reset"),
        };
        log::warn!("discovery poll of {}{}: {problem}", self.target.authority, self.target.path);
        stats.count(host, stats::SCRAPE_ERRORS);
        Polled::Failed
    }

    pub fn abandon(&mut self) {
        self.pending = None;
    }
}
