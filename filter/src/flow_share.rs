//! Flow control across the proxy's worker VMs. Each worker queues its own paused streams (a stream can
//! only be resumed by the VM that paused it), so the queues stay per worker; what must be process-wide
//! is strict priority and capacity. Each worker owns one key, `epp/<pool>/flow/<id>`, holding how many
//! requests and body bytes it has waiting per priority band; before admitting or dispatching, a
//! worker sums the other live workers' tables into the core's [`PeerQueues`]: they count against the
//! global and per-band limits, and a band here neither dispatches nor admits at once while a higher
//! band waits at another worker.
//!
//! Like the in-flight tables ([`crate::inflight`]) the keys have one writer each, so no write can
//! conflict (a CAS'd global counter would be contended by every admission and would keep what a
//! crashed VM held forever; a table here ages out with its worker). Writes happen only when the counts
//! changed (one per enqueue, dispatch, expiry or cancel: bounded by the request rate), a refused write
//! is retried on the next tick, and a heartbeat goes out once per [`HEARTBEAT_MS`] while the table is
//! not empty. Reads: at most once per millisecond, only when flow control needs them (an admission, a
//! dispatch round).
//!
//! Staleness: another worker's queue is seen at most a millisecond late. Two workers can therefore
//! both admit or dispatch on the same reading; the overshoot is bounded by one request per worker per
//! millisecond, and the saturation gate (in-flight counts, written at once with flow control on)
//! catches up at the next reading.

use crate::host::{Host, HostError};
use crate::inflight::{HEARTBEAT_MS, LIVE_MS};
use crate::keys::Keys;
use scheduler_core::flow_control::PeerQueues;
use std::vec::Vec;

/// `(priority, queued requests, queued bytes)` per band with something waiting.
pub type Bands = Vec<(i32, u64, u64)>;

#[derive(Debug, Default)]
pub struct FlowShare {
    /// What this worker last wrote (or would have, alone), and when.
    written: Bands,
    last_write_ms: Option<u64>,
    /// Counts changed since the last write, held back by coalescing.
    current: Bands,
    unwritten: bool,
    /// The other workers' tables as last read.
    read: Option<PeersRead>,
}

#[derive(Debug)]
struct PeersRead {
    at_ms: u64,
    workers: Vec<u32>,
    peers: PeerQueues,
}

impl FlowShare {
    /// This worker's queue changed to `bands` (bands with nothing waiting left out): written now.
    pub fn update(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, bands: Bands, now_ms: u64) {
        if bands == self.current && !self.unwritten {
            return;
        }
        self.current = bands;
        if self.current == self.written {
            self.unwritten = false;
            return;
        }
        self.write(host, keys, me, now_ms);
    }

    /// On a tick: retries a refused write, and a heartbeat while something waits.
    pub fn tick(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, now_ms: u64) {
        let heartbeat = !self.written.is_empty()
            && self.last_write_ms.is_none_or(|t| now_ms.saturating_sub(t) >= HEARTBEAT_MS);
        if self.unwritten || heartbeat {
            self.write(host, keys, me, now_ms);
        }
    }

    /// Empties this worker's table at once (the VM is ending: nothing it queued waits any more).
    pub fn clear(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, now_ms: u64) {
        self.current.clear();
        if !self.written.is_empty() || self.unwritten {
            self.write(host, keys, me, now_ms);
        }
    }

    fn write(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, now_ms: u64) {
        let Some(me) = me else {
            // No worker id: nothing is shared, the queue is this VM's alone.
            self.written = self.current.clone();
            self.unwritten = false;
            return;
        };
        match host.shared_set(&keys.flow(me), &encode(now_ms, &self.current), None) {
            Ok(()) => {
                self.written = self.current.clone();
                self.last_write_ms = Some(now_ms);
                self.unwritten = false;
            }
            Err(e) => {
                self.unwritten = true;
                log::warn!("flow-control queue of worker {me} not published: {e}");
            }
        }
    }

    /// What the other live workers have waiting, summed per band (read at most once per millisecond).
    pub fn peers(
        &mut self,
        host: &dyn Host,
        keys: &Keys,
        me: Option<u32>,
        workers: &[u32],
        now_ms: u64,
    ) -> Result<PeerQueues, HostError> {
        if let Some(r) = &self.read {
            if r.at_ms == now_ms && r.workers == workers {
                return Ok(r.peers.clone());
            }
        }
        let mut bands: Bands = Vec::new();
        for &id in workers.iter().filter(|id| Some(**id) != me) {
            let Some(v) = host.shared_get(&keys.flow(id))? else { continue };
            let Some((written_ms, theirs)) = decode(&v.value) else { continue };
            if now_ms.saturating_sub(written_ms) > LIVE_MS {
                continue;
            }
            for (priority, n, b) in theirs {
                match bands.iter_mut().find(|(p, _, _)| *p == priority) {
                    Some(e) => {
                        e.1 = e.1.saturating_add(n);
                        e.2 = e.2.saturating_add(b);
                    }
                    None => bands.push((priority, n, b)),
                }
            }
        }
        bands.sort_unstable_by_key(|b| core::cmp::Reverse(b.0));
        let peers = PeerQueues { bands };
        self.read = Some(PeersRead { at_ms: now_ms, workers: workers.to_vec(), peers: peers.clone() });
        Ok(peers)
    }
}

