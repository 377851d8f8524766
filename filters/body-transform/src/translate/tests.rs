//! Translation fixtures, compiled only under #[cfg(test)] (declared in translate/mod.rs).

use portico_core::contract::BackendUsage;
use serde_json::{json, Value};

use super::request::{anthropic_to_openai, cap_output, openai_to_anthropic, RequestFacts};
use super::stream::{AnthropicToOpenAi, OpenAiToAnthropic};
use super::{response, BadUpstream, Refusal, RequestError};

#[test]
fn an_openai_request_becomes_an_anthropic_request() {
    let openai = json!({
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
            {"role": "user", "content": "Thanks"}
        ],
        "temperature": 0.3, "top_p": 0.9, "stop": "END", "stream": true,
        "stream_options": {"include_usage": true}, "user": "u-42",
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required", "parallel_tool_calls": false
    });
    let (anthropic, facts) = openai_to_anthropic(&openai, 1024).unwrap();
    assert_eq!(
        facts,
        RequestFacts {
            stream: true,
            include_usage: true
        }
    );
    assert_eq!(
        anthropic,
        json!({
            "model": "claude-x",
            "system": "Be brief.\n\nUse metric units.",
            "max_tokens": 1024,
            "temperature": 0.3, "top_p": 0.9, "stop_sequences": ["END"], "stream": true,
            "metadata": {"user_id": "u-42"},
            "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
                    {"type": "text", "text": "Thanks"}
                ]}
            ]
        })
    );
}

#[test]
fn max_tokens_and_tool_choice_variants() {
    let base = |extra: Value| {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        openai_to_anthropic(&v, 512).unwrap().0
    };
    assert_eq!(base(json!({"max_completion_tokens": 99}))["max_tokens"], 99);
    assert_eq!(base(json!({"max_tokens": 77}))["max_tokens"], 77);
    assert_eq!(
        base(json!({"tool_choice": "auto"}))["tool_choice"],
        json!({"type": "auto"})
    );
    assert_eq!(
        base(json!({"tool_choice": "none"}))["tool_choice"],
        json!({"type": "none"})
    );
    assert_eq!(
        base(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}))["tool_choice"],
        json!({"type": "tool", "name": "f"})
    );
    assert_eq!(base(json!({"stop": ["a", "b"]}))["stop_sequences"], json!(["a", "b"]));
}

#[test]
fn what_anthropic_cannot_express_is_refused_by_name() {
    let refuse = |v: Value| openai_to_anthropic(&v, 1).unwrap_err();
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"messages": user, "temperature": 1.5}), "temperature"),
        (json!({"messages": user, "n": 2}), "n"),
        (json!({"messages": user, "logprobs": true}), "logprobs"),
        (
            json!({"messages": user, "response_format": {"type": "json_object"}}),
            "response_format.type",
        ),
        (
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]}),
            "messages[1].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (json!({"messages": []}), "messages"),
        (json!([1]), "$"),
    ];
    for (body, field) in cases {
        let RequestError { field: got, .. } = refuse(body.clone());
        assert_eq!(got, field, "{body}");
    }
}

#[test]
fn an_anthropic_request_becomes_an_openai_request() {
    let anthropic = json!({
        "model": "gpt-x", "max_tokens": 200, "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "12 C"}]}]},
            {"role": "user", "content": "Thanks"}
        ],
        "stop_sequences": ["END"], "temperature": 0.2, "stream": true, "metadata": {"user_id": "u-1"},
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
    });
    let (openai, facts) = anthropic_to_openai(&anthropic).unwrap();
    assert_eq!(
        facts,
        RequestFacts {
            stream: true,
            include_usage: true
        }
    );
    assert_eq!(
        openai,
        json!({
            "model": "gpt-x", "max_completion_tokens": 200, "temperature": 0.2, "stop": ["END"],
            "stream": true, "stream_options": {"include_usage": true}, "user": "u-1",
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "tu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "tu_1", "content": "12 C"},
                {"role": "user", "content": "Thanks"}
            ]
        })
    );
    let err = anthropic_to_openai(&json!({"messages": [], "top_k": 5})).unwrap_err();
    assert_eq!(err.field, "top_k");
    let err = anthropic_to_openai(
        &json!({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, "messages[0].content[0].type");
}

#[test]
fn responses_translate_both_ways() {
    let anthropic = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 5}
    });
    let openai = response::anthropic_to_openai(&anthropic, 1700).unwrap();
    assert_eq!(
        openai,
        json!({
            "id": "msg_1", "object": "chat.completion", "created": 1700, "model": "claude-x",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.", "refusal": null,
                "tool_calls": [{"id": "tu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]
            }}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                      "prompt_tokens_details": {"cached_tokens": 2}}
        })
    );
    let back = response::openai_to_anthropic(&openai).unwrap();
    assert_eq!(
        back["content"],
        json!([{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}])
    );
    assert_eq!(back["stop_reason"], "tool_use");
    assert_eq!(
        back["usage"],
        json!({"input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 5})
    );
}

#[test]
fn errors_take_the_clients_shape() {
    let from_anthropic = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    assert_eq!(
        response::error_to_openai(&from_anthropic, 529),
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error"}})
    );
    let from_openai =
        json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
    assert_eq!(
        response::error_to_anthropic(&from_openai, 429),
        json!({"type": "error", "error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "Rate limit reached"}})
    );
}

#[test]
fn every_backend_error_reaches_the_client_with_a_code() {
    // OpenAI's own errors often carry `code: null`; a body without an error type falls back
    // to the status.
    let null_code = json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}});
    assert_eq!(
        response::error_to_anthropic(&null_code, 500)["error"]["code"],
        "server_error"
    );
    assert_eq!(
        response::error_with_code(&null_code, 500).unwrap()["error"]["code"],
        "server_error"
    );
    let bare = json!({"error": {"message": "no"}});
    assert_eq!(
        response::error_to_openai(&bare, 429)["error"]["code"],
        "rate_limit_error"
    );
    assert_eq!(
        response::error_to_anthropic(&bare, 503)["error"]["code"],
        "overloaded_error"
    );
    assert_eq!(
        response::error_with_code(&bare, 404).unwrap()["error"]["code"],
        "not_found_error"
    );
    assert_eq!(
        response::error_to_openai(&json!("x"), 500)["error"]["code"],
        "api_error"
    );
    // A code already there stays; a body that is no error object is left alone.
    let coded = json!({"error": {"message": "m", "code": "context_length_exceeded"}});
    assert_eq!(response::error_with_code(&coded, 400), None);
    assert_eq!(response::error_with_code(&json!({"detail": "x"}), 400), None);
}

