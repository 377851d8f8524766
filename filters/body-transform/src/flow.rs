//! What body-transform decides, as pure functions and types: the shell in [`crate::filter`]
//! only reads the host and records what these return.
//!
//! - at the request headers: the translation direction ([`direction`]), the request plan
//!   ([`plan_request`]), header operations ([`header_edits`]) and the translation's own
//!   headers ([`translation_edits`]);
//! - at the request body: the rewritten body or a refusal ([`rewrite_request`]);
//! - at the response headers: which answers are touched ([`answered_by_upstream`]) and how
//!   ([`response_mode`]);
//! - at the response body: an SSE stream translated chunk by chunk ([`StreamTranslator`]), an
//!   answer read whole translated, or replaced by a 502 in the client's format when it cannot
//!   be and its headers are still held ([`answer_whole`]).

use portico_core::contract::{cache, ApiFormat, BackendUsage};
use portico_core::json;
use portico_core::response::{ClientApi, ErrorResponse, ErrorType};
use portico_core::route::matching_path;
use serde_json::Value;

use crate::config::{Rule, Translate};
use crate::ops::{self, BodyOp, HeaderOps, Source};
use crate::translate::request::RequestFacts;
use crate::translate::stream::{AnthropicToOpenAi, OpenAiToAnthropic};
use crate::translate::{self, BadUpstream};

const ANTHROPIC_VERSION: &str = "2023-06-01";

// === Direction ===

/// Which way a request is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// An OpenAI-format client, an Anthropic-format backend.
    OpenAiToAnthropic,
    AnthropicToOpenAi,
}

impl Direction {
    /// The `kind` label of `portico_transform_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Direction::OpenAiToAnthropic => "openai_to_anthropic",
            Direction::AnthropicToOpenAi => "anthropic_to_openai",
        }
    }
}

/// The `kind` label of a request: its translation, or `rewrite`.
pub fn kind_label(direction: Option<Direction>) -> &'static str {
    direction.map_or("rewrite", Direction::label)
}

/// The client's API on a model call, from the request path as routes match it (`;`
/// parameters removed, escaped letters decoded), so `/v1/chat/completions;x=1` is the model
/// call it routes as; `None` on any other path.
fn client_format(path: &str) -> Option<ApiFormat> {
    let path = matching_path(path);
    if path.ends_with("/chat/completions") {
        Some(ApiFormat::OpenAi)
    } else if path.ends_with("/messages") {
        Some(ApiFormat::Anthropic)
    } else {
        None
    }
}

