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
        "allow_on_headers_stop_iteration": true,
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
    post_with_usage(path, body, "11,7")
}

/// A model call whose backend reports `usage` (`PROMPT,COMPLETION` in its API's terms).
fn post_with_usage(path: &str, body: &Value, usage: &str) -> Request {
    Request::new("POST", path)
        .header("content-type", "application/json")
        .header("x-mock-usage", usage)
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
            "invalid_field",
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
        if code == "untranslatable" || code == "invalid_field" {
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
    // Beyond Envoy's buffer limit (its default 1 MiB here): Envoy answers, in the client's shape.
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "body_too_large"),
        "{}",
        r.text()
    );

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

fn anthropic_post(body: &Value) -> Request {
    anthropic_post_with_usage(body, "11,7")
}

fn anthropic_post_with_usage(body: &Value, usage: &str) -> Request {
    post_with_usage("/v1/messages", body, usage).header("anthropic-version", "2023-06-01")
}

fn json_events(r: &Response) -> Vec<Value> {
    sse_data(r)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

const TO_CLAUDE: &str = "/v1/chat/completions";

fn to_claude(extra: Value) -> Value {
    let mut body = json!({"model": "claude-test", "messages": [{"role": "user", "content": "Hi"}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn to_gpt(extra: Value) -> Value {
    let mut body = json!({"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[test]
fn cached_tokens_reach_each_client_in_its_apis_terms() {
    let s = setup();
    // The Anthropic backend reports 11 uncached input tokens, 80 read from and 5 written to its
    // cache: OpenAI counts all of them as prompt tokens.
    let expected = json!({"prompt_tokens": 96, "completion_tokens": 7, "total_tokens": 103,
        "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 5}});
    let r = post(TO_CLAUDE, &to_claude(json!({})))
        .header("x-mock-cache", "80,5")
        .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"], expected);
    let r = post(
        TO_CLAUDE,
        &to_claude(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .header("x-mock-cache", "80,5")
    .send(s.gw.addr);
    assert_eq!(json_events(&r).last().unwrap()["usage"], expected);

    // The OpenAI backend reports 100 prompt tokens of which 80 were cached: Anthropic's
    // input_tokens are the other 15 (5 were written to the cache).
    let expected = json!({"input_tokens": 15, "cache_read_input_tokens": 80, "cache_creation_input_tokens": 5, "output_tokens": 7});
    let r = anthropic_post_with_usage(&to_gpt(json!({})), "100,7")
        .header("x-mock-cache", "80,5")
        .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"], expected);
    let r = anthropic_post_with_usage(&to_gpt(json!({"stream": true})), "100,7")
        .header("x-mock-cache", "80,5")
        .send(s.gw.addr);
    let events = json_events(&r);
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["usage"], expected);
    s.gw.assert_no_wasm_panic();
}

#[test]
fn token_counts_at_u64_max_do_not_wrap() {
    let s = setup();
    let max = u64::MAX;
    let huge = format!("3,{max}");
    let r = post_with_usage(TO_CLAUDE, &to_claude(json!({})), &huge).send(s.gw.addr);
    assert_eq!(
        r.json()["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": max, "total_tokens": max})
    );
    let r = post_with_usage(
        TO_CLAUDE,
        &to_claude(json!({"stream": true, "stream_options": {"include_usage": true}})),
        &huge,
    )
    .header("x-mock-cache", format!("{max},0"))
    .send(s.gw.addr);
    let usage = json_events(&r).last().unwrap()["usage"].clone();
    assert_eq!(
        (&usage["prompt_tokens"], &usage["total_tokens"]),
        (&json!(max), &json!(max))
    );

    for stream in [false, true] {
        let r = anthropic_post_with_usage(&to_gpt(json!({"stream": stream})), &huge)
            .header("x-mock-cache", "1,1")
            .send(s.gw.addr);
        let usage = if stream {
            json_events(&r)
                .into_iter()
                .find(|e| e["type"] == "message_delta")
                .unwrap()["usage"]
                .clone()
        } else {
            r.json()["usage"].clone()
        };
        assert_eq!(
            usage,
            json!({"input_tokens": 1, "cache_read_input_tokens": 1, "cache_creation_input_tokens": 1, "output_tokens": max}),
            "stream: {stream}"
        );
    }
    s.gw.assert_no_wasm_panic();
}

#[test]
fn refusals_reach_the_client_as_refusals() {
    let s = setup();
    let refusal = "I can't help with that.";
    let r = anthropic_post(&to_gpt(json!({})))
        .header("x-mock-refusal", refusal)
        .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["content"], json!([{"type": "text", "text": refusal}]));
    assert_eq!(v["stop_reason"], "refusal");
    let r = anthropic_post(&to_gpt(json!({"stream": true})))
        .header("x-mock-refusal", refusal)
        .send(s.gw.addr);
    let events = json_events(&r);
    let text: String = events.iter().filter_map(|e| e["delta"]["text"].as_str()).collect();
    assert_eq!(text, refusal);
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "refusal");

    let r = post(TO_CLAUDE, &to_claude(json!({})))
        .header("x-mock-refusal", refusal)
        .send(s.gw.addr);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "content_filter");
    let r = post(TO_CLAUDE, &to_claude(json!({"stream": true})))
        .header("x-mock-refusal", refusal)
        .send(s.gw.addr);
    let finish: Vec<Value> = json_events(&r)
        .iter()
        .map(|c| c["choices"][0]["finish_reason"].clone())
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![json!("content_filter")]);
    s.gw.assert_no_wasm_panic();
}

#[test]
fn request_fields_without_an_equivalent_are_refused_by_name() {
    let s = setup();
    let untranslatable = "untranslatable";
    let invalid = "invalid_field";
    let cases: Vec<(&str, Request, &str, &str)> = vec![
        (
            "an Anthropic server tool",
            anthropic_post(&to_gpt(
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]}),
            )),
            untranslatable,
            "`tools[0].type` \"web_search_20250305\" is an Anthropic server tool",
        ),
        (
            // An ephemeral breakpoint passes (OpenAI caches on its own); no other kind does.
            "system cache_control of another kind",
            anthropic_post(&to_gpt(
                json!({"system": [{"type": "text", "text": "s", "cache_control": {"type": "persistent"}}]}),
            )),
            untranslatable,
            "`system[0].cache_control.type`",
        ),
        (
            "a tool result marked as an error",
            anthropic_post(&to_gpt(json!({"messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "down", "is_error": true}]}
            ]}))),
            untranslatable,
            "`messages[2].content[0].is_error`",
        ),
        (
            "OpenAI metadata",
            post(TO_CLAUDE, &to_claude(json!({"metadata": {"run": "7"}}))),
            untranslatable,
            "`metadata.run`",
        ),
        (
            "a participant name",
            post(
                TO_CLAUDE,
                &to_claude(json!({"messages": [{"role": "user", "name": "ann", "content": "Hi"}]})),
            ),
            untranslatable,
            "`messages[0].name`",
        ),
        (
            "image detail",
            post(
                TO_CLAUDE,
                &to_claude(
                    json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}}]}]}),
                ),
            ),
            untranslatable,
            "`messages[0].content[0].image_url.detail`",
        ),
        (
            "max_tokens 0",
            post(TO_CLAUDE, &to_claude(json!({"max_tokens": 0}))),
            invalid,
            "`max_tokens`",
        ),
        (
            "numbers as stop sequences",
            post(TO_CLAUDE, &to_claude(json!({"stop": [1, null]}))),
            invalid,
            "`stop[0]`",
        ),
        (
            "numbers as tools",
            post(TO_CLAUDE, &to_claude(json!({"tools": [1, null]}))),
            invalid,
            "`tools[0]`",
        ),
        (
            "Anthropic max_tokens 0",
            anthropic_post(&to_gpt(json!({"max_tokens": 0}))),
            invalid,
            "`max_tokens`",
        ),
        (
            // Before: sent upstream as `messages: []` (found by fuzzing), as was the next one.
            "system messages only",
            post(
                TO_CLAUDE,
                &to_claude(json!({"messages": [{"role": "system", "content": "b"}]})),
            ),
            untranslatable,
            "`messages` holds only system messages",
        ),
        (
            "no Anthropic messages",
            anthropic_post(&to_gpt(json!({"messages": []}))),
            invalid,
            "`messages` must be a non-empty array",
        ),
    ];
    for (name, req, code, message) in cases {
        let r = req.send(s.gw.addr);
        assert_eq!((r.status, r.error_code().as_str()), (400, code), "{name}: {}", r.text());
        let text = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(text.starts_with(message), "{name}: {text}");
    }
    // Ephemeral cache breakpoints reach an OpenAI backend as nothing at all (the strict mock
    // refuses any field it does not know).
    let r = anthropic_post(&to_gpt(json!({
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]
    })))
    .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    // Neutral OpenAI settings reach an Anthropic backend as nothing at all.
    let r = post(
        TO_CLAUDE,
        &to_claude(json!({"frequency_penalty": 0, "presence_penalty": 0, "logprobs": false,
                          "store": false, "response_format": {"type": "text"}})),
    )
    .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    // Fields with a true equivalent pass the strict backends: strict tools, a user id.
    let r = post(
        TO_CLAUDE,
        &to_claude(json!({"safety_identifier": "h-1", "tools": [
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "strict": true}}
        ]})),
    )
    .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["finish_reason"], "tool_calls");
    let r = anthropic_post(&to_gpt(json!({"metadata": {"user_id": "h-1"}, "tools": [
        {"type": "custom", "name": "weather", "input_schema": {"type": "object"}, "strict": true}
    ]})))
    .send(s.gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stop_reason"], "tool_use");
    s.gw.assert_no_wasm_panic();
}

