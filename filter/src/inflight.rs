//! Process-wide gateway in-flight counts. Each worker VM owns one key holding its `InFlightTable`, rewritten
//! when requests start or end and on a heartbeat; before scheduling, a worker adds its own table and every
//! other live worker's table into the pool. No key has two writers, so no write can conflict.
//!
//! Writes are coalesced: a change is written at once if the table was last written in an earlier
//! millisecond, else it waits for the next change after that millisecond or the next tick
//! ([`FLUSH_TICK_MS`]), whichever comes first. Readers read the others' tables at most once per
//! millisecond, so writing more often would only cost (two shared-data writes per request at a few
//! thousand requests per second and worker).
//!
//! Staleness: under load another worker's counts are about a millisecond old (its last write plus at
//! most a millisecond until the next read); when its traffic stops, its last changes are written within
//! one tick. A worker whose heartbeat is older than [`LIVE_MS`] is dead (its streams died with it) and
//! its table is ignored.
//!
//! With flow control on, every change is written at once, alone or not (see [`Publish::eager`]): two
//! writes per request, for a dispatch gate no more than a millisecond behind.
//!
//! A worker that knows of no other worker (a one-worker proxy) writes its table only with the heartbeat:
//! nobody reads it per request. A worker that joins later sees those counts up to one heartbeat old
//! until the first one learns of it (its announcement on the prefix queue, or the next directory read)
//! and writes on changes again.

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
/// The tick of a worker VM that does not collect (one that collects ticks with its scrape interval, 50 ms
/// by default): changes held back by coalescing, and prefix updates waiting for their batch, go out by
/// the next tick at the latest.
pub const FLUSH_TICK_MS: u64 = 50;
/// A worker writes its table at most once per this many milliseconds while requests come and go.
pub const WRITE_EVERY_MS: u64 = 1;

/// This worker's counts.
#[derive(Debug, Default)]
pub struct InFlightState {
    table: InFlightTable,
    last_write_ms: Option<u64>,
    /// Changes made since the last write, held back by coalescing (only with other workers listed).
    unwritten: bool,
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
    /// Write every change at once, not coalesced, even with no other worker listed (flow control is
    /// on: its dispatch gate reads these counts, and a change held back would let other workers,
    /// including one that joins now, overshoot the pool).
    pub eager: bool,
}

