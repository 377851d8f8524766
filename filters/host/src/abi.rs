//! The proxy-wasm 0.2.1 host functions Portico uses, imported raw: the one module with `unsafe`.
//!
//! Each import is declared with a plain `u32` status (the SDK declares an enum, and a status
//! outside it would be undefined behaviour) and wrapped in a safe function that returns the
//! status as a [`HostError`] value. Nothing here panics, whatever the host answers.
//!
//! Buffers the host returns are allocated through this module's exported allocator
//! (`proxy_on_memory_allocate`, exported by the SDK as a boxed slice of exactly the asked
//! size), so they are taken back as a `Vec` of that length and capacity.
//!
//! Off wasm there is no host: the imports are replaced by functions that answer
//! `NO_HOST` (`u32::MAX`), so native builds link and every call is an error (native tests use
//! [`crate::mock::MockHost`]).
#![allow(unsafe_code)]

use std::ptr::{null, null_mut};

pub use portico_core::shared::HostError;

// Statuses of the ABI (`WasmResult` in the host).
pub(crate) const OK: u32 = 0;
pub(crate) const NOT_FOUND: u32 = 1;
pub(crate) const BAD_ARGUMENT: u32 = 2;
pub(crate) const CAS_MISMATCH: u32 = 8;
/// Not a status of the ABI: what every call answers off wasm.
#[cfg(not(target_arch = "wasm32"))]
const NO_HOST: u32 = u32::MAX;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
#[allow(clashing_extern_declarations)]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(kind: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, value: *mut *mut u8, value_size: *mut usize) -> u32;
    fn proxy_set_property(path: *const u8, path_size: usize, value: *const u8, value_size: usize) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        results: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
}

