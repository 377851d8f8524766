//! Counters through the proxy-wasm metrics API, shown at Envoy's `/stats/prometheus`.
//!
//! A counter that cannot be defined or bumped only loses a count; it never affects a request.

use proxy_wasm::types::MetricType;

/// Defines counter `name`; `None` if the host refused it.
pub fn counter(name: &str) -> Option<u32> {
    proxy_wasm::hostcalls::define_metric(MetricType::Counter, name).ok()
}

/// Adds `by` to counter `id`, if it was defined.
pub fn bump(id: Option<u32>, by: u64) {
    if let Some(id) = id {
        let _ = proxy_wasm::hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}