/// The translation a rule asks for on this request.
pub fn direction(rule: &Rule, path: &str, backend_format: Option<ApiFormat>) -> Option<Direction> {
    match rule.translate {
        Translate::None => None,
        Translate::OpenAiToAnthropic => Some(Direction::OpenAiToAnthropic),
        Translate::AnthropicToOpenAi => Some(Direction::AnthropicToOpenAi),
        Translate::Auto => match (client_format(path), backend_format) {
            (Some(ApiFormat::OpenAi), Some(ApiFormat::Anthropic)) => Some(Direction::OpenAiToAnthropic),
            (Some(ApiFormat::Anthropic), Some(ApiFormat::OpenAi)) => Some(Direction::AnthropicToOpenAi),
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

// === Headers ===

/// One header change, in the order it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    Set(String, String),
    Add(String, String),
}

/// The edits of a rule's header operations: removals, renames, sets, then adds. A rename reads
/// the header's value through `value`; with `live`, earlier edits of the list are seen (the
/// response side, where the old shell read each value from the map it was changing), without,
/// the map as it arrived (the request side).
pub fn header_edits(ops: &HeaderOps, live: bool, value: impl Fn(&str) -> Option<String>) -> Vec<HeaderEdit> {
    let mut edits = Vec::new();
    // Names changed so far, latest last: `None` once removed.
    let mut overlay: Vec<(&str, Option<String>)> = Vec::new();
    let read = |overlay: &[(&str, Option<String>)], name: &str| {
        if live {
            if let Some((_, v)) = overlay.iter().rev().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return v.clone();
            }
        }
        value(name)
    };
    for name in &ops.remove {
        edits.push(HeaderEdit::Remove(name.clone()));
        overlay.push((name, None));
    }
    for (from, to) in &ops.rename {
        if let Some(v) = read(&overlay, from) {
            edits.push(HeaderEdit::Remove(from.clone()));
            edits.push(HeaderEdit::Set(to.clone(), v.clone()));
            overlay.push((from, None));
            overlay.push((to, Some(v)));
        }
    }
    for (name, v) in &ops.set {
        edits.push(HeaderEdit::Set(name.clone(), v.clone()));
    }
    for (name, v) in &ops.add {
        edits.push(HeaderEdit::Add(name.clone(), v.clone()));
    }
    edits
}

/// The request header changes a translation makes: the backend's path, a JSON body, and the
/// Anthropic API headers set (to Anthropic) or removed (to OpenAI).
pub fn translation_edits(direction: Direction, path_and_query: &str) -> Vec<HeaderEdit> {
    let mut edits = vec![
        HeaderEdit::Set(":path".into(), translated_path(path_and_query, direction)),
        HeaderEdit::Set("content-type".into(), "application/json".into()),
    ];
    match direction {
        Direction::OpenAiToAnthropic => {
            edits.push(HeaderEdit::Set("anthropic-version".into(), ANTHROPIC_VERSION.into()));
        }
        Direction::AnthropicToOpenAi => {
            edits.push(HeaderEdit::Remove("anthropic-version".into()));
            edits.push(HeaderEdit::Remove("anthropic-beta".into()));
        }
    }
    edits
}

// === Request ===

/// What the request headers decided for the rest of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPlan {
    /// The client's API, from the path it called: the shape of this filter's errors.
    pub api: ClientApi,
    pub direction: Option<Direction>,
    /// The client called a model API (`/chat/completions`, `/messages`).
    pub model_route: bool,
    /// The backend's API on a model route: Anthropic Messages (`true`) or OpenAI Chat
    /// Completions; `None` elsewhere.
    pub backend_anthropic: Option<bool>,
    /// The output tokens a token quota reserved (rate-limit's filter state), if one did.
    pub reserved: Option<u64>,
    /// The request body is read whole (and `content-length` removed at the headers).
    pub rewrite_request: bool,
}

impl RequestPlan {
    /// Whether Envoy's own errors need the client's API in filter state: they are shaped by
    /// the path they see, which a translation changed to the backend's.
    pub fn announce_client_api(&self, path_and_query: &str) -> bool {
        self.direction
            .is_some_and(|d| ClientApi::of_path(&translated_path(path_and_query, d)) != self.api)
    }
}

/// The plan for a request a rule matched.
pub fn plan_request(rule: &Rule, path: &str, backend_format: Option<ApiFormat>, reserved: Option<u64>) -> RequestPlan {
    let direction = direction(rule, path, backend_format);
    let backend_anthropic = match direction {
        Some(Direction::OpenAiToAnthropic) => Some(true),
        Some(Direction::AnthropicToOpenAi) => Some(false),
        None => client_format(path).map(|f| f == ApiFormat::Anthropic),
    };
    // What a token quota reserved for the answer, if one did: the backend is asked for no
    // more when the client named no maximum (rate-limit settles at most 4x the reservation,
    // so an uncapped answer would be undercharged).
    let cap = reserved.is_some() && backend_anthropic.is_some();
    RequestPlan {
        api: ClientApi::of_path(path),
        direction,
        model_route: client_format(path).is_some(),
        backend_anthropic,
        reserved,
        rewrite_request: direction.is_some() || !rule.request.body.is_empty() || rule.require_json || cap,
    }
}

/// The request headers the rule's body operations read (`from_header`), kept from the
/// headers phase for the body phases.
pub fn kept_headers(rule: &Rule, value: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    rule.request
        .body
        .iter()
        .filter_map(|op| match op {
            BodyOp::Set(_, Source::Header(name)) => value(name).map(|v| (name.clone(), v)),
            _ => None,
        })
        .collect()
}

