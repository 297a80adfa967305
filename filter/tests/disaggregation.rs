//! llm-d's disaggregated prefill/decode (`disagg-profile-handler` with a `prefix-based-pd-decider`)
//! through the built module: the upstream request names the prefill pod in `x-prefiller-host-port` only
//! when the decode pod has too little of the prompt cached.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;

/// llm-d-router v0.10's deploy/config/sim-pd-epp-config.yaml, without its producer (a bare
/// prefix-cache-scorer hashes 16-token blocks), over a prefill pod 10.0.0.1 and a decode pod 10.0.0.2.
fn config(handler: &str) -> String {
    let pod = |i: usize, role: &str| {
        format!(r#"{{"address": "{}", "role": "{role}", "labels": {{"llm-d.ai/role": "{role}"}}}}"#, addr(i))
    };
    format!(
        r#"{{"pool": {{"name": "pool", "endpoints": [{}, {}]}},
            "plugins": [{{"type": "prefix-cache-scorer"}}, {{"type": "queue-scorer"}}, {{"type": "prefill-filter"}},
              {{"type": "decode-filter"}}, {{"type": "max-score-picker"}},
              {{"type": "prefix-based-pd-decider", "parameters": {{"nonCachedTokens": 16}}}}, {handler}],
            "schedulingProfiles": [
              {{"name": "prefill", "plugins": [{{"pluginRef": "prefill-filter"}}, {{"pluginRef": "max-score-picker"}},
                {{"pluginRef": "prefix-cache-scorer", "weight": 2}}, {{"pluginRef": "queue-scorer", "weight": 1}}]}},
              {{"name": "decode", "plugins": [{{"pluginRef": "decode-filter"}}, {{"pluginRef": "max-score-picker"}},
                {{"pluginRef": "prefix-cache-scorer", "weight": 2}}, {{"pluginRef": "queue-scorer", "weight": 1}}]}}]}}"#,
        pod(1, "prefill"),
        pod(2, "decode"),
    )
}

fn body(words: usize) -> String {
    let content: Vec<String> = (0..words).map(|i| format!("word{i}")).collect();
    format!(r#"{{"model": "llama", "messages": [{{"role": "user", "content": "{}"}}]}}"#, content.join(" "))
}

/// (destination, prefill header) of two identical requests, then of a longer one with the same start.
fn run(handler: &str) -> Vec<(Option<String>, Option<String>)> {
    let mut host = host();
    let cfg = config(handler);
    let worker = host.start_vm(picker(&cfg)).unwrap();
    host.start_vm(collector(&cfg)).unwrap();
    scrape_round(&mut host, &[0, 0]);
    let mut out = Vec::new();
    for words in [300, 300, 600] {
        let s = send(&mut host, worker, &body(words), &[("x-prefiller-host-port", "6.6.6.6:1")]);
        let header = |name: &str| s.upstream_header(name).map(str::to_string);
        out.push((header("x-gateway-destination-endpoint"), header("x-prefiller-host-port")));
    }
    assert_no_traps(&host);
    out
}

#[test]
fn the_prefill_pod_is_named_only_for_prompts_the_decode_pod_has_not_cached() {
    let decode = Some(addr(2));
    let prefill = Some(addr(1));
    let expected =
        vec![(decode.clone(), prefill.clone()), (decode.clone(), None), (decode.clone(), prefill.clone())];
    // The current parameters, and the deprecated flat ones.
    let nested = r#"{"type": "disagg-profile-handler", "parameters": {"deciders": {"prefill": "prefix-based-pd-decider"}}}"#;
    assert_eq!(run(nested), expected);
    let flat = r#"{"type": "disagg-profile-handler", "parameters": {"deciderPluginName": "prefix-based-pd-decider"}}"#;
    assert_eq!(run(flat), expected);
    // pd-profile-handler with llm-d v0.10's parameters means the same.
    let pd =
        r#"{"type": "pd-profile-handler", "parameters": {"deciderPluginName": "prefix-based-pd-decider"}}"#;
    assert_eq!(run(pd), expected);
}
