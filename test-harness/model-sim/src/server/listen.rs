//! The sockets: the main port (everything, closed and re-opened by the `refuse_connections` knob) and
//! the optional control port (only `/admin/faults`, never closed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::http;
use super::sim::Shared;

/// How long a connection open when the port closes may still finish what it is writing (the answer to
/// the very `/admin/faults` request that closed the port, typically) before it is cut.
const CLOSE_GRACE: Duration = Duration::from_millis(100);
/// Pause after a failed accept or re-bind before trying again.
const RETRY: Duration = Duration::from_millis(50);

/// Serves the main port. `first` is the socket bound at start, `None` if the replica starts refusing.
///
/// While `refuse_connections` is set the listening socket is closed, so the kernel answers new
/// connections with a reset (ECONNREFUSED, as after `kill -9`), and every open connection is closed.
/// When the knob is cleared, or its `refuse_for_ms` runs out, the same address is bound again.
pub async fn serve_main(shared: Arc<Shared>, addr: SocketAddr, first: Option<TcpListener>) {
    let mut faults = shared.watch_faults();
    let mut listener = first;
    loop {
        let (refusing, until) = {
            let f = faults.borrow_and_update();
            (f.refuse_connections, f.refuse_until)
        };
        if refusing {
            listener = None;
            shared.set_listening(false);
            let run_out = async {
                match until {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = faults.changed() => if r.is_err() { return },
                () = run_out => {
                    if let Some(t) = until {
                        shared.end_timed_refusal(t);
                    }
                }
            }
            continue;
        }
        if listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    // Someone took the port meanwhile: keep trying (and keep answering the control port).
                    eprintln!("model-sim: cannot re-open {addr}: {e}; retrying");
                    tokio::select! {
                        r = faults.changed() => if r.is_err() { return },
                        () = tokio::time::sleep(RETRY) => {}
                    }
                    continue;
                }
            }
        }
        let Some(l) = listener.as_ref() else { continue };
        shared.set_listening(true);
        tokio::select! {
            r = faults.changed() => if r.is_err() { return },
            accepted = l.accept() => match accepted {
                Ok((stream, _)) => spawn_main_connection(&shared, stream),
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(e) => {
                    eprintln!("model-sim: accept failed: {e}");
                    tokio::time::sleep(RETRY).await;
                }
            },
        }
    }
}

fn spawn_main_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut faults = shared.watch_faults();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let service = service_fn(move |req| http::handle(shared.clone(), req));
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        // Errors here are clients hanging up or the drop fault cutting a stream; nothing to report.
        let port_closed = tokio::select! {
            _ = conn.as_mut() => return,
            r = faults.wait_for(|f| f.refuse_connections) => r.is_ok(),
        };
        if !port_closed {
            let _ = conn.await;
            return;
        }
        // The port closed: idle connections close now, a response being written gets a moment.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    });
}

/// Serves the control port: `/admin/faults` only, whatever the knobs say.
pub async fn serve_control(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("model-sim: accept failed on the control port: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| http::handle_control(shared.clone(), req));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
