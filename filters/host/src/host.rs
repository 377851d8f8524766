//! The host as a trait: Envoy through the raw ABI ([`WasmHost`]) or an in-memory stand-in
//! ([`crate::mock::MockHost`]), so the generic root, the HTTP context and the filters' shells
//! run the same code natively in tests.
//!
//! Filters never see this trait: they get phase views, [`crate::Env`] and [`crate::Effects`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portico_core::shared::SetOutcome;

use crate::abi::{self, HostError};
use crate::effects::{Direction, LocalReply};

/// The header maps Portico reads or writes (values of the ABI's map type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

/// The buffers Portico reads or writes (values of the ABI's buffer type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    HttpCallResponseBody = 4,
    /// The message of a gRPC call's answer.
    GrpcReceiveBuffer = 5,
    PluginConfiguration = 7,
}

/// Kinds of metric (values of the ABI's metric type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// An HTTP call from a root context to a cluster (auth's JWKS fetch).
#[derive(Debug, Clone, Copy)]
pub struct HttpCall<'a> {
    pub cluster: &'a str,
    /// Must hold `:method`, `:path` and `:authority`, or the host refuses the call.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// A unary gRPC call to a cluster (`portico-state`). The cluster must be an HTTP/2 cluster
/// Envoy knows; the call fails with a gRPC status at `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct GrpcCall<'a> {
    pub cluster: &'a str,
    /// The fully qualified service, such as `portico.state.v1.State`.
    pub service: &'a str,
    pub method: &'a str,
    /// The request message, already encoded.
    pub message: &'a [u8],
    pub timeout: Duration,
}

/// Every host call Portico makes. Each answers the host's status as an error value; none panics.
pub trait Host {
    /// The first value of header `name` (lower-case); `Ok(None)` when absent.
    fn header(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Every header of `map`, in order.
    fn header_pairs(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>, HostError>;
    /// Sets header `name` to `value`, replacing any value it had.
    fn set_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), HostError>;
    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), HostError>;
    fn remove_header(&self, map: Map, name: &str) -> Result<(), HostError>;
    /// Up to `max` bytes of `buffer` from `start`; `Ok(None)` when there is none.
    fn buffer(&self, buffer: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError>;
    /// Replaces the whole of `buffer`.
    fn set_buffer(&self, buffer: Buffer, bytes: &[u8]) -> Result<(), HostError>;
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError>;
    fn send_local_response(&self, reply: &LocalReply) -> Result<(), HostError>;
    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Option<Vec<u8>>, HostError>;
    fn now(&self) -> Result<SystemTime, HostError>;
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    fn increment_metric(&self, id: u32, by: i64) -> Result<(), HostError>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
    fn set_tick_period(&self, period: Duration) -> Result<(), HostError>;
    /// Dispatches `call`; the answer arrives at the root's `on_http_call_response` with the
    /// returned token.
    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> Result<u32, HostError>;
    /// Dispatches a unary gRPC call from the context running now; the answer arrives at that
    /// context (the stream, or the root) with the returned token.
    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, HostError>;
    /// Resumes a stream paused in `direction` (after the answer it waited for).
    fn continue_stream(&self, direction: Direction) -> Result<(), HostError>;
    /// Host calls made so far, for the per-request report (0 when not counted).
    fn calls(&self) -> u64;
}

// === Wire formats ===

/// A header map in the ABI's format: the count, then each name's and value's length (all u32
/// little-endian), then each name and value followed by a NUL byte.
pub(crate) fn serialize_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let size = pairs.iter().fold(4usize, |n, (k, v)| {
        n.saturating_add(k.as_ref().len() + v.as_ref().len() + 10)
    });
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&len_u32(name.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.as_ref().len()).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads a header map in the ABI's format. A truncated or inconsistent map yields the pairs
/// read before the damage: the host never sends one, and a damaged one must not panic.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        let array: [u8; 4] = b.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(array)).ok()
    };
    let Some(count) = word(0) else { return Vec::new() };
    let mut pairs = Vec::with_capacity(count.min(256));
    let Some(mut at) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return pairs;
    };
    for i in 0..count {
        let Some(sizes) = i.checked_mul(8).and_then(|n| n.checked_add(4)) else {
            break;
        };
        let (Some(name_len), Some(value_len)) = (word(sizes), sizes.checked_add(4).and_then(word)) else {
            break;
        };
        let Some(name_end) = at.checked_add(name_len) else {
            break;
        };
        let Some(name) = bytes.get(at..name_end) else { break };
        let Some(value_start) = name_end.checked_add(1) else {
            break;
        };
        let Some(value_end) = value_start.checked_add(value_len) else {
            break;
        };
        let Some(value) = bytes.get(value_start..value_end) else {
            break;
        };
        pairs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        let Some(next) = value_end.checked_add(1) else { break };
        at = next;
    }
    pairs
}

