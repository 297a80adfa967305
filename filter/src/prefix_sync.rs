//! A process-wide prefix index without a shared index: every worker VM keeps its own replica (inside its
//! scheduler), and after each routed request tells every other live worker `(address, block hashes)` through
//! that worker's shared queue; `on_queue_ready` applies them with `Scheduler::learn_prefix`.
//!
//! Why replicas rather than one owner publishing a merged index: a lookup stays a local call on every
//! request (no shared-data copy of a large index), and an update is a few hundred bytes. Staleness: a
//! replica lags by the time until the other worker's thread runs `on_queue_ready` (one event-loop turn),
//! and a worker that joined later starts with an empty replica.
//!
//! The same queues carry one other message: a worker that joins tells the workers already listed, so
//! they re-read the directory (they otherwise do so once per heartbeat) and start sending to it.
//!
//! Message layouts: an update is magic `b"PX"`, version u8 (=1), address length u16 LE, address, count
//! u32 LE, then `count` u64 LE hashes; a join is magic `b"PJ"`, version u8 (=1), worker id u32 LE.

use crate::host::{Host, HostError};
use crate::keys::Keys;
use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

const MAGIC: &[u8; 2] = b"PX";
const JOIN_MAGIC: &[u8; 2] = b"PJ";
const VERSION: u8 = 1;
/// Queue items handled per `on_queue_ready`, so a flood cannot stall a worker thread.
pub const MAX_DRAIN: usize = 1_024;

/// One routed request's prefix, as sent between workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub address: String,
    pub hashes: Vec<u64>,
}

pub fn encode(address: &str, hashes: &[u64]) -> Vec<u8> {
    let addr = address.as_bytes().get(..usize::from(u16::MAX)).unwrap_or(address.as_bytes());
    let mut out = Vec::with_capacity(9 + addr.len() + hashes.len() * 8);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    out.extend_from_slice(addr);
    out.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    for h in hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out
}

/// `None` for anything that is not exactly one update of this version.
pub fn decode(bytes: &[u8]) -> Option<Update> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?.strip_prefix(&[VERSION])?;
    let (len, rest) = rest.split_at_checked(2)?;
    let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
    let (addr, rest) = rest.split_at_checked(len)?;
    let (count, rest) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?) as usize;
    if rest.len() != count.checked_mul(8)? {
        return None;
    }
    let hashes = rest.chunks_exact(8).filter_map(|c| c.try_into().ok().map(u64::from_le_bytes)).collect();
    Some(Update { address: String::from(core::str::from_utf8(addr).ok()?), hashes })
}

pub fn encode_join(worker: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(7);
    out.extend_from_slice(JOIN_MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&worker.to_le_bytes());
    out
}

/// The id a join message announces; `None` for anything else.
pub fn decode_join(bytes: &[u8]) -> Option<u32> {
    let rest = bytes.strip_prefix(JOIN_MAGIC.as_slice())?.strip_prefix(&[VERSION])?;
    Some(u32::from_le_bytes(rest.try_into().ok()?))
}

/// What one [`PrefixSync::drain`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub applied: usize,
    pub unreadable: usize,
    /// Workers that announced they joined.
    pub joined: Vec<u32>,
}

/// This worker's end of the exchange.
#[derive(Debug, Default)]
pub struct PrefixSync {
    own_queue: Option<u32>,
    /// Other workers' queue ids, resolved once.
    queues: BTreeMap<u32, u32>,
}

impl PrefixSync {
    /// Registers this worker's queue (its root context then receives `on_queue_ready`).
    pub fn register(&mut self, host: &dyn Host, keys: &Keys, me: u32) -> Result<u32, HostError> {
        let id = host.queue_register(&keys.prefix_queue(me))?;
        self.own_queue = Some(id);
        Ok(id)
    }

    pub fn owns(&self, queue: u32) -> bool {
        self.own_queue == Some(queue)
    }

    /// Sends one routed prefix to each worker in `to`; returns how many received it.
    pub fn broadcast(
        &mut self,
        host: &dyn Host,
        keys: &Keys,
        to: &[u32],
        address: &str,
        hashes: &[u64],
    ) -> usize {
        if hashes.is_empty() || to.is_empty() {
            return 0;
        }
        self.send(host, keys, to, &encode(address, hashes))
    }

