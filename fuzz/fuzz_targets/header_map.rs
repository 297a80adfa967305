//! The Proxy-Wasm header-map serialization the filter reads from the host (`filter/src/header_map.rs`):
//! any bytes parse or are refused; a parsed map serializes back to a map with the same pairs, and pairs
//! serialized parse back to themselves.
#![no_main]

use arbitrary::Arbitrary;
use epp_filter::header_map::{serialize, HeaderMap};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    Pairs(Vec<(String, Vec<u8>)>),
}

fn pairs_of(map: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

fuzz_target!(|input: Input| match input {
    Input::Bytes(b) => {
        let Ok(map) = HeaderMap::parse(b) else { return };
        let pairs = pairs_of(&map);
        assert_eq!(pairs.len(), map.len());
        for (k, _) in &pairs {
            if let Ok(name) = std::str::from_utf8(k) {
                assert!(map.contains(name));
                let _ = map.get_str(name);
            }
        }
        let texts: Option<Vec<(&str, &[u8])>> =
            pairs.iter().map(|(k, v)| std::str::from_utf8(k).ok().map(|k| (k, v.as_slice()))).collect();
        if let Some(texts) = texts {
            let again = serialize(&texts).and_then(|b| HeaderMap::parse(b).ok());
            assert_eq!(again.as_ref().map(pairs_of), Some(pairs));
        }
    }
    Input::Pairs(pairs) => {
        let refs: Vec<(&str, &[u8])> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        let Some(bytes) = serialize(&refs) else { return };
        match HeaderMap::parse(bytes) {
            Ok(map) => {
                let got = pairs_of(&map);
                let want: Vec<(Vec<u8>, Vec<u8>)> =
                    pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect();
                assert_eq!(got, want);
            }
            Err(e) => panic!("serialized pairs do not parse: {e}"),
        }
    }
});
