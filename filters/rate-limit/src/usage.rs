//! Token usage reported by model APIs, from complete JSON bodies and from SSE streams.
//!
//! - OpenAI Chat Completions: `usage.prompt_tokens` / `completion_tokens` (`total_tokens` as a
//!   fallback) in the JSON body; when streaming with `stream_options.include_usage`, in the
//!   last `chat.completion.chunk` (earlier chunks carry `"usage": null`).
//! - Anthropic Messages: `usage.input_tokens` / `output_tokens` (cache reads and writes count
//!   as input) in the JSON body; when streaming, input in `message_start`'s `message.usage`
//!   and the cumulative output in each `message_delta`'s `usage`.

use portico_core::sse::SseReader;
use serde_json::Value;

/// Longest SSE line kept while looking for usage; longer lines are skipped.
const MAX_SSE_LINE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

fn number(v: &Value, name: &str) -> Option<u64> {
    v.get(name).and_then(Value::as_u64)
}

/// Reads a `usage` object of either API.
fn from_usage_object(u: &Value) -> Option<Usage> {
    if let Some(prompt) = number(u, "prompt_tokens") {
        let completion = number(u, "completion_tokens")
            .or_else(|| number(u, "total_tokens").map(|t| t.saturating_sub(prompt)))
            .unwrap_or(0);
        return Some(Usage { prompt, completion });
    }
    if let Some(total) = number(u, "total_tokens") {
        return Some(Usage {
            prompt: total,
            completion: 0,
        });
    }
    let input = anthropic_input(u);
    let output = number(u, "output_tokens");
    (input.is_some() || output.is_some()).then(|| Usage {
        prompt: input.unwrap_or(0),
        completion: output.unwrap_or(0),
    })
}

fn anthropic_input(u: &Value) -> Option<u64> {
    let base = number(u, "input_tokens")?;
    let cache =
        number(u, "cache_creation_input_tokens").unwrap_or(0) + number(u, "cache_read_input_tokens").unwrap_or(0);
    Some(base.saturating_add(cache))
}

/// Usage in a complete, non-streaming JSON response body.
pub fn from_json(body: &[u8]) -> Option<Usage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    from_usage_object(v.get("usage")?)
}

/// Follows an SSE response chunk by chunk; never holds more than one event.
#[derive(Debug)]
pub struct StreamUsage {
    reader: SseReader,
    openai: Option<Usage>,
    input: Option<u64>,
    output: Option<u64>,
}

impl Default for StreamUsage {
    fn default() -> Self {
        Self {
            reader: SseReader::new(MAX_SSE_LINE),
            openai: None,
            input: None,
            output: None,
        }
    }
}

impl StreamUsage {
    pub fn push(&mut self, chunk: &[u8]) {
        for event in self.reader.push(chunk) {
            // Most events carry no usage: skip parsing them.
            if !event.data.contains("\"usage\"") {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                        self.input = anthropic_input(u).or(self.input);
                        self.output = number(u, "output_tokens").or(self.output);
                    }
                }
                Some("message_delta") => {
                    if let Some(u) = v.get("usage") {
                        self.input = anthropic_input(u).or(self.input);
                        self.output = number(u, "output_tokens").or(self.output);
                    }
                }
                _ => {
                    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                        self.openai = from_usage_object(u).or(self.openai);
                    }
                }
            }
        }
    }

    /// The usage seen so far, if any event reported it.
    pub fn usage(&self) -> Option<Usage> {
        self.openai.or_else(|| {
            (self.input.is_some() || self.output.is_some()).then(|| Usage {
                prompt: self.input.unwrap_or(0),
                completion: self.output.unwrap_or(0),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_of_both_apis() {
        let openai =
            br#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(
            from_json(openai),
            Some(Usage {
                prompt: 12,
                completion: 30
            })
        );
        let anthropic =
            br#"{"type":"message","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":7}}"#;
        assert_eq!(
            from_json(anthropic),
            Some(Usage {
                prompt: 15,
                completion: 7
            })
        );
        assert_eq!(from_json(br#"{"error":{"message":"overloaded"}}"#), None);
        assert_eq!(from_json(b"not json"), None);
    }

    const OPENAI_STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":21,\"total_tokens\":30}}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn streams_split_at_every_byte_give_the_same_usage() {
        for (stream, want) in [
            (
                OPENAI_STREAM,
                Usage {
                    prompt: 9,
                    completion: 21,
                },
            ),
            (
                ANTHROPIC_STREAM,
                Usage {
                    prompt: 25,
                    completion: 15,
                },
            ),
        ] {
            for split in 0..stream.len() {
                let (a, b) = stream.as_bytes().split_at(split);
                let mut s = StreamUsage::default();
                s.push(a);
                s.push(b);
                assert_eq!(s.usage(), Some(want), "split at {split}");
            }
        }
    }

    #[test]
    fn a_stream_cut_before_usage_reports_none() {
        let mut s = StreamUsage::default();
        s.push(&OPENAI_STREAM.as_bytes()[..60]);
        assert_eq!(s.usage(), None);
    }
}
