//! Streaming (SSE) translation, event by event as chunks arrive: each call returns the bytes to
//! send on now, so the client sees every event as soon as the backend sends it. An event split
//! across chunks waits only for its own end; a stream that ends early is closed with an error
//! event in the client's format, never left hanging. So is a stream with something the client's
//! format cannot say (the status line has long gone, so the error travels in the stream): the
//! translator stops there and keeps the [`BadUpstream`] for the shell to log.

use std::collections::HashMap;

use portico_core::contract::BackendUsage;
use portico_core::sse::{Event, SseReader};
use serde_json::{json, Value};

use super::response::{
    finish_reason, refusal_explanation, stop_reason, tool_input, untranslatable_stop, upstream_error_code,
};
use super::usage::Tokens;
use super::BadUpstream;

/// Longest SSE line accepted from a backend, and the longest tool-call arguments gathered.
const MAX_LINE: usize = 4 << 20;

fn data_line(v: &Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

fn event_line(name: &str, v: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {v}\n\n").into_bytes()
}

const CUT: &str = "the model backend's stream ended before it finished";

/// The code of the error event that closes a stream the backend cut short.
pub const TRUNCATED: &str = "stream_truncated";

/// The event's JSON data; `what` names the event in the error.
fn parse(event: &Event, what: &str) -> Result<Value, BadUpstream> {
    serde_json::from_str(&event.data).map_err(|_| BadUpstream::new(what, "is not JSON"))
}

// === Anthropic events -> OpenAI chunks ===

/// Where an Anthropic tool_use block went: its OpenAI tool call index, and whether any of its
/// arguments were sent.
#[derive(Debug, Clone, Copy)]
struct ToolCall {
    index: usize,
    sent_arguments: bool,
}

/// Turns an Anthropic Messages stream into OpenAI `chat.completion.chunk` lines.
#[derive(Debug)]
pub struct AnthropicToOpenAi {
    reader: SseReader,
    created: u64,
    include_usage: bool,
    id: Value,
    model: Value,
    /// Anthropic content block index to its tool call.
    tools: HashMap<u64, ToolCall>,
    tokens: Tokens,
    /// A `message_delta` carried usage: the counts are final, not `message_start`'s
    /// placeholder (`output_tokens: 1`).
    final_usage: bool,
    done: bool,
    failure: Option<BadUpstream>,
}

impl AnthropicToOpenAi {
    pub fn new(created: u64, include_usage: bool) -> Self {
        Self {
            reader: SseReader::new(MAX_LINE),
            created,
            include_usage,
            id: Value::Null,
            model: Value::Null,
            tools: HashMap::new(),
            tokens: Tokens::default(),
            final_usage: false,
            done: false,
            failure: None,
        }
    }

    /// The usage the backend reported, once a `message_delta` gave the final count (the
    /// client may not see it: OpenAI sends usage on streams only when asked).
    pub fn usage(&self) -> BackendUsage {
        if self.final_usage {
            self.tokens.settled()
        } else {
            BackendUsage::Unknown
        }
    }

    /// What made the translator end the stream with an error, if anything did.
    pub fn failure(&self) -> Option<&BadUpstream> {
        self.failure.as_ref()
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Vec<u8> {
        data_line(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        }))
    }

    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.reader.push(bytes) {
            if self.done {
                break;
            }
            match self.event(&event) {
                Ok(bytes) => out.extend(bytes),
                Err(bad) => out.extend(self.fail(bad)),
            }
        }
        out
    }

    fn fail(&mut self, bad: BadUpstream) -> Vec<u8> {
        self.done = true;
        let mut out = data_line(
            &json!({"error": {"message": bad.to_string(), "type": "api_error", "param": null, "code": BadUpstream::CODE}}),
        );
        out.extend(b"data: [DONE]\n\n");
        self.failure = Some(bad);
        out
    }

    fn event(&mut self, event: &Event) -> Result<Vec<u8>, BadUpstream> {
        let name = if event.name.is_empty() {
            "event"
        } else {
            event.name.as_str()
        };
        let v = parse(event, name)?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(name);
        Ok(match kind {
            "message_start" => {
                let m = v.get("message");
                self.id = m.and_then(|m| m.get("id")).cloned().unwrap_or(Value::Null);
                self.model = m.and_then(|m| m.get("model")).cloned().unwrap_or(Value::Null);
                if let Some(u) = m.and_then(|m| m.get("usage")).filter(|u| !u.is_null()) {
                    self.tokens = Tokens::from_anthropic(u, "message_start.message.usage")?;
                }
                self.chunk(json!({"role": "assistant", "content": ""}), None)
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => match block.get("text").and_then(Value::as_str) {
                        Some("") => Vec::new(),
                        Some(text) => self.chunk(json!({"content": text}), None),
                        None => {
                            return Err(BadUpstream::new(
                                "content_block_start.content_block.text",
                                "must be a string",
                            ))
                        }
                    },
                    Some("tool_use") => {
                        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let tool = self.tools.len();
                        self.tools.insert(
                            index,
                            ToolCall {
                                index: tool,
                                sent_arguments: false,
                            },
                        );
                        self.chunk(
                            json!({"tool_calls": [{"index": tool, "id": block.get("id"), "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""}}]}),
                            None,
                        )
                    }
                    other => {
                        return Err(BadUpstream::new(
                            "content_block_start.content_block.type",
                            format!("{:?} blocks have no OpenAI equivalent", other.unwrap_or("")),
                        ))
                    }
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => match d.get("text").and_then(Value::as_str) {
                        Some(text) => self.chunk(json!({"content": text}), None),
                        None => return Err(BadUpstream::new("content_block_delta.delta.text", "must be a string")),
                    },
                    Some("input_json_delta") => {
                        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let partial = d.get("partial_json").and_then(Value::as_str).unwrap_or("");
                        let Some(call) = self.tools.get_mut(&index) else {
                            return Err(BadUpstream::new("content_block_delta.index", "names no tool_use block"));
                        };
                        call.sent_arguments |= !partial.is_empty();
                        let tool = call.index;
                        self.chunk(
                            json!({"tool_calls": [{"index": tool, "function": {"arguments": partial}}]}),
                            None,
                        )
                    }
                    other => {
                        return Err(BadUpstream::new(
                            "content_block_delta.delta.type",
                            format!("{:?} deltas have no OpenAI equivalent", other.unwrap_or("")),
                        ))
                    }
                }
            }
            "content_block_stop" => {
                // A tool called without input streams no JSON at all; OpenAI clients parse the
                // arguments, so they get the empty object Anthropic means.
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match self.tools.get(&index) {
                    Some(call) if !call.sent_arguments => self.chunk(
                        json!({"tool_calls": [{"index": call.index, "function": {"arguments": "{}"}}]}),
                        None,
                    ),
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    self.tokens.update_from_anthropic(u, "message_delta.usage")?;
                    self.final_usage = true;
                }
                let delta = v.get("delta").unwrap_or(&Value::Null);
                let Some(stop) = delta.get("stop_reason").and_then(Value::as_str) else {
                    return Err(BadUpstream::new("message_delta.delta.stop_reason", "must be a string"));
                };
                let finish =
                    finish_reason(stop).ok_or_else(|| untranslatable_stop("message_delta.delta.stop_reason", stop))?;
                let mut out = match refusal_explanation(delta, stop) {
                    Value::Null => Vec::new(),
                    explanation => self.chunk(json!({"refusal": explanation}), None),
                };
                out.extend(self.chunk(json!({}), Some(finish)));
                out
            }
            "message_stop" => {
                self.done = true;
                let mut out = Vec::new();
                if self.include_usage {
                    out.extend(data_line(&json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                        "choices": [], "usage": self.tokens.to_openai()
                    })));
                }
                out.extend(b"data: [DONE]\n\n");
                out
            }
            "error" => {
                self.done = true;
                let message = v
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .cloned()
                    .unwrap_or_else(|| json!("error"));
                let kind = v
                    .get("error")
                    .and_then(|e| e.get("type"))
                    .cloned()
                    .unwrap_or_else(|| json!("api_error"));
                let code = upstream_error_code(&v, 0);
                let mut out =
                    data_line(&json!({"error": {"message": message, "type": kind, "param": null, "code": code}}));
                out.extend(b"data: [DONE]\n\n");
                out
            }
            // `ping`, and event types added later (Anthropic asks clients to ignore unknown ones).
            _ => Vec::new(),
        })
    }

    /// Called at the end of the backend's stream: closes a cut stream cleanly.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut out =
            data_line(&json!({"error": {"message": CUT, "type": "api_error", "param": null, "code": TRUNCATED}}));
        out.extend(b"data: [DONE]\n\n");
        out
    }
}

