//! A process-wide prefix index without a shared index: every worker VM keeps its own replica (inside its
//! scheduler), and each routed request's `(address, block hashes)` goes to every other live worker through
//! that worker's shared queue; `on_queue_ready` applies them with `Scheduler::learn_prefix`.
//!
//! Why replicas rather than one owner publishing a merged index: a lookup stays a local call on every
//! request (no shared-data copy of a large index), and an update is a few hundred bytes.
//!
//! Why batches: each enqueue wakes the other worker's thread (a cross-thread post and an eventfd write),
//! which in Envoy costs more than learning the update. A worker sends at most once per
//! [`SEND_EVERY_MS`] (10 ms): an update goes out at once if the last send was longer ago, else with the
//! next send, which happens at the next decision or stream end after the interval, or at the worker's
//! next tick; a batch that reaches [`MAX_BATCH`] updates goes out at once (one repeating the batch's
//! latest update for the same endpoint is dropped). Measured in Envoy with 2 workers, sending at most
//! every 10 ms instead of every millisecond saved ~3.5 µs of module and host-call time per request
//! (BENCHMARKS.md). Staleness: under load at most 10 ms (less when 32 updates gather sooner) plus the
//! other thread's next event-loop turn, short next to the prefill that fills the server's own cache;
//! when traffic stops, at most until a stream ends or the next tick. A worker that joined later starts
//! with an empty replica.
//!
//! The same queues carry one other message: a worker that joins tells the workers already listed, so
//! they re-read the directory (they otherwise do so once per heartbeat) and start sending to it.
//!
//! Message layouts (integers little-endian): an update is `address length u16, address, count u32,
//! count u64 hashes`; a batch is magic `b"PB"`, version u8 (=1), number of updates u32, then the updates;
//! a join is magic `b"PJ"`, version u8 (=1), worker id u32. (A single update with magic `b"PX"` and
//! version 1 before it is still read.)

use crate::host::{Host, HostError};
use crate::keys::Keys;
use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

const MAGIC: &[u8; 2] = b"PX";
const BATCH_MAGIC: &[u8; 2] = b"PB";
const JOIN_MAGIC: &[u8; 2] = b"PJ";
const VERSION: u8 = 1;
/// A worker sends its pending updates at most once per this many milliseconds.
pub const SEND_EVERY_MS: u64 = 10;
/// Updates that may wait for the next send.
pub const MAX_BATCH: usize = 32;
/// Queue items handled per `on_queue_ready`, so a flood cannot stall a worker thread.
pub const MAX_DRAIN: usize = 1_024;

/// One routed request's prefix, as sent between workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub address: String,
    pub hashes: Vec<u64>,
}

/// One update as sent on its own (`b"PX"`).
pub fn encode(address: &str, hashes: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + address.len() + hashes.len() * 8);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    push_update(&mut out, address, hashes);
    out
}

fn push_update(out: &mut Vec<u8>, address: &str, hashes: &[u64]) {
    let addr = address.as_bytes().get(..usize::from(u16::MAX)).unwrap_or(address.as_bytes());
    out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    out.extend_from_slice(addr);
    out.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    for h in hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
}

/// `None` for anything that is not exactly one update of this version.
pub fn decode(bytes: &[u8]) -> Option<Update> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?.strip_prefix(&[VERSION])?;
    match take_update(rest)? {
        (update, []) => Some(update),
        _ => None,
    }
}

/// A batch of updates (`b"PB"`); `None` unless the bytes are exactly a batch of this version.
pub fn decode_batch(bytes: &[u8]) -> Option<Vec<Update>> {
    let rest = bytes.strip_prefix(BATCH_MAGIC.as_slice())?.strip_prefix(&[VERSION])?;
    let (count, mut rest) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?) as usize;
    // Each update takes at least 6 bytes: a count beyond that is a lie, not an allocation to make.
    let mut updates = Vec::with_capacity(count.min(rest.len() / 6));
    for _ in 0..count {
        let (update, tail) = take_update(rest)?;
        updates.push(update);
        rest = tail;
    }
    rest.is_empty().then_some(updates)
}

