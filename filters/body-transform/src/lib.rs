//! Portico body-transform: header and JSON body rewriting, and translation between the OpenAI
//! Chat Completions and Anthropic Messages APIs, streaming included.
//!
//! This file is the host shell. Request headers are only available in the header callback
//! (`../shared/ENVOY-FACTS.md`, facts 1 and 2), so everything header-side is decided there:
//! the path, API headers, and removing `content-length` when the body will change. Bodies are
//! rewritten in the body callbacks: requests and plain responses whole, SSE streams chunk by
//! chunk as they arrive.
//!
//! Only answers that came from the upstream (Envoy's response details `via_upstream`) or that
//! the cache replays are translated: a local reply (a Portico filter's refusal, Envoy's own
//! error) is already in the client's shape and keeps its code. With
//! `allow_on_headers_stop_iteration` on (and the plugin field of the same name), the headers
//! of an answer rewritten whole are held until its body is read, so an answer that cannot be
//! translated becomes a 502 `bad_upstream_response`; without it the 200 has already left and
//! the error travels in the body.
// Until issue 14 ports this shell: it still calls the SDK's host wrappers.
#![allow(clippy::disallowed_methods)]
// Off wasm the host shell below is compiled but never entered; the wasm clippy run checks it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod config;
pub mod ops;
pub mod translate;

use std::rc::Rc;

use portico_core::analytics::{state, BackendUsage, CACHE_HEADER};
use portico_core::clock::unix_seconds;
use portico_core::json;
use portico_core::metrics::Family;
use portico_core::refusal::Refusals;
use portico_core::request::RequestView;
use portico_core::response::{ClientApi, ErrorResponse, ErrorType};
use portico_core::route::matching_path;
use portico_core::sse::is_event_stream;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use serde_json::Value;

use crate::config::{Config, Rule, Translate};
use crate::translate::request::RequestFacts;
use crate::translate::stream::{AnthropicToOpenAi, OpenAiToAnthropic};
use crate::translate::BadUpstream;

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

/// The client's API, from the request path as routes match it (`;` parameters removed,
/// escaped letters decoded), so `/v1/chat/completions;x=1` is the model call it routes as.
fn client_format(path: &str) -> Option<&'static str> {
    let path = matching_path(path);
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
    // The endpoint is recognised on the path routes match on, so it is swapped there too: the
    // backend gets its own API's path, without the client's `;` parameters.
    let path = matching_path(path);
    let (from, to) = match direction {
        Direction::OpenAiToAnthropic => ("/chat/completions", "/messages"),
        Direction::AnthropicToOpenAi => ("/messages", "/chat/completions"),
    };
    let base = path
        .strip_suffix(from)
        .map_or_else(|| path.clone().into_owned(), |p| format!("{p}{to}"));
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
    refusals: Option<Rc<Refusals>>,
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
                self.refusals = Some(Rc::new(Refusals::new(NAME, config.refusal_log)));
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
            refusals: self.refusals.clone()?,
            api: ClientApi::OpenAi,
            rule: None,
            direction: None,
            rewrite_request: false,
            headers: Vec::new(),
            facts: RequestFacts::default(),
            response: Response::Untouched,
            held: false,
            model_route: false,
            reserved: None,
            backend_anthropic: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Whether an answer came from the upstream, or is one the cache replays in its place: only
/// those are translated. `details` is Envoy's `response.code_details` (`via_upstream` for an
/// upstream answer; a local reply has its own), `cache` the `x-portico-cache` response header.
pub fn answered_by_upstream(details: Option<&[u8]>, cache: Option<&[u8]>) -> bool {
    details == Some(b"via_upstream".as_slice()) || cache == Some(b"HIT".as_slice())
}

