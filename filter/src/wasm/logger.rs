//! The module's `log` backend over the raw `proxy_log` import. The SDK's logger formats every record at
//! or above its fixed level and unwraps the proxy's status; this one follows the proxy's own log level
//! (so a debug line costs nothing unless Envoy logs debug) and drops a line the proxy refuses.

use std::sync::atomic::{AtomicU32, Ordering};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
}

struct ProxyLogger;

static LOGGER: ProxyLogger = ProxyLogger;
/// Proxy-Wasm level codes: 0 trace, 1 debug, 2 info, 3 warn, 4 error, 5 critical.
static PROXY_LEVEL: AtomicU32 = AtomicU32::new(2);

fn code(level: log::Level) -> u32 {
    match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

impl log::Log for ProxyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        code(metadata.level()) >= PROXY_LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        // SAFETY: the proxy reads `size` bytes of `message`, which outlives the call.
        let _ = unsafe { proxy_log(code(record.level()), message.as_ptr(), message.len()) };
    }

    fn flush(&self) {}
}

/// Installs the logger (once per VM) at info until [`follow_proxy_level`] runs: the proxy refuses host
/// calls while the module initializes, so its level is read from the first configuration on.
pub fn install() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Re-reads the proxy's log level (it can change at run time, e.g. Envoy's `/logging` admin endpoint).
pub fn follow_proxy_level() {
    let mut level: u32 = 2;
    // SAFETY: the proxy writes one u32 into `level`.
    let status = unsafe { proxy_get_log_level(&mut level) };
    if status != 0 {
        level = 0;
    }
    PROXY_LEVEL.store(level, Ordering::Relaxed);
    log::set_max_level(match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 | 5 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    });
}
