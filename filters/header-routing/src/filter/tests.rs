//! Shell tests on the mock host, compiled only under #[cfg(test)] (declared in filter.rs).

use super::*;
use portico_core::contract::header;

use std::time::{Duration, UNIX_EPOCH};

use portico_core::analytics::series;
use portico_host::host::{Buffer, Map};
use portico_host::mock::{Action, MockEnvoy, MockHost, Mutation};
use portico_host::{entry, Entry};
use serde_json::json;

static REGISTRY: &[Entry] = &[entry::<HeaderRouting>()];

/// 2023-11-14T22:13:20Z, when every test request starts.
const START_NANOS: u64 = 1_700_000_000_000_000_000;

fn start(config: &serde_json::Value) -> MockEnvoy {
    let envoy = MockEnvoy::start(REGISTRY, NAME, &config.to_string(), false).unwrap_or_else(|e| panic!("{e:?}"));
    envoy.host().set_now(UNIX_EPOCH + Duration::from_nanos(START_NANOS));
    let start = i64::try_from(START_NANOS).unwrap_or_default();
    envoy.host().put_property(&["request", "time"], &start.to_le_bytes());
    envoy
}

fn gateway() -> MockEnvoy {
    start(&json!({
        "backends": [
            {"name": "a", "cluster": "ca"},
            {"name": "b", "cluster": "cb", "headers": {"add": {"x-served-via": "portico"}}},
            {"name": "oai", "cluster": "openai", "format": "openai", "credential": {"bearer": "sk-upstream"}},
            {"name": "ant", "cluster": "anthropic", "format": "anthropic", "credential": {"api_key": "ak-upstream"}}
        ],
        "routes": [
            {"name": "plain", "match": {"path": "/plain"}, "backend": "a"},
            {"name": "ab", "match": {"path": "/ab"}, "split": {"by": {"cookie": "uid"},
                "variants": [{"name": "control", "backend": "a", "weight": 1}, {"name": "canary", "backend": "b", "weight": 1}]}},
            {"name": "chat", "match": {"path": "/v1/chat/completions"}, "models": {"aliases": {
                "fast": {"backend": "ant", "model": "claude-haiku"},
                "gpt-4o": {"backend": "oai"}
            }}}
        ],
        "per_consumer_metrics": true
    }))
}

fn lift_model(host: &MockHost, model: &str) {
    host.put_property(&["metadata", "filter_metadata", "portico", "model"], model.as_bytes());
}

fn header(host: &MockHost, map: Map, name: &str) -> Option<String> {
    host.headers(map).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn metric(host: &MockHost, name: &'static str, labels: &[(&str, &str)]) -> Option<u64> {
    host.metric(&series(name, labels))
}

fn requests(host: &MockHost, route: &str, model: &str, backend: &str, variant: &str, outcome: &str) -> Option<u64> {
    let labels = [
        ("route", route),
        ("tier", ""),
        ("model", model),
        ("backend", backend),
        ("variant", variant),
        ("outcome", outcome),
    ];
    metric(host, "portico_requests_total", &labels)
}

const CHAT: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    ("content-type", "application/json"),
    ("content-length", "40"),
    ("authorization", "Bearer client-gateway-key"),
];

#[test]
fn a_plain_route_names_its_cluster_and_counts_the_request_in_log() {
    let envoy = gateway();
    let host = envoy.host();
    let mut s = envoy.stream();
    let action = s.request_headers(&[(":method", "GET"), (":path", "/plain")], true);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        header(host, Map::RequestHeaders, "x-portico-cluster").as_deref(),
        Some("ca")
    );
    assert!(host
        .mutations()
        .contains(&Mutation::ForeignFunction("clear_route_cache".to_owned())));
    host.advance(Duration::from_millis(12));
    assert_eq!(s.response_headers(&[(":status", "200")], true), Action::Continue);
    s.log();
    assert_eq!(requests(host, "plain", "", "a", "", "success"), Some(1));
    let timing = [("route", "plain"), ("tier", ""), ("model", ""), ("backend", "a")];
    assert_eq!(metric(host, "portico_request_duration_ms", &timing), Some(12));
    assert_eq!(
        metric(
            host,
            "portico_consumer_requests_total",
            &[("consumer", "anonymous"), ("outcome", "success")]
        ),
        Some(1)
    );
}

