//! Every contract of `portico_core::contract` between two filters, writer into reader: the
//! real filters of `portico.wasm` run one request over one mock host in the shipped chain
//! order (auth, rate-limit, header-routing, body-transform, cache), so what one writes is
//! exactly what the next reads. Renaming a header, a filter-state key or a format on one side
//! only breaks these tests. `json_to_metadata`, Envoy's filter, is played by the test: the
//! shipped configs are checked against `contract::metadata` in `tests/tests/shipped.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, UNIX_EPOCH};

use portico::FILTERS;
use portico_core::analytics::series;
use portico_core::contract::{header, metadata, root_id, state};
use portico_host::host::{Buffer, Map};
use portico_host::mock::{Action, MockChain, MockChainStream, MockHost, Mutation};
use serde_json::{json, Value};

const NOW_SECONDS: u64 = 1_700_000_000;

fn sha256_hex(key: &str) -> String {
    hmac_sha256::Hash::hash(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two API-key consumers: `apikey:acme` (tier `pro`) and `apikey:beta` (tier `free`).
fn auth() -> Value {
    json!({
        "api_keys": {
            "sources": [{"type": "header", "name": "x-api-key"}],
            "consumers": [
                {"name": "acme", "tier": "pro", "keys": [{"sha256": sha256_hex("k-acme")}]},
                {"name": "beta", "tier": "free", "keys": [{"sha256": sha256_hex("k-beta")}]}
            ]
        },
        "default": {"auth": "api_key"}
    })
}

/// One request a minute per consumer on `/api`, per tier on `/tiered`; a token quota per
/// consumer on `/v1`, reserving 77 output tokens when the client names none.
fn rate_limit() -> Value {
    json!({
        "rules": [
            {"name": "per_consumer", "key": ["consumer"], "match": {"path": "/api/{*rest}"},
             "limit": {"requests": 1, "period_seconds": 60}},
            {"name": "per_tier", "key": ["tier"], "match": {"path": "/tiered/{*rest}"},
             "limit": {"requests": 1, "period_seconds": 60}}
        ],
        "token_quotas": [{"name": "llm", "key": ["consumer"], "match": {"path": "/v1/{*rest}"},
                          "default_max_tokens": 77,
                          "budgets": [{"tokens": 100000, "period_seconds": 60}]}]
    })
}

/// The alias `fast` is `claude-haiku` on an Anthropic-format backend; per-consumer series on.
fn header_routing() -> Value {
    json!({
        "backends": [
            {"name": "plain", "cluster": "plain"},
            {"name": "ant", "cluster": "anthropic", "format": "anthropic"}
        ],
        "routes": [
            {"name": "chat", "match": {"path": "/v1/chat/completions"},
             "models": {"aliases": {"fast": {"backend": "ant", "model": "claude-haiku"}}}},
            {"name": "rest", "match": {"path": "/{*rest}"}, "backend": "plain"}
        ],
        "per_consumer_metrics": true
    })
}

/// Translation by the backend's format on `/v1`; `hold` as shipped: whole answers are read
/// with their headers held (`allow_on_headers_stop_iteration` in the filter and its entry).
fn body_transform(hold: bool) -> Value {
    json!({"allow_on_headers_stop_iteration": hold,
           "routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]})
}

fn cache() -> Value {
    json!({"routes": [{"name": "llm", "match": {"path": "/v1/{*rest}"}, "ttl_seconds": 60}]})
}

/// The shipped chain, every filter of it.
fn gateway() -> MockChain {
    gateway_holding(true)
}

/// The shipped chain; `hold`: body-transform holds the headers of whole answers.
fn gateway_holding(hold: bool) -> MockChain {
    let (auth, rate_limit, routing, transform, cache) = (
        auth().to_string(),
        rate_limit().to_string(),
        header_routing().to_string(),
        body_transform(hold).to_string(),
        cache().to_string(),
    );
    let chain = MockChain::start(
        FILTERS,
        &[
            (root_id::AUTH, &auth, false),
            (root_id::RATE_LIMIT, &rate_limit, false),
            (root_id::HEADER_ROUTING, &routing, false),
            (root_id::BODY_TRANSFORM, &transform, hold),
            (root_id::CACHE, &cache, false),
        ],
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let host = chain.host();
    host.set_now(UNIX_EPOCH + Duration::from_secs(NOW_SECONDS));
    let start = i64::try_from(NOW_SECONDS * 1_000_000_000).unwrap();
    host.put_property(&["request", "time"], &start.to_le_bytes());
    chain
}

/// What `json_to_metadata` in front of rate-limit lifts from the body.
fn lift(host: &MockHost, key: &str, value: &str) {
    host.put_property(&metadata::path(metadata::NAMESPACE, key), value.as_bytes());
}

fn header_of(host: &MockHost, map: Map, name: &str) -> Option<String> {
    host.headers(map).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn state_of(host: &MockHost, key: &str) -> Option<String> {
    host.mutations().into_iter().rev().find_map(|m| match m {
        Mutation::SetProperty(path, value) if path == [key] => Some(String::from_utf8_lossy(&value).into_owned()),
        _ => None,
    })
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// A request without a body from the holder of `key`: its status (200 when it passed every
/// filter).
fn get(chain: &MockChain, path: &str, key: &str) -> u32 {
    chain.host().take_mutations();
    let mut s = chain.stream();
    let headers = [(":method", "GET"), (":path", path), ("x-api-key", key)];
    let status = if s.request_headers(&headers, true) == Action::Continue {
        200
    } else {
        chain.host().reply().map_or(0, |r| r.status)
    };
    s.log();
    status
}

#[test]
fn auths_identity_headers_are_what_rate_limit_keys_on() {
    let chain = gateway();
    assert_eq!(get(&chain, "/api/a", "k-acme"), 200);
    assert_eq!(
        header_of(chain.host(), Map::RequestHeaders, header::CONSUMER).as_deref(),
        Some("apikey:acme")
    );
    assert_eq!(get(&chain, "/api/a", "k-acme"), 429, "acme's bucket is spent");
    assert_eq!(get(&chain, "/api/a", "k-beta"), 200, "beta has a bucket of its own");

    assert_eq!(get(&chain, "/tiered/a", "k-acme"), 200);
    assert_eq!(
        get(&chain, "/tiered/a", "k-acme"),
        429,
        "the pro tier's bucket is spent"
    );
    assert_eq!(get(&chain, "/tiered/a", "k-beta"), 200, "the free tier has its own");
}

#[test]
fn auths_identity_state_is_what_header_routing_counts_consumers_by() {
    let chain = gateway();
    assert_eq!(get(&chain, "/api/a", "k-acme"), 200);
    assert_eq!(state_of(chain.host(), state::CONSUMER).as_deref(), Some("apikey:acme"));
    assert_eq!(
        chain.host().metric(&series(
            "portico_consumer_requests_total",
            &[("consumer", "apikey:acme"), ("outcome", "cancelled")]
        )),
        Some(1),
        "counted under the consumer auth named (no response: cancelled)"
    );
}

const CHAT: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    ("content-type", "application/json"),
    ("x-api-key", "k-acme"),
];

/// An OpenAI client's model call for the alias `fast`, up to the end of its body.
fn chat(chain: &MockChain, body: &str) -> MockChainStream {
    chain.host().take_mutations();
    lift(chain.host(), metadata::MODEL, "fast");
    chain
        .host()
        .put_property(&["request", "size"], &i64::try_from(body.len()).unwrap().to_le_bytes());
    let mut s = chain.stream();
    assert_eq!(
        s.request_headers(CHAT, false),
        Action::Continue,
        "{:?}",
        chain.host().reply()
    );
    s
}

const QUESTION: &str = r#"{"model":"fast","temperature":0,"messages":[{"role":"user","content":"2+2?"}]}"#;
const ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku","content":[{"type":"text","text":"4"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}"#;

#[test]
fn the_lifted_model_the_backend_format_and_the_reservation_shape_the_translated_request() {
    let chain = gateway();
    let host = chain.host();
    let mut s = chat(&chain, QUESTION);
    // header-routing read the lifted model and named the backend's format for body-transform.
    assert_eq!(
        header_of(host, Map::RequestHeaders, header::CLUSTER).as_deref(),
        Some("anthropic")
    );
    assert_eq!(state_of(host, state::MODEL).as_deref(), Some("claude-haiku"));
    assert_eq!(state_of(host, state::MAX_OUTPUT_TOKENS).as_deref(), Some("77"));
    assert_eq!(
        header_of(host, Map::RequestHeaders, ":path").as_deref(),
        Some("/v1/messages"),
        "body-transform translated by header-routing's format header"
    );
    assert_eq!(
        s.request_body(QUESTION.as_bytes(), true),
        Action::Continue,
        "{:?}",
        host.reply()
    );
    let sent = json_of(&host.body(Buffer::RequestBody));
    assert_eq!(sent["model"], "claude-haiku");
    assert_eq!(sent["max_tokens"], 77, "asked for what rate-limit reserved, no more");
}

#[test]
fn the_usage_body_transform_saw_is_what_rate_limit_settles_and_logs() {
    let chain = gateway();
    let host = chain.host();
    // A stream whose translation hides usage: the client did not ask for it.
    let question = r#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = chat(&chain, question);
    assert_eq!(s.request_body(question.as_bytes(), true), Action::Continue);
    host.put_property(&["response", "code_details"], b"via_upstream");
    let sse = [(":status", "200"), ("content-type", "text/event-stream")];
    assert_eq!(s.response_headers(&sse, false), Action::Continue);
    let events = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-haiku\",\"usage\":{\"input_tokens\":4,\"output_tokens\":0}}}\n\n\
                  event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"yo\"}}\n\n\
                  event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n\
                  event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    assert_eq!(s.response_body(events.as_bytes(), true), Action::Continue);
    let client = String::from_utf8_lossy(&host.body(Buffer::ResponseBody)).into_owned();
    assert!(
        client.contains("chat.completion.chunk") && !client.contains("\"usage\""),
        "{client}"
    );
    assert_eq!(state_of(host, state::BACKEND_USAGE).as_deref(), Some("4 3"));
    assert_eq!(state_of(host, state::PROMPT_TOKENS).as_deref(), Some("4"));
    assert_eq!(state_of(host, state::COMPLETION_TOKENS).as_deref(), Some("3"));
    assert_eq!(
        host.metric(&series(
            "portico_tokens_total",
            &[("tier", "pro"), ("model", "claude-haiku"), ("kind", "completion")]
        )),
        Some(3),
        "counted under auth's tier and header-routing's upstream model"
    );
    s.log();
}

/// The model call answered by the backend (`ANSWER`), through every filter, logged.
fn answered(chain: &MockChain) -> MockChainStream {
    let host = chain.host();
    let mut s = chat(chain, QUESTION);
    assert_eq!(
        s.request_body(QUESTION.as_bytes(), true),
        Action::Continue,
        "{:?}",
        host.reply()
    );
    host.put_property(&["response", "code_details"], b"via_upstream");
    let ok = [(":status", "200"), ("content-type", "application/json")];
    assert_eq!(
        s.response_headers(&ok, false),
        Action::Pause,
        "body-transform holds a whole answer"
    );
    assert_eq!(s.response_body(ANSWER.as_bytes(), true), Action::Continue);
    host.put_property(&["response", "code"], &200u64.to_le_bytes());
    s.log();
    s
}

#[test]
fn a_cache_hit_is_translated_by_body_transform_and_released_by_rate_limit() {
    let chain = gateway();
    let host = chain.host();
    answered(&chain);
    assert_eq!(
        header_of(host, Map::ResponseHeaders, header::CACHE).as_deref(),
        Some("MISS")
    );
    assert_eq!(
        state_of(host, state::PROMPT_TOKENS).as_deref(),
        Some("5"),
        "a live answer is charged"
    );
    assert_eq!(
        json_of(&host.body(Buffer::ResponseBody))["choices"][0]["message"]["content"],
        "4"
    );

    let mut again = chat(&chain, QUESTION);
    assert_eq!(
        again.request_body(QUESTION.as_bytes(), true),
        Action::Pause,
        "answered by the cache"
    );
    host.put_property(&["response", "code_details"], b"");
    let reply = again.reply_back().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        header_of(host, Map::ResponseHeaders, header::CACHE).as_deref(),
        Some("HIT")
    );
    assert_eq!(
        json_of(&host.body(Buffer::ResponseBody))["choices"][0]["message"]["content"],
        "4",
        "body-transform translated the hit as a live answer"
    );
    again.log();
    assert_eq!(state_of(host, state::CACHE).as_deref(), Some("HIT"));
    assert_eq!(
        state_of(host, state::PROMPT_TOKENS),
        None,
        "rate-limit released the hit's reservation instead of charging its usage"
    );
}

#[test]
fn an_answer_body_transform_refused_is_not_stored_by_the_cache() {
    // Without held headers the upstream's 200 has left when the answer proves untranslatable:
    // the client gets an error body under it, and only the filter state tells the cache.
    let chain = gateway_holding(false);
    let host = chain.host();
    let mut s = chat(&chain, QUESTION);
    assert_eq!(s.request_body(QUESTION.as_bytes(), true), Action::Continue);
    host.put_property(&["response", "code_details"], b"via_upstream");
    let ok = [(":status", "200"), ("content-type", "application/json")];
    assert_eq!(s.response_headers(&ok, false), Action::Continue);
    // A Messages answer the cache would store, but one body-transform cannot translate.
    let bad = r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"mystery"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}"#;
    s.response_body(bad.as_bytes(), true);
    assert!(state_of(host, state::BAD_UPSTREAM).is_some(), "{:?}", host.mutations());
    host.put_property(&["response", "code"], &200u64.to_le_bytes());
    s.log();
    assert_eq!(
        host.metric("portico_cache_stores_total;route=llm;outcome=invalid"),
        Some(1),
        "{:?}",
        host.mutations()
    );

    let mut again = chat(&chain, QUESTION);
    assert_eq!(
        again.request_body(QUESTION.as_bytes(), true),
        Action::Continue,
        "nothing was stored: a miss again"
    );
}
