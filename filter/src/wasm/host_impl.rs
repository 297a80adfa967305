//! [`Host`] over `proxy_wasm::hostcalls`. Every call's `Err` becomes a [`HostError`] for the caller to
//! handle; the SDK's context-trait helpers (which `unwrap`) are never used.

use crate::host::{Host, HostError, HttpGet, MetricKind, Shared};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

pub struct ProxyHost {
    /// This VM's `vm_id` (queues of other VMs are resolved within it).
    vm_id: String,
}

impl ProxyHost {
    pub fn new(vm_id: String) -> ProxyHost {
        ProxyHost { vm_id }
    }
}

fn error(status: Status) -> HostError {
    match status {
        Status::CasMismatch => HostError::CasMismatch,
        Status::NotFound => HostError::NotFound,
        Status::BadArgument => HostError::BadArgument,
        other => HostError::Status(other as u32),
    }
}

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        self.now_us() / 1_000
    }

    fn now_us(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    fn shared_get(&self, key: &str) -> Result<Option<Shared>, HostError> {
        match hostcalls::get_shared_data(key).map_err(error)? {
            (None, None) => Ok(None),
            (value, cas) => Ok(Some(Shared { value: value.unwrap_or_default(), cas })),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(error)
    }

    fn queue_register(&self, name: &str) -> Result<u32, HostError> {
        hostcalls::register_shared_queue(name).map_err(error)
    }

    fn queue_resolve(&self, name: &str) -> Result<Option<u32>, HostError> {
        hostcalls::resolve_shared_queue(&self.vm_id, name).map_err(error)
    }

    fn queue_enqueue(&self, queue: u32, value: &[u8]) -> Result<(), HostError> {
        hostcalls::enqueue_shared_queue(queue, Some(value)).map_err(error)
    }

    fn queue_dequeue(&self, queue: u32) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::dequeue_shared_queue(queue).map_err(error)
    }

    fn http_get(&self, r: &HttpGet<'_>) -> Result<u32, HostError> {
        let mut headers = vec![(":method", "GET"), (":path", r.path), (":authority", r.authority)];
        headers.extend_from_slice(r.headers);
        hostcalls::dispatch_http_call(r.cluster, headers, None, vec![], Duration::from_millis(r.timeout_ms))
            .map_err(error)
    }

    fn metric_define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name).map_err(error)
    }

    fn metric_add(&self, id: u32, delta: i64) -> Result<(), HostError> {
        hostcalls::increment_metric(id, delta).map_err(error)
    }

    fn metric_record(&self, id: u32, value: u64) -> Result<(), HostError> {
        hostcalls::record_metric(id, value).map_err(error)
    }
}