#[test]
fn errors_inside_streams_keep_a_code_in_the_clients_format() {
    let anthropic = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let mut a = AnthropicToOpenAi::new(1, false);
    let out = String::from_utf8(a.push(anthropic.as_bytes())).unwrap();
    let events = data_events(&out);
    assert_eq!(events[0]["error"]["code"], "overloaded_error", "{out}");
    assert_eq!(events[0]["error"]["type"], "overloaded_error");

    let openai = "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"code\":null}}\n\n";
    let mut o = OpenAiToAnthropic::default();
    let out = String::from_utf8(o.push(openai.as_bytes())).unwrap();
    let events = data_events(&out);
    assert_eq!(events[0]["type"], "error", "{out}");
    assert_eq!(events[0]["error"]["code"], "server_error");
}

const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"tu_1\",\"name\":\"weather\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Oslo\\\"}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn data_events(out: &str) -> Vec<Value> {
    out.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn an_anthropic_stream_becomes_openai_chunks_however_it_is_split() {
    let mut whole = AnthropicToOpenAi::new(1700, true);
    let expected = String::from_utf8(whole.push(ANTHROPIC_STREAM.as_bytes())).unwrap();
    assert!(whole.finish().is_empty());
    assert!(expected.ends_with("data: [DONE]\n\n"));
    let chunks = data_events(&expected);
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|ch| &ch["delta"]))
        .collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    assert_eq!(deltas[1], &json!({"content": "Hi"}));
    assert_eq!(deltas[2]["tool_calls"][0]["id"], "tu_1");
    let args: String = deltas
        .iter()
        .filter_map(|d| d["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"city\":\"Oslo\"}");
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        chunks[chunks.len() - 1]["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16})
    );
    assert!(chunks
        .iter()
        .all(|c| c["id"] == "msg_1" && c["object"] == "chat.completion.chunk"));

    for split in (0..ANTHROPIC_STREAM.len()).step_by(7) {
        let mut t = AnthropicToOpenAi::new(1700, true);
        let (a, b) = ANTHROPIC_STREAM.as_bytes().split_at(split);
        let mut out = t.push(a);
        out.extend(t.push(b));
        assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {split}");
    }
}

#[test]
fn an_openai_stream_becomes_anthropic_events() {
    let stream = [
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":\"Oslo\"}"}}]}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}}),
    ]
    .iter()
    .map(|c| format!("data: {c}\n\n"))
    .collect::<String>()
        + "data: [DONE]\n\n";
    let mut t = OpenAiToAnthropic::default();
    let out = String::from_utf8(stream.as_bytes().chunks(5).flat_map(|c| t.push(c)).collect()).unwrap();
    let names: Vec<&str> = out
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("event: ")?.split('\n').next())
        .collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let events = data_events(&out);
    assert_eq!(events[0]["message"]["id"], "c1");
    assert_eq!(events[2]["delta"], json!({"type": "text_delta", "text": "Hi"}));
    assert_eq!(
        events[4]["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {}})
    );
    assert_eq!(
        events[5]["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"city\":\"Oslo\"}"})
    );
    assert_eq!(events[7]["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[7]["usage"], json!({"input_tokens": 9, "output_tokens": 7}));
    assert!(t.finish().is_empty());
}

#[test]
fn cut_streams_end_with_an_error_event_in_the_clients_format() {
    let mut a = AnthropicToOpenAi::new(1, false);
    let _ = a.push(&ANTHROPIC_STREAM.as_bytes()[..300]);
    let end = String::from_utf8(a.finish()).unwrap();
    assert!(end.starts_with("data: {\"error\""), "{end}");
    assert!(end.ends_with("data: [DONE]\n\n"));
    assert_eq!(data_events(&end)[0]["error"]["code"], "stream_truncated");

    let mut o = OpenAiToAnthropic::default();
    let _ = o.push(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par");
    let end = String::from_utf8(o.finish()).unwrap();
    assert!(end.starts_with("event: error\n"), "{end}");
    assert_eq!(data_events(&end)[0]["error"]["code"], "stream_truncated");
}

// === Field fidelity: requests ===

fn openai_with(extra: Value) -> Value {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

fn anthropic_with(extra: Value) -> Value {
    let mut v = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

type Translated = Result<(Value, RequestFacts), RequestError>;

/// Each case: its name, the translation, the refusal kind and the field the error must name.
fn assert_refusals(cases: Vec<(&str, Translated, Refusal, &str)>) {
    for (name, result, refusal, field) in cases {
        let err = result.expect_err(name);
        assert_eq!((err.refusal, err.field.as_str()), (refusal, field), "{name}: {err}");
        assert!(err.to_string().starts_with(&format!("`{field}`")), "{name}: {err}");
    }
}

#[test]
fn openai_fields_anthropic_cannot_express_are_refused_by_name() {
    let o = |extra: Value| openai_to_anthropic(&openai_with(extra), 100);
    let u = Refusal::Untranslatable;
    assert_refusals(vec![
        ("metadata", o(json!({"metadata": {"run": "7"}})), u, "metadata.run"),
        // Found by the translate_request fuzz target: sent upstream as `messages: []`.
        (
            "only system messages",
            o(json!({"messages": [{"role": "system", "content": "b"}]})),
            u,
            "messages",
        ),
        (
            "message name",
            o(json!({"messages": [{"role": "user", "name": "ann", "content": "hi"}]})),
            u,
            "messages[0].name",
        ),
        (
            "system name",
            o(
                json!({"messages": [{"role": "system", "name": "x", "content": "s"}, {"role": "user", "content": "hi"}]}),
            ),
            u,
            "messages[0].name",
        ),
        (
            "image detail high",
            o(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "high"}}]}]}),
            ),
            u,
            "messages[0].content[0].image_url.detail",
        ),
        (
            "custom tool",
            o(json!({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]})),
            u,
            "tools[0].type",
        ),
        (
            "tool extra key",
            o(json!({"tools": [{"type": "function", "function": {"name": "f", "examples": []}}]})),
            u,
            "tools[0].function.examples",
        ),
        (
            "allowed_tools tool choice",
            o(json!({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}})),
            u,
            "tool_choice.type",
        ),
        (
            "obfuscation asked for",
            o(json!({"stream": true, "stream_options": {"include_obfuscation": true}})),
            u,
            "stream_options.include_obfuscation",
        ),
        (
            "explicit cache breakpoint",
            o(
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "t", "prompt_cache_breakpoint": {"mode": "explicit"}}]}]}),
            ),
            u,
            "messages[0].content[0].prompt_cache_breakpoint",
        ),
        (
            "url citations in history",
            o(json!({"messages": [{"role": "assistant", "content": "x", "annotations": [{"type": "url_citation"}]}]})),
            u,
            "messages[0].annotations",
        ),
        (
            "assistant audio",
            o(json!({"messages": [{"role": "assistant", "audio": {"id": "a"}}]})),
            u,
            "messages[0].audio",
        ),
        (
            "tool arguments that are JSON but not an object",
            o(
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            ),
            u,
            "messages[0].tool_calls[0].function.arguments",
        ),
        ("two choices", o(json!({"n": 3})), u, "n"),
    ]);
}

