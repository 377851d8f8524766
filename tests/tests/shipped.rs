//! The configuration and demo that ship with Portico work as the README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;

use portico_tests::envoy::{root, validate, wasm_path, Gateway};
use portico_tests::http::get;
use portico_tests::upstream::Upstream;

/// `KEY=value` lines of envoy/demo.env.
fn demo_env(key: &str) -> String {
    let text = fs::read_to_string(root().join("envoy/demo.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from envoy/demo.env"))
        .to_owned()
}

#[test]
fn shipped_envoy_configs_pass_envoy_validate() {
    // Validation also loads each wasm filter and runs its configuration check.
    wasm_path("auth");
    wasm_path("rate-limit");
    wasm_path("header-routing");
    wasm_path("body-transform");
    validate(&root().join("envoy/gateway.yaml")).unwrap_or_else(|e| panic!("envoy/gateway.yaml: {e}"));
    let mut examples = 0;
    for entry in fs::read_dir(root().join("envoy/examples")).unwrap() {
        let path = entry.unwrap().path();
        validate(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        examples += 1;
    }
    assert_eq!(examples, 4, "one example per filter");
}

#[test]
fn the_embedded_default_gateway_serves_the_readme_demo() {
    let upstream = Upstream::start_named("127.0.0.1:0", "demo-a").unwrap();
    let upstream_b = Upstream::start_named("127.0.0.1:0", "demo-b").unwrap();
    let model = Upstream::start_with("127.0.0.1:0", "demo-anthropic", portico_tests::upstream::Mode::Model).unwrap();
    // The shipped file with free ports and absolute wasm paths, so it runs beside other tests.
    let config = fs::read_to_string(root().join("envoy/gateway.yaml"))
        .unwrap()
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 8081", &format!("port_value: {}", upstream.addr.port()))
        .replace("port_value: 8082", &format!("port_value: {}", upstream_b.addr.port()))
        .replace("port_value: 8083", &format!("port_value: {}", model.addr.port()))
        .replace("filename: dist/", &format!("filename: {}/dist/", root().display()));
    let gw = Gateway::start_text(&config);
    let key = demo_env("PORTICO_DEMO_KEY");
    let token = demo_env("PORTICO_DEMO_TOKEN");

    let r = get("/hello").send(gw.addr);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"portico\""));

    let r = get("/hello").header("x-api-key", &key).send(gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-portico-consumer").as_deref(), Some("demo"));
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("free"));

    let r = get("/hello").bearer(&token).send(gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-portico-consumer").as_deref(), Some("demo-user"));
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("pro"));

    assert_eq!(get("/public/status").send(gw.addr).status, 200);

    // Routing, as make run shows it.
    let served = |r: portico_tests::http::Response| r.json()["upstream"].as_str().unwrap_or_default().to_owned();
    assert_eq!(served(get("/hello").bearer(&token).send(gw.addr)), "demo-a");
    assert_eq!(
        served(get("/hello").bearer(&token).header("x-version", "2").send(gw.addr)),
        "demo-b"
    );
    let r = get("/users/42").bearer(&token).send(gw.addr);
    assert_eq!(r.json()["path"], "/v2/people/42");

    // The OpenAI-compatible endpoint, served by the Anthropic-format mock.
    let r = portico_tests::http::Request::new("POST", "/v1/chat/completions")
        .bearer(&token)
        .header("content-type", "application/json")
        .body(r#"{"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}"#)
        .send(gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Hello from anthropic");
    assert_eq!(r.json()["model"], "claude-haiku-demo");

    // CORS: a preflight needs no credential; allowed origins get the headers, others do not.
    let preflight = |origin: &str| {
        portico_tests::http::Request::new("OPTIONS", "/v1/chat/completions")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send(gw.addr)
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
        .send(gw.addr);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert!(r.header("access-control-expose-headers").unwrap().contains("ratelimit"));
    let r = get("/hello")
        .bearer(&token)
        .header("origin", "https://evil.example")
        .send(gw.addr);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = get("/hello").header("origin", "http://localhost:3000").send(gw.addr);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000"),
        "refusals readable by the page"
    );

    // The README's curl loop: the demo key (tier free) gets 5 requests a minute, then 429.
    let statuses: Vec<u16> = (0..5)
        .map(|_| get("/hello").header("x-api-key", &key).send(gw.addr).status)
        .collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 429],
        "one of the five was spent above"
    );
    let r = get("/hello").header("x-api-key", &key).send(gw.addr);
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.header("retry-after").is_some() && r.header("ratelimit-policy").is_some());
    let r = get("/admin/x").bearer(&token).send(gw.addr);
    assert_eq!(r.status, 403, "the demo token has no admin scope");
    gw.assert_no_wasm_panic();
}

#[test]
fn the_readme_shows_the_demo_credentials_that_work() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    for key in ["PORTICO_DEMO_KEY", "PORTICO_DEMO_TOKEN"] {
        let value = demo_env(key);
        assert!(readme.contains(&value), "README.md does not show the working {key}");
    }
    for command in ["make run", "make test"] {
        assert!(readme.contains(command), "README.md does not document `{command}`");
    }
}
