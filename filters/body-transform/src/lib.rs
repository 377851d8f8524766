//! Portico body-transform: header and JSON body rewriting, and translation between the OpenAI
//! Chat Completions and Anthropic Messages APIs, streaming included.
//!
//! The host shell is [`filter`], on the host layer (`portico-host`); the decisions are pure, in
//! [`flow`]. Request headers are only available in the header callback
//! (`../shared/ENVOY-FACTS.md`, facts 1 and 2), so everything header-side is decided there:
//! the path, API headers, and removing `content-length` when the body will change. Bodies are
//! rewritten in the body callbacks: requests and plain responses whole, SSE streams chunk by
//! chunk as they arrive.
//!
//! Only answers that came from the upstream (Envoy's response details `via_upstream`) or that
//! the cache replays are translated: a local reply (a Portico filter's refusal, Envoy's own
//! error) is already in the client's shape and keeps its code. With
//! `allow_on_headers_stop_iteration` on (and the plugin field of the same name), the headers
//! of an answer rewritten whole are held until its body is read, so an answer that cannot be
//! translated becomes a 502 `bad_upstream_response`; without it the 200 has already left and
//! the error travels in the body.
pub mod config;
pub mod filter;
pub mod flow;
pub mod ops;
pub mod translate;

pub use filter::BodyTransform;
pub use flow::{answered_by_upstream, direction, translated_path, Direction};
