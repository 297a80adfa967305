//! Cuts a body into the ≤ 62,000-byte pieces Envoy's streamed body mutations accept. Editing bodies
//! (model rewrite, model restored in responses) is the core's, shared with the Wasm filter.

/// Envoy caps one streamed body mutation at 62,000 bytes (GIE's reference picker uses the same size).
pub const MAX_CHUNK: usize = 62_000;

/// Splits `body` into pieces of at most [`MAX_CHUNK`] bytes; an empty body is one empty piece, because
/// Envoy needs a mutation carrying end-of-stream even then.
pub fn chunks(body: &[u8]) -> Vec<&[u8]> {
    if body.is_empty() {
        return vec![body];
    }
    body.chunks(MAX_CHUNK).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_at_most_62000_bytes_and_reassemble_exactly() {
        let body: Vec<u8> = (0..200_001u32).map(|i| (i % 251) as u8).collect();
        let pieces = chunks(&body);
        assert_eq!(pieces.iter().map(|c| c.len()).collect::<Vec<_>>(), [62_000, 62_000, 62_000, 14_001]);
        assert_eq!(pieces.concat(), body);
        assert_eq!(chunks(b""), vec![&b""[..]]);
    }
}