#[test]
fn anthropic_fields_openai_cannot_express_are_refused_by_name() {
    let a = |extra: Value| anthropic_to_openai(&anthropic_with(extra));
    let u = Refusal::Untranslatable;
    let text = |extra: Value| {
        let mut block = json!({"type": "text", "text": "t"});
        block
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        block
    };
    let web_search = anthropic_to_openai(&anthropic_with(
        json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}),
    ))
    .unwrap_err();
    assert!(
        web_search
            .reason
            .contains("\"web_search_20250305\" is an Anthropic server tool"),
        "{web_search}"
    );
    assert_refusals(vec![
        (
            "web search server tool",
            a(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})),
            u,
            "tools[0].type",
        ),
        (
            "bash server tool after a custom one",
            a(
                json!({"tools": [{"name": "f", "input_schema": {"type": "object"}}, {"type": "bash_20250124", "name": "bash"}]}),
            ),
            u,
            "tools[1].type",
        ),
        (
            "system cache_control",
            a(json!({"system": [text(json!({"cache_control": {"type": "persistent"}}))]})),
            u,
            "system[0].cache_control.type",
        ),
        (
            "message cache_control",
            a(json!({"messages": [{"role": "user", "content": [text(json!({"cache_control": "ephemeral"}))]}]})),
            Refusal::Invalid,
            "messages[0].content[0].cache_control",
        ),
        (
            "tool cache_control",
            a(
                json!({"tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral", "scope": "global"}}]}),
            ),
            u,
            "tools[0].cache_control.scope",
        ),
        (
            "deferred tool",
            a(json!({"tools": [{"name": "f", "input_schema": {"type": "object"}, "defer_loading": true}]})),
            u,
            "tools[0].defer_loading",
        ),
        (
            "tool error",
            a(
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": true}]}]}),
            ),
            u,
            "messages[0].content[0].is_error",
        ),
        (
            "image inside a tool result",
            a(
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}]}]}),
            ),
            u,
            "messages[0].content[0].content[0].type",
        ),
        (
            "metadata other than user_id",
            a(json!({"metadata": {"user_id": "u", "tenant": "t"}})),
            u,
            "metadata.tenant",
        ),
        (
            "thinking in history",
            a(
                json!({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"}]}]}),
            ),
            u,
            "messages[0].content[0].type",
        ),
        (
            "server tool use in history",
            a(
                json!({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
            ),
            u,
            "messages[0].content[0].type",
        ),
        (
            "file image source",
            a(
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
            ),
            u,
            "messages[0].content[0].source.type",
        ),
        (
            "citations on a text block",
            a(
                json!({"messages": [{"role": "assistant", "content": [text(json!({"citations": [{"type": "char_location"}]}))]}]}),
            ),
            u,
            "messages[0].content[0].citations",
        ),
    ]);
}

#[test]
fn wrong_types_and_values_are_invalid_and_named() {
    let o = |extra: Value| openai_to_anthropic(&openai_with(extra), 100);
    let a = |extra: Value| anthropic_to_openai(&anthropic_with(extra));
    let i = Refusal::Invalid;
    assert_refusals(vec![
        ("openai max_tokens 0", o(json!({"max_tokens": 0})), i, "max_tokens"),
        // Found by the translate_request fuzz target: the Anthropic side sent `messages: []`
        // upstream, which the OpenAI side (and both APIs) refuse.
        ("openai no messages", o(json!({"messages": []})), i, "messages"),
        ("anthropic no messages", a(json!({"messages": []})), i, "messages"),
        (
            "openai max_completion_tokens text",
            o(json!({"max_completion_tokens": "9"})),
            i,
            "max_completion_tokens",
        ),
        (
            "conflicting limits",
            o(json!({"max_completion_tokens": 9, "max_tokens": 8})),
            i,
            "max_tokens",
        ),
        ("stop with numbers", o(json!({"stop": [1, null]})), i, "stop[0]"),
        ("stop a number", o(json!({"stop": 7})), i, "stop"),
        ("tools with numbers", o(json!({"tools": [1, null]})), i, "tools[0]"),
        ("tools an object", o(json!({"tools": {"type": "function"}})), i, "tools"),
        (
            "tool without a name",
            o(json!({"tools": [{"type": "function", "function": {"parameters": {}}}]})),
            i,
            "tools[0].function.name",
        ),
        (
            "tool strict text",
            o(json!({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]})),
            i,
            "tools[0].function.strict",
        ),
        ("temperature text", o(json!({"temperature": "hot"})), i, "temperature"),
        ("temperature negative", o(json!({"temperature": -1})), i, "temperature"),
        ("top_p above 1", o(json!({"top_p": 1.5})), i, "top_p"),
        ("stream text", o(json!({"stream": "yes"})), i, "stream"),
        ("user a number", o(json!({"user": 5})), i, "user"),
        ("metadata a list", o(json!({"metadata": []})), i, "metadata"),
        ("n zero", o(json!({"n": 0})), i, "n"),
        (
            "tool_choice unknown",
            o(json!({"tool_choice": "sometimes"})),
            i,
            "tool_choice",
        ),
        (
            "tool message without its call id",
            o(json!({"messages": [{"role": "tool", "content": "x"}]})),
            i,
            "messages[0].tool_call_id",
        ),
        (
            "text part without text",
            o(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]})),
            i,
            "messages[0].content[0].text",
        ),
        ("message a string", o(json!({"messages": ["hi"]})), i, "messages[0]"),
        ("anthropic max_tokens 0", a(json!({"max_tokens": 0})), i, "max_tokens"),
        (
            "anthropic temperature above 1",
            a(json!({"temperature": 1.5})),
            i,
            "temperature",
        ),
        (
            "anthropic stop_sequences numbers",
            a(json!({"stop_sequences": ["a", 2]})),
            i,
            "stop_sequences[1]",
        ),
        ("anthropic tools numbers", a(json!({"tools": [1]})), i, "tools[0]"),
        (
            "anthropic tool without schema",
            a(json!({"tools": [{"name": "f"}]})),
            i,
            "tools[0].input_schema",
        ),
        (
            "anthropic tool_use input a string",
            a(
                json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}]}),
            ),
            i,
            "messages[0].content[0].input",
        ),
        (
            "anthropic base64 image without media type",
            a(
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "AA"}}]}]}),
            ),
            i,
            "messages[0].content[0].source.media_type",
        ),
        (
            "anthropic unknown role",
            a(json!({"messages": [{"role": "system", "content": "x"}]})),
            i,
            "messages[0].role",
        ),
        (
            "anthropic user_id a number",
            a(json!({"metadata": {"user_id": 7}})),
            i,
            "metadata.user_id",
        ),
    ]);
    let err = openai_to_anthropic(&openai_with(json!({"max_tokens": 0})), 1).unwrap_err();
    assert_eq!(err.code(), "invalid_field");
    let err = openai_to_anthropic(&openai_with(json!({"logprobs": true})), 1).unwrap_err();
    assert_eq!(err.code(), "untranslatable");
}

