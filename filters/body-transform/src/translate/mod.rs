//! Translation between the OpenAI Chat Completions API and the Anthropic Messages API.
//!
//! Both directions follow one rule: what the other API can say with the same meaning is
//! translated, and anything else is refused by name. A request field that cannot be expressed
//! is a [`RequestError`] (the client gets a 400); an upstream answer that cannot be expressed in
//! the client's format is a [`BadUpstream`] (never a plausible success). The README's field
//! table lists every decision.

use portico_core::response::{ErrorResponse, ErrorType};

pub mod request;
pub mod response;
pub mod stream;
pub mod usage;

/// Sets `key` on `target` when it is an object (it always is where this is used: the values are
/// built here); never panics, unlike `value[key] = ..`.
pub(crate) fn put(target: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(map) = target.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The field is valid in the client's API but the backend's API cannot express it.
    Untranslatable,
    /// The field's type or value is wrong in the client's own API.
    Invalid,
}

/// A request the gateway will not send upstream, naming the field (a JSON path from the body's
/// root, such as `messages[2].content[0].image_url.detail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub refusal: Refusal,
    pub field: String,
    pub reason: String,
}

impl RequestError {
    /// The stable error code the client gets with status 400.
    pub fn code(&self) -> &'static str {
        match self.refusal {
            Refusal::Untranslatable => "untranslatable",
            Refusal::Invalid => "invalid_field",
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

/// An upstream answer that cannot be translated faithfully into the client's format: garbage,
/// wrong types, tool arguments that are not a JSON object, a stop reason the client's API has
/// no word for. The client must see an error (code [`BadUpstream::CODE`]), never a success
/// that quietly lost part of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUpstream {
    /// Where in the upstream answer, such as `choices[0].message.tool_calls[0].function.arguments`.
    pub field: String,
    pub reason: String,
}

impl BadUpstream {
    pub const CODE: &'static str = "bad_upstream_response";

    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error the client gets: 502, in the shape every Portico error has.
    pub fn response(&self) -> ErrorResponse {
        ErrorResponse::new(502, ErrorType::Api, Self::CODE, self.to_string())
    }
}

impl std::fmt::Display for BadUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the model backend's answer cannot be translated: `{}` {}",
            self.field, self.reason
        )
    }
}

#[cfg(test)]
mod tests;
