//! The queue tables Envoy workers publish to each other in shared data (`filter/src/flow_share.rs`):
//! any bytes decode to a table or to nothing, never a panic; what decodes re-encodes to the same bytes,
//! and what is encoded decodes back.
#![no_main]

use arbitrary::Arbitrary;
use epp_filter::flow_share::{decode, encode};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    Table { written_ms: u64, bands: Vec<(i32, u64, u64)>, cut: Option<u16> },
}

fn check(bytes: &[u8]) {
    if let Some((written_ms, bands)) = decode(bytes) {
        assert_eq!(encode(written_ms, &bands), bytes, "a table does not re-encode to itself");
    }
}

fuzz_target!(|input: Input| match input {
    Input::Bytes(b) => check(&b),
    Input::Table { written_ms, bands, cut } => {
        let bytes = encode(written_ms, &bands);
        assert_eq!(decode(&bytes), Some((written_ms, bands)), "an encoded table does not decode back");
        let end = cut.map_or(bytes.len(), |c| usize::from(c).min(bytes.len()));
        check(&bytes[..end]);
    }
});
