//! Plain-Rust pieces shared by every Portico filter: configuration reading with JSON paths,
//! the header names and values configuration may write, the error response shape, the
//! identity header contract, request views, media types, route matching and strict JSON
//! reading of request bodies.
//!
//! Nothing here calls the proxy-wasm host except `metrics`, `shared::HostStore` and
//! `refusal::Refusals::refuse` (the two places with `unsafe`, raw ABI calls), so all the rest
//! is tested on the native target.
// Until issue 14 moves metrics and shared data into portico-host: they still call the SDK.
#![allow(clippy::disallowed_methods)]

pub mod analytics;
pub mod clock;
pub mod config;
pub mod header;
pub mod identity;
pub mod json;
pub mod media;
pub mod metrics;
pub mod refusal;
pub mod request;
pub mod response;
pub mod route;
pub mod secret;
pub mod shared;
pub mod sse;
pub mod state_api;
