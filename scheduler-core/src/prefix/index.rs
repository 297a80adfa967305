//! The approximate prefix index: which endpoints probably hold which prompt blocks in their KV cache.
//!
//! Mirrors what each model server does (an LRU of KV blocks per server) without asking it: when the
//! gateway sends a prompt to an endpoint it records the prompt's block hashes there, and each endpoint's
//! LRU forgets the oldest ones once the server's cache would be full.
//!
//! Layout, chosen so one request costs O(blocks) and memory stays bounded by Σ capacities:
//! - `holders`: block hash → the endpoints that have it, each with the slot of that hash in the endpoint's
//!   LRU (so touching or evicting needs no per-endpoint hash map);
//! - per endpoint, a slab of slots linked into a most-recent-first list by `u32` indices. The slab only
//!   ever holds live entries, so its length is the LRU's length.
//!
//! Endpoint addresses are interned to `u32` ids; a departed endpoint's id is reused. Nothing here
//! iterates a hash map where order could leak into a result, so matches are deterministic.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use hashbrown::HashMap;

/// GIE's per-server default: 64 GB of KV at 128 KB per token is 500K tokens, or 31,250 blocks of 16.
pub const DEFAULT_LRU_CAPACITY_PER_SERVER: usize = 31_250;
/// Upper bound on one endpoint's LRU, whatever a server reports: 2M blocks is 32M tokens at 16 per
/// block, beyond any single server today, and caps the index at ~100 MB per endpoint in the worst case.
pub const MAX_LRU_CAPACITY_PER_SERVER: usize = 1 << 21;

type EndpointId = u32;
/// "No slot" in the intrusive list.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    hash: u64,
    /// Towards the most recent end.
    prev: u32,
    /// Towards the least recent end.
    next: u32,
}

/// One endpoint's LRU of block hashes.
#[derive(Debug)]
struct EndpointLru {
    address: String,
    capacity: usize,
    slots: Vec<Slot>,
    head: u32,
    tail: u32,
}

impl EndpointLru {
    fn new(address: String, capacity: usize) -> EndpointLru {
        EndpointLru { address, capacity, slots: Vec::new(), head: NIL, tail: NIL }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn unlink(&mut self, slot: u32) {
        let Some(&Slot { prev, next, .. }) = self.slots.get(slot as usize) else { return };
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.prev = NIL;
            s.next = old_head;
        } else {
            return;
        }
        match self.slots.get_mut(old_head as usize) {
            Some(h) => h.prev = slot,
            None => self.tail = slot,
        }
        self.head = slot;
    }

    fn move_to_front(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    /// Hashes from most to least recently used.
    fn hashes_mru_first(&self) -> impl Iterator<Item = u64> + '_ {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            let s = self.slots.get(cur as usize)?;
            cur = s.next;
            Some(s.hash)
        })
        .take(self.slots.len())
    }
}

/// The endpoints holding one hash, with the slot of the hash in each endpoint's LRU. Most hashes live on
/// one endpoint, so that case needs no heap allocation.
#[derive(Clone, Debug)]
enum Holders {
    One(EndpointId, u32),
    Many(Vec<(EndpointId, u32)>),
}

