//! Portico cache: answers repeated, replay-safe inference requests from Envoy shared data.
//!
//! It sits last among the Portico filters, just before the router: it sees the consumer and
//! tier (auth), the chosen cluster and upstream model (header-routing) and the exact body the
//! upstream would get (after body-transform). A hit is answered from the request body
//! callback, the only place the whole body is available to a wasm filter; the response then
//! flows back through body-transform, header-routing, rate-limit and auth exactly as an
//! upstream answer would, with `x-portico-cache: HIT`, which rate-limit reads to release the
//! request's token reservation.
//!
//! [`filter`] is the host shell on `portico_host`; [`flow`] (the phase machine), [`key`],
//! [`policy`], [`answer`] and [`store`] hold the decisions and are tested natively. The filter
//! is the `portico-cache` entry of `portico.wasm`, and `cache.wasm` is the same module built
//! with the cache alone.

pub mod answer;
pub mod config;
pub mod entry;
pub mod filter;
pub mod flow;
pub mod key;
pub mod policy;
pub mod store;

pub use filter::Cache;
