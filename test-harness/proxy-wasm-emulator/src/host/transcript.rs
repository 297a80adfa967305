//! What happened, for assertions: module logs by level, every host call and callback in order, traps,
//! and the faults a test injects into chosen host calls.

use std::fmt;

use super::abi::{LogLevel, Status};
use super::VmId;

/// One `proxy_log` line (or a line the module wrote to stdout/stderr through WASI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub vm: VmId,
    pub context_id: u32,
    pub level: LogLevel,
    pub message: String,
}

/// One entry of the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The host called into the module (`proxy_on_*`), with the returned value if any.
    Callback { vm: VmId, name: &'static str, context_id: u32, args: Vec<i64>, result: Option<i64> },
    /// The module called the host; `injected` marks a status forced by a [`Fault`].
    HostCall {
        vm: VmId,
        context_id: u32,
        name: String,
        detail: String,
        status: Option<Status>,
        injected: bool,
    },
    /// Something the host did on its own that a test may want to see (deferred action applied, 413, …).
    Note { vm: Option<VmId>, message: String },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Callback { vm, name, context_id, args, result } => {
                write!(f, "{vm} -> {name}(ctx {context_id}, {args:?})")?;
                match result {
                    Some(r) => write!(f, " = {r}"),
                    None => Ok(()),
                }
            }
            Event::HostCall { vm, context_id, name, detail, status, injected } => {
                write!(f, "{vm} <- {name}(ctx {context_id}) {detail}")?;
                if let Some(s) = status {
                    write!(f, " = {s}")?;
                }
                if *injected {
                    write!(f, " [injected]")?;
                }
                Ok(())
            }
            Event::Note { vm: Some(vm), message } => write!(f, "{vm} note: {message}"),
            Event::Note { vm: None, message } => write!(f, "note: {message}"),
        }
    }
}

/// A trap inside the module (a Rust panic becomes `unreachable`), with the panic message when the module
/// reported one through its panic hook (`proxy_log` at critical level) or on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trap {
    pub vm: VmId,
    /// The callback that trapped, e.g. `proxy_on_request_headers`.
    pub callback: &'static str,
    pub context_id: u32,
    /// The module's own message, e.g. `panicked at src/lib.rs:10:5:\nboom`.
    pub panic_message: Option<String>,
    /// wasmtime's description of the trap, with the wasm backtrace.
    pub trap: String,
}

impl fmt::Display for Trap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} trapped in {} (ctx {})", self.vm, self.callback, self.context_id)?;
        match &self.panic_message {
            Some(m) => write!(f, ": {m}"),
            None => write!(f, ": {}", self.trap),
        }
    }
}

/// Forces the status of a named host call (e.g. `proxy_get_shared_data` → `InternalFailure`) to prove the
/// module survives it. The call has no other effect when forced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub host_call: String,
    pub status: Status,
    /// Only this VM (all VMs when `None`).
    pub vm: Option<VmId>,
    /// How many calls to affect (every call when `None`).
    pub remaining: Option<u32>,
}

impl Fault {
    /// Every call of `host_call` (in any VM) answers `status`.
    pub fn new(host_call: &str, status: Status) -> Fault {
        Fault { host_call: host_call.to_string(), status, vm: None, remaining: None }
    }

    /// Restricts the fault to one VM.
    pub fn in_vm(mut self, vm: VmId) -> Fault {
        self.vm = Some(vm);
        self
    }

    /// Affects only the next `n` matching calls.
    pub fn times(mut self, n: u32) -> Fault {
        self.remaining = Some(n);
        self
    }
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    active: Vec<Fault>,
}

impl Faults {
    pub(crate) fn add(&mut self, fault: Fault) {
        self.active.push(fault);
    }

    /// The forced status for this call, consuming one use of the fault.
    pub(crate) fn take(&mut self, vm: VmId, host_call: &str) -> Option<Status> {
        let idx = self.active.iter().position(|f| {
            f.host_call == host_call && f.vm.is_none_or(|v| v == vm) && f.remaining != Some(0)
        })?;
        let fault = self.active.get_mut(idx)?;
        if let Some(n) = fault.remaining.as_mut() {
            *n -= 1;
        }
        Some(fault.status)
    }

    pub(crate) fn clear(&mut self) {
        self.active.clear();
    }
}
