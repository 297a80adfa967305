//! Names of everything the filter keeps in shared data and shared queues, prefixed per pool so two pools
//! configured in one proxy (same `vm_id`) never read each other's state.
//!
//! | name | written by | content |
//! |---|---|---|
//! | `epp/<pool>/generation` | collector | u64 LE, bumped after every snapshot write (read per request) |
//! | `epp/<pool>/snapshot` | collector | `snapshot_codec` bytes (read only when the generation moved) |
//! | `epp/<pool>/collector-lease` | leader-elected collectors | `Lease` (12 bytes) |
//! | `epp/<pool>/worker-ids` | every worker at start | u32 LE counter handing out worker ids (CAS) |
//! | `epp/<pool>/workers` | every worker | directory: u32 LE worker ids (CAS) |
//! | `epp/<pool>/inflight/<id>` | worker `<id>` only | `InFlightTable` with heartbeat |
//! | `epp/<pool>/ejections` | any worker (CAS) | endpoints ejected for the gateway's failures ([`crate::ejections`]) |
//! | `epp/<pool>/flow/<id>` | worker `<id>` only | its flow-control queue per band ([`crate::flow_share`]) |
//! | queue `epp/<pool>/prefix/<id>` | any worker → worker `<id>` | routed prefix hashes to learn |
//! | queue `epp/<pool>/flow-wake/<id>` | worker `<id>` → itself | "a request ended": dispatch now, in its own event |

use std::format;
use std::string::String;

/// The keys of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    pub generation: String,
    pub snapshot: String,
    pub lease: String,
    pub worker_ids: String,
    pub workers: String,
    pub ejections: String,
}

impl Keys {
    pub fn new(pool: &str) -> Keys {
        let prefix = format!("epp/{pool}/");
        Keys {
            generation: format!("{prefix}generation"),
            snapshot: format!("{prefix}snapshot"),
            lease: format!("{prefix}collector-lease"),
            worker_ids: format!("{prefix}worker-ids"),
            workers: format!("{prefix}workers"),
            ejections: format!("{prefix}ejections"),
            prefix,
        }
    }

    /// Worker `id`'s in-flight table.
    pub fn inflight(&self, id: u32) -> String {
        format!("{}inflight/{id}", self.prefix)
    }

    /// Worker `id`'s flow-control queue lengths per band.
    pub fn flow(&self, id: u32) -> String {
        format!("{}flow/{id}", self.prefix)
    }

    /// The queue worker `id` wakes its own root with when a request ends while others wait.
    pub fn flow_wake(&self, id: u32) -> String {
        format!("{}flow-wake/{id}", self.prefix)
    }

    /// The queue worker `id` learns other workers' prefix picks from.
    pub fn prefix_queue(&self, id: u32) -> String {
        format!("{}prefix/{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_pool() {
        let k = Keys::new("llama");
        assert_eq!(k.generation, "epp/llama/generation");
        assert_eq!(k.snapshot, "epp/llama/snapshot");
        assert_eq!(k.inflight(3), "epp/llama/inflight/3");
        assert_eq!(k.prefix_queue(3), "epp/llama/prefix/3");
        assert_eq!(k.flow(3), "epp/llama/flow/3");
        assert_ne!(Keys::new("other").snapshot, k.snapshot);
    }
}
