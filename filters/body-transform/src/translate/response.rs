//! Complete (non-streaming) response bodies and error bodies, both directions.
//!
//! A success is translated only when all of it can be said in the client's format; otherwise
//! the result is a [`BadUpstream`] naming the part that could not.

use serde_json::{json, Map, Value};

use portico_core::response::{ErrorResponse, ErrorType};

use super::usage::Tokens;
use super::{put, BadUpstream};

/// Anthropic `stop_reason` to OpenAI `finish_reason`; `None` when OpenAI has no word for it
/// (`pause_turn`, or a reason this gateway does not know).
pub fn finish_reason(stop_reason: &str) -> Option<&'static str> {
    match stop_reason {
        "end_turn" | "stop_sequence" => Some("stop"),
        // Both mean the answer was cut for want of tokens.
        "max_tokens" | "model_context_window_exceeded" => Some("length"),
        "tool_use" => Some("tool_calls"),
        "refusal" => Some("content_filter"),
        _ => None,
    }
}

/// OpenAI `finish_reason` to Anthropic `stop_reason`; `None` for a reason this gateway does not
/// know.
pub fn stop_reason(finish_reason: &str) -> Option<&'static str> {
    match finish_reason {
        "stop" => Some("end_turn"),
        "length" => Some("max_tokens"),
        "tool_calls" | "function_call" => Some("tool_use"),
        "content_filter" => Some("refusal"),
        _ => None,
    }
}

pub(crate) fn untranslatable_stop(field: &str, reason: &str) -> BadUpstream {
    BadUpstream::new(field, format!("{reason:?} has no equivalent in the client's API"))
}

/// The string at `key` of `v` (named `path.key` in errors).
fn string<'a>(v: &'a Value, key: &str, path: &str) -> Result<&'a str, BadUpstream> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| BadUpstream::new(format!("{path}.{key}"), "must be a string"))
}

/// An Anthropic message as an OpenAI chat completion. `created` is Unix seconds.
pub fn anthropic_to_openai(msg: &Value, created: u64) -> Result<Value, BadUpstream> {
    let Some(Value::Array(blocks)) = msg.get("content") else {
        return Err(BadUpstream::new("content", "must be an array of blocks"));
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let path = format!("content[{i}]");
        match string(b, "type", &path)? {
            "text" => text.push_str(string(b, "text", &path)?),
            "tool_use" => {
                let input = match b.get("input") {
                    Some(input @ Value::Object(_)) => input.to_string(),
                    _ => return Err(BadUpstream::new(format!("{path}.input"), "must be a JSON object")),
                };
                calls.push(json!({
                    "id": string(b, "id", &path)?,
                    "type": "function",
                    "function": {"name": string(b, "name", &path)?, "arguments": input}
                }));
            }
            other => {
                return Err(BadUpstream::new(
                    format!("{path}.type"),
                    format!("{other:?} blocks have no OpenAI equivalent"),
                ))
            }
        }
    }
    let stop = string(msg, "stop_reason", "$")?;
    let finish = finish_reason(stop).ok_or_else(|| untranslatable_stop("stop_reason", stop))?;
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": refusal_explanation(msg, stop)
    });
    if !calls.is_empty() {
        put(&mut message, "tool_calls", Value::Array(calls));
    }
    let usage = match msg.get("usage") {
        None | Some(Value::Null) => Tokens::default(),
        Some(u) => Tokens::from_anthropic(u, "usage")?,
    };
    Ok(json!({
        "id": msg.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": msg.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish
        }],
        "usage": usage.to_openai()
    }))
}

/// Anthropic's explanation of a refusal (`stop_details.explanation`), which OpenAI clients read
/// in `refusal`.
pub(crate) fn refusal_explanation(holder: &Value, stop: &str) -> Value {
    match holder
        .get("stop_details")
        .and_then(|d| d.get("explanation"))
        .and_then(Value::as_str)
    {
        Some(explanation) if stop == "refusal" => json!(explanation),
        _ => Value::Null,
    }
}

/// An OpenAI tool call's `arguments` as Anthropic's `input`, which must be a JSON object.
pub(crate) fn tool_input(arguments: &str, field: impl Into<String>) -> Result<Value, BadUpstream> {
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => Ok(input),
        _ => Err(BadUpstream::new(
            field,
            "is not a JSON object, so it cannot be an Anthropic tool input",
        )),
    }
}

