//! One worker's gateway-side in-flight counts, as published in shared data for the other workers.
//!
//! Each worker VM owns one key and rewrites it whenever its counts change (and on a heartbeat), so there
//! is never a write conflict; a reader sums every live worker's table. A table whose heartbeat is older
//! than a cut-off belongs to a VM that died (its streams died with it) and is ignored.
//!
//! Layout (little-endian): magic `b"IF"`, version u8 (=1), heartbeat_ms u64, count u32, then per entry:
//! address length u16, address bytes (UTF-8), requests u32, tokens u64; then the awaiting-first-token
//! section: tag `b"AF"`, then per entry, in the same order, awaiting_first_token u64.
//!
//! The section was added after version 1 shipped, without a new version, so that workers of both builds
//! keep reading each other during a VM reload: a build that predates it reads the entries and ignores
//! the bytes after them (it never checked for trailing bytes), and this build reads a table without the
//! section (or with a section tag it does not know, from a later build) as nothing awaiting a first
//! token. A section with the `AF` tag that is cut short is an error, like any other truncation.

use super::bytes::Reader;
use crate::model::InFlight;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

const MAGIC: &[u8; 2] = b"IF";
const VERSION: u8 = 1;
/// Smallest possible entry: empty address + u32 + u64.
const MIN_ENTRY: usize = 2 + 4 + 8;
/// Tag of the awaiting-first-token section after the entries.
const AWAITING_TAG: &[u8; 2] = b"AF";

/// In-flight counts per endpoint address for one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlightTable {
    /// Worker clock (ms) at the last write: readers drop tables that stopped beating.
    pub heartbeat_ms: u64,
    /// Sorted by address, no zero entries.
    entries: Vec<(String, InFlight)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    BadMagic,
    UnsupportedVersion { found: u8, supported: u8 },
    Truncated,
    BadAddress,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::BadMagic => write!(f, "in-flight table: not an in-flight table (bad magic)"),
            TableError::UnsupportedVersion { found, supported } => {
                write!(f, "in-flight table: format version {found}, this build reads {supported}")
            }
            TableError::Truncated => write!(f, "in-flight table: truncated"),
            TableError::BadAddress => write!(f, "in-flight table: address is not UTF-8"),
        }
    }
}

