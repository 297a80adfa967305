//! The `env.proxy_*` host calls of ABI v0.2.1, with Envoy's answers (statuses, empty values as pointer 0 /
//! size 0, deferred stream actions), plus stubs for any import the host does not know.

use std::collections::BTreeSet;
use std::time::Duration;

use wasmtime::{Caller, ExternType, Linker, Module, Val, ValType};

use super::abi::{deserialize_map, serialize_map, BufferType, Headers, LogLevel, MapType, Status};
use super::callouts::{Callout, CalloutId, CalloutState};
use super::http::{Dir, LocalReply, LocalReplySource};
use super::properties;
use super::shared_data::QueueOwner;
use super::transcript::{Event, LogEntry};
use super::vm::{Deferred, VmState};
use super::wasi;

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

/// Defines every `env.proxy_*` function and the WASI preview 1 functions the host implements.
pub(crate) fn define_all(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    let l = linker;
    l.func_wrap("env", "proxy_log", proxy_log)?;
    l.func_wrap("env", "proxy_get_log_level", proxy_get_log_level)?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", proxy_get_current_time_nanoseconds)?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", proxy_set_tick_period_milliseconds)?;
    l.func_wrap("env", "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    l.func_wrap("env", "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    l.func_wrap("env", "proxy_get_header_map_pairs", proxy_get_header_map_pairs)?;
    l.func_wrap("env", "proxy_set_header_map_pairs", proxy_set_header_map_pairs)?;
    l.func_wrap("env", "proxy_get_header_map_value", proxy_get_header_map_value)?;
    l.func_wrap("env", "proxy_replace_header_map_value", proxy_replace_header_map_value)?;
    l.func_wrap("env", "proxy_remove_header_map_value", proxy_remove_header_map_value)?;
    l.func_wrap("env", "proxy_add_header_map_value", proxy_add_header_map_value)?;
    l.func_wrap("env", "proxy_get_property", proxy_get_property)?;
    l.func_wrap("env", "proxy_set_property", proxy_set_property)?;
    l.func_wrap("env", "proxy_get_shared_data", proxy_get_shared_data)?;
    l.func_wrap("env", "proxy_set_shared_data", proxy_set_shared_data)?;
    l.func_wrap("env", "proxy_register_shared_queue", proxy_register_shared_queue)?;
    l.func_wrap("env", "proxy_resolve_shared_queue", proxy_resolve_shared_queue)?;
    l.func_wrap("env", "proxy_dequeue_shared_queue", proxy_dequeue_shared_queue)?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", proxy_enqueue_shared_queue)?;
    l.func_wrap("env", "proxy_continue_stream", proxy_continue_stream)?;
    l.func_wrap("env", "proxy_close_stream", proxy_close_stream)?;
    l.func_wrap("env", "proxy_send_local_response", proxy_send_local_response)?;
    l.func_wrap("env", "proxy_http_call", proxy_http_call)?;
    l.func_wrap("env", "proxy_get_status", proxy_get_status)?;
    l.func_wrap("env", "proxy_set_effective_context", proxy_set_effective_context)?;
    l.func_wrap("env", "proxy_done", proxy_done)?;
    l.func_wrap("env", "proxy_call_foreign_function", proxy_call_foreign_function)?;
    l.func_wrap("env", "proxy_define_metric", proxy_define_metric)?;
    l.func_wrap("env", "proxy_increment_metric", proxy_increment_metric)?;
    l.func_wrap("env", "proxy_record_metric", proxy_record_metric)?;
    l.func_wrap("env", "proxy_get_metric", proxy_get_metric)?;
    wasi::define(l)?;
    Ok(())
}

/// Defines a stub for each function import not already in `linker`, so instantiation never fails on an
/// import the host lacks. A stub records its name and answers UNIMPLEMENTED (ENOSYS for WASI).
pub(crate) fn stub_missing(linker: &mut Linker<VmState>, module: &Module) -> wasmtime::Result<Vec<String>> {
    let known: BTreeSet<(String, String)> =
        DEFINED.iter().chain(wasi::DEFINED).map(|n| split_name(n)).collect();
    let mut stubbed = Vec::new();
    for import in module.imports() {
        let (m, n) = (import.module().to_string(), import.name().to_string());
        let ExternType::Func(ty) = import.ty() else { continue };
        if known.contains(&(m.clone(), n.clone())) {
            continue;
        }
        let code = if m == wasi::MODULE { wasi::ENOSYS } else { Status::Unimplemented.code() };
        let full = format!("{m}::{n}");
        stubbed.push(full.clone());
        let result_types: Vec<ValType> = ty.results().collect();
        linker.func_new(&m, &n, ty, move |mut c: C<'_>, _params: &[Val], results: &mut [Val]| {
            let detail = "not implemented by the harness".to_string();
            let status = Status::from_code(code);
            record_call(&mut c, full.clone(), detail, status, false);
            for (slot, ty) in results.iter_mut().zip(&result_types) {
                *slot = match ty {
                    ValType::I64 => Val::I64(i64::from(code)),
                    ValType::F32 => Val::F32(0),
                    ValType::F64 => Val::F64(0),
                    _ => Val::I32(code),
                };
            }
            Ok(())
        })?;
    }
    Ok(stubbed)
}

