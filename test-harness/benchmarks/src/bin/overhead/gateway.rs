//! The gateways compared, as Envoy bootstraps that differ only in their HTTP filter: plain Envoy to a fixed
//! endpoint, the do-nothing body-buffering Wasm filter (to one fixed endpoint, or round-robin over the
//! picker's endpoints), the same filter also reading the request as the picker does, our picker, and the
//! ext_proc shim in FULL_DUPLEX_STREAMED. Listener, codec, buffer limits, routes and clusters are the ones
//! envoy-config/ ships (minus the stdout access log, which would cost every configuration the same).
//!
//! Body-based routing (issue 22) as envoy-config/bbr-two-models{,-ext-proc}/ deploy it: the module's `bbr`
//! role alone, the picker with a `bbr` section (one filter, one body read), and GIE's shape (the shim's
//! Body-Based Router over ext_proc, then the shim's picker over ext_proc: two processes, two gRPC streams,
//! the body sent to each). Their routes match on the promoted `x-gateway-base-model-name`, so a request
//! whose header was not set (or set after the route was chosen) gets a 404 and fails the run.

use e2e::{Envoy, EnvoyOptions, EnvoyTemplate, Process};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One configuration under test.
#[derive(Clone, Debug)]
pub enum Gateway {
    Plain,
    Floor,
    /// The floor module setting each request's destination to the next of `endpoints` in turn: what
    /// spreading requests over that many upstream hosts costs Envoy, with no decision at all.
    FloorRoundRobin {
        endpoints: usize,
    },
    /// The floor module built to also read each request as the picker does (`:path`, the JSON reader,
    /// the prefix hashes), to the one fixed endpoint: what reading the prompt costs, with no decision.
    FloorRead,
    Picker {
        endpoints: usize,
    },
    /// The picker built from another commit (`--baseline-wasm`), configured alike: an A/B of two builds
    /// measured side by side in one run.
    Baseline {
        endpoints: usize,
    },
    ExtProc {
        endpoints: usize,
    },
    /// The module in its `bbr` role (`root_id: bbr`) alone, routing on the promoted base-model header to
    /// the fixed endpoint plain Envoy uses: what body-based routing in the proxy costs by itself.
    BbrOnly,
    /// The picker whose configuration has a `bbr` section: one filter promotes the headers and picks on
    /// the same body read, and the route matches on both (as a user deploys the two in one chain).
    BbrPicker {
        endpoints: usize,
    },
    /// GIE's shape: the shim's Body-Based Router (`--bbr-port`, its own process) over ext_proc, then the
    /// shim's picker over ext_proc (a second process), the route matching on the promoted header.
    ExtProcBbr {
        endpoints: usize,
    },
}

impl Gateway {
    pub fn label(&self) -> String {
        match self {
            Gateway::Plain => String::from("plain Envoy"),
            Gateway::Floor => String::from("floor (do-nothing Wasm)"),
            Gateway::FloorRoundRobin { endpoints } => format!("floor, round-robin over {endpoints}"),
            Gateway::FloorRead => String::from("reading floor (floor + request read)"),
            Gateway::Picker { endpoints } => format!("picker, {endpoints} endpoints"),
            Gateway::Baseline { endpoints } => format!("picker (baseline build), {endpoints} endpoints"),
            Gateway::ExtProc { endpoints } => format!("ext_proc shim, {endpoints} endpoints"),
            Gateway::BbrOnly => String::from("in-proxy BBR alone (root_id bbr)"),
            Gateway::BbrPicker { endpoints } => format!("in-proxy BBR + picker, {endpoints} endpoints"),
            Gateway::ExtProcBbr { endpoints } => {
                format!("GIE shape: BBR + picker over ext_proc, {endpoints} endpoints")
            }
        }
    }

    pub fn key(&self) -> String {
        match self {
            Gateway::Plain => String::from("plain"),
            Gateway::Floor => String::from("floor"),
            Gateway::FloorRoundRobin { endpoints } => format!("floor-rr-{endpoints}"),
            Gateway::FloorRead => String::from("floor-read"),
            Gateway::Picker { endpoints } => format!("picker-{endpoints}"),
            Gateway::Baseline { endpoints } => format!("baseline-{endpoints}"),
            Gateway::ExtProc { endpoints } => format!("ext_proc-{endpoints}"),
            Gateway::BbrOnly => String::from("bbr-only"),
            Gateway::BbrPicker { endpoints } => format!("bbr-picker-{endpoints}"),
            Gateway::ExtProcBbr { endpoints } => format!("ext_proc-bbr-{endpoints}"),
        }
    }

