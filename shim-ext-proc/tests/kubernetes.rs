//! Kubernetes discovery against a small fake API server on loopback that serves recorded list and
//! watch responses for one InferencePool and its pods, and InferenceObjective / InferenceModelRewrite
//! resources (no cluster is available in CI).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use epp_shim::endpoints::kubernetes::{self, KubeSettings};
use scheduler_core::model::PoolResources;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const POOL: &str = r#"{"apiVersion":"inference.networking.k8s.io/v1","kind":"InferencePool",
  "metadata":{"name":"llama","namespace":"default","resourceVersion":"3","uid":"u-pool"},
  "spec":{"selector":{"matchLabels":{"app":"vllm-llama"}},"targetPorts":[{"number":8000},{"number":8001}],
          "endpointPickerRef":{"name":"epp","kind":"Service","port":{"number":9002},"failureMode":"FailOpen"}}}"#;

fn pod(name: &str, ip: &str, ready: bool, extra_meta: &str, engine: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default","resourceVersion":"7","uid":"u-{name}"{extra_meta},
  "labels":{{"app":"vllm-llama","inference.networking.k8s.io/engine-type":"{engine}"}}}},
  "status":{{"podIP":"{ip}","conditions":[{{"type":"Ready","status":"{}"}}]}}}}"#,
        if ready { "True" } else { "False" }
    )
}

fn list(kind: &str, api_version: &str, items: &[String]) -> String {
    format!(
        r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"resourceVersion":"10"}},"items":[{}]}}"#,
        items.join(",")
    )
}

/// What the fake API server shares between its connections: how many pod watches were opened, and
/// whether the test has seen the listed pods (the watch event waits for it, or the discovery could
/// publish both states before the test reads the first).
#[derive(Default)]
struct Server {
    pod_watches: AtomicUsize,
    first_list_seen: AtomicBool,
    /// Serve InferenceObjective (legacy group) and InferenceModelRewrite (llm-d.ai); without, both 404.
    resources: bool,
    resource_watches: AtomicUsize,
    /// The test has seen the listed resources: the watches may send their events.
    resources_seen: AtomicBool,
}

const OBJECTIVES: &str =
    "/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/default/inferenceobjectives";
const REWRITES: &str = "/apis/llm-d.ai/v1alpha2/namespaces/default/inferencemodelrewrites";

fn objective(name: &str, priority: i32, pool: &str, group: &str) -> String {
    format!(
        r#"{{"apiVersion":"inference.networking.x-k8s.io/v1alpha2","kind":"InferenceObjective",
  "metadata":{{"name":"{name}","namespace":"default","resourceVersion":"11","uid":"u-{name}"}},
  "spec":{{"priority":{priority},"poolRef":{{"group":"{group}","kind":"InferencePool","name":"{pool}"}}}}}}"#
    )
}

fn rewrite(name: &str, created: &str, pool: &str, rules: &str) -> String {
    format!(
        r#"{{"apiVersion":"llm-d.ai/v1alpha2","kind":"InferenceModelRewrite",
  "metadata":{{"name":"{name}","namespace":"default","resourceVersion":"12","uid":"u-{name}","creationTimestamp":"{created}"}},
  "spec":{{"poolRef":{{"name":"{pool}"}},"rules":{rules}}}}}"#
    )
}

const CANARY_RULES: &str = r#"[{"matches":[{"model":{"type":"Exact","value":"llama"}}],
  "targets":[{"modelRewrite":"llama-v1","weight":90},{"modelRewrite":"llama-v2","weight":10}]}]"#;
const CATCH_ALL_RULES: &str = r#"[{"targets":[{"modelRewrite":"fallback"}]}]"#;

fn resource_lists(target: &str) -> Option<String> {
    let group_list = |gv: &str, plural: &str, kind: &str| {
        format!(
            r#"{{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"{gv}","resources":[
              {{"name":"{plural}","singularName":"","namespaced":true,"kind":"{kind}","verbs":["get","list","watch"]}},
              {{"name":"{plural}/status","singularName":"","namespaced":true,"kind":"{kind}","verbs":["get","patch"]}}]}}"#
        )
    };
    let path = target.split('?').next().unwrap_or("");
    Some(match path {
        "/apis/llm-d.ai/v1alpha2" => {
            group_list("llm-d.ai/v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite")
        }
        "/apis/inference.networking.x-k8s.io/v1alpha2" => {
            group_list("inference.networking.x-k8s.io/v1alpha2", "inferenceobjectives", "InferenceObjective")
        }
        OBJECTIVES => list(
            "InferenceObjectiveList",
            "inference.networking.x-k8s.io/v1alpha2",
            &[
                objective("batch", -1, "llama", "inference.networking.k8s.io"),
                objective("chat", 10, "llama", "inference.networking.k8s.io"),
                objective("other-pool", -9, "mistral", "inference.networking.k8s.io"),
                objective("wrong-group", -9, "llama", "example.com"),
            ],
        ),
        REWRITES => list(
            "InferenceModelRewriteList",
            "llm-d.ai/v1alpha2",
            &[
                // Listed newest first: the shim orders them by creation time itself.
                rewrite("catch-all", "2026-02-01T00:00:00Z", "llama", CATCH_ALL_RULES),
                rewrite("canary", "2026-01-01T00:00:00Z", "llama", CANARY_RULES),
                rewrite("elsewhere", "2025-01-01T00:00:00Z", "mistral", CATCH_ALL_RULES),
            ],
        ),
        _ => return None,
    })
}

