//! Calls from a root context to other clusters, and their answers.
//!
//! ## Why the dispatch goes through the SDK
//! The SDK's dispatcher owns the exported `proxy_on_http_call_response`, and it looks the
//! token up in a table that only its own `hostcalls::dispatch_http_call` fills: an answer to a
//! call dispatched through a raw import would hit its `expect("invalid token_id")` and trap the
//! VM. Owning that export instead means owning every export (the SDK's are `#[no_mangle]` and
//! would clash), which is possible once no crate in `portico.wasm` links the SDK but this one.
//! Until then, [`dispatch_http_call`] is the one place that calls an SDK host function, under
//! a local `allow` of the `disallowed_methods` ban. Its panicking arm is unreachable on Envoy:
//! `httpCall` answers Ok, BadArgument (unknown cluster; `:method`, `:path` or `:authority`
//! missing) or InternalFailure (the async client refused), and the SDK maps the last two to
//! errors. The host passes the answer to the root context that dispatched the call, which is
//! where [`crate::Filter::on_http_call_response`] runs.
//!
//! ## gRPC calls
//! The same holds for gRPC: `hostcalls::dispatch_grpc_call` registers the token that the SDK's
//! `proxy_on_grpc_receive` and `proxy_on_grpc_close` look up (they drop unknown tokens
//! silently instead of trapping), so [`dispatch_grpc_call`] goes through it under the same
//! `allow`. Its panicking arm is unreachable on Envoy: `grpcCall` answers Ok, ParseFailure (no
//! such cluster) or InternalFailure (the async client refused), and the SDK maps those two to
//! errors. The SDK registers the token with the context running the callback, so the answer
//! comes back to that context: a stream's call to the stream ([`crate::HttpFilter::call_answer`]),
//! a root's (a tick) to the root ([`crate::Filter::on_grpc_call_response`]). The SDK passes
//! either a message (`proxy_on_grpc_receive`, status 0) or a closing status
//! (`proxy_on_grpc_close`), once per call: [`GrpcAnswer`] holds either.
//!
//! Envoy cancels the calls of a stream's context when the stream is destroyed, right after
//! its log callback: a call that must outlive the request (settling a reservation) is handed
//! to the root, which dispatches it from its tick.

use std::cell::OnceCell;

use crate::abi::HostError;
use crate::host::{Buffer, GrpcCall, Host, HttpCall, Map};

/// Dispatches `call` through the SDK, so that its dispatcher knows the token (see the module
/// docs).
#[allow(clippy::disallowed_methods)]
pub(crate) fn dispatch_http_call(call: &HttpCall<'_>) -> Result<u32, HostError> {
    crate::abi::count();
    proxy_wasm::hostcalls::dispatch_http_call(call.cluster, call.headers.to_vec(), call.body, Vec::new(), call.timeout)
        .map_err(|status| HostError(status as u32))
}

/// Dispatches `call` through the SDK, so that its dispatcher knows the token (see the module
/// docs).
#[allow(clippy::disallowed_methods)]
pub(crate) fn dispatch_grpc_call(call: &GrpcCall<'_>) -> Result<u32, HostError> {
    crate::abi::count();
    proxy_wasm::hostcalls::dispatch_grpc_call(
        call.cluster,
        call.service,
        call.method,
        Vec::new(),
        Some(call.message),
        call.timeout,
    )
    .map_err(|status| HostError(status as u32))
}

/// gRPC's status codes that Portico tells apart.
pub mod grpc_status {
    pub const OK: u32 = 0;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const INTERNAL: u32 = 13;
    /// Also what [`super::GrpcAnswer`] says when the call could not be dispatched at all.
    pub const UNAVAILABLE: u32 = 14;
}

/// The answer to a gRPC call: a message (status 0) or the status the call closed with (a
/// timeout, an unreachable cluster, an error from the service), read lazily.
pub struct GrpcAnswer<'a> {
    host: Option<&'a dyn Host>,
    status: u32,
    size: usize,
    message: OnceCell<Vec<u8>>,
}

impl<'a> GrpcAnswer<'a> {
    pub(crate) fn new(host: &'a dyn Host, status: u32, size: usize) -> Self {
        Self {
            host: Some(host),
            status,
            size,
            message: OnceCell::new(),
        }
    }

    /// The answer to a call that could not be dispatched (the host refused it).
    pub(crate) fn undelivered() -> Self {
        Self {
            host: None,
            status: grpc_status::UNAVAILABLE,
            size: 0,
            message: OnceCell::new(),
        }
    }

    /// The gRPC status: 0 when a message arrived.
    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_ok(&self) -> bool {
        self.status == grpc_status::OK
    }

    /// The size of the message the host holds, known before it is read.
    pub fn message_size(&self) -> usize {
        self.size
    }

    /// The message (empty when there is none or it cannot be read).
    pub fn message(&self) -> &[u8] {
        self.message.get_or_init(|| match self.host {
            Some(host) if self.size > 0 => host
                .buffer(Buffer::GrpcReceiveBuffer, 0, self.size)
                .ok()
                .flatten()
                .unwrap_or_default(),
            _ => Vec::new(),
        })
    }
}

impl std::fmt::Debug for GrpcAnswer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcAnswer")
            .field("status", &self.status)
            .field("size", &self.size)
            .finish()
    }
}

/// The answer to an HTTP call, read lazily: headers one by one, the body once.
pub struct CallResponse<'a> {
    host: &'a dyn Host,
    body_size: usize,
    body: OnceCell<Vec<u8>>,
}

impl<'a> CallResponse<'a> {
    pub(crate) fn new(host: &'a dyn Host, body_size: usize) -> Self {
        Self {
            host,
            body_size,
            body: OnceCell::new(),
        }
    }

    /// The status code; `None` when the call failed without an answer (timeout, connection
    /// refused: the host then passes no headers).
    pub fn status(&self) -> Option<u16> {
        let value = self.header(":status")?;
        std::str::from_utf8(&value).ok()?.parse().ok()
    }

    /// The size of the body the host holds, known before it is read: a filter can refuse an
    /// answer too large for it without copying it into the VM.
    pub fn body_size(&self) -> usize {
        self.body_size
    }

    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.host.header(Map::HttpCallResponseHeaders, name).ok().flatten()
    }

    /// The whole body (empty when there is none or it cannot be read).
    pub fn body(&self) -> &[u8] {
        self.body.get_or_init(|| {
            if self.body_size == 0 {
                return Vec::new();
            }
            self.host
                .buffer(Buffer::HttpCallResponseBody, 0, self.body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        })
    }
}
