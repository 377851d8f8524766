//! Every name that crosses from one Portico filter to another, or out to Envoy, its access log
//! and the upstream: headers, filter-state keys, the dynamic-metadata namespace and keys
//! `json_to_metadata` lifts, the local replies' details, and the API formats. A filter names
//! these only through this module, so a writer and its reader cannot drift apart; a test in
//! `filters/portico` (`tests/contract.rs`) runs each writer into its reader, and one in
//! `tests/tests/shipped.rs` checks the shipped Envoy configs against the metadata and
//! filter-state names here.
//!
//! The chain, in order: auth, `json_to_metadata`, rate-limit, header-routing, body-transform,
//! cache. A name is only as trustworthy as its writer's place in it: request headers written by
//! auth can be trusted because auth removes every client-sent `x-portico-*` header first.
//!
//! | name | kind | written by | read by | value |
//! | --- | --- | --- | --- | --- |
//! | [`header::CONSUMER`] | request header | auth | rate-limit, header-routing, cache, body-transform (`from_header`), upstream | `<namespace>:<name>` ([`crate::identity`]) |
//! | [`header::TIER`] | request header | auth | rate-limit, header-routing, cache, upstream | the tier, such as `free` |
//! | [`header::VARIANT`] | request and response header | header-routing | upstream, client | the A/B variant's name |
//! | [`header::FLAGS`] | request and response header | header-routing | upstream, client | flag names, comma-separated |
//! | [`header::BACKEND_FORMAT`] | request header, internal | header-routing | body-transform (the Envoy route removes it) | [`ApiFormat::as_str`] |
//! | [`header::CLUSTER`] | request header, internal | header-routing (`cluster_header`) | Envoy's route (`cluster_header`), cache (`backend_header`) | the cluster's name |
//! | [`header::CACHE`] | response header | cache | rate-limit, body-transform, client | [`cache::HIT`], [`cache::MISS`], [`cache::BYPASS`] |
//! | [`state`] keys | filter state | see each key | later filters, the access log (`%FILTER_STATE(wasm.<key>:PLAIN)%`) | see each key |
//! | [`metadata::NAMESPACE`] / [`metadata::READ`] | dynamic metadata | `json_to_metadata` | rate-limit, header-routing | the body field, as a string |
//! | [`DETAILS_PREFIX`] | response details | every filter's local reply (`<root id>.<code>`) | `local_reply_config` in the Envoy config, body-transform | `portico-auth.token_expired` |

use crate::route::matching_path;

/// Request and response headers between the filters, and from them to the upstream and client.
pub mod header {
    /// Every Portico header starts with this. Auth removes any client-sent header with it, and
    /// configured header operations may not write one.
    pub const PREFIX: &str = "x-portico-";
    /// Written by auth after it removes any client-sent copy: the authenticated consumer id,
    /// `<namespace>:<name>` ([`crate::identity`]). Read by rate-limit and cache (keys and
    /// scopes), header-routing (sticky splits, flags), body-transform (`from_header`), and the
    /// upstream.
    pub const CONSUMER: &str = "x-portico-consumer";
    /// Written by auth: the caller's tier (`free`, `pro`). Read by rate-limit, header-routing,
    /// cache and the upstream.
    pub const TIER: &str = "x-portico-tier";
    /// Written by header-routing: the A/B variant chosen, sent upstream and echoed to the client.
    pub const VARIANT: &str = "x-portico-variant";
    /// Written by header-routing: the feature flags on for the request, comma-separated, sent
    /// upstream and echoed to the client.
    pub const FLAGS: &str = "x-portico-flags";
    /// Written by header-routing: the chosen backend's API format ([`super::ApiFormat`]). Read
    /// by body-transform to pick a translation. Internal: the Envoy route removes it
    /// (`request_headers_to_remove`) before the request leaves.
    pub const BACKEND_FORMAT: &str = "x-portico-backend-format";
    /// The default of header-routing's `cluster_header` and of cache's `backend_header`:
    /// written by header-routing with the chosen cluster's name, read by Envoy's route
    /// (`cluster_header`) and by the cache (answers of two backends never mix). Internal: the
    /// Envoy route removes it.
    pub const CLUSTER: &str = "x-portico-cluster";
    /// Written by cache on the response: [`super::cache::HIT`], `MISS` or `BYPASS`. Read by
    /// rate-limit (a hit releases its reservation), body-transform (a hit is an upstream answer
    /// to translate) and the client.
    pub const CACHE: &str = "x-portico-cache";
}

