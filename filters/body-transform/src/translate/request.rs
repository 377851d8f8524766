//! Request bodies: OpenAI Chat Completions to Anthropic Messages and back.
//!
//! Every object is read strictly: a key the other API has no place for is refused by name
//! ([`Refusal::Untranslatable`]), a value of the wrong type too ([`Refusal::Invalid`]). `null`
//! counts as absent everywhere, as it does in both APIs (and SDKs dump unset optional fields as
//! `null`); a field set to the value the target API assumes anyway passes.

use serde_json::{json, Map, Value};

use super::{put, Refusal, RequestError};

type Result<T> = std::result::Result<T, RequestError>;

const TO_ANTHROPIC: &str = "has no equivalent in the Anthropic Messages API";
const TO_OPENAI: &str = "has no equivalent in the OpenAI Chat Completions API";

fn untranslatable<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T> {
    Err(RequestError {
        refusal: Refusal::Untranslatable,
        field: field.into(),
        reason: reason.into(),
    })
}

fn invalid<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T> {
    Err(RequestError {
        refusal: Refusal::Invalid,
        field: field.into(),
        reason: reason.into(),
    })
}

/// A JSON object of the client's request and where it sits in the body.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// `path` is empty for the body itself (named `$` in errors).
    fn new(value: &'a Value, path: String) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Self { map, path }),
            _ if path.is_empty() => invalid("$", "must be a JSON object"),
            _ => invalid(path, "must be a JSON object"),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Refuses the first key outside `known` that carries a value.
    fn only(&self, known: &[&str], reason: &str) -> Result<()> {
        match self
            .map
            .iter()
            .find(|(k, v)| !v.is_null() && !known.contains(&k.as_str()))
        {
            Some((key, _)) => untranslatable(self.field(key), reason),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => invalid(self.field(key), "must be a string"),
        }
    }

    fn required_str(&self, key: &str) -> Result<&'a str> {
        self.str(key)?
            .map_or_else(|| invalid(self.field(key), "is required"), Ok)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => invalid(self.field(key), "must be true or false"),
        }
    }

    /// A positive integer. JSON has one number type: `1024.0` and `5e4` are the integers
    /// they write, sent on as integers; a fraction, zero or less, or a number past 2^64 is
    /// refused by name (the last as out of range, not as a malformed body).
    fn positive(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(n) = v.as_u64().filter(|n| *n > 0) {
            return Ok(Some(n));
        }
        match v.as_f64() {
            Some(f) if f >= 18_446_744_073_709_551_616.0 => invalid(
                self.field(key),
                "is out of range: it must be a positive integer below 2^64",
            ),
            Some(f) if f >= 1.0 && f.fract() == 0.0 => {
                // Whole, at least 1 and below 2^64: the conversion is exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(Some(f as u64))
            }
            _ => invalid(self.field(key), "must be a positive integer"),
        }
    }

    /// A number in `low..=high` (the client's own API's range).
    fn number(&self, key: &str, low: f64, high: f64) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(n) if (low..=high).contains(&n) => Ok(Some(n)),
                _ => invalid(self.field(key), format!("must be a number from {low} to {high}")),
            },
        }
    }

    fn object(&self, key: &str) -> Result<Option<Obj<'a>>> {
        self.get(key).map(|v| Obj::new(v, self.field(key))).transpose()
    }

    fn required_object(&self, key: &str) -> Result<Obj<'a>> {
        self.object(key)?
            .map_or_else(|| invalid(self.field(key), "is required"), Ok)
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => invalid(self.field(key), "must be an array"),
        }
    }

    /// The elements of the array `key` as objects, each with its path.
    fn objects(&self, key: &str) -> Result<Option<Vec<Obj<'a>>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        let field = self.field(key);
        items
            .iter()
            .enumerate()
            .map(|(i, v)| Obj::new(v, format!("{field}[{i}]")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of strings at `key`.
    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        let field = self.field(key);
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => invalid(format!("{field}[{i}]"), "must be a string"),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
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
    "safety_identifier",
    "n",
    "metadata",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "store",
    "response_format",
];

/// Translates an OpenAI Chat Completions request into an Anthropic Messages request.
pub fn openai_to_anthropic(body: &Value, default_max_tokens: u64) -> Result<(Value, RequestFacts)> {
    let req = Obj::new(body, String::new())?;
    req.only(OPENAI_FIELDS, TO_ANTHROPIC)?;
    let mut out = Map::new();
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    match req.positive("n")? {
        None | Some(1) => {}
        Some(_) => return untranslatable("n", "Anthropic returns one choice per request"),
    }
    neutral_openai_settings(&req)?;
    let max_tokens = match (req.positive("max_completion_tokens")?, req.positive("max_tokens")?) {
        (Some(a), Some(b)) if a != b => return invalid("max_tokens", "conflicts with `max_completion_tokens`"),
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => default_max_tokens,
    };
    out.insert("max_tokens".into(), json!(max_tokens));
    if let Some(t) = req.number("temperature", 0.0, 2.0)? {
        if t > 1.0 {
            return untranslatable("temperature", "Anthropic accepts 0 to 1");
        }
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.number("top_p", 0.0, 1.0)? {
        out.insert("top_p".into(), json!(p));
    }
    let stop = match req.get("stop") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(_)) => req.strings("stop")?.unwrap_or_default(),
        Some(_) => return invalid("stop", "must be a string or an array of strings"),
        None => Vec::new(),
    };
    if !stop.is_empty() {
        out.insert("stop_sequences".into(), json!(stop));
    }
    let stream = req.bool("stream")?.unwrap_or(false);
    if stream {
        out.insert("stream".into(), json!(true));
    }
    let mut include_usage = false;
    if let Some(options) = req.object("stream_options")? {
        options.only(&["include_usage", "include_obfuscation"], TO_ANTHROPIC)?;
        include_usage = options.bool("include_usage")?.unwrap_or(false);
        if options.bool("include_obfuscation")? == Some(true) {
            return untranslatable(
                options.field("include_obfuscation"),
                "Anthropic streams carry no obfuscation padding",
            );
        }
    }
    if let Some(metadata) = req.object("metadata")? {
        metadata.only(
            &[],
            "has no equivalent in the Anthropic Messages API (its `metadata` holds only a user id: send `user`)",
        )?;
    }
    let user = match (req.str("user")?, req.str("safety_identifier")?) {
        (Some(a), Some(b)) if a != b => {
            return invalid("safety_identifier", "differs from `user`: Anthropic takes one user id")
        }
        (Some(id), _) | (None, Some(id)) => Some(id),
        (None, None) => None,
    };
    if let Some(user) = user {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = req.objects("tools")? {
        let converted = tools.iter().map(openai_tool).collect::<Result<Vec<_>>>()?;
        out.insert("tools".into(), Value::Array(converted));
    }
    let parallel = req.bool("parallel_tool_calls")?;
    if let Some(mut choice) = openai_tool_choice(&req)? {
        if parallel == Some(false) && choice.get("type") != Some(&json!("none")) {
            put(&mut choice, "disable_parallel_tool_use", json!(true));
        }
        out.insert("tool_choice".into(), choice);
    } else if parallel == Some(false) && out.contains_key("tools") {
        out.insert(
            "tool_choice".into(),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        );
    }

    let messages = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return invalid("messages", "must be a non-empty array"),
    };
    let mut system: Vec<String> = Vec::new();
    let mut converted: Vec<Value> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let m = Obj::new(m, format!("messages[{i}]"))?;
        match m.required_str("role")? {
            "system" | "developer" => {
                m.only(&["role", "content"], TO_ANTHROPIC)?;
                if !converted.is_empty() {
                    return untranslatable(
                        m.field("role"),
                        "a system message after the conversation started has no Anthropic equivalent",
                    );
                }
                system.push(openai_text(&m, "content")?);
            }
            "user" => {
                m.only(&["role", "content"], TO_ANTHROPIC)?;
                push_blocks(&mut converted, "user", openai_user_blocks(&m)?);
            }
            "assistant" => {
                m.only(
                    &["role", "content", "refusal", "tool_calls", "annotations"],
                    TO_ANTHROPIC,
                )?;
                // A response message sent back as history carries `annotations: []`.
                if m.array("annotations")?.is_some_and(|a| !a.is_empty()) {
                    return untranslatable(m.field("annotations"), TO_ANTHROPIC);
                }
                push_blocks(&mut converted, "assistant", openai_assistant_blocks(&m)?);
            }
            "tool" => {
                m.only(&["role", "content", "tool_call_id"], TO_ANTHROPIC)?;
                let id = m.required_str("tool_call_id")?;
                let content = openai_text(&m, "content")?;
                push_blocks(
                    &mut converted,
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": content})],
                );
            }
            "function" => return untranslatable(m.field("role"), "function messages (deprecated) do not translate"),
            other => return invalid(m.field("role"), format!("unknown role {other:?}")),
        }
    }
    if converted.is_empty() {
        return untranslatable(
            "messages",
            "holds only system messages: an Anthropic request needs a user or assistant message",
        );
    }
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(converted));
    Ok((Value::Object(out), RequestFacts { stream, include_usage }))
}

