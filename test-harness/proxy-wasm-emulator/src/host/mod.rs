//! The Proxy-Wasm host emulator: one [`Host`] per test owns the VMs (workers, singletons) and everything
//! they share, and drives them the way Envoy would — startup, HTTP streams, ticks, callouts, queues.

pub mod abi;
pub mod callouts;
mod clock;
mod filter_chain;
pub mod http;
mod imports;
pub mod metrics;
mod module_cache;
pub mod properties;
mod shared_data;
pub mod transcript;
mod vm;
mod wasi;
mod world;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use abi::LogLevel;
use callouts::{Callout, CalloutId, CalloutResponse, CalloutState};
use http::{HttpStream, StreamId};
use metrics::Metric;
use module_cache::CompiledModule;
use properties::PropertyValue;
use transcript::{Event, Fault, LogEntry, Trap};
use vm::{CallResult, Deferred, LiveVm};
use world::{Rng, World};

pub use clock::DEFAULT_START_UNIX_NS;

/// Identifies one VM instance within a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(pub usize);

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm{}", self.0)
    }
}

/// What Envoy does with streams when the VM crashes (`PluginConfig.failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Envoy's default: streams get a 503 local reply; the VM stays dead.
    #[default]
    FailClosed,
    /// Streams continue untouched, as if the filter were not there.
    FailOpen,
    /// The stream that hit the crash gets a 503; the next stream (or test call) gets a fresh VM.
    FailReload,
}

/// One Wasm plugin as Envoy configures it (`envoy.extensions.wasm.v3.PluginConfig`).
#[derive(Debug, Clone)]
pub struct Plugin {
    pub wasm: PathBuf,
    pub name: String,
    pub root_id: String,
    /// VMs share shared data and queues only when their vm_id strings are equal.
    pub vm_id: String,
    pub vm_configuration: Vec<u8>,
    pub configuration: Vec<u8>,
    pub allow_on_headers_stop_iteration: bool,
    pub failure_policy: FailurePolicy,
}

impl Plugin {
    /// A plugin running the module at `wasm`, with Envoy's defaults (empty ids and configuration,
    /// `allow_on_headers_stop_iteration: false`, fail closed).
    pub fn new(wasm: impl Into<PathBuf>) -> Plugin {
        Plugin {
            wasm: wasm.into(),
            name: String::new(),
            root_id: String::new(),
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            configuration: Vec::new(),
            allow_on_headers_stop_iteration: false,
            failure_policy: FailurePolicy::FailClosed,
        }
    }

    /// Sets `root_id` (and `name`, when no name was given).
    pub fn root_id(mut self, root_id: &str) -> Plugin {
        self.root_id = root_id.to_string();
        if self.name.is_empty() {
            self.name = root_id.to_string();
        }
        self
    }

    pub fn name(mut self, name: &str) -> Plugin {
        self.name = name.to_string();
        self
    }

    pub fn vm_id(mut self, vm_id: &str) -> Plugin {
        self.vm_id = vm_id.to_string();
        self
    }

    /// The plugin configuration (`configuration` in Envoy), read by the module in `on_configure`.
    pub fn configuration(mut self, configuration: impl Into<Vec<u8>>) -> Plugin {
        self.configuration = configuration.into();
        self
    }

    pub fn vm_configuration(mut self, configuration: impl Into<Vec<u8>>) -> Plugin {
        self.vm_configuration = configuration.into();
        self
    }

    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Plugin {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    pub fn failure_policy(mut self, policy: FailurePolicy) -> Plugin {
        self.failure_policy = policy;
        self
    }
}

/// Why a VM could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The file could not be read or compiled.
    Load {
        path: PathBuf,
        reason: String,
    },
    Instantiate {
        reason: String,
    },
    /// The module lacks what every Proxy-Wasm module exports.
    NotProxyWasm {
        reason: String,
    },
    /// A start callback trapped.
    Trap(Trap),
    /// `proxy_on_vm_start` returned false.
    VmStartFailed,
    /// `proxy_on_configure` returned false (Envoy rejects the configuration).
    ConfigurationRejected,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Load { path, reason } => write!(f, "cannot load {}: {reason}", path.display()),
            StartError::Instantiate { reason } => write!(f, "cannot instantiate the module: {reason}"),
            StartError::NotProxyWasm { reason } => write!(f, "not a Proxy-Wasm module: {reason}"),
            StartError::Trap(t) => write!(f, "VM start failed: {t}"),
            StartError::VmStartFailed => write!(f, "proxy_on_vm_start returned false"),
            StartError::ConfigurationRejected => write!(f, "proxy_on_configure returned false"),
        }
    }
}

