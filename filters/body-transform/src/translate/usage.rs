//! Token usage in each API's own definition.
//!
//! OpenAI's `prompt_tokens` counts every prompt token; `prompt_tokens_details.cached_tokens`
//! (read from the prompt cache) and `cache_write_tokens` (written to it) are parts of it.
//! Anthropic's `input_tokens` counts only the tokens neither read from nor written to the cache,
//! and `cache_read_input_tokens` and `cache_creation_input_tokens` come on top. Same three
//! numbers, opposite containment, so every conversion goes through [`Tokens`]. Sums saturate and
//! differences floor at zero: a backend may report any number up to `u64::MAX`, and wasm builds
//! wrap silently on overflow.

use portico_core::contract::BackendUsage;
use serde_json::{json, Map, Value};

use super::{put, BadUpstream};

/// One answer's token counts; `None` where the backend reported nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    /// Prompt tokens neither read from nor written to a prompt cache.
    pub(crate) uncached: Option<u64>,
    pub(crate) cache_read: Option<u64>,
    pub(crate) cache_write: Option<u64>,
    pub(crate) output: Option<u64>,
}

/// The count `key` of the usage object at `path`: absent or null is `None`, anything but a
/// non-negative integer is a bad answer.
fn count(usage: &Value, key: &str, path: &str) -> Result<Option<u64>, BadUpstream> {
    match usage.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| BadUpstream::new(format!("{path}.{key}"), "must be a non-negative integer")),
    }
}

fn object<'a>(usage: &'a Value, path: &str) -> Result<&'a Value, BadUpstream> {
    if usage.is_object() {
        Ok(usage)
    } else {
        Err(BadUpstream::new(path, "must be an object"))
    }
}

impl Tokens {
    /// The usage as rate-limit settles it: known only when both the prompt and the output
    /// were counted (a stream's opening placeholder, or a usage without `output_tokens`, is
    /// not a final count).
    pub(crate) fn settled(&self) -> BackendUsage {
        if self.uncached.is_some() && self.output.is_some() {
            BackendUsage::Reported {
                prompt: self.prompt(),
                completion: self.completion(),
            }
        } else {
            BackendUsage::Unknown
        }
    }

    /// Every prompt token, cached or not: OpenAI's `prompt_tokens`.
    pub(crate) fn prompt(&self) -> u64 {
        self.uncached
            .unwrap_or(0)
            .saturating_add(self.cache_read.unwrap_or(0))
            .saturating_add(self.cache_write.unwrap_or(0))
    }

    pub(crate) fn completion(&self) -> u64 {
        self.output.unwrap_or(0)
    }

    /// Reads an Anthropic `usage` object (at `path`, for errors).
    pub(crate) fn from_anthropic(usage: &Value, path: &str) -> Result<Self, BadUpstream> {
        let mut tokens = Self::default();
        tokens.update_from_anthropic(usage, path)?;
        Ok(tokens)
    }

    /// Takes the counts a later Anthropic usage carries (a `message_delta`'s are cumulative)
    /// and keeps the rest.
    pub(crate) fn update_from_anthropic(&mut self, usage: &Value, path: &str) -> Result<(), BadUpstream> {
        let usage = object(usage, path)?;
        let read = |key: &str| count(usage, key, path);
        self.uncached = read("input_tokens")?.or(self.uncached);
        self.cache_read = read("cache_read_input_tokens")?.or(self.cache_read);
        self.cache_write = read("cache_creation_input_tokens")?.or(self.cache_write);
        self.output = read("output_tokens")?.or(self.output);
        Ok(())
    }

    /// Reads an OpenAI `usage` object (at `path`, for errors).
    pub(crate) fn from_openai(usage: &Value, path: &str) -> Result<Self, BadUpstream> {
        let usage = object(usage, path)?;
        let prompt = count(usage, "prompt_tokens", path)?;
        let details_path = format!("{path}.prompt_tokens_details");
        let (cache_read, cache_write) = match usage.get("prompt_tokens_details") {
            None | Some(Value::Null) => (None, None),
            Some(details) => {
                let details = object(details, &details_path)?;
                (
                    count(details, "cached_tokens", &details_path)?,
                    count(details, "cache_write_tokens", &details_path)?,
                )
            }
        };
        let uncached = prompt.map(|p| {
            p.saturating_sub(cache_read.unwrap_or(0))
                .saturating_sub(cache_write.unwrap_or(0))
        });
        Ok(Self {
            uncached,
            cache_read,
            cache_write,
            output: count(usage, "completion_tokens", path)?,
        })
    }

    /// OpenAI's `usage`; `prompt_tokens_details` only when the backend reported its cache.
    pub(crate) fn to_openai(self) -> Value {
        let prompt = self.prompt();
        let completion = self.completion();
        let mut usage = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion)
        });
        if self.cache_read.is_some() || self.cache_write.is_some() {
            let mut details = Map::new();
            details.insert("cached_tokens".into(), json!(self.cache_read.unwrap_or(0)));
            if let Some(write) = self.cache_write {
                details.insert("cache_write_tokens".into(), json!(write));
            }
            put(&mut usage, "prompt_tokens_details", Value::Object(details));
        }
        usage
    }

    /// Anthropic's `usage`; the cache counts only when the backend reported them.
    pub(crate) fn to_anthropic(self) -> Value {
        let mut usage = json!({"input_tokens": self.uncached.unwrap_or(0), "output_tokens": self.completion()});
        if let Some(read) = self.cache_read {
            put(&mut usage, "cache_read_input_tokens", json!(read));
        }
        if let Some(write) = self.cache_write {
            put(&mut usage, "cache_creation_input_tokens", json!(write));
        }
        usage
    }
}

/// The usage a backend's complete answer reported, in the backend's own API (`anthropic`:
/// Anthropic Messages, else OpenAI Chat Completions); unknown when it has none or it is not a
/// count. Read from the backend's answer, so it holds even when the answer cannot be
/// translated.
pub fn of_answer(answer: &Value, anthropic: bool) -> BackendUsage {
    let Some(usage) = answer.get("usage").filter(|u| !u.is_null()) else {
        return BackendUsage::Unknown;
    };
    let tokens = if anthropic {
        Tokens::from_anthropic(usage, "usage")
    } else {
        Tokens::from_openai(usage, "usage")
    };
    tokens.map_or(BackendUsage::Unknown, |t| t.settled())
}
