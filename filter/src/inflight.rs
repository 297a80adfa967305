//! Process-wide gateway in-flight counts. Each worker VM owns one key holding its `InFlightTable`, rewritten
//! whenever a request starts or ends and on a heartbeat; before scheduling, a worker adds its own table and
//! every other live worker's table into the pool. No key has two writers, so no write can conflict.
//!
//! Staleness: another worker's counts are as old as its last start/finish (writes are synchronous on its
//! thread) plus at most a millisecond (a worker reads the others' tables at most once per millisecond),
//! i.e. practically current. A worker whose heartbeat is older than [`LIVE_MS`] is dead (its
//! streams died with it) and its table is ignored.
//!
//! A worker that knows of no other worker (a one-worker proxy) writes its table only with the heartbeat:
//! nobody reads it per request, and two shared-data writes per request are saved. A worker that joins
//! later sees those counts up to one heartbeat old until the first one learns of it (its announcement
//! on the prefix queue, or the next directory read) and writes per request again.

use crate::host::{Host, HostError};
use crate::keys::Keys;
use scheduler_core::model::{InFlight, PoolSnapshot};
use scheduler_core::shared_state::InFlightTable;
use std::vec::Vec;

/// How often an idle worker rewrites its table to show it is alive.
pub const HEARTBEAT_MS: u64 = 1_000;
/// A table older than this belongs to a dead worker.
pub const LIVE_MS: u64 = 3 * HEARTBEAT_MS;
/// A worker dead this long is removed from the directory.
pub const PRUNE_MS: u64 = 10 * HEARTBEAT_MS;

/// This worker's counts.
#[derive(Debug, Default)]
pub struct InFlightState {
    table: InFlightTable,
    last_write_ms: Option<u64>,
    /// The other workers' tables as last read; read again at most once per millisecond.
    read: Option<OthersRead>,
}

#[derive(Debug)]
struct OthersRead {
    at_ms: u64,
    workers: Vec<u32>,
    live_tables: Vec<InFlightTable>,
    others: Others,
}

/// Where a change to the table goes: this worker's key, and whether any other worker is listed (else
/// the change waits for the heartbeat).
#[derive(Clone, Copy)]
pub struct Publish<'k> {
    pub keys: &'k Keys,
    pub me: Option<u32>,
    pub others: bool,
}

/// What reading the other workers' tables found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Others {
    /// Workers with a fresh table (prefix updates go to them).
    pub live: Vec<u32>,
    /// Workers dead for longer than [`PRUNE_MS`].
    pub long_dead: Vec<u32>,
    /// Tables that did not decode.
    pub unreadable: usize,
}

impl InFlightState {
    pub fn table(&self) -> &InFlightTable {
        &self.table
    }

    /// Counts a routed request; publishes the table, stamped `now_ms`, if other workers read it.
    pub fn start(&mut self, host: &dyn Host, to: Publish<'_>, address: &str, tokens: u64, now_ms: u64) {
        self.table.start(address, tokens);
        self.publish_now(host, to, now_ms);
    }

    /// Ends a request counted by [`InFlightState::start`]; publishes the table, stamped `now_ms`, if
    /// other workers read it.
    pub fn finish(&mut self, host: &dyn Host, to: Publish<'_>, address: &str, tokens: u64, now_ms: u64) {
        self.table.finish(address, tokens);
        self.publish_now(host, to, now_ms);
    }

    /// Writes the table now, if other workers read it.
    pub fn publish_now(&mut self, host: &dyn Host, to: Publish<'_>, now_ms: u64) {
        if to.others {
            self.write(host, to.keys, to.me, now_ms);
        }
    }

    /// Rewrites the table if the last write is older than the heartbeat period at `now`; true if it did.
    pub fn heartbeat(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, now: u64) -> bool {
        let due = self.last_write_ms.is_none_or(|t| now.saturating_sub(t) >= HEARTBEAT_MS);
        if due {
            self.write(host, keys, me, now);
        }
        due
    }