    /// The inverse of `key`, for reading a run back from its CSV.
    pub fn from_key(key: &str) -> Option<Gateway> {
        let endpoints = |rest: &str| rest.parse().ok();
        match key {
            "plain" => Some(Gateway::Plain),
            "floor" => Some(Gateway::Floor),
            "floor-read" => Some(Gateway::FloorRead),
            "bbr-only" => Some(Gateway::BbrOnly),
            _ => {
                if let Some(n) = key.strip_prefix("floor-rr-") {
                    endpoints(n).map(|endpoints| Gateway::FloorRoundRobin { endpoints })
                } else if let Some(n) = key.strip_prefix("picker-") {
                    endpoints(n).map(|endpoints| Gateway::Picker { endpoints })
                } else if let Some(n) = key.strip_prefix("baseline-") {
                    endpoints(n).map(|endpoints| Gateway::Baseline { endpoints })
                } else if let Some(n) = key.strip_prefix("bbr-picker-") {
                    endpoints(n).map(|endpoints| Gateway::BbrPicker { endpoints })
                } else if let Some(n) = key.strip_prefix("ext_proc-bbr-") {
                    endpoints(n).map(|endpoints| Gateway::ExtProcBbr { endpoints })
                } else {
                    endpoints(key.strip_prefix("ext_proc-")?).map(|endpoints| Gateway::ExtProc { endpoints })
                }
            }
        }
    }
}

/// Builds the floor fixture twice: as is, and with its `read` feature (the reading floor), each into its
/// own target directory.
pub fn build_floors(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let manifest = root.join("test-harness/benchmarks/fixtures/floor-filter/Cargo.toml");
    let floor = e2e::build_wasm_crate(&manifest, "floor_filter", &root.join("target/fixtures"))?;
    let reading =
        e2e::build_wasm_crate_with(&manifest, "floor_filter", &root.join("target/fixtures-read"), &["read"])?;
    Ok((floor, reading))
}

/// The modules and binaries the gateways need.
pub struct Artifacts {
    pub picker_wasm: PathBuf,
    /// Another build of the picker to compare with (`--baseline-wasm`).
    pub baseline_wasm: Option<PathBuf>,
    pub floor_wasm: PathBuf,
    /// The floor built with its `read` feature.
    pub reading_floor_wasm: PathBuf,
    pub shim: PathBuf,
    /// Scrape period for the picker's collector and the shim (ms).
    pub scrape_interval_ms: u64,
}

/// A running gateway: Envoy and, for ext_proc, the shim process(es).
pub struct Running {
    pub envoy: Envoy,
    pub shims: Vec<Process>,
}

impl Running {
    pub fn envoy_pid(&self) -> u32 {
        self.envoy.process().id()
    }
}

