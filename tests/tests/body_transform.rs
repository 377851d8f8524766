//! The body-transform filter through a real Envoy, behind header-routing, with the mock
//! upstream playing a strict OpenAI backend and a strict Anthropic backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Command;

use portico_tests::envoy::{json_to_metadata, root, EnvoyConfig, Gateway};
use portico_tests::http::{Request, Response};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

pub struct Setup {
    pub gw: Gateway,
    _upstreams: Vec<Upstream>,
}

/// OpenAI clients on /v1/chat/completions and Anthropic clients on /v1/messages, each able to
/// reach either backend by model name; plus a route with generic transforms.
pub fn setup() -> Setup {
    let openai = Upstream::start_named("127.0.0.1:0", "openai").unwrap();
    let anthropic = Upstream::start_named("127.0.0.1:0", "anthropic").unwrap();
    let aliases = json!({
        "claude-test": {"backend": "anthropic", "model": "claude-upstream"},
        "gpt-test": {"backend": "openai", "model": "gpt-upstream"}
    });
    let routing = json!({
        "backends": [
            {"name": "openai", "cluster": "openai", "format": "openai", "credential": {"bearer": "sk-openai"}},
            {"name": "anthropic", "cluster": "anthropic", "format": "anthropic", "credential": {"api_key": "sk-anthropic"}}
        ],
        "routes": [
            {"name": "openai_clients", "match": {"path": "/v1/chat/completions"}, "models": {"aliases": aliases}},
            {"name": "anthropic_clients", "match": {"path": "/v1/messages"}, "models": {"aliases": aliases}},
            {"name": "other", "backend": "openai"}
        ]
    });
    let transform = json!({
        "max_body_bytes": 65536,
        "default_max_tokens": 333,
        "routes": [
            {"match": {"path": "/v1/{*rest}"}, "translate": "auto"},
            {"match": {"path": "/transform/{*rest}"},
             "request": {
                "headers": {"add": {"x-added": "1"}, "set": {"x-set": "new"}, "remove": ["x-secret"], "rename": {"x-old": "x-new"}},
                "body": [
                    {"op": "set", "path": "/meta/source", "value": "portico"},
                    {"op": "set", "path": "/meta/user", "from_header": "x-user"},
                    {"op": "remove", "path": "/debug"},
                    {"op": "rename", "from": "/legacy", "path": "/modern"}
                ]},
             "response": {"headers": {"set": {"x-transformed": "yes"}}, "body": [{"op": "set", "path": "/gateway", "value": "portico"}]}},
            {"match": {"path": "/strict/{*rest}"}, "require_json": true}
        ]
    });
    let envoy = EnvoyConfig::new(openai.addr)
        .route_by_header("x-portico-cluster")
        .cluster("openai", openai.addr)
        .cluster("anthropic", anthropic.addr)
        .native(json_to_metadata(&["model", "max_tokens", "stream"]))
        .wasm("header-routing", &routing)
        .wasm("body-transform", &transform);
    Setup {
        gw: Gateway::start(&envoy),
        _upstreams: vec![openai, anthropic],
    }
}

fn post(path: &str, body: &Value) -> Request {
    Request::new("POST", path)
        .header("content-type", "application/json")
        .header("x-mock-usage", "11,7")
        .body(body.to_string())
}

fn sse_data(r: &Response) -> Vec<String> {
    r.text()
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

#[test]
fn openai_clients_reach_an_anthropic_backend() {
    let s = setup();
    let body = json!({"model": "claude-test", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let r = post("/v1/chat/completions", &body).send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from anthropic");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    assert_eq!(v["model"], "claude-upstream");

    // Streaming, with usage asked for: chunks as they come, a usage chunk, then [DONE].
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let r = post("/v1/chat/completions", &stream).send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
    let data = sse_data(&r);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 18);

    // A tool call comes back in OpenAI's shape.
    let mut tools = body.clone();
    tools["tools"] = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]);
    let v = post("/v1/chat/completions", &tools).send(s.gw.addr).json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"],
        json!({"name": "weather", "arguments": "{\"city\":\"Oslo\"}"})
    );
    s.gw.assert_no_wasm_panic();
}

#[test]
fn anthropic_clients_reach_an_openai_backend() {
    let s = setup();
    let body = json!({"model": "gpt-test", "max_tokens": 50, "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]});
    let r = post("/v1/messages", &body)
        .header("anthropic-version", "2023-06-01")
        .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"], json!([{"type": "text", "text": "Hello from openai"}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"], json!({"input_tokens": 11, "output_tokens": 7}));

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let r = post("/v1/messages", &stream).send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<Value> = sse_data(&r).iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    let text: String = events.iter().filter_map(|e| e["delta"]["text"].as_str()).collect();
    assert_eq!(text, "Hello");
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 7);
}

