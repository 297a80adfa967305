//! The filter's own memory as Envoy gauges: the VM's Wasm linear memory, and the size of everything
//! it keeps that grows with traffic, each next to the most it can hold. Linear memory grows in 64 KiB
//! pages and never shrinks, so a growing RSS alone cannot tell a leak from caches filling up; these
//! gauges can (`cargo xtask soak` judges them, docs/reliability.md).
//!
//! Every worker VM adds its share (gauges move by the difference from what it reported last, as
//! `epp_in_flight_requests` does), so each gauge is the sum over the serving workers. Reported once
//! per heartbeat from the root tick: a few length reads, no walk over a table's entries.

use crate::host::Host;
use crate::inflight::HEARTBEAT_MS;
use crate::stats::Stats;
use std::format;
use std::vec::Vec;

/// Wasm linear memory of the serving worker VMs, in bytes (`memory.size` × 64 KiB), summed.
pub const WASM_MEMORY_BYTES: &str = "epp_wasm_memory_bytes";
/// Prefix of the per-table gauges: `epp_memory_<table>` (entries now) and `epp_memory_<table>_cap`
/// (the most it can hold), both summed over workers.
pub const TABLE_PREFIX: &str = "epp_memory_";
/// Bytes in one Wasm page.
pub const WASM_PAGE_BYTES: u64 = 64 * 1024;

/// One table's size now and its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Gauge name after [`TABLE_PREFIX`]: `[a-z_]`, stable (the soak and dashboards read it).
    pub table: &'static str,
    pub len: u64,
    /// The most it can hold now. Tables bounded by the pool report the pool's endpoint count.
    pub cap: u64,
}

impl Size {
    pub fn new(table: &'static str, len: usize, cap: u64) -> Size {
        Size { table, len: len as u64, cap }
    }
}

/// What this VM reported last, so the process-wide gauges move by the difference.
#[derive(Debug, Default)]
pub struct MemoryReported {
    reported_ms: Option<u64>,
    linear: u64,
    tables: Vec<Size>,
}

impl MemoryReported {
    /// Reports once per heartbeat period (other calls return at once). `linear_bytes`: this VM's linear
    /// memory; `sizes`: every table with its bound.
    pub fn report(&mut self, host: &dyn Host, stats: &mut Stats, linear_bytes: u64, sizes: &[Size]) {
        let now_ms = host.now_ms();
        if self.reported_ms.is_some_and(|t| now_ms.saturating_sub(t) < HEARTBEAT_MS) {
            return;
        }
        self.reported_ms = Some(now_ms);
        self.set(host, stats, linear_bytes, sizes);
    }

    /// The VM is going away: its share leaves the process-wide gauges.
    pub fn clear(&mut self, host: &dyn Host, stats: &mut Stats) {
        let zeros: Vec<Size> = self.tables.iter().map(|s| Size { len: 0, cap: 0, ..*s }).collect();
        self.set(host, stats, 0, &zeros);
    }

    fn set(&mut self, host: &dyn Host, stats: &mut Stats, linear_bytes: u64, sizes: &[Size]) {
        stats.gauge_add(host, WASM_MEMORY_BYTES, delta(linear_bytes, self.linear));
        self.linear = linear_bytes;
        for size in sizes {
            let before = match self.tables.iter_mut().find(|s| s.table == size.table) {
                Some(s) => core::mem::replace(s, *size),
                None => {
                    self.tables.push(*size);
                    Size { len: 0, cap: 0, ..*size }
                }
            };
            stats.gauge_add(host, &format!("{TABLE_PREFIX}{}", size.table), delta(size.len, before.len));
            stats.gauge_add(host, &format!("{TABLE_PREFIX}{}_cap", size.table), delta(size.cap, before.cap));
        }
    }
}

fn delta(now: u64, before: u64) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX).saturating_sub(i64::try_from(before).unwrap_or(i64::MAX))
}

/// This VM's linear memory in bytes (0 outside Wasm, where there is none to report).
pub fn linear_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) as u64).saturating_mul(WASM_PAGE_BYTES)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn workers_add_their_shares_and_a_leaving_vm_takes_its_share_back() {
        let host = FakeHost::default();
        let (mut a, mut b) = (MemoryReported::default(), MemoryReported::default());
        let (mut sa, mut sb) = (Stats::default(), Stats::default());
        a.report(&host, &mut sa, 5 * WASM_PAGE_BYTES, &[Size::new("prefix_entries", 10, 100)]);
        b.report(&host, &mut sb, 3 * WASM_PAGE_BYTES, &[Size::new("prefix_entries", 7, 100)]);
        assert_eq!(host.metric(WASM_MEMORY_BYTES), 8 * WASM_PAGE_BYTES as i64);
        assert_eq!(host.metric("epp_memory_prefix_entries"), 17);
        assert_eq!(host.metric("epp_memory_prefix_entries_cap"), 200);

        // Within the heartbeat period nothing moves; after it, the gauges follow the new sizes.
        a.report(&host, &mut sa, 9 * WASM_PAGE_BYTES, &[Size::new("prefix_entries", 50, 100)]);
        assert_eq!(host.metric("epp_memory_prefix_entries"), 17);
        host.advance(HEARTBEAT_MS);
        a.report(&host, &mut sa, 6 * WASM_PAGE_BYTES, &[Size::new("prefix_entries", 40, 120)]);
        assert_eq!(host.metric(WASM_MEMORY_BYTES), 9 * WASM_PAGE_BYTES as i64);
        assert_eq!(host.metric("epp_memory_prefix_entries"), 47);
        assert_eq!(host.metric("epp_memory_prefix_entries_cap"), 220);

        b.clear(&host, &mut sb);
        assert_eq!(host.metric(WASM_MEMORY_BYTES), 6 * WASM_PAGE_BYTES as i64);
        assert_eq!(host.metric("epp_memory_prefix_entries"), 40);
        assert_eq!(host.metric("epp_memory_prefix_entries_cap"), 120);
    }
}
