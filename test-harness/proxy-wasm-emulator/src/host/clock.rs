//! The virtual clock every VM of a host reads (`proxy_get_current_time_nanoseconds`, WASI clocks): time
//! moves only when the test says so, which makes ticks and callout timeouts deterministic.

use std::time::Duration;

/// 2026-01-01T00:00:00Z: a fixed, recognisable wall-clock start.
pub const DEFAULT_START_UNIX_NS: u64 = 1_767_225_600 * 1_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Clock {
    start_unix_ns: u64,
    elapsed_ns: u64,
}

impl Clock {
    pub(crate) fn new(start_unix_ns: u64) -> Clock {
        Clock { start_unix_ns, elapsed_ns: 0 }
    }

    /// Wall-clock time in nanoseconds since the Unix epoch.
    pub(crate) fn unix_ns(&self) -> u64 {
        self.start_unix_ns.saturating_add(self.elapsed_ns)
    }

    /// Monotonic time: nanoseconds since the host was created.
    pub(crate) fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns
    }

    pub(crate) fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns)
    }

    /// Moves to `elapsed_ns` (never backwards).
    pub(crate) fn set_elapsed_ns(&mut self, elapsed_ns: u64) {
        self.elapsed_ns = self.elapsed_ns.max(elapsed_ns);
    }
}

pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
