//! The demo that `envoy/gateway.yaml` ships, as the README shows it: checked against a local
//! Envoy by `tests/shipped.rs` and against the docker-compose replicas by `tests/compose.rs`.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use crate::envoy::{root, Gateway};
use crate::http::{get, Request, Response};
use crate::upstream::{Mode, Upstream};

/// `envoy/gateway.yaml` as shipped, running on free ports beside its three demo backends.
#[derive(Debug)]
pub struct Shipped {
    pub gw: Gateway,
    pub backend_a: Upstream,
    pub backend_b: Upstream,
    pub model: Upstream,
}

impl Shipped {
    /// Starts it; the access log goes to `access_log` instead of stdout when given.
    pub fn start(access_log: Option<&Path>) -> Shipped {
        Self::start_edited(access_log, |config| config)
    }

    /// Like [`Shipped::start`], with the config text changed by `edit` first.
    #[allow(clippy::unwrap_used)]
    pub fn start_edited(access_log: Option<&Path>, edit: impl FnOnce(String) -> String) -> Shipped {
        let backend_a = Upstream::start_named("127.0.0.1:0", "demo-a").unwrap();
        let backend_b = Upstream::start_named("127.0.0.1:0", "demo-b").unwrap();
        let model = Upstream::start_with("127.0.0.1:0", "demo-anthropic", Mode::Model).unwrap();
        // The shipped file with free ports and absolute wasm paths, so it runs beside other tests.
        let mut config = fs::read_to_string(root().join("envoy/gateway.yaml"))
            .unwrap()
            .replace("port_value: 10000", "port_value: 0")
            .replace("port_value: 9901", "port_value: 0")
            .replace("port_value: 8081", &format!("port_value: {}", backend_a.addr.port()))
            .replace("port_value: 8082", &format!("port_value: {}", backend_b.addr.port()))
            .replace("port_value: 8083", &format!("port_value: {}", model.addr.port()))
            .replace("filename: dist/", &format!("filename: {}/dist/", root().display()));
        if let Some(path) = access_log {
            config = config.replace("path: /dev/stdout", &format!("path: {}", path.display()));
        }
        Shipped {
            gw: Gateway::start_text(&edit(config)),
            backend_a,
            backend_b,
            model,
        }
    }
}

/// `KEY=value` from envoy/demo.env.
pub fn demo_env(key: &str) -> String {
    let text = fs::read_to_string(root().join("envoy/demo.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from envoy/demo.env"))
        .to_owned()
}

/// The request the README sends twice to show a cache hit.
const CACHE_DEMO_BODY: &str = r#"{"model": "fast", "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]}"#;

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
    assert_eq!(r.upstream_header("x-portico-consumer").as_deref(), Some("apikey:demo"));
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("free"));

    let r = get("/hello").bearer(&token).send(addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.upstream_header("x-portico-consumer").as_deref(),
        Some("demo:demo-user")
    );
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
    assert_eq!(r.header("x-portico-cache"), Some("BYPASS"), "no temperature: sampled");

    // The README's cache demo: the same request twice, the second from the cache.
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains(CACHE_DEMO_BODY),
        "README.md no longer shows the cache demo body"
    );
    let cached = || {
        Request::new("POST", "/v1/chat/completions")
            .bearer(&token)
            .header("content-type", "application/json")
            .body(CACHE_DEMO_BODY)
            .send(addr)
    };
    let first = cached();
    assert_eq!((first.status, first.header("x-portico-cache")), (200, Some("MISS")));
    let again = cached();
    assert_eq!((again.status, again.header("x-portico-cache")), (200, Some("HIT")));
    assert!(again.header("age").is_some(), "{:?}", again.headers);
    assert_eq!(again.body, first.body);

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
