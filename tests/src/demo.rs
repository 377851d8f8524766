//! The demo that `envoy/gateway.yaml` ships, as the README shows it: checked against a local
//! Envoy by `tests/shipped.rs` and against the docker-compose replicas by `tests/compose.rs`.

use std::fs;
use std::net::SocketAddr;

use crate::envoy::root;
use crate::http::{get, Request, Response};

/// `KEY=value` from envoy/demo.env.
pub fn demo_env(key: &str) -> String {
    let text = fs::read_to_string(root().join("envoy/demo.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from envoy/demo.env"))
        .to_owned()
}

/// Every behaviour the README's demo promises, against a fresh gateway at `addr` (it spends
/// the demo key's rate limit, so it runs once per gateway).
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
pub fn check_demo(addr: SocketAddr) {
    let key = demo_env("PORTICO_DEMO_KEY");
    let token = demo_env("PORTICO_DEMO_TOKEN");

    let r = get("/hello").send(addr);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"portico\""));

    let r = get("/hello").header("x-api-key", &key).send(addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-portico-consumer").as_deref(), Some("demo"));
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("free"));

    let r = get("/hello").bearer(&token).send(addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-portico-consumer").as_deref(), Some("demo-user"));
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("pro"));

    assert_eq!(get("/public/status").send(addr).status, 200);

    // Routing, as make run shows it.
    let served = |r: Response| r.json()["upstream"].as_str().unwrap_or_default().to_owned();
    assert_eq!(served(get("/hello").bearer(&token).send(addr)), "demo-a");
    assert_eq!(
        served(get("/hello").bearer(&token).header("x-version", "2").send(addr)),
        "demo-b"
    );
    let r = get("/users/42").bearer(&token).send(addr);
    assert_eq!(r.json()["path"], "/v2/people/42");

    // The OpenAI-compatible endpoint, served by the Anthropic-format mock.
    let r = Request::new("POST", "/v1/chat/completions")
        .bearer(&token)
        .header("content-type", "application/json")
        .body(r#"{"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}"#)
        .send(addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Hello from anthropic");
    assert_eq!(r.json()["model"], "claude-haiku-demo");

    // CORS: a preflight needs no credential; allowed origins get the headers, others do not.
    let preflight = |origin: &str| {
        Request::new("OPTIONS", "/v1/chat/completions")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send(addr)
    };
    let r = preflight("http://localhost:3000");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("http://localhost:3000"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(
        preflight("https://evil.example").header("access-control-allow-origin"),
        None
    );
    let r = get("/hello")
        .bearer(&token)
        .header("origin", "https://app.example.com")
        .send(addr);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert!(r.header("access-control-expose-headers").unwrap().contains("ratelimit"));
    let r = get("/hello")
        .bearer(&token)
        .header("origin", "https://evil.example")
        .send(addr);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = get("/hello").header("origin", "http://localhost:3000").send(addr);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000"),
        "refusals readable by the page"
    );

    // The README's curl loop: the demo key (tier free) gets 5 requests a minute, then 429.
    let statuses: Vec<u16> = (0..5)
        .map(|_| get("/hello").header("x-api-key", &key).send(addr).status)
        .collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 429],
        "one of the five was spent above"
    );
    let r = get("/hello").header("x-api-key", &key).send(addr);
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.header("retry-after").is_some() && r.header("ratelimit-policy").is_some());
    let r = get("/admin/x").bearer(&token).send(addr);
    assert_eq!(r.status, 403, "the demo token has no admin scope");
}