/// The cache's verdicts, in [`header::CACHE`] and [`state::CACHE`].
pub mod cache {
    /// Answered from the cache.
    pub const HIT: &str = "HIT";
    /// Looked up, not found, sent upstream (and stored if fit).
    pub const MISS: &str = "MISS";
    /// Not cacheable (sampled, streamed, opted out): neither looked up nor stored.
    pub const BYPASS: &str = "BYPASS";
}

/// Filter-state keys (`set_property`), read by later filters with `get_property` and by the
/// access log as `%FILTER_STATE(wasm.<key>:PLAIN)%` (Envoy adds the `wasm.` prefix).
pub mod state {
    /// Written by auth: the authenticated consumer id. Read by header-routing (per-consumer
    /// series) and the access log.
    pub const CONSUMER: &str = "portico_consumer";
    /// Written by auth: the tier. Read by header-routing (unrouted series) and the access log.
    pub const TIER: &str = "portico_tier";
    /// Written by header-routing: the route name. Read by the access log.
    pub const ROUTE: &str = "portico_route";
    /// Written by header-routing: the A/B variant. Read by the access log.
    pub const VARIANT: &str = "portico_variant";
    /// Written by header-routing: the backend's name. Read by the access log.
    pub const BACKEND: &str = "portico_backend";
    /// Written by header-routing: the upstream model. Read by rate-limit (its token series'
    /// `model` label) and the access log.
    pub const MODEL: &str = "portico_model";
    /// Written by rate-limit when a model response reports usage: the prompt tokens counted,
    /// in decimal. Read by the access log.
    pub const PROMPT_TOKENS: &str = "portico_prompt_tokens";
    /// Written by rate-limit with [`PROMPT_TOKENS`]: the completion tokens counted.
    pub const COMPLETION_TOKENS: &str = "portico_completion_tokens";
    /// Written by rate-limit on requests a token quota reserved for: the output tokens it
    /// reserved (the client's `max_tokens`, else the quota's default), in decimal. Read by
    /// body-transform, which asks a backend that requires `max_tokens` for this many when the
    /// client named none, so the request never asks for more than was reserved.
    pub const MAX_OUTPUT_TOKENS: &str = "portico_max_output_tokens";
    /// Written by body-transform on every answer it translates from a backend's success (a
    /// complete body or a stream, including one it had to refuse as a bad answer): the usage
    /// the backend itself reported, which the translation may have hidden (an OpenAI client
    /// that did not ask for stream usage, a 502 in place of the answer) or had to fill in (an
    /// Anthropic client always gets a count). Read by rate-limit, which settles from it. Value:
    /// [`super::BackendUsage`].
    pub const BACKEND_USAGE: &str = "portico_backend_usage";
    /// Written by body-transform when a backend's answer could not be translated (the client
    /// got a 502 `bad_upstream_response`, or an error in place of the body or at the end of the
    /// stream), with that code. Read by cache, which must not store what it saw of that answer.
    pub const BAD_UPSTREAM: &str = "portico_bad_upstream";
    /// Written by cache: [`super::cache::HIT`], `MISS` or `BYPASS`. Read by the access log.
    pub const CACHE: &str = "portico_cache";
    /// Written by a filter that changes the path across APIs (body-transform's translation,
    /// header-routing's path rewrite): the API the client speaks ([`super::ApiFormat::as_str`]).
    /// Read by Envoy's `local_reply_config`, to answer its own errors in the client's format.
    pub const CLIENT_API: &str = "portico_client_api";

    /// Every key above.
    pub const ALL: &[&str] = &[
        CONSUMER,
        TIER,
        ROUTE,
        VARIANT,
        BACKEND,
        MODEL,
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
        MAX_OUTPUT_TOKENS,
        BACKEND_USAGE,
        BAD_UPSTREAM,
        CACHE,
        CLIENT_API,
    ];
}

