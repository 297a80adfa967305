//! One VM instance: a wasmtime store holding the module's memory plus the per-VM state host calls need
//! (current context, deferred actions), and the plumbing to call `proxy_on_*` and catch traps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::{Instance, Memory, Store, StoreLimits, StoreLimitsBuilder, TypedFunc, Val, ValType};

use super::callouts::CalloutResponse;
use super::http::{LocalReply, StreamId};
use super::module_cache::CompiledModule;
use super::transcript::{Event, Trap};
use super::world::World;
use super::{Plugin, StartError, VmId};

/// Envoy caps guest memory at 1 GiB.
const MAX_MEMORY_BYTES: usize = 1 << 30;

/// An action a module requested during a callback; Envoy applies it once the callback returned.
#[derive(Debug, Clone)]
pub(crate) enum Deferred {
    ContinueRequest(StreamId),
    ContinueResponse(StreamId),
    LocalReply(StreamId, LocalReply),
    Reset(StreamId),
}

/// Data inside the wasmtime store, reachable from every host call.
pub(crate) struct VmState {
    pub world: Arc<Mutex<World>>,
    pub vm: VmId,
    pub plugin: Arc<Plugin>,
    pub root_context_id: u32,
    /// The context host calls act on (the callback's, or one chosen by `proxy_set_effective_context`).
    pub current_context: u32,
    pub next_context_id: u32,
    pub stream_of_context: BTreeMap<u32, StreamId>,
    /// The response visible during `proxy_on_http_call_response` (None for a failed call).
    pub call_response: Option<CalloutResponse>,
    pub in_configure: bool,
    /// Inside `_initialize` / `_start`, where Envoy lets through only logging, args, environment, clocks
    /// and randomness (anything else traps with `restricted_callback`).
    pub restricted: bool,
    pub deferred: Vec<Deferred>,
    pub next_call_token: u32,
    pub memory: Option<Memory>,
    pub allocate: Option<TypedFunc<i32, i32>>,
    /// Partial lines written to stdout / stderr.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// What the module said just before trapping (critical log from its panic hook, or stderr).
    pub panic_report: Vec<String>,
    pub limits: StoreLimits,
}

impl VmState {
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn current_stream(&self) -> Option<StreamId> {
        self.stream_of_context.get(&self.current_context).copied()
    }
}

/// The outcome of calling into the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallResult {
    /// Returned normally (with its i32/i64 result, if the export has one).
    Returned(Option<i64>),
    /// The module does not export this callback.
    Missing,
    /// It trapped; the VM is now failed.
    Trapped,
}

pub(crate) struct LiveVm {
    pub store: Store<VmState>,
    pub instance: Instance,
}