impl std::error::Error for StartError {}

/// A test asked the host for something that cannot happen in Envoy (the module is not to blame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HarnessError {
    UnknownVm(VmId),
    /// The VM was shut down with [`Host::stop_vm`]: Envoy sends no new stream to a removed plugin.
    VmStopped(VmId),
    UnknownStream(StreamId),
    UnknownCallout(CalloutId),
    /// Body sent before headers on this side of the stream.
    BodyBeforeHeaders(StreamId),
    /// An upstream response for a request the upstream never received.
    ResponseBeforeRequest(StreamId),
    /// The callout was already answered, failed, timed out or cancelled.
    CalloutNotPending {
        id: CalloutId,
        state: CalloutState,
    },
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::UnknownVm(vm) => write!(f, "no VM {vm} in this host"),
            HarnessError::VmStopped(vm) => write!(f, "VM {vm} was stopped: it takes no new streams"),
            HarnessError::UnknownStream(s) => write!(f, "no stream {} in this host", s.0),
            HarnessError::UnknownCallout(c) => write!(f, "no callout {} in this host", c.0),
            HarnessError::BodyBeforeHeaders(s) => write!(f, "stream {}: body sent before headers", s.0),
            HarnessError::ResponseBeforeRequest(s) => write!(
                f,
                "stream {}: upstream response sent, but the filter never let the request through",
                s.0
            ),
            HarnessError::CalloutNotPending { id, state } => {
                write!(f, "callout {} is no longer pending (it is {state:?})", id.0)
            }
        }
    }
}

impl std::error::Error for HarnessError {}

/// Host-wide settings; build with [`Host::builder`].
#[derive(Debug, Clone)]
pub struct HostBuilder {
    seed: u64,
    start_unix_ns: u64,
    buffer_limit: usize,
    clusters: BTreeSet<String>,
    log_level: LogLevel,
    original_dst_header: Option<String>,
    properties: BTreeMap<String, PropertyValue>,
    env: Vec<(String, String)>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            seed: 0,
            start_unix_ns: DEFAULT_START_UNIX_NS,
            // Envoy's default per-connection buffer limit.
            buffer_limit: 1 << 20,
            clusters: BTreeSet::new(),
            log_level: LogLevel::Trace,
            original_dst_header: None,
            properties: BTreeMap::new(),
            env: Vec::new(),
        }
    }
}

impl HostBuilder {
    /// Seed of WASI `random_get` (so HashMap keys are reproducible).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Wall-clock time at start, in nanoseconds since the Unix epoch.
    pub fn start_time_unix_ns(mut self, ns: u64) -> Self {
        self.start_unix_ns = ns;
        self
    }

    /// Buffer limit for bodies the filter buffers: over it a request gets 413, a response 500.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }

    /// A cluster `proxy_http_call` may target.
    pub fn cluster(mut self, name: &str) -> Self {
        self.clusters.insert(name.to_string());
        self
    }

    /// What `proxy_get_log_level` answers (the module filters its own logs by it).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Emulates an ORIGINAL_DST cluster with `use_http_header`: the value of this request header, as the
    /// upstream receives it, becomes the stream's `upstream.address`.
    pub fn original_dst_header(mut self, header: &str) -> Self {
        self.original_dst_header = Some(header.to_ascii_lowercase());
        self
    }

    /// A property every context can read (e.g. `node.id`), unless a stream overrides it.
    pub fn property(mut self, path: &str, value: impl Into<PropertyValue>) -> Self {
        self.properties.insert(path.to_string(), value.into());
        self
    }