/// OpenAI settings that Anthropic has no place for pass only at the value that changes
/// nothing (what SDKs and UIs send by default); any other value is refused by name.
fn neutral_openai_settings(req: &Obj<'_>) -> Result<()> {
    for key in ["frequency_penalty", "presence_penalty"] {
        if let Some(p) = req.number(key, -2.0, 2.0)? {
            if p != 0.0 {
                return untranslatable(key, format!("{TO_ANTHROPIC} (only 0 passes)"));
            }
        }
    }
    // `store: true` asks OpenAI to keep the completion; `logprobs: true` asks for token
    // probabilities: Anthropic does neither.
    for key in ["logprobs", "store"] {
        if req.bool(key)? == Some(true) {
            return untranslatable(key, format!("{TO_ANTHROPIC} (only false passes)"));
        }
    }
    if let Some(format) = req.object("response_format")? {
        match format.required_str("type")? {
            "text" => format.only(&["type"], TO_ANTHROPIC)?,
            other => {
                return untranslatable(
                    format.field("type"),
                    format!("{other:?} {TO_ANTHROPIC} (only \"text\" passes)"),
                )
            }
        }
    }
    Ok(())
}

/// An OpenAI function tool as an Anthropic custom tool.
fn openai_tool(tool: &Obj<'_>) -> Result<Value> {
    match tool.required_str("type")? {
        "function" => {}
        other => return untranslatable(tool.field("type"), format!("{other:?} tools {TO_ANTHROPIC}")),
    }
    tool.only(&["type", "function"], TO_ANTHROPIC)?;
    let f = tool.required_object("function")?;
    f.only(&["name", "description", "parameters", "strict"], TO_ANTHROPIC)?;
    let mut t = Map::new();
    t.insert("name".into(), json!(f.required_str("name")?));
    if let Some(d) = f.str("description")? {
        t.insert("description".into(), json!(d));
    }
    let schema = match f.object("parameters")? {
        Some(p) => Value::Object(p.map.clone()),
        // OpenAI: omitting `parameters` means a function without parameters.
        None => json!({"type": "object", "properties": {}}),
    };
    t.insert("input_schema".into(), schema);
    if let Some(strict) = f.bool("strict")? {
        t.insert("strict".into(), json!(strict));
    }
    Ok(Value::Object(t))
}

