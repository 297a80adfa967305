//! Counts the Proxy-Wasm host calls each filter makes per request, in the harness's emulated Envoy. Every
//! call crosses the V8 boundary and most take an Envoy lock or copy, so the count explains much of what the
//! timing tables show without needing symbols for Envoy's stripped binary.

use crate::gateway::picker_config;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use test_harness::{CalloutResponse, Event, Host, Plugin, VmId};

/// Host calls per request of one filter: the total and the most frequent calls.
pub struct Count {
    pub filter: String,
    pub body_kib: usize,
    pub per_request: f64,
    pub top: Vec<(String, f64)>,
}

const REQUESTS: usize = 20;

pub fn count(
    picker: &Path,
    floor: &Path,
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
    out.push(measure(&mut host, worker, body, "picker, 64 endpoints", kib)?);

    let mut host = Host::builder().buffer_limit(4 << 20).build();
    let worker = host
        .start_vm(
            Plugin::new(floor)
                .vm_id("floor")
                .configuration(fixed.as_str())
                .allow_on_headers_stop_iteration(true),
        )
        .map_err(|e| format!("floor VM: {e}"))?;
    out.push(measure(&mut host, worker, body, "floor (do-nothing Wasm)", kib)?);
    Ok(out)
}

fn measure(host: &mut Host, vm: VmId, body: &str, name: &str, kib: usize) -> Result<Count, String> {
    let headers = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "gateway"),
        ("content-type", "application/json"),
    ];
    let send = |host: &mut Host| -> Result<(), String> {
        let id = host.request(vm, &headers, body.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        host.respond(id, 200, b"{}").map_err(|e| format!("{name}: {e}"))?;
        let stream = host.stream(id);
        if stream.upstream_header("x-gateway-destination-endpoint").is_none() {
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