impl InFlightTable {
    pub fn get(&self, address: &str) -> InFlight {
        self.position(address).ok().and_then(|i| self.entries.get(i)).map(|(_, f)| *f).unwrap_or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, InFlight)> {
        self.entries.iter().map(|(a, f)| (a.as_str(), *f))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counts a request routed to `address` carrying an estimated `tokens`, of which `prompt_tokens`
    /// wait for the first token.
    pub fn start(&mut self, address: &str, tokens: u64, prompt_tokens: u64) {
        let mut added = InFlight::default();
        added.add(tokens);
        added.await_first_token(prompt_tokens);
        match self.position(address) {
            Ok(i) => {
                if let Some((_, f)) = self.entries.get_mut(i) {
                    f.merge(added);
                }
            }
            Err(i) => self.entries.insert(i, (String::from(address), added)),
        }
    }

    /// A request started with [`InFlightTable::start`] produced its first token: its `prompt_tokens`
    /// no longer wait. Unknown addresses are ignored.
    pub fn first_token(&mut self, address: &str, prompt_tokens: u64) {
        if let Some((_, f)) = self.position(address).ok().and_then(|i| self.entries.get_mut(i)) {
            f.first_token(prompt_tokens);
        }
    }

    /// Ends a request started with [`InFlightTable::start`], `awaiting` of its prompt tokens still
    /// waiting for a first token (0 once [`InFlightTable::first_token`] released them); unknown
    /// addresses are ignored.
    pub fn finish(&mut self, address: &str, tokens: u64, awaiting: u64) {
        if let Ok(i) = self.position(address) {
            let now_zero = match self.entries.get_mut(i) {
                Some((_, f)) => {
                    f.remove(tokens);
                    f.first_token(awaiting);
                    f.requests == 0
                }
                None => false,
            };
            if now_zero {
                self.entries.remove(i);
            }
        }
    }

    fn position(&self, address: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(a, _)| a.as_str().cmp(address))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.entries.len() * 40);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.heartbeat_ms.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (addr, f) in &self.entries {
            // Addresses are `ip:port` (< 64 bytes); anything longer cannot be a real address.
            let a = addr.as_bytes().get(..usize::from(u16::MAX)).unwrap_or(addr.as_bytes());
            out.extend_from_slice(&(a.len() as u16).to_le_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(&f.requests.to_le_bytes());
            out.extend_from_slice(&f.tokens.to_le_bytes());
        }
        out.extend_from_slice(AWAITING_TAG);
        for (_, f) in &self.entries {
            out.extend_from_slice(&f.awaiting_first_token.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<InFlightTable, TableError> {
        let mut r = Reader::new(bytes);
        if r.take(2) != Some(MAGIC.as_slice()) {
            return Err(TableError::BadMagic);
        }
        let version = r.u8().ok_or(TableError::Truncated)?;
        if version != VERSION {
            return Err(TableError::UnsupportedVersion { found: version, supported: VERSION });
        }
        let heartbeat_ms = r.u64().ok_or(TableError::Truncated)?;
        let count = r.u32().ok_or(TableError::Truncated)? as usize;
        if count > r.remaining() / MIN_ENTRY {
            return Err(TableError::Truncated);
        }
        let mut entries: Vec<(String, InFlight)> = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u16().ok_or(TableError::Truncated)?);
            let addr = r.take(len).ok_or(TableError::Truncated)?;
            let addr = core::str::from_utf8(addr).map_err(|_| TableError::BadAddress)?;
            let requests = r.u32().ok_or(TableError::Truncated)?;
            let tokens = r.u64().ok_or(TableError::Truncated)?;
            entries.push((String::from(addr), InFlight { requests, tokens, awaiting_first_token: 0 }));
        }
        // The awaiting-first-token section: absent from an older writer, unknown from a later one.
        if r.remaining() >= AWAITING_TAG.len() && r.take(AWAITING_TAG.len()) == Some(AWAITING_TAG.as_slice())
        {
            for (_, f) in entries.iter_mut() {
                f.awaiting_first_token = r.u64().ok_or(TableError::Truncated)?;
            }
        }
        // A writer always sorts; re-sort instead of trusting bytes from shared memory.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        Ok(InFlightTable { heartbeat_ms, entries })
    }
}

/// Sums the tables of every live worker (heartbeat within `max_age_ms` of `now_ms`) into `into`, called
/// with each endpoint address. Tables that fail to decode are skipped and counted in the return value.
pub fn sum_live<'t>(
    tables: impl IntoIterator<Item = &'t [u8]>,
    now_ms: u64,
    max_age_ms: u64,
    mut into: impl FnMut(&str, InFlight),
) -> usize {
    let mut bad = 0;
    for bytes in tables {
        match InFlightTable::decode(bytes) {
            Ok(t) if now_ms.saturating_sub(t.heartbeat_ms) <= max_age_ms => {
                for (a, f) in t.iter() {
                    into(a, f);
                }
            }
            Ok(_) => {}
            Err(_) => bad += 1,
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    #[test]
    fn start_finish_round_trip() {
        let mut t = InFlightTable { heartbeat_ms: 42, ..Default::default() };
        t.start("10.0.0.2:8000", 100, 40);
        t.start("10.0.0.1:8000", 10, 4);
        t.start("10.0.0.2:8000", 50, 20);
        assert_eq!(t.get("10.0.0.2:8000"), InFlight { requests: 2, tokens: 150, awaiting_first_token: 60 });
        let d = InFlightTable::decode(&t.encode()).unwrap();
        assert_eq!(d, t);
        t.first_token("10.0.0.2:8000", 40);
        assert_eq!(t.get("10.0.0.2:8000").awaiting_first_token, 20);
        assert_eq!(InFlightTable::decode(&t.encode()).unwrap(), t);
        // The first request ends after its first token, the second before (a reset): each released once.
        t.finish("10.0.0.2:8000", 100, 0);
        t.finish("10.0.0.2:8000", 50, 20);
        t.finish("10.9.9.9:1", 5, 5);
        t.first_token("10.9.9.9:1", 5);
        assert_eq!(t.get("10.0.0.2:8000"), InFlight::default());
        assert_eq!(t.iter().count(), 1, "entries that reach zero are dropped");
    }

    /// The version-1 bytes a build without the awaiting-first-token section writes.
    fn v1_bytes(heartbeat_ms: u64, entries: &[(&str, u32, u64)]) -> Vec<u8> {
        let mut out = b"IF\x01".to_vec();
        out.extend_from_slice(&heartbeat_ms.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (a, requests, tokens) in entries {
            out.extend_from_slice(&(a.len() as u16).to_le_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(&requests.to_le_bytes());
            out.extend_from_slice(&tokens.to_le_bytes());
        }
        out
    }

    #[test]
    fn an_older_build_reads_this_table_and_this_build_reads_an_older_one() {
        let mut t = InFlightTable { heartbeat_ms: 7, ..Default::default() };
        t.start("10.0.0.1:80", 30, 12);
        t.start("10.0.0.2:80", 5, 2);
        let old = v1_bytes(7, &[("10.0.0.1:80", 1, 30), ("10.0.0.2:80", 1, 5)]);
        // An older build reads the entries and stops: what it reads is exactly the table it would write.
        let new = t.encode();
        assert_eq!(&new[..old.len()], old.as_slice());
        assert_eq!(&new[old.len()..old.len() + 2], b"AF");
        // This build reads an older worker's table as nothing awaiting a first token.
        let back = InFlightTable::decode(&old).unwrap();
        assert_eq!(back.get("10.0.0.1:80"), InFlight { requests: 1, tokens: 30, awaiting_first_token: 0 });
        // ... and a section it does not know (from a later build) the same way.
        let mut later = old.clone();
        later.extend_from_slice(b"ZZ\x01\x02");
        assert_eq!(InFlightTable::decode(&later).unwrap(), back);
        assert_eq!(InFlightTable::decode(&new).unwrap().get("10.0.0.1:80").awaiting_first_token, 12);
    }

    #[test]
    fn dead_workers_are_ignored_when_summing() {
        let mut live = InFlightTable { heartbeat_ms: 1_000, ..Default::default() };
        live.start("a:1", 10, 4);
        let mut dead = InFlightTable { heartbeat_ms: 100, ..Default::default() };
        dead.start("a:1", 10, 4);
        let (l, d) = (live.encode(), dead.encode());
        let mut sum = BTreeMap::new();
        let bad = sum_live([l.as_slice(), d.as_slice(), b"junk".as_slice()], 1_500, 600, |a, f| {
            sum.entry(String::from(a)).or_insert_with(InFlight::default).merge(f)
        });
        assert_eq!(bad, 1);
        assert_eq!(sum.get("a:1"), Some(&InFlight { requests: 1, tokens: 10, awaiting_first_token: 4 }));
    }

    #[test]
    fn errors() {
        assert_eq!(InFlightTable::decode(b""), Err(TableError::BadMagic));
        assert_eq!(
            InFlightTable::decode(b"IF\x09"),
            Err(TableError::UnsupportedVersion { found: 9, supported: 1 })
        );
        let mut t = InFlightTable::default();
        t.start("10.0.0.1:80", 1, 1);
        let enc = t.encode();
        // Cut at the end of the entries, or inside the section's tag, it reads as an older build's table.
        let entries_end = enc.len() - 2 - 8;
        for cut in 0..enc.len() {
            let ok = InFlightTable::decode(&enc[..cut]).is_ok();
            assert_eq!(ok, (entries_end..entries_end + 2).contains(&cut), "cut at {cut}");
        }
        // A count that claims more entries than bytes exist must not allocate for them.
        let mut huge = enc[..11].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(InFlightTable::decode(&huge), Err(TableError::Truncated));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = InFlightTable::decode(&bytes);
        }

        #[test]
        fn counts_match_a_model(ops in proptest::collection::vec((0u8..4, 0u8..3, 0u64..1000), 0..64)) {
            let mut t = InFlightTable::default();
            // Per endpoint: the requests in flight, each (tokens, prompt tokens still awaiting).
            let mut model: BTreeMap<u8, Vec<(u64, u64)>> = BTreeMap::new();
            for (ep, op, tok) in ops {
                let addr = alloc::format!("10.0.0.{ep}:80");
                let reqs = model.entry(ep).or_default();
                match (op, reqs.last_mut()) {
                    (0, _) => {
                        t.start(&addr, tok, tok / 3);
                        reqs.push((tok, tok / 3));
                    }
                    // Only release what was started, once, as the filter does.
                    (1, Some(last)) if last.1 > 0 => {
                        t.first_token(&addr, last.1);
                        last.1 = 0;
                    }
                    (2, Some(_)) => {
                        if let Some((tok, awaiting)) = reqs.pop() {
                            t.finish(&addr, tok, awaiting);
                        }
                    }
                    _ => {}
                }
            }
            let back = InFlightTable::decode(&t.encode()).unwrap();
            for (ep, reqs) in &model {
                let f = back.get(&alloc::format!("10.0.0.{ep}:80"));
                prop_assert_eq!(f.requests as usize, reqs.len());
                prop_assert_eq!(f.tokens, reqs.iter().map(|r| r.0).sum::<u64>());
                prop_assert_eq!(f.awaiting_first_token, reqs.iter().map(|r| r.1).sum::<u64>());
            }
        }
    }
}