#[test]
fn defaults_and_nulls_pass_where_nothing_is_lost() {
    let (anthropic, _) = openai_to_anthropic(
        &openai_with(json!({
            "n": 1, "parallel_tool_calls": true, "metadata": {}, "logprobs": null, "temperature": null,
            "stream_options": {"include_usage": false, "include_obfuscation": false},
            "messages": [{"role": "user", "name": null, "content": [
                {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "auto"}}
            ]}]
        })),
        100,
    )
    .unwrap();
    assert_eq!(
        anthropic,
        json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
        ]}]})
    );
    // What the Anthropic SDK dumps from a response (`caller`, `toolset_name`, `citations` as
    // null) goes back as history unchanged in meaning.
    let (openai, _) = anthropic_to_openai(&anthropic_with(json!({
        "cache_control": null,
        "system": [{"type": "text", "text": "s", "cache_control": null, "citations": null}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "defer_loading": false, "cache_control": null}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "ok", "citations": null},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}, "caller": null, "toolset_name": null}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "1", "is_error": false}]}
        ]
    })))
    .unwrap();
    assert_eq!(openai["messages"][0], json!({"role": "system", "content": "s"}));
    assert_eq!(openai["tools"][0]["function"]["name"], "f");
    assert_eq!(
        openai["messages"][3],
        json!({"role": "tool", "tool_call_id": "t", "content": "1"})
    );
}

#[test]
fn strict_tools_keep_their_strictness_both_ways() {
    let (anthropic, _) = openai_to_anthropic(
        &openai_with(json!({"tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}},
            {"type": "function", "function": {"name": "g", "strict": false}}
        ]})),
        10,
    )
    .unwrap();
    assert_eq!(
        anthropic["tools"],
        json!([
            {"name": "f", "input_schema": {"type": "object"}, "strict": true},
            {"name": "g", "input_schema": {"type": "object", "properties": {}}, "strict": false}
        ])
    );
    let (openai, _) = anthropic_to_openai(&anthropic_with(
        json!({"tools": [{"type": "custom", "name": "f", "input_schema": {"type": "object"}, "strict": true}]}),
    ))
    .unwrap();
    assert_eq!(
        openai["tools"],
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}])
    );
}

#[test]
fn user_and_safety_identifier_become_the_anthropic_user_id() {
    let user = |extra: Value| openai_to_anthropic(&openai_with(extra), 10).map(|(v, _)| v["metadata"].clone());
    assert_eq!(
        user(json!({"safety_identifier": "h-1"})).unwrap(),
        json!({"user_id": "h-1"})
    );
    assert_eq!(
        user(json!({"user": "h-1", "safety_identifier": "h-1"})).unwrap(),
        json!({"user_id": "h-1"})
    );
    assert_eq!(
        user(json!({"user": "a", "safety_identifier": "b"})).unwrap_err().field,
        "safety_identifier"
    );
}

#[test]
fn an_assistant_refusal_in_history_is_what_the_assistant_said() {
    let (anthropic, _) = openai_to_anthropic(
        &openai_with(json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "refusal": "I can't help with that.", "annotations": []},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "Still no."}]},
            {"role": "user", "content": "ok"}
        ]})),
        10,
    )
    .unwrap();
    assert_eq!(
        anthropic["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "I can't help with that."},
            {"type": "text", "text": "Still no."}
        ]})
    );
}

// === Field fidelity: answers ===

const U64_MAX: u64 = u64::MAX;

#[test]
fn usage_sums_saturate_at_u64_max() {
    // The input from issue 13 (with the stop reason every real answer has).
    let anthropic = json!({"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": U64_MAX}});
    let openai = response::anthropic_to_openai(&anthropic, 1).unwrap();
    assert_eq!(
        openai["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": U64_MAX, "total_tokens": U64_MAX})
    );
    let cached = json!({"content": [], "stop_reason": "end_turn",
        "usage": {"input_tokens": U64_MAX, "cache_read_input_tokens": U64_MAX, "cache_creation_input_tokens": 1, "output_tokens": 1}});
    let openai = response::anthropic_to_openai(&cached, 1).unwrap();
    assert_eq!(openai["usage"]["prompt_tokens"], U64_MAX);
    assert_eq!(openai["usage"]["total_tokens"], U64_MAX);

    let completion = json!({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": U64_MAX, "total_tokens": 2,
                  "prompt_tokens_details": {"cached_tokens": U64_MAX}}});
    let anthropic = response::openai_to_anthropic(&completion).unwrap();
    assert_eq!(
        anthropic["usage"],
        json!({"input_tokens": 0, "cache_read_input_tokens": U64_MAX, "output_tokens": U64_MAX})
    );
}