#[test]
fn untranslatable_and_hostile_requests_get_clear_errors() {
    let s = setup();
    let cases: Vec<(&str, Request, u16, &str)> = vec![
        (
            "temperature Anthropic cannot take",
            post(
                "/v1/chat/completions",
                &json!({"model": "claude-test", "temperature": 1.7, "messages": [{"role": "user", "content": "x"}]}),
            ),
            400,
            "untranslatable",
        ),
        (
            "a field Anthropic lacks",
            post(
                "/v1/chat/completions",
                &json!({"model": "claude-test", "logprobs": true, "messages": [{"role": "user", "content": "x"}]}),
            ),
            400,
            "untranslatable",
        ),
        (
            "wrong types",
            post(
                "/v1/chat/completions",
                &json!({"model": "claude-test", "messages": "hello"}),
            ),
            400,
            "untranslatable",
        ),
        (
            "truncated JSON",
            Request::new("POST", "/v1/chat/completions")
                .header("content-type", "application/json")
                .body("{\"model\": \"claude-test\", \"mess"),
            400,
            "invalid_json",
        ),
        (
            "invalid UTF-8",
            Request::new("POST", "/v1/chat/completions")
                .header("content-type", "application/json")
                .body(b"{\"model\": \"claude-test\", \"x\": \"\xff\xfe\"}".to_vec()),
            400,
            "invalid_json",
        ),
    ];
    for (name, req, status, code) in cases {
        let r = req.send(s.gw.addr);
        assert_eq!(r.status, status, "{name}: {}", r.text());
        assert_eq!(r.error_code(), code, "{name}");
        if code == "untranslatable" {
            assert!(
                r.json()["error"]["message"].as_str().unwrap().starts_with('`'),
                "{name}: names the field"
            );
        }
    }
    let huge = format!(
        "{{\"model\":\"claude-test\",\"messages\":{}{}}}",
        "[".repeat(2_500_000),
        "]".repeat(2_500_000)
    );
    let r = Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(huge)
        .send(s.gw.addr);
    assert!(r.status == 413 || r.status == 400, "5 MB of nesting: {}", r.status);

    // Backend errors come back in the client's shape, with the backend's status.
    let r = post(
        "/v1/chat/completions",
        &json!({"model": "claude-test", "messages": [{"role": "user", "content": "x"}]}),
    )
    .header("x-mock-status", "529")
    .send(s.gw.addr);
    assert_eq!(r.status, 529);
    assert_eq!(r.json()["error"]["message"], "mock failure");
    assert!(r.json()["error"].get("param").is_some(), "OpenAI error shape");

    // A stream that ends before the API's end event is closed in the client's format.
    let cut = |mode: &str| {
        post(
            "/v1/chat/completions",
            &json!({"model": "claude-test", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .header("x-mock-cut", mode)
        .try_send(s.gw.addr)
    };
    let data = sse_data(&cut("clean").unwrap());
    assert!(data.iter().any(|d| d.contains("\"error\"")), "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // A backend that drops the connection makes Envoy reset the client's: the client sees a
    // truncated body (its SDK raises), and the filter survives.
    let reset = cut("1");
    assert!(
        reset.as_ref().map_or(true, |r| !r.text().contains("[DONE]")),
        "{reset:?}"
    );
    assert_eq!(
        post(
            "/v1/chat/completions",
            &json!({"model": "claude-test", "messages": [{"role": "user", "content": "x"}]})
        )
        .send(s.gw.addr)
        .status,
        200
    );
    s.gw.assert_no_wasm_panic();
}

#[test]
fn generic_header_and_body_transforms() {
    let s = setup();
    let r = Request::new("POST", "/transform/x")
        .header("content-type", "application/json")
        .header("x-secret", "s")
        .header("x-old", "moved")
        .header("x-set", "old")
        .header("x-user", "alice")
        .body(json!({"debug": true, "legacy": 5, "keep": [1]}).to_string())
        .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["headers"]["x-added"], "1");
    assert_eq!(v["headers"]["x-set"], "new");
    assert_eq!(v["headers"]["x-new"], "moved");
    assert!(v["headers"].get("x-secret").is_none() && v["headers"].get("x-old").is_none());
    let sent: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"meta": {"source": "portico", "user": "alice"}, "modern": 5, "keep": [1]})
    );
    assert_eq!(r.header("x-transformed"), Some("yes"));
    assert_eq!(v["gateway"], "portico", "response body operation");

    // A body that is not JSON passes untouched where JSON is not required...
    let r = Request::new("POST", "/transform/x")
        .header("content-type", "text/plain")
        .body("plain text")
        .send(s.gw.addr);
    assert_eq!(r.json()["body"], "plain text");
    // ...and is refused where it is.
    let r = Request::new("POST", "/strict/x")
        .header("content-type", "text/plain")
        .body("plain text")
        .send(s.gw.addr);
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    let r = Request::new("POST", "/strict/x")
        .header("content-type", "application/json")
        .body(vec![b'1'; 70_000])
        .send(s.gw.addr);
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
}

#[test]
fn the_official_sdks_get_typed_results_through_the_gateway() {
    let s = setup();
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sdk"])
        .current_dir(root())
        .env("PORTICO_URL", format!("http://{}", s.gw.addr))
        .output()
        .expect("run pytest (scripts/setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the SDK tests failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
    s.gw.assert_no_wasm_panic();
}
