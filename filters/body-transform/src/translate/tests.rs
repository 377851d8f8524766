//! Translation fixtures, compiled only under #[cfg(test)] (declared in translate/mod.rs).

use serde_json::{json, Value};

use super::request::{anthropic_to_openai, openai_to_anthropic, RequestFacts};
use super::stream::{AnthropicToOpenAi, OpenAiToAnthropic};
use super::{response, Untranslatable};

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
            "response_format",
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
        let Untranslatable { field: got, .. } = refuse(body.clone());
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
    let openai = response::anthropic_to_openai(&anthropic, 1700);
    assert_eq!(
        openai,
        json!({
            "id": "msg_1", "object": "chat.completion", "created": 1700, "model": "claude-x",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.",
                "tool_calls": [{"id": "tu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]
            }}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        })
    );
    let back = response::openai_to_anthropic(&openai);
    assert_eq!(
        back["content"],
        json!([{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}])
    );
    assert_eq!(back["stop_reason"], "tool_use");
    assert_eq!(back["usage"], json!({"input_tokens": 12, "output_tokens": 5}));
    for (a, o) in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
    ] {
        assert_eq!(response::finish_reason(Some(a)), o);
    }
    for (o, a) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        assert_eq!(response::stop_reason(Some(o)), a);
    }
}

#[test]
fn errors_take_the_clients_shape() {
    let from_anthropic = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    assert_eq!(
        response::error_to_openai(&from_anthropic, 529),
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}})
    );
    let from_openai =
        json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
    assert_eq!(
        response::error_to_anthropic(&from_openai, 429),
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
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

    let mut o = OpenAiToAnthropic::default();
    let _ = o.push(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par");
    let end = String::from_utf8(o.finish()).unwrap();
    assert!(end.starts_with("event: error\n"), "{end}");
}