#[test]
fn cached_tokens_map_between_the_apis_with_each_apis_prompt_total() {
    // Anthropic counts cache reads and writes outside `input_tokens`; OpenAI inside
    // `prompt_tokens`.
    let anthropic = json!({"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 80, "cache_creation_input_tokens": 5, "output_tokens": 7}});
    assert_eq!(
        response::anthropic_to_openai(&anthropic, 1).unwrap()["usage"],
        json!({"prompt_tokens": 95, "completion_tokens": 7, "total_tokens": 102,
               "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 5}})
    );
    let openai = json!({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                  "prompt_tokens_details": {"cached_tokens": 80, "audio_tokens": 0}}});
    assert_eq!(
        response::openai_to_anthropic(&openai).unwrap()["usage"],
        json!({"input_tokens": 20, "cache_read_input_tokens": 80, "output_tokens": 7})
    );
    // Without cache counts from the backend, none are invented.
    let plain = json!({"content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 4, "output_tokens": 1}});
    assert_eq!(
        response::anthropic_to_openai(&plain, 1).unwrap()["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5})
    );
}

#[test]
fn an_openai_refusal_reaches_anthropic_clients_as_a_refusal() {
    let openai = json!({"id": "c", "model": "g", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}}]});
    let anthropic = response::openai_to_anthropic(&openai).unwrap();
    assert_eq!(
        anthropic["content"],
        json!([{"type": "text", "text": "I can't help with that."}])
    );
    assert_eq!(anthropic["stop_reason"], "refusal");
    // A refusal cut short by the token limit still says it was cut.
    let mut cut = openai.clone();
    cut["choices"][0]["finish_reason"] = json!("length");
    assert_eq!(
        response::openai_to_anthropic(&cut).unwrap()["stop_reason"],
        "max_tokens"
    );
}

#[test]
fn an_anthropic_refusal_reaches_openai_clients_as_a_refusal() {
    let anthropic = json!({"content": [], "stop_reason": "refusal",
        "stop_details": {"type": "refusal", "category": "cyber", "explanation": "Declined: cyber harm."}});
    let openai = response::anthropic_to_openai(&anthropic, 1).unwrap();
    assert_eq!(openai["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(openai["choices"][0]["message"]["refusal"], "Declined: cyber harm.");
    let ordinary = json!({"content": [], "stop_reason": "end_turn", "stop_details": null});
    assert_eq!(
        response::anthropic_to_openai(&ordinary, 1).unwrap()["choices"][0]["message"]["refusal"],
        Value::Null
    );
}

#[test]
fn stop_reasons_map_to_their_equivalent_or_to_nothing() {
    for (anthropic, openai) in [
        ("end_turn", Some("stop")),
        ("stop_sequence", Some("stop")),
        ("max_tokens", Some("length")),
        ("model_context_window_exceeded", Some("length")),
        ("tool_use", Some("tool_calls")),
        ("refusal", Some("content_filter")),
        ("pause_turn", None),
        ("sleepy", None),
    ] {
        assert_eq!(response::finish_reason(anthropic), openai, "{anthropic}");
    }
    for (openai, anthropic) in [
        ("stop", Some("end_turn")),
        ("length", Some("max_tokens")),
        ("tool_calls", Some("tool_use")),
        ("function_call", Some("tool_use")),
        ("content_filter", Some("refusal")),
        ("sleepy", None),
    ] {
        assert_eq!(response::stop_reason(openai), anthropic, "{openai}");
    }
}

#[test]
fn answers_the_clients_format_cannot_hold_are_bad_upstream() {
    let msg = |extra: Value| {
        let mut v = json!({"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        response::anthropic_to_openai(&v, 1)
    };
    let completion = |message: Value, finish: Value| {
        response::openai_to_anthropic(&json!({"choices": [{"message": message, "finish_reason": finish}]}))
    };
    let call = |args: &str| json!({"tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]});
    let cases: Vec<(&str, Result<Value, BadUpstream>, &str)> = vec![
        ("pause_turn", msg(json!({"stop_reason": "pause_turn"})), "stop_reason"),
        ("unknown stop", msg(json!({"stop_reason": "sleepy"})), "stop_reason"),
        ("no stop reason", msg(json!({"stop_reason": null})), "$.stop_reason"),
        (
            "thinking block",
            msg(json!({"content": [{"type": "thinking", "thinking": "x"}]})),
            "content[0].type",
        ),
        (
            "tool input a string",
            msg(json!({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]})),
            "content[0].input",
        ),
        ("content garbage", msg(json!({"content": "hi"})), "content"),
        (
            "usage a string",
            msg(json!({"usage": {"input_tokens": "5", "output_tokens": 1}})),
            "usage.input_tokens",
        ),
        (
            "usage negative",
            msg(json!({"usage": {"input_tokens": 5, "output_tokens": -1}})),
            "usage.output_tokens",
        ),
        (
            "arguments not JSON",
            completion(call("{oops"), json!("tool_calls")),
            "choices[0].message.tool_calls[0].function.arguments",
        ),
        (
            "arguments not an object",
            completion(call("[1]"), json!("tool_calls")),
            "choices[0].message.tool_calls[0].function.arguments",
        ),
        (
            "unknown finish",
            completion(json!({"content": "x"}), json!("sleepy")),
            "choices[0].finish_reason",
        ),
        (
            "no finish",
            completion(json!({"content": "x"}), Value::Null),
            "choices[0].finish_reason",
        ),
        (
            "content a number",
            completion(json!({"content": 5}), json!("stop")),
            "choices[0].message.content",
        ),
        (
            "custom tool call",
            completion(
                json!({"tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "f", "input": "x"}}]}),
                json!("tool_calls"),
            ),
            "choices[0].message.tool_calls[0].type",
        ),
        (
            "no choices",
            response::openai_to_anthropic(&json!({"id": "x"})),
            "choices",
        ),
    ];
    for (name, result, field) in cases {
        let err = result.expect_err(name);
        assert_eq!(err.field, field, "{name}: {err}");
    }
    let bad = completion(call("{oops"), json!("tool_calls")).unwrap_err();
    let r = bad.response();
    assert_eq!(
        (r.status, r.code, r.message),
        (502, "bad_upstream_response", bad.to_string())
    );
}

// === Field fidelity: streams ===

fn anthropic_events(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

fn openai_chunks(chunks: &[Value]) -> String {
    chunks.iter().map(|c| format!("data: {c}\n\n")).collect::<String>() + "data: [DONE]\n\n"
}

fn text_stream(start_usage: Value, stop: &str, delta_usage: Value) -> String {
    anthropic_events(&[
        json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": start_usage}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": delta_usage}),
        json!({"type": "message_stop"}),
    ])
}

/// Translates a whole Anthropic stream for an OpenAI client that asked for usage.
fn to_openai(stream: &str) -> (Vec<Value>, AnthropicToOpenAi) {
    let mut t = AnthropicToOpenAi::new(1, true);
    let mut out = t.push(stream.as_bytes());
    out.extend(t.finish());
    (data_events(&String::from_utf8(out).unwrap()), t)
}

fn to_anthropic(stream: &str) -> (Vec<Value>, OpenAiToAnthropic) {
    let mut t = OpenAiToAnthropic::default();
    let mut out = t.push(stream.as_bytes());
    out.extend(t.finish());
    (data_events(&String::from_utf8(out).unwrap()), t)
}

#[test]
fn stream_usage_saturates_at_u64_max_in_both_formats() {
    let (chunks, t) = to_openai(&text_stream(
        json!({"input_tokens": 3, "cache_read_input_tokens": U64_MAX, "output_tokens": 1}),
        "end_turn",
        json!({"output_tokens": U64_MAX}),
    ));
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": U64_MAX, "completion_tokens": U64_MAX, "total_tokens": U64_MAX,
               "prompt_tokens_details": {"cached_tokens": U64_MAX}})
    );
    assert_eq!(
        t.usage(),
        BackendUsage::Reported {
            prompt: U64_MAX,
            completion: U64_MAX
        }
    );

    let (events, _) = to_anthropic(&openai_chunks(&[
        json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
        json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": U64_MAX, "total_tokens": 2,
              "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": U64_MAX}}}),
    ]));
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 0, "cache_read_input_tokens": 5, "cache_creation_input_tokens": U64_MAX, "output_tokens": U64_MAX})
    );
}