#[test]
fn a_sticky_split_keeps_a_cookie_on_its_variant_and_tells_the_client() {
    let envoy = gateway();
    let host = envoy.host();
    let mut first: Vec<(String, String)> = Vec::new();
    for round in 0..2 {
        for i in 0..8 {
            let uid = format!("u{i}");
            let cookie = format!("theme=dark; uid={uid}");
            let mut s = envoy.stream();
            let _ = s.request_headers(&[(":method", "GET"), (":path", "/ab"), ("cookie", &cookie)], true);
            let variant = header(host, Map::RequestHeaders, header::VARIANT).unwrap_or_default();
            let cluster = header(host, Map::RequestHeaders, "x-portico-cluster").unwrap_or_default();
            assert_eq!(cluster, if variant == "control" { "ca" } else { "cb" });
            let _ = s.response_headers(&[(":status", "200")], true);
            assert_eq!(
                header(host, Map::ResponseHeaders, header::VARIANT),
                Some(variant.clone())
            );
            // Today's filter sets no cookie of its own: the client's `uid` is the sticky key.
            assert_eq!(header(host, Map::ResponseHeaders, "set-cookie"), None);
            if round == 0 {
                first.push((uid, variant));
            } else {
                assert_eq!(first.get(i), Some(&(uid, variant)), "a caller moved");
            }
        }
    }
    assert!(
        first.iter().any(|(_, v)| v == "control") && first.iter().any(|(_, v)| v == "canary"),
        "{first:?}"
    );
}

#[test]
fn a_model_route_goes_by_the_lifted_model_and_rewrites_it_in_the_body() {
    let envoy = gateway();
    let host = envoy.host();
    lift_model(host, "fast");
    let mut s = envoy.stream();
    assert_eq!(s.request_headers(CHAT, false), Action::Continue);
    assert_eq!(
        header(host, Map::RequestHeaders, "x-portico-cluster").as_deref(),
        Some("anthropic")
    );
    assert_eq!(
        header(host, Map::RequestHeaders, header::BACKEND_FORMAT).as_deref(),
        Some("anthropic")
    );
    assert_eq!(
        header(host, Map::RequestHeaders, "content-length"),
        None,
        "the body changes size"
    );
    assert_eq!(
        s.request_body(br#"{"model":"fast","#, false),
        Action::Pause,
        "buffering"
    );
    let body = br#"{"model":"fast","messages":[]}"#;
    assert_eq!(s.request_body(body, true), Action::Continue);
    let sent: serde_json::Value = serde_json::from_slice(&host.body(Buffer::RequestBody)).unwrap();
    assert_eq!(sent, json!({"model": "claude-haiku", "messages": []}));
    let _ = s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false);
    host.advance(Duration::from_millis(30));
    let _ = s.response_body(b"data: {}\n\n", false);
    host.advance(Duration::from_millis(70));
    let _ = s.response_body(b"data: [DONE]\n\n", true);
    s.log();
    assert_eq!(requests(host, "chat", "claude-haiku", "ant", "", "success"), Some(1));
    let timing = [
        ("route", "chat"),
        ("tier", ""),
        ("model", "claude-haiku"),
        ("backend", "ant"),
    ];
    assert_eq!(metric(host, "portico_time_to_first_token_ms", &timing), Some(30));
    assert_eq!(metric(host, "portico_request_duration_ms", &timing), Some(100));
}

#[test]
fn the_backend_credential_replaces_the_clients() {
    let envoy = gateway();
    let host = envoy.host();
    lift_model(host, "gpt-4o");
    let mut headers = CHAT.to_vec();
    headers.push(("x-api-key", "client-key"));
    let mut s = envoy.stream();
    let _ = s.request_headers(&headers, false);
    assert_eq!(
        header(host, Map::RequestHeaders, "authorization").as_deref(),
        Some("Bearer sk-upstream")
    );
    assert_eq!(header(host, Map::RequestHeaders, "x-api-key"), None);
    let _ = s.request_body(br#"{"model":"gpt-4o"}"#, true);
    assert!(
        !host.mutations().iter().any(|m| matches!(m, Mutation::SetBuffer(..))),
        "the model is not rewritten: the body goes as sent"
    );
    let _ = s.response_headers(&[(":status", "200")], true);
    assert!(host
        .headers(Map::ResponseHeaders)
        .iter()
        .all(|(_, v)| !v.contains("sk-upstream")));
}

#[test]
fn hostile_requests_are_refused_in_the_clients_format_never_routed_as_they_ask() {
    let envoy = gateway();
    let host = envoy.host();
    lift_model(host, "fast");
    // A client naming its own cluster, with a body whose `model` a backend may read otherwise.
    let mut headers = CHAT.to_vec();
    headers.push(("x-portico-cluster", "internal-admin"));
    headers.push(("x-bytes", "\u{fffd}\u{0}"));
    let mut s = envoy.stream();
    let _ = s.request_headers(&headers, false);
    assert_eq!(
        header(host, Map::RequestHeaders, "x-portico-cluster").as_deref(),
        Some("anthropic")
    );
    assert_eq!(
        s.request_body(br#"{"model":"fast","model":"gpt-4o"}"#, true),
        Action::Pause
    );
    let reply = host.reply().unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.details, "portico-header-routing.duplicate_json_key");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], "duplicate_json_key");
    // The reply's status as the log reads it, and a garbled one.
    let _ = s.response_headers(&[(":status", "400")], true);
    s.log();
    assert_eq!(
        requests(host, "chat", "claude-haiku", "ant", "", "client_error"),
        Some(1)
    );

    // Not JSON at all, with a status that is not a number.
    let envoy = gateway();
    let host = envoy.host();
    host.put_property(&["metadata", "filter_metadata", "portico", "json_error"], b"true");
    let mut s = envoy.stream();
    let _ = s.request_headers(CHAT, false);
    assert_eq!(
        host.reply().map(|r| (r.status, r.code)),
        Some((400, Some("invalid_json")))
    );
    let _ = s.request_body(b"\xff\xfe", true);
    let _ = s.response_headers(&[(":status", "4x")], true);
    s.log();
    assert_eq!(requests(host, "chat", "", "none", "none", "cancelled"), Some(1));
    // A path no route serves is refused, not sent to some cluster.
    let _ = host.take_mutations();
    let mut s = envoy.stream();
    let _ = s.request_headers(&[(":method", "GET"), (":path", "/admin/../../etc")], true);
    assert_eq!(host.reply().map(|r| (r.status, r.code)), Some((404, Some("no_route"))));
    assert!(!host
        .mutations()
        .iter()
        .any(|m| matches!(m, Mutation::SetHeader(_, name, _) if name == "x-portico-cluster")));
}

