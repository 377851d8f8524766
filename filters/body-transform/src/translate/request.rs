//! Request bodies: OpenAI Chat Completions to Anthropic Messages and back.
//!
//! Only what maps faithfully is translated; a field one side cannot express is refused with a
//! [`Untranslatable`] naming it, never dropped silently.

use serde_json::{json, Map, Value};

use super::{put, Untranslatable};

fn fail<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, Untranslatable> {
    Err(Untranslatable {
        field: field.into(),
        reason: reason.into(),
    })
}

fn object(v: &Value, field: &str) -> Result<Map<String, Value>, Untranslatable> {
    match v {
        Value::Object(m) => Ok(m.clone()),
        _ => fail(field, "must be a JSON object"),
    }
}

/// What the response translation needs to know about the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`: send a final chunk with usage.
    pub include_usage: bool,
}

// === OpenAI -> Anthropic ===

const OPENAI_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
    "metadata",
];

/// Translates an OpenAI Chat Completions request into an Anthropic Messages request.
pub fn openai_to_anthropic(body: &Value, default_max_tokens: u64) -> Result<(Value, RequestFacts), Untranslatable> {
    let req = object(body, "$")?;
    for key in req.keys() {
        if !OPENAI_FIELDS.contains(&key.as_str()) {
            return fail(key.as_str(), "has no equivalent in the Anthropic Messages API");
        }
    }
    let mut out = Map::new();
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    if let Some(n) = req.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return fail("n", "Anthropic returns one choice per request");
        }
    }
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .filter(|v| !v.is_null());
    let max_tokens = match max_tokens {
        Some(v) => v
            .as_u64()
            .map_or_else(|| fail("max_tokens", "must be a positive integer"), Ok)?,
        None => default_max_tokens,
    };
    out.insert("max_tokens".into(), json!(max_tokens));
    if let Some(t) = req.get("temperature").filter(|v| !v.is_null()) {
        let t = t.as_f64().map_or_else(|| fail("temperature", "must be a number"), Ok)?;
        if !(0.0..=1.0).contains(&t) {
            return fail("temperature", "Anthropic accepts 0 to 1");
        }
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.get("top_p").filter(|v| !v.is_null()) {
        out.insert("top_p".into(), p.clone());
    }
    match req.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return fail("stop", "must be a string or an array of strings"),
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), json!(true));
    }
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = req.get("tools").filter(|v| !v.is_null()) {
        let Value::Array(tools) = tools else {
            return fail("tools", "must be an array");
        };
        let mut converted = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return fail(format!("tools[{i}].type"), "only function tools translate");
            }
            let f = tool
                .get("function")
                .map_or_else(|| fail(format!("tools[{i}].function"), "is required"), Ok)?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| fail(format!("tools[{i}].function.name"), "is required"), Ok)?;
            let mut t = json!({"name": name, "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
            if let Some(d) = f.get("description") {
                put(&mut t, "description", d.clone());
            }
            converted.push(t);
        }
        out.insert("tools".into(), Value::Array(converted));
    }
    let parallel = req.get("parallel_tool_calls").and_then(Value::as_bool);
    if let Some(choice) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let mut c = match choice {
            Value::String(s) if s == "auto" => json!({"type": "auto"}),
            Value::String(s) if s == "required" => json!({"type": "any"}),
            Value::String(s) if s == "none" => json!({"type": "none"}),
            Value::Object(_) => match choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => json!({"type": "tool", "name": name}),
                None => return fail("tool_choice", "names no function"),
            },
            _ => return fail("tool_choice", "must be auto, required, none or a function"),
        };
        if parallel == Some(false) && c.get("type") != Some(&json!("none")) {
            put(&mut c, "disable_parallel_tool_use", json!(true));
        }
        out.insert("tool_choice".into(), c);
    } else if parallel == Some(false) && out.contains_key("tools") {
        out.insert(
            "tool_choice".into(),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        );
    }

    let messages = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return fail("messages", "must be a non-empty array"),
    };
    let mut system: Vec<String> = Vec::new();
    let mut converted: Vec<Value> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let field = format!("messages[{i}]");
        match role {
            "system" | "developer" => {
                if !converted.is_empty() {
                    return fail(
                        format!("{field}.role"),
                        "a system message after the conversation started has no Anthropic equivalent",
                    );
                }
                system.push(text_of(m.get("content"), &format!("{field}.content"))?);
            }
            "user" => push_blocks(&mut converted, "user", user_blocks(m.get("content"), &field)?),
            "assistant" => {
                let mut blocks = Vec::new();
                match m.get("content") {
                    None | Some(Value::Null) => {}
                    other => {
                        let text = text_of(other, &format!("{field}.content"))?;
                        if !text.is_empty() {
                            blocks.push(json!({"type": "text", "text": text}));
                        }
                    }
                }
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for (j, call) in calls.iter().enumerate() {
                        let f = call.get("function");
                        let args = f
                            .and_then(|f| f.get("arguments"))
                            .and_then(Value::as_str)
                            .unwrap_or("{}");
                        let input: Value = serde_json::from_str(args).map_or_else(
                            |_| {
                                fail(
                                    format!("{field}.tool_calls[{j}].function.arguments"),
                                    "is not valid JSON",
                                )
                            },
                            Ok,
                        )?;
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": call.get("id").cloned().unwrap_or(Value::Null),
                            "name": f.and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null),
                            "input": input
                        }));
                    }
                }
                push_blocks(&mut converted, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .map_or_else(|| fail(format!("{field}.tool_call_id"), "is required"), Ok)?;
                let content = text_of(m.get("content"), &format!("{field}.content"))?;
                push_blocks(
                    &mut converted,
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": content})],
                );
            }
            other => return fail(format!("{field}.role"), format!("role {other:?} does not translate")),
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(converted));
    Ok((Value::Object(out), RequestFacts { stream, include_usage }))
}