    fn write(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, now: u64) {
        // Without a worker id (registration failed) the counts stay local to this VM.
        let Some(me) = me else { return };
        self.table.heartbeat_ms = now;
        match host.shared_set(&keys.inflight(me), &self.table.encode(), None) {
            Ok(()) => self.last_write_ms = Some(now),
            Err(e) => log::warn!("in-flight table of worker {me} not published: {e}"),
        }
    }

    /// Replaces the pool's in-flight counts by this worker's plus every live other worker's (alive at
    /// `now`). The other workers' tables are read at most once per millisecond (a busy worker decides
    /// several times per millisecond; their counts are then at most a millisecond old).
    pub fn merge_into(
        &mut self,
        host: &dyn Host,
        keys: &Keys,
        me: Option<u32>,
        workers: &[u32],
        pool: &mut PoolSnapshot,
        now: u64,
    ) -> Result<Others, HostError> {
        for e in pool.endpoints.iter_mut() {
            e.in_flight = InFlight::default();
        }
        add(pool, &self.table);
        let fresh = self.read.as_ref().is_some_and(|r| r.at_ms == now && r.workers == workers);
        if !fresh {
            self.read = Some(read_others(host, keys, me, workers, now)?);
        }
        let Some(read) = &self.read else { return Ok(Others::default()) };
        for t in &read.live_tables {
            add(pool, t);
        }
        Ok(read.others.clone())
    }
}

fn read_others(
    host: &dyn Host,
    keys: &Keys,
    me: Option<u32>,
    workers: &[u32],
    now: u64,
) -> Result<OthersRead, HostError> {
    let mut read = OthersRead {
        at_ms: now,
        workers: workers.to_vec(),
        live_tables: Vec::new(),
        others: Others::default(),
    };
    for &id in workers.iter().filter(|id| Some(**id) != me) {
        let Some(bytes) = host.shared_get(&keys.inflight(id))? else { continue };
        match InFlightTable::decode(&bytes.value) {
            Ok(t) => {
                let age = now.saturating_sub(t.heartbeat_ms);
                if age <= LIVE_MS {
                    read.live_tables.push(t);
                    read.others.live.push(id);
                } else if age > PRUNE_MS {
                    read.others.long_dead.push(id);
                }
            }
            Err(_) => read.others.unreadable += 1,
        }
    }
    Ok(read)
}

