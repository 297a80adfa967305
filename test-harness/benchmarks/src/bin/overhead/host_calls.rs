//! Counts the Proxy-Wasm host calls each filter makes per request, in the harness's emulated Envoy. Every
//! call crosses the V8 boundary and most take an Envoy lock or copy, so the count explains much of what the
//! timing tables show without needing symbols for Envoy's stripped binary.

use crate::gateway::{bbr_config, picker_config};
use proxy_wasm_emulator::{CalloutResponse, Event, Host, Plugin, VmId};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Host calls per request of one filter: the total and the most frequent calls.
pub struct Count {
    pub filter: String,
    pub body_kib: usize,
    pub per_request: f64,
    pub top: Vec<(String, f64)>,
}

const REQUESTS: usize = 20;

/// The header whose presence upstream shows a request was routed: the picker's and the floors'.
const DESTINATION: &str = "x-gateway-destination-endpoint";
/// The one body-based routing promotes and the route table matches.
const BASE_MODEL: &str = "x-gateway-base-model-name";

/// The picker's count, then each floor's (`floors`: module and label), then the picker module's in its
/// body-routing role (`root_id: bbr`).
pub fn count(
    picker: &Path,
    floors: &[(&Path, &str)],
    pool: &[String],
    body: &str,
    kib: usize,
) -> Result<Vec<Count>, String> {
    let fixed = pool.first().cloned().unwrap_or_default();
    let mut out = Vec::new();

    let mut host = Host::builder().cluster("epp-metrics").buffer_limit(4 << 20).build();
    let config = picker_config(pool, 64, 1000);
    host.start_vm(Plugin::new(picker).root_id("collector").vm_id("epp").configuration(config.as_str()))
        .map_err(|e| format!("collector VM: {e}"))?;
    let worker = host
        .start_vm(
            Plugin::new(picker)
                .root_id("picker")
                .vm_id("epp")
                .configuration(config.as_str())
                .allow_on_headers_stop_iteration(true),
        )
        .map_err(|e| format!("picker VM: {e}"))?;
    for _ in 0..3 {
        host.advance(Duration::from_millis(1000));
        for call in host.pending_callouts() {
            host.answer_callout(call.id, CalloutResponse::new(200).body(crate::backend::METRICS))
                .map_err(|e| format!("scrape answer: {e}"))?;
        }
    }
    out.push(measure(&mut host, worker, body, "picker, 64 endpoints", kib, DESTINATION)?);

    for (floor, label) in floors {
        let (mut host, worker) = floor_host(floor, &fixed)?;
        out.push(measure(&mut host, worker, body, label, kib, DESTINATION)?);
    }

    let (mut host, worker) = bbr_host(picker)?;
    out.push(measure(&mut host, worker, body, "in-proxy BBR alone (root_id bbr)", kib, BASE_MODEL)?);
    Ok(out)
}

/// An emulated proxy running a floor module that routes to `fixed`.
fn floor_host(floor: &Path, fixed: &str) -> Result<(Host, VmId), String> {
    let mut host = Host::builder().buffer_limit(4 << 20).build();
    let worker = host
        .start_vm(
            Plugin::new(floor).vm_id("floor").configuration(fixed).allow_on_headers_stop_iteration(true),
        )
        .map_err(|e| format!("floor VM: {e}"))?;
    Ok((host, worker))
}

/// An emulated proxy running the picker module as the body router, configured as the benchmark's.
fn bbr_host(picker: &Path) -> Result<(Host, VmId), String> {
    let mut host = Host::builder().buffer_limit(4 << 20).build();
    let config = bbr_config();
    let worker = host
        .start_vm(
            Plugin::new(picker)
                .root_id("bbr")
                .vm_id("bbr")
                .configuration(config.as_str())
                .allow_on_headers_stop_iteration(true),
        )
        .map_err(|e| format!("bbr VM: {e}"))?;
    Ok((host, worker))
}

const HEADERS: [(&str, &str); 4] = [
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    (":authority", "gateway"),
    ("content-type", "application/json"),
];

