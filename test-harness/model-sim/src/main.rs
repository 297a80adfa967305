//! `model-sim`: serves one simulated vLLM/SGLang replica over HTTP (see `--help`).

mod server;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use model_sim::Engine;
use tokio::net::TcpListener;

use server::cli::{self, CliError};
use server::sim::{self, Shared};

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(CliError::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("model-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let engine = match Engine::new(opts.engine.clone()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("model-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("model-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(opts, engine)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("model-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(opts: cli::Options, engine: Engine) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::new(opts.host, opts.port)).await?;
    let local = listener.local_addr()?;
    let replica = opts.replica_name.clone().unwrap_or_else(|| local.to_string());
    let shared = Shared::new(opts, replica, engine);
    shared.preload();
    tokio::spawn(sim::drive(shared.clone()));
    // The first line is for whoever started us (tests, xtask): where we listen, once we really do.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "model-sim listening on http://{local} replica={}", shared.replica)?;
    stdout.flush()?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(e) => {
                eprintln!("model-sim: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| server::http::handle(shared.clone(), req));
            // Errors here are clients hanging up or the drop fault cutting a stream; nothing to report.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
