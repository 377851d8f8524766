//! The header-routing filter through a real Envoy: four mock upstreams as four clusters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::thread;
use std::time::Duration;

use portico_tests::demo::{demo_env, Shipped};
use portico_tests::envoy::{json_to_metadata, EnvoyConfig, Gateway};
use portico_tests::http::{get, Connection, Request, Response};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

struct Setup {
    gw: Gateway,
    upstreams: Vec<Upstream>,
}

impl Setup {
    /// Complete requests that reached any upstream.
    fn upstream_requests(&self) -> usize {
        self.upstreams.iter().map(Upstream::requests).sum()
    }
}

fn setup() -> Setup {
    let names = ["a", "b", "openai", "anthropic"];
    let upstreams: Vec<Upstream> = names
        .iter()
        .map(|n| Upstream::start_named("127.0.0.1:0", n).unwrap())
        .collect();
    let config = json!({
        "backends": [
            {"name": "a", "cluster": "a"},
            {"name": "b", "cluster": "b", "path_prefix": "/svc", "host_rewrite": "b.internal",
             "headers": {"add": {"x-env": "test"}, "remove": ["x-debug"]}},
            {"name": "openai", "cluster": "openai", "format": "openai", "credential": {"bearer": "sk-upstream-openai"}},
            {"name": "anthropic", "cluster": "anthropic", "format": "anthropic", "credential": {"api_key": "ak-upstream-anthropic"}}
        ],
        "flags": [
            {"name": "beta", "tiers": ["pro"], "consumers": ["apikey:vip"]},
            {"name": "half", "percent": 50}
        ],
        "routes": [
            {"name": "v2", "match": {"path": "/api/{*rest}", "headers": [{"name": "x-version", "exact": "2"}]}, "backend": "b"},
            {"name": "users", "match": {"path": "/users/{id}", "methods": ["GET"]}, "rewrite": "/v1/people/{id}", "backend": "a"},
            {"name": "pro", "match": {"path": "/pro/{*rest}", "tiers": ["pro"]}, "backend": "b"},
            {"name": "beta_only", "match": {"path": "/beta"}, "require_flag": "beta", "backend": "b"},
            {"name": "ab", "match": {"path": "/ab"}, "split": {"by": {"header": "x-user"}, "override_header": "x-portico-variant-override",
                "variants": [{"name": "control", "backend": "a", "weight": 90}, {"name": "canary", "backend": "b", "weight": 10}]}},
            {"name": "chat", "match": {"path": "/v1/chat/completions", "methods": ["POST"]}, "models": {
                "aliases": {
                    "fast": {"backend": "anthropic", "model": "claude-haiku-4-5"},
                    "gpt-4o": {"backend": "openai"}
                },
                "tiers": {"free": {"allow": ["fast"]}}
            }},
            {"name": "fallback", "match": {"path": "/api/{*rest}"}, "backend": "a"},
            {"name": "anything", "match": {"path": "/anything"}, "backend": "a"}
        ]
    });
    let mut envoy = EnvoyConfig::new(upstreams[0].addr).route_by_header("x-portico-cluster");
    for (name, up) in names.iter().zip(&upstreams) {
        envoy = envoy.cluster(name, up.addr);
    }
    let envoy = envoy
        .native(json_to_metadata(&["model", "max_tokens", "stream"]))
        .wasm("header-routing", &config);
    Setup {
        gw: Gateway::start(&envoy),
        upstreams,
    }
}

fn served_by(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["upstream"].as_str().unwrap().to_owned()
}

fn chat(model: Option<&str>) -> Request {
    let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "temperature": 0.5});
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-gateway-key")
        .header("x-api-key", "client-gateway-key")
        .body(body.to_string())
}

#[test]
fn path_and_header_routing_with_rewrites() {
    let s = setup();
    let r = get("/api/items?x=1")
        .header("x-version", "2")
        .header("x-debug", "1")
        .send(s.gw.addr);
    assert_eq!(served_by(&r), "b");
    assert_eq!(r.json()["path"], "/svc/api/items?x=1", "backend path prefix");
    assert_eq!(r.upstream_header("host").as_deref(), Some("b.internal"));
    assert_eq!(r.upstream_header("x-env").as_deref(), Some("test"));
    assert_eq!(r.upstream_header("x-debug"), None);
    assert_eq!(
        served_by(&get("/api/items").send(s.gw.addr)),
        "a",
        "no x-version: the later route"
    );

    let r = get("/users/42?expand=1").send(s.gw.addr);
    assert_eq!(served_by(&r), "a");
    assert_eq!(
        r.json()["path"],
        "/v1/people/42?expand=1",
        "captured parameter in the rewrite"
    );

    let r = Request::new("DELETE", "/users/42").send(s.gw.addr);
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "no_route");
    assert_eq!(r.json()["error"]["type"], "not_found_error");

    // A client cannot pick a cluster, or fake a variant, by sending the filter's headers.
    let r = get("/anything")
        .header("x-portico-cluster", "b")
        .header("x-portico-variant", "x")
        .send(s.gw.addr);
    assert_eq!(served_by(&r), "a");
    assert_eq!(r.upstream_header("x-portico-variant"), None);
    s.gw.assert_no_wasm_panic();
}

