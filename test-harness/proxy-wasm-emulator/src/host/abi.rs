//! Proxy-Wasm ABI v0.2.1 vocabulary: status codes, buffer and map types, log levels, and the header-map
//! wire format, kept in one place so every host call speaks the same numbers the SDK expects.

use std::fmt;

/// Result codes a host call returns to the module (ABI v0.2.1 `proxy_result_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    /// The number on the wire.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The status for a wire number, if it is one of ABI v0.2.1's.
    pub fn from_code(code: i32) -> Option<Status> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            10 => Status::InternalFailure,
            12 => Status::Unimplemented,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}({})", self.code())
    }
}

/// `proxy_log` levels, in the SDK's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub(crate) fn from_code(code: i32) -> Option<LogLevel> {
        Some(match code {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    pub(crate) fn code(self) -> u32 {
        self as u32
    }
}

/// Buffers a module can read with `proxy_get_buffer_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufferType {
    RequestBody,
    ResponseBody,
    HttpCallResponseBody,
    VmConfiguration,
    PluginConfiguration,
    /// Downstream/upstream data, gRPC receive buffer, foreign-call data: not emulated (HTTP only).
    Other,
}

impl BufferType {
    pub(crate) fn from_code(code: i32) -> Option<BufferType> {
        Some(match code {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            2 | 3 | 5 | 8 => BufferType::Other,
            4 => BufferType::HttpCallResponseBody,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            _ => return None,
        })
    }
}

/// Header maps a module can read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    /// gRPC initial/trailing metadata: not emulated.
    Grpc,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_code(code: i32) -> Option<MapType> {
        Some(match code {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 | 5 => MapType::Grpc,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// A header map as Envoy keeps it: ordered, keys lower-case, duplicates allowed.
pub type Headers = Vec<(String, String)>;

/// Copies `(name, value)` pairs into an owned map, lower-casing names as Envoy does on insertion.
pub fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string())).collect()
}

/// The first value of `name` (case-insensitive), as Envoy's `getHeaderMapValue` returns it.
pub fn header_value<'a>(map: &'a [(String, String)], name: &str) -> Option<&'a str> {
    map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Serializes pairs in the ABI layout: u32 count, then (u32 key_len, u32 value_len) per pair, then each key
/// and value followed by a NUL byte; all little-endian.
pub fn serialize_map(map: &[(String, String)]) -> Vec<u8> {
    let data_len: usize = map.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + map.len() * 8 + data_len);
    out.extend_from_slice(&len_u32(map.len()).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&len_u32(k.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.len()).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Envoy's caps on a header map coming from the module (proxy-wasm-cpp-host).
pub(crate) const MAX_MAP_BYTES: usize = 1 << 20;
pub(crate) const MAX_MAP_PAIRS: usize = 1024;

/// Why a serialized map from the module could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapDecodeError {
    /// The buffer ends before the count, the length table or a key/value says it should.
    Truncated { needed: usize, len: usize },
    /// More than 1 MiB or 1024 pairs, the limits Envoy's host enforces.
    TooLarge { bytes: usize, pairs: usize },
    /// A key or value is not UTF-8 (Envoy would accept bytes; the harness keeps maps as text).
    NotUtf8 { pair: usize },
}

impl fmt::Display for MapDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapDecodeError::Truncated { needed, len } => {
                write!(f, "serialized header map truncated: needs {needed} bytes, has {len}")
            }
            MapDecodeError::TooLarge { bytes, pairs } => write!(
                f,
                "serialized header map too large: {bytes} bytes / {pairs} pairs \
                 (Envoy accepts at most {MAX_MAP_BYTES} bytes and {MAX_MAP_PAIRS} pairs)"
            ),
            MapDecodeError::NotUtf8 { pair } => write!(f, "header pair {pair} is not UTF-8"),
        }
    }
}

impl std::error::Error for MapDecodeError {}

/// Parses the ABI layout produced by [`serialize_map`] (and by the SDK).
pub fn deserialize_map(bytes: &[u8]) -> Result<Headers, MapDecodeError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    if bytes.len() > MAX_MAP_BYTES || count > MAX_MAP_PAIRS {
        return Err(MapDecodeError::TooLarge { bytes: bytes.len(), pairs: count });
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        sizes.push((read_u32(bytes, at)? as usize, read_u32(bytes, at + 4)? as usize));
    }
    let mut pos = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (pair, (klen, vlen)) in sizes.into_iter().enumerate() {
        let key = slice(bytes, pos, klen)?;
        pos += klen + 1;
        let value = slice(bytes, pos, vlen)?;
        pos += vlen + 1;
        let key = std::str::from_utf8(key).map_err(|_| MapDecodeError::NotUtf8 { pair })?;
        let value = std::str::from_utf8(value).map_err(|_| MapDecodeError::NotUtf8 { pair })?;
        out.push((key.to_ascii_lowercase(), value.to_string()));
    }
    Ok(out)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, MapDecodeError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or(MapDecodeError::Truncated { needed: at + 4, len: bytes.len() })
}

fn slice(bytes: &[u8], at: usize, len: usize) -> Result<&[u8], MapDecodeError> {
    // Each key and value is followed by a NUL the reader skips.
    let end =
        at.checked_add(len).ok_or(MapDecodeError::Truncated { needed: usize::MAX, len: bytes.len() })?;
    if end >= bytes.len() {
        return Err(MapDecodeError::Truncated { needed: end + 1, len: bytes.len() });
    }
    bytes.get(at..end).ok_or(MapDecodeError::Truncated { needed: end, len: bytes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_layout_matches_the_sdk_test_vector() {
        // The SDK's own vector for [("Powered-By", "proxy-wasm")]-style maps: count, lengths, NUL-ended data.
        let map = headers(&[("a", "bc"), (":path", "")]);
        let bytes = serialize_map(&map);
        let mut expected = vec![2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"a\0bc\0:path\0\0");
        assert_eq!(bytes, expected);
        assert_eq!(deserialize_map(&bytes), Ok(map));
    }

    #[test]
    fn truncated_and_oversized_maps_are_rejected_with_the_reason() {
        let bytes = serialize_map(&headers(&[("key", "value")]));
        let cut = bytes.get(..bytes.len() - 3).unwrap_or_default();
        assert!(matches!(deserialize_map(cut), Err(MapDecodeError::Truncated { .. })));
        let mut huge = 5000u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(deserialize_map(&huge), Err(MapDecodeError::TooLarge { bytes: 12, pairs: 5000 }));
        assert_eq!(deserialize_map(&[]), Ok(vec![]));
    }
}
