//! Streaming (SSE) translation, event by event as chunks arrive: each call returns the bytes to
//! send on now, so the client sees every event as soon as the backend sends it. An event split
//! across chunks waits only for its own end; a stream that ends early is closed with an error
//! event in the client's format, never left hanging.

use std::collections::HashMap;

use portico_core::sse::{Event, SseReader};
use serde_json::{json, Value};

use super::response::{finish_reason, stop_reason};

/// Longest SSE line accepted from a backend.
const MAX_LINE: usize = 4 << 20;

fn data_line(v: &Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

fn event_line(name: &str, v: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {v}\n\n").into_bytes()
}

const CUT: &str = "the model backend's stream ended before it finished";

// === Anthropic events -> OpenAI chunks ===

/// Turns an Anthropic Messages stream into OpenAI `chat.completion.chunk` lines.
#[derive(Debug)]
pub struct AnthropicToOpenAi {
    reader: SseReader,
    created: u64,
    include_usage: bool,
    id: Value,
    model: Value,
    /// Anthropic content block index to OpenAI tool call index.
    tools: HashMap<u64, usize>,
    prompt_tokens: u64,
    completion_tokens: u64,
    done: bool,
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
            prompt_tokens: 0,
            completion_tokens: 0,
            done: false,
        }
    }

    /// The usage the backend reported, once it has (the client may not see it: OpenAI sends
    /// usage on streams only when asked).
    pub fn usage(&self) -> Option<(u64, u64)> {
        (self.prompt_tokens > 0 || self.completion_tokens > 0).then_some((self.prompt_tokens, self.completion_tokens))
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
            out.extend(self.event(&event));
        }
        out
    }

    fn event(&mut self, event: &Event) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
            return Vec::new();
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(event.name.as_str());
        match kind {
            "message_start" => {
                let m = v.get("message");
                self.id = m.and_then(|m| m.get("id")).cloned().unwrap_or(Value::Null);
                self.model = m.and_then(|m| m.get("model")).cloned().unwrap_or(Value::Null);
                if let Some(u) = m.and_then(|m| m.get("usage")) {
                    self.prompt_tokens = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
                        .iter()
                        .filter_map(|k| u.get(*k).and_then(Value::as_u64))
                        .sum();
                }
                self.chunk(json!({"role": "assistant", "content": ""}), None)
            }
            "content_block_start" => {
                let block = v.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) != Some("tool_use") {
                    return Vec::new();
                }
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let tool = self.tools.len();
                self.tools.insert(index, tool);
                self.chunk(
                    json!({"tool_calls": [{"index": tool, "id": block.and_then(|b| b.get("id")), "type": "function",
                        "function": {"name": block.and_then(|b| b.get("name")), "arguments": ""}}]}),
                    None,
                )
            }
            "content_block_delta" => {
                let d = v.get("delta");
                match d.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => self.chunk(json!({"content": d.and_then(|d| d.get("text"))}), None),
                    Some("input_json_delta") => {
                        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let tool = self.tools.get(&index).copied().unwrap_or(0);
                        self.chunk(json!({"tool_calls": [{"index": tool, "function": {"arguments": d.and_then(|d| d.get("partial_json"))}}]}), None)
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let Some(n) = v
                    .get("usage")
                    .and_then(|u| u.get("output_tokens"))
                    .and_then(Value::as_u64)
                {
                    self.completion_tokens = n;
                }
                let reason = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                self.chunk(json!({}), Some(finish_reason(reason)))
            }
            "message_stop" => {
                self.done = true;
                let mut out = Vec::new();
                if self.include_usage {
                    let (p, c) = (self.prompt_tokens, self.completion_tokens);
                    out.extend(data_line(&json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                        "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
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
                let mut out =
                    data_line(&json!({"error": {"message": message, "type": kind, "param": null, "code": null}}));
                out.extend(b"data: [DONE]\n\n");
                out
            }
            _ => Vec::new(),
        }
    }

    /// Called at the end of the backend's stream: closes a cut stream cleanly.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut out = data_line(&json!({"error": {"message": CUT, "type": "api_error", "param": null, "code": null}}));
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
    stop_reason: Option<&'static str>,
    input_tokens: u64,
    output_tokens: u64,
    done: bool,
}

impl Default for OpenAiToAnthropic {
    fn default() -> Self {
        Self {
            reader: SseReader::new(MAX_LINE),
            started: false,
            open: None,
            next_index: 0,
            stop_reason: None,
            input_tokens: 0,
            output_tokens: 0,
            done: false,
        }
    }
}

impl OpenAiToAnthropic {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for event in self.reader.push(bytes) {
            out.extend(self.event(&event));
        }
        out
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            out.extend(event_line(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open_block(&mut self, block: Block, content_block: Value, out: &mut Vec<u8>) -> usize {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, block));
        out.extend(event_line(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    fn event(&mut self, event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if event.data.trim() == "[DONE]" {
            self.end(&mut out);
            return out;
        }
        let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
            return out;
        };
        if let Some(err) = v.get("error") {
            self.done = true;
            let message = err.get("message").cloned().unwrap_or_else(|| json!("error"));
            out.extend(event_line(
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            ));
            return out;
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
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = u
                .get("prompt_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(self.input_tokens);
            self.output_tokens = u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(self.output_tokens);
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return out;
        };
        let delta = choice.get("delta");
        if let Some(text) = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = match self.open {
                Some((i, Block::Text)) => i,
                _ => self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out),
            };
            out.extend(event_line(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        if let Some(Value::Array(calls)) = delta.and_then(|d| d.get("tool_calls")) {
            for call in calls {
                let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let f = call.get("function");
                let index = match self.open {
                    Some((i, Block::Tool(t))) if t == tool && call.get("id").is_none() => i,
                    _ => self.open_block(
                        Block::Tool(tool),
                        json!({"type": "tool_use", "id": call.get("id"), "name": f.and_then(|f| f.get("name")), "input": {}}),
                        &mut out,
                    ),
                };
                if let Some(args) = f
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
                {
                    out.extend(event_line(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}}),
                    ));
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(Some(reason)));
        }
        out
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.done = true;
        self.close_block(out);
        out.extend(event_line(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}),
        ));
        out.extend(event_line("message_stop", &json!({"type": "message_stop"})));
    }

    /// Called at the end of the backend's stream: closes a cut stream cleanly.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        event_line(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": CUT}}),
        )
    }
}