/// Every `env` function [`define_all`] defines (kept next to it so the stubs never shadow one).
const DEFINED: &[&str] = &[
    "env::proxy_log",
    "env::proxy_get_log_level",
    "env::proxy_get_current_time_nanoseconds",
    "env::proxy_set_tick_period_milliseconds",
    "env::proxy_get_buffer_bytes",
    "env::proxy_set_buffer_bytes",
    "env::proxy_get_header_map_pairs",
    "env::proxy_set_header_map_pairs",
    "env::proxy_get_header_map_value",
    "env::proxy_replace_header_map_value",
    "env::proxy_remove_header_map_value",
    "env::proxy_add_header_map_value",
    "env::proxy_get_property",
    "env::proxy_set_property",
    "env::proxy_get_shared_data",
    "env::proxy_set_shared_data",
    "env::proxy_register_shared_queue",
    "env::proxy_resolve_shared_queue",
    "env::proxy_dequeue_shared_queue",
    "env::proxy_enqueue_shared_queue",
    "env::proxy_continue_stream",
    "env::proxy_close_stream",
    "env::proxy_send_local_response",
    "env::proxy_http_call",
    "env::proxy_get_status",
    "env::proxy_set_effective_context",
    "env::proxy_done",
    "env::proxy_call_foreign_function",
    "env::proxy_define_metric",
    "env::proxy_increment_metric",
    "env::proxy_record_metric",
    "env::proxy_get_metric",
];

fn split_name(full: &str) -> (String, String) {
    let (m, n) = full.split_once("::").unwrap_or(("", full));
    (m.to_string(), n.to_string())
}

// ---- plumbing -----------------------------------------------------------------------------------------

/// Every host call's entry: a trap if Envoy would refuse the call here (during `_initialize`), else
/// the status forced by an injected fault, recorded as such.
fn fault(c: &mut C<'_>, name: &'static str) -> wasmtime::Result<Option<i32>> {
    if name != "proxy_log" {
        restricted(c, name)?;
    }
    let vm = c.data().vm;
    let Some(forced) = c.data().world().faults.take(vm, name) else { return Ok(None) };
    record_call(c, name.to_string(), "fault injected".to_string(), Some(forced), true);
    Ok(Some(forced.code()))
}

/// Envoy's rule for `_initialize` / `_start`: only `proxy_log` and the WASI calls for output, args,
/// environment, preopens, clocks and randomness may run; any other host call fails the VM with
/// `restricted_callback`. Callers check their own name against that list.
pub(crate) fn restricted(c: &mut C<'_>, name: &str) -> wasmtime::Result<()> {
    if !c.data().restricted {
        return Ok(());
    }
    record_call(c, name.to_string(), "refused during _initialize".to_string(), None, false);
    Err(wasmtime::Error::msg(format!(
        "restricted_callback: {name} called during _initialize, where Envoy allows only proxy_log and \
         WASI output, args, environment, preopens, clocks and randomness"
    )))
}

fn record_call(c: &mut C<'_>, name: String, detail: String, status: Option<Status>, injected: bool) {
    let data = c.data();
    let event =
        Event::HostCall { vm: data.vm, context_id: data.current_context, name, detail, status, injected };
    data.world().record(event);
}

fn done(c: &mut C<'_>, name: &'static str, detail: String, status: Status) -> R {
    record_call(c, name.to_string(), detail, Some(status), false);
    Ok(status.code())
}

fn read(c: &C<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = c.data().memory?;
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    mem.data(c).get(start..end).map(<[u8]>::to_vec)
}