/// Answers one request per connection: lists with a body, watches with chunked events then silence.
fn serve(listener: TcpListener, server: Arc<Server>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let server = Arc::clone(&server);
        std::thread::spawn(move || answer(stream, &server));
    }
}

fn answer(mut stream: TcpStream, server: &Server) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap() == 0 || l == "\r\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let is_watch = target.contains("watch=true");
    let is_pools =
        target.starts_with("/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools");
    let is_pods = target.starts_with("/api/v1/namespaces/default/pods");
    let resources = if server.resources { resource_lists(&target) } else { None };
    if is_watch && resources.is_some() {
        return watch_resources(stream, server, &target);
    }
    if !is_watch {
        let body = if let Some(body) = resources {
            body
        } else if is_pools {
            list("InferencePoolList", "inference.networking.k8s.io/v1", &[POOL.to_string()])
        } else if is_pods {
            assert!(
                target.contains("labelSelector=app%3Dvllm-llama"),
                "pods are listed by the pool's selector: {target}"
            );
            list(
                "PodList",
                "v1",
                &[
                    pod("a", "10.1.0.1", true, "", "vllm"),
                    pod("b", "10.1.0.2", false, "", "vllm"),
                    pod("c", "10.1.0.3", true, r#","deletionTimestamp":"2026-01-01T00:00:00Z""#, "vllm"),
                    pod("d", "fd00::4", true, "", "sglang"),
                ],
            )
        } else {
            let _ =
                stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            return;
        };
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    if is_pods && server.pod_watches.fetch_add(1, Ordering::SeqCst) == 0 {
        for _ in 0..1000 {
            if server.first_list_seen.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Pod b becomes Ready.
        let event = format!(
            "{{\"type\":\"MODIFIED\",\"object\":{}}}\n",
            pod("b", "10.1.0.2", true, "", "vllm").replace('\n', "")
        );
        let _ = write!(stream, "{:x}\r\n{event}\r\n", event.len());
        let _ = stream.flush();
    }
    // Hold the watch open, as the API server does until its timeout.
    std::thread::sleep(Duration::from_secs(60));
}

/// The resource watches: once the test has seen the lists, `batch` turns priority 5 and `canary` is
/// deleted.
fn watch_resources(mut stream: TcpStream, server: &Server, target: &str) {
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    server.resource_watches.fetch_add(1, Ordering::SeqCst);
    for _ in 0..1000 {
        if server.resources_seen.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let event = if target.starts_with(OBJECTIVES) {
        format!(
            "{{\"type\":\"MODIFIED\",\"object\":{}}}\n",
            objective("batch", 5, "llama", "inference.networking.k8s.io").replace('\n', "")
        )
    } else {
        format!(
            "{{\"type\":\"DELETED\",\"object\":{}}}\n",
            rewrite("canary", "2026-01-01T00:00:00Z", "llama", CANARY_RULES).replace('\n', "")
        )
    };
    let _ = write!(stream, "{:x}\r\n{event}\r\n", event.len());
    let _ = stream.flush();
    std::thread::sleep(Duration::from_secs(60));
}

async fn next_resources(rx: &mut watch::Receiver<PoolResources>) -> PoolResources {
    tokio::time::timeout(Duration::from_secs(10), rx.changed()).await.expect("resources in time").unwrap();
    rx.borrow_and_update().clone()
}

fn rewrite_names(r: &PoolResources) -> Vec<String> {
    r.rewrites.specs().iter().map(|s| s.name.clone().unwrap_or_default()).collect()
}

async fn next_list(rx: &mut watch::Receiver<epp_shim::endpoints::Discovered>) -> Vec<(String, String)> {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("an endpoint list in time")
        .unwrap();
    let list = rx.borrow_and_update().clone().expect("synced");
    list.into_iter().map(|e| (e.address, e.engine.as_str().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_pods_times_target_ports_and_updates_from_the_watch() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server::default());
    let shared = Arc::clone(&server);
    std::thread::spawn(move || serve(listener, shared));
    let (tx, mut rx) = watch::channel(None);
    let settings = KubeSettings {
        api_url: Some(format!("http://{addr}")),
        namespace: Some("default".into()),
        pool_name: "llama".into(),
    };
    let (resources_tx, _resources) = watch::channel(PoolResources::default());
    let task = tokio::spawn(kubernetes::run(settings, tx, resources_tx));

    // Not ready (b) and terminating (c) pods are left out; each target port is an endpoint; IPv6 in
    // brackets; engine from the pod label.
    let first = next_list(&mut rx).await;
    let expected = |with_b: bool| {
        let mut v = vec![("10.1.0.1:8000", "vllm"), ("10.1.0.1:8001", "vllm")];
        if with_b {
            v.extend([("10.1.0.2:8000", "vllm"), ("10.1.0.2:8001", "vllm")]);
        }
        v.extend([("[fd00::4]:8000", "sglang"), ("[fd00::4]:8001", "sglang")]);
        v.into_iter().map(|(a, e)| (a.to_string(), e.to_string())).collect::<Vec<_>>()
    };
    assert_eq!(first, expected(false));
    server.first_list_seen.store(true, Ordering::SeqCst);
    // The watch then reports pod b Ready.
    let second = next_list(&mut rx).await;
    assert_eq!(second, expected(true));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objectives_and_rewrites_of_the_pool_are_watched_in_the_group_that_serves_them() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server { resources: true, ..Server::default() });
    let shared = Arc::clone(&server);
    std::thread::spawn(move || serve(listener, shared));
    let (tx, _endpoints) = watch::channel(None);
    let (resources_tx, mut resources) = watch::channel(PoolResources::default());
    let settings = KubeSettings {
        api_url: Some(format!("http://{addr}")),
        namespace: Some("default".into()),
        pool_name: "llama".into(),
    };
    let task = tokio::spawn(kubernetes::run(settings, tx, resources_tx));

    // InferenceObjective from the legacy group (llm-d.ai does not serve it here), InferenceModelRewrite
    // from llm-d.ai; only those whose poolRef names this pool in the InferencePool group.
    let first = next_resources(&mut resources).await;
    let names: Vec<(String, i32)> = first.objectives.iter().map(|o| (o.name.clone(), o.priority)).collect();
    assert_eq!(names, [("batch".to_string(), -1), ("chat".to_string(), 10)]);
    assert_eq!(rewrite_names(&first), ["canary", "catch-all"], "oldest first");
    let mut rng = scheduler_core::rng::Rng::new(1);
    let to_llama: Vec<_> = (0..200).filter_map(|_| first.rewrites.rewrite("llama", &mut rng)).collect();
    assert!(to_llama.iter().all(|m| *m == "llama-v1" || *m == "llama-v2"), "{to_llama:?}");
    assert_eq!(first.rewrites.rewrite("mistral", &mut rng), Some("fallback"));

    // The watches: batch's priority changes, the canary rewrite is deleted.
    server.resources_seen.store(true, Ordering::SeqCst);
    let mut latest = first;
    for _ in 0..2 {
        if latest.objectives.get("batch") == Some(5) && rewrite_names(&latest) == ["catch-all"] {
            break;
        }
        latest = next_resources(&mut resources).await;
    }
    assert_eq!(latest.objectives.get("batch"), Some(5));
    assert_eq!(latest.objectives.get("chat"), Some(10));
    assert_eq!(rewrite_names(&latest), ["catch-all"]);
    assert_eq!(latest.rewrites.rewrite("llama", &mut rng), Some("fallback"), "the canary's rule is gone");
    assert_eq!(server.resource_watches.load(Ordering::SeqCst), 2);
    task.abort();
}

#[test]
fn the_engine_comes_from_llm_d_s_label_first_then_gie_s() {
    let spec: kubernetes::PoolSpec = serde_json::from_value(serde_json::json!({
        "selector": {"matchLabels": {"app": "m"}}, "targetPorts": [{"number": 8000}]
    }))
    .unwrap();
    let pod = |ip: &str, labels: serde_json::Value| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": ip, "labels": labels},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    };
    let pods = [
        pod("10.2.0.1", serde_json::json!({"app": "m", "llm-d.ai/engine-type": "sglang"})),
        pod(
            "10.2.0.2",
            serde_json::json!({"app": "m", "llm-d.ai/engine-type": "sglang", "inference.networking.k8s.io/engine-type": "vllm"}),
        ),
        pod("10.2.0.3", serde_json::json!({"app": "m", "inference.networking.k8s.io/engine-type": "sglang"})),
        pod("10.2.0.4", serde_json::json!({"app": "m"})),
    ];
    let got: Vec<(String, String)> = kubernetes::endpoints(&spec, pods.iter())
        .into_iter()
        .map(|e| (e.address, e.engine.as_str().to_string()))
        .collect();
    let want = [
        ("10.2.0.1:8000", "sglang"),
        ("10.2.0.2:8000", "sglang"),
        ("10.2.0.3:8000", "sglang"),
        ("10.2.0.4:8000", "vllm"),
    ];
    assert_eq!(got, want.map(|(a, e)| (a.to_string(), e.to_string())));
}