/// What becomes of a complete request body.
#[derive(Debug, PartialEq)]
pub enum RequestBody {
    /// Sent as it came.
    Pass,
    /// Rewritten; `facts` are what the translation learnt (streaming, usage asked for).
    Replace(Vec<u8>, RequestFacts),
    /// Refused with this error, in the client's format.
    Refuse(ErrorResponse),
}

/// The complete request body, rewritten by the rule's operations, translated and capped as the
/// plan says.
pub fn rewrite_request(
    plan: &RequestPlan,
    rule: &Rule,
    default_max_tokens: u64,
    headers: &[(String, String)],
    body: &[u8],
) -> RequestBody {
    let strict = rule.require_json || plan.direction.is_some();
    let body_ops = !rule.request.body.is_empty();
    let mut value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) if strict => {
            // Valid JSON that no reader can hold (`1e400`) is named, not called malformed.
            if let Some(response) = json::parse(body).err().and_then(|i| i.content_refusal()) {
                return RequestBody::Refuse(ErrorResponse::new(
                    400,
                    response.error_type,
                    response.code,
                    response.message,
                ));
            }
            return RequestBody::Refuse(ErrorResponse::new(
                400,
                ErrorType::InvalidRequest,
                "invalid_json",
                "the request body is not valid JSON",
            ));
        }
        Err(_) => return RequestBody::Pass,
    };
    ops::apply(&rule.request.body, &mut value, |name| header(headers, name));
    let translated = match plan.direction {
        Some(Direction::OpenAiToAnthropic) => {
            let default_max_tokens = plan.reserved.unwrap_or(default_max_tokens);
            translate::request::openai_to_anthropic(&value, default_max_tokens).map(Some)
        }
        Some(Direction::AnthropicToOpenAi) => translate::request::anthropic_to_openai(&value).map(Some),
        None => Ok(None),
    };
    let (mut value, facts) = match translated {
        Ok(Some((v, facts))) => (v, facts),
        Ok(None) => (value, RequestFacts::default()),
        Err(e) => {
            return RequestBody::Refuse(ErrorResponse::new(
                400,
                ErrorType::InvalidRequest,
                e.code(),
                e.to_string(),
            ))
        }
    };
    let capped = match (plan.reserved, plan.backend_anthropic) {
        (Some(reserved), Some(anthropic)) => translate::request::cap_output(&mut value, anthropic, reserved),
        _ => false,
    };
    if plan.direction.is_none() && !body_ops && !capped {
        // Read only to cap it, and it names its maximum: sent as it came.
        return RequestBody::Pass;
    }
    match serde_json::to_vec(&value) {
        Ok(bytes) => RequestBody::Replace(bytes, facts),
        Err(_) => RequestBody::Refuse(ErrorResponse::new(
            500,
            ErrorType::Api,
            "internal_error",
            "could not encode the request body",
        )),
    }
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

// === Response ===

/// Whether an answer came from the upstream, or is one the cache replays in its place: only
/// those are translated. `details` is Envoy's `response.code_details` (`via_upstream` for an
/// upstream answer; a local reply has its own), `verdict` the
/// [`portico_core::contract::header::CACHE`] response header.
pub fn answered_by_upstream(details: Option<&[u8]>, verdict: Option<&[u8]>) -> bool {
    details == Some(b"via_upstream".as_slice()) || verdict == Some(cache::HIT.as_bytes())
}

/// How the response body is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Untouched,
    /// Read whole, then translated or rewritten (its headers held while it is read).
    Whole,
    /// An SSE stream translated chunk by chunk.
    Stream(Direction),
}

/// The mode of an upstream answer with `status`; `sse` when it is an event stream.
pub fn response_mode(plan: &RequestPlan, rewrite_body: bool, status: u32, sse: bool) -> Mode {
    match (plan.direction, sse) {
        (Some(d), true) => Mode::Stream(d),
        (Some(_), false) => Mode::Whole,
        (None, false) if rewrite_body => Mode::Whole,
        // A model backend's error in the client's own API: read whole to give it a code.
        (None, false) if plan.model_route && status >= 400 => Mode::Whole,
        (None, _) => Mode::Untouched,
    }
}