fn read_str(c: &C<'_>, ptr: i32, len: i32) -> Option<String> {
    read(c, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

pub(crate) fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = c.data().memory else { return false };
    let start = ptr as u32 as usize;
    let Some(end) = start.checked_add(bytes.len()) else { return false };
    match mem.data_mut(c).get_mut(start..end) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

pub(crate) fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `data` into memory the module allocates and writes (pointer, size) — or (0, 0) for empty data,
/// as Envoy does.
fn copy_out(c: &mut C<'_>, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> wasmtime::Result<Status> {
    let mut ptr = 0u32;
    if !data.is_empty() {
        let Some(alloc) = c.data().allocate.clone() else { return Ok(Status::InvalidMemoryAccess) };
        let len = i32::try_from(data.len()).map_err(|_| wasmtime::Error::msg("value over 2 GiB"))?;
        ptr = alloc.call(&mut *c, len)? as u32;
        if ptr == 0 || !write(c, ptr as i32, data) {
            return Ok(Status::InvalidMemoryAccess);
        }
    }
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    if !write_u32(c, ptr_ptr, ptr) || !write_u32(c, size_ptr, len) {
        return Ok(Status::InvalidMemoryAccess);
    }
    Ok(Status::Ok)
}

fn map_name(t: i32) -> &'static str {
    match MapType::from_code(t) {
        Some(MapType::RequestHeaders) => "request_headers",
        Some(MapType::RequestTrailers) => "request_trailers",
        Some(MapType::ResponseHeaders) => "response_headers",
        Some(MapType::ResponseTrailers) => "response_trailers",
        Some(MapType::HttpCallResponseHeaders) => "http_call_response_headers",
        Some(MapType::HttpCallResponseTrailers) => "http_call_response_trailers",
        Some(MapType::Grpc) => "grpc_metadata",
        None => "unknown_map",
    }
}

/// Reads a header map the way Envoy's context would at this moment.
fn map_get(c: &C<'_>, map_type: i32) -> Result<Headers, Status> {
    let data = c.data();
    let dir = match MapType::from_code(map_type) {
        Some(MapType::RequestHeaders) => Dir::Request,
        Some(MapType::ResponseHeaders) => Dir::Response,
        Some(MapType::HttpCallResponseHeaders) => {
            return data.call_response.as_ref().map(|r| r.headers.clone()).ok_or(Status::BadArgument)
        }
        Some(MapType::HttpCallResponseTrailers) => {
            return data.call_response.as_ref().map(|r| r.trailers.clone()).ok_or(Status::BadArgument)
        }
        // Trailers are not emulated: Envoy has no map outside the trailers callback.
        Some(MapType::RequestTrailers | MapType::ResponseTrailers | MapType::Grpc) | None => {
            return Err(Status::BadArgument)
        }
    };
    let stream_id = data.current_stream().ok_or(Status::BadArgument)?;
    let world = data.world();
    let stream = world.stream(stream_id).ok_or(Status::BadArgument)?;
    if stream.in_log_phase {
        // Access-log phase: Envoy hands out the final maps, NotFound when there is none.
        let msg = match dir {
            Dir::Request => return Ok(stream.req.headers.clone()),
            Dir::Response => stream.response.as_ref(),
        };
        return msg.map(|m| m.headers.clone()).ok_or(Status::NotFound);
    }
    let d = stream.dir(dir);
    if !d.headers_available {
        return Err(Status::BadArgument);
    }
    Ok(d.headers.clone())
}

/// Applies `f` to a header map the module may modify now.
fn map_modify(c: &mut C<'_>, map_type: i32, f: impl FnOnce(&mut Headers)) -> Status {
    let dir = match MapType::from_code(map_type) {
        Some(MapType::RequestHeaders) => Dir::Request,
        Some(MapType::ResponseHeaders) => Dir::Response,
        Some(MapType::HttpCallResponseHeaders) => {
            return match c.data_mut().call_response.as_mut() {
                Some(r) => {
                    f(&mut r.headers);
                    Status::Ok
                }
                None => Status::BadArgument,
            }
        }
        _ => return Status::BadArgument,
    };
    let data = c.data();
    let Some(stream_id) = data.current_stream() else { return Status::BadArgument };
    let mut world = data.world();
    let Some(stream) = world.stream_mut(stream_id) else { return Status::BadArgument };
    let in_log_phase = stream.in_log_phase;
    let d = stream.dir_mut(dir);
    if !d.headers_available || in_log_phase {
        return Status::BadArgument;
    }
    f(&mut d.headers);
    Status::Ok
}

// ---- logging, time ------------------------------------------------------------------------------------

fn proxy_log(mut c: C<'_>, level: i32, ptr: i32, len: i32) -> R {
    if let Some(s) = fault(&mut c, "proxy_log")? {
        return Ok(s);
    }
    let Some(level) = LogLevel::from_code(level) else {
        return done(&mut c, "proxy_log", format!("level {level}"), Status::BadArgument);
    };
    let Some(message) = read_str(&c, ptr, len) else {
        return done(&mut c, "proxy_log", String::new(), Status::InvalidMemoryAccess);
    };
    let data = c.data_mut();
    if level == LogLevel::Critical {
        // The SDK's panic hook logs the panic at critical level just before the trap.
        data.panic_report.push(message.clone());
    }
    let entry = LogEntry { vm: data.vm, context_id: data.current_context, level, message };
    data.world().logs.push(entry);
    Ok(Status::Ok.code())
}

fn proxy_get_log_level(mut c: C<'_>, ptr: i32) -> R {
    if let Some(s) = fault(&mut c, "proxy_get_log_level")? {
        return Ok(s);
    }
    let level = c.data().world().log_level.code();
    let status = if write_u32(&mut c, ptr, level) { Status::Ok } else { Status::InvalidMemoryAccess };
    done(&mut c, "proxy_get_log_level", String::new(), status)
}

fn proxy_get_current_time_nanoseconds(mut c: C<'_>, ptr: i32) -> R {
    if let Some(s) = fault(&mut c, "proxy_get_current_time_nanoseconds")? {
        return Ok(s);
    }
    let now = c.data().world().clock.unix_ns();
    let status =
        if write(&mut c, ptr, &now.to_le_bytes()) { Status::Ok } else { Status::InvalidMemoryAccess };
    done(&mut c, "proxy_get_current_time_nanoseconds", String::new(), status)
}

fn proxy_set_tick_period_milliseconds(mut c: C<'_>, period: i32) -> R {
    if let Some(s) = fault(&mut c, "proxy_set_tick_period_milliseconds")? {
        return Ok(s);
    }
    let period_ms = u64::from(period as u32);
    {
        let vm = c.data().vm;
        let mut w = c.data().world();
        if period_ms == 0 {
            w.ticks.remove(&vm);
        } else {
            let period_ns = period_ms * 1_000_000;
            let next_ns = w.clock.elapsed_ns().saturating_add(period_ns);
            w.ticks.insert(vm, super::world::Tick { period_ns, next_ns });
        }
    }
    done(&mut c, "proxy_set_tick_period_milliseconds", format!("{period_ms} ms"), Status::Ok)
}

// ---- buffers ------------------------------------------------------------------------------------------

/// The bytes of a buffer as Envoy would expose them now, or the status Envoy answers.
fn buffer_bytes(c: &C<'_>, t: BufferType) -> Result<Vec<u8>, Status> {
    let data = c.data();
    match t {
        BufferType::VmConfiguration => Ok(data.plugin.vm_configuration.clone()),
        // Envoy only has the plugin configuration while `proxy_on_configure` runs.
        BufferType::PluginConfiguration if data.in_configure => Ok(data.plugin.configuration.clone()),
        BufferType::PluginConfiguration => Err(Status::NotFound),
        BufferType::HttpCallResponseBody => {
            data.call_response.as_ref().map(|r| r.body.clone()).ok_or(Status::NotFound)
        }
        BufferType::RequestBody | BufferType::ResponseBody => {
            let dir = if t == BufferType::RequestBody { Dir::Request } else { Dir::Response };
            let id = data.current_stream().ok_or(Status::NotFound)?;
            let world = data.world();
            let d = world.stream(id).ok_or(Status::NotFound)?.dir(dir);
            if d.body_available {
                Ok(d.buffer.clone())
            } else {
                Err(Status::NotFound)
            }
        }
        BufferType::Other => Err(Status::NotFound),
    }
}

fn proxy_get_buffer_bytes(mut c: C<'_>, t: i32, start: i32, len: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    const NAME: &str = "proxy_get_buffer_bytes";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let detail = format!("type {t} start {} len {}", start as u32, len as u32);
    let Some(bt) = BufferType::from_code(t) else { return done(&mut c, NAME, detail, Status::BadArgument) };
    let bytes = match buffer_bytes(&c, bt) {
        Ok(b) => b,
        Err(s) => return done(&mut c, NAME, detail, s),
    };
    // 64-bit arithmetic: the SDK asks for (0, usize::MAX) to mean "everything".
    let (start, len) = (u64::from(start as u32), u64::from(len as u32));
    let size = bytes.len() as u64;
    let end = start.saturating_add(len).min(size);
    if start >= end {
        // Nothing to copy: Envoy leaves the outputs untouched and answers Ok (the SDK sees None).
        return done(&mut c, NAME, detail, Status::Ok);
    }
    let slice = bytes.get(start as usize..end as usize).unwrap_or_default();
    let status = copy_out(&mut c, slice, ptr_ptr, size_ptr)?;
    done(&mut c, NAME, detail, status)
}

fn proxy_set_buffer_bytes(mut c: C<'_>, t: i32, start: i32, len: i32, ptr: i32, size: i32) -> R {
    const NAME: &str = "proxy_set_buffer_bytes";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let detail = format!("type {t} start {} len {} ({} new bytes)", start as u32, len as u32, size as u32);
    let dir = match BufferType::from_code(t) {
        Some(BufferType::RequestBody) => Dir::Request,
        Some(BufferType::ResponseBody) => Dir::Response,
        Some(_) => return done(&mut c, NAME, detail, Status::NotFound),
        None => return done(&mut c, NAME, detail, Status::BadArgument),
    };
    let Some(new) = read(&c, ptr, size) else {
        return done(&mut c, NAME, detail, Status::InvalidMemoryAccess);
    };
    let status = (|| {
        let id = c.data().current_stream().ok_or(Status::NotFound)?;
        let mut world = c.data().world();
        let d = world.stream_mut(id).ok_or(Status::NotFound)?.dir_mut(dir);
        if !d.body_available {
            return Err(Status::NotFound);
        }
        let (start, len) = (start as u32 as usize, len as u32 as usize);
        // Envoy's rule: start 0 replaces the first `len` bytes (prepend when len is 0); a start at or
        // past the end appends; anything in between is refused.
        if start == 0 {
            let drain = len.min(d.buffer.len());
            d.buffer.splice(..drain, new.iter().copied());
        } else if start >= d.buffer.len() {
            d.buffer.extend_from_slice(&new);
        } else {
            return Err(Status::BadArgument);
        }
        Ok(())
    })();
    done(&mut c, NAME, detail, status.err().unwrap_or(Status::Ok))
}

// ---- header maps --------------------------------------------------------------------------------------

fn proxy_get_header_map_pairs(mut c: C<'_>, t: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    const NAME: &str = "proxy_get_header_map_pairs";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let detail = map_name(t).to_string();
    let map = match map_get(&c, t) {
        Ok(m) => m,
        Err(s) => return done(&mut c, NAME, detail, s),
    };
    let bytes = if map.is_empty() { Vec::new() } else { serialize_map(&map) };
    let status = copy_out(&mut c, &bytes, ptr_ptr, size_ptr)?;
    done(&mut c, NAME, detail, status)
}

fn proxy_set_header_map_pairs(mut c: C<'_>, t: i32, ptr: i32, size: i32) -> R {
    const NAME: &str = "proxy_set_header_map_pairs";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(bytes) = read(&c, ptr, size) else {
        return done(&mut c, NAME, map_name(t).to_string(), Status::InvalidMemoryAccess);
    };
    // Envoy's host turns an unreadable map into an empty one rather than failing.
    let (pairs, detail) = match deserialize_map(&bytes) {
        Ok(p) => (p, map_name(t).to_string()),
        Err(e) => (Vec::new(), format!("{}: {e}; treated as empty", map_name(t))),
    };
    let status = map_modify(&mut c, t, |m| *m = pairs);
    done(&mut c, NAME, detail, status)
}

fn proxy_get_header_map_value(mut c: C<'_>, t: i32, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    const NAME: &str = "proxy_get_header_map_value";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(key) = read_str(&c, kp, kl) else {
        return done(&mut c, NAME, map_name(t).to_string(), Status::InvalidMemoryAccess);
    };
    let detail = format!("{} {key}", map_name(t));
    let map = match map_get(&c, t) {
        Ok(m) => m,
        Err(s) => return done(&mut c, NAME, detail, s),
    };
    let Some(value) = super::abi::header_value(&map, &key).map(str::to_string) else {
        return done(&mut c, NAME, detail, Status::NotFound);
    };
    let status = copy_out(&mut c, value.as_bytes(), ptr_ptr, size_ptr)?;
    done(&mut c, NAME, detail, status)
}

