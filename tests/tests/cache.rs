//! The cache filter through a real Envoy at `--concurrency 2`, behind json_to_metadata and
//! rate-limit as in envoy/gateway.yaml, in front of a mock OpenAI-format backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::thread;
use std::time::Duration;

use portico_tests::envoy::{eventually, json_to_metadata, EnvoyConfig, Gateway};
use portico_tests::http::{Request, Response};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

fn cache_config(route: Value, limits: Value) -> Value {
    let mut config = json!({"routes": [route]});
    if let (Some(config), Some(limits)) = (config.as_object_mut(), limits.as_object()) {
        config.extend(limits.clone());
    }
    config
}

fn chat_route(ttl_seconds: u64) -> Value {
    json!({"name": "chat", "match": {"path": CHAT, "methods": ["POST"]}, "ttl_seconds": ttl_seconds})
}

/// json_to_metadata → rate-limit (optional) → cache → router, routed by `x-portico-cluster`
/// to one of two clusters that both reach the same mock backend.
fn gateway(cache: &Value, rate_limit: Option<&Value>) -> (Gateway, Upstream) {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let mut envoy = EnvoyConfig::new(upstream.addr)
        .route_by_header("x-portico-cluster")
        .cluster("other", upstream.addr)
        .native(json_to_metadata(&["model", "max_tokens", "stream"]));
    if let Some(config) = rate_limit {
        envoy = envoy.wasm("rate-limit", config);
    }
    (Gateway::start(&envoy.wasm("cache", cache)), upstream)
}

fn body(model: &str, system: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "What is 2+2?"}],
        "temperature": 0
    });
    if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
        b.extend(extra.clone());
    }
    b
}

fn chat(consumer: &str, body: &Value) -> Request {
    chat_via("upstream", consumer, body)
}

/// A chat request routed to `cluster`, as header-routing would have named it.
fn chat_via(cluster: &str, consumer: &str, body: &Value) -> Request {
    Request::new("POST", CHAT)
        .header("content-type", "application/json")
        .header("x-portico-consumer", consumer)
        .header("x-portico-tier", "pro")
        .header("x-portico-cluster", cluster)
        .header("x-mock-usage", "10,20")
        .body(body.to_string())
}

fn base() -> Value {
    body("gpt-test", "Be brief.", json!({}))
}

fn cache_status(r: &Response) -> &str {
    r.header("x-portico-cache").unwrap_or("(none)")
}

/// Which upstream request produced this answer (a replay shows the original's number).
fn origin(r: &Response) -> String {
    r.header("x-upstream-request").unwrap_or("(none)").to_owned()
}

#[test]
fn a_repeated_request_is_answered_from_the_cache_and_reaches_the_upstream_once() {
    let (gw, upstream) = gateway(&cache_config(chat_route(300), json!({})), None);
    let first = chat("alice", &base()).send(gw.addr);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(cache_status(&first), "MISS");
    assert_eq!(first.header("age"), None);
    assert_eq!(upstream.requests(), 1);

    // The same request again, with its keys in another order and other spacing.
    let reordered = r#"{ "temperature": 0, "model": "gpt-test",
        "messages": [{"content": "Be brief.", "role": "system"}, {"role": "user", "content": "What is 2+2?"}] }"#;
    for (i, request) in [chat("alice", &base()), chat("alice", &base()).body(reordered)]
        .iter()
        .enumerate()
    {
        let hit = request.send(gw.addr);
        assert_eq!(hit.status, 200, "{}", hit.text());
        assert_eq!(cache_status(&hit), "HIT", "repeat {i}");
        assert_eq!(hit.body, first.body, "the stored answer, byte for byte");
        assert_eq!(hit.header("content-type"), Some("application/json"));
        let content_types = hit.headers.iter().filter(|(n, _)| n == "content-type").count();
        assert_eq!(content_types, 1, "{:?}", hit.headers);
        assert_eq!(origin(&hit), origin(&first));
        let age: u64 = hit.header("age").expect("age on a hit").parse().unwrap();
        assert!(age <= 2, "age {age}");
    }
    // Answered in the request body callback: the upstream never received a complete request
    // for either hit.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(upstream.requests(), 1);

    assert!(eventually(Duration::from_secs(3), || {
        gw.metric("portico_cache_requests_total", &[("route", "chat"), ("status", "hit")]) == 2
            && gw.metric("portico_cache_requests_total", &[("route", "chat"), ("status", "miss")]) == 1
            && gw.metric("portico_cache_stores_total", &[("outcome", "stored")]) == 1
    }));
    gw.assert_no_wasm_panic();
}

