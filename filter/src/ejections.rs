//! Ejections shared between the proxy's workers: when one worker ejects an endpoint for the gateway's own
//! failures, the others stop sending it traffic too (within [`READ_EVERY_MS`]), instead of each finding out
//! with failed requests of its own.
//!
//! One shared-data key per pool (`Keys::ejections`) holds a line per ejected endpoint,
//! `address ejected_at_ms ejected_until_ms ejections`, merged under CAS by the worker that ejects. Entries
//! are dropped once their ejection has run out. A reader re-reads the key at most every
//! [`READ_EVERY_MS`] and parses it only when its CAS moved. Readmissions are not shared: a readmitted
//! endpoint's entry runs out by itself, and each worker's own trial request readmits it there.

use crate::host::{Host, HostError};
use crate::keys::Keys;
use scheduler_core::health::HealthTracker;
use std::string::String;
use std::vec::Vec;

/// How often a worker looks at the others' ejections (ms).
pub const READ_EVERY_MS: u64 = 5;
/// Bounded CAS retries: a handful of workers contend, never unboundedly.
const CAS_ATTEMPTS: usize = 16;

/// One shared entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub address: String,
    pub at_ms: u64,
    pub until_ms: u64,
    pub ejections: u32,
}

/// Parses the key's text; malformed lines are skipped (never trusted, never fatal).
pub fn decode(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| {
            let mut f = line.split(' ');
            let address = f.next().filter(|a| !a.is_empty())?;
            let at_ms = f.next()?.parse().ok()?;
            let until_ms = f.next()?.parse().ok()?;
            let ejections = f.next()?.parse().ok()?;
            Some(Entry { address: String::from(address), at_ms, until_ms, ejections })
        })
        .collect()
}

pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = String::new();
    for e in entries {
        out.push_str(&std::format!("{} {} {} {}\n", e.address, e.at_ms, e.until_ms, e.ejections));
    }
    out.into_bytes()
}

/// This worker's view of the shared key.
#[derive(Debug, Default)]
pub struct SharedEjections {
    read_ms: Option<u64>,
    cas: Option<u32>,
}

impl SharedEjections {
    /// Adopts the other workers' ejections into `tracker` (at most every [`READ_EVERY_MS`]).
    pub fn read(&mut self, host: &dyn Host, keys: &Keys, tracker: &mut HealthTracker, now_ms: u64) {
        if self.read_ms.is_some_and(|t| now_ms.saturating_sub(t) < READ_EVERY_MS) {
            return;
        }
        self.read_ms = Some(now_ms);
        let shared = match host.shared_get(&keys.ejections) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                log::debug!("shared ejections not read: {e}");
                return;
            }
        };
        if shared.cas.is_some() && shared.cas == self.cas {
            return;
        }
        self.cas = shared.cas;
        for e in decode(&shared.value) {
            if e.until_ms > now_ms {
                tracker.adopt(&e.address, e.at_ms, e.until_ms, e.ejections);
            }
        }
    }

    /// Publishes `tracker`'s current ejections, merged with what other workers wrote.
    pub fn publish(&mut self, host: &dyn Host, keys: &Keys, tracker: &HealthTracker, now_ms: u64) {
        let mine: Vec<Entry> = tracker
            .ejections()
            .filter(|(_, _, until, _)| *until > now_ms)
            .map(|(a, at, until, n)| Entry {
                address: String::from(a),
                at_ms: at,
                until_ms: until,
                ejections: n,
            })
            .collect();
        for _ in 0..CAS_ATTEMPTS {
            let (mut entries, cas) = match host.shared_get(&keys.ejections) {
                Ok(Some(s)) => (decode(&s.value), s.cas),
                Ok(None) => (Vec::new(), None),
                Err(e) => {
                    log::warn!("ejections not shared with the other workers: {e}");
                    return;
                }
            };
            entries.retain(|e| e.until_ms > now_ms);
            for m in &mine {
                match entries.iter_mut().find(|e| e.address == m.address) {
                    Some(e) if e.until_ms >= m.until_ms => {}
                    Some(e) => *e = m.clone(),
                    None => entries.push(m.clone()),
                }
            }
            match host.shared_set(&keys.ejections, &encode(&entries), cas) {
                Ok(()) => return,
                Err(HostError::CasMismatch) => continue,
                Err(e) => {
                    log::warn!("ejections not shared with the other workers: {e}");
                    return;
                }
            }
        }
        log::warn!("ejections not shared with the other workers: the key kept changing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use scheduler_core::health::{HealthConfig, UpstreamResult};

    #[test]
    fn the_text_round_trips_and_garbage_lines_are_skipped() {
        let e = vec![
            Entry { address: "10.0.0.1:8000".into(), at_ms: 5, until_ms: 1_005, ejections: 1 },
            Entry { address: "[fd00::1]:8000".into(), at_ms: 7, until_ms: 2_007, ejections: 2 },
        ];
        assert_eq!(decode(&encode(&e)), e);
        let mut noisy = encode(&e);
        noisy.extend_from_slice(b"half a line\n\xff\xfe\n 1 2 3\n10.0.0.9:80 x 2 3\n");
        assert_eq!(decode(&noisy), e);
        assert!(decode(b"\xff").is_empty());
        assert!(decode(b"").is_empty());
    }

    #[test]
    fn one_workers_ejection_reaches_another_and_runs_out() {
        let host = FakeHost::default();
        let keys = Keys::new("p");
        let (mut a, mut b) = (
            HealthTracker::new(HealthConfig::default(), 5_000),
            HealthTracker::new(HealthConfig::default(), 5_000),
        );
        let (mut sa, mut sb) = (SharedEjections::default(), SharedEjections::default());
        for _ in 0..3 {
            a.record("10.0.0.1:8000", UpstreamResult::GatewayFailure, 100);
        }
        sa.publish(&host, &keys, &a, 100);
        sb.read(&host, &keys, &mut b, 101);
        assert_eq!(b.ejections().map(|(ad, ..)| ad.to_string()).collect::<Vec<_>>(), ["10.0.0.1:8000"]);
        // Read again within the period: nothing re-read.
        sb.read(&host, &keys, &mut b, 102);
        // Another worker's later ejection is merged, not overwritten; run-out entries are dropped.
        for _ in 0..3 {
            b.record("10.0.0.2:8000", UpstreamResult::GatewayFailure, 200);
        }
        sb.publish(&host, &keys, &b, 200);
        let stored = decode(&host.shared_get(&keys.ejections).unwrap().unwrap().value);
        assert_eq!(stored.len(), 2);
        sb.publish(&host, &keys, &b, 1_150);
        let stored = decode(&host.shared_get(&keys.ejections).unwrap().unwrap().value);
        assert_eq!(stored.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["10.0.0.2:8000"]);
    }
}