/// Anthropic wants alternating roles: consecutive blocks of one role join one message.
fn push_blocks(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if let Some(last) = messages.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(content)) = last.get_mut("content") {
                content.extend(blocks);
                return;
            }
        }
    }
    messages.push(json!({"role": role, "content": blocks}));
}

/// Text of a string or an array of text parts.
fn text_of(content: Option<&Value>, field: &str) -> Result<String, Untranslatable> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push(t.to_owned()),
                    _ => return fail(format!("{field}[{i}]"), "only text parts are allowed here"),
                }
            }
            Ok(text.join("\n"))
        }
        Some(_) => fail(field, "must be a string or an array of parts"),
    }
}

fn user_blocks(content: Option<&Value>, field: &str) -> Result<Vec<Value>, Untranslatable> {
    match content {
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()})),
                Some("image_url") => {
                    let url = p
                        .get("image_url")
                        .and_then(|u| u.get("url"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    image_block(url).map_or_else(
                        || {
                            fail(
                                format!("{field}.content[{i}].image_url.url"),
                                "must be an http(s) or base64 data URL",
                            )
                        },
                        Ok,
                    )
                }
                Some(other) => fail(
                    format!("{field}.content[{i}].type"),
                    format!("{other:?} parts do not translate"),
                ),
                None => fail(format!("{field}.content[{i}].type"), "is required"),
            })
            .collect(),
        _ => fail(format!("{field}.content"), "must be a string or an array of parts"),
    }
}

fn image_block(url: &str) -> Option<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let media_type = meta.strip_suffix(";base64")?;
        return Some(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    (url.starts_with("https://") || url.starts_with("http://"))
        .then(|| json!({"type": "image", "source": {"type": "url", "url": url}}))
}

// === Anthropic -> OpenAI ===

const ANTHROPIC_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

