//! WASI preview 1, as much as a Proxy-Wasm module built for `wasm32-wasip1` uses: stdout/stderr captured
//! as log lines, environment from the plugin, clocks from the virtual clock, `random_get` from a seeded
//! RNG, `proc_exit` as a trap. Everything else answers ENOSYS.

use wasmtime::{Caller, Linker};

use super::abi::LogLevel;
use super::imports::{restricted, write, write_u32};
use super::transcript::LogEntry;
use super::vm::VmState;

pub(crate) const MODULE: &str = "wasi_snapshot_preview1";
pub(crate) const ENOSYS: i32 = 52;
const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;

type C<'a> = Caller<'a, VmState>;

/// Every function [`define`] defines, as `module::name`.
pub(crate) const DEFINED: &[&str] = &[
    "wasi_snapshot_preview1::fd_write",
    "wasi_snapshot_preview1::environ_sizes_get",
    "wasi_snapshot_preview1::environ_get",
    "wasi_snapshot_preview1::args_sizes_get",
    "wasi_snapshot_preview1::args_get",
    "wasi_snapshot_preview1::clock_time_get",
    "wasi_snapshot_preview1::clock_res_get",
    "wasi_snapshot_preview1::random_get",
    "wasi_snapshot_preview1::sched_yield",
    "wasi_snapshot_preview1::fd_prestat_get",
    "wasi_snapshot_preview1::proc_exit",
];

pub(crate) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(MODULE, "fd_write", fd_write)?;
    l.func_wrap(MODULE, "environ_sizes_get", environ_sizes_get)?;
    l.func_wrap(MODULE, "environ_get", environ_get)?;
    l.func_wrap(MODULE, "args_sizes_get", |mut c: C<'_>, argc: i32, size: i32| -> i32 {
        if write_u32(&mut c, argc, 0) && write_u32(&mut c, size, 0) {
            SUCCESS
        } else {
            EFAULT
        }
    })?;
    l.func_wrap(MODULE, "args_get", |_c: C<'_>, _argv: i32, _buf: i32| -> i32 { SUCCESS })?;
    l.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    l.func_wrap(MODULE, "clock_res_get", |mut c: C<'_>, _id: i32, ptr: i32| -> wasmtime::Result<i32> {
        restricted(&mut c, "wasi_snapshot_preview1::clock_res_get")?;
        Ok(if write(&mut c, ptr, &1u64.to_le_bytes()) { SUCCESS } else { EFAULT })
    })?;
    l.func_wrap(MODULE, "random_get", random_get)?;
    l.func_wrap(MODULE, "sched_yield", |mut c: C<'_>| -> wasmtime::Result<i32> {
        restricted(&mut c, "wasi_snapshot_preview1::sched_yield")?;
        Ok(SUCCESS)
    })?;
    // No preopened directories: libc stops looking at the first EBADF.
    l.func_wrap(MODULE, "fd_prestat_get", |_c: C<'_>, _fd: i32, _ptr: i32| -> i32 { EBADF })?;
    l.func_wrap(MODULE, "proc_exit", |_c: C<'_>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!("the module called proc_exit({code})")))
    })?;
    Ok(())
}

fn fd_write(mut c: C<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> i32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    let Some(mem) = c.data().memory else { return EFAULT };
    let mut out = Vec::new();
    {
        let data = mem.data(&c);
        for i in 0..iovs_len.max(0) as usize {
            let at = iovs as u32 as usize + i * 8;
            let field = |off: usize| {
                data.get(at + off..at + off + 4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| u32::from_le_bytes(b) as usize)
            };
            let (Some(ptr), Some(len)) = (field(0), field(4)) else { return EFAULT };
            let Some(bytes) = data.get(ptr..ptr.saturating_add(len)) else { return EFAULT };
            out.extend_from_slice(bytes);
        }
    }
    let written = u32::try_from(out.len()).unwrap_or(u32::MAX);
    capture(&mut c, fd, &out);
    if write_u32(&mut c, nwritten, written) {
        SUCCESS
    } else {
        EFAULT
    }
}

/// Appends to the stream's line buffer and turns complete lines into log entries (stdout → info,
/// stderr → error; stderr also feeds the trap report, which is where Rust's default panic hook writes).
fn capture(c: &mut C<'_>, fd: i32, bytes: &[u8]) {
    let data = c.data_mut();
    let (buf, level) =
        if fd == 1 { (&mut data.stdout, LogLevel::Info) } else { (&mut data.stderr, LogLevel::Error) };
    buf.extend_from_slice(bytes);
    let mut lines = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
    }
    if fd == 2 {
        data.panic_report.extend(lines.iter().cloned());
    }
    let (vm, context_id) = (data.vm, data.current_context);
    let mut world = data.world();
    for message in lines {
        world.logs.push(LogEntry { vm, context_id, level, message });
    }
}

fn environ_sizes_get(mut c: C<'_>, count_ptr: i32, size_ptr: i32) -> i32 {
    let env = c.data().world().env.clone();
    let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let count = u32::try_from(env.len()).unwrap_or(u32::MAX);
    if write_u32(&mut c, count_ptr, count) && write_u32(&mut c, size_ptr, u32::try_from(size).unwrap_or(0)) {
        SUCCESS
    } else {
        EFAULT
    }
}

fn environ_get(mut c: C<'_>, environ: i32, buf: i32) -> i32 {
    let env = c.data().world().env.clone();
    let mut at = buf as u32;
    for (i, (k, v)) in env.iter().enumerate() {
        let entry = format!("{k}={v}\0");
        let slot = environ.wrapping_add(i32::try_from(i * 4).unwrap_or(i32::MAX));
        if !write_u32(&mut c, slot, at) || !write(&mut c, at as i32, entry.as_bytes()) {
            return EFAULT;
        }
        at = at.saturating_add(u32::try_from(entry.len()).unwrap_or(u32::MAX));
    }
    SUCCESS
}

fn clock_time_get(mut c: C<'_>, id: i32, _precision: i64, ptr: i32) -> i32 {
    let now = {
        let world = c.data().world();
        match id {
            0 => world.clock.unix_ns(),
            1..=3 => world.clock.elapsed_ns(),
            _ => return EINVAL,
        }
    };
    if write(&mut c, ptr, &now.to_le_bytes()) {
        SUCCESS
    } else {
        EFAULT
    }
}

fn random_get(mut c: C<'_>, ptr: i32, len: i32) -> i32 {
    let mut bytes = vec![0u8; len.max(0) as usize];
    {
        let mut world = c.data().world();
        for chunk in bytes.chunks_mut(8) {
            let r = world.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(r.get(..chunk.len()).unwrap_or_default());
        }
    }
    if write(&mut c, ptr, &bytes) {
        SUCCESS
    } else {
        EFAULT
    }
}