/// Whether to hold the response headers until the body is read: only for an answer rewritten
/// whole, when the plugin may stop at headers, and never when the headers end the stream (no
/// body callback would ever release them).
pub fn hold_headers(whole: bool, end_of_stream: bool, allowed: bool) -> bool {
    whole && allowed && !end_of_stream
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
    refusals: Rc<Refusals>,
    /// The client's API, from the path it called: the shape of this filter's errors.
    api: ClientApi,
    rule: Option<usize>,
    direction: Option<Direction>,
    rewrite_request: bool,
    /// Request headers kept for body operations (`from_header`).
    headers: Vec<(String, String)>,
    facts: RequestFacts,
    response: Response,
    /// The response headers are held (`allow_on_headers_stop_iteration`): the status can
    /// still change.
    held: bool,
    /// The client called a model API (`/chat/completions`, `/messages`).
    model_route: bool,
    /// The output tokens a token quota reserved (rate-limit's filter state), if one did.
    reserved: Option<u64>,
    /// The backend's API on a model route: Anthropic Messages (`true`) or OpenAI Chat
    /// Completions; `None` elsewhere.
    backend_anthropic: Option<bool>,
}

impl Context for TransformHttp {}

impl TransformHttp {
    fn rule(&self) -> Option<&Rule> {
        self.config.routes.get(self.rule?)
    }

    fn reject(&mut self, status: u32, error_type: ErrorType, code: &'static str, message: String) -> Action {
        self.metrics
            .add(&[("kind", kind_label(self.direction)), ("outcome", code)], 1);
        let response = ErrorResponse::new(status, error_type, code, message);
        self.refusals.refuse(
            &response,
            self.api,
            self.get_current_time(),
            format_args!("{}", response.message),
        );
        Action::Pause
    }

    /// Records an upstream answer that cannot reach the client as it is: a warning and the
    /// `bad_upstream_response` outcome.
    fn record_bad_upstream(&self, bad: &BadUpstream) {
        self.set_property(vec![state::BAD_UPSTREAM], Some(BadUpstream::CODE.as_bytes()));
        self.metrics.add(
            &[("kind", kind_label(self.direction)), ("outcome", BadUpstream::CODE)],
            1,
        );
        self.refusals
            .warn(self.get_current_time(), format_args!("{}: {bad}", BadUpstream::CODE));
    }

    /// A bad answer whose headers have not left: the client gets a 502 in its own format.
    fn fail_bad_upstream(&self, bad: &BadUpstream) -> Action {
        self.record_bad_upstream(bad);
        self.refusals.answer(&bad.response(), self.api);
        Action::Pause
    }

