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

    /// This usage cut to `limit` tokens in all, prompt first: a backend that lies in one field
    /// still has its other field counted.
    pub fn clamp(&self, limit: u64) -> Usage {
        let prompt = self.prompt.min(limit);
        Usage {
            prompt,
            completion: self.completion.min(limit.saturating_sub(prompt)),
        }
    }
}

/// What a response said about its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Usage(Usage),
    /// No usage at all (an error answer, a stream cut before its usage event).
    Missing,
    /// A usage object whose counts are not non-negative integers that fit 64 bits (a float,
    /// a negative number, a string, 1e30): the backend's numbers cannot be trusted.
    Unparseable,
}

/// A usage field was present but not a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed;

/// A count: absent or null is `None`, a non-negative integer below 2^64 is a count, anything
/// else is malformed.
fn number(v: &Value, name: &str) -> Result<Option<u64>, Malformed> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n.as_u64().map(Some).ok_or(Malformed),
    }
}

/// Reads a `usage` object of either API.
fn from_usage_object(u: &Value) -> Result<Option<Usage>, Malformed> {
    if let Some(prompt) = number(u, "prompt_tokens")? {
        let completion = match number(u, "completion_tokens")? {
            Some(c) => c,
            None => number(u, "total_tokens")?.map_or(0, |t| t.saturating_sub(prompt)),
        };
        return Ok(Some(Usage { prompt, completion }));
    }
    if let Some(total) = number(u, "total_tokens")? {
        return Ok(Some(Usage {
            prompt: total,
            completion: 0,
        }));
    }
    let input = anthropic_input(u)?;
    let output = number(u, "output_tokens")?;
    Ok((input.is_some() || output.is_some()).then(|| Usage {
        prompt: input.unwrap_or(0),
        completion: output.unwrap_or(0),
    }))
}

fn anthropic_input(u: &Value) -> Result<Option<u64>, Malformed> {
    let Some(base) = number(u, "input_tokens")? else {
        return Ok(None);
    };
    let created = number(u, "cache_creation_input_tokens")?.unwrap_or(0);
    let read = number(u, "cache_read_input_tokens")?.unwrap_or(0);
    Ok(Some(base.saturating_add(created).saturating_add(read)))
}

fn reported(read: Result<Option<Usage>, Malformed>) -> Reported {
    match read {
        Ok(Some(u)) => Reported::Usage(u),
        Ok(None) => Reported::Missing,
        Err(Malformed) => Reported::Unparseable,
    }
}

/// Usage in a complete, non-streaming JSON response body.
pub fn from_json(body: &[u8]) -> Reported {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Reported::Missing;
    };
    match v.get("usage").filter(|u| u.is_object()) {
        Some(u) => reported(from_usage_object(u)),
        None => Reported::Missing,
    }
}

/// Follows an SSE response chunk by chunk; never holds more than one event.
#[derive(Debug)]
pub struct StreamUsage {
    reader: SseReader,
    openai: Option<Usage>,
    input: Option<u64>,
    output: Option<u64>,
    /// A `message_delta` carried usage: Anthropic's counts are final. `message_start`'s alone
    /// are a placeholder (`output_tokens: 1`), not what a stream cut after it cost.
    delta_usage: bool,
    /// Some event carried usage that is not a count: the whole answer's usage is unknown.
    malformed: bool,
}