#[test]
fn streams_carry_cached_tokens_both_ways() {
    let (chunks, t) = to_openai(&text_stream(
        json!({"input_tokens": 10, "cache_read_input_tokens": 80, "cache_creation_input_tokens": 0, "output_tokens": 1}),
        "end_turn",
        json!({"output_tokens": 7}),
    ));
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 90, "completion_tokens": 7, "total_tokens": 97,
               "prompt_tokens_details": {"cached_tokens": 80, "cache_write_tokens": 0}})
    );
    // What rate-limit reads when the client did not ask for usage: every prompt token.
    assert_eq!(
        t.usage(),
        BackendUsage::Reported {
            prompt: 90,
            completion: 7
        }
    );
    // A message_delta's cumulative counts replace message_start's.
    let (chunks, _) = to_openai(&text_stream(
        json!({"input_tokens": 10, "output_tokens": 1}),
        "end_turn",
        json!({"output_tokens": 7, "cache_read_input_tokens": 30}),
    ));
    assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 40);

    let (events, _) = to_anthropic(&openai_chunks(&[
        json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
        json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
              "prompt_tokens_details": {"cached_tokens": 80}}}),
    ]));
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 20, "cache_read_input_tokens": 80, "output_tokens": 7})
    );
}

#[test]
fn a_streamed_openai_refusal_ends_as_an_anthropic_refusal() {
    let (events, t) = to_anthropic(&openai_chunks(&[
        json!({"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": null, "refusal": ""}}]}),
        json!({"id": "c", "choices": [{"index": 0, "delta": {"refusal": "I can't "}}]}),
        json!({"id": "c", "choices": [{"index": 0, "delta": {"refusal": "help."}}]}),
        json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]));
    assert!(t.failure().is_none());
    let text: String = events.iter().filter_map(|e| e["delta"]["text"].as_str()).collect();
    assert_eq!(text, "I can't help.");
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "refusal");
    assert_eq!(events.last().unwrap()["type"], "message_stop");
}

#[test]
fn a_streamed_anthropic_refusal_reaches_openai_clients() {
    let stream = anthropic_events(&[
        json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 3}}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_details": {"type": "refusal", "explanation": "Declined."}}, "usage": {"output_tokens": 0}}),
        json!({"type": "message_stop"}),
    ]);
    let (chunks, _) = to_openai(&stream);
    let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).collect();
    assert_eq!(deltas[1]["delta"], json!({"refusal": "Declined."}));
    assert_eq!(deltas[2]["finish_reason"], "content_filter");
}

