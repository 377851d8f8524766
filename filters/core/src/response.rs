//! The one error shape every Portico filter answers with, in the client's API format.
//!
//! `{"error":{"type":"<family>","code":"<stable_snake_case>","message":"<human text>"}}`: the
//! `type` families follow the names OpenAI- and Anthropic-style clients already parse, `code` is
//! stable and documented, and `message` is for people. Messages never contain credentials.
//! Anthropic's clients also expect the top-level `"type":"error"` of their API's errors, so a
//! request to an Anthropic Messages path gets it ([`ClientApi`]).
//!
//! Envoy's own error replies get the same shape from the HTTP connection manager's
//! `local_reply_config` (see `envoy/gateway.yaml`), which decides the format with the same
//! rule: the path, unless a filter that changed the path recorded the client's API in the
//! filter state [`crate::contract::state::CLIENT_API`].

use serde::Serialize;

/// The API a client speaks, which decides the shape of the errors it gets: the contract's one
/// API-format enum, named for what it means here.
pub use crate::contract::ApiFormat as ClientApi;

/// An error family, rendered as the body's `error.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RateLimit,
    Api,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::Authentication => "authentication_error",
            ErrorType::Permission => "permission_error",
            ErrorType::NotFound => "not_found_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::Api => "api_error",
        }
    }
}

/// A complete local reply: status, extra headers and the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u32,
    pub error_type: ErrorType,
    pub code: &'static str,
    pub message: String,
    /// Headers besides `content-type`, such as `www-authenticate` or `retry-after`.
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct Body<'a> {
    /// `"error"` for Anthropic clients; absent for OpenAI-compatible ones.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    error_type: &'a str,
    code: &'a str,
    message: &'a str,
}

impl ErrorResponse {
    pub fn new(status: u32, error_type: ErrorType, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The JSON body in `api`'s shape.
    pub fn body_for(&self, api: ClientApi) -> Vec<u8> {
        let body = Body {
            kind: (api == ClientApi::Anthropic).then_some("error"),
            error: Inner {
                error_type: self.error_type.as_str(),
                code: self.code,
                message: &self.message,
            },
        };
        // Serialising plain strings into a Vec cannot fail; fall back to a fixed body anyway.
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"type":"api_error","code":"internal","message":"internal error"}}"#.to_vec()
        })
    }

    /// All response headers, `content-type` first.
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        let mut pairs = Vec::with_capacity(self.headers.len() + 1);
        pairs.push(("content-type", "application/json"));
        pairs.extend(self.headers.iter().map(|(n, v)| (*n, v.as_str())));
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_shared_shape() {
        let r = ErrorResponse::new(
            401,
            ErrorType::Authentication,
            "token_expired",
            "the \"token\" has expired",
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body_for(ClientApi::OpenAi)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"type": "authentication_error", "code": "token_expired", "message": "the \"token\" has expired"}})
        );
    }

    #[test]
    fn anthropic_clients_get_the_top_level_type_too() {
        let r = ErrorResponse::new(429, ErrorType::RateLimit, "rate_limited", "slow down");
        let v: serde_json::Value = serde_json::from_slice(&r.body_for(ClientApi::Anthropic)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "code": "rate_limited", "message": "slow down"}})
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body_for(ClientApi::OpenAi)).unwrap();
        assert_eq!(v.get("type"), None);
    }

    #[test]
    fn content_type_comes_first_then_extra_headers() {
        let r =
            ErrorResponse::new(429, ErrorType::RateLimit, "rate_limited", "slow down").with_header("retry-after", "3");
        assert_eq!(
            r.header_pairs(),
            vec![("content-type", "application/json"), ("retry-after", "3")]
        );
    }
}
