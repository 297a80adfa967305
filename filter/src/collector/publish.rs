//! Publishing a snapshot: write the snapshot key, then bump the generation key with CAS. Readers check the
//! generation first, so they never act on a generation whose snapshot is not written yet.

use crate::host::{Host, HostError};
use crate::keys::Keys;
use scheduler_core::model::PoolSnapshot;
use scheduler_core::snapshot_codec;

/// Stamps `snapshot` with the next generation and `now_ms`, and publishes it. Returns the generation.
pub fn publish_snapshot(host: &dyn Host, keys: &Keys, snapshot: &mut PoolSnapshot) -> Result<u64, HostError> {
    let (current, cas) = read_generation(host, keys)?;
    snapshot.generation = current.wrapping_add(1);
    snapshot.published_at_ms = host.now_ms();
    write(host, keys, &snapshot_codec::encode(snapshot), snapshot.generation, cas)
}

/// Publishes bytes already in `snapshot_codec` form (from the companion collector service) as they are.
pub fn publish_bytes(host: &dyn Host, keys: &Keys, bytes: &[u8]) -> Result<u64, HostError> {
    let (current, cas) = read_generation(host, keys)?;
    write(host, keys, bytes, current.wrapping_add(1), cas)
}

/// The published generation (0 when none or unreadable) and its CAS token.
fn read_generation(host: &dyn Host, keys: &Keys) -> Result<(u64, Option<u32>), HostError> {
    Ok(match host.shared_get(&keys.generation)? {
        Some(v) => (v.value.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0), v.cas),
        None => (0, None),
    })
}

fn write(
    host: &dyn Host,
    keys: &Keys,
    bytes: &[u8],
    generation: u64,
    cas: Option<u32>,
) -> Result<u64, HostError> {
    host.shared_set(&keys.snapshot, bytes, None)?;
    // CAS: if another collector bumped the generation meanwhile (a leader hand-over), the readers will
    // re-read the snapshot for its generation anyway; ours simply bumps again next time.
    host.shared_set(&keys.generation, &generation.to_le_bytes(), cas)?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn generations_increase_and_stamp_the_snapshot() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(42);
        let mut s = PoolSnapshot::default();
        assert_eq!(publish_snapshot(&host, &keys, &mut s).unwrap(), 1);
        assert_eq!(publish_snapshot(&host, &keys, &mut s).unwrap(), 2);
        let back = snapshot_codec::decode(&host.get(&keys.snapshot).unwrap()).unwrap();
        assert_eq!((back.generation, back.published_at_ms), (2, 42));
        assert_eq!(host.get(&keys.generation).unwrap(), 2u64.to_le_bytes());
        assert_eq!(publish_bytes(&host, &keys, b"raw").unwrap(), 3);
        assert_eq!(host.get(&keys.snapshot).unwrap(), b"raw");
    }
}