    /// Tells rate-limit what the backend reported about a translated success.
    fn publish_usage(&self, usage: BackendUsage) {
        self.set_property(vec![state::BACKEND_USAGE], Some(usage.encode().as_bytes()));
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
        self.api = ClientApi::of_path(view.path());
        self.model_route = client_format(view.path()).is_some();
        let rule = matched.rule;
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
            let path = translated_path(view.path_and_query(), d);
            self.set_http_request_header(":path", Some(&path));
            if ClientApi::of_path(&path) != self.api {
                // Envoy's own errors (timeouts, resets, a body too large) are shaped by the
                // path they see, which is now the backend's.
                self.set_property(vec![state::CLIENT_API], Some(self.api.as_str().as_bytes()));
            }
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
        // What a token quota reserved for the answer, if one did: the backend is asked for no
        // more when the client named no maximum (rate-limit settles at most 4x the
        // reservation, so an uncapped answer would be undercharged).
        self.reserved = self
            .get_property(vec![state::MAX_OUTPUT_TOKENS])
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
        self.backend_anthropic = match self.direction {
            Some(Direction::OpenAiToAnthropic) => Some(true),
            Some(Direction::AnthropicToOpenAi) => Some(false),
            None => client_format(view.path()).map(|f| f == "anthropic"),
        };
        let cap = self.reserved.is_some() && self.backend_anthropic.is_some();
        self.rewrite_request = self.direction.is_some() || !rule.request.body.is_empty() || rule.require_json || cap;
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
        let Some(rule) = self.rule() else {
            return Action::Continue;
        };
        let strict = rule.require_json || self.direction.is_some();
        let body_ops = !rule.request.body.is_empty();
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let mut value: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) if strict => {
                // Valid JSON that no reader can hold (`1e400`) is named, not called malformed.
                if let Some(response) = json::parse(&body).err().and_then(|i| i.content_refusal()) {
                    return self.reject(400, response.error_type, response.code, response.message);
                }
                return self.reject(
                    400,
                    ErrorType::InvalidRequest,
                    "invalid_json",
                    "the request body is not valid JSON".into(),
                );
            }
            Err(_) => return Action::Continue,
        };
        let headers = &self.headers;
        ops::apply(&rule.request.body, &mut value, |name| {
            headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        });
        let translated = match self.direction {
            Some(Direction::OpenAiToAnthropic) => {
                let default_max_tokens = self.reserved.unwrap_or(self.config.default_max_tokens);
                translate::request::openai_to_anthropic(&value, default_max_tokens).map(Some)
            }
            Some(Direction::AnthropicToOpenAi) => translate::request::anthropic_to_openai(&value).map(Some),
            None => Ok(None),
        };
        let mut value = match translated {
            Ok(Some((v, facts))) => {
                self.facts = facts;
                v
            }
            Ok(None) => value,
            Err(e) => return self.reject(400, ErrorType::InvalidRequest, e.code(), e.to_string()),
        };
        let capped = match (self.reserved, self.backend_anthropic) {
            (Some(reserved), Some(anthropic)) => translate::request::cap_output(&mut value, anthropic, reserved),
            _ => false,
        };
        if self.direction.is_none() && !body_ops && !capped {
            // Read only to cap it, and it names its maximum: sent as it came.
            return Action::Continue;
        }
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

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(rule) = self.rule() else {
            return Action::Continue;
        };
        let rewrite_body = !rule.response.body.is_empty();
        self.header_ops(&rule.response.headers, false, None);
        let details = self.get_property(vec!["response", "code_details"]);
        let cache = self.get_http_response_header_bytes(CACHE_HEADER);
        if !answered_by_upstream(details.as_deref(), cache.as_deref()) {
            // A local reply (a refusal, Envoy's own error) is already in the client's shape.
            return Action::Continue;
        }
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
            // A model backend's error in the client's own API: read whole to give it a code.
            (None, false) if self.model_route && status >= 400 => Response::Whole { status },
            (None, _) => Response::Untouched,
        };
        if matches!(self.response, Response::Untouched) {
            return Action::Continue;
        }
        if end_of_stream {
            // No body will follow, and the headers have not left yet.
            if let Response::Whole { status } = self.response {
                if self.unreadable_error(&[], status) {
                    return Action::Pause;
                }
                if let Err(bad) = self.whole_response(&[], status) {
                    return self.fail_bad_upstream(&bad);
                }
            }
            return Action::Continue;
        }
        self.set_http_response_header("content-length", None);
        self.held = hold_headers(
            matches!(self.response, Response::Whole { .. }),
            end_of_stream,
            self.config.allow_on_headers_stop_iteration,
        );
        if self.held {
            Action::Pause
        } else {
            Action::Continue
        }
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
                    // The client may not get the backend's usage (an OpenAI client that did not
                    // ask for it), or get a count the backend never gave: rate-limit, after this
                    // filter on the way out, settles from what the backend said.
                    let usage = match &mut self.response {
                        Response::OpenAiStream(t) => {
                            out.extend(t.finish());
                            t.usage()
                        }
                        Response::AnthropicStream(t) => {
                            out.extend(t.finish());
                            t.usage()
                        }
                        _ => BackendUsage::Unknown,
                    };
                    self.publish_usage(usage);
                    let failure = match &self.response {
                        Response::OpenAiStream(t) => t.failure(),
                        Response::AnthropicStream(t) => t.failure(),
                        _ => None,
                    };
                    if let Some(bad) = failure {
                        self.record_bad_upstream(bad);
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
                if self.held && self.unreadable_error(&body, status) {
                    return Action::Pause;
                }
                match self.whole_response(&body, status) {
                    Ok(Some(out)) => self.set_http_response_body(0, body_size, &out),
                    Ok(None) => {}
                    Err(bad) if self.held => return self.fail_bad_upstream(&bad),
                    Err(bad) => {
                        // The 200 has left (degraded mode): the error travels in the body.
                        self.record_bad_upstream(&bad);
                        self.set_http_response_body(0, body_size, &bad.response().body_for(self.api));
                    }
                }
                Action::Continue
            }
        }
    }
}

