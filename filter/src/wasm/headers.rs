//! [`HeaderMap`] from the proxy: `proxy_get_header_map_pairs` called directly, so that neither a value
//! that is not UTF-8 nor an unexpected status can panic (the SDK's wrappers do both).

use crate::header_map::HeaderMap;
use proxy_wasm::types::MapType;
use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
}

/// The whole map, or why not (the proxy's status or a malformed serialization), for a log line.
pub fn read(map: MapType) -> Result<HeaderMap, String> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated through this module's `proxy_on_memory_allocate`
    // (the SDK's, a `Vec<u8>` of exactly `size` bytes) and its size; ownership passes to us.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    if status != 0 {
        return Err(format!("{map:?} not readable (status {status})"));
    }
    let bytes = if data.is_null() || size == 0 {
        Vec::new()
    } else {
        // SAFETY: see above; the SDK's own getters take these buffers the same way.
        unsafe { Vec::from_raw_parts(data, size, size) }
    };
    HeaderMap::parse(bytes).map_err(|e| format!("{map:?}: {e}"))
}