/// Host calls per request of `vm` over 20 requests after 5 warm ones; each must reach upstream with
/// `routed_by` set.
fn measure(
    host: &mut Host,
    vm: VmId,
    body: &str,
    name: &str,
    kib: usize,
    routed_by: &str,
) -> Result<Count, String> {
    let send = |host: &mut Host| -> Result<(), String> {
        let id = host.request(vm, &HEADERS, body.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        host.respond(id, 200, b"{}").map_err(|e| format!("{name}: {e}"))?;
        let stream = host.stream(id);
        if stream.upstream_header(routed_by).is_none() {
            return Err(format!("{name}: the emulated request was not routed: {stream:?}"));
        }
        Ok(())
    };
    // Warm: the snapshot decoded, the prefix index filled.
    for _ in 0..5 {
        send(host)?;
    }
    let before = host.transcript().len();
    for _ in 0..REQUESTS {
        send(host)?;
    }
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for event in host.transcript().iter().skip(before) {
        if let Event::HostCall { vm: v, name, .. } = event {
            if *v == vm {
                *by_name.entry(name.clone()).or_default() += 1;
            }
        }
    }
    let total: usize = by_name.values().sum();
    let mut top: Vec<(String, f64)> =
        by_name.into_iter().map(|(n, c)| (n, c as f64 / REQUESTS as f64)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(8);
    Ok(Count { filter: name.to_string(), body_kib: kib, per_request: total as f64 / REQUESTS as f64, top })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both builds of the floor fixture route a valid request to the fixed address; the reading floor
    /// reads the request as the picker does, so it also refuses a body that is not one, with the reader's
    /// error, where the do-nothing floor passes it on unread.
    #[test]
    fn the_floors_route_to_the_fixed_address_and_only_the_reading_floor_reads_the_body() {
        let (floor, reading) = crate::gateway::build_floors(&e2e::workspace_root()).unwrap();
        let fixed = "127.0.0.1:20000";
        let valid = crate::load::chat_body(4 * 1024);
        let invalid = r#"{"model":"m","messages":"not a list"}"#;
        for (module, reads) in [(&floor, false), (&reading, true)] {
            let (mut host, vm) = floor_host(module, fixed).unwrap();
            let id = host.request(vm, &HEADERS, valid.as_bytes()).unwrap();
            let stream = host.stream(id);
            assert_eq!(stream.upstream_header("x-gateway-destination-endpoint"), Some(fixed), "{stream:?}");
            assert!(stream.local_reply.is_none());

            let id = host.request(vm, &HEADERS, invalid.as_bytes()).unwrap();
            let stream = host.stream(id);
            if reads {
                let reply = stream.local_reply.as_ref().expect("the reading floor refuses an invalid body");
                assert_eq!(reply.status, 400);
                assert!(String::from_utf8_lossy(&reply.body).contains("messages"), "{reply:?}");
                assert_eq!(stream.upstream_header("x-gateway-destination-endpoint"), None);
            } else {
                assert_eq!(stream.upstream_header("x-gateway-destination-endpoint"), Some(fixed));
            }
        }
        // The reading floor's extra host call is the `:path` read; both copy the body once.
        let body = crate::load::chat_body(4 * 1024);
        let (mut host, vm) = floor_host(&reading, fixed).unwrap();
        let read = measure(&mut host, vm, &body, "reading floor", 4, DESTINATION).unwrap();
        let (mut host, vm) = floor_host(&floor, fixed).unwrap();
        let plain = measure(&mut host, vm, &body, "floor", 4, DESTINATION).unwrap();
        assert_eq!(read.per_request, plain.per_request + 1.0);
        let calls = |c: &Count, name: &str| c.top.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
        assert_eq!(calls(&read, "proxy_get_header_map_value"), Some(1.0), "{:?}", read.top);
        assert_eq!(calls(&read, "proxy_get_buffer_bytes"), calls(&plain, "proxy_get_buffer_bytes"));
    }

    /// The body router promotes the model and its base to the upstream request from the benchmark's
    /// body, removing a client's copy first, and answers a model it does not know with a 404.
    #[test]
    fn the_body_router_promotes_the_base_model_and_refuses_an_unknown_one() {
        let picker = e2e::filter_wasm().unwrap();
        let (mut host, vm) = bbr_host(&picker).unwrap();
        let body = crate::load::chat_body(4 * 1024);
        let mut spoofed = HEADERS.to_vec();
        spoofed.push((BASE_MODEL, "other"));
        let id = host.request(vm, &spoofed, body.as_bytes()).unwrap();
        let stream = host.stream(id);
        assert_eq!(stream.upstream_header(BASE_MODEL), Some("m"), "{stream:?}");
        assert_eq!(stream.upstream_header("x-gateway-model-name"), Some("m"), "{stream:?}");

        let id = host
            .request(vm, &HEADERS, br#"{"model":"nobody","messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap();
        let stream = host.stream(id);
        assert_eq!(stream.local_reply.as_ref().map(|r| r.status), Some(404), "{stream:?}");
        assert_eq!(stream.upstream_header(BASE_MODEL), None);

        let count = measure(&mut host, vm, &body, "bbr", 4, BASE_MODEL).unwrap();
        assert!(count.per_request >= 3.0, "headers set and the body read: {:?}", count.top);
    }
}