impl TransformHttp {
    /// Answers, in the client's format, a backend's error on a model route whose body is not
    /// JSON (a proxy's HTML page, an empty body): every error there carries a code. Only while
    /// the headers have not left; `true` when it answered.
    fn unreadable_error(&self, body: &[u8], status: u32) -> bool {
        let model_call = self.direction.is_some() || self.model_route;
        if status < 400 || !model_call || serde_json::from_slice::<Value>(body).is_ok() {
            return false;
        }
        let response = translate::response::unreadable_error(status);
        self.refusals.warn(
            self.get_current_time(),
            format_args!("{}: {}", response.code, response.message),
        );
        self.refusals.answer(&response, self.api);
        true
    }

    /// The rewritten complete response body; `Ok(None)` leaves it as the backend sent it, and
    /// a success that cannot be translated is an error.
    fn whole_response(&self, body: &[u8], status: u32) -> Result<Option<Vec<u8>>, BadUpstream> {
        let parsed = serde_json::from_slice::<Value>(body);
        let mut value = match (self.direction, status < 400, parsed) {
            (Some(direction), true, parsed) => {
                let Ok(v) = parsed else {
                    self.publish_usage(BackendUsage::Unknown);
                    return Err(BadUpstream::new("$", "is not JSON"));
                };
                // Charged even when the answer cannot be translated: the backend did the work.
                self.publish_usage(translate::usage::of_answer(
                    &v,
                    direction == Direction::OpenAiToAnthropic,
                ));
                match direction {
                    Direction::OpenAiToAnthropic => translate::response::anthropic_to_openai(&v, self.now())?,
                    Direction::AnthropicToOpenAi => translate::response::openai_to_anthropic(&v)?,
                }
            }
            (_, _, Err(_)) => return Ok(None),
            (Some(Direction::OpenAiToAnthropic), false, Ok(v)) => translate::response::error_to_openai(&v, status),
            (Some(Direction::AnthropicToOpenAi), false, Ok(v)) => translate::response::error_to_anthropic(&v, status),
            (None, false, Ok(v)) if self.model_route => translate::response::error_with_code(&v, status).unwrap_or(v),
            (None, _, Ok(v)) => v,
        };
        if let Some(rule) = self.rule() {
            let headers = &self.headers;
            ops::apply(&rule.response.body, &mut value, |name| {
                headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
            });
        }
        Ok(serde_json::to_vec(&value).ok())
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
    fn path_parameters_and_escapes_do_not_hide_a_model_call() {
        let rule = Rule {
            translate: Translate::Auto,
            require_json: false,
            request: Default::default(),
            response: Default::default(),
        };
        for path in [
            "/v1/chat/completions;x=1",
            "/v1/chat/%63ompletions",
            "/v1/chat/completions%3Bx",
        ] {
            assert_eq!(
                direction(&rule, path, Some("anthropic")),
                Some(Direction::OpenAiToAnthropic),
                "{path}"
            );
            assert_eq!(
                translated_path(path, Direction::OpenAiToAnthropic),
                "/v1/messages",
                "{path}"
            );
        }
        assert_eq!(
            translated_path("/v1/messages;x=1?beta=true", Direction::AnthropicToOpenAi),
            "/v1/chat/completions?beta=true"
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
    fn only_upstream_answers_and_cache_replays_are_translated() {
        assert!(answered_by_upstream(Some(b"via_upstream"), None));
        assert!(answered_by_upstream(None, Some(b"HIT")));
        // A Portico filter's refusal, Envoy's own error, another filter's reply: left alone.
        for details in [&b"portico-header-routing.invalid_json"[..], b"route_not_found", b""] {
            assert!(!answered_by_upstream(Some(details), None), "{details:?}");
        }
        assert!(!answered_by_upstream(None, Some(b"MISS")));
        assert!(!answered_by_upstream(None, None));
    }

    #[test]
    fn headers_are_held_only_for_whole_bodies_that_will_come() {
        assert!(hold_headers(true, false, true));
        // A paused stream whose headers ended it would never be released.
        assert!(!hold_headers(true, true, true));
        // Streams and untouched bodies flow; without the plugin field, never hold.
        assert!(!hold_headers(false, false, true));
        assert!(!hold_headers(true, false, false));
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
