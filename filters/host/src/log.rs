//! The `log` facade over the host's `proxy_log`, and a panic hook, installed once per VM.
//!
//! The SDK's logger and hook unwrap the host's status; these ignore it (a log line that cannot
//! be written is not worth a trap). The hook logs the panic's message and location at critical
//! level, so a crash (which traps the VM: the module aborts on panic) says where it happened.

use crate::abi;

// Levels of the ABI (Envoy's spdlog levels).
const TRACE: u32 = 0;
const DEBUG: u32 = 1;
const INFO: u32 = 2;
const WARN: u32 = 3;
const ERROR: u32 = 4;
const CRITICAL: u32 = 5;

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => ERROR,
            log::Level::Warn => WARN,
            log::Level::Info => INFO,
            log::Level::Debug => DEBUG,
            log::Level::Trace => TRACE,
        };
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Installs the logger (at info until [`follow_host_level`]) and the panic hook.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    std::panic::set_hook(Box::new(|info| {
        let message = match info.location() {
            Some(at) => format!(
                "panicked at {}:{}: {}",
                at.file(),
                at.line(),
                info.payload_as_str().unwrap_or("(no message)")
            ),
            None => format!("panicked: {}", info.payload_as_str().unwrap_or("(no message)")),
        };
        let _ = abi::log(CRITICAL, &message);
    }));
}

/// Formats only what Envoy will show: messages below the host's level for wasm are skipped
/// before they are built.
pub(crate) fn follow_host_level() {
    if let Ok(level) = abi::log_level() {
        log::set_max_level(match level {
            TRACE => log::LevelFilter::Trace,
            DEBUG => log::LevelFilter::Debug,
            INFO => log::LevelFilter::Info,
            WARN => log::LevelFilter::Warn,
            _ => log::LevelFilter::Error,
        });
    }
}
