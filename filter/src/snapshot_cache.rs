//! Each worker VM's decoded copy of the published snapshot. The 8-byte generation key is read at most once
//! per millisecond (busy workers skip most reads; snapshots come every scrape interval, 50 ms by default);
//! the (large) snapshot is copied and decoded only when the generation moved.
//!
//! A snapshot that fails to decode is reported once per generation and never used; the last good one is
//! kept as the best guess of who exists (fail-open round-robin needs it).

use crate::host::Host;
use crate::keys::Keys;
use core::convert::TryInto;
use scheduler_core::model::PoolSnapshot;
use scheduler_core::snapshot_codec;
use std::format;
use std::string::String;

/// What a refresh found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Same generation as last time: nothing read beyond the generation key.
    Unchanged,
    /// A new snapshot was decoded.
    Reloaded,
    /// Nothing was ever published.
    Missing,
    /// The generation moved but the bytes are not a snapshot this build reads (the reason, for a log).
    Undecodable(String),
    /// The host refused the read; the cache stays as it was.
    HostError(String),
}

#[derive(Debug, Default)]
pub struct SnapshotCache {
    /// The generation key value last acted on.
    generation: Option<u64>,
    /// The millisecond of the last generation read the host answered.
    checked_ms: Option<u64>,
    snapshot: Option<PoolSnapshot>,
    undecodable: bool,
}

impl SnapshotCache {
    /// Brings the cache up to the published generation, reading it unless it was read in `now_ms` already.
    pub fn refresh(&mut self, host: &dyn Host, keys: &Keys, now_ms: u64) -> Refresh {
        if self.checked_ms == Some(now_ms) {
            return if self.snapshot.is_none() && !self.undecodable {
                Refresh::Missing
            } else {
                Refresh::Unchanged
            };
        }
        let read = host.shared_get(&keys.generation);
        if read.is_ok() {
            self.checked_ms = Some(now_ms);
        }
        let generation = match read {
            Err(e) => return Refresh::HostError(format!("reading {}: {e}", keys.generation)),
            Ok(None) if self.snapshot.is_none() => {
                self.undecodable = false;
                return Refresh::Missing;
            }
            Ok(None) => return Refresh::Unchanged,
            Ok(Some(v)) => match v.value.as_slice().try_into().map(u64::from_le_bytes) {
                Ok(g) => g,
                Err(_) => {
                    self.undecodable = true;
                    self.generation = None;
                    return Refresh::Undecodable(format!(
                        "{} holds {} bytes, expected 8",
                        keys.generation,
                        v.value.len()
                    ));
                }
            },
        };
        if self.generation == Some(generation) {
            return Refresh::Unchanged;
        }
        self.generation = Some(generation);
        let bytes = match host.shared_get(&keys.snapshot) {
            Err(e) => {
                // Try again on the next request.
                self.generation = None;
                self.checked_ms = None;
                return Refresh::HostError(format!("reading {}: {e}", keys.snapshot));
            }
            Ok(None) => {
                self.undecodable = true;
                return Refresh::Undecodable(format!("generation {generation} published without a snapshot"));
            }
            Ok(Some(v)) => v.value,
        };
        match snapshot_codec::decode(&bytes) {
            Ok(s) => {
                self.snapshot = Some(s);
                self.undecodable = false;
                Refresh::Reloaded
            }
            Err(e) => {
                self.undecodable = true;
                Refresh::Undecodable(format!("snapshot generation {generation}: {e}"))
            }
        }
    }

    /// The last snapshot that decoded, if any.
    /// When the generation was last read (ms), if ever.
    pub fn checked_ms(&self) -> Option<u64> {
        self.checked_ms
    }

    pub fn snapshot(&self) -> Option<&PoolSnapshot> {
        self.snapshot.as_ref()
    }

    pub fn snapshot_mut(&mut self) -> Option<&mut PoolSnapshot> {
        self.snapshot.as_mut()
    }