fn take_update(bytes: &[u8]) -> Option<(Update, &[u8])> {
    let (len, rest) = bytes.split_at_checked(2)?;
    let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
    let (addr, rest) = rest.split_at_checked(len)?;
    let (count, rest) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?) as usize;
    let (hashes, rest) = rest.split_at_checked(count.checked_mul(8)?)?;
    let hashes = hashes.chunks_exact(8).filter_map(|c| c.try_into().ok().map(u64::from_le_bytes)).collect();
    Some((Update { address: String::from(core::str::from_utf8(addr).ok()?), hashes }, rest))
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
    /// The batch being filled: its header (count patched in at the send), then the updates.
    pending: Vec<u8>,
    /// Where each update of the pending batch lies in `pending`.
    pending_updates: Vec<core::ops::Range<usize>>,
    /// Who the pending updates go to: the live workers at the latest broadcast.
    peers: Vec<u32>,
    last_send_ms: Option<u64>,
}

impl PrefixSync {
    /// Registers this worker's queue (its root context then receives `on_queue_ready`).
    pub fn register(&mut self, host: &dyn Host, keys: &Keys, me: u32) -> Result<u32, HostError> {
        let id = host.queue_register(&keys.prefix_queue(me))?;
        self.own_queue = Some(id);
        Ok(id)
    }

    /// Updates waiting for the next send (at most [`MAX_BATCH`]) and the other workers' queues known.
    pub fn sizes(&self) -> (usize, usize) {
        (self.pending_updates.len(), self.queues.len())
    }

    pub fn owns(&self, queue: u32) -> bool {
        self.own_queue == Some(queue)
    }

    /// Shares one routed prefix with the workers in `to`: sent at once if the last send was at least
    /// [`SEND_EVERY_MS`] before `now_ms`, else kept for the next send. Returns how many workers a send
    /// reached (0 when the update waits).
    pub fn broadcast(
        &mut self,
        host: &dyn Host,
        keys: &Keys,
        to: &[u32],
        address: &str,
        hashes: &[u64],
        now_ms: u64,
    ) -> usize {
        if hashes.is_empty() || to.is_empty() {
            return 0;
        }
        if self.peers != to {
            self.peers = to.to_vec();
        }
        if self.pending.is_empty() {
            self.pending.extend_from_slice(BATCH_MAGIC);
            self.pending.push(VERSION);
            self.pending.extend_from_slice(&0u32.to_le_bytes());
        }
        let start = self.pending.len();
        push_update(&mut self.pending, address, hashes);
        if self.repeats_pending(start) {
            // The receiver would touch the same blocks of the same endpoint twice in a row: a no-op.
            self.pending.truncate(start);
        } else {
            self.pending_updates.push(start..self.pending.len());
        }
        let full = self.pending_updates.len() >= MAX_BATCH;
        if full || self.due(now_ms) {
            self.flush(host, keys, now_ms)
        } else {
            0
        }
    }

    /// Whether the update encoded at `start` (the end of the pending batch) is the same as the batch's
    /// latest update for its endpoint (identical prompts routed to one endpoint within a millisecond).
    fn repeats_pending(&self, start: usize) -> bool {
        let Some(new) = self.pending.get(start..) else { return false };
        // An encoded update begins with its address length and address.
        fn head(u: &[u8]) -> Option<&[u8]> {
            let len = u.get(..2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)?;
            u.get(..2 + usize::from(len))
        }
        let address = head(new);
        for range in self.pending_updates.iter().rev() {
            let Some(old) = self.pending.get(range.clone()) else { continue };
            if head(old) == address {
                return old == new;
            }
        }
        false
    }

    /// Updates waiting for the next send.
    pub fn pending(&self) -> usize {
        self.pending_updates.len()
    }

    fn due(&self, now_ms: u64) -> bool {
        self.last_send_ms.is_none_or(|t| now_ms.saturating_sub(t) >= SEND_EVERY_MS)
    }

