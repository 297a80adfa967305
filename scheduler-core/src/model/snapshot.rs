//! The pool as the scheduler sees it at one moment.

use super::{Endpoint, InFlight, Metrics};
use crate::config::objectives::ObjectivePriorities;
use crate::model_rewrite::ModelRewrites;
use alloc::string::String;
use alloc::vec::Vec;

/// One endpoint with everything known about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointState {
    pub endpoint: Endpoint,
    /// Last successful scrape; `None` until the first one succeeds.
    pub metrics: Option<Metrics>,
    /// Scrapes that failed in a row since the last success (a dead endpoint keeps its old metrics, aging).
    pub consecutive_scrape_failures: u32,
    /// Gateway-side work in flight (filled by the gateway, not by the collector).
    pub in_flight: InFlight,
}

impl EndpointState {
    pub fn new(endpoint: Endpoint) -> EndpointState {
        EndpointState { endpoint, ..EndpointState::default() }
    }

    pub fn address(&self) -> &str {
        &self.endpoint.address
    }

    /// True when there are no metrics or they are older than `staleness_ms` at `now_ms`.
    pub fn is_stale(&self, now_ms: u64, staleness_ms: u64) -> bool {
        match &self.metrics {
            Some(m) => m.age_ms(now_ms) > staleness_ms,
            None => true,
        }
    }
}

/// Every endpoint of one pool plus bookkeeping. This is what the collector publishes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolSnapshot {
    /// Increases with every publication; lets readers skip decoding when nothing changed.
    pub generation: u64,
    /// Collector clock (ms) at publication.
    pub published_at_ms: u64,
    /// Pool name (InferencePool), informational.
    pub pool: String,
    /// Endpoints sorted by address (the codec and tie-breaking rely on a stable order).
    pub endpoints: Vec<EndpointState>,
    /// The pool's InferenceObjective and InferenceModelRewrite resources, as the collector read them from
    /// Kubernetes; empty when it does not watch them.
    pub resources: PoolResources,
}

/// What the pool's Kubernetes resources say about requests, beside the picker's own configuration (which
/// wins where both speak: see `EndpointPicker::decide`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolResources {
    /// InferenceObjective name → priority.
    pub objectives: ObjectivePriorities,
    /// InferenceModelRewrite specs, oldest resource first.
    pub rewrites: ModelRewrites,
}

impl PoolResources {
    pub fn is_empty(&self) -> bool {
        self.objectives.is_empty() && self.rewrites.is_empty()
    }
}

impl PoolSnapshot {
    pub fn find(&self, address: &str) -> Option<&EndpointState> {
        self.endpoints.iter().find(|e| e.endpoint.address == address)
    }

    pub fn find_mut(&mut self, address: &str) -> Option<&mut EndpointState> {
        self.endpoints.iter_mut().find(|e| e.endpoint.address == address)
    }

    /// Restores the sorted-by-address invariant after endpoints were added out of order.
    pub fn sort(&mut self) {
        self.endpoints.sort_by(|a, b| a.endpoint.address.cmp(&b.endpoint.address));
    }
}