/// One translated SSE stream.
#[derive(Debug)]
pub enum StreamTranslator {
    /// An Anthropic stream to an OpenAI client.
    ToOpenAi(Box<AnthropicToOpenAi>),
    /// An OpenAI stream to an Anthropic client.
    ToAnthropic(Box<OpenAiToAnthropic>),
}

/// What one chunk of a translated stream gives.
#[derive(Debug, Default)]
pub struct StreamChunk {
    /// The bytes the client gets in place of the chunk.
    pub out: Vec<u8>,
    /// At the end: what the backend reported, for rate-limit (the client may not get it).
    pub usage: Option<BackendUsage>,
    /// At the end: why the stream could not be translated, if it could not.
    pub failure: Option<BadUpstream>,
}

impl StreamTranslator {
    /// The translator for a request translated in `direction`; `now` (Unix seconds) stamps
    /// the chunks of an OpenAI stream.
    pub fn new(direction: Direction, facts: &RequestFacts, now: u64) -> Self {
        match direction {
            Direction::OpenAiToAnthropic => {
                StreamTranslator::ToOpenAi(Box::new(AnthropicToOpenAi::new(now, facts.include_usage)))
            }
            Direction::AnthropicToOpenAi => StreamTranslator::ToAnthropic(Box::default()),
        }
    }

    /// Translates one chunk; at the end of the stream, finishes it.
    pub fn push(&mut self, chunk: &[u8], end_of_stream: bool) -> StreamChunk {
        let mut out = match self {
            StreamTranslator::ToOpenAi(t) => t.push(chunk),
            StreamTranslator::ToAnthropic(t) => t.push(chunk),
        };
        if !end_of_stream {
            return StreamChunk {
                out,
                ..StreamChunk::default()
            };
        }
        let (usage, failure) = match self {
            StreamTranslator::ToOpenAi(t) => {
                out.extend(t.finish());
                (t.usage(), t.failure().cloned())
            }
            StreamTranslator::ToAnthropic(t) => {
                out.extend(t.finish());
                (t.usage(), t.failure().cloned())
            }
        };
        StreamChunk {
            out,
            usage: Some(usage),
            failure,
        }
    }
}

/// The request as the response side needs it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub plan: &'a RequestPlan,
    /// The rule's response body operations.
    pub ops: &'a [BodyOp],
    /// The request headers they read.
    pub headers: &'a [(String, String)],
    /// Unix seconds, for the answers translated to OpenAI.
    pub now: u64,
}

/// What to do with an answer read whole.
#[derive(Debug, PartialEq)]
pub enum WholeStep {
    /// Leave the body as the backend sent it.
    Leave,
    Replace(Vec<u8>),
    /// Answer the client with this error instead (its headers have not left).
    Reply(ErrorResponse),
}

/// The outcome of an answer read whole.
#[derive(Debug, PartialEq)]
pub struct WholeOutcome {
    pub step: WholeStep,
    /// What the backend reported, for rate-limit: on every translated success, even one that
    /// cannot be translated (the backend did the work).
    pub usage: Option<BackendUsage>,
    /// The answer could not reach the client as it was (`bad_upstream_response`).
    pub bad: Option<BadUpstream>,
    /// A line to log at warning level (an error body no one could read).
    pub warning: Option<String>,
}

