//! Test support for Portico: the mock upstream, an HTTP client, and Envoy processes with
//! configs rendered in one place. Used by the integration tests in `tests/` and by the demo
//! upstream binary that `make run` starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod demo;
pub mod envoy;
pub mod http;
pub mod tokens;
pub mod upstream;
