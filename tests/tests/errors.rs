//! The errors clients actually see, through a real Envoy: every error, Envoy's own included,
//! is a JSON `{"error":{...}}` with a stable code, in the client's API format; the body limit
//! is one setting that works; bad upstream answers fail clearly and are logged truthfully; and
//! refusals cannot flood the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portico_tests::demo::{demo_env, Shipped};
use portico_tests::envoy::{eventually, json_to_metadata, EnvoyConfig, Gateway, Launch};
use portico_tests::http::{get, Connection, Request, Response};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

// === Helpers ===

/// Anthropic's documented error types: what its SDKs map statuses to.
const ANTHROPIC_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
];

/// Asserts a JSON error with `status` and `code` in the client's format: Anthropic's shape
/// (`{"type":"error","error":{"type","message"}}`, plus our `code`) or OpenAI's (`{"error":
/// {"type","code","message"}}`, no top-level `type`).
fn assert_error(r: &Response, status: u16, code: &str, anthropic: bool) {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}: {}",
        r.headers,
        r.text()
    );
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let kind = v["error"]["type"].as_str().unwrap_or_default();
    if anthropic {
        assert_eq!(v["type"], "error", "Anthropic's top-level type: {v}");
        assert!(ANTHROPIC_TYPES.contains(&kind), "an Anthropic error type: {v}");
    } else {
        assert_eq!(v.get("type"), None, "OpenAI's shape has no top-level type: {v}");
        assert!(kind.ends_with("_error"), "{v}");
    }
}

/// Sends raw bytes on a new connection and reads until the server closes or answers fully.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (and close) before it has read everything: ignore write errors.
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| out.len() >= end + 4 + n) {
                break;
            }
        }
    }
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: out[end + 4..].to_vec(),
    }
}

/// A model call whose body is sent chunked, so Envoy learns its size only as it arrives.
fn post_chunked(addr: SocketAddr, path: &str, body: &[u8]) -> Response {
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\n\
         anthropic-version: 2023-06-01\r\nx-mock-usage: 3,2\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(64 * 1024) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    raw(addr, &bytes)
}

/// A local address nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portico-errors-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The access log's lines (JSON), once `count` of them have been written (Envoy flushes its
/// access log about every 10 s).
fn access_log(path: &Path, count: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    let complete = eventually(Duration::from_secs(20), || {
        lines = fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines.len() >= count
    });
    assert!(complete, "{} access log lines: {lines:?}", lines.len());
    lines
}

/// A model call in the API of `path` (Anthropic's on `.../messages`), with `content_type`.
fn chat_as(path: &str, model: &str, content_type: &str) -> Request {
    let body = if path.ends_with("/messages") {
        json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]})
    } else {
        json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]})
    };
    Request::new("POST", path)
        .header("content-type", content_type)
        .header("anthropic-version", "2023-06-01")
        .header("x-mock-usage", "3,2")
        .body(body.to_string())
}

fn chat(path: &str, model: &str) -> Request {
    chat_as(path, model, "application/json")
}

/// The two kinds of client, each reaching the backend of the other API (so every answer is
/// translated): (path, model, whether the client speaks Anthropic's API).
const CLIENTS: [(&str, &str, bool); 2] = [("/v1/chat/completions", "claude", false), ("/v1/messages", "gpt", true)];

/// A body of about `bytes` bytes in the API of `path`.
fn big_chat(path: &str, model: &str, bytes: usize) -> String {
    let text = "x".repeat(bytes);
    if path.ends_with("/messages") {
        json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}).to_string()
    } else {
        json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string()
    }
}

/// Model routing and translation as `envoy/gateway.yaml` has them: OpenAI clients on
/// /v1/chat/completions reach an Anthropic backend (`claude`), Anthropic clients on
/// /v1/messages an OpenAI backend (`gpt`); `down` is an Anthropic backend that refuses
/// connections. With `stop_iteration`, body-transform holds the headers of answers it
/// translates whole (both settings, as shipped).
struct Models {
    gw: Gateway,
    log: PathBuf,
    _upstreams: Vec<Upstream>,
}

