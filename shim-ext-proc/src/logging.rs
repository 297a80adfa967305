//! A minimal stderr logger for the `log` facade (one line per record, level and target first).

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Error => "ERROR",
                Level::Warn => "WARN",
                Level::Info => "INFO",
                Level::Debug => "DEBUG",
                Level::Trace => "TRACE",
            };
            eprintln!("epp-shim {level} {}: {}", record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger once; later calls are ignored.
pub fn init(level: LevelFilter) {
    let logger: &'static Stderr = Box::leak(Box::new(Stderr { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