/// Starts `gateway` with `workers` Envoy workers in front of `pool` (the first address is the fixed one).
pub fn start(gateway: &Gateway, workers: usize, pool: &[String], art: &Artifacts) -> Result<Running, String> {
    let fixed = pool.first().ok_or("empty pool")?;
    let (ip, port) = fixed.rsplit_once(':').ok_or("pool address without a port")?;
    let mut shims = Vec::new();
    let (bootstrap_extensions, filter, cluster, route) = match gateway {
        Gateway::Plain => (String::new(), String::new(), fixed_cluster(ip, port), PLAIN_ROUTE.to_string()),
        Gateway::Floor | Gateway::FloorRead => {
            let module =
                if matches!(gateway, Gateway::FloorRead) { &art.reading_floor_wasm } else { &art.floor_wasm };
            let filter = wasm_filter("floor", "", module, &yaml_quote(fixed));
            (String::new(), filter, String::new(), HEADER_ROUTE.to_string())
        }
        Gateway::FloorRoundRobin { endpoints } => {
            let list: Vec<&str> = pool.iter().take(*endpoints).map(String::as_str).collect();
            let filter = wasm_filter("floor", "", &art.floor_wasm, &yaml_quote(&list.join(",")));
            (String::new(), filter, String::new(), HEADER_ROUTE.to_string())
        }
        Gateway::Picker { endpoints } | Gateway::Baseline { endpoints } => {
            let module = match gateway {
                Gateway::Baseline { .. } => {
                    art.baseline_wasm.as_ref().ok_or("baseline-<N> needs --baseline-wasm PATH")?
                }
                _ => &art.picker_wasm,
            };
            let config = picker_config(pool, *endpoints, art.scrape_interval_ms);
            let (ext, filter, cluster) = picker_parts(module, &config);
            (ext, filter, cluster, HEADER_ROUTE.to_string())
        }
        Gateway::BbrPicker { endpoints } => {
            let config = picker_config_with_bbr(pool, *endpoints, art.scrape_interval_ms);
            let (ext, filter, cluster) = picker_parts(&art.picker_wasm, &config);
            (ext, filter, cluster, BBR_POOL_ROUTE.to_string())
        }
        Gateway::BbrOnly => {
            let filter = wasm_filter("bbr", "bbr", &art.picker_wasm, &yaml_quote(&bbr_config()));
            (String::new(), filter, fixed_cluster(ip, port), BBR_FIXED_ROUTE.to_string())
        }
        Gateway::ExtProc { endpoints } => {
            let (process, grpc_port) = start_shim(pool, *endpoints, art)?;
            shims.push(process);
            (
                String::new(),
                picker_ext_proc_filter(),
                ext_proc_cluster("epp", grpc_port),
                HEADER_ROUTE.to_string(),
            )
        }
        Gateway::ExtProcBbr { endpoints } => {
            // Two processes, as GIE deploys its Body-Based Router and its picker; the router's has no
            // pool (it scrapes nothing), the picker's no `bbr` section (it promotes nothing).
            let (router, bbr_port) = start_bbr_shim(art)?;
            shims.push(router);
            let (picker, grpc_port) = start_shim(pool, *endpoints, art)?;
            shims.push(picker);
            (
                String::new(),
                format!("{}{}", bbr_ext_proc_filter(), picker_ext_proc_filter()),
                format!("{}{}", ext_proc_cluster("bbr", bbr_port), ext_proc_cluster("epp", grpc_port)),
                BBR_POOL_ROUTE.to_string(),
            )
        }
    };
    let yaml = format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{PORT_ADMIN}}}}}}}}}}\n\
         {bootstrap_extensions}{LISTENER_HEAD}{route}{FILTERS_HEAD}{filter}{ROUTER}  clusters:\n{POOL_CLUSTER}{cluster}"
    );
    let template = EnvoyTemplate::inline(&format!("overhead-{}", gateway.key()), &yaml);
    let options = EnvoyOptions {
        concurrency: workers,
        log_level: String::from("warn"),
        ready_timeout: Duration::from_secs(90),
        extra_args: Vec::new(),
    };
    let envoy = Envoy::start(&template, &options)?;
    Ok(Running { envoy, shims })
}

/// The STATIC cluster `fixed` of one endpoint (plain Envoy's upstream).
fn fixed_cluster(ip: &str, port: &str) -> String {
    format!(
        "  - name: fixed\n    type: STATIC\n    connect_timeout: 2s\n{BREAKERS}    load_assignment:\n      \
         cluster_name: fixed\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: \
         {{address: {ip}, port_value: {port}}}}}}}}}]}}]\n"
    )
}

