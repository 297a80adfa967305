//! The one root context type. Its role comes from the plugin: `root_id: collector` is the collector
//! (an Envoy bootstrap singleton, or any VM configured so); `root_id: bbr` is body-based routing alone
//! (`bbr.rs`); every other root id is the picker, whose
//! HTTP contexts decide requests and whose root also collects when `collector.mode` is `leader-elected`
//! and this worker holds the lease. With `pools`, a picker root holds one worker (and waiting list, and
//! collector when leader-elected) per pool, and each stream chooses its pool when it decides; a
//! collector root scrapes every pool.

use super::abi;
use super::bbr::{BbrRole, BbrStream};
use super::host_impl::ProxyHost;
use super::stream::{PoolSet, Stream};
use super::waiting::Waiting;
use crate::collector::leader::{Leadership, Step};
use crate::collector::{CallResponse, Collector};
use crate::host::Host;
use crate::inflight::{FLUSH_TICK_MS, HEARTBEAT_MS};
use crate::keys::Keys;
use crate::memory;
use crate::stats::{self, Stats};
use crate::worker::Worker;
use crate::worker_directory;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};
use scheduler_core::config::gateway::{CollectorMode, GatewayConfig};
use scheduler_core::endpoint_picker::EndpointPicker;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A secret seed for the prefix index's table, new for every VM, from WASI `random_get` (Envoy's
/// proxy-wasm-cpp-host serves it from BoringSSL's `RAND_bytes`). Called directly rather than through
/// std's `RandomState`, which panics when the host refuses.
fn table_seed() -> u64 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn random_get(buf: *mut u8, len: usize) -> u16;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: the host writes at most `len` bytes into the buffer we own.
    let errno = unsafe { random_get(bytes.as_mut_ptr(), bytes.len()) };
    if errno != 0 {
        // std's RandomState would panic here and take the VM down; a seed from the clock is still
        // unknown to a client, which is all the table needs.
        log::warn!("random_get failed (errno {errno}): prefix table seeded from the clock");
        return abi::current_time_ns().unwrap_or(0x9e37_79b9_7f4a_7c15);
    }
    u64::from_le_bytes(bytes)
}

/// The root id that selects the collector role.
pub const COLLECTOR_ROOT_ID: &str = "collector";
/// The root id that selects the body-routing role ([`super::bbr`]).
pub const BBR_ROOT_ID: &str = "bbr";

/// The collector half of a VM (one per pool), with its election state when leader-elected.
struct Collecting {
    collector: Collector,
    election: Option<Leadership>,
    keys: Keys,
    stats: Stats,
    /// The VM's tick can be faster than the scrape interval (flow control ticks every 10 ms while
    /// requests wait, another pool may scrape more often): collection runs at most once per `every_ms`.
    every_ms: u64,
    last_ms: Option<u64>,
}

/// One pool of a picker root: its worker, its waiting streams, and its collector when leader-elected
/// and this VM holds the pool's lease.
struct PoolUnit {
    worker: Rc<RefCell<Worker>>,
    /// Streams paused in flow control's queue (and in flight under an eviction lease).
    waiting: Rc<RefCell<Waiting>>,
    collecting: Option<Collecting>,
}

enum Role {
    /// Before `on_configure` succeeded: HTTP contexts pass requests through untouched.
    Unconfigured,
    Picker {
        /// One unit per pool: the configuration's `pools`, or its single `pool`.
        pools: Vec<PoolUnit>,
        /// With `pools`: what each stream needs to choose its pool (None: the one pool serves all).
        choice: Option<Rc<PoolSet>>,
    },
    /// One collector per pool the configuration names.
    Collector(Vec<Collecting>),
    /// `root_id: bbr`: body-based routing only.
    Bbr(Rc<BbrRole>),
}

pub struct Root {
    /// This root context's id: host calls go back to it after acting on a waiting stream.
    id: u32,
    host: Rc<ProxyHost>,
    role: Role,
}

