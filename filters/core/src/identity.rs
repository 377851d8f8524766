//! The headers through which auth tells later filters and upstreams who the caller is.
//!
//! Auth removes any client-sent copy of these on every request before it sets its own, so a
//! filter that runs after auth can trust them.

/// The consumer name of the authenticated caller.
pub const CONSUMER_HEADER: &str = "x-portico-consumer";
/// The caller's tier (for example `free`, `pro`), used by rate limits and routing.
pub const TIER_HEADER: &str = "x-portico-tier";