/// The picker as envoy-config/wasm-picker deploys it: a bootstrap-singleton collector VM, the HTTP filter
/// and the cluster the collector scrapes through; as (bootstrap extensions, filter, cluster).
fn picker_parts(module: &Path, config: &str) -> (String, String, String) {
    let quoted = yaml_quote(config);
    let ext = format!(
        "bootstrap_extensions:\n- name: envoy.bootstrap.wasm\n  typed_config:\n    \"@type\": \
         type.googleapis.com/envoy.extensions.wasm.v3.WasmService\n    singleton: true\n    config:\n      \
         name: collector\n      root_id: collector\n      configuration: {{\"@type\": \
         type.googleapis.com/google.protobuf.StringValue, value: {quoted}}}\n      vm_config: {{vm_id: epp, \
         runtime: envoy.wasm.runtime.v8, code: {{local: {{filename: \"{}\"}}}}}}\n",
        module.display()
    );
    let filter = wasm_filter("epp", "picker", module, &quoted);
    let cluster = String::from(
        "  - name: epp-metrics\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    \
         connect_timeout: 1s\n    original_dst_lb_config: {use_http_header: true}\n",
    );
    (ext, filter, cluster)
}

/// The base model the benchmark's bodies name (`"model":"m"`, `load::chat_body`); the body-routing
/// routes (`BBR_POOL_ROUTE`, `BBR_FIXED_ROUTE`) send only it upstream.
const BENCH_MODEL: &str = "m";

/// The `bbr` section: GIE's two plugins as envoy-config/bbr-two-models configures them, with the
/// benchmark's model as one of two base models (each with adapters), unknown models refused.
fn bbr_section() -> String {
    format!(
        "{{\"unknownModels\":\"reject\",\"plugins\":[\
         {{\"type\":\"body-field-to-header\",\"name\":\"model-extractor\",\
         \"parameters\":{{\"fieldName\":\"model\",\"headerName\":\"X-Gateway-Model-Name\"}}}},\
         {{\"type\":\"base-model-to-header\",\"name\":\"base-model-mapper\",\"parameters\":{{\"baseModels\":[\
         {{\"baseModel\":\"{BENCH_MODEL}\",\"adapters\":[\"m-lora-1\",\"m-lora-2\"]}},\
         {{\"baseModel\":\"other\",\"adapters\":[\"other-lora\"]}}]}}}}]}}"
    )
}

/// The body-routing role's configuration (`root_id: bbr`, and the shim's `--bbr-port` process).
pub fn bbr_config() -> String {
    format!("{{\"bbr\":{}}}", bbr_section())
}

/// The picker's configuration with a `bbr` section: one filter routes on the body and picks.
pub fn picker_config_with_bbr(pool: &[String], endpoints: usize, interval_ms: u64) -> String {
    let config = picker_config(pool, endpoints, interval_ms);
    let open = config.strip_suffix('}').unwrap_or(&config);
    format!("{open},\"bbr\":{}}}", bbr_section())
}

/// The picker's configuration: the GIE default scheduler over the first `endpoints` addresses. The `pool`
/// cluster is ORIGINAL_DST, which serves a request only where the header says, so the served endpoint is
/// the chosen one (`servedFrom: destination`, as envoy-config/README.md recommends for it).
pub fn picker_config(pool: &[String], endpoints: usize, interval_ms: u64) -> String {
    let list: Vec<String> = pool.iter().take(endpoints).map(|a| format!("\"{a}\"")).collect();
    format!(
        "{{\"pool\":{{\"name\":\"bench\",\"endpoints\":[{}]}},\"collector\":{{\"intervalMs\":{interval_ms},\"timeoutMs\":500}},\"routing\":{{\"servedFrom\":\"destination\"}}}}",
        list.join(",")
    )
}

fn start_shim(pool: &[String], endpoints: usize, art: &Artifacts) -> Result<(Process, u16), String> {
    let config = picker_config(pool, endpoints, art.scrape_interval_ms);
    spawn_shim(art, &format!("shim-{endpoints}.json"), &config, &[], "ext_proc")
}

/// The shim as GIE's Body-Based Router alone: the `bbr` configuration, no pool; its port is the bbr one.
fn start_bbr_shim(art: &Artifacts) -> Result<(Process, u16), String> {
    spawn_shim(art, "shim-bbr.json", &bbr_config(), &["--bbr-port", "0"], "bbr")
}

