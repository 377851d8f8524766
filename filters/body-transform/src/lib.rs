//! Portico body-transform: header and JSON body rewriting, and translation between the OpenAI
//! Chat Completions and Anthropic Messages APIs, streaming included.
//!
//! This file is the host shell. Request headers are only available in the header callback
//! (`../shared/ENVOY-FACTS.md`, facts 1 and 2), so everything header-side is decided there:
//! the path, API headers, and removing `content-length` when the body will change. Bodies are
//! rewritten in the body callbacks: requests and plain responses whole, SSE streams chunk by
//! chunk as they arrive.
// Off wasm the host shell below is compiled but never entered; the wasm clippy run checks it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod config;
pub mod ops;
pub mod translate;

use std::rc::Rc;

use log::{info, warn};
use portico_core::analytics::state;
use portico_core::clock::unix_seconds;
use portico_core::metrics::Family;
use portico_core::request::RequestView;
use portico_core::response::{ErrorResponse, ErrorType};
use portico_core::sse::is_event_stream;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde_json::Value;

use crate::config::{Config, Rule, Translate};
use crate::translate::request::RequestFacts;
use crate::translate::stream::{AnthropicToOpenAi, OpenAiToAnthropic};

const NAME: &str = "portico-body-transform";
/// Set by header-routing: the chosen backend's API format.
const FORMAT_HEADER: &str = "x-portico-backend-format";
const ANTHROPIC_VERSION: &str = "2023-06-01";

// The entry point exists only in the .wasm: native builds (tests, `portico check`) link
// several filters together and would clash on its exported symbol.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TransformRoot::default()) });
}}

/// Which way a request is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// An OpenAI-format client, an Anthropic-format backend.
    OpenAiToAnthropic,
    AnthropicToOpenAi,
}

/// The client's API, from the request path.
fn client_format(path: &str) -> Option<&'static str> {
    if path.ends_with("/chat/completions") {
        Some("openai")
    } else if path.ends_with("/messages") {
        Some("anthropic")
    } else {
        None
    }
}

/// The translation a rule asks for on this request.
pub fn direction(rule: &Rule, path: &str, backend_format: Option<&str>) -> Option<Direction> {
    match rule.translate {
        Translate::None => None,
        Translate::OpenAiToAnthropic => Some(Direction::OpenAiToAnthropic),
        Translate::AnthropicToOpenAi => Some(Direction::AnthropicToOpenAi),
        Translate::Auto => match (client_format(path), backend_format) {
            (Some("openai"), Some("anthropic")) => Some(Direction::OpenAiToAnthropic),
            (Some("anthropic"), Some("openai")) => Some(Direction::AnthropicToOpenAi),
            _ => None,
        },
    }
}

/// The upstream path for a translated request: the API endpoint swapped, prefix and query kept.
pub fn translated_path(path_and_query: &str, direction: Direction) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let (from, to) = match direction {
        Direction::OpenAiToAnthropic => ("/chat/completions", "/messages"),
        Direction::AnthropicToOpenAi => ("/messages", "/chat/completions"),
    };
    let base = path
        .strip_suffix(from)
        .map_or_else(|| path.to_owned(), |p| format!("{p}{to}"));
    match query {
        Some(q) => format!("{base}?{q}"),
        None => base,
    }
}

#[derive(Default)]
struct TransformRoot {
    config: Option<Rc<Config>>,
    /// `portico_transform_requests_total{kind, outcome}`: kind is the translation
    /// (`openai_to_anthropic`, `anthropic_to_openai`) or `rewrite`; outcome is `ok` or the
    /// error code the client got.
    metrics: Option<Rc<Family>>,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::OpenAiToAnthropic => "openai_to_anthropic",
            Direction::AnthropicToOpenAi => "anthropic_to_openai",
        }
    }
}

fn kind_label(direction: Option<Direction>) -> &'static str {
    direction.map_or("rewrite", Direction::label)
}

impl Context for TransformRoot {}

