//! Wiring: discovery → scrape loop → pool; the picker thread; the ext_proc, health and HTTP servers.
//! Each server prints one `epp-shim <what> listening on <url>` line on stdout once it is bound, so
//! scripts and tests can start the binary on port 0 and read where it went.

use crate::bbr::BbrSettings;
use crate::endpoints::kubernetes::{self, KubeSettings};
use crate::endpoints::{static_list, Discovered};
use crate::extproc::machine::{BodyMode, StreamSettings};
use crate::extproc::service::ExtProcService;
use crate::metrics::Metrics;
use crate::pick_server::{self, PickService};
use crate::picker::{PickerHandle, SpawnError};
use crate::pool::Pool;
use crate::scrape::{self, ScrapeSettings};
use crate::{health, http_server, tls};
use scheduler_core::config::gateway::GatewayConfig;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Debug)]
pub enum TlsMode {
    Plaintext,
    /// Generate a certificate at start (what gateways expect; they skip verification).
    SelfSigned,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Clone, Debug)]
pub enum Discovery {
    /// `pool.endpoints` from the configuration file.
    Static,
    Kubernetes(KubeSettings),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub config: GatewayConfig,
    pub host: IpAddr,
    pub grpc_port: u16,
    pub health_port: u16,
    pub http_port: u16,
    pub tls: TlsMode,
    /// The plain-HTTP pick endpoint for NGINX (`pick_server`), when asked for.
    pub pick_port: Option<u16>,
    /// How long a pick holds its in-flight count without `/pick/done`.
    pub pick_lease: std::time::Duration,
    /// Serve only the snapshot (and metrics/health): no ext_proc, no picker.
    pub collector_only: bool,
    pub discovery: Discovery,
    pub scrape: ScrapeSettings,
    /// Body mode when the gateway does not announce one.
    pub default_body_mode: BodyMode,
    /// Ignore what the gateway announces.
    pub forced_body_mode: Option<BodyMode>,
    /// Also serve body-based routing over ext_proc on this port ([`crate::bbr`]), with the same TLS.
    pub bbr_port: Option<u16>,
}