/// The body fields Envoy's `json_to_metadata` lifts into dynamic metadata ahead of the filters
/// (a wasm filter cannot hold the headers while it reads the body), and where.
pub mod metadata {
    /// The namespace: the default of rate-limit's and header-routing's `metadata_namespace`,
    /// and the `metadata_namespace` of every rule in the shipped Envoy configs.
    pub const NAMESPACE: &str = "portico";
    /// The body's `model`, as a string. Read by header-routing (model routes) and rate-limit
    /// (token series, whether the request is a model call).
    pub const MODEL: &str = "model";
    /// Set to `true` by the rules' `on_error` when the body is not JSON. Read by header-routing,
    /// which answers a model route's bad body with 400 `invalid_json`.
    pub const JSON_ERROR: &str = "json_error";
    /// The body's `max_tokens`, as a string. Read by rate-limit (the output reservation).
    pub const MAX_TOKENS: &str = "max_tokens";
    /// The body's `max_completion_tokens` (OpenAI's newer name for the output budget). Read by
    /// rate-limit with [`MAX_TOKENS`].
    pub const MAX_COMPLETION_TOKENS: &str = "max_completion_tokens";

    /// Every key a filter reads: what a `json_to_metadata` in front of the filters writes.
    pub const READ: &[&str] = &[MODEL, JSON_ERROR, MAX_TOKENS, MAX_COMPLETION_TOKENS];

    /// The property path of `key` lifted into `namespace`; its value comes back as the
    /// string's bytes.
    pub fn path<'a>(namespace: &'a str, key: &'a str) -> [&'a str; 4] {
        ["metadata", "filter_metadata", namespace, key]
    }
}

/// Each filter's `root_id`: the name a plugin entry (or an Istio `WasmPlugin`'s `pluginName`)
/// picks it by, and the first part of its local replies' details.
pub mod root_id {
    pub const AUTH: &str = "portico-auth";
    pub const RATE_LIMIT: &str = "portico-rate-limit";
    pub const HEADER_ROUTING: &str = "portico-header-routing";
    pub const BODY_TRANSFORM: &str = "portico-body-transform";
    pub const CACHE: &str = "portico-cache";
}

/// How every Portico local reply's response details (`%RESPONSE_CODE_DETAILS%`) begin: the
/// host layer writes `<root id>.<code>` and every root id starts with this. Envoy's
/// `local_reply_config` (shipped configs) leaves replies whose details start with it alone,
/// and body-transform never translates them (only `via_upstream` answers and cache hits).
pub const DETAILS_PREFIX: &str = "portico-";

// === impl ApiFormat ===

/// A model API format: what a client speaks, and what a backend speaks (header-routing's
/// backend `format`, [`header::BACKEND_FORMAT`], [`state::CLIENT_API`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    /// OpenAI Chat Completions, and for errors every path that is not an Anthropic endpoint.
    OpenAi,
    /// Anthropic's Messages API: `…/v1/messages` and the endpoints under it.
    Anthropic,
}

impl ApiFormat {
    /// Every format, in the order of [`ApiFormat::NAMES`].
    pub const ALL: [ApiFormat; 2] = [ApiFormat::OpenAi, ApiFormat::Anthropic];
    /// Every format's name, as configuration and the contract's values spell it.
    pub const NAMES: [&'static str; 2] = [ApiFormat::OpenAi.as_str(), ApiFormat::Anthropic.as_str()];

    /// The format's name: `openai`, `anthropic`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "openai",
            ApiFormat::Anthropic => "anthropic",
        }
    }

    /// The format named exactly `name` (as [`ApiFormat::as_str`] writes it), if any.
    pub fn parse(name: &[u8]) -> Option<ApiFormat> {
        ApiFormat::ALL.into_iter().find(|f| f.as_str().as_bytes() == name)
    }

    /// The API of a request path (query ignored), for the shape of its errors: Anthropic when
    /// a `v1/messages` segment pair ends the path or is followed by more segments
    /// (`/v1/messages/count_tokens`), after any prefix (`/anthropic/v1/messages`); OpenAI
    /// otherwise. The `local_reply_config` regex `^(.*/)?v1/messages(/.*)?$` says the same. The
    /// path is read as routes match it ([`matching_path`]), so `;` parameters and escaped
    /// letters cannot hide the API from the filters that answer in its format.
    pub fn of_path(path: &str) -> ApiFormat {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let path = matching_path(path);
        let path = path.as_ref();
        let anthropic = path.match_indices("v1/messages").any(|(at, m)| {
            let before_ok = at == 0 || path.get(..at).is_some_and(|b| b.ends_with('/'));
            let after = path.get(at + m.len()..).unwrap_or_default();
            before_ok && (after.is_empty() || after.starts_with('/'))
        });
        if anthropic {
            ApiFormat::Anthropic
        } else {
            ApiFormat::OpenAi
        }
    }
}

// === impl BackendUsage ===

