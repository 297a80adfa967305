//! The KV block pool: reference counts, a hash → block map for prefix caching, and an LRU free queue.
//!
//! Freed blocks keep their hash until they are reused, so a preempted or repeated prompt can hit them;
//! allocation takes the least recently freed block first, exactly the order vLLM evicts cached blocks in.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const NIL: u32 = u32::MAX;

/// Keys here are block hashes (already well mixed) and request ids (sequential); one multiply by an odd
/// constant spreads both over the high bits the table probes with, at a fraction of SipHash's cost.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type FastMap<V> = HashMap<u64, V, BuildHasherDefault<FastHasher>>;

#[derive(Clone, Copy)]
struct Block {
    /// 0 = not cached.
    hash: u64,
    refs: u32,
    prev: u32,
    next: u32,
}

pub(crate) struct BlockPool {
    blocks: Vec<Block>,
    cached: FastMap<u32>,
    head: u32,
    tail: u32,
    free: u32,
}

impl BlockPool {
    pub(crate) fn new(n: u32) -> BlockPool {
        let blocks = (0..n)
            .map(|i| Block {
                hash: 0,
                refs: 0,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == n { NIL } else { i + 1 },
            })
            .collect();
        BlockPool {
            blocks,
            cached: FastMap::default(),
            head: if n == 0 { NIL } else { 0 },
            tail: n.checked_sub(1).unwrap_or(NIL),
            free: n,
        }
    }

    /// Blocks not referenced by any request (cached-but-unreferenced ones included).
    pub(crate) fn free_count(&self) -> u32 {
        self.free
    }

    /// The cached block holding `hash`, if any.
    pub(crate) fn lookup(&self, hash: u64) -> Option<u32> {
        self.cached.get(&hash).copied()
    }

    /// Whether taking `block` would remove it from the free queue.
    pub(crate) fn is_free(&self, block: u32) -> bool {
        self.blocks.get(block as usize).is_some_and(|b| b.refs == 0)
    }

    /// Takes the least recently freed block, forgetting whatever prefix it cached.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let id = self.head;
        self.unlink(id)?;
        let b = self.blocks.get_mut(id as usize)?;
        b.refs = 1;
        let old = std::mem::take(&mut b.hash);
        if old != 0 && self.cached.get(&old) == Some(&id) {
            self.cached.remove(&old);
        }
        Some(id)
    }

    /// Adds a reference to a cached block found by [`Self::lookup`].
    pub(crate) fn touch(&mut self, block: u32) {
        if self.is_free(block) {
            let _ = self.unlink(block);
        }
        if let Some(b) = self.blocks.get_mut(block as usize) {
            b.refs = b.refs.saturating_add(1);
        }
    }

    /// Drops a reference; the last one sends the block to the back of the free queue, hash kept.
    pub(crate) fn release(&mut self, block: u32) {
        let Some(b) = self.blocks.get_mut(block as usize) else { return };
        if b.refs == 0 {
            return;
        }
        b.refs -= 1;
        if b.refs == 0 {
            self.push_back(block);
        }
    }

    /// Names `block` as holding the prefix `hash`, unless another block already does (then the first one
    /// stays the cached copy, as in vLLM).
    pub(crate) fn register(&mut self, block: u32, hash: u64) {
        if hash == 0 || self.cached.contains_key(&hash) {
            return;
        }
        let Some(b) = self.blocks.get_mut(block as usize) else { return };
        if b.hash != 0 {
            return;
        }
        b.hash = hash;
        self.cached.insert(hash, block);
    }

    fn unlink(&mut self, id: u32) -> Option<()> {
        let b = *self.blocks.get(id as usize)?;
        match self.blocks.get_mut(b.prev as usize) {
            Some(p) => p.next = b.next,
            None => self.head = b.next,
        }
        match self.blocks.get_mut(b.next as usize) {
            Some(n) => n.prev = b.prev,
            None => self.tail = b.prev,
        }
        let me = self.blocks.get_mut(id as usize)?;
        me.prev = NIL;
        me.next = NIL;
        self.free -= 1;
        Some(())
    }

    fn push_back(&mut self, id: u32) {
        let tail = self.tail;
        if let Some(me) = self.blocks.get_mut(id as usize) {
            me.prev = tail;
            me.next = NIL;
        } else {
            return;
        }
        match self.blocks.get_mut(tail as usize) {
            Some(t) => t.next = id,
            None => self.head = id,
        }
        self.tail = id;
        self.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_blocks_keep_their_hash_until_reused_in_lru_order() {
        let mut pool = BlockPool::new(3);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.register(a, 11);
        pool.register(b, 22);
        assert_eq!(pool.free_count(), 1);
        pool.release(a);
        pool.release(b);
        assert_eq!(pool.free_count(), 3);
        assert_eq!(pool.lookup(11), Some(a));
        // A hit takes the block out of the free queue without forgetting the hash.
        pool.touch(b);
        assert_eq!((pool.free_count(), pool.lookup(22)), (2, Some(b)));
        // Allocation goes oldest-free first: the never-used block 2, then `a`, whose hash is then gone.
        assert_eq!(pool.allocate(), Some(2));
        assert_eq!(pool.allocate(), Some(a));
        assert_eq!(pool.lookup(11), None);
        assert_eq!(pool.allocate(), None);
        pool.release(b);
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.lookup(22), None);
    }

    #[test]
    fn shared_block_returns_to_the_free_queue_after_its_last_reference() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        pool.register(a, 5);
        pool.touch(a);
        pool.release(a);
        assert_eq!(pool.free_count(), 1);
        pool.release(a);
        assert_eq!(pool.free_count(), 2);
        pool.release(a); // extra release is ignored, not double-freed
        assert_eq!(pool.free_count(), 2);
    }
}