#[test]
fn tiers_and_flags_gate_routes() {
    let s = setup();
    assert_eq!(
        served_by(&get("/pro/x").header("x-portico-tier", "pro").send(s.gw.addr)),
        "b"
    );
    assert_eq!(
        get("/pro/x").header("x-portico-tier", "free").send(s.gw.addr).status,
        404
    );

    assert_eq!(
        get("/beta").send(s.gw.addr).status,
        404,
        "flag off: the route does not match"
    );
    for req in [
        get("/beta").header("x-portico-tier", "pro"),
        get("/beta").header("x-portico-consumer", "apikey:vip"),
    ] {
        let r = req.send(s.gw.addr);
        assert_eq!(served_by(&r), "b");
        assert!(r.header("x-portico-flags").unwrap().split(',').any(|f| f == "beta"));
        assert!(r.upstream_header("x-portico-flags").unwrap().contains("beta"));
    }
    // A 50% rollout by consumer: stable per consumer, about half of them.
    let on = |c: &str| {
        get("/anything")
            .header("x-portico-consumer", c)
            .send(s.gw.addr)
            .header("x-portico-flags")
            .is_some_and(|f| f.contains("half"))
    };
    let share = (0..400).filter(|i| on(&format!("consumer-{i}"))).count();
    assert!((160..=240).contains(&share), "{share}/400");
    assert!((0..20).all(|_| on("consumer-7") == on("consumer-7")));
}

#[test]
fn ab_splits_are_sticky_within_a_point_of_the_weights_and_overridable() {
    let s = setup();
    let first = get("/ab").header("x-user", "alice").send(s.gw.addr);
    let variant = first.header("x-portico-variant").unwrap().to_owned();
    assert_eq!(
        first.upstream_header("x-portico-variant").as_deref(),
        Some(variant.as_str())
    );
    for _ in 0..100 {
        let r = get("/ab").header("x-user", "alice").send(s.gw.addr);
        assert_eq!(
            r.header("x-portico-variant"),
            Some(variant.as_str()),
            "alice changed variant"
        );
    }

    // 10k distinct callers over kept-alive connections: canary within 10% +- 1 point.
    let addr = s.gw.addr;
    let handles: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut conn = Connection::open(addr).unwrap();
                (t..10_000)
                    .step_by(4)
                    .filter(|i| {
                        let r = conn.send(&get("/ab").header("x-user", format!("user-{i}"))).unwrap();
                        let canary = r.header("x-portico-variant") == Some("canary");
                        assert_eq!(canary, r.json()["upstream"] == "b", "variant and backend agree");
                        canary
                    })
                    .count()
            })
        })
        .collect();
    let canary: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!((900..=1100).contains(&canary), "canary served {canary} of 10000");

    let forced = get("/ab")
        .header("x-user", "alice")
        .header("x-portico-variant-override", "canary")
        .send(s.gw.addr);
    assert_eq!(served_by(&forced), "b");
    assert_eq!(forced.header("x-portico-variant"), Some("canary"));
}

#[test]
fn model_routing_rewrites_the_model_and_injects_provider_credentials() {
    let s = setup();
    let r = chat(Some("fast")).send(s.gw.addr);
    assert_eq!(served_by(&r), "anthropic");
    let body: Value = serde_json::from_str(r.json()["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["model"], "claude-haiku-4-5", "the alias became the upstream model");
    assert_eq!(body["messages"][0]["content"], "hi");
    assert_eq!(body["max_tokens"], 16);
    assert_eq!(r.upstream_header("x-api-key").as_deref(), Some("ak-upstream-anthropic"));
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "the client's credential is gone"
    );
    assert_eq!(
        r.upstream_header("x-portico-backend-format"),
        None,
        "internal header removed by the route"
    );
    assert!(
        !r.headers.iter().any(|(_, v)| v.contains("upstream-anthropic")),
        "provider key leaked to the client"
    );

    let r = chat(Some("gpt-4o")).send(s.gw.addr);
    assert_eq!(served_by(&r), "openai");
    let body: Value = serde_json::from_str(r.json()["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(
        r.upstream_header("authorization").as_deref(),
        Some("Bearer sk-upstream-openai")
    );
    assert_eq!(r.upstream_header("x-api-key"), None);

    // Tier policy: the free tier may only use `fast`.
    let r = chat(Some("gpt-4o")).header("x-portico-tier", "free").send(s.gw.addr);
    assert_eq!((r.status, r.error_code().as_str()), (403, "model_not_allowed"));
    assert_eq!(
        served_by(&chat(Some("fast")).header("x-portico-tier", "free").send(s.gw.addr)),
        "anthropic"
    );
}

#[test]
fn bad_model_requests_get_clear_errors_and_never_crash_the_vm() {
    let s = setup();
    let cases: Vec<(&str, Request, u16, &str)> = vec![
        ("unknown model", chat(Some("gpt-2")), 400, "unknown_model"),
        ("no model", chat(None), 400, "missing_model"),
        (
            "malformed JSON",
            Request::new("POST", "/v1/chat/completions")
                .header("content-type", "application/json")
                .body("{\"model\": \"fast\", "),
            400,
            "invalid_json",
        ),
        (
            "not JSON",
            Request::new("POST", "/v1/chat/completions")
                .header("content-type", "text/plain")
                .body("model=fast"),
            400,
            "invalid_json",
        ),
        (
            "JSON array",
            Request::new("POST", "/v1/chat/completions")
                .header("content-type", "application/json")
                .body("[1,2,3]"),
            400,
            "missing_model",
        ),
        (
            // The body limit is Envoy's buffer limit (1 MiB unless raised): header-routing has
            // none of its own.
            "over the body limit",
            Request::new("POST", "/v1/chat/completions")
                .header("content-type", "application/json")
                .body(json!({"model": "fast", "pad": "x".repeat(2 << 20)}).to_string()),
            413,
            "body_too_large",
        ),
    ];
    for (name, req, status, code) in cases {
        let r = req.send(s.gw.addr);
        assert_eq!(r.status, status, "{name}: {}", r.text());
        assert_eq!(r.error_code(), code, "{name}");
    }
    // 5 MB of nested arrays: Envoy's buffer limit refuses it before any filter reads it.
    let deep = format!("{{\"model\":{}{}}}", "[".repeat(2_500_000), "]".repeat(2_500_000));
    let r = Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(deep)
        .send(s.gw.addr);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "body_too_large"),
        "{}",
        r.text()
    );
    assert_eq!(
        served_by(&chat(Some("fast")).send(s.gw.addr)),
        "anthropic",
        "still serving"
    );
    s.gw.assert_no_wasm_panic();
}