#[test]
fn consumers_models_system_prompts_parameters_and_backends_never_share_an_entry() {
    let (gw, upstream) = gateway(&cache_config(chat_route(300), json!({})), None);
    assert_eq!(cache_status(&chat("alice", &base()).send(gw.addr)), "MISS");
    assert_eq!(cache_status(&chat("alice", &base()).send(gw.addr)), "HIT");

    let variants: Vec<(&str, Request)> = vec![
        ("another consumer", chat("bob", &base())),
        (
            "another model",
            chat("alice", &body("gpt-other", "Be brief.", json!({}))),
        ),
        (
            "another system prompt",
            chat("alice", &body("gpt-test", "Be verbose.", json!({}))),
        ),
        (
            "another parameter",
            chat("alice", &body("gpt-test", "Be brief.", json!({"max_tokens": 7}))),
        ),
        ("another backend", chat_via("other", "alice", &base())),
    ];
    for (what, request) in &variants {
        let before = upstream.requests();
        let r = request.send(gw.addr);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(cache_status(&r), "MISS", "{what} must not get another request's answer");
        assert_eq!(upstream.requests(), before + 1, "{what} went upstream");
        // Each now has its own entry, with its own answer.
        let again = request.send(gw.addr);
        assert_eq!(cache_status(&again), "HIT", "{what}");
        assert_eq!(again.body, r.body, "{what}");
    }
    let other_model = chat("alice", &body("gpt-other", "Be brief.", json!({}))).send(gw.addr);
    assert_eq!(other_model.json()["model"], "gpt-other");
    let mine = chat("alice", &base()).send(gw.addr);
    assert_eq!(mine.json()["model"], "gpt-test");
    gw.assert_no_wasm_panic();
}

#[test]
fn entries_expire_after_their_route_ttl() {
    let (gw, upstream) = gateway(&cache_config(chat_route(1), json!({})), None);
    assert_eq!(cache_status(&chat("alice", &base()).send(gw.addr)), "MISS");
    assert_eq!(cache_status(&chat("alice", &base()).send(gw.addr)), "HIT");
    thread::sleep(Duration::from_millis(1100));
    let r = chat("alice", &base()).send(gw.addr);
    assert_eq!(cache_status(&r), "MISS", "expired after 1 s");
    assert_eq!(upstream.requests(), 2);
    assert_eq!(
        cache_status(&chat("alice", &base()).send(gw.addr)),
        "HIT",
        "stored again"
    );
}

