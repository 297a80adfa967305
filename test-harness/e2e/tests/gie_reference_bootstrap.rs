//! GIE's reference Envoy bootstrap (`fixtures/gie/envoy.yaml`: upstream's `test/testdata/envoy.yaml`,
//! adapted only in addresses and ports) in a real Envoy, asking the real epp-shim over TLS, in front of
//! model-sim replicas. That bootstrap health-checks its `ext_proc` cluster with gRPC health on the
//! ext_proc port (service `envoy.service.ext_proc.v3.ExternalProcessor`, TLS, ALPN h2), as the reference
//! picker answers it: the shim must pass that check, so the cluster is healthy rather than routed to in
//! panic mode, and completions must reach a replica. Skipped with a notice when Envoy is not installed.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request};
use std::time::{Duration, Instant};

const SERVED_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn fixture() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/gie/envoy.yaml");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The `ext_proc` cluster's hosts and their `health_flags` from the admin `/clusters`.
fn ext_proc_health_flags(envoy: &Envoy) -> Vec<(String, String)> {
    let r = Request::get("/clusters").timeout(Duration::from_secs(5)).send(envoy.admin()).unwrap();
    r.text()
        .lines()
        .filter_map(|l| {
            let (host, flags) = l.strip_prefix("ext_proc::")?.split_once("::health_flags::")?;
            Some((host.to_string(), flags.trim().to_string()))
        })
        .collect()
}

#[test]
fn reference_bootstrap_sees_a_healthy_ext_proc_cluster_and_routes_completions() {
    require!(envoy);
    let sims = ModelSim::start_many(3, |_| {
        ["--time-scale", "0.01", "--default-output-tokens", "8"].map(String::from).to_vec()
    })
    .unwrap();
    let endpoints: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr())).collect();
    let config = format!(r#"{{"pool": {{"name": "sim", "endpoints": [{}]}}}}"#, endpoints.join(", "));
    // TLS with a self-signed certificate, as the reference picker serves by default.
    let shim = EppShim::start(&config, &[]).unwrap();
    let (host, port) = shim.ext_proc().rsplit_once(':').unwrap();

    let template = EnvoyTemplate::inline("gie-reference", &fixture())
        .set("EXT_PROC_HOST", host)
        .set("PORT_EXT_PROC", port)
        .set("E2E_NS", "e2e");
    let envoy =
        Envoy::start(&template, &EnvoyOptions { log_level: "warn".into(), ..EnvoyOptions::default() })
            .unwrap_or_else(|e| panic!("Envoy with GIE's reference bootstrap: {e}"));
    let gateway = envoy.listener_named("vllm").expect("the bootstrap's `vllm` listener").to_string();

    // Envoy checks a new host at once; one pass marks it healthy. Before the shim answered health on the
    // ext_proc port, the flags stayed `/failed_active_hc` and traffic flowed only in panic mode.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let flags = ext_proc_health_flags(&envoy);
        if !flags.is_empty() && flags.iter().all(|(_, f)| f == "healthy") {
            break;
        }
        assert!(Instant::now() < deadline, "ext_proc cluster not healthy within 20 s: {flags:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(envoy.stat("cluster.ext_proc.health_check.success").unwrap_or(0) >= 1);
    assert_eq!(envoy.stat("cluster.ext_proc.health_check.failure"), Some(0));

    let replicas: Vec<&str> = sims.iter().map(ModelSim::replica).collect();
    let mut answered = Vec::new();
    for i in 0..9 {
        let body = format!(
            r#"{{"model":"{SERVED_MODEL}","messages":[{{"role":"user","content":"hello {i}"}}],"max_tokens":4}}"#
        );
        let reply = Request::post_json("/v1/chat/completions", body)
            .timeout(Duration::from_secs(10))
            .send(&gateway)
            .unwrap();
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        let replica = reply.header("x-model-sim-replica").expect("answered by a replica").to_string();
        assert!(replicas.contains(&replica.as_str()), "{replica} not in {replicas:?}");
        answered.push(replica);
    }
    // Through the picker's destination header (the bootstrap's ORIGINAL_DST cluster), with the ext_proc
    // cluster healthy the whole time, never in panic mode.
    assert_eq!(envoy.stat("cluster.original_destination_cluster.upstream_rq_200"), Some(9), "{answered:?}");
    assert_eq!(envoy.stat("cluster.ext_proc.lb_healthy_panic").unwrap_or(0), 0);
    let flags = ext_proc_health_flags(&envoy);
    assert!(flags.iter().all(|(_, f)| f == "healthy"), "{flags:?}");
}
