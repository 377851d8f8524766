//! Plain-Rust pieces shared by every Portico filter: configuration reading with JSON paths,
//! the header names and values configuration may write, the error response shape, the
//! contract between the filters (every header, filter-state key, metadata key and API format
//! one filter hands another, [`contract`]), request views, media types, route matching and strict JSON
//! reading of request bodies.
//!
//! Nothing here calls the proxy-wasm host: `portico-host` does, and the filters reach the host
//! only through it, so all of this is tested on the native target.

pub mod analytics;
pub mod clock;
pub mod config;
pub mod contract;
pub mod header;
pub mod identity;
pub mod json;
pub mod media;
pub mod refusal;
pub mod request;
pub mod response;
pub mod route;
pub mod secret;
pub mod shared;
pub mod sse;
pub mod state_api;