    /// True while the newest publication could not be decoded.
    pub fn undecodable(&self) -> bool {
        self.undecodable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use scheduler_core::model::{Endpoint, EndpointState};

    fn publish(host: &FakeHost, keys: &Keys, generation: u64, addr: &str) {
        let s = PoolSnapshot {
            generation,
            published_at_ms: 1,
            pool: "p".into(),
            endpoints: vec![EndpointState::new(Endpoint::new(addr))],
            ..PoolSnapshot::default()
        };
        host.put(&keys.snapshot, &snapshot_codec::encode(&s));
        host.put(&keys.generation, &generation.to_le_bytes());
    }

    #[test]
    fn decodes_only_when_the_generation_moves() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let mut c = SnapshotCache::default();
        let mut now = 1u64..;
        assert_eq!(c.refresh(&host, &keys, now.next().unwrap()), Refresh::Missing);
        publish(&host, &keys, 1, "10.0.0.1:80");
        assert_eq!(c.refresh(&host, &keys, now.next().unwrap()), Refresh::Reloaded);
        // Same generation: even changed bytes are not read (the generation is the contract).
        host.put(&keys.snapshot, b"garbage");
        assert_eq!(c.refresh(&host, &keys, now.next().unwrap()), Refresh::Unchanged);
        publish(&host, &keys, 2, "10.0.0.2:80");
        assert_eq!(c.refresh(&host, &keys, now.next().unwrap()), Refresh::Reloaded);
        assert_eq!(c.snapshot().unwrap().endpoints[0].address(), "10.0.0.2:80");
    }

    #[test]
    fn corrupt_snapshot_keeps_the_last_good_one_and_reports_once() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let mut c = SnapshotCache::default();
        let mut now = 1u64..;
        publish(&host, &keys, 1, "10.0.0.1:80");
        c.refresh(&host, &keys, now.next().unwrap());
        host.put(&keys.snapshot, b"WEPS\x09\x00garbage");
        host.put(&keys.generation, &2u64.to_le_bytes());
        assert!(matches!(c.refresh(&host, &keys, now.next().unwrap()), Refresh::Undecodable(_)));
        assert!(c.undecodable());
        assert_eq!(
            c.refresh(&host, &keys, now.next().unwrap()),
            Refresh::Unchanged,
            "reported once per generation"
        );
        assert!(c.undecodable());
        assert_eq!(c.snapshot().unwrap().endpoints[0].address(), "10.0.0.1:80");
        publish(&host, &keys, 3, "10.0.0.3:80");
        assert_eq!(c.refresh(&host, &keys, now.next().unwrap()), Refresh::Reloaded);
        assert!(!c.undecodable());
    }

    #[test]
    fn a_bad_generation_key_is_undecodable() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.put(&keys.generation, b"xyz");
        let mut c = SnapshotCache::default();
        let mut now = 1u64..;
        assert!(
            matches!(c.refresh(&host, &keys, now.next().unwrap()), Refresh::Undecodable(m) if m.contains("expected 8"))
        );
        assert!(c.undecodable());
    }

    #[test]
    fn the_generation_is_read_at_most_once_per_millisecond() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let mut c = SnapshotCache::default();
        assert_eq!(c.refresh(&host, &keys, 7), Refresh::Missing);
        publish(&host, &keys, 1, "10.0.0.1:80");
        assert_eq!(c.refresh(&host, &keys, 7), Refresh::Missing, "same millisecond: not read again");
        assert_eq!(c.refresh(&host, &keys, 8), Refresh::Reloaded);
        publish(&host, &keys, 2, "10.0.0.2:80");
        assert_eq!(c.refresh(&host, &keys, 8), Refresh::Unchanged);
        assert_eq!(c.snapshot().unwrap().endpoints[0].address(), "10.0.0.1:80");
        assert_eq!(c.refresh(&host, &keys, 9), Refresh::Reloaded);
        assert_eq!(c.snapshot().unwrap().endpoints[0].address(), "10.0.0.2:80");
    }

    #[test]
    fn a_refused_read_is_retried_within_the_same_millisecond() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        publish(&host, &keys, 1, "10.0.0.1:80");
        let mut c = SnapshotCache::default();
        host.world.borrow_mut().fail_gets = Some((crate::host::HostError::Status(10), 1));
        assert!(matches!(c.refresh(&host, &keys, 5), Refresh::HostError(_)));
        assert_eq!(c.refresh(&host, &keys, 5), Refresh::Reloaded);
    }
}