fn proxy_replace_header_map_value(mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    const NAME: &str = "proxy_replace_header_map_value";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let (Some(key), Some(value)) = (read_str(&c, kp, kl), read_str(&c, vp, vl)) else {
        return done(&mut c, NAME, map_name(t).to_string(), Status::InvalidMemoryAccess);
    };
    let key = key.to_ascii_lowercase();
    let detail = format!("{} {key}: {value}", map_name(t));
    let status = map_modify(&mut c, t, |m| match m.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => m.push((key, value)),
    });
    done(&mut c, NAME, detail, status)
}

fn proxy_remove_header_map_value(mut c: C<'_>, t: i32, kp: i32, kl: i32) -> R {
    const NAME: &str = "proxy_remove_header_map_value";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(key) = read_str(&c, kp, kl) else {
        return done(&mut c, NAME, map_name(t).to_string(), Status::InvalidMemoryAccess);
    };
    let key = key.to_ascii_lowercase();
    let detail = format!("{} {key}", map_name(t));
    let status = map_modify(&mut c, t, |m| m.retain(|(k, _)| *k != key));
    done(&mut c, NAME, detail, status)
}

fn proxy_add_header_map_value(mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    const NAME: &str = "proxy_add_header_map_value";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let (Some(key), Some(value)) = (read_str(&c, kp, kl), read_str(&c, vp, vl)) else {
        return done(&mut c, NAME, map_name(t).to_string(), Status::InvalidMemoryAccess);
    };
    let key = key.to_ascii_lowercase();
    let detail = format!("{} {key}: {value}", map_name(t));
    let status = map_modify(&mut c, t, |m| m.push((key, value)));
    done(&mut c, NAME, detail, status)
}

