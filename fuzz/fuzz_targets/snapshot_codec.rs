//! The snapshot codec (shared data and the companion collector's HTTP answer): arbitrary bytes decode or
//! are refused; a decoded snapshot encodes to bytes that decode to the same encoding; and snapshots built
//! from arbitrary parts survive the round trip, then decode safely after arbitrary damage.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use scheduler_core::config::gateway::GatewayConfig;
use scheduler_core::model::{Endpoint, EndpointState, Engine, InFlight, Metrics, PoolSnapshot, Role};
use scheduler_core::snapshot_codec::{decode, encode, encode_v1, peek_generation, peek_version};

#[derive(Arbitrary, Debug)]
struct Ep {
    address: String,
    role: u8,
    engine: u8,
    labels: Vec<(String, String)>,
    metrics: Option<(u32, u32, f64, Vec<String>, Vec<String>, Option<u32>, Option<u32>, Option<u32>, u64)>,
    failures: u32,
    in_flight: (u32, u64),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Bytes(Vec<u8>),
    Built {
        generation: u64,
        published_at_ms: u64,
        pool: String,
        endpoints: Vec<Ep>,
        rewrites: bool,
        v1: bool,
        /// (position, xor) pairs applied to the encoding.
        damage: Vec<(u16, u8)>,
        truncate: Option<u16>,
    },
}

fn snapshot(
    generation: u64,
    published_at_ms: u64,
    pool: String,
    eps: Vec<Ep>,
    rewrites: bool,
) -> PoolSnapshot {
    let mut s = PoolSnapshot { generation, published_at_ms, pool, ..PoolSnapshot::default() };
    for e in eps {
        let mut labels = e.labels;
        labels.sort();
        let endpoint = Endpoint {
            address: e.address,
            role: wasm_epp_fuzz::pick(&[Role::Both, Role::Prefill, Role::Decode], e.role),
            engine: wasm_epp_fuzz::pick(&Engine::ALL, e.engine),
            labels,
        };
        let metrics = e.metrics.map(|(waiting, running, kv, rl, wl, max_lora, block, blocks, at)| Metrics {
            waiting,
            running,
            kv_usage: kv,
            running_loras: rl,
            waiting_loras: wl,
            max_lora,
            block_size: block,
            num_gpu_blocks: blocks,
            updated_at_ms: at,
            ..Metrics::default()
        });
        s.endpoints.push(EndpointState {
            endpoint,
            metrics,
            consecutive_scrape_failures: e.failures,
            in_flight: InFlight { requests: e.in_flight.0, tokens: e.in_flight.1, ..InFlight::default() },
        });
    }
    s.endpoints.sort_by(|a, b| a.endpoint.address.cmp(&b.endpoint.address));
    if rewrites {
        if let Ok(c) = GatewayConfig::from_json(wasm_epp_fuzz::CONFIGS[2]) {
            s.resources.rewrites = c.rewrites;
        }
    }
    s
}

/// Decodes `bytes`; whatever decodes re-encodes to bytes that decode to the same encoding.
fn check(bytes: &[u8]) {
    let version = peek_version(bytes);
    let generation = peek_generation(bytes);
    let Ok(s) = decode(bytes) else { return };
    assert_eq!(generation, Ok(s.generation));
    assert!(version.is_some());
    let again = encode(&s);
    match decode(&again) {
        Ok(t) => assert_eq!(encode(&t), again, "a decoded snapshot does not survive a round trip"),
        Err(e) => panic!("a decoded snapshot re-encodes to bytes that do not decode: {e:?}"),
    }
}

fuzz_target!(|input: Input| match input {
    Input::Bytes(b) => check(&b),
    Input::Built { generation, published_at_ms, pool, endpoints, rewrites, v1, damage, truncate } => {
        let s = snapshot(generation, published_at_ms, pool, endpoints, rewrites);
        let mut bytes = if v1 { encode_v1(&s) } else { encode(&s) };
        match decode(&bytes) {
            // Version 1 has no resources section; version 2 keeps everything.
            Ok(t) => assert!(v1 || encode(&t) == encode(&s), "a snapshot does not survive a round trip"),
            Err(e) => panic!("an encoded snapshot does not decode: {e:?}"),
        }
        for (at, xor) in damage {
            let n = bytes.len();
            if n > 0 {
                bytes[usize::from(at) % n] ^= xor;
            }
        }
        if let Some(t) = truncate {
            bytes.truncate(usize::from(t));
        }
        check(&bytes);
    }
});