#[test]
fn client_and_upstream_cache_directives_and_unsafe_requests_are_honoured() {
    let route = json!({"name": "chat", "match": {"path": CHAT}, "ttl_seconds": 300, "opt_in_header": "x-cache-ok"});
    let (gw, upstream) = gateway(&cache_config(route, json!({})), None);
    let send = |r: Request| r.send(gw.addr);

    // Client no-store: goes upstream, nothing stored.
    let r = send(chat("a", &base()).header("cache-control", "no-store"));
    assert_eq!((r.status, cache_status(&r)), (200, "BYPASS"));
    assert_eq!(
        cache_status(&send(chat("a", &base()))),
        "MISS",
        "no-store stored nothing"
    );
    assert_eq!(cache_status(&send(chat("a", &base()))), "HIT");

    // Client no-cache: never answered from the cache, and the fresh answer replaces the entry.
    let before = upstream.requests();
    let fresh = send(chat("a", &base()).header("cache-control", "no-cache"));
    assert_eq!(cache_status(&fresh), "BYPASS");
    assert_eq!(upstream.requests(), before + 1);
    let after = send(chat("a", &base()));
    assert_eq!(cache_status(&after), "HIT");
    assert_eq!(origin(&after), origin(&fresh), "the refreshed answer is served");

    // Upstream no-store and private: not stored.
    for cc in ["no-store", "private, max-age=60"] {
        let b = body("gpt-test", cc, json!({}));
        for _ in 0..2 {
            let r = send(chat("a", &b).header("x-mock-cache-control", cc));
            assert_eq!(cache_status(&r), "MISS", "upstream said {cc}");
        }
    }

    // Not replay-safe: a temperature above 0, unless the client opts in; streams never.
    let warm = body("gpt-test", "Be brief.", json!({"temperature": 0.7}));
    for _ in 0..2 {
        assert_eq!(cache_status(&send(chat("a", &warm))), "BYPASS");
    }
    assert_eq!(cache_status(&send(chat("a", &warm).header("x-cache-ok", "1"))), "MISS");
    assert_eq!(cache_status(&send(chat("a", &warm).header("x-cache-ok", "1"))), "HIT");
    let stream = body("gpt-test", "Be brief.", json!({"stream": true}));
    for _ in 0..2 {
        let r = send(chat("a", &stream));
        assert_eq!((r.status, cache_status(&r)), (200, "BYPASS"));
        assert!(r.text().contains("data: "), "streamed through");
    }
    // Not JSON: passed through, not cached.
    let r = send(chat("a", &base()).body("not json"));
    assert_eq!(cache_status(&r), "BYPASS");

    assert!(eventually(Duration::from_secs(3), || {
        gw.metric("portico_cache_bypass_total", &[("reason", "not_replayable")]) == 2
            && gw.metric("portico_cache_bypass_total", &[("reason", "stream")]) == 2
            && gw.metric("portico_cache_bypass_total", &[("reason", "client_no_store")]) == 1
            && gw.metric("portico_cache_stores_total", &[("outcome", "not_storable")]) == 4
    }));
    gw.assert_no_wasm_panic();
}

#[test]
fn an_upstream_cannot_claim_its_answer_came_from_the_cache() {
    let (gw, _upstream) = gateway(&cache_config(chat_route(300), json!({})), None);
    // Not a cached route: whatever the backend says, no cache header reaches the client.
    let r = Request::new("GET", "/other")
        .header("x-portico-cluster", "upstream")
        .header("x-mock-header", "x-portico-cache=HIT")
        .send(gw.addr);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-portico-cache"), None);
    // A cached route: the cache's own verdict replaces the backend's claim.
    let r = chat("alice", &base())
        .header("x-mock-header", "x-portico-cache=HIT")
        .send(gw.addr);
    assert_eq!(cache_status(&r), "MISS");
    assert_eq!(r.headers.iter().filter(|(n, _)| n == "x-portico-cache").count(), 1);
}