impl LiveVm {
    /// Instantiates the module and runs Envoy's start sequence: `_initialize`, root context creation,
    /// `proxy_on_vm_start`, `proxy_on_configure`.
    pub(crate) fn start(
        world: Arc<Mutex<World>>,
        vm: VmId,
        plugin: Arc<Plugin>,
        compiled: &CompiledModule,
    ) -> Result<LiveVm, StartError> {
        let state = VmState {
            world,
            vm,
            plugin: plugin.clone(),
            root_context_id: 1,
            current_context: 1,
            next_context_id: 2,
            stream_of_context: BTreeMap::new(),
            call_response: None,
            in_configure: false,
            restricted: false,
            deferred: Vec::new(),
            next_call_token: 1,
            memory: None,
            allocate: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            panic_report: Vec::new(),
            limits: StoreLimitsBuilder::new().memory_size(MAX_MEMORY_BYTES).build(),
        };
        let mut store = Store::new(compiled.pre.module().engine(), state);
        store.limiter(|s| &mut s.limits);
        let instance = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| StartError::Instantiate { reason: format!("{e:#}") })?;
        let memory = instance.get_memory(&mut store, "memory");
        let allocate = instance.get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate").ok();
        let abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"]
            .iter()
            .any(|name| instance.get_func(&mut store, name).is_some());
        if memory.is_none() || allocate.is_none() || !abi {
            return Err(StartError::NotProxyWasm {
                reason: "expected exports `memory`, `proxy_on_memory_allocate` and \
                         `proxy_abi_version_0_2_1` (a module built with the proxy-wasm SDK)"
                    .to_string(),
            });
        }
        store.data_mut().memory = memory;
        store.data_mut().allocate = allocate;
        let mut live = LiveVm { store, instance };
        let start_trap =
            |live: &mut LiveVm, callback| StartError::Trap(live.take_trap(callback, 1, "".into()));
        // A reactor (what cdylib builds for wasm32-wasip1 are) runs `_initialize`; a command runs `_start`.
        live.store.data_mut().restricted = true;
        for init in ["_initialize", "_start"] {
            match live.raw_call(init, 0, &[]) {
                Ok(None) => continue,
                Ok(Some(_)) => break,
                Err(e) => {
                    let trap = live.take_trap(init, 0, format!("{e:?}"));
                    return Err(StartError::Trap(trap));
                }
            }
        }
        live.store.data_mut().restricted = false;
        match live.call("proxy_on_context_create", 1, &[1, 0]) {
            CallResult::Trapped => return Err(start_trap(&mut live, "proxy_on_context_create")),
            CallResult::Missing => {
                return Err(StartError::NotProxyWasm { reason: "no proxy_on_context_create export".into() })
            }
            CallResult::Returned(_) => {}
        }
        let vm_config_len = len_i32(plugin.vm_configuration.len());
        match live.call("proxy_on_vm_start", 1, &[1, vm_config_len]) {
            CallResult::Trapped => return Err(start_trap(&mut live, "proxy_on_vm_start")),
            CallResult::Returned(Some(0)) => return Err(StartError::VmStartFailed),
            _ => {}
        }
        live.store.data_mut().in_configure = true;
        let outcome = live.call("proxy_on_configure", 1, &[1, len_i32(plugin.configuration.len())]);
        live.store.data_mut().in_configure = false;
        match outcome {
            CallResult::Trapped => Err(start_trap(&mut live, "proxy_on_configure")),
            CallResult::Returned(Some(0)) => Err(StartError::ConfigurationRejected),
            _ => Ok(live),
        }
    }

    /// Calls an export with i32 arguments, recording the callback in the transcript. A trap is recorded in
    /// the world's trap list (with the module's panic message) and reported as `Trapped`.
    pub(crate) fn call(&mut self, name: &'static str, context_id: u32, args: &[i32]) -> CallResult {
        {
            let data = self.store.data_mut();
            data.current_context = context_id;
            data.panic_report.clear();
        }
        match self.raw_call(name, context_id, args) {
            Ok(Some(result)) => {
                let vm = self.store.data().vm;
                let args = args.iter().map(|a| i64::from(*a)).collect();
                self.store.data().world().record(Event::Callback { vm, name, context_id, args, result });
                CallResult::Returned(result)
            }
            Ok(None) => CallResult::Missing,
            Err(e) => {
                let trap = self.take_trap(name, context_id, format!("{e:?}"));
                self.store.data().world().traps.push(trap);
                CallResult::Trapped
            }
        }
    }

    /// Ok(None) when the export is missing; Ok(Some(result)) otherwise.
    fn raw_call(
        &mut self,
        name: &str,
        _context_id: u32,
        args: &[i32],
    ) -> wasmtime::Result<Option<Option<i64>>> {
        let Some(func) = self.instance.get_func(&mut self.store, name) else { return Ok(None) };
        let ty = func.ty(&self.store);
        let params: Vec<Val> = ty
            .params()
            .zip(args.iter().copied().chain(std::iter::repeat(0)))
            .map(|(p, a)| match p {
                ValType::I64 => Val::I64(i64::from(a)),
                _ => Val::I32(a),
            })
            .collect();
        let mut results: Vec<Val> = ty.results().map(|_| Val::I32(0)).collect();
        func.call(&mut self.store, &params, &mut results)?;
        let result = results.first().and_then(|v| match v {
            Val::I32(i) => Some(i64::from(*i)),
            Val::I64(i) => Some(*i),
            _ => None,
        });
        Ok(Some(result))
    }

    fn take_trap(&mut self, callback: &'static str, context_id: u32, trap: String) -> Trap {
        let data = self.store.data_mut();
        data.deferred.clear();
        let mut report = std::mem::take(&mut data.panic_report);
        let stderr = String::from_utf8_lossy(&std::mem::take(&mut data.stderr)).trim().to_string();
        if !stderr.is_empty() {
            report.push(stderr);
        }
        let panic_message = if report.is_empty() { None } else { Some(report.join("\n")) };
        Trap { vm: data.vm, callback, context_id, panic_message, trap }
    }

    pub(crate) fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.store.data_mut().deferred)
    }
}

pub(crate) fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