/// What a backend reported about its usage, as body-transform publishes it in
/// [`state::BACKEND_USAGE`]: `<prompt> <completion>`, or `unknown` when the backend's answer
/// carried no final count (no usage object, a stream cut before its last usage, usage that is
/// not a count). Unknown is not zero: the backend may have done the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendUsage {
    Reported { prompt: u64, completion: u64 },
    Unknown,
}

impl BackendUsage {
    pub fn encode(self) -> String {
        match self {
            BackendUsage::Reported { prompt, completion } => format!("{prompt} {completion}"),
            BackendUsage::Unknown => "unknown".to_owned(),
        }
    }

    /// Reads the property's value; anything malformed is unknown.
    pub fn decode(raw: &[u8]) -> BackendUsage {
        let text = std::str::from_utf8(raw).unwrap_or_default();
        let mut parts = text.split(' ').map(str::parse::<u64>);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(prompt)), Some(Ok(completion)), None) => BackendUsage::Reported { prompt, completion },
            _ => BackendUsage::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_is_a_lower_case_portico_header() {
        for name in [
            header::CONSUMER,
            header::TIER,
            header::VARIANT,
            header::FLAGS,
            header::BACKEND_FORMAT,
            header::CLUSTER,
            header::CACHE,
        ] {
            assert!(name.starts_with(header::PREFIX), "{name}");
            assert_eq!(name, name.to_ascii_lowercase(), "{name}");
        }
    }

    #[test]
    fn filter_state_keys_are_distinct_portico_names() {
        let mut keys = state::ALL.to_vec();
        assert!(keys.iter().all(|k| k.starts_with("portico_")), "{keys:?}");
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), state::ALL.len(), "a key listed twice");
    }

    #[test]
    fn every_root_id_starts_with_the_details_prefix() {
        for id in [
            root_id::AUTH,
            root_id::RATE_LIMIT,
            root_id::HEADER_ROUTING,
            root_id::BODY_TRANSFORM,
            root_id::CACHE,
        ] {
            assert!(id.starts_with(DETAILS_PREFIX), "{id}");
        }
    }

    #[test]
    fn api_formats_parse_their_own_names_only() {
        for format in ApiFormat::ALL {
            assert_eq!(ApiFormat::parse(format.as_str().as_bytes()), Some(format));
        }
        assert_eq!(ApiFormat::NAMES, ["openai", "anthropic"]);
        for other in [&b""[..], b"OpenAI", b"anthropic ", b"claude", b"\xff"] {
            assert_eq!(ApiFormat::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_client_api_is_read_from_the_path() {
        let cases = [
            ("/v1/messages", ApiFormat::Anthropic),
            ("/v1/messages?beta=true", ApiFormat::Anthropic),
            ("/v1/messages/count_tokens", ApiFormat::Anthropic),
            ("/v1/messages;x=1", ApiFormat::Anthropic),
            ("/v1/%6Dessages", ApiFormat::Anthropic),
            ("/v1;a=b/messages%3Bx", ApiFormat::Anthropic),
            ("/anthropic/v1/messages", ApiFormat::Anthropic),
            ("v1/messages", ApiFormat::Anthropic),
            ("/v1/chat/completions", ApiFormat::OpenAi),
            ("/v1/messagesx", ApiFormat::OpenAi),
            ("/xv1/messages", ApiFormat::OpenAi),
            ("/v1/threads/t1/messages", ApiFormat::OpenAi),
            ("/v2/messages", ApiFormat::OpenAi),
            ("/users?next=/v1/messages", ApiFormat::OpenAi),
            ("", ApiFormat::OpenAi),
        ];
        for (path, want) in cases {
            assert_eq!(ApiFormat::of_path(path), want, "{path}");
        }
    }

    #[test]
    fn backend_usage_round_trips_and_anything_else_is_unknown() {
        for usage in [
            BackendUsage::Reported {
                prompt: 3,
                completion: 0,
            },
            BackendUsage::Reported {
                prompt: u64::MAX,
                completion: u64::MAX,
            },
            BackendUsage::Unknown,
        ] {
            assert_eq!(BackendUsage::decode(usage.encode().as_bytes()), usage);
        }
        for raw in [&b""[..], b"3", b"3 4 5", b"-1 2", b"a b", b"\xff", b"3  4"] {
            assert_eq!(BackendUsage::decode(raw), BackendUsage::Unknown, "{raw:?}");
        }
    }
}