/// The configuration of every pool, in order (the single pool when there is no `pools` section).
fn pool_configs(config: &GatewayConfig) -> Vec<&GatewayConfig> {
    (0..config.pool_count()).filter_map(|i| config.pool_config(i)).collect()
}

/// `pools[i].` before an error's path, when the configuration has `pools`.
fn at_pool(config: &GatewayConfig, i: usize, e: impl std::fmt::Display) -> String {
    if config.pools.is_empty() {
        e.to_string()
    } else {
        format!("pools[{i}].{e}")
    }
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root { id, host: Rc::new(ProxyHost::new(String::new())), role: Role::Unconfigured }
    }

    fn configure(&mut self) -> Result<(), String> {
        let bytes = abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .map_err(|s| format!("configuration: not readable ({s})"))?;
        let text =
            String::from_utf8(bytes).map_err(|_| String::from("configuration: expected UTF-8 JSON"))?;
        let config = GatewayConfig::from_json(&text).map_err(|e| e.to_string())?;
        let multi = !config.pools.is_empty();
        // Plugin references and parameters are checked here too, so a collector VM refuses a configuration
        // its pickers would refuse.
        for (i, pool) in pool_configs(&config).into_iter().enumerate() {
            let picker = EndpointPicker::new(pool.clone()).map_err(|e| at_pool(&config, i, e))?;
            for warning in picker.scheduler().warnings() {
                log::warn!("configuration: {}", at_pool(&config, i, warning));
            }
        }
        let root_id = property("plugin_root_id");
        self.host = Rc::new(ProxyHost::new(property("plugin_vm_id")));
        let host: &dyn Host = &*self.host;
        if root_id == BBR_ROOT_ID {
            let routing = config.bbr.clone().unwrap_or_default();
            let (host, stats) = (Rc::clone(&self.host), RefCell::new(Stats::default()));
            self.role = Role::Bbr(Rc::new(BbrRole { config, routing, host, stats }));
            log::info!("body-based routing configured");
            return Ok(());
        }
        if root_id == COLLECTOR_ROOT_ID {
            let mut collectors = Vec::new();
            for pool in pool_configs(&config) {
                let election = match pool.collector.mode {
                    CollectorMode::LeaderElected => Some(Leadership::new(
                        worker_directory::claim_id(host, &Keys::new(&pool.pool.name)).map_err(|e| {
                            format!("collector of pool {:?}: no id for the lease: {e}", pool.pool.name)
                        })?,
                    )),
                    CollectorMode::Off => {
                        log::warn!(
                            "root id {COLLECTOR_ROOT_ID:?} with collector.mode off: pool {:?} is not collected \
                             here",
                            pool.pool.name
                        );
                        continue;
                    }
                    CollectorMode::Singleton => None,
                };
                log::info!("collector for pool {:?} started", pool.pool.name);
                collectors.push(collecting(pool, election, multi));
            }
            match collectors.iter().map(|c| c.collector.interval_ms()).min() {
                Some(ms) => set_tick(ms),
                None => {
                    self.role = Role::Unconfigured;
                    return Ok(());
                }
            }
            self.role = Role::Collector(collectors);
            return Ok(());
        }
        let mut units: Vec<(Worker, Option<Collecting>)> = Vec::new();
        for (i, pool) in pool_configs(&config).into_iter().enumerate() {
            let mut worker = Worker::new(pool.clone()).map_err(|e| at_pool(&config, i, e))?;
            worker.set_prefix_table_seed(table_seed());
            if multi {
                worker.label_stats_by_pool();
            }
            // The worker joins the process (directory, in-flight key, prefix queue) on its first HTTP
            // stream, not here: Envoy also configures this root context on its main thread, which never
            // serves requests, and a VM in the directory receives every other worker's prefix broadcasts.
            let collecting = match pool.collector.mode {
                CollectorMode::LeaderElected => match worker_directory::claim_id(host, worker.keys()) {
                    Ok(id) => Some(collecting(pool, Some(Leadership::new(id)), multi)),
                    Err(e) => {
                        log::warn!(
                            "no id for the collector election of pool {:?}, this VM will not collect it: {e}",
                            pool.pool.name
                        );
                        None
                    }
                },
                _ => None,
            };
            units.push((worker, collecting));
        }
        // A collecting VM scrapes on every tick, so it ticks with the scrape interval; the others tick
        // often enough to write what coalescing held back soon after a burst ends. While requests wait
        // in flow control's queue the tick is faster (see `waiting::FLOW_TICK_MS`).
        let tick_ms = units
            .iter()
            .map(|(w, c)| match c {
                Some(_) => w.config().collector.interval_ms.min(HEARTBEAT_MS),
                None => FLUSH_TICK_MS,
            })
            .min()
            .unwrap_or(FLUSH_TICK_MS);
        set_tick(tick_ms);
        let fast_lists = Rc::new(Cell::new(0));
        let pools: Vec<PoolUnit> = units
            .into_iter()
            .map(|(worker, collecting)| PoolUnit {
                worker: Rc::new(RefCell::new(worker)),
                waiting: Rc::new(RefCell::new(Waiting::new(tick_ms, self.id, Rc::clone(&fast_lists)))),
                collecting,
            })
            .collect();
        let choice = multi.then(|| {
            let members = pools.iter().map(|p| (Rc::clone(&p.worker), Rc::clone(&p.waiting))).collect();
            Rc::new(PoolSet::new(config, members))
        });
        self.role = Role::Picker { pools, choice };
        Ok(())
    }

    /// Every collector this VM runs (one per pool it collects).
    fn collectors(&mut self) -> Vec<&mut Collecting> {
        match &mut self.role {
            Role::Picker { pools, .. } => pools.iter_mut().filter_map(|p| p.collecting.as_mut()).collect(),
            Role::Collector(c) => c.iter_mut().collect(),
            Role::Unconfigured | Role::Bbr(_) => Vec::new(),
        }
    }
}