#[test]
fn a_streamed_tool_call_without_input_gets_empty_object_arguments() {
    let stream = anthropic_events(&[
        json!({"type": "message_start", "message": {"id": "m", "model": "c"}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "now", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        json!({"type": "message_stop"}),
    ]);
    let (chunks, _) = to_openai(&stream);
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{}");
}

#[test]
fn streams_the_clients_format_cannot_hold_end_with_an_error_event() {
    let tool_chunks = |args: &str| {
        openai_chunks(&[
            json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args}}]}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ])
    };
    let (events, t) = to_anthropic(&tool_chunks("{\"city\":\"Os"));
    assert_eq!(
        t.failure().unwrap().field,
        "choices[0].delta.tool_calls[0].function.arguments"
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["code"], "bad_upstream_response");
    assert!(!events.iter().any(|e| e["type"] == "message_stop"));
    // Anthropic SDKs parse partial JSON as it comes: no piece of the broken arguments was sent.
    assert!(!events.iter().any(|e| e["delta"]["type"] == "input_json_delta"));
    let (events, t) = to_anthropic(&tool_chunks("{\"city\":\"Oslo\"}"));
    assert!(t.failure().is_none(), "valid arguments pass");
    let sent: Vec<&Value> = events.iter().filter_map(|e| e["delta"].get("partial_json")).collect();
    assert_eq!(
        sent,
        vec![&json!("{\"city\":\"Oslo\"}")],
        "whole, once the call is complete"
    );

    let openai_cases = [
        (
            "no finish reason",
            openai_chunks(&[json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}}]})]),
            "choices[0].finish_reason",
        ),
        (
            "unknown finish reason",
            openai_chunks(&[json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "sleepy"}]})]),
            "choices[0].finish_reason",
        ),
        ("garbage", "data: {not json\n\n".to_owned(), "chunk"),
        (
            "usage a string",
            openai_chunks(&[json!({"id": "c", "choices": [], "usage": {"prompt_tokens": "3"}})]),
            "usage.prompt_tokens",
        ),
    ];
    for (name, stream, field) in openai_cases {
        let (events, t) = to_anthropic(&stream);
        assert_eq!(t.failure().map(|f| f.field.as_str()), Some(field), "{name}");
        assert_eq!(
            events.last().unwrap()["error"]["code"],
            "bad_upstream_response",
            "{name}"
        );
    }

    let start = json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}});
    let anthropic_cases = [
        (
            "pause_turn",
            anthropic_events(&[
                start.clone(),
                json!({"type": "message_delta", "delta": {"stop_reason": "pause_turn"}}),
                json!({"type": "message_stop"}),
            ]),
            "message_delta.delta.stop_reason",
        ),
        (
            "thinking block",
            anthropic_events(&[
                start.clone(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ]),
            "content_block_start.content_block.type",
        ),
        (
            "usage negative",
            anthropic_events(&[json!({"type": "message_start", "message": {"usage": {"input_tokens": -3}}})]),
            "message_start.message.usage.input_tokens",
        ),
        (
            "garbage",
            "event: message_delta\ndata: {oops\n\n".to_owned(),
            "message_delta",
        ),
    ];
    for (name, stream, field) in anthropic_cases {
        let mut t = AnthropicToOpenAi::new(1, true);
        let out = String::from_utf8(t.push(stream.as_bytes())).unwrap();
        assert!(t.finish().is_empty(), "{name}: ended once");
        assert_eq!(t.failure().map(|f| f.field.as_str()), Some(field), "{name}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{name}");
        let chunks = data_events(&out);
        assert_eq!(
            chunks.last().unwrap()["error"]["code"],
            "bad_upstream_response",
            "{name}"
        );
    }
}

#[test]
fn sampling_parameters_reach_the_backend_as_the_client_wrote_them() {
    // serde_json's default float reader misreads about one in ten 16- and 17-digit decimals
    // (the model_body fuzz target found it); a translated request must carry the client's
    // number, not its neighbour.
    let body = br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"temperature":0.9073038322028689,"top_p":9.999999999999999e-1}"#;
    let openai = anthropic_to_openai(&serde_json::from_slice(body).unwrap()).unwrap().0;
    let anthropic = openai_to_anthropic(
        &serde_json::from_slice(&serde_json::to_vec(&openai).unwrap()).unwrap(),
        1024,
    )
    .unwrap()
    .0;
    for translated in [openai, anthropic] {
        let text = serde_json::to_string(&translated).unwrap();
        assert!(text.contains(r#""temperature":0.9073038322028689,"#), "{text}");
        assert!(text.contains(r#""top_p":0.9999999999999999"#), "{text}");
    }
}

#[test]
fn ephemeral_cache_breakpoints_are_accepted_and_dropped_for_openai_backends() {
    // OpenAI caches prompt prefixes on its own: an Anthropic breakpoint has nothing to ask.
    let ephemeral = json!({"type": "ephemeral"});
    let with_ttl = json!({"type": "ephemeral", "ttl": "1h"});
    let body = json!({
        "model": "m", "max_tokens": 10,
        "cache_control": ephemeral,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": ephemeral}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": with_ttl}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "hi", "cache_control": ephemeral},
                {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}, "cache_control": ephemeral}
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}, "cache_control": ephemeral}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "cache_control": ephemeral,
                 "content": [{"type": "text", "text": "42", "cache_control": ephemeral}]}
            ]}
        ]
    });
    let (out, _) = anthropic_to_openai(&body).unwrap();
    assert!(!out.to_string().contains("cache_control"), "{out}");
    assert_eq!(out["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(
        out["messages"][3],
        json!({"role": "tool", "tool_call_id": "t1", "content": "42"})
    );
    assert_eq!(out["tools"][0]["function"]["name"], "f");
    // Anything but an ephemeral breakpoint is refused by name.
    for (cache_control, field) in [
        (json!({"type": "persistent"}), "cache_control.type"),
        (json!({"type": "ephemeral", "ttl": "1d"}), "cache_control.ttl"),
        (json!("ephemeral"), "cache_control"),
    ] {
        let err = anthropic_to_openai(&anthropic_with(json!({"cache_control": cache_control}))).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }
}

#[test]
fn only_a_final_count_is_the_backends_usage() {
    // An Anthropic stream cut after message_start has only its placeholder (output_tokens 1).
    let mut cut = AnthropicToOpenAi::new(1, false);
    let _ = cut.push(&ANTHROPIC_STREAM.as_bytes()[..300]);
    let _ = cut.finish();
    assert_eq!(cut.usage(), BackendUsage::Unknown);
    let mut whole = AnthropicToOpenAi::new(1, false);
    let _ = whole.push(ANTHROPIC_STREAM.as_bytes());
    assert_eq!(
        whole.usage(),
        BackendUsage::Reported {
            prompt: 9,
            completion: 7
        }
    );
    // An OpenAI stream without a usage chunk: the Anthropic client gets zeros, the backend's
    // usage stays unknown.
    let mut none = OpenAiToAnthropic::default();
    let out = none.push(
        b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
    );
    assert!(String::from_utf8(out).unwrap().contains("message_stop"));
    assert_eq!(none.usage(), BackendUsage::Unknown);
    // Complete answers, in the backend's API, translatable or not.
    let anthropic =
        json!({"content": [], "stop_reason": "pause_turn", "usage": {"input_tokens": 5, "output_tokens": 9}});
    assert_eq!(
        super::usage::of_answer(&anthropic, true),
        BackendUsage::Reported {
            prompt: 5,
            completion: 9
        }
    );
    let openai = json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}});
    assert_eq!(
        super::usage::of_answer(&openai, false),
        BackendUsage::Reported {
            prompt: 4,
            completion: 2
        }
    );
    for missing in [
        json!({"choices": []}),
        json!({"usage": null}),
        json!({"usage": {"prompt_tokens": 4}}),
        json!({"usage": {"prompt_tokens": 4, "completion_tokens": -1}}),
    ] {
        assert_eq!(
            super::usage::of_answer(&missing, false),
            BackendUsage::Unknown,
            "{missing}"
        );
    }
}