    /// An environment variable visible through WASI (Istio's `vmConfig.env`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn build(self) -> Host {
        let world = World {
            clock: clock::Clock::new(self.start_unix_ns),
            rng: Rng::new(self.seed),
            shared: Default::default(),
            queues: Default::default(),
            metrics: Default::default(),
            logs: Vec::new(),
            transcript: Vec::new(),
            traps: Vec::new(),
            faults: Default::default(),
            clusters: self.clusters,
            streams: Vec::new(),
            callouts: Vec::new(),
            ticks: BTreeMap::new(),
            properties: self.properties,
            log_level: self.log_level,
            buffer_limit: self.buffer_limit,
            original_dst_header: self.original_dst_header,
            env: self.env,
            queue_ready: VecDeque::new(),
        };
        Host {
            world: Arc::new(Mutex::new(world)),
            vms: Vec::new(),
            pending: Vec::new(),
            work: VecDeque::new(),
        }
    }
}

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

struct Vm {
    plugin: Arc<Plugin>,
    compiled: Arc<CompiledModule>,
    /// None once the VM crashed (until a reload).
    live: Option<LiveVm>,
    generation: u32,
    reloads: u32,
    /// Shut down by the test ([`Host::stop_vm`]): never reloaded, takes no new streams.
    stopped: bool,
}

/// An emulated Envoy process for one test: VMs, the data they share, a virtual clock, and every stream.
///
/// Nothing is global: tests can each build their own host and run in parallel. Only compiled modules
/// are shared across the process (a cache, never state).
pub struct Host {
    world: Arc<Mutex<World>>,
    vms: Vec<Vm>,
    /// Deferred actions of the callback that just returned, not yet scheduled.
    pending: Vec<Deferred>,
    work: VecDeque<Deferred>,
}

impl Default for Host {
    fn default() -> Self {
        Host::builder().build()
    }
}