fn collecting(config: &GatewayConfig, election: Option<Leadership>, multi: bool) -> Collecting {
    Collecting {
        collector: Collector::new(config),
        election,
        keys: Keys::new(&config.pool.name),
        stats: if multi { Stats::for_pool(&config.pool.name) } else { Stats::default() },
        every_ms: config.collector.interval_ms.min(HEARTBEAT_MS),
        last_ms: None,
    }
}

fn property(name: &str) -> String {
    match abi::get_property(&[name]) {
        Ok(Some(bytes)) => String::from_utf8(bytes).unwrap_or_default(),
        Ok(None) => String::new(),
        Err(s) => {
            log::warn!("property {name} not readable ({s}): taken as empty");
            String::new()
        }
    }
}

fn set_tick(ms: u64) {
    if let Err(s) = abi::set_tick_period_ms(ms) {
        log::error!("tick period not set ({s}): nothing periodic will run");
    }
}

impl Collecting {
    fn tick(&mut self, host: &dyn Host) {
        let now_ms = host.now_ms();
        // A tenth of slack: a timer that fires a little early must not skip a whole interval.
        let due_after = self.every_ms.saturating_sub((self.every_ms / 10).max(1));
        if self.last_ms.is_some_and(|t| now_ms.saturating_sub(t) < due_after) {
            return;
        }
        self.last_ms = Some(now_ms);
        let Collecting { collector, election, keys, stats, .. } = self;
        if let Some(lead) = election {
            match lead.step(host, keys, collector.lease_ttl_ms()) {
                Step::Lead { became } => {
                    if became {
                        log::info!("this VM now leads collection");
                        collector.adopt_published(host, keys);
                        stats.gauge(host, stats::LEADER, 1);
                    }
                }
                Step::Follow { lost } => {
                    if lost {
                        log::info!("this VM no longer leads collection");
                        collector.abandon();
                        stats.gauge(host, stats::LEADER, 0);
                    }
                    return;
                }
            }
        }
        collector.tick(host, keys, stats);
    }
}

