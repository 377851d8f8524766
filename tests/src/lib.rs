//! Test support for Portico: the mock upstream, an HTTP client, and Envoy processes with
//! configs rendered in one place. Used by the integration tests in `tests/` and by the demo
//! upstream binary that `make run` starts; Redis and portico-state for the state tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod demo;
pub mod envoy;
pub mod http;
pub mod state;
pub mod tokens;
pub mod upstream;