fn models(name: &str, stop_iteration: bool, tune: impl FnOnce(EnvoyConfig) -> EnvoyConfig) -> Models {
    let openai = Upstream::start_named("127.0.0.1:0", "openai").unwrap();
    let anthropic = Upstream::start_named("127.0.0.1:0", "anthropic").unwrap();
    let routing = json!({
        "backends": [
            {"name": "openai", "cluster": "openai", "format": "openai"},
            {"name": "anthropic", "cluster": "anthropic", "format": "anthropic"},
            {"name": "down", "cluster": "down", "format": "anthropic"}
        ],
        "routes": [
            {"name": "openai_clients", "match": {"path": "/v1/chat/completions"}, "models": {"aliases": {
                "claude": {"backend": "anthropic", "model": "claude-upstream"},
                "down": {"backend": "down"}}}},
            {"name": "anthropic_clients", "match": {"path": "/v1/messages"}, "models": {"aliases": {
                "gpt": {"backend": "openai", "model": "gpt-upstream"}}}},
            {"name": "other", "backend": "openai"}
        ]
    });
    let transform = json!({
        "allow_on_headers_stop_iteration": stop_iteration,
        "routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]
    });
    let log = scratch(name).join("access.log");
    let envoy = EnvoyConfig::new(openai.addr)
        .route_by_header("x-portico-cluster")
        .cluster("openai", openai.addr)
        .cluster("anthropic", anthropic.addr)
        .cluster("down", closed_port())
        .access_log(&log)
        .native(json_to_metadata(&["model", "max_tokens", "stream"]))
        .wasm("header-routing", &routing)
        .wasm("body-transform", &transform);
    Models {
        gw: Gateway::start(&tune(envoy)),
        log,
        _upstreams: vec![openai, anthropic],
    }
}

/// The access log line of the request to `path` with `status`.
fn logged<'a>(lines: &'a [Value], path: &str, status: u16) -> &'a Value {
    lines
        .iter()
        .find(|l| l["path"] == path && l["status"] == status)
        .unwrap_or_else(|| panic!("no access log line for {status} {path}: {lines:?}"))
}

// === 1. JSON media types ===

#[test]
fn json_with_a_charset_or_in_capitals_reaches_every_model_route() {
    let m = models("media", true, |e| e);
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;charset=UTF-8",
    ] {
        for (path, model, _) in CLIENTS {
            let r = chat_as(path, model, content_type).send(m.gw.addr);
            assert_eq!(r.status, 200, "{content_type} on {path}: {}", r.text());
        }
    }
    let r = chat_as("/v1/chat/completions", "claude", "text/plain").send(m.gw.addr);
    assert_error(&r, 400, "invalid_json", false);
    let r = chat_as("/v1/messages", "gpt", "text/plain").send(m.gw.addr);
    assert_error(&r, 400, "invalid_json", true);
    m.gw.assert_no_wasm_panic();
}

// === 2. Envoy's own errors ===

#[test]
fn envoys_own_errors_are_json_in_the_clients_format() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let log = scratch("envoy-own").join("access.log");
    let gw = Gateway::start(
        &EnvoyConfig::new(upstream.addr)
            .route_prefix("/v1/")
            .route_timeout("1s")
            .access_log(&log)
            .native(json_to_metadata(&["model"])),
    );
    let addr = gw.addr;

    // No route: the path decides the format.
    assert_error(&get("/nothing").send(addr), 404, "no_route", false);
    assert_error(&get("/anthropic/v1/messages").send(addr), 404, "no_route", true);

    // A slow upstream past the route's timeout.
    let slow = |path: &str| Request::new("GET", path).header("x-mock-delay-ms", "3000").send(addr);
    assert_error(&slow("/v1/slow"), 504, "upstream_timeout", false);
    assert_error(&slow("/v1/messages"), 504, "upstream_timeout", true);

    // A body over the buffer limit (Envoy's default 1 MiB here), with a length and chunked.
    let big = big_chat("/v1/messages", "m", 2 << 20);
    for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let r = Request::new("POST", path)
            .header("content-type", "application/json")
            .body(big.clone())
            .send(addr);
        assert_error(&r, 413, "body_too_large", anthropic);
        assert_error(
            &post_chunked(addr, path, big.as_bytes()),
            413,
            "body_too_large",
            anthropic,
        );
    }
    let r = Request::new("POST", "/v1/messages")
        .header("content-type", "application/json")
        .body(big)
        .send(addr);
    assert_eq!(
        r.json()["error"]["type"],
        "request_too_large",
        "Anthropic's type for 413"
    );

    // HTTP errors before any path is known: OpenAI's shape, the default.
    let r = get("/v1/x").header("x-big", "a".repeat(70_000)).send(addr);
    assert_error(&r, 431, "headers_too_large", false);
    assert_error(&raw(addr, b"GARBAGE\r\n\r\n"), 400, "bad_request", false);
    assert_error(
        &raw(addr, b"GET /v1/x HTTP/1.0\r\nhost: gateway.test\r\n\r\n"),
        426,
        "upgrade_required",
        false,
    );

    // Upstream answers pass untouched, errors included.
    let r = get("/v1/echo").send(addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/v1/echo");

    // The access log says who answered and why.
    let lines = access_log(&log, 13);
    assert_eq!(
        logged(&lines, "/nothing", 404)["response_code_details"],
        "route_not_found"
    );
    assert_eq!(
        logged(&lines, "/v1/slow", 504)["response_code_details"],
        "response_timeout"
    );
    assert_eq!(
        logged(&lines, "/v1/messages", 413)["response_code_details"],
        "request_payload_too_large"
    );
    assert_eq!(logged(&lines, "/v1/echo", 200)["response_code_details"], "via_upstream");

    // An upstream that refuses connections.
    let gw = Gateway::start(&EnvoyConfig::new(closed_port()));
    assert_error(&get("/v1/messages").send(gw.addr), 503, "upstream_unavailable", true);
    assert_error(&get("/v1/models").send(gw.addr), 503, "upstream_unavailable", false);
}

