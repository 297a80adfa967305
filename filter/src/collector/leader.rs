//! Leader election among worker root contexts (`collector.mode: leader-elected`, e.g. Istio, where there
//! is no bootstrap singleton): each tick every worker runs `Lease::decide` on the lease key and writes its
//! claim with the CAS token it read, so exactly one wins; a dead leader's lease runs out after its TTL.

use crate::host::{Host, HostError};
use crate::keys::Keys;
use scheduler_core::shared_state::{Lease, LeaseDecision};

/// This worker's view of the election.
#[derive(Debug)]
pub struct Leadership {
    me: u32,
    leading: bool,
}

/// The outcome of one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Scrape this tick. `became`: the lease was not ours on the previous tick.
    Lead { became: bool },
    /// Someone else leads (or the lease could not be read). `lost`: we led on the previous tick.
    Follow { lost: bool },
}

impl Leadership {
    pub fn new(me: u32) -> Leadership {
        Leadership { me, leading: false }
    }

    pub fn is_leading(&self) -> bool {
        self.leading
    }

    pub fn step(&mut self, host: &dyn Host, keys: &Keys, ttl_ms: u64) -> Step {
        let was = self.leading;
        self.leading = self.try_lead(host, keys, ttl_ms).unwrap_or_else(|e| {
            log::warn!("collector lease not readable or writable: {e}");
            false
        });
        match (was, self.leading) {
            (_, true) => Step::Lead { became: !was },
            (lost, false) => Step::Follow { lost },
        }
    }

    fn try_lead(&self, host: &dyn Host, keys: &Keys, ttl_ms: u64) -> Result<bool, HostError> {
        let stored = host.shared_get(&keys.lease)?;
        let (value, cas) = match &stored {
            Some(v) => (Some(v.value.as_slice()), v.cas),
            None => (None, None),
        };
        match Lease::arbitrate(value, self.me, host.now_ms(), ttl_ms) {
            LeaseDecision::Follow { .. } => Ok(false),
            LeaseDecision::Claim(lease) => match host.shared_set(&keys.lease, &lease.encode(), cas) {
                Ok(()) => Ok(true),
                Err(HostError::CasMismatch) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn one_leader_then_takeover_after_the_ttl() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        host.set_now(1_000);
        let (mut a, mut b) = (Leadership::new(1), Leadership::new(2));
        assert_eq!(a.step(&host, &keys, 500), Step::Lead { became: true });
        assert_eq!(b.step(&host, &keys, 500), Step::Follow { lost: false });
        host.advance(50);
        assert_eq!(a.step(&host, &keys, 500), Step::Lead { became: false });
        // `a` dies (stops ticking); `b` takes over once the lease expires, not before.
        host.advance(499);
        assert_eq!(b.step(&host, &keys, 500), Step::Follow { lost: false });
        host.advance(1);
        assert_eq!(b.step(&host, &keys, 500), Step::Lead { became: true });
        // If `a` comes back it follows and learns it lost.
        assert_eq!(a.step(&host, &keys, 500), Step::Follow { lost: true });
    }

    #[test]
    fn a_host_failure_means_follow() {
        let (host, keys) = (FakeHost::default(), Keys::new("p"));
        let mut a = Leadership::new(1);
        host.world.borrow_mut().fail_sets = Some((HostError::Status(10), 1));
        assert_eq!(a.step(&host, &keys, 500), Step::Follow { lost: false });
        assert!(!a.is_leading());
    }
}