// ---- properties ---------------------------------------------------------------------------------------

fn proxy_get_property(mut c: C<'_>, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    const NAME: &str = "proxy_get_property";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(path) = read(&c, pp, pl) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let path = properties::dotted(&path);
    let value = {
        let data = c.data();
        let world = data.world();
        let stream = data.current_stream().and_then(|id| world.stream(id));
        properties::lookup(&path, &data.plugin, stream, &world.properties)
    };
    let Some(value) = value else { return done(&mut c, NAME, path, Status::NotFound) };
    let status = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
    done(&mut c, NAME, path, status)
}

fn proxy_set_property(mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32) -> R {
    const NAME: &str = "proxy_set_property";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let (Some(path), Some(value)) = (read(&c, pp, pl), read(&c, vp, vl)) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let path = properties::dotted(&path);
    let status = {
        let data = c.data();
        let mut world = data.world();
        // Envoy keeps module-set properties in the stream's filter state; a root context has none.
        match data.current_stream().and_then(|id| world.stream_mut(id)) {
            Some(s) => {
                s.properties.insert(path.clone(), value);
                Status::Ok
            }
            None => Status::NotFound,
        }
    };
    done(&mut c, NAME, path, status)
}

// ---- shared data and queues ---------------------------------------------------------------------------

fn proxy_get_shared_data(mut c: C<'_>, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32) -> R {
    const NAME: &str = "proxy_get_shared_data";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(key) = read_str(&c, kp, kl) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let found = {
        let data = c.data();
        let vm_id = data.plugin.vm_id.clone();
        data.world().shared.get(&vm_id, &key)
    };
    let Some((value, cas)) = found else { return done(&mut c, NAME, key, Status::NotFound) };
    let mut status = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
    if status == Status::Ok && !write_u32(&mut c, cas_ptr, cas) {
        status = Status::InvalidMemoryAccess;
    }
    done(&mut c, NAME, format!("{key} ({} bytes, cas {cas})", value.len()), status)
}

