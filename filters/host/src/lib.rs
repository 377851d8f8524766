//! Portico's host layer: the only code that talks to the proxy-wasm host.
//!
//! A filter is a [`Filter`] (its configuration, root-level work, per-request part) and an
//! [`HttpFilter`] (callbacks that read through views and record [`Effects`]). This crate runs
//! them: [`root::Root`] becomes the filter named by the plugin entry's `root_id`, and
//! [`stream::Stream`] runs one request, applying effects in one loop with the phase rules of
//! Envoy 1.40 (shared/ENVOY-FACTS.md and the stop-iteration findings).
//!
//! Every host call goes through [`abi`], raw imports that answer the host's status as a value:
//! nothing here panics on what the host says. The SDK (proxy-wasm 0.2.5) is kept only for its
//! exported entry points, its dispatcher, its allocator and its traits; its host-call wrappers
//! panic on statuses they do not expect and are banned workspace-wide by `clippy.toml`, with
//! one exception explained in [`callout`].
//!
//! [`mock::MockHost`] stands in for Envoy natively, so the whole layer, and every filter's
//! shell, runs in `cargo test`.

pub mod abi;
pub mod callout;
pub mod effects;
pub mod env;
pub mod filter;
pub mod headers;
pub mod host;
pub mod log;
pub mod metrics;
pub mod mock;
pub mod root;
pub mod stages;
pub mod stream;

pub use callout::{grpc_status, CallResponse, GrpcAnswer};
pub use effects::{Call, Direction, Effect, Effects, LocalReply};
pub use env::{Env, Shared};
pub use filter::{BodyFlow, Filter, HeadersFlow, HttpFilter, RootHost};
pub use headers::{Body, Exchange, HeaderView, RequestHeaders, ResponseHeaders};
pub use host::{GrpcCall, HttpCall};
pub use root::{entry, Entry};

/// Re-exported for [`main!`] only: nothing else outside this crate uses the SDK.
#[doc(hidden)]
pub use proxy_wasm;

/// The module's entry point: installs the logger and panic hook, and makes every root context
/// a [`root::Root`] over `$registry` (a `&'static [Entry]`).
#[macro_export]
macro_rules! main {
    ($registry:expr) => {
        $crate::proxy_wasm::main! {{
            $crate::log::install();
            $crate::proxy_wasm::set_root_context(|_| {
                ::std::boxed::Box::new($crate::root::Root::new(
                    $registry,
                    ::std::rc::Rc::new($crate::host::WasmHost),
                ))
            });
        }}
    };
}