#[test]
fn envoys_errors_on_translated_requests_keep_the_clients_format() {
    let m = models("translated-503", true, |e| e);
    // The OpenAI client's request leaves for /v1/messages at an Anthropic backend that is
    // down: the 503 is still in the OpenAI client's format.
    let r = chat("/v1/chat/completions", "down").send(m.gw.addr);
    assert_error(&r, 503, "upstream_unavailable", false);
    m.gw.assert_no_wasm_panic();
}

#[test]
fn portico_refusals_are_in_the_clients_format_and_named_in_the_access_log() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let key_digest: String = hmac_sha256::Hash::hash(b"k-1")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let auth = json!({
        "api_keys": {"sources": [{"type": "header", "name": "x-api-key"}],
                     "consumers": [{"name": "c", "keys": [{"sha256": key_digest}]}]},
        "default": {"auth": "any"}
    });
    let limit = json!({"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 3600}}]});
    let log = scratch("refusals").join("access.log");
    let gw = Gateway::start(
        &EnvoyConfig::new(upstream.addr)
            .access_log(&log)
            .wasm("auth", &auth)
            .wasm("rate-limit", &limit),
    );
    let r = get("/v1/messages").send(gw.addr);
    assert_error(&r, 401, "missing_credentials", true);
    assert!(r.header("www-authenticate").is_some());
    assert_error(
        &get("/v1/chat/completions").send(gw.addr),
        401,
        "missing_credentials",
        false,
    );
    let with_key = |path: &str| get(path).header("x-api-key", "k-1").send(gw.addr);
    assert_eq!(with_key("/v1/messages").status, 200);
    let r = with_key("/v1/messages");
    assert_error(&r, 429, "rate_limited", true);
    assert!(r.header("retry-after").is_some());
    assert_error(&with_key("/other"), 429, "rate_limited", false);

    let lines = access_log(&log, 5);
    assert_eq!(
        logged(&lines, "/v1/messages", 401)["response_code_details"],
        "portico-auth.missing_credentials"
    );
    assert_eq!(
        logged(&lines, "/other", 429)["response_code_details"],
        "portico-rate-limit.rate_limited"
    );
    gw.assert_no_wasm_panic();
}

// === 3. The body limit ===

#[test]
fn the_body_limit_is_envoys_buffer_limit_and_a_raised_one_works() {
    let m = models("limit-default", true, |e| e);
    for (path, model, anthropic) in CLIENTS {
        let big = big_chat(path, model, 2 << 20);
        let r = Request::new("POST", path)
            .header("content-type", "application/json")
            .body(big.clone())
            .send(m.gw.addr);
        assert_error(&r, 413, "body_too_large", anthropic);
        assert_error(
            &post_chunked(m.gw.addr, path, big.as_bytes()),
            413,
            "body_too_large",
            anthropic,
        );
    }
    let raised = models("limit-raised", true, |e| e.body_limit(4 << 20));
    for (path, model, _) in CLIENTS {
        let big = big_chat(path, model, 2 << 20);
        let r = Request::new("POST", path)
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-usage", "3,2")
            .body(big.clone())
            .send(raised.gw.addr);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let r = post_chunked(raised.gw.addr, path, big.as_bytes());
        assert_eq!(r.status, 200, "chunked {path}: {}", r.text());
    }
    raised.gw.assert_no_wasm_panic();
}

// === 4. Bad and large upstream answers ===

#[test]
fn bad_upstream_answers_are_502s_in_the_clients_format() {
    let m = models("bad-upstream", true, |e| e);
    for (path, model, anthropic) in CLIENTS {
        for spoil in ["garbage", "wrong_types", "empty"] {
            let r = chat(path, model).header("x-mock-answer", spoil).send(m.gw.addr);
            assert_error(&r, 502, "bad_upstream_response", anthropic);
            assert!(
                !r.headers.iter().any(|(n, _)| n == "x-upstream-request"),
                "{spoil}: the upstream's headers never reach the client"
            );
        }
    }
    assert!(
        eventually(Duration::from_secs(3), || m.gw.metric(
            "portico_transform_requests_total",
            &[("outcome", "bad_upstream_response")]
        ) == 6),
        "{}",
        m.gw.prometheus()
    );
    assert!(m.gw.log().contains("bad_upstream_response"), "a warning is logged");
    let lines = access_log(&m.log, 6);
    assert_eq!(
        logged(&lines, "/v1/messages", 502)["response_code_details"],
        "portico-body-transform.bad_upstream_response",
        "the path logged is the one sent upstream"
    );
    m.gw.assert_no_wasm_panic();
}

#[test]
fn without_stop_iteration_a_bad_answer_is_an_error_body_in_the_clients_format() {
    let m = models("degraded", false, |e| e);
    for (path, model, anthropic) in CLIENTS {
        // The 200 has left before the body is known: the error travels in the body.
        let r = chat(path, model).header("x-mock-answer", "garbage").send(m.gw.addr);
        assert_eq!(r.status, 200, "{}", r.text());
        let mut as_if = r.clone();
        as_if.status = 502;
        assert_error(&as_if, 502, "bad_upstream_response", anthropic);
        // An empty answer ends with its headers, before they leave: still a clear 502.
        let r = chat(path, model).header("x-mock-answer", "empty").send(m.gw.addr);
        assert_error(&r, 502, "bad_upstream_response", anthropic);
    }
    assert!(eventually(Duration::from_secs(3), || m.gw.metric(
        "portico_transform_requests_total",
        &[("outcome", "bad_upstream_response")]
    ) == 4));
    assert!(m.gw.log().contains("bad_upstream_response"));
    // An answer over the buffer limit: the 200 has left, so Envoy can only reset the stream;
    // the access log says so in its response details (and no body bytes were sent).
    let r = chat("/v1/chat/completions", "claude")
        .header("x-mock-pad", (2 << 20).to_string())
        .try_send(m.gw.addr);
    assert!(r.is_err(), "a truncated response: {:?}", r.map(|r| r.status));
    let lines = access_log(&m.log, 5);
    let line = lines
        .iter()
        .find(|l| l["response_code_details"] == "response_payload_too_large")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(
        (line["status"].as_u64(), line["bytes_sent"].as_u64()),
        (Some(200), Some(0))
    );
    m.gw.assert_no_wasm_panic();
}

#[test]
fn a_large_translated_answer_is_translated_under_the_limit_or_fails_clearly() {
    let pad = (2 << 20).to_string();
    let m = models("large-default", true, |e| e);
    for (path, model, anthropic) in CLIENTS {
        let r = chat(path, model).header("x-mock-pad", &pad).send(m.gw.addr);
        assert_error(&r, 502, "response_too_large", anthropic);
    }
    let lines = access_log(&m.log, 2);
    for path in ["/v1/messages", "/v1/chat/completions"] {
        assert_eq!(
            logged(&lines, path, 502)["response_code_details"],
            "response_payload_too_large"
        );
    }

    let raised = models("large-raised", true, |e| e.body_limit(8 << 20));
    let r = chat("/v1/chat/completions", "claude")
        .header("x-mock-pad", &pad)
        .send(raised.gw.addr);
    assert_eq!(r.status, 200, "{}", &r.text()[..200.min(r.body.len())]);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().len() > 2 << 20);
    let r = chat("/v1/messages", "gpt")
        .header("x-mock-pad", &pad)
        .send(raised.gw.addr);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["type"], "message");
    let lines = access_log(&raised.log, 2);
    assert_eq!(
        logged(&lines, "/v1/messages", 200)["response_code_details"],
        "via_upstream"
    );
    raised.gw.assert_no_wasm_panic();
}