impl Default for StreamUsage {
    fn default() -> Self {
        Self {
            reader: SseReader::new(MAX_SSE_LINE),
            openai: None,
            input: None,
            output: None,
            delta_usage: false,
            malformed: false,
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
            let anthropic = match v.get("type").and_then(Value::as_str) {
                Some("message_start") => v.get("message").and_then(|m| m.get("usage")),
                Some("message_delta") => {
                    self.delta_usage |= v.get("usage").is_some_and(Value::is_object);
                    v.get("usage")
                }
                _ => {
                    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                        match from_usage_object(u) {
                            Ok(read) => self.openai = read.or(self.openai),
                            Err(Malformed) => self.malformed = true,
                        }
                    }
                    continue;
                }
            };
            if let Some(u) = anthropic {
                match (anthropic_input(u), number(u, "output_tokens")) {
                    (Ok(input), Ok(output)) => {
                        self.input = input.or(self.input);
                        self.output = output.or(self.output);
                    }
                    _ => self.malformed = true,
                }
            }
        }
    }

    /// The final usage, once the stream reported it: an OpenAI usage chunk, or an Anthropic
    /// `message_delta` with usage.
    pub fn usage(&self) -> Reported {
        if self.malformed {
            return Reported::Unparseable;
        }
        match (self.openai, self.input, self.output) {
            (Some(u), _, _) => Reported::Usage(u),
            (None, None, None) => Reported::Missing,
            (None, _, _) if !self.delta_usage => Reported::Missing,
            (None, input, output) => Reported::Usage(Usage {
                prompt: input.unwrap_or(0),
                completion: output.unwrap_or(0),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, completion: u64) -> Reported {
        Reported::Usage(Usage { prompt, completion })
    }

    #[test]
    fn json_bodies_of_both_apis() {
        let openai =
            br#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(from_json(openai), usage(12, 30));
        let anthropic =
            br#"{"type":"message","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":7}}"#;
        assert_eq!(from_json(anthropic), usage(15, 7));
        assert_eq!(from_json(br#"{"error":{"message":"overloaded"}}"#), Reported::Missing);
        assert_eq!(from_json(br#"{"usage":null}"#), Reported::Missing);
        assert_eq!(from_json(b"not json"), Reported::Missing);
    }

    #[test]
    fn counts_that_are_not_integers_make_the_usage_unparseable() {
        for body in [
            r#"{"usage":{"input_tokens":3,"output_tokens":1e30}}"#,
            r#"{"usage":{"input_tokens":3,"output_tokens":18446744073709551616}}"#,
            r#"{"usage":{"input_tokens":3,"output_tokens":-5}}"#,
            r#"{"usage":{"input_tokens":"3","output_tokens":5}}"#,
            r#"{"usage":{"input_tokens":3,"cache_read_input_tokens":2.5,"output_tokens":5}}"#,
            r#"{"usage":{"prompt_tokens":3,"completion_tokens":[5]}}"#,
            r#"{"usage":{"total_tokens":true}}"#,
        ] {
            assert_eq!(from_json(body.as_bytes()), Reported::Unparseable, "{body}");
        }
        // Null is absent, as Anthropic sends unused cache fields.
        assert_eq!(
            from_json(br#"{"usage":{"input_tokens":3,"cache_creation_input_tokens":null,"output_tokens":5}}"#),
            usage(3, 5)
        );
    }

    #[test]
    fn the_largest_counts_add_up_without_wrapping() {
        let max = u64::MAX;
        let body = format!(
            r#"{{"usage":{{"input_tokens":{max},"cache_creation_input_tokens":{max},"cache_read_input_tokens":{max},"output_tokens":{max}}}}}"#
        );
        let Reported::Usage(u) = from_json(body.as_bytes()) else {
            panic!("not read")
        };
        assert_eq!(
            u,
            Usage {
                prompt: max,
                completion: max
            }
        );
        assert_eq!(u.total(), max);
    }

    #[test]
    fn clamping_keeps_the_prompt_first_and_never_exceeds_the_limit() {
        let lie = Usage {
            prompt: 3,
            completion: u64::MAX,
        };
        assert_eq!(
            lie.clamp(1000),
            Usage {
                prompt: 3,
                completion: 997
            }
        );
        let both = Usage {
            prompt: u64::MAX,
            completion: u64::MAX,
        };
        assert_eq!(
            both.clamp(1000),
            Usage {
                prompt: 1000,
                completion: 0
            }
        );
        let honest = Usage {
            prompt: 10,
            completion: 20,
        };
        assert_eq!(honest.clamp(1000), honest);
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

    /// Feeds `stream` split at every byte; every split must read `want`.
    fn read_split(stream: &str, want: Reported) {
        for split in 0..stream.len() {
            let (a, b) = stream.as_bytes().split_at(split);
            let mut s = StreamUsage::default();
            s.push(a);
            s.push(b);
            assert_eq!(s.usage(), want, "split at {split}");
        }
    }

    #[test]
    fn streams_split_at_every_byte_give_the_same_usage() {
        read_split(OPENAI_STREAM, usage(9, 21));
        read_split(ANTHROPIC_STREAM, usage(25, 15));
    }

    #[test]
    fn streams_with_the_largest_or_broken_counts() {
        let max = u64::MAX.to_string();
        read_split(&OPENAI_STREAM.replace("21", &max), usage(9, u64::MAX));
        read_split(&ANTHROPIC_STREAM.replace("15", &max), usage(25, u64::MAX));
        read_split(&OPENAI_STREAM.replace("21", "1e30"), Reported::Unparseable);
        read_split(&ANTHROPIC_STREAM.replace("15", "-1"), Reported::Unparseable);
        read_split(
            &ANTHROPIC_STREAM.replace("\"input_tokens\":25", "\"input_tokens\":25.5"),
            Reported::Unparseable,
        );
    }

    #[test]
    fn a_stream_cut_before_usage_reports_missing() {
        let mut s = StreamUsage::default();
        s.push(&OPENAI_STREAM.as_bytes()[..60]);
        assert_eq!(s.usage(), Reported::Missing);
    }

    #[test]
    fn an_anthropic_stream_cut_after_message_start_reports_missing_not_its_placeholder() {
        let cut = ANTHROPIC_STREAM
            .find("event: message_delta")
            .and_then(|end| ANTHROPIC_STREAM.get(..end))
            .unwrap();
        for split in 0..cut.len() {
            let mut s = StreamUsage::default();
            s.push(&cut.as_bytes()[..split]);
            s.push(&cut.as_bytes()[split..]);
            assert_eq!(s.usage(), Reported::Missing, "split at {split}");
        }
    }
}
