//! The outgoing Proxy-Wasm host calls (ABI 0.2.1) over the raw `env` imports. The SDK's `hostcalls`
//! wrappers panic on any status they do not expect, and a panic aborts the VM with every stream on it.
//!
//! Every wrapper returns the proxy's status as a [`Status`] (any code, known or not) and data as bytes.
//! Buffers the proxy returns were allocated through this module's `proxy_on_memory_allocate` (the SDK's:
//! a `Vec<u8>` of exactly the returned size), so ownership is taken with `Vec::from_raw_parts`, as the
//! SDK itself does.

use crate::host::Shared;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::fmt;
use std::ptr::{null, null_mut};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_register_shared_queue(name: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_resolve_shared_queue(
        vm_id: *const u8,
        vm_id_size: usize,
        name: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(queue_id: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_define_metric(metric_type: u32, name: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// A status other than `Ok` from the proxy, by its ABI code (a proxy may answer codes this module does
/// not know; they are errors like any other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    pub const NOT_FOUND: Status = Status(1);
    pub const BAD_ARGUMENT: Status = Status(2);
    pub const EMPTY: Status = Status(7);
    pub const CAS_MISMATCH: Status = Status(8);

    fn name(self) -> &'static str {
        match self.0 {
            1 => "not found",
            2 => "bad argument",
            3 => "serialization failure",
            4 => "parse failure",
            6 => "invalid memory access",
            7 => "empty",
            8 => "cas mismatch",
            10 => "internal failure",
            12 => "unimplemented",
            _ => "unknown status",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

fn check(status: u32) -> Result<(), Status> {
    match status {
        0 => Ok(()),
        code => Err(Status(code)),
    }
}

/// Takes ownership of a buffer the proxy returned; `None` when it returned none.
///
/// # Safety
/// `data` and `size` must come from a host call that just returned `Ok` and wrote them.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the proxy allocated `size` bytes through `proxy_on_memory_allocate` (a `Vec<u8>` with that
    // capacity, leaked) and passed ownership to us.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The proxy's wall clock, in nanoseconds since the Unix epoch.
pub fn current_time_ns() -> Result<u64, Status> {
    let mut ns: u64 = 0;
    // SAFETY: the proxy writes one u64 into `ns`.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(ns)
}

/// `on_tick` every `ms` milliseconds (0 stops it); periods past `u32::MAX` ms are clamped.
pub fn set_tick_period_ms(ms: u64) -> Result<(), Status> {
    let ms = u32::try_from(ms).unwrap_or(u32::MAX);
    // SAFETY: plain integers.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Makes host calls act on context `id` (a paused stream this VM owns) until the current callback
/// returns. BadArgument when the context no longer exists.
pub fn set_effective_context(id: u32) -> Result<(), Status> {
    // SAFETY: a plain integer.
    check(unsafe { proxy_set_effective_context(id) })
}

/// Resumes the (effective) stream's paused request; the proxy continues it once the callback returned.
/// Its header maps and body are unavailable from then on.
pub fn continue_request() -> Result<(), Status> {
    // SAFETY: a plain integer (0: the HTTP request).
    check(unsafe { proxy_continue_stream(0) })
}

/// Up to `max` bytes of a buffer from `start`; a buffer the proxy does not have (`NotFound`) or returns
/// no data for is empty.
pub fn get_buffer(buffer: BufferType, start: usize, max: usize) -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the proxy writes a pointer and a size into our two locals.
    match check(unsafe { proxy_get_buffer_bytes(buffer as u32, start, max, &mut data, &mut size) }) {
        // SAFETY: the call returned Ok and wrote both.
        Ok(()) => Ok(unsafe { take(data, size) }.unwrap_or_default()),
        Err(Status::NOT_FOUND) => Ok(Vec::new()),
        Err(s) => Err(s),
    }
}

/// Replaces `size` bytes from `start` of a buffer with `data`.
pub fn set_buffer(buffer: BufferType, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
    // SAFETY: the proxy reads `data.len()` bytes of `data`, which outlives the call.
    check(unsafe { proxy_set_buffer_bytes(buffer as u32, start, size, data.as_ptr(), data.len()) })
}

/// Sets header `name` to `value`, replacing every value it had.
pub fn replace_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: the proxy reads the two slices, which outlive the call.
    check(unsafe {
        proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Removes header `name` (absent already is success in Envoy).
pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: the proxy reads `name`, which outlives the call.
    check(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A whole header map, serialized (see [`crate::header_map`]); empty when the proxy returns no data.
pub fn get_header_map_pairs(map: MapType) -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the proxy writes a pointer and a size into our locals.
    check(unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) })?;
    // SAFETY: the call returned Ok and wrote both.
    Ok(unsafe { take(data, size) }.unwrap_or_default())
}

/// Answers the stream locally with `status_code`, `headers` and `body` (not a gRPC reply).
pub fn send_local_response(status_code: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), Status> {
    let headers = crate::header_map::serialize(headers).ok_or(Status::BAD_ARGUMENT)?;
    // SAFETY: the proxy reads the body and header slices, which outlive the call; no details string.
    check(unsafe {
        proxy_send_local_response(
            status_code,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// A property by path (`["upstream", "address"]`); `None` when the proxy has no such property.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    // ABI: the path's segments joined by NUL.
    let path = path.join("\0");
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the proxy reads `path` and writes a pointer and a size into our locals.
    match check(unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) }) {
        // SAFETY: the call returned Ok and wrote both.
        Ok(()) => Ok(unsafe { take(data, size) }),
        Err(Status::NOT_FOUND) => Ok(None),
        Err(s) => Err(s),
    }
}

/// A shared-data value and its CAS token (`None` when the proxy gave 0, i.e. none); `None` when the key
/// was never written.
pub fn get_shared_data(key: &str) -> Result<Option<Shared>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the proxy reads `key` and writes a pointer, a size and a token into our locals.
    match check(unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }) {
        Ok(()) => {
            // SAFETY: the call returned Ok and wrote them.
            let value = unsafe { take(data, size) };
            let cas = (cas != 0).then_some(cas);
            Ok(match (value, cas) {
                (None, None) => None,
                (value, cas) => Some(Shared { value: value.unwrap_or_default(), cas }),
            })
        }
        Err(Status::NOT_FOUND) => Ok(None),
        Err(s) => Err(s),
    }
}

/// Writes a shared-data value; with `cas`, only if the value has not changed since that token was read.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: the proxy reads the two slices, which outlive the call.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0))
    })
}

/// Registers a queue this VM is told about (`on_queue_ready`); its id.
pub fn register_shared_queue(name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: the proxy reads `name` and writes one u32 into `id`.
    check(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// The id of queue `name` registered by a VM with `vm_id`; `None` when there is none.
pub fn resolve_shared_queue(vm_id: &str, name: &str) -> Result<Option<u32>, Status> {
    let mut id: u32 = 0;
    // SAFETY: the proxy reads the two slices and writes one u32 into `id`.
    match check(unsafe {
        proxy_resolve_shared_queue(vm_id.as_ptr(), vm_id.len(), name.as_ptr(), name.len(), &mut id)
    }) {
        Ok(()) => Ok(Some(id)),
        Err(Status::NOT_FOUND) => Ok(None),
        Err(s) => Err(s),
    }
}

pub fn enqueue_shared_queue(queue: u32, value: &[u8]) -> Result<(), Status> {
    // SAFETY: the proxy reads `value`, which outlives the call.
    check(unsafe { proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len()) })
}

/// The oldest message of a queue; `None` when it is empty.
pub fn dequeue_shared_queue(queue: u32) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the proxy writes a pointer and a size into our locals.
    match check(unsafe { proxy_dequeue_shared_queue(queue, &mut data, &mut size) }) {
        // SAFETY: the call returned Ok and wrote both.
        Ok(()) => Ok(unsafe { take(data, size) }),
        Err(Status::EMPTY) => Ok(None),
        Err(s) => Err(s),
    }
}

/// Sends a callout: the one host call left to the SDK. Its dispatcher delivers
/// `proxy_on_http_call_response` only for tokens its own `dispatch_http_call` registered and panics on any
/// other, so a raw call would turn every answer into a panic. The SDK panics here only on statuses other
/// than Ok, BadArgument and InternalFailure, which are the ones Envoy's `httpCall` gives for valid memory
/// (unknown cluster or missing pseudo-header; request not started).
pub fn dispatch_http_call(cluster: &str, headers: Vec<(&str, &str)>, timeout_ms: u64) -> Result<u32, Status> {
    let timeout = std::time::Duration::from_millis(timeout_ms);
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, None, vec![], timeout)
        .map_err(|s| Status(s as u32))
}

/// Defines (or finds, by name) a metric; its id.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: the proxy reads `name` and writes one u32 into `id`.
    check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, delta: i64) -> Result<(), Status> {
    // SAFETY: plain integers.
    check(unsafe { proxy_increment_metric(id, delta) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain integers.
    check(unsafe { proxy_record_metric(id, value) })
}
