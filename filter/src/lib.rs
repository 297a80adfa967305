//! wasm-epp's Proxy-Wasm module: an inference-aware endpoint picker that runs inside Envoy, and the
//! collector that feeds it model-server metrics. The decisions are `scheduler-core`'s; this crate moves
//! bytes between the proxy and the core, and keeps state that several proxy threads share.
//!
//! # Roles (one module, chosen by `root_id`)
//! - **picker** (any root id but `collector`), an HTTP filter on each worker thread, driving the core's
//!   request lifecycle (`scheduler_core::exchange`, shared with the ext_proc shim): strips client-set
//!   routing headers, buffers the body, asks `EndpointPicker::decide`, sets `x-gateway-destination-endpoint`
//!   (or answers 400/413/429/503 with an OpenAI-shaped body), and on the way back adds the served header,
//!   counts upstream 5xx per endpoint, moves the in-flight count when the proxy served the request
//!   elsewhere and ends it (on_log/on_done, whatever the end).
//! - **bbr** (`root_id: bbr`): body-based routing only, GIE's Body-Based Router in the proxy: promotes
//!   `model` (and configured body fields, the base model of a LoRA adapter) into request headers before
//!   the route is chosen (`scheduler_core::bbr`). A picker whose configuration has a `bbr` section does
//!   the same in its own filter, on the one body read it makes anyway.
//! - **collector** (`root_id: collector`, e.g. an `envoy.bootstrap.wasm` singleton with the same `vm_id`):
//!   scrapes every endpoint's `/metrics` (or polls one discovery URL serving a ready snapshot) and
//!   publishes the pool snapshot. With `collector.mode: leader-elected` (Istio: no singleton) every
//!   picker root takes part in a lease election instead and the holder collects.
//! - **several pools** (`pools` in the configuration, `scheduler_core::config::pools`): a picker root
//!   holds one worker, waiting list and (leader-elected) collector per pool, and each stream chooses its
//!   pool when it decides (the route's cluster, `xds.cluster_name`, or the model), then runs the same
//!   lifecycle on that pool's worker; a collector root scrapes every pool. Keys are per pool already;
//!   stats are named `pool.<name>.…`.
//!
//! # Process-wide state (shared data, per `vm_id`; names in [`keys`])
//! - Snapshot: the collector writes `snapshot` then bumps `generation`. A worker reads the 8-byte
//!   generation at most once per millisecond and re-reads and decodes the snapshot only when it moved
//!   ([`snapshot_cache`]). Staleness: one scrape interval (50 ms by default) plus scrape latency and at
//!   most 1 ms; a snapshot older than `limits.snapshotMaxAgeMs` is not used (fail open or closed,
//!   counted by reason).
//! - In-flight: each worker owns `inflight/<id>` and rewrites it when requests start or end (at most once
//!   per millisecond while other workers read it) and on a 1 s heartbeat; readers sum every live
//!   worker's table before scheduling, re-reading the others at most once per millisecond
//!   ([`inflight`]). Staleness: about a millisecond under load; dead workers drop out after 3 s.
//! - Prefix index: replicated; each routed request's block hashes go to every other worker's queue, in
//!   batches sent at most once per 10 ms, and are learned in `on_queue_ready` ([`prefix_sync`]).
//!   Staleness: under load up to 10 ms plus one event-loop turn of the other thread; the last picks of a
//!   burst go out with the next stream end after the interval or the next tick.
//! - Flow control (`featureGates: [flowControl]`): each worker queues its own paused streams (only its
//!   VM can resume them) and owns `flow/<id>`, its queued requests and bytes per band, written when they
//!   change; the others' tables count against capacity and strict priority ([`flow_share`]). A waiting
//!   stream is resumed or answered by the root context through `proxy_set_effective_context`, on a
//!   wake-up message on the worker's own queue when a request ends, or on the 10 ms tick
//!   (`wasm/waiting.rs`). With flow control on, in-flight tables are written on every change.
//!   Staleness: a millisecond. See docs/flow-control.md.
//! - Worker ids and directory ([`worker_directory`]); the collector lease (`collector::leader`). Each
//!   worker keeps a copy of the directory, re-read once per heartbeat and whenever a joining worker announces itself
//!   on the prefix queues, so a request reads only the other workers' in-flight tables. A picker VM joins
//!   the directory on its first HTTP stream, not at configuration: Envoy also configures the filter's root
//!   context on its main thread, which serves no requests and must not receive prefix broadcasts.
//!
//! # Why `allow_on_headers_stop_iteration: true`
//! The picker must see the body before the request leaves. Without that flag Envoy turns the headers'
//! `Pause` into StopAllIteration and withholds the body from the filter until it resumes, i.e. until after
//! routing; with it, the body arrives in `on_http_request_body` while the headers wait, and the routing
//! header is set there before continuing. Requests without a body are decided at the headers.
//!
//! # Layout
//! Logic lives in host-independent modules behind the small [`host::Host`] trait (unit-tested natively
//! with a fake); `wasm/` (only for `wasm32`) is the glue: `root.rs` (the RootContext, roles, ticks,
//! callouts, queues), `stream.rs` (the HttpContext: exchange steps to host calls), `host_impl.rs` (`Host` over `abi.rs`, the raw host calls,
//! none of which can panic), `headers.rs` (a header map in one call, parsed by [`header_map`]) and `logger.rs`
//! (follows the proxy's log level).
//! Debug logs carry request ids, endpoints and statuses, never prompt text.

pub mod collector;
pub mod ejections;
pub mod flow_share;
pub mod header_map;
pub mod host;
pub mod inflight;
pub mod keys;
pub mod memory;
pub mod prefix_sync;
pub mod snapshot_cache;
pub mod stats;
pub mod worker;
pub mod worker_directory;

#[cfg(target_arch = "wasm32")]
mod wasm;