#[test]
fn integral_float_max_tokens_are_integers_and_huge_ones_out_of_range() {
    for (given, want) in [(json!(1024.0), 1024), (json!(5e4), 50_000), (json!(5.0e4), 50_000)] {
        let (out, _) = openai_to_anthropic(&openai_with(json!({"max_tokens": given})), 10).unwrap();
        assert_eq!(out["max_tokens"], json!(want), "{given}");
        assert!(out["max_tokens"].is_u64(), "sent as an integer");
        let (out, _) = anthropic_to_openai(&anthropic_with(json!({"max_tokens": given}))).unwrap();
        assert_eq!(out["max_completion_tokens"], json!(want), "{given}");
    }
    // 99999999999999999999999 reads as a double past 2^64.
    let huge: Value = serde_json::from_str("99999999999999999999999").unwrap();
    let err = openai_to_anthropic(&openai_with(json!({"max_completion_tokens": huge})), 10).unwrap_err();
    assert_eq!(err.field, "max_completion_tokens");
    assert!(err.reason.contains("out of range"), "{err}");
    for bad in [json!(2.5), json!(0.0), json!(-3.0)] {
        let err = anthropic_to_openai(&anthropic_with(json!({"max_tokens": bad}))).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("max_tokens", "must be a positive integer")
        );
    }
}

#[test]
fn a_request_without_a_maximum_is_capped_at_the_reservation_in_the_backends_api() {
    let mut openai = json!({"model": "m", "messages": [], "max_completion_tokens": null});
    assert!(cap_output(&mut openai, false, 100));
    assert_eq!(openai["max_completion_tokens"], 100);
    let mut anthropic = json!({"model": "m", "messages": []});
    assert!(cap_output(&mut anthropic, true, 100));
    assert_eq!(anthropic["max_tokens"], 100);
    // A maximum the client named stays, in either OpenAI field.
    for (mut body, anthropic) in [
        (json!({"max_tokens": 7}), false),
        (json!({"max_completion_tokens": 7}), false),
        (json!({"max_tokens": 7}), true),
    ] {
        let before = body.clone();
        assert!(!cap_output(&mut body, anthropic, 100));
        assert_eq!(body, before);
    }
    assert!(!cap_output(&mut json!([1]), false, 100));
}

#[test]
fn neutral_openai_settings_pass_to_anthropic_and_others_are_refused_by_name() {
    let neutral = json!({"frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": false,
                         "store": false, "response_format": {"type": "text"}});
    let (out, _) = openai_to_anthropic(&openai_with(neutral), 10).unwrap();
    for key in [
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "store",
        "response_format",
    ] {
        assert!(out.get(key).is_none(), "{key} dropped: {out}");
    }
    for (extra, field) in [
        (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
        (json!({"presence_penalty": -1}), "presence_penalty"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"store": true}), "store"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format.type",
        ),
        (
            json!({"response_format": {"type": "text", "json_schema": {}}}),
            "response_format.json_schema",
        ),
    ] {
        let err = openai_to_anthropic(&openai_with(extra.clone()), 10).unwrap_err();
        assert_eq!(
            (err.refusal, err.field.as_str()),
            (Refusal::Untranslatable, field),
            "{extra}"
        );
    }
    // Out of OpenAI's own range, or the wrong type: invalid.
    for extra in [json!({"frequency_penalty": 3}), json!({"logprobs": "yes"})] {
        let err = openai_to_anthropic(&openai_with(extra.clone()), 10).unwrap_err();
        assert_eq!(err.refusal, Refusal::Invalid, "{extra}");
    }
}

#[test]
fn openai_answers_an_anthropic_message_cannot_hold_are_bad_upstream() {
    let choice =
        |i: u64| json!({"index": i, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"});
    let two = json!({"choices": [choice(0), choice(1)]});
    assert_eq!(response::openai_to_anthropic(&two).unwrap_err().field, "choices");
    for (key, value) in [
        ("function_call", json!({"name": "f", "arguments": "{}"})),
        ("audio", json!({"id": "a", "data": "UklGRg=="})),
    ] {
        let mut one = json!({"choices": [choice(0)]});
        one["choices"][0]["message"][key] = value;
        let err = response::openai_to_anthropic(&one).unwrap_err();
        assert_eq!(err.field, format!("choices[0].message.{key}"));
    }
    // Streams: a second choice's delta, a legacy function call delta.
    for chunk in [
        json!({"id": "c", "choices": [{"index": 1, "delta": {"content": "x"}}]}),
        json!({"id": "c", "choices": [{"index": 0, "delta": {"function_call": {"name": "f"}}}]}),
    ] {
        let mut t = OpenAiToAnthropic::default();
        let out = String::from_utf8(t.push(format!("data: {chunk}\n\n").as_bytes())).unwrap();
        assert!(out.contains("bad_upstream_response"), "{out}");
        assert!(t.failure().is_some());
    }
}

#[test]
fn a_backend_error_that_is_not_json_gets_the_type_and_code_of_its_status() {
    for (status, kind) in [
        (502, "api_error"),
        (503, "overloaded_error"),
        (429, "rate_limit_error"),
        (400, "invalid_request_error"),
    ] {
        let r = response::unreadable_error(status);
        assert_eq!(
            (r.status, r.code, r.error_type.as_str()),
            (status, kind, if status == 503 { "api_error" } else { kind })
        );
        assert!(r.message.contains(&status.to_string()));
    }
}
