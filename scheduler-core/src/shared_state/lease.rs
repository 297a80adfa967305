//! Leader election for the in-proxy collector when there is no singleton VM (Istio).
//!
//! Every worker's root context runs the same step each tick: read the lease key with its CAS token,
//! decide, and write back with that token. The CAS makes the race safe: of two workers that read the same
//! expired lease, only the first write succeeds; the loser sees a CAS mismatch and stays a follower. A leader
//! that stops renewing (VM crashed, thread wedged) loses the lease once `expires_at_ms` passes, so a follower
//! takes over within one TTL plus one tick.

/// The lease as stored in shared data (12 bytes: holder u32 LE, expiry u64 LE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Worker id of the holder (unique per VM, handed out by a shared counter).
    pub holder: u32,
    /// Holder's clock (ms) after which anyone may take the lease.
    pub expires_at_ms: u64,
}

/// What a worker should do this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Write this lease (with the CAS token just read); if the write succeeds, scrape this tick.
    Claim(Lease),
    /// Someone else holds a live lease: do not scrape.
    Follow { holder: u32 },
}

impl Lease {
    pub const ENCODED_LEN: usize = 12;

    pub fn encode(&self) -> [u8; Lease::ENCODED_LEN] {
        let mut out = [0u8; Lease::ENCODED_LEN];
        let (h, e) = out.split_at_mut(4);
        h.copy_from_slice(&self.holder.to_le_bytes());
        e.copy_from_slice(&self.expires_at_ms.to_le_bytes());
        out
    }

    /// `None` for anything that is not exactly a lease (empty value, garbage): treated as no lease.
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        if bytes.len() != Lease::ENCODED_LEN {
            return None;
        }
        let mut r = super::bytes::Reader::new(bytes);
        Some(Lease { holder: r.u32()?, expires_at_ms: r.u64()? })
    }

    /// Decides for worker `me` at `now_ms`, given the stored value (if any). A holder renews its own lease;
    /// anyone claims a missing, unreadable or expired one.
    pub fn arbitrate(stored: Option<&[u8]>, me: u32, now_ms: u64, ttl_ms: u64) -> LeaseDecision {
        let claim = LeaseDecision::Claim(Lease { holder: me, expires_at_ms: now_ms.saturating_add(ttl_ms) });
        match stored.and_then(Lease::decode) {
            Some(l) if l.holder == me => claim,
            Some(l) if l.expires_at_ms > now_ms => LeaseDecision::Follow { holder: l.holder },
            _ => claim,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let l = Lease { holder: 7, expires_at_ms: 123_456 };
        assert_eq!(Lease::decode(&l.encode()), Some(l));
        assert_eq!(Lease::decode(&[]), None);
        assert_eq!(Lease::decode(&[1, 2, 3]), None);
        assert_eq!(Lease::decode(&[0; 13]), None);
    }

    #[test]
    fn first_worker_claims_then_others_follow_until_expiry() {
        let ttl = 500;
        let LeaseDecision::Claim(l1) = Lease::arbitrate(None, 1, 1_000, ttl) else {
            panic!("empty lease must be claimed")
        };
        assert_eq!(l1, Lease { holder: 1, expires_at_ms: 1_500 });
        let stored = l1.encode();
        assert_eq!(Lease::arbitrate(Some(&stored), 2, 1_200, ttl), LeaseDecision::Follow { holder: 1 });
        // The holder renews before expiry.
        assert_eq!(
            Lease::arbitrate(Some(&stored), 1, 1_400, ttl),
            LeaseDecision::Claim(Lease { holder: 1, expires_at_ms: 1_900 })
        );
        // A dead holder is replaced once its lease runs out.
        assert_eq!(
            Lease::arbitrate(Some(&stored), 2, 1_500, ttl),
            LeaseDecision::Claim(Lease { holder: 2, expires_at_ms: 2_000 })
        );
    }

    #[test]
    fn unreadable_lease_is_claimed() {
        assert!(matches!(Lease::arbitrate(Some(b"garbage"), 3, 10, 100), LeaseDecision::Claim(_)));
    }
}
