//! Who the proxy's worker VMs are: a unique id per VM from a CAS counter, and a directory of ids that
//! readers walk to find every worker's in-flight table and prefix queue.
//!
//! Ids come from `get` + CAS `set` on one counter key, so two VMs starting together cannot get the same id
//! once the key exists. (Envoy creates a missing key whatever the CAS, so the very first two claims on an
//! empty store can race; joining the directory then detects a taken id and claims again.)

use crate::host::{Host, HostError};
use crate::keys::Keys;
use std::vec::Vec;

/// Bounded retries for CAS loops: contention is a handful of workers, never unbounded.
const CAS_ATTEMPTS: usize = 32;

/// Claims a fresh worker id (1, 2, ...) and adds it to the directory.
pub fn register(host: &dyn Host, keys: &Keys) -> Result<u32, HostError> {
    for _ in 0..CAS_ATTEMPTS {
        let id = claim_id(host, keys)?;
        if join(host, keys, id)? {
            return Ok(id);
        }
    }
    Err(HostError::CasMismatch)
}

/// A fresh id without a directory entry (a collector VM that takes part in the election only).
pub fn claim_id(host: &dyn Host, keys: &Keys) -> Result<u32, HostError> {
    for _ in 0..CAS_ATTEMPTS {
        let (last, cas) = match host.shared_get(&keys.worker_ids)? {
            Some(v) => (decode_u32(&v.value).unwrap_or(0), v.cas),
            None => (0, None),
        };
        let id = last.wrapping_add(1).max(1);
        match host.shared_set(&keys.worker_ids, &id.to_le_bytes(), cas) {
            Ok(()) => return Ok(id),
            Err(HostError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(HostError::CasMismatch)
}

/// Adds `id` to the directory; `Ok(false)` if it is already there (someone else got the same id).
fn join(host: &dyn Host, keys: &Keys, id: u32) -> Result<bool, HostError> {
    update(host, keys, |ids| {
        if ids.contains(&id) {
            return None;
        }
        ids.push(id);
        Some(())
    })
    .map(|changed| changed.is_some())
}

/// Removes workers found dead from the directory.
pub fn prune(host: &dyn Host, keys: &Keys, dead: &[u32]) -> Result<(), HostError> {
    update(host, keys, |ids| {
        let before = ids.len();
        ids.retain(|i| !dead.contains(i));
        (ids.len() != before).then_some(())
    })
    .map(|_| ())
}

/// The directory as stored (unreadable bytes read as empty: workers re-join on their heartbeat).
pub fn read(host: &dyn Host, keys: &Keys) -> Result<Vec<u32>, HostError> {
    Ok(host.shared_get(&keys.workers)?.map(|v| decode_ids(&v.value)).unwrap_or_default())
}

/// Makes sure `id` is listed (after a prune by a worker that thought us dead).
pub fn ensure_listed(host: &dyn Host, keys: &Keys, id: u32) -> Result<(), HostError> {
    join(host, keys, id).map(|_| ())
}

/// Read-modify-write of the directory with CAS; `change` returns `None` when there is nothing to write.
fn update(
    host: &dyn Host,
    keys: &Keys,
    mut change: impl FnMut(&mut Vec<u32>) -> Option<()>,
) -> Result<Option<()>, HostError> {
    for _ in 0..CAS_ATTEMPTS {
        let (mut ids, cas) = match host.shared_get(&keys.workers)? {
            Some(v) => (decode_ids(&v.value), v.cas),
            None => (Vec::new(), None),
        };
        if change(&mut ids).is_none() {
            return Ok(None);
        }
        match host.shared_set(&keys.workers, &encode_ids(&ids), cas) {
            Ok(()) => return Ok(Some(())),
            Err(HostError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(HostError::CasMismatch)
}

pub fn encode_ids(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

pub fn decode_ids(bytes: &[u8]) -> Vec<u32> {
    let mut ids: Vec<u32> = bytes.chunks_exact(4).filter_map(decode_u32).filter(|i| *i != 0).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn decode_u32(bytes: &[u8]) -> Option<u32> {
    bytes.try_into().ok().map(u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn ids_are_unique_and_listed() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let a = register(&host, &keys).unwrap();
        let b = register(&host, &keys).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(read(&host, &keys).unwrap(), vec![1, 2]);
        prune(&host, &keys, &[1]).unwrap();
        assert_eq!(read(&host, &keys).unwrap(), vec![2]);
        ensure_listed(&host, &keys, 1).unwrap();
        assert_eq!(read(&host, &keys).unwrap(), vec![1, 2]);
    }

    #[test]
    fn a_taken_id_is_skipped() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        // Another VM listed itself as 1 while the counter was lost (the empty-store race).
        host.put(&keys.workers, &encode_ids(&[1]));
        assert_eq!(register(&host, &keys).unwrap(), 2);
    }

    #[test]
    fn garbage_directory_reads_as_ids_it_can_make_out() {
        assert_eq!(decode_ids(b"\x02\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00xy"), vec![2]);
        assert!(decode_ids(b"").is_empty());
    }

    #[test]
    fn host_failures_surface_as_errors() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.world.borrow_mut().fail_sets = Some((HostError::Status(10), 1));
        assert_eq!(register(&host, &keys), Err(HostError::Status(10)));
    }
}
