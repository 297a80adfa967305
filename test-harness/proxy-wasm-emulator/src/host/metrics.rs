//! Metrics the module defines (`proxy_define_metric` …), stored by name like Envoy's stats scope so VMs
//! that define the same name share one stat; ids carry the type in their low two bits, as in Envoy.

use std::collections::BTreeMap;

use super::abi::Status;
use super::VmId;

/// The three Proxy-Wasm metric kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    fn from_code(code: i32) -> Option<MetricKind> {
        Some(match code {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }

    fn tag(self) -> u32 {
        match self {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
            MetricKind::Histogram => 2,
        }
    }
}

/// One stat as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub kind: MetricKind,
    /// Counter total or gauge value (gauges may go below zero here; Envoy would wrap).
    pub value: i64,
    /// Every value recorded into a histogram, in order.
    pub samples: Vec<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    by_name: BTreeMap<String, Metric>,
    /// (vm, id) → name.
    ids: BTreeMap<(VmId, u32), String>,
    next_id: u32,
}

impl Metrics {
    pub(crate) fn define(&mut self, vm: VmId, kind_code: i32, name: &str) -> Result<u32, Status> {
        let kind = MetricKind::from_code(kind_code).ok_or(Status::BadArgument)?;
        self.next_id = self.next_id.wrapping_add(1);
        let id = (self.next_id << 2) | kind.tag();
        self.by_name.entry(name.to_string()).or_insert(Metric { kind, value: 0, samples: Vec::new() });
        self.ids.insert((vm, id), name.to_string());
        Ok(id)
    }

    fn find(&mut self, vm: VmId, id: u32) -> Option<&mut Metric> {
        let name = self.ids.get(&(vm, id))?;
        self.by_name.get_mut(name)
    }

    /// Counters only go up (Envoy answers BadArgument to a non-positive offset); gauges move both ways;
    /// histograms cannot be incremented.
    pub(crate) fn increment(&mut self, vm: VmId, id: u32, offset: i64) -> Status {
        let Some(m) = self.find(vm, id) else { return Status::NotFound };
        match m.kind {
            MetricKind::Counter if offset <= 0 => Status::BadArgument,
            MetricKind::Counter | MetricKind::Gauge => {
                m.value = m.value.saturating_add(offset);
                Status::Ok
            }
            MetricKind::Histogram => Status::BadArgument,
        }
    }

    /// Counter: add; gauge: set; histogram: record a sample.
    pub(crate) fn record(&mut self, vm: VmId, id: u32, value: u64) -> Status {
        let Some(m) = self.find(vm, id) else { return Status::NotFound };
        let as_i64 = i64::try_from(value).unwrap_or(i64::MAX);
        match m.kind {
            MetricKind::Counter => m.value = m.value.saturating_add(as_i64),
            MetricKind::Gauge => m.value = as_i64,
            MetricKind::Histogram => m.samples.push(value),
        }
        Status::Ok
    }

    pub(crate) fn get(&mut self, vm: VmId, id: u32) -> Result<u64, Status> {
        let m = self.find(vm, id).ok_or(Status::NotFound)?;
        match m.kind {
            // Envoy's gauges are unsigned; a negative value reads back as its two's complement.
            MetricKind::Counter | MetricKind::Gauge => Ok(m.value as u64),
            MetricKind::Histogram => Err(Status::BadArgument),
        }
    }

    /// Looks a stat up by the name the module defined (Envoy's `wasmcustom.` prefix is accepted too).
    pub(crate) fn by_name(&self, name: &str) -> Option<&Metric> {
        let name = name.strip_prefix("wasmcustom.").unwrap_or(name);
        self.by_name.get(name)
    }

    pub(crate) fn all(&self) -> &BTreeMap<String, Metric> {
        &self.by_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_histograms_behave_like_envoy_stats() {
        let mut m = Metrics::default();
        let vm = VmId(0);
        let c = m.define(vm, 0, "requests").unwrap_or_default();
        let g = m.define(vm, 1, "inflight").unwrap_or_default();
        let h = m.define(vm, 2, "sizes").unwrap_or_default();
        assert_eq!((c & 3, g & 3, h & 3), (0, 1, 2));
        assert_eq!(m.increment(vm, c, 2), Status::Ok);
        assert_eq!(m.increment(vm, c, -1), Status::BadArgument);
        assert_eq!(m.increment(vm, g, 3), Status::Ok);
        assert_eq!(m.increment(vm, g, -1), Status::Ok);
        assert_eq!(m.record(vm, h, 42), Status::Ok);
        assert_eq!(m.get(vm, c), Ok(2));
        assert_eq!(m.get(vm, g), Ok(2));
        assert_eq!(m.get(vm, h), Err(Status::BadArgument));
        assert_eq!(m.by_name("wasmcustom.sizes").map(|x| x.samples.clone()), Some(vec![42]));
        // Another VM sees the same stat under its own id; ids of one VM mean nothing to another.
        let c2 = m.define(VmId(1), 0, "requests").unwrap_or_default();
        assert_eq!(m.increment(VmId(1), c2, 1), Status::Ok);
        assert_eq!(m.by_name("requests").map(|x| x.value), Some(3));
        assert_eq!(m.increment(VmId(1), c, 1), Status::NotFound);
        assert_eq!(m.define(vm, 3, "bad"), Err(Status::BadArgument));
    }
}