// === 5. Refusals keep their code ===

#[test]
fn a_refusal_passes_body_transform_with_its_code() {
    let m = models("keep-code", true, |e| e);
    let deep = |path: &str, model: &str| {
        let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let body = if path.ends_with("/messages") {
            format!(r#"{{"model":"{model}","max_tokens":16,"messages":[],"x":{nested}}}"#)
        } else {
            format!(r#"{{"model":"{model}","messages":[],"x":{nested}}}"#)
        };
        Request::new("POST", path)
            .header("content-type", "application/json")
            .body(body)
            .send(m.gw.addr)
    };
    for (path, model, anthropic) in CLIENTS {
        assert_error(&deep(path, model), 400, "invalid_json", anthropic);
        let r = Request::new("POST", path)
            .header("content-type", "application/json")
            .body(format!(r#"{{"model":"{model}","model":"{model}","messages":[]}}"#))
            .send(m.gw.addr);
        assert_error(&r, 400, "duplicate_json_key", anthropic);
    }
    m.gw.assert_no_wasm_panic();
}

// === 6. Refusal logs ===

#[test]
fn a_flood_of_refusals_writes_a_bounded_log_and_accounts_for_every_one() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let auth = json!({"api_keys": {"consumers": [{"name": "c", "keys": [{"sha256": "0".repeat(64)}]}]},
                      "default": {"auth": "any"}});
    let config = EnvoyConfig::new(upstream.addr).wasm("auth", &auth);
    // One worker, so one limiter sees every refusal.
    let text = serde_json::to_string(&config.render()).unwrap();
    let gw = Gateway::try_start_with(
        &text,
        &Launch {
            concurrency: 1,
            cpus: None,
        },
    )
    .unwrap_or_else(|f| panic!("{}", f.log));
    let started = Instant::now();
    let mut conn = Connection::open(gw.addr).unwrap();
    let mut sent = 0u64;
    while sent < 2_000 {
        let r = conn.send(&get("/flood")).unwrap_or_else(|_| {
            conn = Connection::open(gw.addr).unwrap();
            conn.send(&get("/flood")).unwrap()
        });
        assert_eq!(r.status, 401);
        sent += 1;
    }
    // The summary of the last window is written with the next refusal after it.
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(get("/flood").send(gw.addr).status, 401);
    sent += 1;
    let seconds = started.elapsed().as_secs() + 1;

    let log = gw.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("portico-auth: 401 missing_credentials"))
        .collect();
    let summaries: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("portico-auth: "))
        .filter_map(|l| {
            let (before, _) = l.split_once(" more lines were not logged")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert!(
        lines.len() as u64 <= 10 * (seconds + 1),
        "{} lines in {seconds} s",
        lines.len()
    );
    assert!(!summaries.is_empty(), "a summary line:\n{log}");
    assert_eq!(
        lines.len() as u64 + summaries.iter().sum::<u64>(),
        sent,
        "every refusal accounted for"
    );
}

#[test]
fn a_model_stream_longer_than_envoys_default_route_timeout_completes_on_the_shipped_gateway() {
    // Envoy's default route timeout is 15 s: 18 deltas a second apart outlast it.
    let shipped = Shipped::start(None);
    let started = Instant::now();
    let r = Request::new("POST", "/v1/chat/completions")
        .header("x-api-key", demo_env("PORTICO_DEMO_KEY"))
        .header("content-type", "application/json")
        .header("x-mock-stream", "1")
        .header("x-mock-events", "18")
        .header("x-mock-gap-ms", "1000")
        .body(
            json!({"model": "fast", "stream": true, "max_tokens": 50,
                     "messages": [{"role": "user", "content": "a long answer"}]})
            .to_string(),
        )
        .send(shipped.gw.addr);
    assert!(started.elapsed() > Duration::from_secs(15), "the stream outlasted 15 s");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    shipped.gw.assert_no_wasm_panic();
}