impl RootContext for TransformRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                self.metrics = Some(Rc::new(Family::counter("portico_transform_requests_total", 100)));
                true
            }
            Err(errors) => {
                errors.log(NAME);
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TransformHttp {
            config: self.config.clone()?,
            metrics: self.metrics.clone()?,
            rule: None,
            direction: None,
            rewrite_request: false,
            headers: Vec::new(),
            facts: RequestFacts::default(),
            response: Response::Untouched,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What happens to the response body.
enum Response {
    Untouched,
    /// Buffered whole, then translated or rewritten. `status` is the upstream status.
    Whole {
        status: u32,
    },
    OpenAiStream(Box<AnthropicToOpenAi>),
    AnthropicStream(Box<OpenAiToAnthropic>),
}

struct TransformHttp {
    config: Rc<Config>,
    metrics: Rc<Family>,
    rule: Option<usize>,
    direction: Option<Direction>,
    rewrite_request: bool,
    /// Request headers kept for body operations (`from_header`).
    headers: Vec<(String, String)>,
    facts: RequestFacts,
    response: Response,
}

impl Context for TransformHttp {}

impl TransformHttp {
    fn rule(&self) -> Option<&Rule> {
        self.config.routes.get(self.rule?)
    }

    fn reject(&mut self, status: u32, error_type: ErrorType, code: &'static str, message: String) -> Action {
        info!("{NAME}: {status} {code}: {message}");
        self.metrics
            .add(&[("kind", kind_label(self.direction)), ("outcome", code)], 1);
        // The local reply passes back through this filter's response callbacks: it is already
        // in the client's shape, so nothing may translate or rewrite it.
        self.rule = None;
        self.direction = None;
        let response = ErrorResponse::new(status, error_type, code, message);
        self.send_http_response(response.status, response.header_pairs(), Some(&response.body()));
        Action::Pause
    }

    fn now(&self) -> u64 {
        unix_seconds(self.get_current_time())
    }

    fn header_ops(&self, ops: &ops::HeaderOps, request: bool, view: Option<&RequestView>) {
        let set = |name: &str, value: Option<&str>| {
            if request {
                self.set_http_request_header(name, value);
            } else {
                self.set_http_response_header(name, value);
            }
        };
        for name in &ops.remove {
            set(name, None);
        }
        for (from, to) in &ops.rename {
            let value = if request {
                view.and_then(|v| v.header_str(from)).map(str::to_owned)
            } else {
                self.get_http_response_header_bytes(from)
                    .and_then(|v| String::from_utf8(v).ok())
            };
            if let Some(value) = value {
                set(from, None);
                set(to, Some(&value));
            }
        }
        for (name, value) in &ops.set {
            set(name, Some(value));
        }
        for (name, value) in &ops.add {
            if request {
                self.add_http_request_header(name, value);
            } else {
                self.add_http_response_header(name, value);
            }
        }
    }
}

impl HttpContext for TransformHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let view = RequestView::new(self.get_http_request_headers_bytes());
        let Some(matched) = self.config.routes.find(&view) else {
            return Action::Continue;
        };
        self.rule = Some(matched.index);
        let rule = matched.rule;
        let too_large = view
            .header_str("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > self.config.max_body_bytes);
        if too_large {
            return self.reject(
                413,
                ErrorType::InvalidRequest,
                "body_too_large",
                "the request body is larger than this route accepts".into(),
            );
        }
        self.headers = rule
            .request
            .body
            .iter()
            .filter_map(|op| match op {
                ops::BodyOp::Set(_, ops::Source::Header(name)) => {
                    view.header_str(name).map(|v| (name.clone(), v.to_owned()))
                }
                _ => None,
            })
            .collect();
        self.header_ops(&rule.request.headers, true, Some(&view));
        self.direction = direction(rule, view.path(), view.header_str(FORMAT_HEADER));
        if let Some(d) = self.direction {
            self.set_http_request_header(":path", Some(&translated_path(view.path_and_query(), d)));
            self.set_http_request_header("content-type", Some("application/json"));
            match d {
                Direction::OpenAiToAnthropic => {
                    self.set_http_request_header("anthropic-version", Some(ANTHROPIC_VERSION))
                }
                Direction::AnthropicToOpenAi => {
                    self.set_http_request_header("anthropic-version", None);
                    self.set_http_request_header("anthropic-beta", None);
                }
            }
        }
        self.rewrite_request = self.direction.is_some() || !rule.request.body.is_empty() || rule.require_json;
        if self.rewrite_request {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.rewrite_request {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if u64::try_from(body_size).map_or(true, |n| n > self.config.max_body_bytes) {
            return self.reject(
                413,
                ErrorType::InvalidRequest,
                "body_too_large",
                "the request body is larger than this route accepts".into(),
            );
        }
        let Some(rule) = self.rule() else {
            return Action::Continue;
        };
        let strict = rule.require_json || self.direction.is_some();
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let mut value: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) if strict => {
                return self.reject(
                    400,
                    ErrorType::InvalidRequest,
                    "invalid_json",
                    "the request body is not valid JSON".into(),
                )
            }
            Err(_) => return Action::Continue,
        };
        let headers = &self.headers;
        ops::apply(&rule.request.body, &mut value, |name| {
            headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        });
        let translated = match self.direction {
            Some(Direction::OpenAiToAnthropic) => {
                // What a token quota reserved for the answer, if one did: never ask for more.
                let reserved = self
                    .get_property(vec![state::MAX_OUTPUT_TOKENS])
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
                let default_max_tokens = reserved.unwrap_or(self.config.default_max_tokens);
                translate::request::openai_to_anthropic(&value, default_max_tokens).map(Some)
            }
            Some(Direction::AnthropicToOpenAi) => translate::request::anthropic_to_openai(&value).map(Some),
            None => Ok(None),
        };
        let value = match translated {
            Ok(Some((v, facts))) => {
                self.facts = facts;
                v
            }
            Ok(None) => value,
            Err(e) => return self.reject(400, ErrorType::InvalidRequest, e.code(), e.to_string()),
        };
        match serde_json::to_vec(&value) {
            Ok(bytes) => {
                self.set_http_request_body(0, body_size, &bytes);
                self.metrics
                    .add(&[("kind", kind_label(self.direction)), ("outcome", "ok")], 1);
                Action::Continue
            }
            Err(_) => self.reject(
                500,
                ErrorType::Api,
                "internal_error",
                "could not encode the request body".into(),
            ),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(rule) = self.rule() else {
            return Action::Continue;
        };
        let rewrite_body = !rule.response.body.is_empty();
        self.header_ops(&rule.response.headers, false, None);
        let status = self
            .get_http_response_header_bytes(":status")
            .and_then(|s| String::from_utf8(s).ok()?.parse::<u32>().ok())
            .unwrap_or(200);
        let sse = self
            .get_http_response_header_bytes("content-type")
            .is_some_and(|ct| is_event_stream(&ct));
        self.response = match (self.direction, sse) {
            (Some(Direction::OpenAiToAnthropic), true) => {
                Response::OpenAiStream(Box::new(AnthropicToOpenAi::new(self.now(), self.facts.include_usage)))
            }
            (Some(Direction::AnthropicToOpenAi), true) => Response::AnthropicStream(Box::default()),
            (Some(_), false) => Response::Whole { status },
            (None, false) if rewrite_body => Response::Whole { status },
            (None, _) => Response::Untouched,
        };
        if !matches!(self.response, Response::Untouched) {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match &mut self.response {
            Response::Untouched => Action::Continue,
            Response::OpenAiStream(_) | Response::AnthropicStream(_) => {
                let chunk = self.get_http_response_body(0, body_size).unwrap_or_default();
                let mut out = match &mut self.response {
                    Response::OpenAiStream(t) => t.push(&chunk),
                    Response::AnthropicStream(t) => t.push(&chunk),
                    _ => Vec::new(),
                };
                if end_of_stream {
                    match &mut self.response {
                        Response::OpenAiStream(t) => {
                            out.extend(t.finish());
                            // The OpenAI client may not get the usage (it did not ask for it):
                            // rate-limit, after this filter on the way out, reads it here.
                            if let Some((prompt, completion)) = t.usage() {
                                self.set_property(vec![state::PROMPT_TOKENS], Some(prompt.to_string().as_bytes()));
                                self.set_property(
                                    vec![state::COMPLETION_TOKENS],
                                    Some(completion.to_string().as_bytes()),
                                );
                            }
                        }
                        Response::AnthropicStream(t) => out.extend(t.finish()),
                        _ => {}
                    }
                    let failure = match &self.response {
                        Response::OpenAiStream(t) => t.failure(),
                        Response::AnthropicStream(t) => t.failure(),
                        _ => None,
                    };
                    if let Some(bad) = failure {
                        warn!("{NAME}: {}: {bad}", translate::BadUpstream::CODE);
                    }
                }
                self.set_http_response_body(0, body_size, &out);
                Action::Continue
            }
            Response::Whole { status } => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let status = *status;
                let body = self.get_http_response_body(0, body_size).unwrap_or_default();
                if let Some(out) = self.whole_response(&body, status) {
                    self.set_http_response_body(0, body_size, &out);
                }
                Action::Continue
            }
        }
    }
}

impl TransformHttp {
    /// The rewritten complete response body; `None` leaves it as the backend sent it. A success
    /// that cannot be translated becomes an error body (the status line has already gone).
    fn whole_response(&self, body: &[u8], status: u32) -> Option<Vec<u8>> {
        let parsed = serde_json::from_slice::<Value>(body);
        let mut value = match (self.direction, status < 400) {
            (Some(direction), true) => {
                let translated = parsed
                    .map_err(|_| translate::BadUpstream::new("$", "is not JSON"))
                    .and_then(|v| match direction {
                        Direction::OpenAiToAnthropic => translate::response::anthropic_to_openai(&v, self.now()),
                        Direction::AnthropicToOpenAi => translate::response::openai_to_anthropic(&v),
                    });
                match translated {
                    Ok(v) => v,
                    Err(bad) => {
                        warn!("{NAME}: {}: {bad}", translate::BadUpstream::CODE);
                        return serde_json::to_vec(&bad.body()).ok();
                    }
                }
            }
            (Some(Direction::OpenAiToAnthropic), false) => translate::response::error_to_openai(&parsed.ok()?, status),
            (Some(Direction::AnthropicToOpenAi), false) => {
                translate::response::error_to_anthropic(&parsed.ok()?, status)
            }
            (None, _) => parsed.ok()?,
        };
        if let Some(rule) = self.rule() {
            let headers = &self.headers;
            ops::apply(&rule.response.body, &mut value, |name| {
                headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
            });
        }
        serde_json::to_vec(&value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_swap_endpoints_and_keep_prefix_and_query() {
        assert_eq!(
            translated_path("/v1/chat/completions", Direction::OpenAiToAnthropic),
            "/v1/messages"
        );
        assert_eq!(
            translated_path("/proxy/v1/messages?beta=true", Direction::AnthropicToOpenAi),
            "/proxy/v1/chat/completions?beta=true"
        );
    }

    #[test]
    fn auto_translates_only_between_different_formats() {
        let rule = Rule {
            translate: Translate::Auto,
            require_json: false,
            request: Default::default(),
            response: Default::default(),
        };
        assert_eq!(
            direction(&rule, "/v1/chat/completions", Some("anthropic")),
            Some(Direction::OpenAiToAnthropic)
        );
        assert_eq!(
            direction(&rule, "/v1/messages", Some("openai")),
            Some(Direction::AnthropicToOpenAi)
        );
        assert_eq!(direction(&rule, "/v1/messages", Some("anthropic")), None);
        assert_eq!(direction(&rule, "/v1/chat/completions", None), None);
    }

    #[test]
    fn configuration_errors_have_paths() {
        let err = Config::from_value(
            &serde_json::json!({"routes": [{"translate": "sideways", "request": {"body": [
                {"op": "set", "path": "nope", "value": 1}, {"op": "rename", "path": "/b"}, {"op": "set", "path": "/c"}
            ]}}]}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "$.routes[0].translate: unknown value \"sideways\", expected one of: none, openai_to_anthropic, anthropic_to_openai, auto; \
             $.routes[0].request.body[0].path: not a JSON Pointer (RFC 6901): it must start with '/'; \
             $.routes[0].request.body[1]: `rename` needs `from`; \
             $.routes[0].request.body[2]: `set` takes exactly one of `value` or `from_header`"
        );
    }
}
