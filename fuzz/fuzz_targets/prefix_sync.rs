//! The prefix-sync messages Envoy workers exchange through shared queues (`filter/src/prefix_sync.rs`):
//! any bytes are an update, a batch, a join or nothing; what decodes re-encodes to the same bytes, and
//! what is encoded decodes back.
#![no_main]

use arbitrary::Arbitrary;
use epp_filter::prefix_sync::{decode, decode_batch, decode_join, encode, encode_join};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    Update { address: String, hashes: Vec<u64>, cut: Option<u16> },
    Join { worker: u32 },
}

fn check(bytes: &[u8]) {
    if let Some(u) = decode(bytes) {
        assert_eq!(encode(&u.address, &u.hashes), bytes, "an update does not re-encode to itself");
    }
    if let Some(updates) = decode_batch(bytes) {
        for u in &updates {
            assert!(u.address.len() <= usize::from(u16::MAX));
        }
    }
    if let Some(worker) = decode_join(bytes) {
        assert_eq!(encode_join(worker), bytes);
    }
}

fuzz_target!(|input: Input| match input {
    Input::Bytes(b) => check(&b),
    Input::Update { address, hashes, cut } => {
        let bytes = encode(&address, &hashes);
        match decode(&bytes) {
            Some(u) => assert!(u.address == address && u.hashes == hashes),
            None => panic!("an encoded update does not decode"),
        }
        let end = cut.map_or(bytes.len(), |c| usize::from(c).min(bytes.len()));
        check(&bytes[..end]);
    }
    Input::Join { worker } => assert_eq!(decode_join(&encode_join(worker)), Some(worker)),
});
