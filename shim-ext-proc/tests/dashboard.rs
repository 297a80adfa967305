//! The shipped Grafana dashboard (`envoy-config/observability/grafana-dashboard.json`) charts only
//! metrics somebody exports: every metric name its PromQL expressions query is either on the shim's
//! `/metrics` page after a few real requests (model-sim replicas behind a gateway played by this test),
//! or a stat the Wasm filter declares in `filter/src/stats.rs` as Envoy's `/stats/prometheus` shows it.
//! The labels a shim panel groups by must be on the series it reads.
// Test code: the workspace denies these for code that runs in the proxy, not for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{epp_shim, http, model_sim, wait_for, Proc};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// What one PromQL expression reads.
#[derive(Debug, Default, PartialEq)]
struct Query {
    /// Metric names (`foo_bucket` as written).
    names: BTreeSet<String>,
    /// `{__name__=~"prefix.+"}`: some metric whose name starts with the prefix.
    prefixes: BTreeSet<String>,
    /// Labels in `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left/right (…)`.
    grouping: BTreeSet<String>,
}

const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "inf",
    "nan",
];

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// A small PromQL reader: enough for dashboards (selectors, functions, aggregations, binary operators,
/// range selectors, Grafana `$variables`); a name matcher other than `=` or `=~"literal.+"` fails the test.
fn parse_query(expr: &str) -> Query {
    let b = expr.as_bytes();
    let mut q = Query::default();
    let mut i = 0;
    let skip_string = |mut i: usize| {
        let quote = b[i];
        i += 1;
        while i < b.len() && b[i] != quote {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'{' => {
                let start = i + 1;
                while i < b.len() && b[i] != b'}' {
                    i = if b[i] == b'"' { skip_string(i) } else { i + 1 };
                }
                let inside = &expr[start..i];
                if let Some(rest) = inside.trim().strip_prefix("__name__") {
                    let rest = rest.trim_start();
                    let (op, value) = rest.split_at(if rest.starts_with("=~") { 2 } else { 1 });
                    let value = value.split('"').nth(1).unwrap_or_else(|| panic!("name matcher in {expr}"));
                    match op {
                        "=" => {
                            q.names.insert(value.to_string());
                        }
                        "=~" => {
                            let prefix = value.strip_suffix(".+").or_else(|| value.strip_suffix(".*"));
                            let prefix = prefix.filter(|p| p.bytes().all(is_ident)).unwrap_or_else(|| {
                                panic!("only `literal.+` name regexes are checked, not {value:?} in {expr}")
                            });
                            q.prefixes.insert(prefix.to_string());
                        }
                        _ => panic!("name matcher {op} in {expr} is not checked"),
                    }
                }
                i += 1;
            }
            b'[' => {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
                i += 1;
            }
            b'"' | b'\'' => i = skip_string(i),
            b'$' => {
                i += 1;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
            }
            _ if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ if is_ident(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                let call = b.get(j) == Some(&b'(');
                if GROUPING.contains(&word) {
                    if call {
                        let end = j + expr[j..].find(')').unwrap_or_else(|| panic!("unclosed ( in {expr}"));
                        for label in expr[j + 1..end].split(',').map(str::trim).filter(|l| !l.is_empty()) {
                            q.grouping.insert(label.to_string());
                        }
                        i = end + 1;
                    }
                } else if !call && !KEYWORDS.contains(&word) {
                    q.names.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    q
}

/// Every `expr` in the dashboard (panel targets), with the panel title for messages.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push((title.to_string(), e.to_string()));
                }
                for v in m.values() {
                    walk(v, title, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    let path = workspace().join("envoy-config/observability/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&json, "", &mut out);
    out
}

/// The filter's stats as Envoy's `/stats/prometheus` names them: proxy-wasm metrics live under the
/// `wasmcustom.` namespace, which Envoy strips (and then adds no `envoy_` prefix); dots become
/// underscores; a histogram shows as `_bucket`, `_sum` and `_count`.
struct FilterStats {
    names: BTreeSet<String>,
    /// Families with one stat per endpoint or reason (`base.<suffix>` → `base_<suffix>`).
    families: BTreeSet<String>,
}

/// Which of `stats.rs`'s constants are histograms, and which are bases of per-endpoint / per-reason
/// families (`stats::endpoint_metric`, `epp_endpoints_unusable.<reason>`).
const FILTER_HISTOGRAMS: &[&str] = &["DECISION_TIME_US"];
const FILTER_FAMILIES: &[&str] =
    &["ENDPOINT_HEALTH", "ENDPOINTS_UNUSABLE", "UPSTREAM_5XX", "ENDPOINT_QUEUE_SIZE"];

fn filter_stats() -> FilterStats {
    let path = workspace().join("filter/src/stats.rs");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let declared: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split_once(": &str = \""))
        .map(|(ident, rest)| (ident, rest.trim_end_matches("\";")))
        .collect();
    assert!(declared.len() > 20, "read the stat names of {}: {declared:?}", path.display());
    let envoy = |name: &str| name.replace('.', "_");
    let mut names: BTreeSet<String> = declared.values().map(|n| envoy(n)).collect();
    for h in FILTER_HISTOGRAMS {
        let name = declared.get(h).unwrap_or_else(|| panic!("stats.rs no longer declares {h}"));
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{}{suffix}", envoy(name)));
        }
    }
    let families = FILTER_FAMILIES
        .iter()
        .map(|f| {
            format!(
                "{}_",
                envoy(declared.get(f).unwrap_or_else(|| panic!("stats.rs no longer declares {f}")))
            )
        })
        .collect();
    FilterStats { names, families }
}

/// Metric name → the label names its series carry, from a text exposition page.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        let Some(inside) = line[end..].strip_prefix('{') else { continue };
        let mut rest = inside;
        while let Some((key, after)) = rest.split_once("=\"") {
            labels.insert(key.trim_start_matches(',').to_string());
            // Skip the quoted value (escaped quotes included).
            let mut chars = after.char_indices();
            let mut close = after.len();
            while let Some((k, ch)) = chars.next() {
                match ch {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        close = k;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &after[close + 1..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    out
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: value.as_bytes().to_vec(), ..HeaderValue::default() }
}

fn message(r: In) -> ProcessingRequest {
    ProcessingRequest { request: Some(r), ..ProcessingRequest::default() }
}

fn destination(r: &ProcessingResponse) -> Option<String> {
    let Some(Out::RequestHeaders(h)) = &r.response else { return None };
    let m = h.response.as_ref()?.header_mutation.as_ref()?;
    m.set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == "x-gateway-destination-endpoint")
        .map(|h| String::from_utf8(h.raw_value.clone()).unwrap())
}

/// One request the way Envoy drives the stream: request headers and body, then (when routed) the
/// request goes to the chosen model-sim for real, and its response headers and body come back through
/// the stream (a streamed answer in two chunks, split between events). Returns the endpoint it went to.
async fn gateway_request(channel: Channel, body: &'static [u8]) -> Option<String> {
    let mut client = ExternalProcessorClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let headers = vec![
        header(":method", "POST"),
        header(":path", "/v1/chat/completions"),
        header("content-type", "application/json"),
    ];
    tx.send(message(In::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap { headers }),
        ..HttpHeaders::default()
    })))
    .await
    .unwrap();
    tx.send(message(In::RequestBody(HttpBody {
        body: body.to_vec(),
        end_of_stream: true,
        ..HttpBody::default()
    })))
    .await
    .unwrap();
    let mut stream = client.process(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a first response");
    let Some(dest) = destination(&first) else {
        assert!(matches!(first.response, Some(Out::ImmediateResponse(_))), "{first:?}");
        drop(tx);
        while stream.message().await.unwrap().is_some() {}
        return None;
    };
    // The request body, streamed back (one chunk for these small bodies).
    stream.message().await.unwrap().expect("the request body");
    let addr: SocketAddr = dest.parse().unwrap();
    let (status, resp_headers, reply) = tokio::task::spawn_blocking(move || {
        http(addr, "POST", "/v1/chat/completions", &[("content-type", "application/json")], body)
    })
    .await
    .unwrap();
    let content_type = resp_headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone());
    let mut headers = vec![header(":status", &status.to_string())];
    headers.extend(content_type.as_deref().map(|v| header("content-type", v)));
    tx.send(message(In::ResponseHeaders(HttpHeaders {
        headers: Some(HeaderMap { headers }),
        ..HttpHeaders::default()
    })))
    .await
    .unwrap();
    let split = match reply.windows(2).skip(reply.len() / 2).position(|w| w == b"\n\n") {
        Some(i) if content_type.as_deref().is_some_and(|c| c.contains("text/event-stream")) => {
            reply.len() / 2 + i + 2
        }
        _ => 0,
    };
    let (first, rest) = reply.split_at(split);
    if !first.is_empty() {
        tx.send(message(In::ResponseBody(HttpBody { body: first.to_vec(), ..HttpBody::default() })))
            .await
            .unwrap();
    }
    tx.send(message(In::ResponseBody(HttpBody {
        body: rest.to_vec(),
        end_of_stream: true,
        ..HttpBody::default()
    })))
    .await
    .unwrap();
    drop(tx);
    while stream.message().await.unwrap().is_some() {}
    Some(dest)
}

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const CHAT: &[u8] = br#"{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;
const STREAM: &[u8] = br#"{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"user","content":"hello"}],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#;

/// The shim's `/metrics` after four routed requests (one streamed) and one refused.
async fn shim_page() -> String {
    let (a, b) = (model_sim(&[]), model_sim(&[]));
    let eps: Vec<String> =
        [&a, &b].iter().map(|p: &&Proc| format!("\"{}\"", p.addr("model-sim listening"))).collect();
    let config = format!(r#"{{"pool": {{"name": "sim", "endpoints": [{}]}}}}"#, eps.join(","));
    let (shim, _dir) = epp_shim(&config, &["--plaintext"]);
    let http_addr = shim.addr("epp-shim http");
    wait_for(20, "every endpoint scraped", || {
        let (_, _, page) = http(http_addr, "GET", "/metrics", &[], b"");
        String::from_utf8(page).unwrap().contains("llm_d_epp_ready_endpoints{name=\"sim\"} 2").then_some(())
    });
    let channel = Channel::from_shared(format!("http://{}", shim.addr("epp-shim ext_proc")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(gateway_request(channel.clone(), CHAT).await.is_some(), "routed");
    }
    assert!(gateway_request(channel.clone(), STREAM).await.is_some(), "routed");
    assert_eq!(gateway_request(channel, b"{not json").await, None, "refused with 400");
    let (_, _, page) =
        tokio::task::spawn_blocking(move || http(http_addr, "GET", "/metrics", &[], b"")).await.unwrap();
    String::from_utf8(page).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let page = shim_page().await;
    // The reference names carry what happened, with upstream's labels.
    let pair = format!("model_name=\"{MODEL}\",target_model_name=\"{MODEL}\"");
    for line in [
        format!("llm_d_epp_request_total{{{pair}}} 4"),
        format!("inference_objective_request_total{{{pair}}} 4"),
        format!("llm_d_epp_request_duration_seconds_count{{{pair}}} 4"),
        format!("llm_d_epp_request_output_tokens_count{{{pair}}} 4"),
        format!("llm_d_epp_request_running{{{pair}}} 0"),
        format!("llm_d_epp_request_ttft_seconds_count{{{pair},streaming=\"false\"}} 3"),
        format!("llm_d_epp_request_ttft_seconds_count{{{pair},streaming=\"true\"}} 1"),
        format!("llm_d_epp_request_streaming_tpot_seconds_count{{{pair}}} 1"),
        format!("llm_d_epp_request_streaming_itl_seconds_count{{{pair}}} 1"),
        "llm_d_epp_request_error_total{model_name=\"\",target_model_name=\"\",error_code=\"BadRequest\"} 1"
            .into(),
        "llm_d_epp_scheduler_e2e_duration_seconds_count 5".into(),
        "inference_pool_ready_pods{name=\"sim\"} 2".into(),
    ] {
        assert!(page.contains(&format!("{line}\n")), "missing `{line}` in:\n{page}");
    }

    let shim = exposition(&page);
    let filter = filter_stats();
    let queries = dashboard_queries();
    assert!(queries.len() > 40, "read the dashboard's queries: {queries:?}");
    let mut missing = Vec::new();
    for (title, expr) in &queries {
        let q = parse_query(expr);
        assert!(!q.names.is_empty() || !q.prefixes.is_empty(), "no metric found in {expr}");
        for name in &q.names {
            if !shim.contains_key(name) && !filter.names.contains(name) {
                missing.push(format!("{name} (panel {title:?}: {expr})"));
            }
        }
        for prefix in &q.prefixes {
            let known = shim.keys().any(|n| n.starts_with(prefix.as_str()))
                || filter.families.iter().any(|f| prefix.starts_with(f.as_str()));
            if !known {
                missing.push(format!("{prefix}… (panel {title:?}: {expr})"));
            }
        }
        // A shim panel that groups by a label needs that label on what it reads.
        // (`instance` and `job` are the scrape's own labels, added by Prometheus.)
        let labels: BTreeSet<&String> = q.names.iter().filter_map(|n| shim.get(n)).flatten().collect();
        if !labels.is_empty() {
            for label in q.grouping.iter().filter(|l| !["__name__", "instance", "job"].contains(&l.as_str()))
            {
                if !labels.contains(label) {
                    missing.push(format!("label {label} on {:?} (panel {title:?})", q.names));
                }
            }
        }
    }
    assert!(missing.is_empty(), "the dashboard queries what nobody exports:\n{}", missing.join("\n"));
}

#[test]
fn the_query_reader_finds_metric_names_only() {
    let q = parse_query(
        "histogram_quantile(0.99, sum by (le, model_name) (rate(foo_bucket{a=\"x\"}[$__rate_interval]))) \
         / on(instance) group_left bar_total * 1e3 > bool 0.5",
    );
    assert_eq!(q.names, ["bar_total", "foo_bucket"].map(String::from).into());
    assert_eq!(q.grouping, ["instance", "le", "model_name"].map(String::from).into());
    let q = parse_query("max by (__name__) ({__name__=~\"epp_endpoint_queue_size_.+\"})");
    assert_eq!(
        (q.names.len(), q.prefixes.into_iter().collect::<Vec<_>>()),
        (0, vec!["epp_endpoint_queue_size_".into()])
    );
    // A name nobody exports is caught against the filter's declared stats.
    let filter = filter_stats();
    assert!(
        filter.names.contains("epp_decisions_routed") && filter.names.contains("epp_decision_time_us_bucket")
    );
    assert!(
        !filter.names.contains("envoy_epp_decisions_routed") && !filter.names.contains("epp_shed_bucket")
    );
}