    /// Sends the pending updates if the last send is [`SEND_EVERY_MS`] old (a decision or stream end).
    pub fn flush_if_due(&mut self, host: &dyn Host, keys: &Keys, now_ms: u64) -> usize {
        if self.pending_updates.is_empty() || !self.due(now_ms) {
            return 0;
        }
        self.flush(host, keys, now_ms)
    }

    /// Sends the pending updates now, as one batch per peer; returns how many peers received it.
    pub fn flush(&mut self, host: &dyn Host, keys: &Keys, now_ms: u64) -> usize {
        if self.pending_updates.is_empty() {
            return 0;
        }
        let mut message = core::mem::take(&mut self.pending);
        if let Some(count) = message.get_mut(3..7) {
            let n = u32::try_from(self.pending_updates.len()).unwrap_or(u32::MAX);
            count.copy_from_slice(&n.to_le_bytes());
        }
        self.pending_updates.clear();
        self.last_send_ms = Some(now_ms);
        let peers = core::mem::take(&mut self.peers);
        let sent = self.send(host, keys, &peers, &message);
        self.peers = peers;
        // The buffer (and its capacity) serves the next batch.
        message.clear();
        self.pending = message;
        sent
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
        // Bounded per call (a batch may overshoot by less than MAX_BATCH): the rest waits for the next.
        while out.applied + out.unreadable + out.joined.len() < MAX_DRAIN {
            match host.queue_dequeue(queue) {
                Ok(Some(bytes)) => {
                    if let Some(batch) = decode_batch(&bytes) {
                        for u in &batch {
                            apply(u);
                        }
                        out.applied += batch.len();
                    } else if let Some(u) = decode(&bytes) {
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

    /// Worker 1 (`a`, the sender) and worker 2 (`b`), registered, and b's queue.
    fn sender_and_receiver(host: &FakeHost, keys: &Keys) -> (PrefixSync, PrefixSync, u32) {
        let (mut a, mut b) = (PrefixSync::default(), PrefixSync::default());
        a.register(host, keys, 1).unwrap();
        let qb = b.register(host, keys, 2).unwrap();
        (a, b, qb)
    }

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
        assert_eq!(a.broadcast(&host, &keys, &[2, 3, 4], "10.0.0.1:80", &[7, 8], 100), 2);
        assert_eq!(a.broadcast(&host, &keys, &[2, 3], "10.0.0.1:80", &[], 200), 0, "nothing to share");
        assert_eq!(a.pending(), 0);
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

    #[test]
    fn updates_within_the_send_interval_go_out_together_with_the_next_send() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let (mut a, b, qb) = sender_and_receiver(&host, &keys);
        let update = |i: u64| Update { address: format!("10.0.0.{i}:80"), hashes: vec![i, i + 100] };
        let send = |a: &mut PrefixSync, i: u64, now: u64| {
            let u = update(i);
            a.broadcast(&host, &keys, &[2], &u.address, &u.hashes, now)
        };
        assert_eq!(send(&mut a, 1, 1_000), 1, "the first goes out at once");
        assert_eq!(send(&mut a, 2, 1_000), 0);
        assert_eq!(send(&mut a, 3, 1_000), 0);
        assert_eq!(a.pending(), 2);
        assert_eq!(a.flush_if_due(&host, &keys, 1_000), 0, "not yet: same millisecond");
        assert_eq!(
            a.flush_if_due(&host, &keys, 1_000 + SEND_EVERY_MS - 1),
            0,
            "not yet: within the interval"
        );
        assert_eq!(a.flush_if_due(&host, &keys, 1_000 + SEND_EVERY_MS), 1);
        assert_eq!(send(&mut a, 4, 5_000), 1, "a quiet worker sends at once");
        let mut seen = Vec::new();
        let drained = b.drain(&host, qb, |u| seen.push(u.clone()));
        assert_eq!(drained.applied, 4);
        assert_eq!(seen, (1..=4).map(update).collect::<Vec<_>>(), "in order, none twice");
    }

    #[test]
    fn an_update_repeating_the_batchs_last_one_for_its_endpoint_is_not_sent_again() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let (mut a, b, qb) = sender_and_receiver(&host, &keys);
        let (one, two) = ("10.0.0.1:80", "10.0.0.2:80");
        let send = |a: &mut PrefixSync, address: &str, hashes: &[u64], now: u64| {
            a.broadcast(&host, &keys, &[2], address, hashes, now)
        };
        assert_eq!(send(&mut a, one, &[1, 2], 1_000), 1, "sent at once");
        // Within the send interval: the same prompt to the same endpoint is kept once per batch,
        // also with another endpoint's update in between; a different prompt is kept.
        send(&mut a, one, &[1, 2], 1_000);
        send(&mut a, one, &[1, 2], 1_000);
        send(&mut a, two, &[1, 2], 1_000);
        send(&mut a, one, &[1, 2], 1_000);
        send(&mut a, one, &[1, 2, 3], 1_000);
        send(&mut a, one, &[1, 2], 1_000);
        assert_eq!(a.pending(), 4);
        assert_eq!(a.flush_if_due(&host, &keys, 1_000 + SEND_EVERY_MS), 1);
        // A new batch starts afresh: the same update goes out again.
        assert_eq!(send(&mut a, one, &[1, 2], 2_000), 1);
        let mut seen = Vec::new();
        b.drain(&host, qb, |u| seen.push((u.address.clone(), u.hashes.clone())));
        let u = |a: &str, h: &[u64]| (a.to_string(), h.to_vec());
        assert_eq!(
            seen,
            vec![
                u(one, &[1, 2]),
                u(one, &[1, 2]),
                u(two, &[1, 2]),
                u(one, &[1, 2, 3]),
                u(one, &[1, 2]),
                u(one, &[1, 2])
            ]
        );
    }

    #[test]
    fn a_full_batch_goes_out_without_waiting() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let (mut a, b, qb) = sender_and_receiver(&host, &keys);
        a.broadcast(&host, &keys, &[2], "10.0.0.1:80", &[1], 7);
        let sent: Vec<usize> =
            (0..MAX_BATCH).map(|i| a.broadcast(&host, &keys, &[2], "10.0.0.1:80", &[i as u64], 7)).collect();
        assert_eq!(sent.iter().filter(|&&n| n == 1).count(), 1, "one batch of {MAX_BATCH}: {sent:?}");
        assert_eq!(*sent.last().unwrap(), 1);
        assert_eq!(b.drain(&host, qb, |_| {}).applied, 1 + MAX_BATCH);
    }

    #[test]
    fn a_batch_round_trips_and_any_damage_rejects_it_whole() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let (mut a, _, qb) = sender_and_receiver(&host, &keys);
        a.broadcast(&host, &keys, &[2], "10.0.0.1:80", &[1], 0);
        a.broadcast(&host, &keys, &[2], "10.0.0.2:80", &[2, 3], 0);
        a.broadcast(&host, &keys, &[2], "", &[4], 0);
        a.flush(&host, &keys, 0);
        host.queue_dequeue(qb).unwrap().unwrap(); // the first update, sent alone
        let batch = host.queue_dequeue(qb).unwrap().unwrap();
        let updates = decode_batch(&batch).unwrap();
        assert_eq!(updates.iter().map(|u| u.hashes.len()).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(updates[1].address, "");
        for cut in 0..batch.len() {
            assert_eq!(decode_batch(&batch[..cut]), None, "cut at {cut}");
        }
        let mut longer = batch.clone();
        longer.push(0);
        assert_eq!(decode_batch(&longer), None);
        assert_eq!(decode(&batch), None);
        assert_eq!(decode_batch(&encode("10.0.0.1:80", &[1])), None);
        // A count that promises more updates than there are bytes is refused, not allocated for.
        let mut liar = batch[..3].to_vec();
        liar.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_batch(&liar), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
            let _ = decode_batch(&bytes);
            let _ = decode_join(&bytes);
        }
    }
}