fn proxy_set_shared_data(mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> R {
    const NAME: &str = "proxy_set_shared_data";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let (Some(key), Some(value)) = (read_str(&c, kp, kl), read(&c, vp, vl)) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let status = {
        let data = c.data();
        let vm_id = data.plugin.vm_id.clone();
        data.world().shared.set(&vm_id, &key, &value, cas as u32)
    };
    done(&mut c, NAME, format!("{key} ({} bytes, cas {})", value.len(), cas as u32), status)
}

fn proxy_register_shared_queue(mut c: C<'_>, np: i32, nl: i32, id_ptr: i32) -> R {
    const NAME: &str = "proxy_register_shared_queue";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(name) = read_str(&c, np, nl) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let token = {
        let data = c.data();
        let owner = QueueOwner { vm: data.vm, context_id: data.root_context_id };
        let vm_id = data.plugin.vm_id.clone();
        data.world().queues.register(&vm_id, &name, owner)
    };
    let status = if write_u32(&mut c, id_ptr, token) { Status::Ok } else { Status::InvalidMemoryAccess };
    done(&mut c, NAME, format!("{name} -> {token}"), status)
}

fn proxy_resolve_shared_queue(mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, id_ptr: i32) -> R {
    const NAME: &str = "proxy_resolve_shared_queue";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let (Some(vm_id), Some(name)) = (read_str(&c, vp, vl), read_str(&c, np, nl)) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let detail = format!("{vm_id}/{name}");
    let Some(token) = c.data().world().queues.resolve(&vm_id, &name) else {
        return done(&mut c, NAME, detail, Status::NotFound);
    };
    let status = if write_u32(&mut c, id_ptr, token) { Status::Ok } else { Status::InvalidMemoryAccess };
    done(&mut c, NAME, detail, status)
}

fn proxy_dequeue_shared_queue(mut c: C<'_>, token: i32, ptr_ptr: i32, size_ptr: i32) -> R {
    const NAME: &str = "proxy_dequeue_shared_queue";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let item = c.data().world().queues.dequeue(token as u32);
    let detail = format!("queue {}", token as u32);
    match item {
        Ok(bytes) => {
            let status = copy_out(&mut c, &bytes, ptr_ptr, size_ptr)?;
            done(&mut c, NAME, detail, status)
        }
        Err(s) => done(&mut c, NAME, detail, s),
    }
}

fn proxy_enqueue_shared_queue(mut c: C<'_>, token: i32, vp: i32, vl: i32) -> R {
    const NAME: &str = "proxy_enqueue_shared_queue";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(value) = read(&c, vp, vl) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let status = {
        let mut world = c.data().world();
        match world.queues.enqueue(token as u32, &value) {
            Ok(owner) => {
                world.queue_ready.push_back((owner, token as u32));
                Status::Ok
            }
            Err(s) => s,
        }
    };
    done(&mut c, NAME, format!("queue {} ({} bytes)", token as u32, value.len()), status)
}

// ---- stream control -----------------------------------------------------------------------------------

fn proxy_continue_stream(mut c: C<'_>, t: i32) -> R {
    const NAME: &str = "proxy_continue_stream";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let dir = match t {
        0 => Dir::Request,
        1 => Dir::Response,
        2 => return done(&mut c, NAME, "downstream".into(), Status::Ok),
        3 => return done(&mut c, NAME, "upstream".into(), Status::Unimplemented),
        _ => return done(&mut c, NAME, format!("stream type {t}"), Status::BadArgument),
    };
    if let Some(id) = c.data().current_stream() {
        {
            // Envoy drops its pointers to the maps and body at once; the resume itself waits.
            let mut world = c.data().world();
            if let Some(s) = world.stream_mut(id) {
                let d = s.dir_mut(dir);
                d.headers_available = false;
                d.body_available = false;
            }
        }
        let action = match dir {
            Dir::Request => Deferred::ContinueRequest(id),
            Dir::Response => Deferred::ContinueResponse(id),
        };
        c.data_mut().deferred.push(action);
    }
    done(&mut c, NAME, format!("{dir:?}"), Status::Ok)
}

fn proxy_close_stream(mut c: C<'_>, t: i32) -> R {
    const NAME: &str = "proxy_close_stream";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    if !(0..=3).contains(&t) {
        return done(&mut c, NAME, format!("stream type {t}"), Status::BadArgument);
    }
    if let Some(id) = c.data().current_stream() {
        if t <= 1 {
            c.data_mut().deferred.push(Deferred::Reset(id));
        }
    }
    done(&mut c, NAME, format!("stream type {t}"), Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut c: C<'_>,
    status_code: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    grpc_status: i32,
) -> R {
    const NAME: &str = "proxy_send_local_response";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let (Some(details), Some(body), Some(headers)) =
        (read_str(&c, dp, dl), read(&c, bp, bl), read(&c, hp, hl))
    else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let headers = deserialize_map(&headers).unwrap_or_default();
    let detail = format!("{} ({} body bytes)", status_code as u32, body.len());
    if let Some(id) = c.data().current_stream() {
        let reply = LocalReply {
            status: status_code as u32,
            body,
            headers,
            // Envoy replaces whitespace in details with underscores.
            details: details.split_whitespace().collect::<Vec<_>>().join("_"),
            grpc_status: (0..=16).contains(&grpc_status).then_some(grpc_status),
            source: LocalReplySource::Filter,
        };
        c.data_mut().deferred.push(Deferred::LocalReply(id, reply));
    }
    done(&mut c, NAME, detail, Status::Ok)
}

// ---- HTTP callouts ------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut c: C<'_>,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout_ms: i32,
    token_ptr: i32,
) -> R {
    const NAME: &str = "proxy_http_call";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let (Some(cluster), Some(headers), Some(body), Some(trailers)) =
        (read_str(&c, up, ul), read(&c, hp, hl), read(&c, bp, bl), read(&c, tp, tl))
    else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let headers = deserialize_map(&headers).unwrap_or_default();
    let trailers = deserialize_map(&trailers).unwrap_or_default();
    let detail = format!("cluster {cluster} timeout {timeout_ms} ms");
    if timeout_ms < 0 || !c.data().world().clusters.contains(&cluster) {
        return done(&mut c, NAME, format!("{detail}: unknown cluster"), Status::BadArgument);
    }
    let has = |name: &str| headers.iter().any(|(k, _)| k == name);
    if !has(":method") || !has(":path") || !(has(":authority") || has("host")) {
        return done(
            &mut c,
            NAME,
            format!("{detail}: needs :method, :path and :authority"),
            Status::BadArgument,
        );
    }
    let token = {
        let data = c.data_mut();
        let token = data.next_call_token;
        data.next_call_token = data.next_call_token.wrapping_add(1).max(1);
        token
    };
    {
        let data = c.data();
        let mut world = data.world();
        let id = CalloutId(world.callouts.len());
        let dispatched_at = world.clock.elapsed();
        world.callouts.push(Callout {
            id,
            vm: data.vm,
            context_id: data.current_context,
            token,
            cluster,
            headers,
            body,
            trailers,
            timeout: (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms as u32))),
            dispatched_at,
            state: CalloutState::Pending,
        });
    }
    let status = if write_u32(&mut c, token_ptr, token) { Status::Ok } else { Status::InvalidMemoryAccess };
    done(&mut c, NAME, format!("{detail} -> token {token}"), status)
}