/// Stand-ins for the imports off wasm, with the same signatures so the wrappers below are the
/// same code on every target.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
mod native {
    use super::NO_HOST;
    pub(super) unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_get_log_level(_: *mut u32) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_get_buffer_bytes(_: u32, _: usize, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_set_buffer_bytes(_: u32, _: usize, _: usize, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_get_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_replace_header_map_value(_: u32, _: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_add_header_map_value(_: u32, _: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_get_property(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_set_property(_: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_get_shared_data(
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
        _: *mut u32,
    ) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_set_shared_data(_: *const u8, _: usize, _: *const u8, _: usize, _: u32) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_send_local_response(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i32,
    ) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_call_foreign_function(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_record_metric(_: u32, _: u64) -> u32 {
        NO_HOST
    }
    pub(super) unsafe fn proxy_continue_stream(_: u32) -> u32 {
        NO_HOST
    }
}
#[cfg(not(target_arch = "wasm32"))]
use native::*;

// === Host-call counting ===

#[cfg(feature = "count-host-calls")]
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one host call (with the `count-host-calls` feature; otherwise nothing).
#[inline]
pub(crate) fn count() {
    #[cfg(feature = "count-host-calls")]
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Host calls made by this VM so far; always 0 without the `count-host-calls` feature.
pub(crate) fn calls() -> u64 {
    #[cfg(feature = "count-host-calls")]
    return CALLS.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "count-host-calls"))]
    0
}

// === Safe wrappers ===

fn status(code: u32) -> Result<(), HostError> {
    match code {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// Takes ownership of a buffer the host allocated through our allocator; `None` for none.
fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host filled `data` and `size` with a buffer it got from
    // `proxy_on_memory_allocate(size)`, a boxed slice of exactly `size` bytes that nothing else
    // owns; a Vec with that length and capacity owns it, and frees it with the same allocator.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A call that answers a host buffer: `Ok(None)` for NotFound or no buffer.
fn returning(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, HostError> {
    count();
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        OK => Ok(owned(data, size)),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

pub(crate) fn log(level: u32, message: &str) -> Result<(), HostError> {
    count();
    // SAFETY: the message is live for the call; the host copies it.
    status(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

pub(crate) fn log_level() -> Result<u32, HostError> {
    count();
    let mut level = 0;
    // SAFETY: `level` is a live local the host writes once.
    status(unsafe { proxy_get_log_level(&mut level) }).map(|()| level)
}

pub(crate) fn now_nanos() -> Result<u64, HostError> {
    count();
    let mut nanos = 0;
    // SAFETY: `nanos` is a live local the host writes once.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) }).map(|()| nanos)
}

pub(crate) fn set_tick_period(millis: u32) -> Result<(), HostError> {
    count();
    // SAFETY: plain value argument.
    status(unsafe { proxy_set_tick_period_milliseconds(millis) })
}

pub(crate) fn buffer(kind: u32, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError> {
    // SAFETY: the out-pointers are live locals of `returning`.
    returning(|data, size| unsafe { proxy_get_buffer_bytes(kind, start, max, data, size) })
}

/// Replaces the whole buffer: start 0 with a size at least the buffer's replaces it all.
pub(crate) fn set_buffer(kind: u32, bytes: &[u8]) -> Result<(), HostError> {
    count();
    // SAFETY: `bytes` is live for the call; the host copies it.
    status(unsafe { proxy_set_buffer_bytes(kind, 0, usize::MAX, bytes.as_ptr(), bytes.len()) })
}

pub(crate) fn header_pairs(map: u32) -> Result<Option<Vec<u8>>, HostError> {
    // SAFETY: the out-pointers are live locals of `returning`.
    returning(|data, size| unsafe { proxy_get_header_map_pairs(map, data, size) })
}

pub(crate) fn header(map: u32, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    count();
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the name is live for the call; the out-pointers are live locals.
    match unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) } {
        // A present header with an empty value may come back without a buffer.
        OK => Ok(Some(owned(data, size).unwrap_or_default())),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

pub(crate) fn replace_header(map: u32, name: &str, value: &[u8]) -> Result<(), HostError> {
    count();
    // SAFETY: both slices are live for the call; the host copies them.
    status(unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub(crate) fn add_header(map: u32, name: &str, value: &[u8]) -> Result<(), HostError> {
    count();
    // SAFETY: both slices are live for the call; the host copies them.
    status(unsafe { proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub(crate) fn remove_header(map: u32, name: &str) -> Result<(), HostError> {
    count();
    // SAFETY: the name is live for the call.
    status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// `path` is the property path already joined with NUL bytes.
pub(crate) fn property(path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    // SAFETY: the path is live for the call; the out-pointers are live locals of `returning`.
    returning(|data, size| unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) })
}

pub(crate) fn set_property(path: &[u8], value: &[u8]) -> Result<(), HostError> {
    count();
    // SAFETY: both slices are live for the call; the host copies them.
    status(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

pub(crate) fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    count();
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the key is live for the call; the out-pointers are live locals.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        OK => Ok(Some((owned(data, size).unwrap_or_default(), cas))),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// `Ok(true)` when written, `Ok(false)` on a CAS mismatch.
pub(crate) fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
    count();
    // SAFETY: both slices are live for the call; the host copies them.
    match unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) } {
        OK => Ok(true),
        CAS_MISMATCH => Ok(false),
        other => Err(HostError(other)),
    }
}

/// `headers` is a serialised header map ([`crate::host::serialize_pairs`]).
pub(crate) fn send_local_response(
    status_code: u32,
    details: &str,
    body: &[u8],
    headers: &[u8],
) -> Result<(), HostError> {
    count();
    // SAFETY: every slice is live for the call; the host copies them. -1: not a gRPC reply.
    status(unsafe {
        proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub(crate) fn call_foreign_function(name: &str, arguments: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let arguments_ptr = if arguments.is_empty() {
        null()
    } else {
        arguments.as_ptr()
    };
    // SAFETY: both slices are live for the call; the out-pointers are live locals of `returning`.
    returning(|data, size| unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), arguments_ptr, arguments.len(), data, size)
    })
}

pub(crate) fn define_metric(kind: u32, name: &str) -> Result<u32, HostError> {
    count();
    let mut id = 0;
    // SAFETY: the name is live for the call; `id` is a live local the host writes once.
    status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

pub(crate) fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    count();
    // SAFETY: plain value arguments.
    status(unsafe { proxy_increment_metric(id, offset) })
}

pub(crate) fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    count();
    // SAFETY: plain value arguments.
    status(unsafe { proxy_record_metric(id, value) })
}

/// Resumes the paused stream of the effective context in one direction (0 request, 1
/// response).
pub(crate) fn continue_stream(stream: u32) -> Result<(), HostError> {
    count();
    // SAFETY: plain value argument.
    status(unsafe { proxy_continue_stream(stream) })
}
