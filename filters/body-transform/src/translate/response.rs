//! Complete (non-streaming) response bodies and error bodies, both directions.

use serde_json::{json, Map, Value};

use super::put;

/// Anthropic `stop_reason` to OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` to Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// An Anthropic message as an OpenAI chat completion. `created` is Unix seconds.
pub fn anthropic_to_openai(msg: &Value, created: u64) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    if let Some(Value::Array(blocks)) = msg.get("content") {
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("tool_use") => calls.push(json!({
                    "id": b.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": b.get("name").cloned().unwrap_or(Value::Null),
                                 "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)}
                })),
                _ => {}
            }
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        put(&mut message, "tool_calls", Value::Array(calls));
    }
    let usage = msg.get("usage");
    let prompt = usage.map_or(0, |u| {
        ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
            .iter()
            .filter_map(|k| u.get(*k).and_then(Value::as_u64))
            .sum()
    });
    let completion = usage
        .and_then(|u| u.get("output_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({
        "id": msg.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": msg.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(msg.get("stop_reason").and_then(Value::as_str))
        }],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    })
}

/// An OpenAI chat completion as an Anthropic message.
pub fn openai_to_anthropic(completion: &Value) -> Value {
    let choice = completion.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    if let Some(text) = message.and_then(|m| m.get("content")).and_then(Value::as_str) {
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    if let Some(Value::Array(calls)) = message.and_then(|m| m.get("tool_calls")) {
        for call in calls {
            let f = call.get("function");
            let args = f
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("{}");
            content.push(json!({
                "type": "tool_use",
                "id": call.get("id").cloned().unwrap_or(Value::Null),
                "name": f.and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null),
                "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}))
            }));
        }
    }
    let usage = completion.get("usage");
    let number = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    json!({
        "id": completion.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": {"input_tokens": number("prompt_tokens"), "output_tokens": number("completion_tokens")}
    })
}

fn error_message(body: &Value) -> String {
    body.get("error")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("the model backend returned an error")
        .to_owned()
}

/// The Anthropic error type for an HTTP status.
fn anthropic_error_type(status: u32) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An OpenAI error body as Anthropic's error shape.
pub fn error_to_anthropic(body: &Value, status: u32) -> Value {
    json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": error_message(body)}})
}

/// An Anthropic error body as OpenAI's error shape.
pub fn error_to_openai(body: &Value, status: u32) -> Value {
    let kind = body
        .get("error")
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| anthropic_error_type(status));
    let mut error = Map::new();
    error.insert("message".into(), json!(error_message(body)));
    error.insert("type".into(), json!(kind));
    error.insert("param".into(), Value::Null);
    error.insert("code".into(), Value::Null);
    json!({"error": error})
}