/// Decides for a complete answer with `status`. `held`: its headers have not left, so the
/// status can still change; otherwise a bad answer's error travels in the body of the status
/// the client already has.
pub fn answer_whole(exchange: &Exchange<'_>, body: &[u8], status: u32, held: bool) -> WholeOutcome {
    let plan = exchange.plan;
    let parsed = serde_json::from_slice::<Value>(body);
    // Every error on a model route carries a code: one whose body is not JSON (a proxy's HTML
    // page, an empty body) is answered in the client's format, while it still can be.
    let model_call = plan.direction.is_some() || plan.model_route;
    if held && status >= 400 && model_call && parsed.is_err() {
        let response = translate::response::unreadable_error(status);
        return WholeOutcome {
            warning: Some(format!("{}: {}", response.code, response.message)),
            step: WholeStep::Reply(response),
            usage: None,
            bad: None,
        };
    }
    let mut usage = None;
    let value = match (plan.direction, status < 400, parsed) {
        (Some(direction), true, parsed) => match parsed {
            Err(_) => {
                usage = Some(BackendUsage::Unknown);
                Err(BadUpstream::new("$", "is not JSON"))
            }
            Ok(v) => {
                usage = Some(translate::usage::of_answer(
                    &v,
                    direction == Direction::OpenAiToAnthropic,
                ));
                match direction {
                    Direction::OpenAiToAnthropic => translate::response::anthropic_to_openai(&v, exchange.now),
                    Direction::AnthropicToOpenAi => translate::response::openai_to_anthropic(&v),
                }
            }
        },
        (_, _, Err(_)) => {
            return WholeOutcome {
                step: WholeStep::Leave,
                usage,
                bad: None,
                warning: None,
            }
        }
        (Some(Direction::OpenAiToAnthropic), false, Ok(v)) => Ok(translate::response::error_to_openai(&v, status)),
        (Some(Direction::AnthropicToOpenAi), false, Ok(v)) => Ok(translate::response::error_to_anthropic(&v, status)),
        (None, false, Ok(v)) if plan.model_route => Ok(translate::response::error_with_code(&v, status).unwrap_or(v)),
        (None, _, Ok(v)) => Ok(v),
    };
    let (step, bad) = match value {
        Ok(mut value) => {
            ops::apply(exchange.ops, &mut value, |name| header(exchange.headers, name));
            match serde_json::to_vec(&value) {
                Ok(bytes) => (WholeStep::Replace(bytes), None),
                Err(_) => (WholeStep::Leave, None),
            }
        }
        Err(bad) if held => (WholeStep::Reply(bad.response()), Some(bad)),
        // The status has left (degraded mode): the error travels in the body.
        Err(bad) => (WholeStep::Replace(bad.response().body_for(plan.api)), Some(bad)),
    };
    WholeOutcome {
        step,
        usage,
        bad,
        warning: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn rule(translate: Translate) -> Rule {
        Rule {
            translate,
            require_json: false,
            request: Default::default(),
            response: Default::default(),
        }
    }

    fn config(value: Value) -> Config {
        Config::from_value(&value).unwrap_or_else(|e| panic!("{e}"))
    }

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
        let rule = rule(Translate::Auto);
        for path in [
            "/v1/chat/completions;x=1",
            "/v1/chat/%63ompletions",
            "/v1/chat/completions%3Bx",
        ] {
            assert_eq!(
                direction(&rule, path, Some(ApiFormat::Anthropic)),
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
        let rule = rule(Translate::Auto);
        assert_eq!(
            direction(&rule, "/v1/chat/completions", Some(ApiFormat::Anthropic)),
            Some(Direction::OpenAiToAnthropic)
        );
        assert_eq!(
            direction(&rule, "/v1/messages", Some(ApiFormat::OpenAi)),
            Some(Direction::AnthropicToOpenAi)
        );
        assert_eq!(direction(&rule, "/v1/messages", Some(ApiFormat::Anthropic)), None);
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
    fn header_operations_remove_rename_set_then_add() {
        let ops = HeaderOps {
            add: vec![("x-add".into(), "a".into())],
            set: vec![("x-set".into(), "s".into())],
            remove: vec!["x-gone".into()],
            rename: vec![("x-old".into(), "x-new".into()), ("x-missing".into(), "x-never".into())],
        };
        let value = |name: &str| (name == "x-old").then(|| "v".to_owned());
        let expected = vec![
            HeaderEdit::Remove("x-gone".into()),
            HeaderEdit::Remove("x-old".into()),
            HeaderEdit::Set("x-new".into(), "v".into()),
            HeaderEdit::Set("x-set".into(), "s".into()),
            HeaderEdit::Add("x-add".into(), "a".into()),
        ];
        assert_eq!(header_edits(&ops, false, value), expected);
        assert_eq!(header_edits(&ops, true, value), expected);
    }

    #[test]
    fn response_renames_see_the_edits_before_them() {
        let ops = HeaderOps {
            remove: vec!["x-a".into()],
            rename: vec![
                ("x-a".into(), "x-b".into()),
                ("x-c".into(), "x-d".into()),
                ("x-d".into(), "x-e".into()),
            ],
            ..HeaderOps::default()
        };
        let value = |name: &str| matches!(name, "x-a" | "x-c").then(|| name.to_owned());
        // Live (response): x-a was removed first; x-d holds x-c's value by the second rename.
        assert_eq!(
            header_edits(&ops, true, value),
            vec![
                HeaderEdit::Remove("x-a".into()),
                HeaderEdit::Remove("x-c".into()),
                HeaderEdit::Set("x-d".into(), "x-c".into()),
                HeaderEdit::Remove("x-d".into()),
                HeaderEdit::Set("x-e".into(), "x-c".into()),
            ]
        );
        // As it arrived (request): every rename reads the original map.
        assert_eq!(
            header_edits(&ops, false, value),
            vec![
                HeaderEdit::Remove("x-a".into()),
                HeaderEdit::Remove("x-a".into()),
                HeaderEdit::Set("x-b".into(), "x-a".into()),
                HeaderEdit::Remove("x-c".into()),
                HeaderEdit::Set("x-d".into(), "x-c".into()),
            ]
        );
    }

    #[test]
    fn a_translation_sets_the_backends_path_and_api_headers() {
        assert_eq!(
            translation_edits(Direction::OpenAiToAnthropic, "/v1/chat/completions?q=1"),
            vec![
                HeaderEdit::Set(":path".into(), "/v1/messages?q=1".into()),
                HeaderEdit::Set("content-type".into(), "application/json".into()),
                HeaderEdit::Set("anthropic-version".into(), "2023-06-01".into()),
            ]
        );
        assert_eq!(
            translation_edits(Direction::AnthropicToOpenAi, "/v1/messages"),
            vec![
                HeaderEdit::Set(":path".into(), "/v1/chat/completions".into()),
                HeaderEdit::Set("content-type".into(), "application/json".into()),
                HeaderEdit::Remove("anthropic-version".into()),
                HeaderEdit::Remove("anthropic-beta".into()),
            ]
        );
    }

    #[test]
    fn the_plan_reads_the_body_only_when_something_changes_it() {
        let auto = rule(Translate::Auto);
        let plan = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::Anthropic), None);
        assert_eq!(plan.direction, Some(Direction::OpenAiToAnthropic));
        assert_eq!(plan.api, ClientApi::OpenAi);
        assert!(plan.rewrite_request && plan.model_route);
        assert_eq!(plan.backend_anthropic, Some(true));
        assert!(plan.announce_client_api("/v1/chat/completions"));
        // Same format: nothing to translate, nothing to read.
        let plan = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::OpenAi), None);
        assert!(!plan.rewrite_request);
        assert!(!plan.announce_client_api("/v1/chat/completions"));
        // A quota's reservation caps a model call: read to cap it.
        let plan = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::OpenAi), Some(64));
        assert!(plan.rewrite_request);
        assert_eq!(plan.backend_anthropic, Some(false));
        // Not a model route: no cap, no model error handling.
        let plan = plan_request(&auto, "/v1/embeddings", None, Some(64));
        assert!(!plan.rewrite_request && !plan.model_route);
        let mut strict = rule(Translate::None);
        strict.require_json = true;
        assert!(plan_request(&strict, "/x", None, None).rewrite_request);
    }

    #[test]
    fn body_operations_keep_the_request_headers_they_read() {
        let config = config(json!({"routes": [{"request": {"body": [
            {"op": "set", "path": "/user", "from_header": "x-portico-consumer"},
            {"op": "set", "path": "/n", "value": 1}
        ]}}]}));
        let rule = config.routes.get(0).unwrap_or_else(|| panic!("a rule"));
        let kept = kept_headers(rule, |n| (n == "x-portico-consumer").then(|| "alice".to_owned()));
        assert_eq!(kept, vec![("x-portico-consumer".to_owned(), "alice".to_owned())]);
        let plan = plan_request(rule, "/x", None, None);
        let RequestBody::Replace(bytes, _) = rewrite_request(&plan, rule, 1024, &kept, br#"{"a":true}"#) else {
            panic!("rewritten")
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).ok(),
            Some(json!({"a": true, "user": "alice", "n": 1}))
        );
        // Not JSON and not strict: sent as it came.
        assert_eq!(rewrite_request(&plan, rule, 1024, &kept, b"plain"), RequestBody::Pass);
    }

    #[test]
    fn requests_are_translated_capped_or_refused() {
        let auto = rule(Translate::Auto);
        let plan = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::Anthropic), None);
        let body = br#"{"model":"claude","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        let RequestBody::Replace(bytes, facts) = rewrite_request(&plan, &auto, 77, &[], body) else {
            panic!("translated")
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(value["max_tokens"], 77);
        assert_eq!(value["messages"][0]["role"], "user");
        assert!(facts.stream && facts.include_usage);
        // A quota's reservation stands in for the default maximum.
        let reserved = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::Anthropic), Some(9));
        let RequestBody::Replace(bytes, _) = rewrite_request(&reserved, &auto, 77, &[], body) else {
            panic!("translated")
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap_or_default()["max_tokens"],
            9
        );
        // Malformed, out of range, untranslatable: refused with a code.
        for (body, code) in [
            (&b"{not json"[..], "invalid_json"),
            (
                br#"{"model":"m","max_tokens":1e400,"messages":[]}"#,
                "number_out_of_range",
            ),
            (
                br#"{"model":"m","n":3,"messages":[{"role":"user","content":"hi"}]}"#,
                "untranslatable",
            ),
        ] {
            match rewrite_request(&plan, &auto, 77, &[], body) {
                RequestBody::Refuse(e) => {
                    assert_eq!((e.status, e.code), (400, code), "{}", String::from_utf8_lossy(body))
                }
                other => panic!("{other:?}"),
            }
        }
        // Read only to cap it, and it names its maximum: sent as it came.
        let same = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::OpenAi), Some(9));
        assert_eq!(
            rewrite_request(&same, &auto, 77, &[], br#"{"model":"m","max_tokens":5,"messages":[]}"#),
            RequestBody::Pass
        );
    }

    #[test]
    fn answers_are_whole_streamed_or_untouched() {
        let auto = rule(Translate::Auto);
        let translated = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::Anthropic), None);
        let native = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::OpenAi), None);
        let other = plan_request(&auto, "/v1/embeddings", None, None);
        assert_eq!(
            response_mode(&translated, false, 200, true),
            Mode::Stream(Direction::OpenAiToAnthropic)
        );
        assert_eq!(response_mode(&translated, false, 200, false), Mode::Whole);
        assert_eq!(response_mode(&native, false, 200, false), Mode::Untouched);
        assert_eq!(response_mode(&native, false, 500, false), Mode::Whole);
        assert_eq!(response_mode(&native, false, 500, true), Mode::Untouched);
        assert_eq!(response_mode(&other, false, 500, false), Mode::Untouched);
        assert_eq!(response_mode(&other, true, 200, false), Mode::Whole);
    }

    #[test]
    fn a_stream_is_translated_and_reports_usage_at_its_end() {
        let facts = RequestFacts {
            include_usage: true,
            ..RequestFacts::default()
        };
        let mut t = StreamTranslator::new(Direction::OpenAiToAnthropic, &facts, 1);
        let first = t.push(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n",
            false,
        );
        assert!(String::from_utf8_lossy(&first.out).contains("chat.completion.chunk"));
        assert!(first.usage.is_none() && first.failure.is_none());
        let last = t.push(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            true,
        );
        assert!(String::from_utf8_lossy(&last.out).contains("[DONE]"));
        assert!(
            matches!(last.usage, Some(BackendUsage::Reported { .. })),
            "{:?}",
            last.usage
        );
        assert!(last.failure.is_none());
        // A stream cut short ends with an error event in the client's format.
        let mut t = StreamTranslator::new(Direction::AnthropicToOpenAi, &facts, 1);
        let _ = t.push(
            b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
            false,
        );
        let end = t.push(b"", true);
        assert!(
            String::from_utf8_lossy(&end.out).contains("stream_truncated"),
            "{end:?}"
        );
        assert_eq!(end.usage, Some(BackendUsage::Unknown));
        // An event that is not JSON is a bad answer, reported at the end.
        let mut t = StreamTranslator::new(Direction::AnthropicToOpenAi, &facts, 1);
        let _ = t.push(b"data: {not json\n\n", false);
        let end = t.push(b"", true);
        assert!(end.failure.is_some(), "{end:?}");
    }

    fn exchange<'a>(plan: &'a RequestPlan) -> Exchange<'a> {
        Exchange {
            plan,
            ops: &[],
            headers: &[],
            now: 1,
        }
    }

    #[test]
    fn a_bad_answer_is_a_502_while_held_and_an_error_body_once_sent() {
        let auto = rule(Translate::Auto);
        let plan = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::Anthropic), None);
        let ex = exchange(&plan);
        let good = br#"{"id":"m","type":"message","role":"assistant","model":"c","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":2}}"#;
        let out = answer_whole(&ex, good, 200, true);
        let WholeStep::Replace(bytes) = &out.step else {
            panic!("{out:?}")
        };
        let value: Value = serde_json::from_slice(bytes).unwrap_or_default();
        assert_eq!(value["choices"][0]["message"]["content"], "hi");
        assert!(matches!(out.usage, Some(BackendUsage::Reported { .. })));
        assert!(out.bad.is_none());

        let bad = br#"{"content":"not blocks"}"#;
        let out = answer_whole(&ex, bad, 200, true);
        assert!(matches!(&out.step, WholeStep::Reply(e) if e.status == 502 && e.code == BadUpstream::CODE));
        assert!(out.bad.is_some() && out.usage.is_some());
        let out = answer_whole(&ex, bad, 200, false);
        let WholeStep::Replace(body) = &out.step else {
            panic!("{out:?}")
        };
        assert!(String::from_utf8_lossy(body).contains(BadUpstream::CODE));
        assert!(out.bad.is_some());
        // Not JSON at all: usage unknown, still a bad answer.
        let out = answer_whole(&ex, b"<html>", 200, true);
        assert_eq!(out.usage, Some(BackendUsage::Unknown));
        assert!(matches!(out.step, WholeStep::Reply(_)));
    }

    #[test]
    fn backend_errors_get_the_clients_shape_and_a_code() {
        let auto = rule(Translate::Auto);
        let plan = plan_request(&auto, "/v1/chat/completions", Some(ApiFormat::Anthropic), None);
        let ex = exchange(&plan);
        let out = answer_whole(
            &ex,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
            529,
            true,
        );
        let WholeStep::Replace(bytes) = &out.step else {
            panic!("{out:?}")
        };
        let value: Value = serde_json::from_slice(bytes).unwrap_or_default();
        assert!(value["error"]["code"].is_string(), "{value}");
        assert!(out.usage.is_none() && out.bad.is_none());
        // An error no one can read: answered while held, left alone once the status left.
        let out = answer_whole(&ex, b"<html>bad gateway</html>", 502, true);
        assert!(matches!(&out.step, WholeStep::Reply(e) if e.status == 502));
        assert!(out.warning.is_some());
        assert_eq!(answer_whole(&ex, b"<html>", 502, false).step, WholeStep::Leave);
        // Off model routes, an unreadable answer is left alone.
        let other = plan_request(&rule(Translate::None), "/x", None, None);
        assert_eq!(
            answer_whole(&exchange(&other), b"<html>", 500, true).step,
            WholeStep::Leave
        );
    }
}