/// An OpenAI chat completion as an Anthropic message. A refusal becomes the message's text with
/// `stop_reason: "refusal"`.
pub fn openai_to_anthropic(completion: &Value) -> Result<Value, BadUpstream> {
    let choice = match completion.get("choices").and_then(Value::as_array).map(Vec::as_slice) {
        Some([choice]) => choice,
        // An Anthropic message is one answer: merging several, or keeping one, loses the rest.
        Some([_, _, ..]) => {
            return Err(BadUpstream::new(
                "choices",
                "holds several choices, and an Anthropic message holds one",
            ))
        }
        _ => return Err(BadUpstream::new("choices", "must hold a choice")),
    };
    let path = "choices[0].message";
    let Some(message @ Value::Object(_)) = choice.get("message") else {
        return Err(BadUpstream::new(path, "must be an object"));
    };
    // Legacy function calls carry no id for a tool_use block; audio has no Anthropic block.
    for key in ["function_call", "audio"] {
        if message.get(key).is_some_and(|v| !v.is_null()) {
            return Err(BadUpstream::new(format!("{path}.{key}"), "has no Anthropic equivalent"));
        }
    }
    let mut content = Vec::new();
    let mut refused = false;
    for key in ["content", "refusal"] {
        match message.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                refused |= key == "refusal";
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
            }
            Some(_) => return Err(BadUpstream::new(format!("{path}.{key}"), "must be a string")),
        }
    }
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for (i, call) in calls.iter().enumerate() {
                let call_path = format!("{path}.tool_calls[{i}]");
                if let Some(kind) = call.get("type").and_then(Value::as_str).filter(|t| *t != "function") {
                    return Err(BadUpstream::new(
                        format!("{call_path}.type"),
                        format!("{kind:?} tool calls have no Anthropic equivalent"),
                    ));
                }
                let f = call.get("function").unwrap_or(&Value::Null);
                let f_path = format!("{call_path}.function");
                content.push(json!({
                    "type": "tool_use",
                    "id": string(call, "id", &call_path)?,
                    "name": string(f, "name", &f_path)?,
                    "input": tool_input(string(f, "arguments", &f_path)?, format!("{f_path}.arguments"))?
                }));
            }
        }
        Some(_) => return Err(BadUpstream::new(format!("{path}.tool_calls"), "must be an array")),
    }
    let finish = string(choice, "finish_reason", "choices[0]")?;
    let mut stop = stop_reason(finish).ok_or_else(|| untranslatable_stop("choices[0].finish_reason", finish))?;
    if refused && stop == "end_turn" {
        stop = "refusal";
    }
    let usage = match completion.get("usage") {
        None | Some(Value::Null) => Tokens::default(),
        Some(u) => Tokens::from_openai(u, "usage")?,
    };
    Ok(json!({
        "id": completion.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage.to_anthropic()
    }))
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

/// A backend error's stable code for the client: the backend's own `error.code` when it is a
/// string, else its `error.type` (Anthropic's `overloaded_error`, OpenAI's `server_error`), else
/// the Anthropic type of the status. Never empty, never null: clients branch on it.
pub fn upstream_error_code(body: &Value, status: u32) -> String {
    let error = body.get("error");
    let named = |key: &str| {
        error
            .and_then(|e| e.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    named("code")
        .or_else(|| named("type"))
        .unwrap_or_else(|| anthropic_error_type(status))
        .to_owned()
}

/// The error a client gets in place of a backend's error answer that is not JSON (a proxy's
/// HTML page, an empty body): the backend's status, and the type and code that status has in
/// both APIs, so every error on a model route carries a code.
pub fn unreadable_error(status: u32) -> ErrorResponse {
    let error_type = match status {
        400 | 413 | 422 => ErrorType::InvalidRequest,
        401 => ErrorType::Authentication,
        403 => ErrorType::Permission,
        404 => ErrorType::NotFound,
        429 => ErrorType::RateLimit,
        _ => ErrorType::Api,
    };
    ErrorResponse::new(
        status,
        error_type,
        anthropic_error_type(status),
        format!("the model backend answered {status} with a body that is not a JSON error"),
    )
}

/// An OpenAI error body as Anthropic's error shape, with the backend's code kept.
pub fn error_to_anthropic(body: &Value, status: u32) -> Value {
    json!({"type": "error", "error": {
        "type": anthropic_error_type(status),
        "code": upstream_error_code(body, status),
        "message": error_message(body)
    }})
}

/// An Anthropic error body as OpenAI's error shape; `code` is never null.
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
    error.insert("code".into(), json!(upstream_error_code(body, status)));
    json!({"error": error})
}

/// A backend error answered in the client's own API (no translation): the body as it came,
/// with `error.code` filled in when the backend left it out or null (OpenAI often does), so
/// every error a client sees carries a code. `None` when the body is not an error object.
pub fn error_with_code(body: &Value, status: u32) -> Option<Value> {
    let error = body.get("error").filter(|e| e.is_object())?;
    if error
        .get("code")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.trim().is_empty())
    {
        return None;
    }
    let mut out = body.clone();
    if let Some(e) = out.get_mut("error") {
        put(e, "code", json!(upstream_error_code(body, status)));
    }
    Some(out)
}