/// Starts `epp-shim` (FULL_DUPLEX_STREAMED bodies, TLS) on `config`; returns it and the port of its
/// `listening` server (`ext_proc` or `bbr`).
fn spawn_shim(
    art: &Artifacts,
    file: &str,
    config: &str,
    extra: &[&str],
    listening: &str,
) -> Result<(Process, u16), String> {
    let dir = e2e::workspace_root().join("target/overhead-bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config_path = dir.join(file);
    std::fs::write(&config_path, config)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let mut cmd = Command::new(&art.shim);
    cmd.arg("--config")
        .arg(&config_path)
        .args(["--host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"])
        .args(["--body-mode", "full-duplex", "--log-level", "warn"])
        .args(extra);
    let mut process = Process::spawn("epp-shim", cmd)?;
    let prefix = format!("epp-shim {listening} listening on ");
    let addr =
        process.wait_for(&format!("the {listening} listening line"), Duration::from_secs(20), |p| {
            p.log().lines().find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
        })?;
    let port = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.trim().parse().ok())
        .ok_or_else(|| format!("cannot read the shim's {listening} port from {addr:?}"))?;
    Ok((process, port))
}

/// A JSON string as a YAML double-quoted scalar.
fn yaml_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn wasm_filter(vm_id: &str, root_id: &str, wasm: &Path, quoted_config: &str) -> String {
    format!(
        "          - name: envoy.filters.http.wasm\n            typed_config:\n              \"@type\": \
         type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:\n                \
         name: {vm_id}\n                root_id: \"{root_id}\"\n                \
         allow_on_headers_stop_iteration: true\n                failure_policy: FAIL_CLOSED\n                \
         configuration: {{\"@type\": type.googleapis.com/google.protobuf.StringValue, value: {quoted_config}}}\n\
         \x20               vm_config: {{vm_id: {vm_id}, runtime: envoy.wasm.runtime.v8, code: {{local: {{filename: \
         \"{}\"}}}}}}\n",
        wasm.display()
    )
}

/// The ext_proc server's cluster `name`: gRPC over TLS, ALPN h2, on the loopback `port`.
fn ext_proc_cluster(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 2s\n    load_assignment:\n      cluster_name: {name}\n      \
         endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: \
         {port}}}}}}}}}]}}]\n    typed_extension_protocol_options:\n      \
         envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": \
         type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
         explicit_http_config: {{http2_protocol_options: {{}}}}\n    transport_socket:\n      \
         name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": \
         type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
         common_tls_context: {{alpn_protocols: [h2]}}\n"
    )
}