/// One request's share of an endpoint's count.
#[derive(Clone, Copy, Debug)]
pub struct Count<'a> {
    pub address: &'a str,
    /// Estimated tokens (input + expected output).
    pub tokens: u64,
    /// Prompt tokens awaiting the first token.
    pub awaiting: u64,
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

    /// Counts a routed request holding `count.tokens`, `count.awaiting` of them prompt tokens awaiting
    /// the first token; publishes the table, stamped `now_ms`, if other workers read it (at once, or
    /// coalesced: see the module documentation).
    pub fn start(&mut self, host: &dyn Host, to: Publish<'_>, count: Count<'_>, now_ms: u64) {
        self.table.start(count.address, count.tokens, count.awaiting);
        self.changed(host, to, now_ms);
    }

    /// The first token of a request counted by [`InFlightState::start`] came: its `prompt_tokens` no
    /// longer await it. Published with the table's next write (this worker's next start or finish, or
    /// the next tick), not on its own: a short request's end usually follows within the same
    /// millisecond, and a write for the first token would hold that end back until the tick (other
    /// workers would count a finished request for up to [`FLUSH_TICK_MS`]).
    pub fn first_token(&mut self, to: Publish<'_>, address: &str, prompt_tokens: u64) {
        self.table.first_token(address, prompt_tokens);
        // Written by the next change or tick (`heartbeat` writes what is unwritten).
        self.unwritten |= to.others;
    }

    /// Ends a request counted by [`InFlightState::start`] (`count.awaiting`: its prompt tokens still
    /// awaiting a first token); publishes the table as [`InFlightState::start`] does.
    pub fn finish(&mut self, host: &dyn Host, to: Publish<'_>, count: Count<'_>, now_ms: u64) {
        self.table.finish(count.address, count.tokens, count.awaiting);
        self.changed(host, to, now_ms);
    }

    fn changed(&mut self, host: &dyn Host, to: Publish<'_>, now_ms: u64) {
        // Alone, nobody reads the table per request, unless flow control is on: a worker that joins
        // decides its very first request on it, before this one learns of it.
        if !to.others && !to.eager {
            return;
        }
        if !to.eager && self.last_write_ms.is_some_and(|t| now_ms.saturating_sub(t) < WRITE_EVERY_MS) {
            self.unwritten = true;
        } else {
            self.write(host, to.keys, to.me, now_ms);
        }
    }

    /// Writes the table now, if other workers read it.
    pub fn publish_now(&mut self, host: &dyn Host, to: Publish<'_>, now_ms: u64) {
        if to.others {
            self.write(host, to.keys, to.me, now_ms);
        }
    }

    /// On a tick: writes changes held back by coalescing, and rewrites the table if the last write is
    /// older than the heartbeat period at `now`. True if the heartbeat was due.
    pub fn heartbeat(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, now: u64) -> bool {
        let due = self.last_write_ms.is_none_or(|t| now.saturating_sub(t) >= HEARTBEAT_MS);
        if due || self.unwritten {
            self.write(host, keys, me, now);
        }
        due
    }

    fn write(&mut self, host: &dyn Host, keys: &Keys, me: Option<u32>, now: u64) {
        // Without a worker id (registration failed) the counts stay local to this VM.
        let Some(me) = me else { return };
        self.table.heartbeat_ms = now;
        match host.shared_set(&keys.inflight(me), &self.table.encode(), None) {
            Ok(()) => {
                self.last_write_ms = Some(now);
                self.unwritten = false;
            }
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

    fn count(address: &str, tokens: u64) -> Count<'_> {
        Count { address, tokens, awaiting: tokens / 2 }
    }

    /// Worker `me`'s key, with other workers listed.
    fn to(keys: &Keys, me: u32) -> Publish<'_> {
        Publish { keys, me: Some(me), others: true, eager: false }
    }

    #[test]
    fn two_workers_see_each_others_counts() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(10_000);
        let (mut a, mut b) = (InFlightState::default(), InFlightState::default());
        a.start(&host, to(&keys, 1), count("10.0.0.1:80", 100), host.now_ms());
        b.start(&host, to(&keys, 2), count("10.0.0.1:80", 50), host.now_ms());
        b.start(&host, to(&keys, 2), count("10.0.0.2:80", 7), host.now_ms());
        // b's second start came in the millisecond of its first write: its tick writes it.
        b.heartbeat(&host, &keys, Some(2), host.now_ms());
        let mut p = pool();
        let others = a.merge_into(&host, &keys, Some(1), &[1, 2], &mut p, host.now_ms()).unwrap();
        assert_eq!(others.live, vec![2]);
        assert_eq!(p.endpoints[0].in_flight, InFlight { requests: 2, tokens: 150, awaiting_first_token: 75 });
        assert_eq!(p.endpoints[1].in_flight, InFlight { requests: 1, tokens: 7, awaiting_first_token: 3 });
        // a's request gets its first token: the other worker sees its prompt no longer awaiting.
        a.first_token(to(&keys, 1), "10.0.0.1:80", 50);
        a.heartbeat(&host, &keys, Some(1), host.now_ms());
        host.advance(1);
        b.merge_into(&host, &keys, Some(2), &[1, 2], &mut p, host.now_ms()).unwrap();
        assert_eq!(p.endpoints[0].in_flight.awaiting_first_token, 25);
        // Merging again (a millisecond later: reads are reused within one) replaces, never accumulates.
        host.advance(1);
        b.finish(&host, to(&keys, 2), count("10.0.0.1:80", 50), host.now_ms());
        a.merge_into(&host, &keys, Some(1), &[1, 2], &mut p, host.now_ms()).unwrap();
        assert_eq!(p.endpoints[0].in_flight, InFlight { requests: 1, tokens: 100, awaiting_first_token: 0 });
    }

    #[test]
    fn dead_workers_stop_counting_and_are_reported_for_pruning() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(1_000);
        let mut dead = InFlightState::default();
        dead.start(&host, to(&keys, 2), count("10.0.0.1:80", 5), host.now_ms());
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
        a.start(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        let mut p = pool();
        let seen = |b: &mut InFlightState, p: &mut PoolSnapshot| {
            b.merge_into(&host, &keys, Some(2), &[1, 2], p, host.now_ms()).unwrap();
            p.endpoints[0].in_flight.requests
        };
        assert_eq!(seen(&mut b, &mut p), 1);
        a.start(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        a.publish_now(&host, to(&keys, 1), host.now_ms());
        assert_eq!(seen(&mut b, &mut p), 1, "same millisecond: the read is reused");
        // b's own counts are always current.
        b.start(&host, to(&keys, 2), count("10.0.0.1:80", 1), host.now_ms());
        assert_eq!(seen(&mut b, &mut p), 2);
        host.advance(1);
        assert_eq!(seen(&mut b, &mut p), 3);
        // A changed directory is read at once.
        a.start(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        b.merge_into(&host, &keys, Some(2), &[2, 1], &mut p, host.now_ms()).unwrap();
        assert_eq!(p.endpoints[0].in_flight.requests, 4);
    }

    #[test]
    fn a_worker_alone_publishes_only_with_the_heartbeat() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(5_000);
        let mut s = InFlightState::default();
        assert!(s.heartbeat(&host, &keys, Some(1), host.now_ms()));
        let alone = Publish { keys: &keys, me: Some(1), others: false, eager: false };
        s.start(&host, alone, count("10.0.0.1:80", 9), host.now_ms());
        let published = || InFlightTable::decode(&host.get(&keys.inflight(1)).unwrap()).unwrap();
        assert!(published().is_empty(), "not written per request");
        assert_eq!(s.table().iter().count(), 1, "but counted");
        host.advance(HEARTBEAT_MS);
        assert!(s.heartbeat(&host, &keys, Some(1), host.now_ms()));
        assert_eq!(published().iter().count(), 1);
        // Once another worker is listed, changes are written (at most once per millisecond).
        host.advance(1);
        s.finish(&host, to(&keys, 1), count("10.0.0.1:80", 9), host.now_ms());
        assert!(published().is_empty());
    }

    #[test]
    fn changes_within_a_millisecond_are_written_once_then_by_the_next_change_or_tick() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(10_000);
        let mut s = InFlightState::default();
        let writes = || host.world.borrow().shared.get(&keys.inflight(1)).map_or(0, |v| v.1);
        let published = || {
            let t = InFlightTable::decode(&host.get(&keys.inflight(1)).unwrap()).unwrap();
            t.iter().map(|(a, f)| (a.to_string(), f.requests)).collect::<Vec<_>>()
        };
        let one = |n| vec![("10.0.0.1:80".to_string(), n)];
        s.start(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        let first = writes();
        assert_eq!(published(), one(1));
        // Two more changes in the same millisecond: counted, not written.
        s.start(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        s.start(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        assert_eq!(writes(), first);
        assert_eq!(published(), one(1));
        // The first change in a later millisecond writes them all.
        host.advance(1);
        s.finish(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        assert_eq!(writes(), first + 1);
        assert_eq!(published(), one(2));
        // A change held back when traffic stops goes out with the next tick, even within the millisecond.
        s.finish(&host, to(&keys, 1), count("10.0.0.1:80", 1), host.now_ms());
        assert_eq!(published(), one(2));
        assert!(!s.heartbeat(&host, &keys, Some(1), host.now_ms()), "no heartbeat due");
        assert_eq!(published(), one(1));
        // With nothing held back, a tick before the heartbeat is due writes nothing.
        let settled = writes();
        host.advance(FLUSH_TICK_MS);
        s.heartbeat(&host, &keys, Some(1), host.now_ms());
        assert_eq!(writes(), settled);
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