fn openai_tool_choice(req: &Obj<'_>) -> Result<Option<Value>> {
    let choice = match req.get("tool_choice") {
        None => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => return invalid("tool_choice", format!("unknown value {other:?}")),
        },
        Some(Value::Object(_)) => {
            let c = req.required_object("tool_choice")?;
            match c.required_str("type")? {
                "function" => {}
                other => return untranslatable(c.field("type"), format!("{other:?} {TO_ANTHROPIC}")),
            }
            c.only(&["type", "function"], TO_ANTHROPIC)?;
            let f = c.required_object("function")?;
            f.only(&["name"], TO_ANTHROPIC)?;
            json!({"type": "tool", "name": f.required_str("name")?})
        }
        Some(_) => return invalid("tool_choice", "must be a string or an object"),
    };
    Ok(Some(choice))
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

/// The text of `key`: a string or an array of OpenAI text parts (joined by newlines).
fn openai_text(m: &Obj<'_>, key: &str) -> Result<String> {
    match m.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(_)) => {
            let mut text = Vec::new();
            for part in m.objects(key)?.unwrap_or_default() {
                match part.required_str("type")? {
                    "text" => {}
                    other => return invalid(part.field("type"), format!("{other:?} parts are not allowed here")),
                }
                part.only(&["type", "text"], TO_ANTHROPIC)?;
                text.push(part.required_str("text")?);
            }
            Ok(text.join("\n"))
        }
        Some(_) => invalid(m.field(key), "must be a string or an array of parts"),
    }
}

