//! Portico rate-limit: exact request limits across Envoy workers, and LLM token quotas.
//!
//! [`filter`] is the host shell on `portico_host`: it gathers what admission needs, calls the
//! pure [`plan::admit`], and records the answer as effects; [`follow`] holds the policy around
//! it (reading the request body for token quotas, following the response for usage, what
//! settles a reservation). Everything worth testing lives outside the shell and is tested
//! natively; the shell is tested on the mock host. The filter is the `portico-rate-limit` entry
//! of `portico.wasm`, and `rate-limit.wasm` is the same module built with rate-limit alone.
// Request and upstream numbers flow through every limit here: arithmetic that can overflow,
// wrap or divide by zero is refused at build time, not left to the release build's wrapping.
#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects))]

pub mod config;
pub mod estimate;
pub mod filter;
pub mod follow;
pub mod gcra;
pub mod headers;
pub mod lifted;
pub mod plan;
pub mod slots;
pub mod usage;

pub use filter::RateLimit;
