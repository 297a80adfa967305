//! `model-sim`: serves one simulated vLLM/SGLang replica over HTTP (see `--help`).

mod server;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use model_sim::Engine;
use tokio::net::TcpListener;

use server::cli::{self, CliError};
use server::listen;
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
    let control = match opts.control_port {
        Some(port) => Some(TcpListener::bind(SocketAddr::new(opts.host, port)).await?),
        None => None,
    };
    let control_addr = control.as_ref().map(TcpListener::local_addr).transpose()?;
    let replica = opts.replica_name.clone().unwrap_or_else(|| local.to_string());
    // Starting with refused connections: the port closes before anyone is told about it.
    let first = if opts.faults.refuse_connections {
        drop(listener);
        None
    } else {
        Some(listener)
    };
    let shared = Shared::new(opts, replica, engine);
    shared.preload();
    tokio::spawn(sim::drive(shared.clone()));
    if let Some(control) = control {
        tokio::spawn(listen::serve_control(shared.clone(), control));
    }
    // The first line is for whoever started us (tests, xtask): where we listen, once we really do.
    let mut stdout = std::io::stdout();
    match control_addr {
        Some(c) => writeln!(
            stdout,
            "model-sim listening on http://{local} replica={} control=http://{c}",
            shared.replica
        )?,
        None => writeln!(stdout, "model-sim listening on http://{local} replica={}", shared.replica)?,
    }
    stdout.flush()?;
    listen::serve_main(shared, local, first).await;
    Ok(())
}
