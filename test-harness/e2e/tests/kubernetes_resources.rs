//! Kubernetes → companion collector → Wasm filter in a real Envoy: InferenceObjective and
//! InferenceModelRewrite resources that exist only in Kubernetes (a small fake API server on loopback)
//! reach the filter through `pool.discoveryUrl`, with nothing copied into the filter's configuration.
//! The shim runs as collector only (`--collector-only --kubernetes`), the filter polls its `/snapshot`.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use e2e::{require, Envoy, EnvoyOptions, EnvoyTemplate, EppShim, ModelSim, Request};
use scheduler_core::model::PoolSnapshot;
use scheduler_core::snapshot_codec;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// What model-sim serves (and so the only model it accepts).
const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const POOL: &str = "llama";

/// A fake API server for namespace `default`: the InferencePool `llama` selecting one pod at
/// `127.0.0.1` whose target port is the replica's, and the given InferenceObjective and
/// InferenceModelRewrite items (served in the `llm-d.ai/v1alpha2` group, as llm-d-router v0.10 installs
/// them). Watches stay open without events.
struct FakeApiServer {
    addr: String,
}

impl FakeApiServer {
    fn start(sim_port: u16, objectives: Vec<Value>, rewrites: Vec<Value>) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = json!({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": POOL, "namespace": "default", "resourceVersion": "3", "uid": "u-pool"},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": sim_port}]}
        });
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "sim-0", "namespace": "default", "resourceVersion": "4", "uid": "u-sim-0",
                         "labels": {"app": "sim"}},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let items = move |path: &str| -> Option<Value> {
            let list = |kind: &str, api_version: &str, items: Vec<Value>| json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items});
            Some(match path {
                "/apis/llm-d.ai/v1alpha2" => json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "llm-d.ai/v1alpha2",
                    "resources": [
                        {"name": "inferenceobjectives", "singularName": "inferenceobjective", "namespaced": true,
                         "kind": "InferenceObjective", "verbs": ["get", "list", "watch"]},
                        {"name": "inferencemodelrewrites", "singularName": "inferencemodelrewrite",
                         "namespaced": true, "kind": "InferenceModelRewrite", "verbs": ["get", "list", "watch"]}
                    ]
                }),
                "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools" => {
                    list("InferencePoolList", "inference.networking.k8s.io/v1", vec![pool.clone()])
                }
                "/api/v1/namespaces/default/pods" => list("PodList", "v1", vec![pod.clone()]),
                "/apis/llm-d.ai/v1alpha2/namespaces/default/inferenceobjectives" => {
                    list("InferenceObjectiveList", "llm-d.ai/v1alpha2", objectives.clone())
                }
                "/apis/llm-d.ai/v1alpha2/namespaces/default/inferencemodelrewrites" => {
                    list("InferenceModelRewriteList", "llm-d.ai/v1alpha2", rewrites.clone())
                }
                _ => return None,
            })
        };
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let items = items.clone();
                std::thread::spawn(move || answer(stream, &items));
            }
        });
        FakeApiServer { addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn answer(mut stream: TcpStream, items: &dyn Fn(&str) -> Option<Value>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).map_or(true, |n| n == 0) || l == "\r\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let Some(body) = items(path) else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    };
    if query.contains("watch=true") {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let _ = stream.flush();
        // Hold the watch open, as the API server does until its timeout.
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let body = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn objective(name: &str, priority: i32) -> Value {
    json!({
        "apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "11", "uid": format!("u-{name}")},
        "spec": {"priority": priority, "poolRef": {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": POOL}}
    })
}

fn rewrite(name: &str, from: &str, to: &str) -> Value {
    json!({
        "apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "12", "uid": format!("u-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"poolRef": {"name": POOL},
                 "rules": [{"matches": [{"model": {"type": "Exact", "value": from}}], "targets": [{"modelRewrite": to}]}]}
    })
}

/// The stack: fake API server → `epp-shim --collector-only --kubernetes` → Envoy with the filter polling
/// the shim's `/snapshot`. Returns once the filter can have read a snapshot carrying the resources.
struct Stack {
    envoy: Envoy,
    _shim: EppShim,
    _api: FakeApiServer,
}

fn start_stack(wasm: &Path, sim: &ModelSim, objectives: Vec<Value>, rewrites: Vec<Value>) -> Stack {
    let api = FakeApiServer::start(sim.port(), objectives, rewrites);
    let shim_config = json!({"pool": {"name": POOL}, "collector": {"intervalMs": 50, "timeoutMs": 500}});
    let shim = EppShim::start(
        &shim_config.to_string(),
        &[
            "--collector-only",
            "--plaintext",
            "--kubernetes",
            "--pool-namespace",
            "default",
            "--k8s-api-url",
            &api.url(),
        ],
    )
    .unwrap();
    let collector = shim.addr("http").to_string();
    // The shim has discovered the pod and read the resources.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let polled = Request::get("/snapshot").header("x-epp-snapshot-version", "2").send(&collector);
        let snapshot: Option<PoolSnapshot> =
            polled.ok().filter(|r| r.status == 200).and_then(|r| snapshot_codec::decode(&r.body).ok());
        if snapshot.as_ref().is_some_and(|s| !s.endpoints.is_empty() && !s.resources.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shim never published the pod and the resources:\n{}",
            shim.process().log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The filter's configuration names no objective and no rewrite: everything comes from the collector.
    let config = json!({
        "pool": {"name": POOL, "discoveryUrl": format!("http://{collector}/snapshot"), "discoveryCluster": "epp-collector"},
        "collector": {"intervalMs": 100, "timeoutMs": 1000}
    });
    let (ip, port) = collector.rsplit_once(':').unwrap();
    let mut text =
        std::fs::read_to_string(e2e::workspace_root().join("envoy-config/wasm-picker/envoy.yaml")).unwrap();
    // The collector service as a plain static cluster (clusters are the file's last section).
    text.push_str(&format!(
        "  - name: epp-collector\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: epp-collector\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: \"{ip}\", port_value: {port}}}}}}}}}]}}]\n"
    ));
    let template =
        EnvoyTemplate::inline("wasm-picker-discovery", &text).wasm(wasm).gateway_config(&config.to_string());
    let envoy = Envoy::start(&template, &EnvoyOptions::default()).unwrap();
    // A few polls (every 100 ms) before traffic.
    std::thread::sleep(Duration::from_millis(1500));
    Stack { envoy, _shim: shim, _api: api }
}

fn completion(model: &str) -> Request {
    Request::post_json(
        "/v1/completions",
        json!({"model": model, "prompt": "hello", "max_tokens": 4}).to_string(),
    )
}

#[test]
fn a_rewrite_only_in_kubernetes_changes_the_model_the_pod_sees() {
    let wasm = require!(filter);
    let sim = ModelSim::start(&["--time-scale", "0.05", "--default-output-tokens", "8"]).unwrap();
    let stack = start_stack(&wasm, &sim, vec![], vec![rewrite("alias", "team-alias", MODEL)]);

    // model-sim serves only MODEL and answers 404 for any other name: a 200 means it was asked for MODEL.
    let r = stack.envoy.send(&completion("team-alias")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["model"], "team-alias", "the client sees the model it asked for again");
    // A model no rule names is forwarded as it is, and the pod refuses it.
    let r = stack.envoy.send(&completion("unknown-model")).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("unknown-model"), "{}", r.text());
}

#[test]
fn an_objective_with_negative_priority_only_in_kubernetes_makes_requests_sheddable() {
    let wasm = require!(filter);
    let sim = ModelSim::start(&[
        "--time-scale",
        "0.05",
        "--default-output-tokens",
        "8",
        "--max-num-seqs",
        "2",
        "--busy",
        "30",
        "--busy-output-tokens",
        "400",
    ])
    .unwrap();
    let stack = start_stack(&wasm, &sim, vec![objective("batch", -1), objective("chat", 10)], vec![]);

    let shed = stack.envoy.send(&completion(MODEL).header("x-gateway-inference-objective", "batch")).unwrap();
    assert_eq!(shed.status, 429, "{}", shed.text());
    let body: Value = serde_json::from_slice(&shed.body).unwrap();
    assert!(body["error"]["message"].is_string(), "OpenAI error shape: {body}");
    // Priority 10 is not sheddable: queued behind the load, then served.
    let served = stack
        .envoy
        .send(
            &completion(MODEL)
                .header("x-gateway-inference-objective", "chat")
                .timeout(Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(served.status, 200, "{}", served.text());
}

#[test]
fn the_shims_role_grants_list_and_watch_on_everything_it_watches() {
    let path = e2e::workspace_root().join("envoy-config/kubernetes/epp-shim-rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_yaml::Value> =
        text.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap()).collect();
    let of_kind = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let role = of_kind("Role");
    let grants = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_sequence().unwrap().iter().any(|r| {
            let has = |key: &str, v: &str| r[key].as_sequence().unwrap().iter().any(|x| x == v);
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    let mut watched = vec![("inference.networking.k8s.io", "inferencepools"), ("", "pods")];
    for group in ["llm-d.ai", "inference.networking.x-k8s.io"] {
        watched.push((group, "inferenceobjectives"));
        watched.push((group, "inferencemodelrewrites"));
    }
    for (group, resource) in watched {
        for verb in ["list", "watch"] {
            assert!(grants(group, resource, verb), "the Role does not grant {verb} on {group:?} {resource}");
        }
    }
    let binding = of_kind("RoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], of_kind("ServiceAccount")["metadata"]["name"]);
}
