//! Random bytes as request bodies, on every API path, chunked at random: the module never traps, and every
//! request is either routed or answered with a JSON error.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use proptest::prelude::*;

const PATHS: [&str; 4] = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_body_traps_the_module(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        json_like in any::<bool>(),
        path in 0usize..PATHS.len(),
        split in any::<prop::sample::Index>(),
    ) {
        let mut host = host();
        let worker = host.start_vm(picker(&config(2, r#""limits": {"maxBodyBytes": 1500}"#))).unwrap();
        write_snapshot(&mut host, 1, &[1, 2]);
        // Half the cases look like a request with random bytes inside, to get past the first byte.
        let body = if json_like {
            let mut b = br#"{"model": "m", "messages": [{"role": "user", "content": ""#.to_vec();
            b.extend_from_slice(&body);
            b
        } else {
            body
        };
        let headers = [(":method", "POST"), (":path", PATHS[path]), (":authority", "gw")];
        let s = host.start_request(worker, &headers, body.is_empty()).unwrap();
        if !body.is_empty() {
            let (first, rest) = body.split_at(split.index(body.len()));
            host.request_body(s, first, rest.is_empty()).unwrap();
            if !rest.is_empty() {
                host.request_body(s, rest, true).unwrap();
            }
        }
        prop_assert!(host.traps().is_empty(), "{:?}", host.traps());
        let st = host.stream(s);
        match &st.local_reply {
            Some(reply) => {
                prop_assert!([400u32, 413].contains(&reply.status), "status {}", reply.status);
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&reply.body).is_ok());
            }
            None => prop_assert!(destination(&st).is_some(), "neither routed nor answered"),
        }
        if st.local_reply.is_none() {
            host.respond(s, 200, b"{}").unwrap();
        }
        prop_assert_eq!(in_flight_total(&host), 0);
    }
}