impl Host {
    /// A host with default settings (no clusters, 1 MiB buffer limit, seed 0, clock at 2026-01-01).
    pub fn new() -> Host {
        Host::default()
    }

    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// Loads (compiled once per process) and starts a VM: `_initialize`, root context,
    /// `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn start_vm(&mut self, plugin: Plugin) -> Result<VmId, StartError> {
        let compiled = module_cache::load(&plugin.wasm)?;
        let vm = VmId(self.vms.len());
        let plugin = Arc::new(plugin);
        let live = LiveVm::start(self.world.clone(), vm, plugin.clone(), &compiled)?;
        self.vms.push(Vm { plugin, compiled, live: Some(live), generation: 0, reloads: 0, stopped: false });
        self.flush_deferred();
        self.run();
        Ok(vm)
    }

    /// Adds a cluster `proxy_http_call` may target.
    pub fn add_cluster(&mut self, name: &str) {
        self.world().clusters.insert(name.to_string());
    }

    /// Sets a host-wide property (see [`HostBuilder::property`]).
    pub fn set_property(&mut self, path: &str, value: impl Into<PropertyValue>) {
        self.world().properties.insert(path.to_string(), value.into());
    }

    /// Forces the status of a host call until the fault is used up or cleared.
    pub fn inject_fault(&mut self, fault: Fault) {
        self.world().faults.add(fault);
    }

    pub fn clear_faults(&mut self) {
        self.world().faults.clear();
    }

    // ---- time -----------------------------------------------------------------------------------------

    /// Virtual time since the host was created.
    pub fn now(&self) -> Duration {
        self.world().clock.elapsed()
    }

    /// Moves the virtual clock forward, firing each `on_tick` and callout timeout at its own instant, in
    /// time order.
    pub fn advance(&mut self, by: Duration) {
        let target = self.world().clock.elapsed_ns().saturating_add(clock::duration_ns(by));
        // Bounded so a 1 ms tick over a long advance cannot spin forever unnoticed.
        for _ in 0..1_000_000 {
            let next = {
                let w = self.world();
                let tick = w.ticks.iter().map(|(vm, t)| (t.next_ns, 0usize, vm.0)).min();
                let timeout = w
                    .callouts
                    .iter()
                    .filter(|c| c.state == CalloutState::Pending)
                    .filter_map(|c| c.deadline().map(|d| (clock::duration_ns(d), 1usize, c.id.0)))
                    .min();
                [tick, timeout].into_iter().flatten().min().filter(|(at, _, _)| *at <= target)
            };
            let Some((at, kind, index)) = next else { break };
            self.world().clock.set_elapsed_ns(at);
            if kind == 0 {
                self.fire_tick(VmId(index));
            } else {
                let _ = self.finish_callout(CalloutId(index), Some(CalloutResponse::envoy_timeout()), true);
            }
        }
        self.world().clock.set_elapsed_ns(target);
    }

    fn fire_tick(&mut self, vm: VmId) {
        {
            let mut w = self.world();
            if let Some(t) = w.ticks.get_mut(&vm) {
                t.next_ns = t.next_ns.saturating_add(t.period_ns);
            }
        }
        let root = self.root_context(vm);
        self.call(vm, "proxy_on_tick", root, &[root as i32]);
        self.flush_deferred();
        self.run();
    }

    fn root_context(&self, vm: VmId) -> u32 {
        self.vms.get(vm.0).and_then(|v| v.live.as_ref()).map(|l| l.store.data().root_context_id).unwrap_or(1)
    }

    // ---- callouts -------------------------------------------------------------------------------------

    /// Every callout made so far, in dispatch order.
    pub fn callouts(&self) -> Vec<Callout> {
        self.world().callouts.clone()
    }

    /// Callouts still waiting for an answer.
    pub fn pending_callouts(&self) -> Vec<Callout> {
        self.world().callouts.iter().filter(|c| c.state == CalloutState::Pending).cloned().collect()
    }

    /// Answers a pending callout; the module's `on_http_call_response` runs now.
    pub fn answer_callout(&mut self, id: CalloutId, response: CalloutResponse) -> Result<(), HarnessError> {
        self.finish_callout(id, Some(response), false)
    }

    /// Fails a pending callout the way Envoy reports a reset: `on_http_call_response` with no headers,
    /// no body, and no response maps (reading them is BadArgument).
    pub fn fail_callout(&mut self, id: CalloutId) -> Result<(), HarnessError> {
        self.finish_callout(id, None, false)
    }

    fn finish_callout(
        &mut self,
        id: CalloutId,
        response: Option<CalloutResponse>,
        timed_out: bool,
    ) -> Result<(), HarnessError> {
        let callout = {
            let mut w = self.world();
            let c = w.callouts.get_mut(id.0).ok_or(HarnessError::UnknownCallout(id))?;
            if c.state != CalloutState::Pending {
                return Err(HarnessError::CalloutNotPending { id, state: c.state });
            }
            c.state = match (&response, timed_out) {
                (_, true) => CalloutState::TimedOut,
                (Some(_), false) => CalloutState::Answered,
                (None, false) => CalloutState::Failed,
            };
            c.clone()
        };
        let vm = callout.vm;
        let stream = match self.vms.get_mut(vm.0).and_then(|v| v.live.as_mut()) {
            Some(live) => {
                let data = live.store.data_mut();
                data.call_response = response.clone();
                data.stream_of_context.get(&callout.context_id).copied()
            }
            None => {
                self.world().note(Some(vm), format!("callout {} dropped: its VM is gone", id.0));
                return Ok(());
            }
        };
        let (h, b, t) =
            response.as_ref().map_or((0, 0, 0), |r| (r.headers.len(), r.body.len(), r.trailers.len()));
        let ctx = callout.context_id;
        let args = [ctx as i32, callout.token as i32, vm::len_i32(h), vm::len_i32(b), vm::len_i32(t)];
        let result = self.call(vm, "proxy_on_http_call_response", ctx, &args);
        if let Some(live) = self.vms.get_mut(vm.0).and_then(|v| v.live.as_mut()) {
            live.store.data_mut().call_response = None;
        }
        if result == CallResult::Trapped {
            if let Some(stream) = stream {
                self.stream_vm_failed(stream);
            }
        }
        self.flush_deferred();
        self.run();
        Ok(())
    }

    // ---- calling into VMs -----------------------------------------------------------------------------

    /// Calls into a VM. On a trap the VM is dropped (its ticks stop) and the trap is on record.
    fn call(&mut self, vm: VmId, name: &'static str, context_id: u32, args: &[i32]) -> CallResult {
        let Some(v) = self.vms.get_mut(vm.0) else { return CallResult::Trapped };
        let Some(live) = v.live.as_mut() else { return CallResult::Trapped };
        let result = live.call(name, context_id, args);
        if result == CallResult::Trapped {
            v.live = None;
            let mut w = lock(&self.world);
            w.ticks.remove(&vm);
            w.note(Some(vm), format!("VM failed in {name}; failure policy {:?}", v.plugin.failure_policy));
        } else {
            self.pending.extend(live.take_deferred());
        }
        result
    }

    /// Shuts a VM down the way Envoy does when the proxy stops or the plugin goes away for good
    /// (proxy-wasm-cpp-host's `WasmBase::startShutdown`): the root context's `proxy_on_done` runs and
    /// what it asked for (local replies or continues on streams it made its effective context) is
    /// applied; `proxy_on_delete` follows when `on_done` returned true. Streams still open on the VM
    /// then are reset (each one's `on_log`, `on_done`, `on_delete` run, as when Envoy closes its
    /// connections at shutdown). The VM is gone afterwards: its ticks stop and new streams are refused
    /// ([`HarnessError::VmStopped`]).
    ///
    /// Envoy calls a root's `on_done` only once no stream holds its plugin any more, or when the whole
    /// proxy stops; a test that stops a VM with streams open emulates the latter.
    pub fn stop_vm(&mut self, vm: VmId) -> Result<(), HarnessError> {
        let v = self.vms.get_mut(vm.0).ok_or(HarnessError::UnknownVm(vm))?;
        if v.stopped {
            return Ok(());
        }
        v.stopped = true;
        if v.live.is_none() {
            return Ok(());
        }
        let root = self.root_context(vm);
        let done = self.call(vm, "proxy_on_done", root, &[root as i32]);
        self.flush_deferred();
        self.run();
        let open: Vec<StreamId> = {
            let generation = self.vms.get(vm.0).map_or(0, |v| v.generation);
            let w = self.world();
            w.streams
                .iter()
                .filter(|s| s.vm == vm && s.generation == generation && s.context_id.is_some())
                .filter(|s| !s.completed && !s.bypassed)
                .map(|s| s.id)
                .collect()
        };
        if !open.is_empty() {
            self.world().note(Some(vm), format!("VM stopping: {} open streams reset", open.len()));
        }
        for id in open {
            self.reset(id);
        }
        self.run();
        if let CallResult::Returned(Some(r)) = done {
            if r != 0 {
                self.call(vm, "proxy_on_delete", root, &[root as i32]);
            }
        }
        self.pending.clear();
        if let Some(v) = self.vms.get_mut(vm.0) {
            v.live = None;
        }
        let mut w = self.world();
        w.ticks.remove(&vm);
        w.note(Some(vm), "VM stopped");
        Ok(())
    }

    /// True once [`Host::stop_vm`] shut the VM down.
    pub fn vm_stopped(&self, vm: VmId) -> bool {
        self.vms.get(vm.0).is_some_and(|v| v.stopped)
    }

    /// Restarts a crashed VM whose plugin says FAIL_RELOAD.
    fn ensure_live(&mut self, vm: VmId) {
        let Some(v) = self.vms.get_mut(vm.0) else { return };
        if v.stopped || v.live.is_some() || v.plugin.failure_policy != FailurePolicy::FailReload {
            return;
        }
        match LiveVm::start(self.world.clone(), vm, v.plugin.clone(), &v.compiled) {
            Ok(live) => {
                v.live = Some(live);
                v.generation += 1;
                v.reloads += 1;
                lock(&self.world).note(Some(vm), "VM reloaded (FAIL_RELOAD)");
            }
            Err(e) => lock(&self.world).note(Some(vm), format!("VM reload failed: {e}")),
        }
    }

    fn flush_deferred(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.work.extend(pending);
    }

    /// Applies deferred actions and delivers queue notifications until nothing is left.
    fn run(&mut self) {
        for _ in 0..100_000 {
            if let Some(action) = self.work.pop_front() {
                self.apply(action);
                continue;
            }
            let ready = self.world().queue_ready.pop_front();
            let Some((owner, token)) = ready else { return };
            self.call(
                owner.vm,
                "proxy_on_queue_ready",
                owner.context_id,
                &[owner.context_id as i32, token as i32],
            );
            self.flush_deferred();
        }
        self.world().note(None, "gave up after 100000 deferred actions (a loop between filter and host?)");
    }

    // ---- state for assertions -------------------------------------------------------------------------

    /// A snapshot of a stream. Panics if the id belongs to another host.
    pub fn stream(&self, id: StreamId) -> HttpStream {
        match self.world().stream(id) {
            Some(s) => s.clone(),
            None => panic!("{}", HarnessError::UnknownStream(id)),
        }
    }

    /// Every log line, in order.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.world().logs.clone()
    }

    /// Messages logged at exactly `level`.
    pub fn logs_at(&self, level: LogLevel) -> Vec<String> {
        self.world().logs.iter().filter(|l| l.level == level).map(|l| l.message.clone()).collect()
    }

    /// Every callback and host call, in order.
    pub fn transcript(&self) -> Vec<Event> {
        self.world().transcript.clone()
    }

    /// Host calls of one name (e.g. `proxy_http_call`), in order.
    pub fn host_calls(&self, name: &str) -> Vec<Event> {
        self.world()
            .transcript
            .iter()
            .filter(|e| matches!(e, Event::HostCall { name: n, .. } if n == name))
            .cloned()
            .collect()
    }

    /// Traps so far (each one killed its VM).
    pub fn traps(&self) -> Vec<Trap> {
        self.world().traps.clone()
    }

    /// A metric by the name the module defined.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.world().metrics.by_name(name).cloned()
    }

    /// Counter or gauge value by name.
    pub fn metric_value(&self, name: &str) -> Option<i64> {
        self.metric(name).map(|m| m.value)
    }

    /// All metrics by name.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        self.world().metrics.all().clone()
    }

    /// A shared-data entry: (value, cas).
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.world().shared.get(vm_id, key)
    }

    /// All shared-data entries of a vm_id.
    pub fn shared_data_all(&self, vm_id: &str) -> BTreeMap<String, (Vec<u8>, u32)> {
        self.world().shared.snapshot(vm_id)
    }

    /// Writes shared data as another process component would (cas 0: unconditional).
    pub fn set_shared_data(&mut self, vm_id: &str, key: &str, value: &[u8]) {
        self.world().shared.set(vm_id, key, value, 0);
    }

    /// Items waiting in a shared queue.
    pub fn queue_len(&self, vm_id: &str, name: &str) -> Option<usize> {
        self.world().queues.len(vm_id, name)
    }

    /// True while the VM is crashed (and not reloaded).
    pub fn vm_failed(&self, vm: VmId) -> bool {
        self.vms.get(vm.0).is_none_or(|v| v.live.is_none())
    }

    /// How many times a FAIL_RELOAD VM was restarted.
    pub fn vm_reloads(&self, vm: VmId) -> u32 {
        self.vms.get(vm.0).map_or(0, |v| v.reloads)
    }

    /// Imports of this VM's module the host does not implement (answered with UNIMPLEMENTED).
    pub fn stubbed_imports(&self, vm: VmId) -> Vec<String> {
        self.vms.get(vm.0).map(|v| v.compiled.stubbed_imports.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_can_move_to_another_thread() {
        // End-to-end tests will drive hosts from async runtimes.
        fn assert_send<T: Send>() {}
        assert_send::<Host>();
    }
}