fn add(pool: &mut PoolSnapshot, table: &InFlightTable) {
    for (address, f) in table.iter() {
        if let Some(e) = pool.find_mut(address) {
            e.in_flight.merge(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use scheduler_core::model::{Endpoint, EndpointState};

    fn pool() -> PoolSnapshot {
        PoolSnapshot {
            endpoints: vec![
                EndpointState::new(Endpoint::new("10.0.0.1:80")),
                EndpointState::new(Endpoint::new("10.0.0.2:80")),
            ],
            ..PoolSnapshot::default()
        }
    }

    /// Worker `me`'s key, with other workers listed.
    fn to(keys: &Keys, me: u32) -> Publish<'_> {
        Publish { keys, me: Some(me), others: true }
    }

    #[test]
    fn two_workers_see_each_others_counts() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(10_000);
        let (mut a, mut b) = (InFlightState::default(), InFlightState::default());
        a.start(&host, to(&keys, 1), "10.0.0.1:80", 100, host.now_ms());
        b.start(&host, to(&keys, 2), "10.0.0.1:80", 50, host.now_ms());
        b.start(&host, to(&keys, 2), "10.0.0.2:80", 7, host.now_ms());
        let mut p = pool();
        let others = a.merge_into(&host, &keys, Some(1), &[1, 2], &mut p, host.now_ms()).unwrap();
        assert_eq!(others.live, vec![2]);
        assert_eq!(p.endpoints[0].in_flight, InFlight { requests: 2, tokens: 150 });
        assert_eq!(p.endpoints[1].in_flight, InFlight { requests: 1, tokens: 7 });
        // Merging again (a millisecond later: reads are reused within one) replaces, never accumulates.
        b.finish(&host, to(&keys, 2), "10.0.0.1:80", 50, host.now_ms());
        host.advance(1);
        a.merge_into(&host, &keys, Some(1), &[1, 2], &mut p, host.now_ms()).unwrap();
        assert_eq!(p.endpoints[0].in_flight, InFlight { requests: 1, tokens: 100 });
    }

    #[test]
    fn dead_workers_stop_counting_and_are_reported_for_pruning() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(1_000);
        let mut dead = InFlightState::default();
        dead.start(&host, to(&keys, 2), "10.0.0.1:80", 5, host.now_ms());
        host.put(&keys.inflight(3), b"junk");
        let mut me = InFlightState::default();
        host.advance(LIVE_MS + 1);
        let mut p = pool();
        let o = me.merge_into(&host, &keys, Some(1), &[1, 2, 3, 4], &mut p, host.now_ms()).unwrap();
        assert_eq!(o, Others { live: vec![], long_dead: vec![], unreadable: 1 });
        assert_eq!(p.endpoints[0].in_flight, InFlight::default());
        host.advance(PRUNE_MS);
        let o = me.merge_into(&host, &keys, Some(1), &[1, 2], &mut p, host.now_ms()).unwrap();
        assert_eq!(o.long_dead, vec![2]);
    }

    #[test]
    fn other_workers_tables_are_read_at_most_once_per_millisecond() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(10_000);
        let (mut a, mut b) = (InFlightState::default(), InFlightState::default());
        a.start(&host, to(&keys, 1), "10.0.0.1:80", 1, host.now_ms());
        let mut p = pool();
        let seen = |b: &mut InFlightState, p: &mut PoolSnapshot| {
            b.merge_into(&host, &keys, Some(2), &[1, 2], p, host.now_ms()).unwrap();
            p.endpoints[0].in_flight.requests
        };
        assert_eq!(seen(&mut b, &mut p), 1);
        a.start(&host, to(&keys, 1), "10.0.0.1:80", 1, host.now_ms());
        assert_eq!(seen(&mut b, &mut p), 1, "same millisecond: the read is reused");
        // b's own counts are always current.
        b.start(&host, to(&keys, 2), "10.0.0.1:80", 1, host.now_ms());
        assert_eq!(seen(&mut b, &mut p), 2);
        host.advance(1);
        assert_eq!(seen(&mut b, &mut p), 3);
        // A changed directory is read at once.
        a.start(&host, to(&keys, 1), "10.0.0.1:80", 1, host.now_ms());
        b.merge_into(&host, &keys, Some(2), &[2, 1], &mut p, host.now_ms()).unwrap();
        assert_eq!(p.endpoints[0].in_flight.requests, 4);
    }

    #[test]
    fn a_worker_alone_publishes_only_with_the_heartbeat() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(5_000);
        let mut s = InFlightState::default();
        assert!(s.heartbeat(&host, &keys, Some(1), host.now_ms()));
        let alone = Publish { keys: &keys, me: Some(1), others: false };
        s.start(&host, alone, "10.0.0.1:80", 9, host.now_ms());
        let published = || InFlightTable::decode(&host.get(&keys.inflight(1)).unwrap()).unwrap();
        assert!(published().is_empty(), "not written per request");
        assert_eq!(s.table().iter().count(), 1, "but counted");
        host.advance(HEARTBEAT_MS);
        assert!(s.heartbeat(&host, &keys, Some(1), host.now_ms()));
        assert_eq!(published().iter().count(), 1);
        // Once another worker is listed, every change is written at once.
        s.finish(&host, to(&keys, 1), "10.0.0.1:80", 9, host.now_ms());
        assert!(published().is_empty());
    }

    #[test]
    fn heartbeat_rewrites_only_when_due() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(5_000);
        let mut s = InFlightState::default();
        s.heartbeat(&host, &keys, Some(1), host.now_ms());
        let first = host.world.borrow().shared.get(&keys.inflight(1)).unwrap().1;
        host.advance(HEARTBEAT_MS - 1);
        s.heartbeat(&host, &keys, Some(1), host.now_ms());
        assert_eq!(host.world.borrow().shared.get(&keys.inflight(1)).unwrap().1, first);
        host.advance(1);
        s.heartbeat(&host, &keys, Some(1), host.now_ms());
        let t = InFlightTable::decode(&host.get(&keys.inflight(1)).unwrap()).unwrap();
        assert_eq!(t.heartbeat_ms, 5_000 + HEARTBEAT_MS);
    }
}
