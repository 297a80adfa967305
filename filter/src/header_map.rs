//! A whole header map as the proxy serializes it, read with one host call instead of one per header
//! (each returned value costs a call back into the VM to allocate it), and kept as bytes: the SDK's
//! getters panic on a header value that is not UTF-8, which any client can send.
//!
//! Wire format (Proxy-Wasm ABI): `u32` pair count, then per pair `u32` name length and `u32` value
//! length, then each name and value followed by a NUL byte; all integers little-endian.

use std::borrow::Cow;
use std::vec::Vec;

/// A serialized header map and the (name, value) spans found in it.
#[derive(Debug, Default)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    /// (name start, name end, value start, value end) into `bytes`.
    spans: Vec<(usize, usize, usize, usize)>,
}

/// Why a serialized map could not be read (the proxy sent something that is not the ABI's format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedMap(pub &'static str);

impl core::fmt::Display for MalformedMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "header map not in the Proxy-Wasm format: {}", self.0)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    let v = u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]);
    usize::try_from(v).ok()
}

/// A header map in the same serialization (for local replies and callouts); `None` if a length does not
/// fit the format's `u32`.
pub fn serialize(pairs: &[(&str, &[u8])]) -> Option<Vec<u8>> {
    let size = pairs
        .iter()
        .try_fold(4usize, |n, (k, v)| n.checked_add(k.len())?.checked_add(v.len())?.checked_add(10))?;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(pairs.len()).ok()?.to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&u32::try_from(k.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).ok()?.to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    Some(out)
}

impl HeaderMap {
    /// Reads the proxy's serialization; an empty buffer is an empty map.
    pub fn parse(bytes: Vec<u8>) -> Result<HeaderMap, MalformedMap> {
        if bytes.is_empty() {
            return Ok(HeaderMap::default());
        }
        let count = u32_at(&bytes, 0).ok_or(MalformedMap("no pair count"))?;
        // Every pair needs 8 bytes of lengths and 2 NULs: a count the buffer cannot hold is corrupt, and
        // checking it first keeps a bogus count from reserving memory.
        if count.saturating_mul(10) > bytes.len() {
            return Err(MalformedMap("pair count larger than the buffer"));
        }
        let mut spans = Vec::with_capacity(count);
        let mut at = count.checked_mul(8).and_then(|n| n.checked_add(4)).ok_or(MalformedMap("overflow"))?;
        for i in 0..count {
            let lengths = 4 + i * 8;
            let (Some(name_len), Some(value_len)) = (u32_at(&bytes, lengths), u32_at(&bytes, lengths + 4))
            else {
                return Err(MalformedMap("truncated lengths"));
            };
            let name = (at, at.checked_add(name_len).ok_or(MalformedMap("overflow"))?);
            let value_start = name.1.checked_add(1).ok_or(MalformedMap("overflow"))?;
            let value = (value_start, value_start.checked_add(value_len).ok_or(MalformedMap("overflow"))?);
            if value.1 >= bytes.len() {
                return Err(MalformedMap("truncated pair"));
            }
            spans.push((name.0, name.1, value.0, value.1));
            at = value.1 + 1;
        }
        Ok(HeaderMap { bytes, spans })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every (name, value) in the proxy's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans
            .iter()
            .filter_map(|&(n0, n1, v0, v1)| Some((self.bytes.get(n0..n1)?, self.bytes.get(v0..v1)?)))
    }

    /// The first value of `name` (compared ASCII case-insensitively; the proxy lower-cases names).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    /// The value as text: bytes that are not UTF-8 become U+FFFD rather than an error, since the
    /// headers the picker reads (ids, tokens, names) are opaque to it.
    pub fn get_str(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(String::from_utf8_lossy)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl scheduler_core::exchange::HeaderLookup for HeaderMap {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        super::serialize(pairs).unwrap()
    }

    #[test]
    fn reads_pairs_in_order_including_empty_and_binary_values() {
        let m = HeaderMap::parse(serialize(&[
            (":path", b"/v1/chat/completions"),
            ("x-empty", b""),
            ("x-session-token", b"caf\xe9\xff"),
            ("x-dup", b"1"),
            ("x-dup", b"2"),
        ]))
        .unwrap();
        assert_eq!(m.len(), 5);
        let pairs: Vec<(&[u8], &[u8])> = m.iter().collect();
        assert_eq!(pairs[2], (&b"x-session-token"[..], &b"caf\xe9\xff"[..]), "round trip keeps bytes");
        assert_eq!(m.get(":path"), Some(&b"/v1/chat/completions"[..]));
        assert_eq!(m.get("X-Empty"), Some(&b""[..]));
        assert_eq!(m.get("x-dup"), Some(&b"1"[..]), "first value wins");
        assert_eq!(m.get_str("x-session-token").unwrap(), "caf\u{fffd}\u{fffd}");
        assert!(!m.contains("x-request-id"));
    }

    #[test]
    fn empty_buffer_is_an_empty_map() {
        let m = HeaderMap::parse(Vec::new()).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.get(":path"), None);
    }

    #[test]
    fn corrupt_serializations_are_errors_not_panics() {
        let good = serialize(&[("a", b"bc"), ("de", b"f")]);
        for cut in 0..good.len() {
            let r = HeaderMap::parse(good[..cut].to_vec());
            assert!(cut == 0 || r.is_err(), "truncated at {cut} parsed as {r:?}");
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::parse(huge).unwrap_err(), MalformedMap("pair count larger than the buffer"));
        let mut long = good.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::parse(long).is_err());
    }
}