/// Translates an Anthropic Messages request into an OpenAI Chat Completions request.
pub fn anthropic_to_openai(body: &Value) -> Result<(Value, RequestFacts), Untranslatable> {
    let req = object(body, "$")?;
    for key in req.keys() {
        if !ANTHROPIC_FIELDS.contains(&key.as_str()) {
            return fail(key.as_str(), "has no equivalent in the OpenAI Chat Completions API");
        }
    }
    let mut out = Map::new();
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    let mut messages: Vec<Value> = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(s) => messages.push(json!({"role": "system", "content": text_of(Some(s), "system")?})),
    }
    let Some(Value::Array(input)) = req.get("messages") else {
        return fail("messages", "must be an array");
    };
    for (i, m) in input.iter().enumerate() {
        let field = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let blocks = match m.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(b)) => b.clone(),
            _ => return fail(format!("{field}.content"), "must be a string or an array of blocks"),
        };
        match role {
            "user" => {
                let mut parts = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    let bf = format!("{field}.content[{j}]");
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            parts.push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or_default()}))
                        }
                        Some("image") => {
                            let src = b.get("source");
                            let url = match src.and_then(|s| s.get("type")).and_then(Value::as_str) {
                                Some("base64") => format!(
                                    "data:{};base64,{}",
                                    src.and_then(|s| s.get("media_type"))
                                        .and_then(Value::as_str)
                                        .unwrap_or("image/png"),
                                    src.and_then(|s| s.get("data")).and_then(Value::as_str).unwrap_or("")
                                ),
                                Some("url") => src
                                    .and_then(|s| s.get("url"))
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_owned(),
                                _ => return fail(format!("{bf}.source"), "only base64 and url images translate"),
                            };
                            parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                        }
                        Some("tool_result") => {
                            let id = b.get("tool_use_id").cloned().unwrap_or(Value::Null);
                            let content = match b.get("content") {
                                None | Some(Value::Null) => String::new(),
                                Some(Value::String(s)) => s.clone(),
                                Some(other) => text_of(Some(other), &format!("{bf}.content"))?,
                            };
                            messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
                        }
                        Some(other) => return fail(format!("{bf}.type"), format!("{other:?} blocks do not translate")),
                        None => return fail(format!("{bf}.type"), "is required"),
                    }
                }
                if !parts.is_empty() {
                    let content = match parts.as_slice() {
                        [only] if only.get("type").and_then(Value::as_str) == Some("text") => {
                            only.get("text").cloned().unwrap_or_default()
                        }
                        _ => Value::Array(parts),
                    };
                    messages.push(json!({"role": "user", "content": content}));
                }
            }
            "assistant" => {
                let mut text = Vec::new();
                let mut calls = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => text.push(b.get("text").and_then(Value::as_str).unwrap_or("").to_owned()),
                        Some("tool_use") => calls.push(json!({
                            "id": b.get("id").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {
                                "name": b.get("name").cloned().unwrap_or(Value::Null),
                                "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)
                            }
                        })),
                        Some(other) => {
                            return fail(
                                format!("{field}.content[{j}].type"),
                                format!("{other:?} blocks do not translate"),
                            )
                        }
                        None => return fail(format!("{field}.content[{j}].type"), "is required"),
                    }
                }
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text.join("")) }});
                if !calls.is_empty() {
                    put(&mut msg, "tool_calls", Value::Array(calls));
                }
                messages.push(msg);
            }
            other => return fail(format!("{field}.role"), format!("role {other:?} does not translate")),
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = req.get("max_tokens") {
        out.insert("max_completion_tokens".into(), max.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences") {
        out.insert("stop".into(), stop.clone());
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), json!(true));
        // Anthropic clients always get usage: ask the OpenAI backend for it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    if let Some(Value::Array(tools)) = req.get("tools") {
        let converted: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.get("name").cloned().unwrap_or(Value::Null),
                                   "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = t.get("description") {
                    put(&mut f, "description", d.clone());
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        out.insert("tools".into(), Value::Array(converted));
    }
    if let Some(choice) = req.get("tool_choice") {
        let c = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => return fail("tool_choice.type", "must be auto, any, tool or none"),
        };
        out.insert("tool_choice".into(), c);
        if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok((
        Value::Object(out),
        RequestFacts {
            stream,
            include_usage: stream,
        },
    ))
}