#[test]
fn oversized_entries_are_not_stored_and_the_total_bound_holds_under_many_keys() {
    let limits = json!({"max_entries": 16, "max_bytes": 8000, "max_entry_bytes": 2000});
    let (gw, upstream) = gateway(&cache_config(chat_route(300), limits), None);

    let big = chat("a", &base()).header("x-mock-pad", "3000");
    for _ in 0..2 {
        assert_eq!(
            cache_status(&big.send(gw.addr)),
            "MISS",
            "over max_entry_bytes: never stored"
        );
    }

    let question = |n: usize| body("gpt-test", &format!("Question {n}"), json!({}));
    for n in 0..60 {
        let r = chat("a", &question(n)).header("x-mock-pad", "400").send(gw.addr);
        assert_eq!(cache_status(&r), "MISS", "question {n}");
    }
    assert!(eventually(Duration::from_secs(3), || gw
        .metric("portico_cache_stores_total", &[("outcome", "stored")])
        == 60));
    let bytes = gw.metric("portico_cache_bytes", &[]);
    let entries = gw.metric("portico_cache_entries", &[]);
    assert!(bytes > 0 && bytes <= 8000, "{bytes} bytes held");
    assert!(entries > 0 && entries <= 16, "{entries} entries held");
    assert!(gw.metric("portico_cache_evictions_total", &[]) >= 40);
    assert_eq!(gw.metric("portico_cache_stores_total", &[("outcome", "too_large")]), 2);

    // The newest answers are kept; the oldest were evicted.
    let before = upstream.requests();
    let newest = chat("a", &question(59)).header("x-mock-pad", "400").send(gw.addr);
    assert_eq!(cache_status(&newest), "HIT");
    let oldest = chat("a", &question(0)).header("x-mock-pad", "400").send(gw.addr);
    assert_eq!(cache_status(&oldest), "MISS");
    assert_eq!(upstream.requests(), before + 1);
    gw.assert_no_wasm_panic();
}

#[test]
fn a_hit_charges_no_tokens_but_counts_against_request_limits() {
    let rate_limit = json!({
        "rules": [{"name": "per_consumer", "key": ["consumer"], "limit": {"requests": 3, "period_seconds": 3600}}],
        "token_quotas": [{"name": "llm", "match": {"path": "/v1/{*rest}"}, "key": ["consumer"],
                          "budgets": [{"tokens": 100000, "period_seconds": 31536000}]}]
    });
    let (gw, upstream) = gateway(&cache_config(chat_route(300), json!({})), Some(&rate_limit));
    let remaining = |r: &Response| -> u64 {
        r.header("x-ratelimit-remaining-tokens")
            .unwrap_or_else(|| panic!("no token headers: {:?}", r.headers))
            .parse()
            .unwrap()
    };
    let miss = chat("alice", &base()).send(gw.addr);
    assert_eq!(cache_status(&miss), "MISS");
    let estimate = 100_000 - remaining(&miss);
    thread::sleep(Duration::from_millis(50));

    // The miss settled to its usage (10 + 20); each hit reserves its estimate at admission
    // and releases all of it when the hit comes back.
    let hit1 = chat("alice", &base()).send(gw.addr);
    assert_eq!(cache_status(&hit1), "HIT");
    assert_eq!(remaining(&hit1), 100_000 - 30 - estimate);
    thread::sleep(Duration::from_millis(50));
    let hit2 = chat("alice", &base()).send(gw.addr);
    assert_eq!(cache_status(&hit2), "HIT");
    assert_eq!(
        remaining(&hit2),
        100_000 - 30 - estimate,
        "the first hit charged nothing"
    );
    assert_eq!(upstream.requests(), 1);

    // Hits are requests all the same: the fourth in the hour is refused.
    let refused = chat("alice", &base()).send(gw.addr);
    assert_eq!(refused.status, 429, "{}", refused.text());

    // Only the upstream's answer counted tokens.
    assert!(eventually(Duration::from_secs(3), || {
        gw.metric("portico_tokens_total", &[("model", "gpt-test"), ("kind", "prompt")]) == 10
            && gw.metric("portico_tokens_total", &[("model", "gpt-test"), ("kind", "completion")]) == 20
    }));
    gw.assert_no_wasm_panic();
}

/// Every POST below `/`, replayed when deterministic: chat, messages, embeddings and others.
fn any_route() -> Value {
    json!({"name": "api", "match": {"path": "/{*rest}", "methods": ["POST"]}, "ttl_seconds": 300})
}

fn messages_body(system: &str) -> Value {
    json!({"model": "claude-test", "max_tokens": 50, "temperature": 0, "system": system,
           "messages": [{"role": "user", "content": "What is 2+2?"}]})
}