    /// Tells each worker in `to` that worker `me` joined; returns how many received it.
    pub fn announce(&mut self, host: &dyn Host, keys: &Keys, to: &[u32], me: u32) -> usize {
        let others: Vec<u32> = to.iter().copied().filter(|&w| w != me).collect();
        self.send(host, keys, &others, &encode_join(me))
    }

    fn send(&mut self, host: &dyn Host, keys: &Keys, to: &[u32], message: &[u8]) -> usize {
        let mut sent = 0;
        for &worker in to {
            let queue = match self.queues.get(&worker) {
                Some(q) => *q,
                None => match host.queue_resolve(&keys.prefix_queue(worker)) {
                    Ok(Some(q)) => {
                        self.queues.insert(worker, q);
                        q
                    }
                    // Not registered yet (or gone): try again next time.
                    Ok(None) | Err(_) => continue,
                },
            };
            match host.queue_enqueue(queue, message) {
                Ok(()) => sent += 1,
                Err(_) => {
                    self.queues.remove(&worker);
                }
            }
        }
        sent
    }

    /// Applies the updates other workers sent and collects their join announcements.
    pub fn drain(&self, host: &dyn Host, queue: u32, mut apply: impl FnMut(&Update)) -> Drained {
        let mut out = Drained::default();
        for _ in 0..MAX_DRAIN {
            match host.queue_dequeue(queue) {
                Ok(Some(bytes)) => {
                    if let Some(u) = decode(&bytes) {
                        apply(&u);
                        out.applied += 1;
                    } else if let Some(worker) = decode_join(&bytes) {
                        out.joined.push(worker);
                    } else {
                        out.unreadable += 1;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_truncation() {
        let bytes = encode("10.0.0.1:8000", &[1, u64::MAX]);
        assert_eq!(
            decode(&bytes),
            Some(Update { address: "10.0.0.1:8000".into(), hashes: vec![1, u64::MAX] })
        );
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
    }

    #[test]
    fn updates_reach_every_other_worker_once() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let (mut a, mut b, mut c) = (PrefixSync::default(), PrefixSync::default(), PrefixSync::default());
        a.register(&host, &keys, 1).unwrap();
        let qb = b.register(&host, &keys, 2).unwrap();
        let qc = c.register(&host, &keys, 3).unwrap();
        // Worker 4 is listed but never registered a queue: skipped, not an error.
        assert_eq!(a.broadcast(&host, &keys, &[2, 3, 4], "10.0.0.1:80", &[7, 8]), 2);
        assert_eq!(a.broadcast(&host, &keys, &[2, 3], "10.0.0.1:80", &[]), 0, "nothing to share");
        let mut seen = Vec::new();
        assert_eq!(
            b.drain(&host, qb, |u| seen.push(u.clone())),
            Drained { applied: 1, ..Drained::default() }
        );
        assert_eq!(seen, vec![Update { address: "10.0.0.1:80".into(), hashes: vec![7, 8] }]);
        host.queue_enqueue(qc, b"junk").unwrap();
        assert_eq!(c.drain(&host, qc, |_| {}), Drained { applied: 1, unreadable: 1, joined: vec![] });
        assert!(c.owns(qc) && !c.owns(qb));
    }

    #[test]
    fn a_join_reaches_the_other_workers_and_is_not_an_update() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let (mut a, mut b, mut c) = (PrefixSync::default(), PrefixSync::default(), PrefixSync::default());
        let qa = a.register(&host, &keys, 1).unwrap();
        let qb = b.register(&host, &keys, 2).unwrap();
        c.register(&host, &keys, 3).unwrap();
        assert_eq!(c.announce(&host, &keys, &[1, 2, 3], 3), 2, "not to itself");
        for (sync, queue) in [(&a, qa), (&b, qb)] {
            let drained = sync.drain(&host, queue, |_| panic!("a join is not a prefix update"));
            assert_eq!(drained, Drained { joined: vec![3], ..Drained::default() });
        }
        let join = encode_join(3);
        for cut in 0..join.len() {
            assert_eq!(decode_join(&join[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode(&join), None);
        assert_eq!(decode_join(&encode("10.0.0.1:80", &[1])), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
            let _ = decode_join(&bytes);
        }
    }
}