fn openai_user_blocks(m: &Obj<'_>) -> Result<Vec<Value>> {
    let parts = match m.get("content") {
        Some(Value::String(s)) => return Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(_)) => m.objects("content")?.unwrap_or_default(),
        _ => return invalid(m.field("content"), "must be a string or an array of parts"),
    };
    parts
        .iter()
        .map(|p| match p.required_str("type")? {
            "text" => {
                p.only(&["type", "text"], TO_ANTHROPIC)?;
                Ok(json!({"type": "text", "text": p.required_str("text")?}))
            }
            "image_url" => {
                p.only(&["type", "image_url"], TO_ANTHROPIC)?;
                let image = p.required_object("image_url")?;
                image.only(&["url", "detail"], TO_ANTHROPIC)?;
                match image.str("detail")? {
                    None | Some("auto") => {}
                    Some(other) => {
                        return untranslatable(
                            image.field("detail"),
                            format!("{other:?} {TO_ANTHROPIC} (only \"auto\")"),
                        )
                    }
                }
                image_block(image.required_str("url")?).map_or_else(
                    || untranslatable(image.field("url"), "must be an http(s) or base64 data URL"),
                    Ok,
                )
            }
            other => untranslatable(p.field("type"), format!("{other:?} parts do not translate")),
        })
        .collect()
}

/// An assistant turn in the history: text, refusal text (what the assistant said) and tool
/// calls.
fn openai_assistant_blocks(m: &Obj<'_>) -> Result<Vec<Value>> {
    let mut blocks = Vec::new();
    let mut text = |t: &str| {
        if !t.is_empty() {
            blocks.push(json!({"type": "text", "text": t}));
        }
    };
    match m.get("content") {
        None => {}
        Some(Value::String(s)) => text(s),
        Some(Value::Array(_)) => {
            for part in m.objects("content")?.unwrap_or_default() {
                let kind = part.required_str("type")?;
                match kind {
                    "text" | "refusal" => {
                        part.only(&["type", kind], TO_ANTHROPIC)?;
                        text(part.required_str(kind)?);
                    }
                    other => return invalid(part.field("type"), format!("{other:?} parts are not allowed here")),
                }
            }
        }
        Some(_) => return invalid(m.field("content"), "must be a string or an array of parts"),
    }
    if let Some(refusal) = m.str("refusal")? {
        text(refusal);
    }
    for call in m.objects("tool_calls")?.unwrap_or_default() {
        match call.str("type")? {
            None | Some("function") => {}
            Some(other) => return untranslatable(call.field("type"), format!("{other:?} tool calls {TO_ANTHROPIC}")),
        }
        call.only(&["id", "type", "function"], TO_ANTHROPIC)?;
        let f = call.required_object("function")?;
        f.only(&["name", "arguments"], TO_ANTHROPIC)?;
        let input = match serde_json::from_str::<Value>(f.required_str("arguments")?) {
            Ok(input @ Value::Object(_)) => input,
            _ => {
                return untranslatable(
                    f.field("arguments"),
                    "is not a JSON object, which Anthropic needs as the tool's input",
                )
            }
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call.required_str("id")?,
            "name": f.required_str("name")?,
            "input": input
        }));
    }
    Ok(blocks)
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
    "cache_control",
];