#[test]
fn answers_the_client_cannot_receive_become_bad_upstream_errors() {
    let s = setup();
    let weather = json!([{"name": "weather", "input_schema": {"type": "object"}}]);
    // A tool call whose arguments are not JSON has no Anthropic `input`. The response headers
    // are held until the body is read (allow_on_headers_stop_iteration), so the client gets a
    // 502 in its own API's shape.
    let r = anthropic_post(&to_gpt(json!({"tools": weather})))
        .header("x-mock-tool-args", "{city: Oslo")
        .send(s.gw.addr);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "bad_upstream_response", "{}", r.text());
    assert_eq!(r.json()["type"], "error", "Anthropic's error shape");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`choices[0].message.tool_calls[0].function.arguments`"));
    let r = anthropic_post(&to_gpt(json!({"tools": weather, "stream": true})))
        .header("x-mock-tool-args", "{city: Oslo")
        .send(s.gw.addr);
    let events = json_events(&r);
    let last = events.last().unwrap();
    assert_eq!(
        (&last["type"], &last["error"]["code"]),
        (&json!("error"), &json!("bad_upstream_response")),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e["type"] == "message_stop"));

    // `pause_turn` (a paused server-tool turn) has no OpenAI finish reason.
    let r = post(TO_CLAUDE, &to_claude(json!({})))
        .header("x-mock-stop", "pause_turn")
        .send(s.gw.addr);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "bad_upstream_response", "{}", r.text());
    assert_eq!(r.json().get("type"), None, "OpenAI's error shape");
    let r = post(TO_CLAUDE, &to_claude(json!({"stream": true})))
        .header("x-mock-stop", "pause_turn")
        .send(s.gw.addr);
    let data = sse_data(&r);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = json_events(&r);
    assert_eq!(chunks.last().unwrap()["error"]["code"], "bad_upstream_response");
    assert!(s.gw.log().contains("bad_upstream_response"), "logged");
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
        .body(vec![b'1'; 2 << 20])
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