/// An Anthropic Messages request the mock plays a backend for.
fn messages(system: &str) -> Request {
    Request::new("POST", "/v1/messages")
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-portico-consumer", "alice")
        .header("x-portico-cluster", "upstream")
        .header("x-mock-usage", "10,20")
        .body(messages_body(system).to_string())
}

/// A request the mock echoes (not a model endpoint), to `path`.
fn echoed(path: &str, n: usize) -> Request {
    Request::new("POST", path)
        .header("content-type", "application/json")
        .header("x-portico-consumer", "alice")
        .header("x-portico-cluster", "upstream")
        .body(json!({"input": format!("text {n}"), "temperature": 0}).to_string())
}

/// Sends `request` twice: neither answer may come from the cache, and both reach the upstream.
fn never_replayed(gw: &Gateway, upstream: &Upstream, what: &str, request: &Request) {
    for attempt in 0..2 {
        let before = upstream.requests();
        let r = request.send(gw.addr);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(cache_status(&r), "MISS", "{what}, attempt {attempt}");
        assert_eq!(
            upstream.requests(),
            before + 1,
            "{what}, attempt {attempt} went upstream"
        );
    }
}

/// Sends `request` twice: the first fills the cache, the second is answered from it.
fn replayed(gw: &Gateway, upstream: &Upstream, what: &str, request: &Request) -> Response {
    let before = upstream.requests();
    let first = request.send(gw.addr);
    assert_eq!(
        (first.status, cache_status(&first)),
        (200, "MISS"),
        "{what}: {}",
        first.text()
    );
    let again = request.send(gw.addr);
    assert_eq!(
        (again.status, cache_status(&again)),
        (200, "HIT"),
        "{what}: {}",
        again.text()
    );
    assert_eq!(again.body, first.body, "{what}");
    assert_eq!(upstream.requests(), before + 1, "{what}");
    again
}

#[test]
fn broken_or_wrong_shape_answers_are_never_replayed() {
    let (gw, upstream) = gateway(&cache_config(any_route(), json!({})), None);
    let mut invalid = 0;
    // OpenAI Chat Completions: a JSON object whose `choices` hold messages.
    for kind in ["garbage", "truncated", "empty", "wrong_shape", "text"] {
        let request = chat("alice", &body("gpt-test", kind, json!({})));
        never_replayed(&gw, &upstream, kind, &request.clone().header("x-mock-answer", kind));
        invalid += 2;
        // The same request answered properly is stored as usual.
        let hit = replayed(&gw, &upstream, kind, &request);
        assert_eq!(hit.json()["object"], "chat.completion");
    }
    // Anthropic Messages: `"type": "message"` with a `content` array.
    for kind in ["truncated", "wrong_shape", "empty"] {
        never_replayed(&gw, &upstream, kind, &messages(kind).header("x-mock-answer", kind));
        invalid += 2;
        let hit = replayed(&gw, &upstream, kind, &messages(kind));
        assert_eq!(hit.json()["type"], "message");
    }
    // Embeddings: a `data` array (the mock only echoes here, which is no embedding answer).
    never_replayed(&gw, &upstream, "embeddings", &echoed("/v1/embeddings", 0));
    invalid += 2;
    // Any other path: a JSON object or array, sent as JSON, uncompressed.
    replayed(&gw, &upstream, "an echo", &echoed("/api/things", 1));
    let spoiled = [
        ("garbage", echoed("/api/things", 2).header("x-mock-answer", "garbage")),
        ("text/plain", echoed("/api/things", 3).header("x-mock-answer", "text")),
        ("empty", echoed("/api/things", 4).header("x-mock-answer", "empty")),
        (
            "gzip",
            echoed("/api/things", 5).header("x-mock-header", "content-encoding=gzip"),
        ),
    ];
    for (what, request) in &spoiled {
        never_replayed(&gw, &upstream, what, request);
        invalid += 2;
    }
    assert!(
        eventually(Duration::from_secs(3), || gw
            .metric("portico_cache_stores_total", &[("outcome", "invalid")])
            == invalid),
        "invalid: {} of {invalid}",
        gw.metric("portico_cache_stores_total", &[("outcome", "invalid")])
    );
    assert_eq!(gw.metric("portico_cache_stores_total", &[("outcome", "stored")]), 9);
    assert!(gw.log().contains("not storing the answer for route api: not_json"));
    gw.assert_no_wasm_panic();
}

