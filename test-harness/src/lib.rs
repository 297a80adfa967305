//! Test harness for wasm-epp: a Proxy-Wasm host emulator that runs the real `.wasm` filter the way
//! Envoy does, inside ordinary `cargo test`s (later also the model-server simulator and e2e tests).
//!
//! One [`Host`] per test is an emulated Envoy process: it starts VMs (workers and singletons sharing
//! shared data per `vm_id`), drives HTTP streams, moves a virtual clock that fires `on_tick` and callout
//! timeouts, lets the test answer callouts, and records everything for assertions — what the upstream
//! received, the local reply, logs by level, metrics, shared data, traps and the transcript of host
//! calls. Envoy's quirks are copied on purpose (see `shared/reference/proxy-wasm.md`): empty values as
//! pointer 0 / size 0, header maps gone after continue, deferred continue and local reply,
//! `allow_on_headers_stop_iteration`, the 413 at the buffer limit, Envoy's exact CAS, `failure_policy`.
//!
//! A complete test:
//!
//! ```
//! use std::time::Duration;
//! use test_harness::{fixture_wasm, CalloutResponse, Host, LogLevel, Plugin};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wasm = fixture_wasm()?; // builds test-harness/fixtures/proxy-wasm-fixture once per process
//! let mut host = Host::builder().cluster("metrics").buffer_limit(32 * 1024).build();
//!
//! // A worker VM running the `router` filter, as Envoy would configure it.
//! let worker = host.start_vm(
//!     Plugin::new(&wasm).root_id("router").vm_id("epp").allow_on_headers_stop_iteration(true),
//! )?;
//! let request = [(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "gw")];
//! let stream = host.start_request(worker, &request, false)?;
//! assert!(host.stream(stream).request_paused()); // waiting for the body
//! host.request_body(stream, b"to:10.0.0.7:8000", true)?;
//! assert_eq!(host.stream(stream).upstream_header("x-route-to"), Some("10.0.0.7:8000"));
//! host.respond(stream, 200, b"{}")?;
//! assert_eq!(host.stream(stream).response_status(), Some(200));
//! assert_eq!(host.metric_value("fixture_requests_total"), Some(1));
//!
//! // A singleton collecting on a tick: the callout is recorded, the test answers it.
//! let collector = host.start_vm(Plugin::new(&wasm).root_id("collector").vm_id("epp"))?;
//! host.advance(Duration::from_secs(1));
//! let call = host.pending_callouts().remove(0);
//! assert_eq!((call.cluster.as_str(), call.header(":path")), ("metrics", Some("/metrics")));
//! host.answer_callout(call.id, CalloutResponse::new(200).body("queue_size 3"))?;
//! assert_eq!(host.shared_data("epp", "metrics").map(|(v, _)| v), Some(b"queue_size 3".to_vec()));
//! assert!(host.logs_at(LogLevel::Info).iter().any(|l| l.contains("published")));
//! assert!(host.traps().is_empty() && !host.vm_failed(collector));
//! # Ok(())
//! # }
//! ```

//! The fixture build ([`fixture_wasm`], [`build_wasm_crate`]) runs `cargo build --release --target
//! wasm32-wasip1` once per process (installing the target with rustup when it is missing), and compiled
//! modules are kept under `target/wasmtime-cache`, so a test costs milliseconds even under nextest.
//!
//! Not emulated: trailers (their maps answer BadArgument as outside Envoy's trailer callbacks), gRPC
//! (the SDK's `proxy_grpc_*` imports are stubbed and answer UNIMPLEMENTED), TCP/network filters, foreign
//! functions (NotFound), `proxy_done` after `on_done` returned false, and flow-control watermarks (a body
//! held while headers are paused without stop-iteration support is never limited). A callout that times
//! out is delivered as Envoy's router reports it: `504` with body `upstream request timeout`.

pub mod e2e;
pub mod host;
mod wasm_build;

pub use host::abi::{Headers, LogLevel, Status};
pub use host::callouts::{Callout, CalloutId, CalloutResponse, CalloutState};
pub use host::http::{HttpStream, LocalReply, LocalReplySource, Message, Phase, StreamId};
pub use host::metrics::{Metric, MetricKind};
pub use host::properties::PropertyValue;
pub use host::transcript::{Event, Fault, LogEntry, Trap};
pub use host::{FailurePolicy, HarnessError, Host, HostBuilder, Plugin, StartError, VmId};
pub use wasm_build::{build_wasm_crate, build_wasm_crate_with, fixture_wasm, workspace_root, WASM_TARGET};