impl Context for Root {
    /// The VM (or this plugin) is going away: no waiting stream is dropped in silence.
    fn on_done(&mut self) -> bool {
        if let Role::Picker { pools, .. } = &self.role {
            for p in pools {
                if let (Ok(mut w), Ok(mut waiting)) = (p.worker.try_borrow_mut(), p.waiting.try_borrow_mut())
                {
                    let settings = w.exchange_settings();
                    waiting.shutdown(&mut w, &self.host, &settings);
                    w.clear_memory(&*self.host);
                }
            }
        }
        true
    }

    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        let host = self.host.clone();
        let Some(c) = self.collectors().into_iter().find(|c| c.collector.owns(token)) else { return };
        // No headers: the call failed (reset, no upstream); the response maps are then unreadable.
        let status = if num_headers == 0 {
            None
        } else {
            super::headers::read(MapType::HttpCallResponseHeaders)
                .ok()
                .and_then(|h| h.get_str(":status").and_then(|s| s.parse::<u16>().ok()))
        };
        let body = if status.is_some() && body_size > 0 {
            abi::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).unwrap_or_else(|s| {
                log::debug!("callout {token}: body not readable ({s})");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let response = CallResponse { status, body: &body };
        c.collector.on_response(&*host, &c.keys, token, &response, &mut c.stats);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        super::logger::follow_proxy_level();
        match self.configure() {
            Ok(()) => true,
            Err(e) => {
                log::error!("invalid configuration, refused: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        super::logger::follow_proxy_level();
        let host = self.host.clone();
        if let Role::Picker { pools, .. } = &self.role {
            for (i, p) in pools.iter().enumerate() {
                if let Ok(mut w) = p.worker.try_borrow_mut() {
                    w.on_tick(&*host);
                    if let Ok(mut waiting) = p.waiting.try_borrow_mut() {
                        let settings = w.exchange_settings();
                        waiting.dispatch(&mut w, &host, &settings);
                        let glue = waiting.sizes(&w);
                        // The VM's linear memory is the pools' together: the first pool reports it, so
                        // a sum over pools counts it once.
                        let linear = if i == 0 { memory::linear_memory_bytes() } else { 0 };
                        w.report_memory(&*host, linear, &glue);
                    }
                }
            }
        }
        for c in self.collectors() {
            c.tick(&*host);
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Role::Picker { pools, .. } = &self.role else { return };
        for p in pools {
            let Ok(mut w) = p.worker.try_borrow_mut() else { continue };
            if w.take_wake(&*self.host, queue_id) {
                if let Ok(mut waiting) = p.waiting.try_borrow_mut() {
                    let settings = w.exchange_settings();
                    waiting.dispatch(&mut w, &self.host, &settings);
                }
                return;
            }
            if w.on_queue_ready(&*self.host, queue_id) {
                return;
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never `None`: the SDK would panic. Without a picker the stream passes through.
        match &self.role {
            Role::Bbr(role) => Some(Box::new(BbrStream::new(Rc::clone(role)))),
            Role::Picker { pools, choice } => {
                for p in pools {
                    if let Ok(mut w) = p.worker.try_borrow_mut() {
                        w.start_once(&*self.host);
                    }
                }
                let host = self.host.clone();
                Some(Box::new(match (choice, pools.first()) {
                    (Some(set), _) => Stream::among(Rc::clone(set), host, context_id),
                    (None, Some(p)) => {
                        Stream::new(Some(p.worker.clone()), Some(p.waiting.clone()), host, context_id)
                    }
                    (None, None) => Stream::new(None, None, host, context_id),
                }))
            }
            Role::Unconfigured | Role::Collector(_) => {
                Some(Box::new(Stream::new(None, None, self.host.clone(), context_id)))
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
