//! `epp-shim`: command-line flags (hand-written to keep the build lean), then [`epp_shim::app::run`].

use epp_shim::app::{self, Discovery, Settings, TlsMode};
use epp_shim::endpoints::kubernetes::KubeSettings;
use epp_shim::extproc::machine::BodyMode;
use epp_shim::scrape::ScrapeSettings;
use scheduler_core::config::gateway::GatewayConfig;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
epp-shim: a GIE Endpoint Picker (Envoy ext_proc, FULL_DUPLEX_STREAMED or BUFFERED) on the wasm-epp
scheduling core, for gateways that cannot load the Wasm filter; or, with --collector-only, the companion
collector that scrapes every model server once and serves the pool snapshot to many Wasm filters.

USAGE: epp-shim [FLAGS]

Configuration:
  --config <FILE>             gateway configuration, JSON or YAML: the GIE/llm-d EndpointPickerConfig
                              keys plus pool, collector, routing, failureMode, failOpen, limits,
                              objectives, modelRewrites, bbr (the Wasm filter's document) [default: every
                              default, no static endpoints]

Endpoints (default: the configuration's pool.endpoints):
  --kubernetes                discover endpoints from an InferencePool and its Ready pods, and apply
                              (and publish in /snapshot) the InferenceObjectives and
                              InferenceModelRewrites whose poolRef names it
  --pool-name <NAME>          InferencePool to watch [default: the configuration's pool.name]
  --pool-namespace <NS>       its namespace [default: the service account's or kubeconfig's]
  --k8s-api-url <URL>         talk to this API server without credentials (kubectl proxy, tests)
                              instead of the in-cluster service account or kubeconfig

Serving:
  --host <IP>                 address every server binds [default: 0.0.0.0]
  --grpc-port <PORT>          ext_proc port; 0 picks a free one [default: 9002]
  --grpc-health-port <PORT>   gRPC health port: \"\", liveness, readiness, inference-extension and
                              envoy.service.ext_proc.v3.ExternalProcessor [default: 9003]
  --metrics-port <PORT>       HTTP port for /metrics, /snapshot and /healthz [default: 9090]
  --pick-port <PORT>          also serve the plain-HTTP pick endpoint for NGINX (POST /pick, then
                              POST /pick/done; envoy-config/nginx/); 0 picks a free one [default: off]
  --pick-lease-secs <S>       release a pick's in-flight count when NGINX has not reported the end
                              of its response after this long [default: 600]
  --bbr-port <PORT>           also serve body-based routing (GIE's Body-Based Router: body fields such
                              as model promoted to headers before the route is chosen; the
                              configuration's bbr section) over ext_proc on this port, with the same
                              TLS and body mode; 0 picks a free one [default: off]
  --plaintext                 serve ext_proc without TLS (default: TLS, ALPN h2, self-signed
                              certificate generated at start; gateways skip verification)
  --cert-path <FILE>          PEM certificate to serve instead of a self-signed one (with --key-path)
  --key-path <FILE>           PEM private key for --cert-path
  --body-mode <MODE>          auto | full-duplex | buffered: how request bodies arrive. auto reads the
                              gateway's protocol_config and assumes full-duplex when it is absent
                              [default: auto]
  --collector-only            no ext_proc: scrape and serve GET /snapshot (the core's encoding, the
                              generation in the x-epp-snapshot-generation header) on --metrics-port

Scraping (each endpoint's /metrics, parsed by the core):
  --scrape-interval-ms <MS>   period per endpoint [default: the configuration's collector.intervalMs, 50]
  --scrape-timeout-ms <MS>    per-scrape timeout [default: collector.timeoutMs, 1000]
  --max-concurrent-scrapes <N> scrapes in flight at once [default: 64]

  --log-level <LEVEL>         error | warn | info | debug [default: info]
  -h, --help                  print this help
";

#[derive(Debug, PartialEq, Eq)]
enum CliError {
    Help,
    Unknown(String),
    MissingValue(&'static str),
    Invalid { flag: &'static str, value: String, expected: &'static str },
    CertWithoutKey,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help => f.write_str("help requested"),
            CliError::Unknown(a) => write!(f, "unknown flag {a:?} (see --help)"),
            CliError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            CliError::Invalid { flag, value, expected } => write!(f, "{flag} {value:?}: expected {expected}"),
            CliError::CertWithoutKey => f.write_str("--cert-path and --key-path go together"),
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Flags {
    config: Option<PathBuf>,
    kubernetes: bool,
    pool_name: Option<String>,
    pool_namespace: Option<String>,
    k8s_api_url: Option<String>,
    host: Option<IpAddr>,
    grpc_port: Option<u16>,
    health_port: Option<u16>,
    metrics_port: Option<u16>,
    pick_port: Option<u16>,
    pick_lease_secs: Option<u64>,
    bbr_port: Option<u16>,
    plaintext: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    body_mode: Option<BodyMode>,
    collector_only: bool,
    scrape_interval_ms: Option<u64>,
    scrape_timeout_ms: Option<u64>,
    max_concurrent_scrapes: Option<usize>,
    log_level: Option<log::LevelFilter>,
}

fn parse_num<T: std::str::FromStr>(
    flag: &'static str,
    v: String,
    expected: &'static str,
) -> Result<T, CliError> {
    v.parse().map_err(|_| CliError::Invalid { flag, value: v, expected })
}

fn parse_flags(args: impl IntoIterator<Item = String>) -> Result<Flags, CliError> {
    let mut f = Flags::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--flag=value` and `--flag value` both work.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => return Err(CliError::Help),
            "--kubernetes" => f.kubernetes = true,
            "--plaintext" => f.plaintext = true,
            "--collector-only" => f.collector_only = true,
            _ => {
                let flag: &'static str = match name.as_str() {
                    "--config" => "--config",
                    "--pool-name" => "--pool-name",
                    "--pool-namespace" => "--pool-namespace",
                    "--k8s-api-url" => "--k8s-api-url",
                    "--host" => "--host",
                    "--grpc-port" => "--grpc-port",
                    "--grpc-health-port" => "--grpc-health-port",
                    "--metrics-port" => "--metrics-port",
                    "--pick-port" => "--pick-port",
                    "--pick-lease-secs" => "--pick-lease-secs",
                    "--bbr-port" => "--bbr-port",
                    "--cert-path" => "--cert-path",
                    "--key-path" => "--key-path",
                    "--body-mode" => "--body-mode",
                    "--scrape-interval-ms" => "--scrape-interval-ms",
                    "--scrape-timeout-ms" => "--scrape-timeout-ms",
                    "--max-concurrent-scrapes" => "--max-concurrent-scrapes",
                    "--log-level" => "--log-level",
                    _ => return Err(CliError::Unknown(arg)),
                };
                let v = match inline {
                    Some(v) => v,
                    None => args.next().ok_or(CliError::MissingValue(flag))?,
                };
                match flag {
                    "--config" => f.config = Some(PathBuf::from(v)),
                    "--pool-name" => f.pool_name = Some(v),
                    "--pool-namespace" => f.pool_namespace = Some(v),
                    "--k8s-api-url" => f.k8s_api_url = Some(v),
                    "--host" => f.host = Some(parse_num(flag, v, "an IP address")?),
                    "--grpc-port" => f.grpc_port = Some(parse_num(flag, v, "a port (0-65535)")?),
                    "--grpc-health-port" => f.health_port = Some(parse_num(flag, v, "a port (0-65535)")?),
                    "--metrics-port" => f.metrics_port = Some(parse_num(flag, v, "a port (0-65535)")?),
                    "--pick-port" => f.pick_port = Some(parse_num(flag, v, "a port (0-65535)")?),
                    "--pick-lease-secs" => f.pick_lease_secs = Some(positive(flag, v)?),
                    "--bbr-port" => f.bbr_port = Some(parse_num(flag, v, "a port (0-65535)")?),
                    "--cert-path" => f.cert = Some(PathBuf::from(v)),
                    "--key-path" => f.key = Some(PathBuf::from(v)),
                    "--body-mode" => {
                        f.body_mode = match v.as_str() {
                            "auto" => None,
                            other => Some(BodyMode::parse(other).ok_or(CliError::Invalid {
                                flag,
                                value: v.clone(),
                                expected: "auto, full-duplex or buffered",
                            })?),
                        }
                    }
                    "--scrape-interval-ms" => f.scrape_interval_ms = Some(positive(flag, v)?),
                    "--scrape-timeout-ms" => f.scrape_timeout_ms = Some(positive(flag, v)?),
                    "--max-concurrent-scrapes" => {
                        f.max_concurrent_scrapes = Some(positive(flag, v)? as usize);
                    }
                    _ => {
                        f.log_level = Some(parse_num(flag, v, "error, warn, info, debug or trace")?);
                    }
                }
            }
        }
    }
    if f.cert.is_some() != f.key.is_some() {
        return Err(CliError::CertWithoutKey);
    }
    Ok(f)
}

fn positive(flag: &'static str, v: String) -> Result<u64, CliError> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(CliError::Invalid { flag, value: v, expected: "an integer > 0" }),
    }
}

fn settings(f: Flags, config: GatewayConfig) -> Settings {
    let discovery = if f.kubernetes {
        Discovery::Kubernetes(KubeSettings {
            api_url: f.k8s_api_url,
            namespace: f.pool_namespace,
            pool_name: f.pool_name.unwrap_or_else(|| config.pool.name.clone()),
        })
    } else {
        Discovery::Static
    };
    let tls = match (f.plaintext, f.cert, f.key) {
        (true, _, _) => TlsMode::Plaintext,
        (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
        _ => TlsMode::SelfSigned,
    };
    let scrape = ScrapeSettings {
        interval: Duration::from_millis(f.scrape_interval_ms.unwrap_or(config.collector.interval_ms)),
        timeout: Duration::from_millis(f.scrape_timeout_ms.unwrap_or(config.collector.timeout_ms)),
        max_concurrent: f.max_concurrent_scrapes.unwrap_or(64),
        metrics_path: config.collector.metrics_path.clone(),
    };
    Settings {
        host: f.host.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        grpc_port: f.grpc_port.unwrap_or(9002),
        health_port: f.health_port.unwrap_or(9003),
        http_port: f.metrics_port.unwrap_or(9090),
        pick_port: f.pick_port,
        pick_lease: Duration::from_secs(f.pick_lease_secs.unwrap_or(600)),
        tls,
        collector_only: f.collector_only,
        discovery,
        scrape,
        default_body_mode: BodyMode::FullDuplex,
        forced_body_mode: f.body_mode,
        bbr_port: f.bbr_port,
        config,
    }
}

fn main() -> ExitCode {
    let flags = match parse_flags(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(CliError::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("epp-shim: {e}");
            return ExitCode::from(2);
        }
    };
    epp_shim::logging::init(flags.log_level.unwrap_or(log::LevelFilter::Info));
    let config = match &flags.config {
        Some(path) => match epp_shim::config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("epp-shim: {e}");
                return ExitCode::from(2);
            }
        },
        None => match GatewayConfig::from_json("") {
            Ok(c) => c,
            Err(e) => {
                eprintln!("epp-shim: default configuration: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    return_large_buffers_when_freed();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("epp-shim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(settings(flags, config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("epp-shim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shim buffers request bodies whole, up to `limits.maxBodyBytes` (4 MiB by default). glibc's malloc
/// serves the first such buffer from its own mapping, then raises its mapping threshold to that size, so
/// every later one comes from a thread's heap arena and stays there after it is freed: RSS then swings
/// with the bodies in flight (22 to 45 MiB in a 30-minute soak with 4 MiB bodies) rather than following
/// what the shim holds. A fixed threshold keeps large buffers in their own mappings, handed back at once
/// (RSS flat at 22 MiB in the same soak; docs/reliability.md). A threshold the operator set in the
/// environment (`GLIBC_TUNABLES`, `MALLOC_MMAP_THRESHOLD_`) wins.
fn return_large_buffers_when_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Allocations from this size up get their own mapping, unmapped when freed.
        const LARGE_BUFFER_BYTES: libc::c_int = 1 << 20;
        let tuned = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"));
        if !tuned {
            // SAFETY: mallopt only sets a parameter of glibc's allocator; called before any thread starts.
            let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES) };
            if ok != 1 {
                log::warn!("malloc's mapping threshold not set: large bodies may stay in RSS once freed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, CliError> {
        parse_flags(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_with_space_or_equals() {
        let f = parse(&["--grpc-port", "0", "--metrics-port=0", "--plaintext", "--body-mode", "buffered"])
            .unwrap();
        assert_eq!((f.grpc_port, f.metrics_port, f.plaintext), (Some(0), Some(0), true));
        assert_eq!(f.body_mode, Some(BodyMode::Buffered));
    }

    #[test]
    fn bad_flags_say_what_was_expected() {
        assert_eq!(parse(&["--nope"]), Err(CliError::Unknown("--nope".into())));
        assert_eq!(parse(&["--grpc-port"]), Err(CliError::MissingValue("--grpc-port")));
        assert_eq!(
            parse(&["--scrape-interval-ms", "0"]).unwrap_err().to_string(),
            "--scrape-interval-ms \"0\": expected an integer > 0"
        );
        assert_eq!(parse(&["--cert-path", "c.pem"]), Err(CliError::CertWithoutKey));
        assert_eq!(parse(&["-h"]), Err(CliError::Help));
    }

    #[test]
    fn help_mentions_every_flag() {
        for flag in [
            "--config",
            "--kubernetes",
            "--pool-name",
            "--pool-namespace",
            "--k8s-api-url",
            "--host",
            "--grpc-port",
            "--grpc-health-port",
            "--metrics-port",
            "--pick-port",
            "--pick-lease-secs",
            "--bbr-port",
            "--plaintext",
            "--cert-path",
            "--key-path",
            "--body-mode",
            "--collector-only",
            "--scrape-interval-ms",
            "--scrape-timeout-ms",
            "--max-concurrent-scrapes",
            "--log-level",
        ] {
            assert!(HELP.contains(flag), "{flag} missing from --help");
        }
    }
}