/// Translates an Anthropic Messages request into an OpenAI Chat Completions request.
pub fn anthropic_to_openai(body: &Value) -> Result<(Value, RequestFacts)> {
    let req = Obj::new(body, String::new())?;
    req.only(ANTHROPIC_FIELDS, TO_OPENAI)?;
    ephemeral_cache_control(&req)?;
    let mut out = Map::new();
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    let mut messages: Vec<Value> = Vec::new();
    match req.get("system") {
        None => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(_)) => {
            let text = req
                .objects("system")?
                .unwrap_or_default()
                .iter()
                .map(anthropic_text)
                .collect::<Result<Vec<_>>>()?;
            messages.push(json!({"role": "system", "content": text.join("\n")}));
        }
        Some(_) => return invalid("system", "must be a string or an array of text blocks"),
    }
    let input = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => req.objects("messages")?.unwrap_or_default(),
        _ => return invalid("messages", "must be a non-empty array"),
    };
    for m in &input {
        m.only(&["role", "content"], TO_OPENAI)?;
        let role = m.required_str("role")?;
        if role != "user" && role != "assistant" {
            return invalid(m.field("role"), format!("unknown role {role:?}"));
        }
        let blocks = match m.get("content") {
            Some(Value::String(s)) => {
                messages.push(json!({"role": role, "content": s}));
                continue;
            }
            Some(Value::Array(_)) => m.objects("content")?.unwrap_or_default(),
            _ => return invalid(m.field("content"), "must be a string or an array of blocks"),
        };
        match role {
            "user" => anthropic_user(&blocks, &mut messages)?,
            _ => messages.push(anthropic_assistant(&blocks)?),
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(max) = req.positive("max_tokens")? {
        out.insert("max_completion_tokens".into(), json!(max));
    }
    if let Some(t) = req.number("temperature", 0.0, 1.0)? {
        out.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.number("top_p", 0.0, 1.0)? {
        out.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = req.strings("stop_sequences")?.filter(|s| !s.is_empty()) {
        out.insert("stop".into(), json!(stop));
    }
    let stream = req.bool("stream")?.unwrap_or(false);
    if stream {
        out.insert("stream".into(), json!(true));
        // Anthropic clients always get usage: ask the OpenAI backend for it.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(metadata) = req.object("metadata")? {
        metadata.only(&["user_id"], TO_OPENAI)?;
        if let Some(user) = metadata.str("user_id")? {
            out.insert("user".into(), json!(user));
        }
    }
    if let Some(tools) = req.objects("tools")? {
        let converted = tools.iter().map(anthropic_tool).collect::<Result<Vec<_>>>()?;
        out.insert("tools".into(), Value::Array(converted));
    }
    if let Some(choice) = req.object("tool_choice")? {
        choice.only(&["type", "name", "disable_parallel_tool_use"], TO_OPENAI)?;
        let c = match choice.required_str("type")? {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => json!({"type": "function", "function": {"name": choice.required_str("name")?}}),
            other => return invalid(choice.field("type"), format!("unknown value {other:?}")),
        };
        out.insert("tool_choice".into(), c);
        if choice.bool("disable_parallel_tool_use")? == Some(true) {
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

/// Checks an Anthropic `cache_control` on `holder`, which an OpenAI backend does without: an
/// ephemeral breakpoint (any TTL Anthropic offers) only asks to cache the prefix, and OpenAI
/// caches prompt prefixes on its own, so it is dropped. Any other kind is refused by name.
fn ephemeral_cache_control(holder: &Obj<'_>) -> Result<()> {
    let Some(control) = holder.object("cache_control")? else {
        return Ok(());
    };
    control.only(&["type", "ttl"], TO_OPENAI)?;
    match control.required_str("type")? {
        "ephemeral" => {}
        other => return untranslatable(control.field("type"), format!("{other:?} {TO_OPENAI}")),
    }
    match control.str("ttl")? {
        None | Some("5m" | "1h") => Ok(()),
        Some(other) => invalid(control.field("ttl"), format!("unknown value {other:?}")),
    }
}

/// The text of an Anthropic text block; citations have no OpenAI place.
fn anthropic_text(block: &Obj<'_>) -> Result<String> {
    match block.required_str("type")? {
        "text" => {}
        other => return untranslatable(block.field("type"), format!("{other:?} blocks do not translate here")),
    }
    block.only(&["type", "text", "cache_control"], TO_OPENAI)?;
    ephemeral_cache_control(block)?;
    Ok(block.required_str("text")?.to_owned())
}

/// A user turn: text and images become one user message, each tool result a tool message.
fn anthropic_user(blocks: &[Obj<'_>], messages: &mut Vec<Value>) -> Result<()> {
    let mut parts = Vec::new();
    for b in blocks {
        match b.required_str("type")? {
            "text" => parts.push(json!({"type": "text", "text": anthropic_text(b)?})),
            "image" => {
                b.only(&["type", "source", "cache_control"], TO_OPENAI)?;
                ephemeral_cache_control(b)?;
                let src = b.required_object("source")?;
                let url = match src.required_str("type")? {
                    "base64" => {
                        src.only(&["type", "media_type", "data"], TO_OPENAI)?;
                        format!(
                            "data:{};base64,{}",
                            src.required_str("media_type")?,
                            src.required_str("data")?
                        )
                    }
                    "url" => {
                        src.only(&["type", "url"], TO_OPENAI)?;
                        src.required_str("url")?.to_owned()
                    }
                    other => return untranslatable(src.field("type"), format!("{other:?} image sources {TO_OPENAI}")),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            "tool_result" => {
                b.only(
                    &["type", "tool_use_id", "content", "is_error", "cache_control"],
                    TO_OPENAI,
                )?;
                ephemeral_cache_control(b)?;
                if b.bool("is_error")? == Some(true) {
                    return untranslatable(
                        b.field("is_error"),
                        "has no equivalent in the OpenAI Chat Completions API (a tool message cannot be marked as an error)",
                    );
                }
                let content = match b.get("content") {
                    None => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(_)) => b
                        .objects("content")?
                        .unwrap_or_default()
                        .iter()
                        .map(anthropic_text)
                        .collect::<Result<Vec<_>>>()?
                        .join("\n"),
                    Some(_) => return invalid(b.field("content"), "must be a string or an array of blocks"),
                };
                messages
                    .push(json!({"role": "tool", "tool_call_id": b.required_str("tool_use_id")?, "content": content}));
            }
            other => return untranslatable(b.field("type"), format!("{other:?} blocks do not translate")),
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
    Ok(())
}

fn anthropic_assistant(blocks: &[Obj<'_>]) -> Result<Value> {
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.required_str("type")? {
            "text" => text.push(anthropic_text(b)?),
            "tool_use" => {
                b.only(&["type", "id", "name", "input", "cache_control"], TO_OPENAI)?;
                ephemeral_cache_control(b)?;
                let input = b.required_object("input")?;
                calls.push(json!({
                    "id": b.required_str("id")?,
                    "type": "function",
                    "function": {"name": b.required_str("name")?, "arguments": Value::Object(input.map.clone()).to_string()}
                }));
            }
            other => return untranslatable(b.field("type"), format!("{other:?} blocks do not translate")),
        }
    }
    let mut msg =
        json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text.join("")) }});
    if !calls.is_empty() {
        put(&mut msg, "tool_calls", Value::Array(calls));
    }
    Ok(msg)
}

/// An Anthropic custom tool as an OpenAI function tool; a server tool (any other `type`) runs
/// on Anthropic's side and cannot run behind an OpenAI backend.
fn anthropic_tool(tool: &Obj<'_>) -> Result<Value> {
    match tool.str("type")? {
        None | Some("custom") => {}
        Some(other) => {
            return untranslatable(
                tool.field("type"),
                format!("{other:?} is an Anthropic server tool: an OpenAI Chat Completions backend cannot run it"),
            )
        }
    }
    tool.only(
        &[
            "type",
            "name",
            "description",
            "input_schema",
            "strict",
            "defer_loading",
            "cache_control",
        ],
        TO_OPENAI,
    )?;
    ephemeral_cache_control(tool)?;
    if tool.bool("defer_loading")? == Some(true) {
        return untranslatable(tool.field("defer_loading"), TO_OPENAI);
    }
    let mut f = Map::new();
    f.insert("name".into(), json!(tool.required_str("name")?));
    if let Some(d) = tool.str("description")? {
        f.insert("description".into(), json!(d));
    }
    f.insert(
        "parameters".into(),
        Value::Object(tool.required_object("input_schema")?.map.clone()),
    );
    if let Some(strict) = tool.bool("strict")? {
        f.insert("strict".into(), json!(strict));
    }
    Ok(json!({"type": "function", "function": f}))
}

// === Output cap ===

/// Asks the backend for at most `reserved` output tokens when the request (in the backend's
/// API) names no maximum: Anthropic `max_tokens`, OpenAI `max_completion_tokens` (unless
/// `max_tokens` is there). A request that names one keeps it: the quota reserved exactly
/// that. Returns whether the body changed.
pub fn cap_output(body: &mut Value, anthropic_backend: bool, reserved: u64) -> bool {
    let Some(map) = body.as_object_mut() else {
        return false;
    };
    let named = |key: &str| map.get(key).is_some_and(|v| !v.is_null());
    let key = if anthropic_backend {
        if named("max_tokens") {
            return false;
        }
        "max_tokens"
    } else {
        if named("max_tokens") || named("max_completion_tokens") {
            return false;
        }
        "max_completion_tokens"
    };
    map.insert(key.to_owned(), json!(reserved));
    true
}