#[test]
fn backend_errors_and_cut_streams_reach_every_client_with_a_code() {
    let s = setup();
    // Each client API against each backend API: the mock's OpenAI errors carry `code: null`.
    for (path, body) in [
        (TO_CLAUDE, to_claude(json!({}))),
        (TO_CLAUDE, to_claude(json!({"model": "gpt-test"}))),
        ("/v1/messages", to_gpt(json!({}))),
        ("/v1/messages", to_gpt(json!({"model": "claude-test"}))),
    ] {
        let mut request = post(path, &body).header("x-mock-status", "503");
        if path == "/v1/messages" {
            request = request.header("anthropic-version", "2023-06-01");
        }
        let r = request.send(s.gw.addr);
        assert_eq!(r.status, 503, "{path} {body}: {}", r.text());
        let v = r.json();
        assert!(
            v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{path} {}: {v}",
            body["model"]
        );
        assert!(v["error"]["type"].is_string(), "{v}");
        assert_eq!(
            v.get("type").is_some(),
            path == "/v1/messages",
            "the client's shape: {v}"
        );
    }
    // A translated stream cut before its end closes with an error event that has a code.
    let r = post(TO_CLAUDE, &to_claude(json!({"stream": true})))
        .header("x-mock-cut", "clean")
        .send(s.gw.addr);
    assert_eq!(
        json_events(&r).last().unwrap()["error"]["code"],
        "stream_truncated",
        "{}",
        r.text()
    );
    let r = anthropic_post(&to_gpt(json!({"stream": true})))
        .header("x-mock-cut", "clean")
        .send(s.gw.addr);
    let events = json_events(&r);
    assert_eq!(events.last().unwrap()["type"], "error", "{events:?}");
    assert_eq!(
        events.last().unwrap()["error"]["code"],
        "stream_truncated",
        "{events:?}"
    );
    s.gw.assert_no_wasm_panic();
}

#[test]
fn a_backend_error_that_is_not_json_reaches_every_client_as_a_json_error_with_a_code() {
    let s = setup();
    for (path, body) in [
        (TO_CLAUDE, to_claude(json!({}))),
        (TO_CLAUDE, to_claude(json!({"model": "gpt-test"}))),
        ("/v1/messages", to_gpt(json!({}))),
        ("/v1/messages", to_gpt(json!({"model": "claude-test"}))),
    ] {
        // A proxy in front of the backend answering with its own page.
        let mut request = post(path, &body)
            .header("x-mock-status", "502")
            .header("x-mock-answer", "garbage");
        if path == "/v1/messages" {
            request = request.header("anthropic-version", "2023-06-01");
        }
        let r = request.send(s.gw.addr);
        assert_eq!(r.status, 502, "{path} {}: {}", body["model"], r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "api_error", "{path} {}: {v}", body["model"]);
        assert_eq!(
            v.get("type").is_some(),
            path == "/v1/messages",
            "the client's shape: {v}"
        );
    }
    s.gw.assert_no_wasm_panic();
}