/// A property path in the ABI's format: the parts joined by NUL bytes.
pub(crate) fn property_path(path: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

// === impl WasmHost ===

/// Envoy, through the raw imports of [`crate::abi`].
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

impl Host for WasmHost {
    fn header(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        abi::header(map as u32, name)
    }

    fn header_pairs(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        Ok(abi::header_pairs(map as u32)?.map_or_else(Vec::new, |bytes| deserialize_pairs(&bytes)))
    }

    fn set_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::replace_header(map as u32, name, value)
    }

    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::add_header(map as u32, name, value)
    }

    fn remove_header(&self, map: Map, name: &str) -> Result<(), HostError> {
        abi::remove_header(map as u32, name)
    }

    fn buffer(&self, buffer: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError> {
        abi::buffer(buffer as u32, start, max)
    }

    fn set_buffer(&self, buffer: Buffer, bytes: &[u8]) -> Result<(), HostError> {
        abi::set_buffer(buffer as u32, bytes)
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        abi::property(&property_path(path))
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        abi::set_property(&property_path(path), value)
    }

    fn send_local_response(&self, reply: &LocalReply) -> Result<(), HostError> {
        let headers = serialize_pairs(&reply.headers);
        abi::send_local_response(reply.status, &reply.details, &reply.body, &headers)
    }

    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        abi::call_foreign_function(name, arguments)
    }

    fn now(&self) -> Result<SystemTime, HostError> {
        abi::now_nanos().map(|n| UNIX_EPOCH + Duration::from_nanos(n))
    }

    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        abi::shared_get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError> {
        abi::shared_set(key, value, cas).map(|written| {
            if written {
                SetOutcome::Written
            } else {
                SetOutcome::CasMismatch
            }
        })
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        abi::define_metric(kind as u32, name)
    }

    fn increment_metric(&self, id: u32, by: i64) -> Result<(), HostError> {
        abi::increment_metric(id, by)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        abi::record_metric(id, value)
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        abi::set_tick_period(u32::try_from(period.as_millis()).unwrap_or(u32::MAX))
    }

    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        crate::callout::dispatch_http_call(call)
    }

    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, HostError> {
        crate::callout::dispatch_grpc_call(call)
    }

    fn continue_stream(&self, direction: Direction) -> Result<(), HostError> {
        abi::continue_stream(match direction {
            Direction::Request => 0,
            Direction::Response => 1,
        })
    }

    fn calls(&self) -> u64 {
        abi::calls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_through_the_wire_format() {
        let pairs = vec![
            (":method".to_owned(), b"GET".to_vec()),
            ("x-bin".to_owned(), vec![0xff, 0x00, 0x7f]),
            ("x-empty".to_owned(), Vec::new()),
        ];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(bytes.get(..4), Some(&3u32.to_le_bytes()[..]));
        assert_eq!(deserialize_pairs(&bytes), pairs);
        assert!(deserialize_pairs(&serialize_pairs::<&str, &[u8]>(&[])).is_empty());
    }

    #[test]
    fn damaged_header_maps_yield_what_was_readable_and_never_panic() {
        let bytes = serialize_pairs(&[("a", b"1".as_slice()), ("b", b"2".as_slice())]);
        for cut in 0..bytes.len() {
            let pairs = deserialize_pairs(bytes.get(..cut).unwrap_or_default());
            assert!(pairs.len() <= 2);
        }
        // A count far beyond the data.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0]);
        assert!(deserialize_pairs(&huge).is_empty());
    }

    #[test]
    fn property_paths_are_joined_by_nul() {
        assert_eq!(property_path(&["metadata", "ns", "k"]), b"metadata\0ns\0k".to_vec());
        assert_eq!(property_path(&["plugin_root_id"]), b"plugin_root_id".to_vec());
        assert!(property_path(&[]).is_empty());
    }
}