// === OpenAI chunks -> Anthropic events ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// An OpenAI tool call index.
    Tool(u64),
}

/// Turns an OpenAI Chat Completions stream into Anthropic Messages events.
#[derive(Debug)]
pub struct OpenAiToAnthropic {
    reader: SseReader,
    started: bool,
    open: Option<(usize, Block)>,
    next_index: usize,
    /// The open tool call's arguments so far. They are held until the call is complete and
    /// sent only if they are a JSON object: Anthropic clients parse `partial_json` as it comes,
    /// so a broken argument string must never reach them.
    arguments: String,
    stop_reason: Option<&'static str>,
    /// The model refused (OpenAI `refusal` deltas), which Anthropic says with its stop reason.
    refused: bool,
    tokens: Tokens,
    done: bool,
    failure: Option<BadUpstream>,
}

impl Default for OpenAiToAnthropic {
    fn default() -> Self {
        Self {
            reader: SseReader::new(MAX_LINE),
            started: false,
            open: None,
            next_index: 0,
            arguments: String::new(),
            stop_reason: None,
            refused: false,
            tokens: Tokens::default(),
            done: false,
            failure: None,
        }
    }
}

impl OpenAiToAnthropic {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.reader.push(bytes) {
            if self.done {
                break;
            }
            if let Err(bad) = self.event(&event, &mut out) {
                self.fail(bad, &mut out);
            }
        }
        out
    }

    /// What made the translator end the stream with an error, if anything did.
    pub fn failure(&self) -> Option<&BadUpstream> {
        self.failure.as_ref()
    }

    /// The usage the backend reported in its usage chunk; unknown without one (the Anthropic
    /// client still gets a count, which must not be read as zero tokens spent).
    pub fn usage(&self) -> BackendUsage {
        self.tokens.settled()
    }

    fn fail(&mut self, bad: BadUpstream, out: &mut Vec<u8>) {
        self.done = true;
        out.extend(event_line(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "code": BadUpstream::CODE, "message": bad.to_string()}}),
        ));
        self.failure = Some(bad);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) -> Result<(), BadUpstream> {
        if let Some((index, block)) = self.open.take() {
            if let Block::Tool(tool) = block {
                let arguments = std::mem::take(&mut self.arguments);
                tool_input(
                    &arguments,
                    format!("choices[0].delta.tool_calls[{tool}].function.arguments"),
                )?;
                out.extend(event_line(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                ));
            }
            out.extend(event_line(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
        Ok(())
    }

    fn open_block(&mut self, block: Block, content_block: Value, out: &mut Vec<u8>) -> Result<usize, BadUpstream> {
        self.close_block(out)?;
        let index = self.next_index;
        self.next_index = self.next_index.saturating_add(1);
        self.open = Some((index, block));
        out.extend(event_line(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        Ok(index)
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) -> Result<(), BadUpstream> {
        let index = match self.open {
            Some((i, Block::Text)) => i,
            _ => self.open_block(Block::Text, json!({"type": "text", "text": ""}), out)?,
        };
        out.extend(event_line(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        ));
        Ok(())
    }

    fn event(&mut self, event: &Event, out: &mut Vec<u8>) -> Result<(), BadUpstream> {
        if event.data.trim() == "[DONE]" {
            return self.end(out);
        }
        let v = parse(event, "chunk")?;
        if let Some(err) = v.get("error") {
            self.done = true;
            let message = err.get("message").cloned().unwrap_or_else(|| json!("error"));
            let code = upstream_error_code(&v, 0);
            out.extend(event_line(
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "code": code, "message": message}}),
            ));
            return Ok(());
        }
        if !self.started {
            self.started = true;
            out.extend(event_line(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": v.get("id"), "type": "message", "role": "assistant", "model": v.get("model"),
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}
                }}),
            ));
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.tokens = Tokens::from_openai(u, "usage")?;
        }
        let choice = match v.get("choices") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(choices)) => match choices.as_slice() {
                [] => return Ok(()),
                [choice] if choice.get("index").and_then(Value::as_u64).unwrap_or(0) == 0 => choice,
                // An Anthropic stream is one answer: another choice's deltas have no place.
                _ => {
                    return Err(BadUpstream::new(
                        "choices",
                        "holds a choice other than the first, and an Anthropic message holds one",
                    ))
                }
            },
            Some(_) => return Err(BadUpstream::new("choices", "must be an array")),
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for key in ["function_call", "audio"] {
            if delta.get(key).is_some_and(|v| !v.is_null()) {
                return Err(BadUpstream::new(
                    format!("choices[0].delta.{key}"),
                    "has no Anthropic equivalent",
                ));
            }
        }
        for key in ["content", "refusal"] {
            match delta.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(text)) => {
                    self.refused |= key == "refusal";
                    if !text.is_empty() {
                        self.text(text, out)?;
                    }
                }
                Some(_) => return Err(BadUpstream::new(format!("choices[0].delta.{key}"), "must be a string")),
            }
        }
        match delta.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) => {
                for call in calls {
                    self.tool_call(call, out)?;
                }
            }
            Some(_) => return Err(BadUpstream::new("choices[0].delta.tool_calls", "must be an array")),
        }
        match choice.get("finish_reason") {
            None | Some(Value::Null) => {}
            Some(Value::String(reason)) => {
                let stop =
                    stop_reason(reason).ok_or_else(|| untranslatable_stop("choices[0].finish_reason", reason))?;
                self.stop_reason = Some(stop);
            }
            Some(_) => return Err(BadUpstream::new("choices[0].finish_reason", "must be a string")),
        }
        Ok(())
    }

    fn tool_call(&mut self, call: &Value, out: &mut Vec<u8>) -> Result<(), BadUpstream> {
        let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let path = format!("choices[0].delta.tool_calls[{tool}]");
        if let Some(kind) = call.get("type").and_then(Value::as_str).filter(|t| *t != "function") {
            return Err(BadUpstream::new(
                format!("{path}.type"),
                format!("{kind:?} tool calls have no Anthropic equivalent"),
            ));
        }
        let f = call.get("function");
        let continues = matches!(self.open, Some((_, Block::Tool(t))) if t == tool && call.get("id").is_none());
        if !continues {
            self.open_block(
                Block::Tool(tool),
                json!({"type": "tool_use", "id": call.get("id"), "name": f.and_then(|f| f.get("name")), "input": {}}),
                out,
            )?;
        }
        let args = match f.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => "",
            Some(Value::String(args)) => args.as_str(),
            Some(_) => {
                return Err(BadUpstream::new(
                    format!("{path}.function.arguments"),
                    "must be a string",
                ))
            }
        };
        if self.arguments.len().saturating_add(args.len()) > MAX_LINE {
            return Err(BadUpstream::new(
                format!("{path}.function.arguments"),
                "is longer than the gateway accepts",
            ));
        }
        self.arguments.push_str(args);
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), BadUpstream> {
        self.close_block(out)?;
        let Some(mut stop) = self.stop_reason else {
            return Err(BadUpstream::new(
                "choices[0].finish_reason",
                "never came: the stream ended without one",
            ));
        };
        if self.refused && stop == "end_turn" {
            stop = "refusal";
        }
        self.done = true;
        out.extend(event_line(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                    "usage": self.tokens.to_anthropic()}),
        ));
        out.extend(event_line("message_stop", &json!({"type": "message_stop"})));
        Ok(())
    }

    /// Called at the end of the backend's stream: closes a cut stream cleanly.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        event_line(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "code": TRUNCATED, "message": CUT}}),
        )
    }
}
