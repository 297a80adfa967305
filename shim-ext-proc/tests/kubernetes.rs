//! Kubernetes discovery against a small fake API server on loopback that serves recorded list and
//! watch responses for one InferencePool and its pods (no cluster is available in CI).
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use epp_shim::endpoints::kubernetes::{self, KubeSettings};
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
    if !is_watch {
        let body = if is_pools {
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
    let task = tokio::spawn(kubernetes::run(settings, tx));

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
