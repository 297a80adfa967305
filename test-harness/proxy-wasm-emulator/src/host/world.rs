//! Everything the VMs of one host share, as one Envoy process would: clock, RNG, shared data and queues,
//! clusters, streams, callouts, metrics, and the record of what happened.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::abi::LogLevel;
use super::callouts::Callout;
use super::clock::Clock;
use super::http::{HttpStream, StreamId};
use super::metrics::Metrics;
use super::properties::PropertyValue;
use super::shared_data::{QueueOwner, SharedData, SharedQueues};
use super::transcript::{Event, Faults, LogEntry, Trap};
use super::VmId;

/// The bytes WASI `random_get` hands out: SplitMix64 from the host's seed, so a run is reproducible.
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Tick {
    pub period_ns: u64,
    pub next_ns: u64,
}

pub(crate) struct World {
    pub clock: Clock,
    pub rng: Rng,
    pub shared: SharedData,
    pub queues: SharedQueues,
    pub metrics: Metrics,
    pub logs: Vec<LogEntry>,
    pub transcript: Vec<Event>,
    pub traps: Vec<Trap>,
    pub faults: Faults,
    pub clusters: BTreeSet<String>,
    pub streams: Vec<HttpStream>,
    pub callouts: Vec<Callout>,
    pub ticks: BTreeMap<VmId, Tick>,
    pub properties: BTreeMap<String, PropertyValue>,
    pub log_level: LogLevel,
    pub buffer_limit: usize,
    /// Header whose value becomes `upstream.address` (an ORIGINAL_DST cluster with `use_http_header`).
    pub original_dst_header: Option<String>,
    pub env: Vec<(String, String)>,
    /// `on_queue_ready` notifications posted by enqueues, delivered after the current callback.
    pub queue_ready: VecDeque<(QueueOwner, u32)>,
}

impl World {
    pub(crate) fn record(&mut self, event: Event) {
        self.transcript.push(event);
    }

    pub(crate) fn note(&mut self, vm: Option<VmId>, message: impl Into<String>) {
        self.transcript.push(Event::Note { vm, message: message.into() });
    }

    pub(crate) fn stream(&self, id: StreamId) -> Option<&HttpStream> {
        self.streams.get(id.0)
    }

    pub(crate) fn stream_mut(&mut self, id: StreamId) -> Option<&mut HttpStream> {
        self.streams.get_mut(id.0)
    }
}