fn proxy_get_status(mut c: C<'_>, code_ptr: i32, msg_ptr_ptr: i32, msg_size_ptr: i32) -> R {
    const NAME: &str = "proxy_get_status";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    // Only meaningful for gRPC, which the harness does not emulate: report OK with no message.
    let ok = write_u32(&mut c, code_ptr, 0)
        && write_u32(&mut c, msg_ptr_ptr, 0)
        && write_u32(&mut c, msg_size_ptr, 0);
    done(&mut c, NAME, String::new(), if ok { Status::Ok } else { Status::InvalidMemoryAccess })
}

fn proxy_set_effective_context(mut c: C<'_>, context_id: i32) -> R {
    const NAME: &str = "proxy_set_effective_context";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    // proxy-wasm-cpp-host: any context of this VM that still exists (a root, or a stream whose filter
    // Envoy has not destroyed), else BadArgument. The choice lasts until the callback returns (each
    // callback starts on its own context again). Recorded against the calling context.
    let ctx = context_id as u32;
    let data = c.data();
    let known = ctx == data.root_context_id || data.stream_of_context.contains_key(&ctx);
    let status = if known { Status::Ok } else { Status::BadArgument };
    let result = done(&mut c, NAME, format!("ctx {ctx}"), status);
    if known {
        c.data_mut().current_context = ctx;
    }
    result
}