#[test]
fn cached_routes_ask_the_upstream_for_uncompressed_answers() {
    let (gw, _upstream) = gateway(&cache_config(any_route(), json!({})), None);
    let r = echoed("/api/things", 0)
        .header("accept-encoding", "gzip, br")
        .send(gw.addr);
    assert_eq!(cache_status(&r), "MISS");
    assert_eq!(r.upstream_header("accept-encoding"), None, "stripped on a cached route");
    let r = Request::new("GET", "/api/things")
        .header("accept-encoding", "gzip")
        .header("x-portico-cluster", "upstream")
        .send(gw.addr);
    assert_eq!(r.header("x-portico-cache"), None, "GET is not cached here");
    assert_eq!(r.upstream_header("accept-encoding").as_deref(), Some("gzip"));
}

#[test]
fn only_an_explicit_zero_temperature_is_replayed_by_default() {
    let route = json!({"name": "v1", "match": {"path": "/v1/{*rest}"}, "opt_in_header": "x-cache-ok"});
    let (gw, upstream) = gateway(&cache_config(route, json!({})), None);
    let sampled = |extra: Value| {
        let mut b = base();
        b.as_object_mut().unwrap().remove("temperature");
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    // Both APIs default temperature to 1: without it, a request asks for a sampled answer.
    // top_p, top_k and seed do not make it deterministic either.
    let cases = [
        ("no temperature", sampled(json!({}))),
        ("temperature null", sampled(json!({"temperature": null}))),
        ("top_p 0", sampled(json!({"top_p": 0}))),
        ("seed", sampled(json!({"seed": 7}))),
        (
            "temperature 0.2 and seed",
            sampled(json!({"temperature": 0.2, "seed": 7})),
        ),
    ];
    for (what, b) in &cases {
        for _ in 0..2 {
            let before = upstream.requests();
            let r = chat("alice", b).send(gw.addr);
            assert_eq!((r.status, cache_status(&r)), (200, "BYPASS"), "{what}");
            assert_eq!(upstream.requests(), before + 1, "{what}");
        }
    }
    // Anthropic's greedy `top_k: 1` is not enough either (the cache reads one rule).
    let mut greedy = messages_body("Be brief.");
    greedy.as_object_mut().unwrap().remove("temperature");
    greedy["top_k"] = json!(1);
    for _ in 0..2 {
        let before = upstream.requests();
        let r = messages("Be brief.").body(greedy.to_string()).send(gw.addr);
        assert_eq!((r.status, cache_status(&r)), (200, "BYPASS"), "{}", r.text());
        assert_eq!(upstream.requests(), before + 1);
    }
    // The client may still opt in, and temperature 0 (with any of the others) is replayed.
    replayed(
        &gw,
        &upstream,
        "opted in",
        &chat("alice", &sampled(json!({}))).header("x-cache-ok", "1"),
    );
    for (what, extra) in [
        ("temperature 0", json!({"temperature": 0})),
        ("temperature 0.0 and n", json!({"temperature": 0.0, "n": 2})),
        (
            "temperature 0 and seed",
            json!({"temperature": 0, "seed": 7, "top_p": 0.5}),
        ),
    ] {
        replayed(&gw, &upstream, what, &chat("alice", &sampled(extra)));
    }
    assert!(eventually(Duration::from_secs(3), || gw
        .metric("portico_cache_bypass_total", &[("reason", "not_replayable")])
        == 12));
    gw.assert_no_wasm_panic();
}

#[test]
fn bodies_that_repeat_a_key_are_never_replayed() {
    let (gw, upstream) = gateway(&cache_config(chat_route(300), json!({})), None);
    // Canonical JSON keeps one value per key: these would share an entry with the body that
    // holds only the last value, although a backend reading the first answers otherwise.
    let bodies = [
        r#"{"model":"gpt-other","model":"gpt-test","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-test","temperature":0,"messages":[{"role":"user","content":"a","content":"hi"}]}"#,
    ];
    for b in bodies {
        for _ in 0..2 {
            let before = upstream.requests();
            let r = chat("alice", &base()).body(b).send(gw.addr);
            assert_eq!((r.status, cache_status(&r)), (200, "BYPASS"), "{b}");
            assert_eq!(upstream.requests(), before + 1, "{b}");
        }
    }
    assert!(eventually(Duration::from_secs(3), || gw
        .metric("portico_cache_bypass_total", &[("reason", "duplicate_key")])
        == 4));
    gw.assert_no_wasm_panic();
}

#[test]
fn answers_not_stored_cannot_flood_the_log() {
    let (gw, _upstream) = gateway(&cache_config(chat_route(300), json!({})), None);
    let started = std::time::Instant::now();
    let mut conn = portico_tests::http::Connection::open(gw.addr).unwrap();
    let sent = 300;
    for i in 0..sent {
        // A distinct body each time: every answer is looked up, missed, and refused storage.
        let request =
            chat("flood", &body("gpt-test", &format!("flood {i}"), json!({}))).header("x-mock-answer", "garbage");
        let r = conn.send(&request).unwrap_or_else(|_| {
            conn = portico_tests::http::Connection::open(gw.addr).unwrap();
            conn.send(&request).unwrap()
        });
        assert_eq!(r.status, 200);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let log = gw.log();
    let lines = log.lines().filter(|l| l.contains("not storing the answer")).count() as u64;
    // Ten lines per second per worker (two workers), plus the window the run ended in.
    assert!(lines <= 2 * 10 * (seconds + 1), "{lines} lines in {seconds} s");
    assert!(lines >= 1, "still logged");
    gw.assert_no_wasm_panic();
}

#[test]
fn an_answer_the_translator_refuses_is_never_stored() {
    // The shipped gateway: the cache sits after body-transform, so it sees the Anthropic
    // backend's answer before the translator refuses it for the OpenAI client.
    let shipped = portico_tests::demo::Shipped::start(None);
    let key = portico_tests::demo::demo_env("PORTICO_DEMO_KEY");
    let request = |stop: Option<&str>| {
        let mut r = Request::new("POST", CHAT)
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .header("x-mock-usage", "5,5")
            .body(
                json!({"model": "fast", "temperature": 0, "max_tokens": 20,
                       "messages": [{"role": "user", "content": "pause, please"}]})
                .to_string(),
            );
        if let Some(stop) = stop {
            r = r.header("x-mock-stop", stop);
        }
        r
    };
    for attempt in 0..2 {
        let before = shipped.model.requests();
        let r = request(Some("pause_turn")).send(shipped.gw.addr);
        assert_eq!(r.status, 502, "attempt {attempt}: {}", r.text());
        assert_eq!(r.error_code(), "bad_upstream_response");
        assert_ne!(
            cache_status(&r),
            "HIT",
            "attempt {attempt}: a refused answer was replayed"
        );
        assert_eq!(shipped.model.requests(), before + 1, "attempt {attempt} went upstream");
    }
    // The same request answered properly is stored and replayed.
    let first = request(None).send(shipped.gw.addr);
    assert_eq!((first.status, cache_status(&first)), (200, "MISS"), "{}", first.text());
    let again = request(None).send(shipped.gw.addr);
    assert_eq!((again.status, cache_status(&again)), (200, "HIT"), "{}", again.text());
    shipped.gw.assert_no_wasm_panic();
}
