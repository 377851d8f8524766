//! Portico auth: JWT and API-key authentication for Envoy.
//!
//! [`filter`] is the host shell on `portico_host`: it reads what the decision needs from the
//! request, calls the pure [`authn::Authenticator::decide`], and records the answer as effects.
//! Everything worth testing lives in the other modules and is tested natively; the shell is
//! tested on the mock host. The filter is the `portico-auth` entry of `portico.wasm`, and
//! `auth.wasm` is the same module built with auth alone.

pub mod authn;
pub mod cache;
pub mod config;
pub mod filter;
pub mod keys;
pub mod reason;
pub mod token;

pub use filter::Auth;