fn raw_chat(body: &str) -> Request {
    Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.to_owned())
}

/// Bodies whose objects repeat a key, and the path each refusal names. json_to_metadata lifts
/// the last `model` (observed with Envoy 1.40.0: the first body below was routed to `gpt-4o`
/// before this check), while a backend may read the first.
const REPEATED_KEYS: &[(&str, &str)] = &[
    (
        r#"{"model":"fast","model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        "$.model",
    ),
    (r#"{"model":"gpt-4o","messages":[],"model":"fast"}"#, "$.model"),
    (
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi","role":"system"}]}"#,
        "$.messages[0].role",
    ),
    (
        r#"{"model":"fast","metadata":{"a":{"b":1,"b":2}},"messages":[]}"#,
        "$.metadata.a.b",
    ),
];

#[test]
fn model_route_bodies_that_repeat_a_key_are_refused_before_any_upstream_gets_them() {
    let s = setup();
    for (body, path) in REPEATED_KEYS {
        let r = raw_chat(body).send(s.gw.addr);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error_code(), "duplicate_json_key", "{body}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(path), "{body}: {message}");
        for value in ["fast", "gpt-4o", "hi", "system"] {
            assert!(!message.contains(value), "the message echoes {value:?}: {message}");
        }
    }
    // Refused in the body callback: the upstream stream was reset before its body completed.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(s.upstream_requests(), 0, "no upstream received a complete request");
    // The same bodies without the repeat are served.
    assert_eq!(
        served_by(&raw_chat(r#"{"model":"gpt-4o","messages":[]}"#).send(s.gw.addr)),
        "openai"
    );
    assert_eq!(
        served_by(&raw_chat(r#"{"model":"fast","messages":[]}"#).send(s.gw.addr)),
        "anthropic"
    );
    // A route that is not a model route does not read the body.
    let r = Request::new("POST", "/anything")
        .header("content-type", "application/json")
        .body(r#"{"a":1,"a":2}"#)
        .send(s.gw.addr);
    assert_eq!(served_by(&r), "a");
    s.gw.assert_no_wasm_panic();
}

/// The shipped gateway: json_to_metadata, header-routing, then body-transform translating for
/// the Anthropic-format demo backend. header-routing's refusal is a local reply, which
/// body-transform never re-translates: it keeps its code.
#[test]
fn the_demo_model_route_refuses_repeated_keys_through_translation() {
    let shipped = Shipped::start(None);
    let token = demo_env("PORTICO_DEMO_TOKEN");
    for (body, path) in [
        (
            r#"{"model":"fast","model":"smart","messages":[{"role":"user","content":"Hi"}]}"#,
            "$.model",
        ),
        (
            r#"{"model":"fast","messages":[{"role":"user","content":[{"type":"text","text":"a","text":"b"}]}]}"#,
            "$.messages[0].content[0].text",
        ),
    ] {
        let r = raw_chat(body).bearer(&token).send(shipped.gw.addr);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["type"], "invalid_request_error", "{}", r.text());
        assert_eq!(r.error_code(), "duplicate_json_key", "{}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains(&format!("repeats the key {path}")),
            "{body}: {message}"
        );
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        shipped.model.requests(),
        0,
        "the model backend received no complete request"
    );
    let r = raw_chat(r#"{"model":"fast","messages":[{"role":"user","content":"Hi"}]}"#)
        .bearer(&token)
        .send(shipped.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(shipped.model.requests(), 1);
    shipped.gw.assert_no_wasm_panic();
}
