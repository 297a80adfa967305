//! [`HeaderMap`] from the proxy in one host call, kept as bytes: the SDK's getters panic on a value that
//! is not UTF-8 and on an unexpected status.

use super::abi;
use crate::header_map::HeaderMap;
use proxy_wasm::types::MapType;

/// The whole map, or why not (the proxy's status or a malformed serialization), for a log line.
pub fn read(map: MapType) -> Result<HeaderMap, String> {
    let bytes = abi::get_header_map_pairs(map).map_err(|s| format!("{map:?} not readable: {s}"))?;
    HeaderMap::parse(bytes).map_err(|e| format!("{map:?}: {e}"))
}