/// `u64` LE write time (ms), `u32` LE band count, then per band `i32` priority, `u64` requests, `u64`
/// bytes (all LE).
pub fn encode(now_ms: u64, bands: &[(i32, u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + bands.len() * 20);
    out.extend_from_slice(&now_ms.to_le_bytes());
    out.extend_from_slice(&u32::try_from(bands.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (p, n, b) in bands {
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
    out
}

/// `None` for bytes that are not a table (an empty value, a partial write of another version).
pub fn decode(bytes: &[u8]) -> Option<(u64, Bands)> {
    let written = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    let rest = bytes.get(12..)?;
    if rest.len() != count.checked_mul(20)? {
        return None;
    }
    let bands = rest
        .chunks_exact(20)
        .filter_map(|c| {
            let p = i32::from_le_bytes(c.get(0..4)?.try_into().ok()?);
            let n = u64::from_le_bytes(c.get(4..12)?.try_into().ok()?);
            let b = u64::from_le_bytes(c.get(12..20)?.try_into().ok()?);
            Some((p, n, b))
        })
        .collect();
    Some((written, bands))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn tables_round_trip_and_garbage_is_ignored() {
        let bands = vec![(10, 3, 300), (-1, 1, 7)];
        assert_eq!(decode(&encode(42, &bands)), Some((42, bands)));
        assert_eq!(decode(&encode(1, &[])), Some((1, vec![])));
        assert_eq!(decode(b""), None);
        let mut cut = encode(42, &[(1, 1, 1)]);
        cut.pop();
        assert_eq!(decode(&cut), None);
    }

    #[test]
    fn peers_sum_live_workers_per_band_and_skip_dead_ones() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(10_000);
        let (mut a, mut b, mut c, mut me) =
            (FlowShare::default(), FlowShare::default(), FlowShare::default(), FlowShare::default());
        a.update(&host, &keys, Some(1), vec![(10, 2, 20), (0, 1, 5)], host.now_ms());
        b.update(&host, &keys, Some(2), vec![(0, 4, 40)], host.now_ms());
        c.update(&host, &keys, Some(3), vec![(99, 9, 9)], host.now_ms() - LIVE_MS - 1);
        host.put(&keys.flow(5), b"junk");
        let peers = me.peers(&host, &keys, Some(4), &[1, 2, 3, 4, 5], host.now_ms()).unwrap();
        assert_eq!(peers.bands, vec![(10, 2, 20), (0, 5, 45)]);
    }

    #[test]
    fn changes_are_written_at_once_kept_alive_and_cleared_at_the_end() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(1_000);
        let mut s = FlowShare::default();
        let published = || decode(&host.get(&keys.flow(1)).unwrap()).unwrap().1;
        s.update(&host, &keys, Some(1), vec![(0, 1, 10)], host.now_ms());
        assert_eq!(published(), vec![(0, 1, 10)]);
        s.update(&host, &keys, Some(1), vec![(0, 2, 20)], host.now_ms());
        assert_eq!(published(), vec![(0, 2, 20)]);
        // Unchanged: no write, but a heartbeat once per period while something waits.
        let cas = |h: &FakeHost| h.world.borrow().shared.get(&keys.flow(1)).map(|(_, c)| *c);
        let before = cas(&host);
        host.advance(5);
        s.tick(&host, &keys, Some(1), host.now_ms());
        assert_eq!(cas(&host), before);
        host.advance(HEARTBEAT_MS);
        s.tick(&host, &keys, Some(1), host.now_ms());
        assert_ne!(cas(&host), before);
        s.clear(&host, &keys, Some(1), host.now_ms());
        assert_eq!(published(), vec![]);
    }

    #[test]
    fn a_refused_write_is_retried_by_the_tick() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(1_000);
        let mut s = FlowShare::default();
        host.world.borrow_mut().fail_sets = Some((HostError::Status(10), 1));
        s.update(&host, &keys, Some(1), vec![(0, 1, 1)], host.now_ms());
        assert_eq!(host.get(&keys.flow(1)), None);
        s.tick(&host, &keys, Some(1), host.now_ms());
        assert_eq!(decode(&host.get(&keys.flow(1)).unwrap()).unwrap().1, vec![(0, 1, 1)]);
    }
}