#[test]
fn a_request_refused_before_routing_is_counted_under_the_route_it_asked_for() {
    let envoy = gateway();
    let host = envoy.host();
    host.put_property(&["portico_tier"], b"gold");
    host.put_property(&["portico_consumer"], b"acme");
    let mut s = envoy.stream();
    // Auth answered 401 itself: this filter sees only the reply's headers and the log.
    host.set_headers(Map::RequestHeaders, &[(":method", "POST"), (":path", "/plain")]);
    let _ = s.response_headers(&[(":status", "401")], true);
    s.log();
    let labels = [
        ("route", "plain"),
        ("tier", "gold"),
        ("model", ""),
        ("backend", "none"),
        ("variant", "none"),
        ("outcome", "denied"),
    ];
    assert_eq!(metric(host, "portico_requests_total", &labels), Some(1));
    assert_eq!(
        metric(
            host,
            "portico_consumer_requests_total",
            &[("consumer", "acme"), ("outcome", "denied")]
        ),
        Some(1)
    );
}

/// Host calls per request on the host layer (issue 14: measured by the port).
#[test]
fn host_calls_per_request_are_bounded() {
    let envoy = gateway();
    let host = envoy.host();
    let plain = [(":method", "GET"), (":path", "/plain")];
    let mut first = envoy.stream();
    let _ = first.request_headers(&plain, true);
    let _ = first.response_headers(&[(":status", "200")], true);
    first.log();
    let mut s = envoy.stream();
    let _ = s.request_headers(&plain, true);
    let _ = s.response_headers(&[(":status", "200")], true);
    s.log();
    let counts = s.counts();
    println!("plain route: {counts}");
    // The map once (no body follows, so nothing was lifted to read); the cluster header,
    // route and backend state, the route cache.
    assert_eq!(counts.request_headers, 1 + 4, "{counts}");
    // content-type, for time to first token.
    assert_eq!(counts.response_headers, 1, "{counts}");
    // :status, request.time and the clock, three series, auth's consumer state.
    assert_eq!(counts.log, 1 + 2 + 3 + 1, "{counts}");
    assert_eq!(counts.total(), 13, "{counts}");

    lift_model(host, "fast");
    let mut s = envoy.stream();
    let _ = s.request_headers(CHAT, false);
    let _ = s.request_body(br#"{"model":"fast","messages":[]}"#, true);
    let _ = s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false);
    let _ = s.response_body(b"data: {}\n\n", false);
    let _ = s.response_body(b"data: [DONE]\n\n", true);
    s.log();
    let counts = s.counts();
    println!("model route: {counts}");
    // The map, model and json_error; the credential (3), format, content-length, cluster,
    // three states, the route cache.
    assert_eq!(counts.request_headers, 3 + 3 + 3 + 3 + 1, "{counts}");
    // The body read and written.
    assert_eq!(counts.request_body, 2, "{counts}");
    // request.time, the clock and a new series, first chunk only.
    assert_eq!(counts.response_body, 2 + 2, "{counts}");
}
