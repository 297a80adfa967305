//! The pool as this process knows it: discovered endpoints, their last scraped metrics, and the
//! published snapshot (decoded for the picker, encoded for the collector's HTTP clients).
//!
//! Locks here are held for a copy or an insert, never across an await.

use bytes::Bytes;
use scheduler_core::metrics_text::ScrapeFailure;
use scheduler_core::model::{Endpoint, EndpointState, Metrics, PoolResources, PoolSnapshot};
use scheduler_core::snapshot_codec;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One publication: the snapshot and its encoding, built once and shared.
#[derive(Clone, Debug)]
pub struct Published {
    pub snapshot: Arc<PoolSnapshot>,
    pub encoded: Bytes,
}

#[derive(Debug, Default)]
struct State {
    endpoints: BTreeMap<String, EndpointState>,
    resources: PoolResources,
    generation: u64,
}

#[derive(Debug)]
pub struct Pool {
    name: String,
    state: Mutex<State>,
    latest: RwLock<Option<Published>>,
    synced: AtomicBool,
}

impl Pool {
    pub fn new(name: impl Into<String>) -> Arc<Pool> {
        Arc::new(Pool {
            name: name.into(),
            state: Mutex::new(State::default()),
            latest: RwLock::new(None),
            synced: AtomicBool::new(false),
        })
    }

    /// Replaces the endpoint list. Endpoints that stay keep their metrics; changed labels or engine
    /// are taken from the new list.
    pub fn set_endpoints(&self, list: &[Endpoint]) {
        if let Ok(mut st) = self.state.lock() {
            let mut next = BTreeMap::new();
            for ep in list {
                let mut state = st.endpoints.remove(&ep.address).unwrap_or_default();
                if state.endpoint.engine != ep.engine {
                    // Metrics read with the other engine's names mean nothing now.
                    state.metrics = None;
                }
                state.endpoint = ep.clone();
                next.insert(ep.address.clone(), state);
            }
            st.endpoints = next;
        }
        self.synced.store(true, Ordering::Release);
    }

    /// Replaces the pool's InferenceObjective / InferenceModelRewrite resources (next publication on).
    pub fn set_resources(&self, resources: PoolResources) {
        if let Ok(mut st) = self.state.lock() {
            st.resources = resources;
        }
    }

    /// Records one scrape (the core's fold: new metrics, or one more failure in a row with the old
    /// metrics kept, aging).
    pub fn record_scrape(&self, address: &str, result: Result<Metrics, ScrapeFailure>) {
        let Ok(mut st) = self.state.lock() else { return };
        let Some(e) = st.endpoints.get_mut(address) else { return };
        e.record_scrape(result);
    }

    /// Publishes the current state as a new generation stamped `now_ms`.
    pub fn publish(&self, now_ms: u64) -> Option<Published> {
        let snapshot = {
            let mut st = self.state.lock().ok()?;
            st.generation = st.generation.saturating_add(1);
            PoolSnapshot {
                generation: st.generation,
                published_at_ms: now_ms,
                pool: self.name.clone(),
                endpoints: st.endpoints.values().cloned().collect(),
                resources: st.resources.clone(),
            }
        };
        let encoded = Bytes::from(snapshot_codec::encode(&snapshot));
        let published = Published { snapshot: Arc::new(snapshot), encoded };
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some(published.clone());
        }
        Some(published)
    }

    pub fn latest(&self) -> Option<Published> {
        self.latest.read().ok().and_then(|l| l.clone())
    }

    /// True once discovery delivered its first complete list (readiness).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_metrics_across_rediscovery_and_generations_increase() {
        let pool = Pool::new("p");
        assert!(!pool.is_synced());
        pool.set_endpoints(&[Endpoint::new("10.0.0.1:8000"), Endpoint::new("10.0.0.2:8000")]);
        pool.record_scrape("10.0.0.1:8000", Ok(Metrics { waiting: 3, ..Metrics::default() }));
        pool.record_scrape("10.0.0.2:8000", Err(ScrapeFailure::Status(503)));
        let first = pool.publish(1_000).unwrap();
        pool.set_endpoints(&[Endpoint::new("10.0.0.1:8000"), Endpoint::new("10.0.0.3:8000")]);
        let second = pool.publish(1_050).unwrap();
        assert!(pool.is_synced());
        assert_eq!(second.snapshot.generation, first.snapshot.generation + 1);
        let addrs: Vec<_> = second.snapshot.endpoints.iter().map(|e| e.address().to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:8000", "10.0.0.3:8000"]);
        assert_eq!(second.snapshot.find("10.0.0.1:8000").unwrap().metrics.as_ref().unwrap().waiting, 3);
        assert_eq!(first.snapshot.find("10.0.0.2:8000").unwrap().consecutive_scrape_failures, 1);
        assert_eq!(snapshot_codec::decode(&second.encoded).unwrap(), *second.snapshot);
    }
}
