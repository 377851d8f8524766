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
//! ## gRPC calls (issue 15)
//! The same holds for gRPC: `hostcalls::dispatch_grpc_call` registers the token that the SDK's
//! `proxy_on_grpc_receive` and `proxy_on_grpc_close` look up (they drop unknown tokens
//! silently instead of trapping). A gRPC callout goes here, next to the HTTP one: a
//! `GrpcCall` description, a `Host::dispatch_grpc_call` that calls the SDK's function under
//! the same `allow`, a `Filter::on_grpc_call_response(token, status, response)` hook called
//! from the root's `Context::on_grpc_call_response`, and the message read from the
//! `GrpcReceiveBuffer` buffer (type 5) the way [`CallResponse::body`] reads its buffer.

use std::cell::OnceCell;

use crate::abi::HostError;
use crate::host::{Buffer, Host, HttpCall, Map};

/// Dispatches `call` through the SDK, so that its dispatcher knows the token (see the module
/// docs).
#[allow(clippy::disallowed_methods)]
pub(crate) fn dispatch_http_call(call: &HttpCall<'_>) -> Result<u32, HostError> {
    crate::abi::count();
    proxy_wasm::hostcalls::dispatch_http_call(call.cluster, call.headers.to_vec(), call.body, Vec::new(), call.timeout)
        .map_err(|status| HostError(status as u32))
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