impl Holders {
    fn iter(&self) -> impl Iterator<Item = (EndpointId, u32)> + '_ {
        let (one, many) = match self {
            Holders::One(id, slot) => (Some((*id, *slot)), &[][..]),
            Holders::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    fn slot_of(&self, id: EndpointId) -> Option<u32> {
        self.iter().find(|(i, _)| *i == id).map(|(_, s)| s)
    }

    fn set(&mut self, id: EndpointId, slot: u32) {
        match self {
            Holders::One(i, s) if *i == id => *s = slot,
            Holders::One(i, s) => *self = Holders::Many(vec![(*i, *s), (id, slot)]),
            Holders::Many(v) => match v.iter_mut().find(|(i, _)| *i == id) {
                Some(e) => e.1 = slot,
                None => v.push((id, slot)),
            },
        }
    }

    /// Removes `id`; returns true when nobody holds the hash any more.
    fn remove(&mut self, id: EndpointId) -> bool {
        match self {
            Holders::One(i, _) => *i == id,
            Holders::Many(v) => {
                v.retain(|(i, _)| *i != id);
                match v.as_slice() {
                    [] => true,
                    [(i, s)] => {
                        *self = Holders::One(*i, *s);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

fn remove_holder(holders: &mut HashMap<u64, Holders>, hash: u64, id: EndpointId) {
    if let Some(h) = holders.get_mut(&hash) {
        if h.remove(id) {
            holders.remove(&hash);
        }
    }
}

/// Size of the index, for metrics and memory accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Distinct block hashes held by at least one endpoint.
    pub hashes: usize,
    /// (hash, endpoint) pairs, i.e. the sum of the LRU lengths.
    pub entries: usize,
    pub endpoints: usize,
    /// Rough heap use in bytes (table buckets and slabs, not allocator overhead).
    pub approx_bytes: usize,
}

/// Block hash → endpoints, with a bounded LRU per endpoint. See the module documentation.
#[derive(Debug, Default)]
pub struct PrefixIndex {
    holders: HashMap<u64, Holders>,
    ids: HashMap<String, EndpointId>,
    /// Indexed by endpoint id; `None` for a free id.
    endpoints: Vec<Option<EndpointLru>>,
    free_ids: Vec<EndpointId>,
}

impl PrefixIndex {
    pub fn new() -> PrefixIndex {
        PrefixIndex::default()
    }

    /// Records that `endpoint_addr` now holds the blocks `hashes` (a request's chain, first block
    /// first), in an LRU of at most `capacity` hashes (clamped to 1..=[`MAX_LRU_CAPACITY_PER_SERVER`];
    /// a changed capacity applies from now on, evicting at once if it shrank).
    ///
    /// Idempotent: recording the same hashes again only refreshes their recency, so records streamed
    /// from other workers can be applied twice. The chain is touched last block first so the first block
    /// ends up most recent: like the model server, the tail of a prompt is forgotten before its head.
    pub fn record(&mut self, endpoint_addr: &str, hashes: &[u64], capacity: usize) {
        let capacity = capacity.clamp(1, MAX_LRU_CAPACITY_PER_SERVER);
        let Some(id) = self.intern(endpoint_addr, capacity) else { return };
        self.set_capacity(id, capacity);
        let Some(Some(lru)) = self.endpoints.get_mut(id as usize) else { return };
        for &hash in hashes.iter().rev() {
            if let Some(slot) = self.holders.get(&hash).and_then(|h| h.slot_of(id)) {
                lru.move_to_front(slot);
                continue;
            }
            let slot = if lru.len() >= lru.capacity {
                // Reuse the least recent slot for the new hash.
                let victim = lru.tail;
                let Some(old) = lru.slots.get(victim as usize).map(|s| s.hash) else { return };
                remove_holder(&mut self.holders, old, id);
                lru.unlink(victim);
                if let Some(s) = lru.slots.get_mut(victim as usize) {
                    s.hash = hash;
                }
                victim
            } else {
                let Ok(slot) = u32::try_from(lru.slots.len()) else { return };
                lru.slots.push(Slot { hash, prev: NIL, next: NIL });
                slot
            };
            lru.push_front(slot);
            match self.holders.get_mut(&hash) {
                Some(h) => h.set(id, slot),
                None => {
                    self.holders.insert(hash, Holders::One(id, slot));
                }
            }
        }
    }

    /// GIE's longest-prefix walk: for each hash in order, every endpoint holding it gets +1; the walk
    /// stops at the first hash no endpoint (in or out of `endpoints`) holds. Returns one count per entry
    /// of `endpoints`; unknown endpoints get 0. Costs O(hashes × holders per hash), never O(endpoints ×
    /// hashes).
    pub fn match_counts(&self, hashes: &[u64], endpoints: &[&str]) -> Vec<u32> {
        let mut counts = vec![0u32; endpoints.len()];
        // Endpoint id → position in `endpoints` (dense, ids are small).
        let mut position = vec![NIL; self.endpoints.len()];
        let mut any_known = false;
        for (pos, addr) in endpoints.iter().enumerate() {
            let (Some(&id), Ok(pos)) = (self.ids.get(*addr), u32::try_from(pos)) else { continue };
            if let Some(p) = position.get_mut(id as usize) {
                *p = pos;
                any_known = true;
            }
        }
        if !any_known {
            return counts;
        }
        for hash in hashes {
            let Some(holders) = self.holders.get(hash) else { break };
            for (id, _) in holders.iter() {
                if let Some(c) = position.get(id as usize).and_then(|&p| counts.get_mut(p as usize)) {
                    *c = c.saturating_add(1);
                }
            }
        }
        counts
    }

    /// Forgets every endpoint for which `keep(address)` is false (endpoints that left the pool).
    pub fn retain_endpoints(&mut self, mut keep: impl FnMut(&str) -> bool) {
        for (id, entry) in self.endpoints.iter_mut().enumerate() {
            let Some(lru) = entry else { continue };
            if keep(&lru.address) {
                continue;
            }
            let Ok(id) = EndpointId::try_from(id) else { continue };
            for slot in &lru.slots {
                remove_holder(&mut self.holders, slot.hash, id);
            }
            self.ids.remove(&lru.address);
            self.free_ids.push(id);
            *entry = None;
        }
    }

    /// Forgets one endpoint.
    pub fn remove_endpoint(&mut self, endpoint_addr: &str) {
        self.retain_endpoints(|a| a != endpoint_addr);
    }

    /// Distinct block hashes held by at least one endpoint.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Endpoints with an LRU (recorded at least once and not removed since).
    pub fn endpoint_count(&self) -> usize {
        self.ids.len()
    }

    /// Number of hashes in the endpoint's LRU, `None` if the endpoint is unknown.
    pub fn endpoint_len(&self, endpoint_addr: &str) -> Option<usize> {
        self.lru(endpoint_addr).map(EndpointLru::len)
    }

    /// Capacity of the endpoint's LRU, `None` if the endpoint is unknown.
    pub fn endpoint_capacity(&self, endpoint_addr: &str) -> Option<usize> {
        self.lru(endpoint_addr).map(|l| l.capacity)
    }

    /// True when the endpoint's LRU holds `hash`.
    pub fn contains(&self, endpoint_addr: &str, hash: u64) -> bool {
        match (self.ids.get(endpoint_addr), self.holders.get(&hash)) {
            (Some(&id), Some(h)) => h.slot_of(id).is_some(),
            _ => false,
        }
    }

    /// Addresses of the endpoints the index knows, in id order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> + '_ {
        self.endpoints.iter().flatten().map(|l| l.address.as_str())
    }

    pub fn stats(&self) -> IndexStats {
        let entries: usize = self.endpoints.iter().flatten().map(EndpointLru::len).sum();
        let slab: usize = self.endpoints.iter().flatten().map(|l| l.slots.capacity()).sum();
        let spilled: usize = self
            .holders
            .values()
            .map(|h| match h {
                Holders::One(..) => 0,
                Holders::Many(v) => v.capacity(),
            })
            .sum();
        let approx_bytes = self.holders.capacity() * (size_of::<u64>() + size_of::<Holders>() + 1)
            + spilled * size_of::<(EndpointId, u32)>()
            + slab * size_of::<Slot>()
            + self.endpoints.capacity() * size_of::<Option<EndpointLru>>();
        IndexStats { hashes: self.holders.len(), entries, endpoints: self.ids.len(), approx_bytes }
    }

    fn lru(&self, endpoint_addr: &str) -> Option<&EndpointLru> {
        let id = *self.ids.get(endpoint_addr)?;
        self.endpoints.get(id as usize)?.as_ref()
    }

    fn intern(&mut self, endpoint_addr: &str, capacity: usize) -> Option<EndpointId> {
        if let Some(&id) = self.ids.get(endpoint_addr) {
            return Some(id);
        }
        let lru = EndpointLru::new(String::from(endpoint_addr), capacity);
        let id = match self.free_ids.pop() {
            Some(id) => {
                *self.endpoints.get_mut(id as usize)? = Some(lru);
                id
            }
            None => {
                let id = EndpointId::try_from(self.endpoints.len()).ok().filter(|&id| id != NIL)?;
                self.endpoints.push(Some(lru));
                id
            }
        };
        self.ids.insert(String::from(endpoint_addr), id);
        Some(id)
    }

    /// Applies a new capacity; when it shrinks, evicts the least recent hashes and compacts the slab so
    /// memory follows the new bound.
    fn set_capacity(&mut self, id: EndpointId, capacity: usize) {
        let Some(Some(lru)) = self.endpoints.get_mut(id as usize) else { return };
        let old_len = lru.len();
        lru.capacity = capacity;
        if old_len <= capacity {
            return;
        }
        let order: Vec<u64> = lru.hashes_mru_first().collect();
        let (kept, evicted) = order.split_at(capacity.min(order.len()));
        for &hash in evicted {
            remove_holder(&mut self.holders, hash, id);
        }
        lru.slots = Vec::with_capacity(kept.len());
        lru.head = NIL;
        lru.tail = NIL;
        for (i, &hash) in kept.iter().enumerate() {
            let Ok(slot) = u32::try_from(i) else { break };
            let prev = slot.checked_sub(1).unwrap_or(NIL);
            let next = if i + 1 < kept.len() { slot.saturating_add(1) } else { NIL };
            lru.slots.push(Slot { hash, prev, next });
            if let Some(h) = self.holders.get_mut(&hash) {
                h.set(id, slot);
            }
        }
        if !kept.is_empty() {
            lru.head = 0;
            lru.tail = u32::try_from(kept.len() - 1).unwrap_or(NIL);
        }
    }

    /// Checks every internal invariant; used by the tests after random operation sequences.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let mut pairs = 0usize;
        for (id, entry) in self.endpoints.iter().enumerate() {
            let Some(lru) = entry else { continue };
            let id = id as u32;
            if lru.len() > lru.capacity {
                return Err(format!("{} holds {} > capacity {}", lru.address, lru.len(), lru.capacity));
            }
            if self.ids.get(&lru.address) != Some(&id) {
                return Err(format!("{} not interned as {id}", lru.address));
            }
            let walked: Vec<u64> = lru.hashes_mru_first().collect();
            if walked.len() != lru.len() {
                return Err(format!("{}: list has {} of {} slots", lru.address, walked.len(), lru.len()));
            }
            for (slot, s) in lru.slots.iter().enumerate() {
                let held = self.holders.get(&s.hash).and_then(|h| h.slot_of(id));
                if held != Some(slot as u32) {
                    return Err(format!("{}: slot {slot} not in holders ({held:?})", lru.address));
                }
            }
            pairs += lru.len();
        }
        let held: usize = self.holders.values().map(|h| h.iter().count()).sum();
        if held != pairs {
            return Err(format!("holders count {held} pairs, LRUs {pairs}"));
        }
        if self.ids.len() != self.endpoints.iter().flatten().count() {
            return Err(format!(
                "{} ids for {} LRUs",
                self.ids.len(),
                self.endpoints.iter().flatten().count()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const A: &str = "10.0.0.1:8000";
    const B: &str = "10.0.0.2:8000";
    const C: &str = "10.0.0.3:8000";

    #[test]
    fn walk_counts_blocks_per_endpoint_and_stops_at_the_first_unknown_hash() {
        let mut ix = PrefixIndex::new();
        ix.record(A, &[1, 2, 3, 4], 100);
        ix.record(B, &[1, 2], 100);
        assert_eq!(ix.match_counts(&[1, 2, 3, 4, 5], &[A, B, C]), [4, 2, 0]);
        // Hash 9 is held by nobody: the walk stops there even though A holds 3 and 4 afterwards.
        assert_eq!(ix.match_counts(&[1, 9, 3, 4], &[A, B, C]), [1, 1, 0]);
        assert_eq!(ix.match_counts(&[9, 1, 2], &[A, B]), [0, 0]);
        // Hashes held only by an endpoint outside the candidate list still keep the walk going.
        assert_eq!(ix.match_counts(&[1, 2, 3], &[B]), [2]);
        assert_eq!(ix.match_counts(&[], &[A]), [0]);
        assert!(ix.match_counts(&[1], &[]).is_empty());
        ix.check_invariants().unwrap();
    }

    #[test]
    fn recording_twice_changes_nothing_visible() {
        let mut ix = PrefixIndex::new();
        ix.record(A, &[1, 2, 3], 10);
        let before = ix.stats();
        ix.record(A, &[1, 2, 3], 10);
        assert_eq!(ix.stats(), before);
        assert_eq!(ix.endpoint_len(A), Some(3));
        ix.check_invariants().unwrap();
    }

    #[test]
    fn lru_eviction_removes_the_endpoint_from_the_hash() {
        let mut ix = PrefixIndex::new();
        ix.record(A, &[1, 2, 3], 4);
        ix.record(B, &[1], 4);
        // A new prompt of two blocks on A: the least recent of A's hashes (3, then 2) go.
        ix.record(A, &[7, 8], 4);
        assert_eq!(ix.endpoint_len(A), Some(4));
        assert!(ix.contains(A, 1) && ix.contains(A, 7) && ix.contains(A, 8));
        assert!(!ix.contains(A, 3));
        // Hash 3 had only A: it is gone from the index; hash 1 is still on both.
        assert_eq!(ix.match_counts(&[1, 2, 3], &[A, B]), [2, 1]);
        ix.record(A, &[10, 11, 12, 13], 4);
        assert_eq!(ix.match_counts(&[1], &[A, B]), [0, 1]);
        assert_eq!(ix.len(), 5); // 1 (B) + 10..=13 (A)
        ix.check_invariants().unwrap();
    }

    #[test]
    fn the_head_of_a_prompt_outlives_its_tail() {
        let mut ix = PrefixIndex::new();
        ix.record(A, &[1, 2, 3, 4, 5, 6], 4);
        assert_eq!(ix.match_counts(&[1, 2, 3, 4, 5, 6], &[A]), [4]);
        ix.check_invariants().unwrap();
    }

    #[test]
    fn capacity_can_shrink_and_grow() {
        let mut ix = PrefixIndex::new();
        ix.record(A, &[1, 2, 3, 4, 5, 6], 100);
        ix.record(A, &[7], 3); // metrics now say the server is smaller
        assert_eq!(ix.endpoint_capacity(A), Some(3));
        assert_eq!(ix.endpoint_len(A), Some(3));
        assert!(ix.contains(A, 7) && ix.contains(A, 1) && ix.contains(A, 2));
        assert!(!ix.contains(A, 3));
        ix.check_invariants().unwrap();
        ix.record(A, &[8, 9], 5);
        assert_eq!(ix.endpoint_len(A), Some(5));
        ix.record(A, &[1], 0); // clamped to 1
        assert_eq!(ix.endpoint_len(A), Some(1));
        assert!(ix.contains(A, 1));
        ix.check_invariants().unwrap();
    }

    #[test]
    fn retain_drops_departed_endpoints_and_reuses_their_ids() {
        let mut ix = PrefixIndex::new();
        ix.record(A, &[1, 2], 10);
        ix.record(B, &[1, 3], 10);
        ix.retain_endpoints(|a| a != A);
        assert_eq!(ix.endpoint_count(), 1);
        assert_eq!(ix.endpoint_len(A), None);
        assert_eq!(ix.match_counts(&[1, 2], &[A, B]), [0, 1]);
        assert_eq!(ix.len(), 2); // 1 and 3, both on B
        ix.record(C, &[1, 2], 10); // takes A's old id
        assert_eq!(ix.match_counts(&[1, 2], &[A, B, C]), [0, 1, 2]);
        assert_eq!(ix.endpoints().collect::<Vec<_>>(), [C, B]);
        ix.remove_endpoint(B);
        ix.remove_endpoint(C);
        assert!(ix.is_empty());
        assert_eq!(ix.stats().entries, 0);
        ix.check_invariants().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Record(usize, Vec<u64>, usize),
        Match(Vec<u64>),
        Retain(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..5usize, proptest::collection::vec(0..40u64, 0..12), 0..10usize)
                .prop_map(|(e, h, c)| Op::Record(e, h, c)),
            2 => proptest::collection::vec(0..40u64, 0..12).prop_map(Op::Match),
            1 => any::<u8>().prop_map(Op::Retain),
        ]
    }

    proptest! {
        #[test]
        fn random_sequences_keep_the_index_consistent(ops in proptest::collection::vec(op(), 1..60)) {
            let addrs = ["a:1", "b:1", "c:1", "d:1", "e:1"];
            let mut ix = PrefixIndex::new();
            for op in ops {
                match op {
                    Op::Record(e, hashes, cap) => {
                        ix.record(addrs[e], &hashes, cap);
                        prop_assert!(ix.endpoint_len(addrs[e]).unwrap() <= cap.max(1));
                    }
                    Op::Match(hashes) => {
                        let counts = ix.match_counts(&hashes, &addrs);
                        prop_assert!(counts.iter().all(|&c| c as usize <= hashes.len()));
                    }
                    Op::Retain(mask) => ix.retain_endpoints(|a| {
                        let i = addrs.iter().position(|x| *x == a).unwrap();
                        mask & (1 << i) != 0
                    }),
                }
                if let Err(e) = ix.check_invariants() {
                    return Err(TestCaseError::fail(e));
                }
            }
        }
    }
}