#[derive(Debug)]
pub enum AppError {
    Bind { what: &'static str, addr: SocketAddr, error: std::io::Error },
    Tls(tls::TlsError),
    TlsConfig(tonic::transport::Error),
    Picker(SpawnError),
    Serve { what: &'static str, error: tonic::transport::Error },
    Kubernetes(kubernetes::KubeError),
    Io(std::io::Error),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Bind { what, addr, error } => write!(f, "cannot listen for {what} on {addr}: {error}"),
            AppError::Tls(e) => write!(f, "{e}"),
            AppError::TlsConfig(e) => write!(f, "TLS configuration rejected: {e}"),
            AppError::Picker(e) => write!(f, "{e}"),
            AppError::Serve { what, error } => write!(f, "{what} server failed: {error}"),
            AppError::Kubernetes(e) => write!(f, "{e}"),
            AppError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {}

async fn bind(what: &'static str, host: IpAddr, port: u16) -> Result<TcpListener, AppError> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr).await.map_err(|error| AppError::Bind { what, addr, error })
}

fn announce(what: &str, scheme: &str, listener: &TcpListener) -> Result<(), AppError> {
    let addr = listener.local_addr().map_err(AppError::Io)?;
    let mut out = std::io::stdout();
    writeln!(out, "epp-shim {what} listening on {scheme}://{addr}").map_err(AppError::Io)?;
    out.flush().map_err(AppError::Io)
}

/// Runs until Ctrl-C / SIGTERM or until a server fails.
pub async fn run(settings: Settings) -> Result<(), AppError> {
    let pool = Pool::new(settings.config.pool.name.clone());
    let metrics = Arc::new(Metrics::default());

    // Discovery. The static sender must live as long as the process, or the scrape loop ends.
    let (static_tx, discovered): (Option<watch::Sender<Discovered>>, watch::Receiver<Discovered>) =
        match &settings.discovery {
            Discovery::Static => {
                let tx = static_list::from_config(&settings.config);
                let rx = tx.subscribe();
                (Some(tx), rx)
            }
            Discovery::Kubernetes(k) => {
                let (tx, rx) = watch::channel(None);
                let (resources_tx, resources_rx) = watch::channel(Default::default());
                let k = k.clone();
                tokio::spawn(async move {
                    if let Err(e) = kubernetes::run(k, tx, resources_tx).await {
                        log::error!("Kubernetes discovery stopped: {e}");
                    }
                });
                tokio::spawn(kubernetes::follow_resources(resources_rx, Arc::clone(&pool)));
                (None, rx)
            }
        };
    tokio::spawn(scrape::run(
        Arc::clone(&pool),
        discovered.clone(),
        settings.scrape.clone(),
        Arc::clone(&metrics),
    ));

    let http = bind("http", settings.host, settings.http_port).await?;
    announce("http", "http", &http)?;
    tokio::spawn(http_server::serve(http, Arc::clone(&pool), Arc::clone(&metrics)));

    let (ready_tx, ready_rx) = watch::channel(false);
    tokio::spawn(follow_readiness(discovered, ready_tx));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(health::follow(reporter, ready_rx.clone()));
    let health_listener = bind("gRPC health", settings.host, settings.health_port).await?;
    announce("health", "grpc", &health_listener)?;
    // One service on this port; the ext_proc port pairs two with `health::WithHealth` (no tonic router).
    let health_server = tonic::transport::Server::builder().serve_with_incoming_shutdown(
        health_service,
        nodelay(health_listener),
        shutdown(),
    );

    if settings.collector_only {
        let r = health_server.await.map_err(|error| AppError::Serve { what: "health", error });
        drop(static_tx);
        return r;
    }

    let picker = PickerHandle::spawn(settings.config.clone(), Arc::clone(&pool), Arc::clone(&metrics))
        .map_err(AppError::Picker)?;
    let stream_settings =
        StreamSettings::new(&settings.config, settings.default_body_mode, settings.forced_body_mode);
    if let Some(port) = settings.pick_port {
        let listener = bind("pick", settings.host, port).await?;
        announce("pick", "http", &listener)?;
        let pick = PickService::new(
            picker.clone(),
            stream_settings.exchange.clone(),
            Arc::clone(&metrics),
            settings.pick_lease,
        );
        tokio::spawn(pick_server::serve(listener, pick));
    }
    let service = ExtProcService::new(picker, stream_settings, Arc::clone(&metrics)).into_server();
    // gRPC health on the ext_proc port too, as the reference picker serves it (see `health`).
    let (ext_proc_reporter, ext_proc_health) = tonic_health::server::health_reporter();
    tokio::spawn(health::follow_ext_proc_port(ext_proc_reporter, ready_rx));
    let service = health::WithHealth::new(service, ext_proc_health);
    let mut builder = tonic::transport::Server::builder();
    let (scheme, tls_config) = match &settings.tls {
        TlsMode::Plaintext => ("grpc", None),
        TlsMode::SelfSigned | TlsMode::Files { .. } => {
            let pair = match &settings.tls {
                TlsMode::Files { cert, key } => tls::from_files(cert, key),
                _ => tls::self_signed(&["localhost", "epp-shim"]),
            }
            .map_err(AppError::Tls)?;
            let config = tls::server_config(&pair);
            builder = builder.tls_config(config.clone()).map_err(AppError::TlsConfig)?;
            ("grpcs", Some(config))
        }
    };
    if let Some(port) = settings.bbr_port {
        let listener = bind("bbr", settings.host, port).await?;
        announce("bbr", scheme, &listener)?;
        let bbr = BbrSettings::new(&settings.config, settings.default_body_mode, settings.forced_body_mode);
        tokio::spawn(crate::bbr::serve(listener, bbr, tls_config));
    }
    let ext_proc = bind("ext_proc", settings.host, settings.grpc_port).await?;
    announce("ext_proc", scheme, &ext_proc)?;
    let ext_proc_server = builder.serve_with_incoming_shutdown(service, nodelay(ext_proc), shutdown());
    let r = tokio::select! {
        r = ext_proc_server => r.map_err(|error| AppError::Serve { what: "ext_proc", error }),
        r = health_server => r.map_err(|error| AppError::Serve { what: "health", error }),
    };
    drop(static_tx);
    r
}

/// Accepted connections with Nagle's algorithm off. tonic ignores its own `tcp_nodelay` setting when
/// given a listener (`serve_with_incoming*`), and with Nagle on, small ext_proc responses wait for the
/// peer's delayed ACK (~40 ms per exchange: the 89 ms p99 the overhead benchmark measured at 4 KiB).
pub(crate) fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    })
}

async fn follow_readiness(mut discovered: watch::Receiver<Discovered>, ready: watch::Sender<bool>) {
    loop {
        let synced = discovered.borrow_and_update().is_some();
        ready.send_if_modified(|r| std::mem::replace(r, synced) != synced);
        if discovered.changed().await.is_err() {
            return;
        }
    }
}

pub(crate) async fn shutdown() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        if let Ok(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
