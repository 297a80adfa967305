//! What flow control counts: queue length and bytes per band, how each waiting request ended and how long
//! it waited (llm-d's `flow_control_*` metrics, whose names and buckets the products export).

use alloc::vec::Vec;

/// Upper bounds (seconds) of llm-d's `flow_control_request_queue_duration_seconds` buckets.
pub const WAIT_BUCKETS_S: [f64; 16] =
    [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// The same bounds in microseconds (the clock is in ms, so the lowest three fill only at 0 ms).
const WAIT_BUCKETS_US: [u64; 16] = [
    100, 500, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// How a request left flow control (llm-d's `QueueOutcome`, with its label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueOutcome {
    Dispatched,
    /// Refused at the door: band or global capacity full (429).
    RejectedCapacity,
    /// Refused at the door, capacity full while the pool has no endpoints (503).
    RejectedNoEndpoints,
    /// Waited past `defaultRequestTTL` (429).
    EvictedTtl,
    /// Waited past `noEndpointRequestTTL` while the pool had no endpoints (503).
    EvictedNoEndpoints,
    /// The client went away while waiting.
    EvictedContextCancelled,
}

impl QueueOutcome {
    pub const ALL: [QueueOutcome; 6] = [
        QueueOutcome::Dispatched,
        QueueOutcome::RejectedCapacity,
        QueueOutcome::RejectedNoEndpoints,
        QueueOutcome::EvictedTtl,
        QueueOutcome::EvictedNoEndpoints,
        QueueOutcome::EvictedContextCancelled,
    ];

    /// llm-d's label for the outcome (`QueueOutcome.String()`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueOutcome::Dispatched => "Dispatched",
            QueueOutcome::RejectedCapacity => "RejectedCapacity",
            QueueOutcome::RejectedNoEndpoints => "RejectedNoEndpoints",
            QueueOutcome::EvictedTtl => "EvictedTTL",
            QueueOutcome::EvictedNoEndpoints => "EvictedNoEndpoints",
            QueueOutcome::EvictedContextCancelled => "EvictedContextCancelled",
        }
    }

    fn index(self) -> usize {
        match self {
            QueueOutcome::Dispatched => 0,
            QueueOutcome::RejectedCapacity => 1,
            QueueOutcome::RejectedNoEndpoints => 2,
            QueueOutcome::EvictedTtl => 3,
            QueueOutcome::EvictedNoEndpoints => 4,
            QueueOutcome::EvictedContextCancelled => 5,
        }
    }
}

/// A cumulative-ready histogram of waits: `counts[i]` holds waits in bucket `i` (not cumulative), the
/// last slot those above 60 s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    pub counts: [u64; 17],
    pub sum_ms: u64,
}

impl WaitHistogram {
    pub fn record(&mut self, waited_ms: u64) {
        let us = waited_ms.saturating_mul(1_000);
        let i = WAIT_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(WAIT_BUCKETS_US.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c = c.saturating_add(1);
        }
        self.sum_ms = self.sum_ms.saturating_add(waited_ms);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }
}

/// One priority band.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BandStats {
    pub priority: i32,
    /// Requests waiting now.
    pub queued: u64,
    /// Body bytes waiting now.
    pub bytes: u64,
    /// Requests that ended with each outcome, in [`QueueOutcome::ALL`] order.
    pub outcomes: [u64; 6],
    /// How long requests waited, by outcome (same order).
    pub waits: [WaitHistogram; 6],
    /// Requests of this band in flight that eviction ended (429) to make room for a higher band.
    pub evicted_in_flight: u64,
}

impl BandStats {
    pub fn count(&self, outcome: QueueOutcome) -> u64 {
        self.outcomes.get(outcome.index()).copied().unwrap_or(0)
    }

    pub fn wait(&self, outcome: QueueOutcome) -> Option<&WaitHistogram> {
        self.waits.get(outcome.index())
    }
}

/// Everything flow control counted, per band (highest priority first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub bands: Vec<BandStats>,
}

impl FlowStats {
    pub fn band(&self, priority: i32) -> Option<&BandStats> {
        self.bands.iter().find(|b| b.priority == priority)
    }

    /// The band's stats, created at its place (highest priority first) when new.
    pub(super) fn band_mut(&mut self, priority: i32) -> Option<&mut BandStats> {
        let i = match self.bands.binary_search_by(|b| priority.cmp(&b.priority)) {
            Ok(i) => i,
            Err(i) => {
                self.bands.insert(i, BandStats { priority, ..BandStats::default() });
                i
            }
        };
        self.bands.get_mut(i)
    }

    pub(super) fn ended(&mut self, priority: i32, outcome: QueueOutcome, waited_ms: u64) {
        let Some(b) = self.band_mut(priority) else { return };
        let i = outcome.index();
        if let Some(c) = b.outcomes.get_mut(i) {
            *c = c.saturating_add(1);
        }
        if let Some(h) = b.waits.get_mut(i) {
            h.record(waited_ms);
        }
    }

    /// Requests waiting in every band.
    pub fn queued(&self) -> u64 {
        self.bands.iter().map(|b| b.queued).sum()
    }

    /// Body bytes waiting in every band.
    pub fn bytes(&self) -> u64 {
        self.bands.iter().map(|b| b.bytes).sum()
    }

    /// Requests of every band that ended with `outcome`.
    pub fn count(&self, outcome: QueueOutcome) -> u64 {
        self.bands.iter().map(|b| b.count(outcome)).sum()
    }

    pub fn evicted_in_flight(&self) -> u64 {
        self.bands.iter().map(|b| b.evicted_in_flight).sum()
    }
}