fn proxy_done(mut c: C<'_>) -> R {
    if let Some(s) = fault(&mut c, "proxy_done")? {
        return Ok(s);
    }
    done(&mut c, "proxy_done", String::new(), Status::Ok)
}

#[allow(clippy::too_many_arguments)]
fn proxy_call_foreign_function(mut c: C<'_>, np: i32, nl: i32, _ap: i32, _al: i32, _rp: i32, _rs: i32) -> R {
    const NAME: &str = "proxy_call_foreign_function";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let name = read_str(&c, np, nl).unwrap_or_default();
    // Envoy answers NotFound for a function it does not register; the harness registers none.
    done(&mut c, NAME, name, Status::NotFound)
}

// ---- metrics ------------------------------------------------------------------------------------------

fn proxy_define_metric(mut c: C<'_>, kind: i32, np: i32, nl: i32, id_ptr: i32) -> R {
    const NAME: &str = "proxy_define_metric";
    if let Some(s) = fault(&mut c, NAME)? {
        return Ok(s);
    }
    let Some(name) = read_str(&c, np, nl) else {
        return done(&mut c, NAME, String::new(), Status::InvalidMemoryAccess);
    };
    let defined = {
        let vm = c.data().vm;
        c.data().world().metrics.define(vm, kind, &name)
    };
    let status = match defined {
        Ok(id) if write_u32(&mut c, id_ptr, id) => Status::Ok,
        Ok(_) => Status::InvalidMemoryAccess,
        Err(s) => s,
    };
    done(&mut c, NAME, name, status)
}

fn proxy_increment_metric(mut c: C<'_>, id: i32, offset: i64) -> R {
    if let Some(s) = fault(&mut c, "proxy_increment_metric")? {
        return Ok(s);
    }
    let vm = c.data().vm;
    let status = c.data().world().metrics.increment(vm, id as u32, offset);
    done(&mut c, "proxy_increment_metric", format!("metric {} by {offset}", id as u32), status)
}

fn proxy_record_metric(mut c: C<'_>, id: i32, value: i64) -> R {
    if let Some(s) = fault(&mut c, "proxy_record_metric")? {
        return Ok(s);
    }
    let vm = c.data().vm;
    let status = c.data().world().metrics.record(vm, id as u32, value as u64);
    done(&mut c, "proxy_record_metric", format!("metric {} = {}", id as u32, value as u64), status)
}

fn proxy_get_metric(mut c: C<'_>, id: i32, ptr: i32) -> R {
    if let Some(s) = fault(&mut c, "proxy_get_metric")? {
        return Ok(s);
    }
    let vm = c.data().vm;
    let got = c.data().world().metrics.get(vm, id as u32);
    let status = match got {
        Ok(v) if write(&mut c, ptr, &v.to_le_bytes()) => Status::Ok,
        Ok(_) => Status::InvalidMemoryAccess,
        Err(s) => s,
    };
    done(&mut c, "proxy_get_metric", format!("metric {}", id as u32), status)
}
