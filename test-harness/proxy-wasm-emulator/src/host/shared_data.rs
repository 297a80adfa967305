//! Process-wide shared data and shared queues as Envoy implements them (proxy-wasm-cpp-host): keyed by
//! `vm_id`, one global CAS counter, queues owned by the last VM that registered them.

use std::collections::{BTreeMap, VecDeque};

use super::abi::Status;
use super::VmId;

#[derive(Debug, Default)]
pub(crate) struct SharedData {
    /// vm_id → key → (value, cas).
    data: BTreeMap<String, BTreeMap<String, (Vec<u8>, u32)>>,
    /// Next cas to hand out: starts at 1 and skips 0 on wrap, so 0 always means "no cas".
    next_cas: u32,
}

impl SharedData {
    fn take_cas(&mut self) -> u32 {
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    pub(crate) fn get(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data.get(vm_id)?.get(key).cloned()
    }

    /// Envoy's rules: cas 0 writes unconditionally; a missing key is created whatever the cas; an existing
    /// key with a different non-zero cas is `CasMismatch`. Every successful write gets a fresh cas.
    pub(crate) fn set(&mut self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> Status {
        if let Some((_, current)) = self.data.get(vm_id).and_then(|m| m.get(key)) {
            if cas != 0 && cas != *current {
                return Status::CasMismatch;
            }
        }
        let fresh = self.take_cas();
        self.data.entry(vm_id.to_string()).or_default().insert(key.to_string(), (value.to_vec(), fresh));
        Status::Ok
    }

    /// All keys of one vm_id, for assertions.
    pub(crate) fn snapshot(&self, vm_id: &str) -> BTreeMap<String, (Vec<u8>, u32)> {
        self.data.get(vm_id).cloned().unwrap_or_default()
    }
}

/// Who receives `on_queue_ready` for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueOwner {
    pub vm: VmId,
    pub context_id: u32,
}

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: String,
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
}

#[derive(Debug, Default)]
pub(crate) struct SharedQueues {
    /// token → queue; tokens start at 1.
    queues: BTreeMap<u32, Queue>,
    next_token: u32,
}

impl SharedQueues {
    /// Registers (or re-registers) `(vm_id, name)`; the latest registrant becomes the owner.
    pub(crate) fn register(&mut self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        if let Some((token, q)) = self.queues.iter_mut().find(|(_, q)| q.vm_id == vm_id && q.name == name) {
            q.owner = owner;
            return *token;
        }
        self.next_token = self.next_token.wrapping_add(1).max(1);
        let token = self.next_token;
        let queue = Queue { vm_id: vm_id.to_string(), name: name.to_string(), owner, items: VecDeque::new() };
        self.queues.insert(token, queue);
        token
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues.iter().find(|(_, q)| q.vm_id == vm_id && q.name == name).map(|(t, _)| *t)
    }

    pub(crate) fn dequeue(&mut self, token: u32) -> Result<Vec<u8>, Status> {
        let q = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }

    /// Appends and returns who must be told (Envoy posts `on_queue_ready` to the owner's thread).
    pub(crate) fn enqueue(&mut self, token: u32, value: &[u8]) -> Result<QueueOwner, Status> {
        let q = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        q.items.push_back(value.to_vec());
        Ok(q.owner)
    }

    pub(crate) fn len(&self, vm_id: &str, name: &str) -> Option<usize> {
        self.queues.values().find(|q| q.vm_id == vm_id && q.name == name).map(|q| q.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_follows_envoy() {
        let mut s = SharedData::default();
        // A missing key is created whatever the cas, and the first cas handed out is 1.
        assert_eq!(s.set("epp", "k", b"a", 77), Status::Ok);
        assert_eq!(s.get("epp", "k"), Some((b"a".to_vec(), 1)));
        // A stale cas is refused; cas 0 always writes.
        assert_eq!(s.set("epp", "k", b"b", 5), Status::CasMismatch);
        assert_eq!(s.set("epp", "k", b"c", 0), Status::Ok);
        assert_eq!(s.set("epp", "k", b"d", 2), Status::Ok);
        assert_eq!(s.get("epp", "k"), Some((b"d".to_vec(), 3)));
        // One counter for every vm_id, and vm_ids do not see each other's keys.
        assert_eq!(s.set("other", "k", b"x", 0), Status::Ok);
        assert_eq!(s.get("other", "k"), Some((b"x".to_vec(), 4)));
        assert_eq!(s.get("nobody", "k"), None);
    }

    #[test]
    fn cas_counter_skips_zero_when_it_wraps() {
        let mut s = SharedData { next_cas: u32::MAX, ..SharedData::default() };
        assert_eq!(s.set("v", "a", b"", 0), Status::Ok);
        assert_eq!(s.set("v", "b", b"", 0), Status::Ok);
        assert_eq!(s.get("v", "a").map(|x| x.1), Some(u32::MAX));
        assert_eq!(s.get("v", "b").map(|x| x.1), Some(1));
    }

    #[test]
    fn queues_deliver_to_the_last_registrant() {
        let mut q = SharedQueues::default();
        let first = QueueOwner { vm: VmId(0), context_id: 1 };
        let second = QueueOwner { vm: VmId(1), context_id: 1 };
        let t = q.register("epp", "jobs", first);
        assert_eq!(q.register("epp", "jobs", second), t);
        assert_eq!(q.resolve("epp", "jobs"), Some(t));
        assert_eq!(q.resolve("other", "jobs"), None);
        assert_eq!(q.dequeue(t), Err(Status::Empty));
        assert_eq!(q.enqueue(t, b"x"), Ok(second));
        assert_eq!(q.dequeue(t), Ok(b"x".to_vec()));
        assert_eq!(q.enqueue(t + 1, b"x"), Err(Status::NotFound));
    }
}