const LISTENER_HEAD: &str = "static_resources:
  listeners:
  - name: gateway
    address: {socket_address: {address: 127.0.0.1, port_value: {{PORT_LISTENER}}}}
    per_connection_buffer_limit_bytes: 4194304
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          codec_type: AUTO
          http2_protocol_options: {initial_stream_window_size: 4194304}
          route_config:
            name: gateway
            virtual_hosts:
            - name: inference
              domains: [\"*\"]
              routes:
";

const PLAIN_ROUTE: &str =
    "              - {match: {prefix: \"/\"}, route: {cluster: fixed, timeout: 600s}}\n";

const HEADER_ROUTE: &str = "              - match: {prefix: \"/\", headers: [{name: x-gateway-destination-endpoint, present_match: true}]}
                route: {cluster: pool, timeout: 600s}
              - match: {prefix: \"/\"}
                direct_response: {status: 503, body: {inline_string: \"no endpoint was picked\"}}
";

/// The body-routing routes (envoy-config/bbr-two-models): the benchmark's base model, as the router
/// promoted it, to the pool the picker chose from; anything else (no header, another model) a 404.
const BBR_POOL_ROUTE: &str = "              - match:
                  prefix: \"/\"
                  headers:
                  - {name: x-gateway-base-model-name, string_match: {exact: \"m\"}}
                  - {name: x-gateway-destination-endpoint, present_match: true}
                route: {cluster: pool, timeout: 600s}
              - match: {prefix: \"/\"}
                direct_response: {status: 404, body: {inline_string: \"no route for this model\"}}
";

/// The same for body-based routing alone: the benchmark's base model to plain Envoy's fixed endpoint.
const BBR_FIXED_ROUTE: &str = "              - match:
                  prefix: \"/\"
                  headers: [{name: x-gateway-base-model-name, string_match: {exact: \"m\"}}]
                route: {cluster: fixed, timeout: 600s}
              - match: {prefix: \"/\"}
                direct_response: {status: 404, body: {inline_string: \"no route for this model\"}}
";

const FILTERS_HEAD: &str = "          http_filters:\n";

const ROUTER: &str = "          - name: envoy.filters.http.router
            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
";

/// An ext_proc filter on `cluster` in the processing mode GIE's charts give (every header, body and
/// trailer, bodies streamed full duplex). `options` go before the processing mode, `metadata` after it.
fn ext_proc_filter(cluster: &str, options: &str, metadata: &str) -> String {
    format!(
        "          - name: envoy.filters.http.ext_proc
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}, timeout: 10s}}
              failure_mode_allow: false
              message_timeout: 1000s
{options}              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: FULL_DUPLEX_STREAMED
                response_body_mode: FULL_DUPLEX_STREAMED
                request_trailer_mode: SEND
                response_trailer_mode: SEND
{metadata}"
    )
}

/// The picker's ext_proc filter: the shim reads the subset hint and answers with the destination in
/// `envoy.lb` metadata.
fn picker_ext_proc_filter() -> String {
    let metadata = "              metadata_options:
                forwarding_namespaces: {untyped: [envoy.lb, envoy.lb.subset_hint]}
                receiving_namespaces: {untyped: [envoy.lb]}
";
    ext_proc_filter("epp", "", metadata)
}

/// GIE's Body-Based Router over ext_proc as envoy-config/bbr-two-models-ext-proc configures it (its Helm
/// chart's processing mode), before the picker's ext_proc filter.
fn bbr_ext_proc_filter() -> String {
    ext_proc_filter("bbr", "              allow_mode_override: true\n", "")
}

const BREAKERS: &str =
    "    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}\n";

const POOL_CLUSTER: &str = "  - name: pool
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {use_http_header: true, http_header_name: x-gateway-destination-endpoint}
    circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}
";

#[cfg(test)]
mod tests {
    use super::*;
    use scheduler_core::bbr::BbrFacts;
    use scheduler_core::config::gateway::GatewayConfig;

    /// The headers the router promotes for the benchmark's body under `config`.
    fn promoted(config: &str) -> Vec<(String, String)> {
        let config = GatewayConfig::from_json(config).unwrap();
        let routing = config.bbr.clone().expect("a bbr section");
        let facts = BbrFacts { path: String::from("/v1/chat/completions"), ..BbrFacts::default() };
        let body = crate::load::chat_body(4096);
        routing.route(&config, &facts, Some(body.as_bytes())).unwrap()
    }

    #[test]
    fn the_routers_promote_the_base_model_the_bbr_routes_match() {
        let pool: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", 20_000 + i)).collect();
        let with_picker = picker_config_with_bbr(&pool, 4, 1000);
        for config in [bbr_config(), with_picker.clone()] {
            let set = promoted(&config);
            let base = set.iter().find(|(n, _)| n.eq_ignore_ascii_case("x-gateway-base-model-name"));
            assert_eq!(base.map(|(_, v)| v.as_str()), Some(BENCH_MODEL), "{set:?}");
            assert!(set
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("x-gateway-model-name") && v == BENCH_MODEL));
        }
        let exact = format!("string_match: {{exact: \"{BENCH_MODEL}\"}}");
        assert!(BBR_POOL_ROUTE.contains(&exact) && BBR_FIXED_ROUTE.contains(&exact));
        // The picker keeps its pool: the bbr section is added, nothing else changes.
        let picker = GatewayConfig::from_json(&with_picker).unwrap();
        assert_eq!(picker.pool.endpoints.len(), 4);
        assert!(GatewayConfig::from_json(&picker_config(&pool, 4, 1000)).unwrap().bbr.is_none());
    }

    #[test]
    fn the_new_keys_read_back() {
        for key in ["bbr-only", "bbr-picker-64", "ext_proc-bbr-64", "ext_proc-64", "picker-8"] {
            assert_eq!(Gateway::from_key(key).map(|g| g.key()).as_deref(), Some(key));
        }
        assert!(matches!(Gateway::from_key("ext_proc-bbr-64"), Some(Gateway::ExtProcBbr { endpoints: 64 })));
        assert!(Gateway::from_key("bbr-picker-x").is_none());
    }
}
