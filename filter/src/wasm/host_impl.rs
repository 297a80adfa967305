//! [`Host`] over the raw host calls of [`super::abi`]. Every refusal becomes a [`HostError`] for the caller
//! to handle; the SDK's context-trait helpers (which `unwrap`) are never used.

use super::abi::{self, Status};
use crate::host::{Host, HostError, HttpGet, MetricKind, Shared};
use proxy_wasm::types::MetricType;

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
        Status::CAS_MISMATCH => HostError::CasMismatch,
        Status::NOT_FOUND => HostError::NotFound,
        Status::BAD_ARGUMENT => HostError::BadArgument,
        Status(code) => HostError::Status(code),
    }
}

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        self.now_us() / 1_000
    }

    fn now_us(&self) -> u64 {
        abi::current_time_ns().map_or(0, |ns| ns / 1_000)
    }

    fn shared_get(&self, key: &str) -> Result<Option<Shared>, HostError> {
        abi::get_shared_data(key).map_err(error)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        abi::set_shared_data(key, value, cas).map_err(error)
    }

    fn queue_register(&self, name: &str) -> Result<u32, HostError> {
        abi::register_shared_queue(name).map_err(error)
    }

    fn queue_resolve(&self, name: &str) -> Result<Option<u32>, HostError> {
        abi::resolve_shared_queue(&self.vm_id, name).map_err(error)
    }

    fn queue_enqueue(&self, queue: u32, value: &[u8]) -> Result<(), HostError> {
        abi::enqueue_shared_queue(queue, value).map_err(error)
    }

    fn queue_dequeue(&self, queue: u32) -> Result<Option<Vec<u8>>, HostError> {
        abi::dequeue_shared_queue(queue).map_err(error)
    }

    fn http_get(&self, r: &HttpGet<'_>) -> Result<u32, HostError> {
        let mut headers = vec![(":method", "GET"), (":path", r.path), (":authority", r.authority)];
        headers.extend_from_slice(r.headers);
        abi::dispatch_http_call(r.cluster, headers, r.timeout_ms).map_err(error)
    }

    fn metric_define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        abi::define_metric(kind, name).map_err(error)
    }

    fn metric_add(&self, id: u32, delta: i64) -> Result<(), HostError> {
        abi::increment_metric(id, delta).map_err(error)
    }

    fn metric_record(&self, id: u32, value: u64) -> Result<(), HostError> {
        abi::record_metric(id, value).map_err(error)
    }
}
