//! Body-transform on the host layer: the plugin entry `portico-body-transform` of
//! `portico.wasm` (and `body-transform.wasm`).
//!
//! The shell reads through the host's views, asks [`crate::flow`] what to do and records it as
//! effects. Request headers: the rule's header operations, the translation's path and API
//! headers. Request body: buffered whole, rewritten or refused. Response headers: the rule's
//! header operations, and for an upstream answer the mode; an answer read whole holds its
//! headers ([`HeadersFlow::Hold`], honoured when the plugin entry allows it) so one that cannot
//! be translated becomes a 502 in the client's format. Response body: a stream translated chunk
//! by chunk, or the whole answer replaced.

use std::rc::Rc;

use portico_core::clock::unix_seconds;
use portico_core::config::Errors;
use portico_core::contract::{header, root_id, state, ApiFormat, BackendUsage};
use portico_core::refusal::{RefusalLog, Refusals};
use portico_core::request::RequestSource;
use portico_core::response::{ClientApi, ErrorResponse};
use portico_core::sse::is_event_stream;
use portico_host::effects::{Direction as Side, Name};
use portico_host::metrics::Family;
use portico_host::{
    Body, BodyFlow, Effects, Env, Filter, HeadersFlow, HttpFilter, LocalReply, RequestHeaders, ResponseHeaders,
    RootHost,
};
use serde_json::Value;

use crate::config::{Config, Rule};
use crate::flow::{
    self, kind_label, Exchange, HeaderEdit, Mode, RequestBody, RequestPlan, StreamTranslator, WholeOutcome, WholeStep,
};
use crate::translate::request::RequestFacts;
use crate::translate::BadUpstream;

const NAME: &str = root_id::BODY_TRANSFORM;

// === impl BodyTransform ===

/// Body-transform in one VM: its configuration, metric and log budget, shared by its requests.
pub struct BodyTransform {
    shared: Rc<Shared>,
}

struct Shared {
    config: Rc<Config>,
    /// `portico_transform_requests_total{kind, outcome}`: kind is the translation
    /// (`openai_to_anthropic`, `anthropic_to_openai`) or `rewrite`; outcome is `ok` or the
    /// error code the client got.
    requests: Family,
    /// The per-worker budget of the warning lines (answers that could not be translated).
    log: Refusals,
}

impl Filter for BodyTransform {
    const ROOT_ID: &'static str = NAME;
    type Config = Config;
    type Http = BodyTransformHttp;

    fn configure(config: &Value) -> Result<Config, Errors> {
        Config::from_value(config)
    }

    fn new(config: Rc<Config>, _root: &mut RootHost<'_>) -> Result<Self, String> {
        Ok(Self {
            shared: Rc::new(Shared {
                log: Refusals::new(NAME, config.refusal_log),
                requests: Family::counter("portico_transform_requests_total", 100),
                config,
            }),
        })
    }

    fn http(&self) -> BodyTransformHttp {
        BodyTransformHttp {
            shared: Rc::clone(&self.shared),
            request: None,
            response: Response::Untouched,
        }
    }

    fn refusal_log(&self) -> RefusalLog {
        self.shared.config.refusal_log
    }
}

// === impl BodyTransformHttp ===

/// A request a rule matched.
struct Matched {
    rule: usize,
    plan: RequestPlan,
    /// Request headers kept for body operations (`from_header`).
    headers: Vec<(String, String)>,
    facts: RequestFacts,
}

/// What happens to the response body.
enum Response {
    Untouched,
    /// Read whole; `status` is the upstream's.
    Whole {
        status: u32,
    },
    Stream(StreamTranslator),
}

/// One request through body-transform.
pub struct BodyTransformHttp {
    shared: Rc<Shared>,
    request: Option<Matched>,
    response: Response,
}

impl BodyTransformHttp {
    fn rule(&self) -> Option<&Rule> {
        self.shared.config.routes.get(self.request.as_ref()?.rule)
    }

    fn count(&self, env: &Env<'_>, outcome: &str) {
        let kind = kind_label(self.request.as_ref().and_then(|m| m.plan.direction));
        self.shared
            .requests
            .add(env, &[("kind", kind), ("outcome", outcome)], 1);
    }

    /// Records an upstream answer that cannot reach the client as it is: the filter state,
    /// the `bad_upstream_response` outcome and a warning.
    fn record_bad_upstream(&self, env: &Env<'_>, fx: &mut Effects, bad: &BadUpstream) {
        fx.set_state(state::BAD_UPSTREAM, BadUpstream::CODE);
        self.count(env, BadUpstream::CODE);
        self.shared
            .log
            .warn(env.now(), format_args!("{}: {bad}", BadUpstream::CODE));
    }

    /// Records what [`flow::answer_whole`] decided; `at_headers`: no body callback follows,
    /// so there is no body to replace.
    fn apply_whole(&self, env: &Env<'_>, fx: &mut Effects, outcome: WholeOutcome, at_headers: bool) {
        let api = self.request.as_ref().map_or(ClientApi::OpenAi, |m| m.plan.api);
        if let Some(usage) = outcome.usage {
            publish_usage(fx, usage);
        }
        if let Some(bad) = &outcome.bad {
            self.record_bad_upstream(env, fx, bad);
        }
        if let Some(line) = &outcome.warning {
            self.shared.log.warn(env.now(), format_args!("{line}"));
        }
        match outcome.step {
            WholeStep::Leave => {}
            WholeStep::Replace(_) if at_headers => {}
            WholeStep::Replace(bytes) => fx.replace_response_body(bytes),
            WholeStep::Reply(error) => fx.respond(answer(&error, api)),
        }
    }

    fn exchange<'a>(&'a self, matched: &'a Matched, now: u64) -> Exchange<'a> {
        Exchange {
            plan: &matched.plan,
            ops: self.rule().map_or(&[], |r| r.response.body.as_slice()),
            headers: &matched.headers,
            now,
        }
    }
}

impl HttpFilter for BodyTransformHttp {
    fn request_headers(&mut self, headers: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        let env = headers.env();
        // Route matching reads `:method` and `:path` (and `:authority` for rules with hosts);
        // the matched rule's header operations read the names they mention.
        let view: &dyn RequestSource = headers;
        let Some(matched) = self.shared.config.routes.find(view) else {
            return HeadersFlow::Continue;
        };
        let rule = matched.rule;
        let value = |name: &str| view.header_str(name).map(str::to_owned);
        let kept = flow::kept_headers(rule, value);
        edit(
            fx,
            Side::Request,
            flow::header_edits(&rule.request.headers, false, value),
        );
        let reserved =
            property(&env, &[state::MAX_OUTPUT_TOKENS]).and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
        let backend_format = view.header(header::BACKEND_FORMAT).and_then(ApiFormat::parse);
        let plan = flow::plan_request(rule, view.path(), backend_format, reserved);
        if let Some(direction) = plan.direction {
            let mut edits = flow::translation_edits(direction, view.path_and_query());
            // `:path` first, then the client's API for Envoy's own errors, as before the port.
            let rest = edits.split_off(1);
            edit(fx, Side::Request, edits);
            if plan.announce_client_api(view.path_and_query()) {
                fx.set_state(state::CLIENT_API, plan.api.as_str());
            }
            edit(fx, Side::Request, rest);
        }
        if plan.rewrite_request {
            fx.remove_request_header("content-length");
        }
        self.request = Some(Matched {
            rule: matched.index,
            plan,
            headers: kept,
            facts: RequestFacts::default(),
        });
        HeadersFlow::Continue
    }

    fn request_body(&mut self, body: &Body<'_>, _held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        let Some(matched) = &self.request else {
            return BodyFlow::Continue;
        };
        if !matched.plan.rewrite_request {
            return BodyFlow::Continue;
        }
        if !body.end_of_stream() {
            return BodyFlow::Buffer;
        }
        let Some(rule) = self.rule() else {
            return BodyFlow::Continue;
        };
        let env = body.env();
        let outcome = flow::rewrite_request(
            &matched.plan,
            rule,
            self.shared.config.default_max_tokens,
            &matched.headers,
            body.bytes(),
        );
        match outcome {
            RequestBody::Pass => {}
            RequestBody::Replace(bytes, facts) => {
                fx.replace_request_body(bytes);
                self.count(&env, "ok");
                if let Some(m) = &mut self.request {
                    m.facts = facts;
                }
            }
            RequestBody::Refuse(error) => {
                self.count(&env, error.code);
                let api = matched.plan.api;
                let message = error.message.clone();
                fx.refuse_with(&error, api, message);
            }
        }
        BodyFlow::Continue
    }

    fn response_headers(&mut self, response: &ResponseHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        let Some(rule) = self.rule() else {
            return HeadersFlow::Continue;
        };
        let env = response.env();
        let rewrite_body = !rule.response.body.is_empty();
        let value = |name: &str| response.get_str(name).map(str::to_owned);
        edit(
            fx,
            Side::Response,
            flow::header_edits(&rule.response.headers, true, value),
        );
        let details = property(&env, &["response", "code_details"]);
        if !flow::answered_by_upstream(details.as_deref(), response.get(header::CACHE)) {
            // A local reply (a refusal, Envoy's own error) is already in the client's shape.
            return HeadersFlow::Continue;
        }
        let Some(matched) = &self.request else {
            return HeadersFlow::Continue;
        };
        let status = response.status().map_or(200, u32::from);
        let sse = response.get("content-type").is_some_and(is_event_stream);
        // The clock only where an answer is translated to OpenAI (its `created`).
        let now = || unix_seconds(env.now());
        self.response = match flow::response_mode(&matched.plan, rewrite_body, status, sse) {
            Mode::Untouched => return HeadersFlow::Continue,
            Mode::Whole => Response::Whole { status },
            Mode::Stream(direction) => Response::Stream(StreamTranslator::new(direction, &matched.facts, now())),
        };
        if response.end_of_stream() {
            // No body will follow, and the headers have not left yet.
            if let Response::Whole { status } = self.response {
                let outcome = flow::answer_whole(&self.exchange(matched, now()), &[], status, true);
                self.apply_whole(&env, fx, outcome, true);
            }
            return HeadersFlow::Continue;
        }
        fx.remove_response_header("content-length");
        match self.response {
            Response::Whole { .. } => HeadersFlow::Hold,
            _ => HeadersFlow::Continue,
        }
    }

    fn response_body(&mut self, body: &Body<'_>, held: Option<&ResponseHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        let env = body.env();
        match &mut self.response {
            Response::Untouched => BodyFlow::Continue,
            Response::Stream(translator) => {
                let chunk = translator.push(body.bytes(), body.end_of_stream());
                // The client may not get the backend's usage (an OpenAI client that did not ask
                // for it), or get a count the backend never gave: rate-limit, after this filter
                // on the way out, settles from what the backend said.
                if let Some(usage) = chunk.usage {
                    publish_usage(fx, usage);
                }
                if let Some(bad) = &chunk.failure {
                    self.record_bad_upstream(&env, fx, bad);
                }
                fx.replace_response_body(chunk.out);
                BodyFlow::Continue
            }
            Response::Whole { status } => {
                if !body.end_of_stream() {
                    return BodyFlow::Buffer;
                }
                let status = *status;
                let Some(matched) = &self.request else {
                    return BodyFlow::Continue;
                };
                let now = unix_seconds(env.now());
                let outcome = flow::answer_whole(&self.exchange(matched, now), body.bytes(), status, held.is_some());
                self.apply_whole(&env, fx, outcome, false);
                BodyFlow::Continue
            }
        }
    }
}

/// Records header edits on `side`.
fn edit(fx: &mut Effects, side: Side, edits: Vec<HeaderEdit>) {
    for e in edits {
        match (side, e) {
            (Side::Request, HeaderEdit::Remove(n)) => fx.remove_request_header(n),
            (Side::Request, HeaderEdit::Set(n, v)) => fx.set_request_header(n, v),
            (Side::Request, HeaderEdit::Add(n, v)) => fx.add_request_header(n, v),
            (Side::Response, HeaderEdit::Remove(n)) => fx.remove_response_header(n),
            (Side::Response, HeaderEdit::Set(n, v)) => fx.set_response_header(n, v),
            (Side::Response, HeaderEdit::Add(n, v)) => fx.add_response_header(n, v),
        }
    }
}

/// Tells rate-limit what the backend reported about a translated success.
fn publish_usage(fx: &mut Effects, usage: BackendUsage) {
    fx.set_state(state::BACKEND_USAGE, usage.encode());
}

/// A reply to an answer the client cannot get as it is (not a refusal of the client's
/// request, so no refusal line: the warning was logged): the error in the client's format,
/// with the details `portico-body-transform.<code>` Envoy's local reply config leaves alone.
fn answer(error: &ErrorResponse, api: ClientApi) -> LocalReply {
    let mut reply = LocalReply::error(error, api);
    reply.details = Name::Owned(format!("{NAME}.{}", error.code));
    reply.code = None;
    reply
}

/// A property's value; a host error reads as absent (logged).
fn property(env: &Env<'_>, path: &[&str]) -> Option<Vec<u8>> {
    env.property(path).unwrap_or_else(|e| {
        log::warn!("{NAME}: reading property {path:?} failed: host status {}", e.0);
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use portico_host::host::{Buffer, Map};
    use portico_host::mock::{Action, MockEnvoy, MockStream, Mutation};
    use portico_host::{entry, Entry};
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    static REGISTRY: &[Entry] = &[entry::<BodyTransform>()];

    const NOW: u64 = 1_700_000_000;
    const OPENAI_REQUEST: &str = r#"{"model":"claude","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"max_tokens":32}"#;
    const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}"#;

    fn start(config: serde_json::Value, hold: bool) -> MockEnvoy {
        let envoy = MockEnvoy::start(REGISTRY, NAME, &config.to_string(), hold).unwrap_or_else(|e| panic!("{e:?}"));
        envoy.host().set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        envoy
    }

    /// Translation by header-routing's format header on `/v1/...`; `hold` is the plugin
    /// entry's `allow_on_headers_stop_iteration` (Envoy's field and the plugin field).
    fn translating(hold: bool) -> MockEnvoy {
        let mut config = json!({"routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]});
        if hold {
            config["allow_on_headers_stop_iteration"] = json!(true);
        }
        start(config, hold)
    }

    fn header(envoy: &MockEnvoy, map: Map, name: &str) -> Option<String> {
        envoy
            .host()
            .headers(map)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
    }

    fn state_set(envoy: &MockEnvoy, key: &str, value: &str) -> bool {
        envoy
            .host()
            .mutations()
            .contains(&Mutation::SetProperty(vec![key.to_owned()], value.as_bytes().to_vec()))
    }

    /// An OpenAI client's chat call routed to an Anthropic backend, through the request body.
    fn openai_to_anthropic(envoy: &MockEnvoy) -> MockStream {
        let mut s = envoy.stream();
        let headers = [
            (":method", "POST"),
            (":path", "/v1/chat/completions?trace=1"),
            ("content-type", "application/json"),
            ("content-length", "120"),
            ("x-portico-backend-format", "anthropic"),
        ];
        assert_eq!(s.request_headers(&headers, false), Action::Continue);
        // The body arrives in two chunks: the first is buffered.
        let (head, _) = OPENAI_REQUEST.split_at(10);
        assert_eq!(s.request_body(head.as_bytes(), false), Action::Pause);
        assert_eq!(s.request_body(OPENAI_REQUEST.as_bytes(), true), Action::Continue);
        s
    }

    fn upstream(envoy: &MockEnvoy) {
        envoy
            .host()
            .put_property(&["response", "code_details"], b"via_upstream");
    }

    #[test]
    fn header_operations_apply_to_both_directions() {
        let envoy = start(
            json!({"routes": [{"match": {"path": "/api/{*rest}"},
                "request": {"headers": {"add": {"x-added": "1"}, "set": {"x-set": "s"}, "remove": ["x-drop"], "rename": {"x-old": "x-new"}}},
                "response": {"headers": {"set": {"x-served-by": "portico"}, "remove": ["server"], "rename": {"x-up": "x-upstream"}}}}]}),
            false,
        );
        let mut s = envoy.stream();
        let headers = [(":method", "GET"), (":path", "/api/x"), ("x-drop", "d"), ("x-old", "o")];
        assert_eq!(s.request_headers(&headers, true), Action::Continue);
        let request = envoy.host().headers(Map::RequestHeaders);
        assert!(
            !request.iter().any(|(n, _)| n == "x-drop" || n == "x-old"),
            "{request:?}"
        );
        assert_eq!(header(&envoy, Map::RequestHeaders, "x-new").as_deref(), Some("o"));
        assert_eq!(header(&envoy, Map::RequestHeaders, "x-set").as_deref(), Some("s"));
        assert_eq!(header(&envoy, Map::RequestHeaders, "x-added").as_deref(), Some("1"));
        upstream(&envoy);
        let answer = [
            (":status", "200"),
            ("server", "up"),
            ("x-up", "u"),
            ("content-length", "2"),
        ];
        assert_eq!(s.response_headers(&answer, false), Action::Continue);
        assert_eq!(
            header(&envoy, Map::ResponseHeaders, "x-served-by").as_deref(),
            Some("portico")
        );
        assert_eq!(header(&envoy, Map::ResponseHeaders, "x-upstream").as_deref(), Some("u"));
        assert_eq!(header(&envoy, Map::ResponseHeaders, "server"), None);
        // Nothing rewrites the body: its length stays and it flows untouched.
        assert_eq!(
            header(&envoy, Map::ResponseHeaders, "content-length").as_deref(),
            Some("2")
        );
        envoy.host().take_mutations();
        assert_eq!(s.response_body(b"{}", true), Action::Continue);
        assert!(envoy.host().take_mutations().is_empty());
        // Another path: no rule, nothing changed.
        let mut s = envoy.stream();
        assert_eq!(
            s.request_headers(&[(":path", "/other"), ("x-drop", "d")], true),
            Action::Continue
        );
        assert!(envoy.host().take_mutations().is_empty());
    }

    #[test]
    fn an_openai_request_is_translated_for_an_anthropic_backend() {
        let envoy = translating(true);
        let _s = openai_to_anthropic(&envoy);
        assert_eq!(
            header(&envoy, Map::RequestHeaders, ":path").as_deref(),
            Some("/v1/messages?trace=1")
        );
        assert_eq!(
            header(&envoy, Map::RequestHeaders, "anthropic-version").as_deref(),
            Some("2023-06-01")
        );
        assert_eq!(header(&envoy, Map::RequestHeaders, "content-length"), None);
        assert!(state_set(&envoy, state::CLIENT_API, "openai"));
        let body = json_of(&envoy.host().body(Buffer::RequestBody));
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["max_tokens"], 32);
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
        assert_eq!(
            envoy
                .host()
                .metric("portico_transform_requests_total;kind=openai_to_anthropic;outcome=ok"),
            Some(1)
        );
    }

    #[test]
    fn a_whole_answer_is_held_and_translated() {
        let envoy = translating(true);
        let mut s = openai_to_anthropic(&envoy);
        upstream(&envoy);
        let answer = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", "170"),
        ];
        assert_eq!(s.response_headers(&answer, false), Action::Pause, "held while read");
        assert_eq!(header(&envoy, Map::ResponseHeaders, "content-length"), None);
        assert_eq!(
            s.response_body(&ANTHROPIC_ANSWER.as_bytes()[..20], false),
            Action::Pause
        );
        assert_eq!(s.response_body(ANTHROPIC_ANSWER.as_bytes(), true), Action::Continue);
        let body = json_of(&envoy.host().body(Buffer::ResponseBody));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["created"], NOW);
        assert_eq!(body["choices"][0]["message"]["content"], "hello");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], 5);
        assert!(state_set(&envoy, state::BACKEND_USAGE, "5 2"));
        assert_eq!(envoy.host().reply(), None);
    }

    #[test]
    fn an_sse_stream_is_translated_chunk_by_chunk() {
        let envoy = translating(true);
        let mut s = envoy.stream();
        let headers = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("x-portico-backend-format", "anthropic"),
        ];
        s.request_headers(&headers, false);
        let request = r#"{"model":"c","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(s.request_body(request.as_bytes(), true), Action::Continue);
        assert_eq!(json_of(&envoy.host().body(Buffer::RequestBody))["stream"], true);
        upstream(&envoy);
        let answer = [(":status", "200"), ("content-type", "text/event-stream")];
        assert_eq!(
            s.response_headers(&answer, false),
            Action::Continue,
            "streams are never held"
        );
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":4,\"output_tokens\":0}}}\n\n";
        assert_eq!(s.response_body(start.as_bytes(), false), Action::Continue);
        let first = String::from_utf8_lossy(&envoy.host().body(Buffer::ResponseBody)).into_owned();
        assert!(
            first.starts_with("data: {") && first.contains("chat.completion.chunk"),
            "{first}"
        );
        let rest = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"yo\"}}\n\n\
                    event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n\
                    event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        assert_eq!(s.response_body(rest.as_bytes(), true), Action::Continue);
        let last = String::from_utf8_lossy(&envoy.host().body(Buffer::ResponseBody)).into_owned();
        assert!(last.contains("\"content\":\"yo\""), "{last}");
        assert!(last.ends_with("data: [DONE]\n\n"), "{last}");
        assert!(state_set(&envoy, state::BACKEND_USAGE, "4 3"));
    }

    #[test]
    fn a_bad_answer_is_a_502_in_the_clients_format_or_an_error_body_once_sent() {
        let bad = r#"{"type":"message","content":"not blocks"}"#;
        let envoy = translating(true);
        let mut s = openai_to_anthropic(&envoy);
        upstream(&envoy);
        assert_eq!(s.response_headers(&[(":status", "200")], false), Action::Pause);
        assert_eq!(s.response_body(bad.as_bytes(), true), Action::Pause);
        let reply = envoy.host().reply().unwrap_or_else(|| panic!("a reply"));
        assert_eq!(reply.status, 502);
        assert_eq!(reply.details, "portico-body-transform.bad_upstream_response");
        let body = json_of(&reply.body);
        // The OpenAI client's shape.
        assert_eq!(body["error"]["code"], "bad_upstream_response");
        assert!(body.get("type").is_none(), "{body}");
        assert!(state_set(&envoy, state::BAD_UPSTREAM, "bad_upstream_response"));
        assert_eq!(
            envoy
                .host()
                .metric("portico_transform_requests_total;kind=openai_to_anthropic;outcome=bad_upstream_response"),
            Some(1)
        );
        // Without the plugin field the status has left: the error travels in the body.
        let envoy = translating(false);
        let mut s = openai_to_anthropic(&envoy);
        upstream(&envoy);
        assert_eq!(s.response_headers(&[(":status", "200")], false), Action::Continue);
        assert_eq!(s.response_body(bad.as_bytes(), false), Action::Pause);
        assert_eq!(s.response_body(bad.as_bytes(), true), Action::Continue);
        assert_eq!(envoy.host().reply(), None);
        let body = json_of(&envoy.host().body(Buffer::ResponseBody));
        assert_eq!(body["error"]["code"], "bad_upstream_response");
        assert!(state_set(&envoy, state::BAD_UPSTREAM, "bad_upstream_response"));
        // An Anthropic client gets the Anthropic shape.
        let envoy = translating(true);
        let mut s = envoy.stream();
        s.request_headers(
            &[
                (":method", "POST"),
                (":path", "/v1/messages"),
                ("x-portico-backend-format", "openai"),
            ],
            false,
        );
        s.request_body(
            br#"{"model":"g","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
            true,
        );
        upstream(&envoy);
        assert_eq!(s.response_headers(&[(":status", "200")], false), Action::Pause);
        assert_eq!(s.response_body(b"<html>oops</html>", true), Action::Pause);
        let reply = envoy.host().reply().unwrap_or_else(|| panic!("a reply"));
        let body = json_of(&reply.body);
        assert_eq!((reply.status, &body["type"]), (502, &json!("error")));
        assert_eq!(body["error"]["type"], "api_error");
    }

    #[test]
    fn hostile_requests_and_answers_get_coded_errors_without_a_panic() {
        let envoy = translating(true);
        // A body that is not JSON: 400 in the client's format, logged as a refusal.
        let mut s = envoy.stream();
        s.request_headers(
            &[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                ("x-portico-backend-format", "anthropic"),
            ],
            false,
        );
        assert_eq!(s.request_body(b"{\"model\":\xff\xfe", true), Action::Pause);
        let reply = envoy.host().reply().unwrap_or_else(|| panic!("a reply"));
        assert_eq!((reply.status, reply.code), (400, Some("invalid_json")));
        assert_eq!(json_of(&reply.body)["error"]["code"], "invalid_json");
        // Numbers no reader can hold, deep nesting: refused with a code.
        for (body, code) in [
            (
                r#"{"model":"m","max_tokens":1e999,"messages":[]}"#.to_owned(),
                "number_out_of_range",
            ),
            (format!("{}{}", "[".repeat(5000), "]".repeat(5000)), "invalid_json"),
        ] {
            let envoy = translating(true);
            let mut s = envoy.stream();
            s.request_headers(
                &[
                    (":method", "POST"),
                    (":path", "/v1/chat/completions"),
                    ("x-portico-backend-format", "anthropic"),
                ],
                false,
            );
            assert_eq!(s.request_body(body.as_bytes(), true), Action::Pause);
            let reply = envoy.host().reply().unwrap_or_else(|| panic!("a reply"));
            assert_eq!((reply.status, reply.code), (400, Some(code)));
        }
        // A local reply (another filter's refusal) is never translated, whatever it says.
        let envoy = translating(true);
        let mut s = openai_to_anthropic(&envoy);
        envoy
            .host()
            .put_property(&["response", "code_details"], b"portico-auth.token_expired");
        envoy.host().take_mutations();
        assert_eq!(s.response_headers(&[(":status", "401")], false), Action::Continue);
        assert_eq!(s.response_body(b"garbage", true), Action::Continue);
        assert!(envoy.host().take_mutations().is_empty());
        // An upstream with a status that is no number, an unreadable error page, a garbage
        // event stream, invalid UTF-8 everywhere: coded answers, never a panic.
        let envoy = translating(true);
        let mut s = openai_to_anthropic(&envoy);
        upstream(&envoy);
        assert_eq!(s.response_headers(&[(":status", "5x")], false), Action::Pause);
        assert_eq!(s.response_body(b"\xff\x00", true), Action::Pause);
        assert_eq!(envoy.host().reply().map(|r| r.status), Some(502));
        let envoy = translating(true);
        let mut s = openai_to_anthropic(&envoy);
        upstream(&envoy);
        assert_eq!(
            s.response_headers(&[(":status", "503"), ("content-type", "text/html")], false),
            Action::Pause
        );
        assert_eq!(s.response_body(b"<html>down</html>", true), Action::Pause);
        let reply = envoy.host().reply().unwrap_or_else(|| panic!("a reply"));
        assert_eq!(reply.status, 503);
        assert!(json_of(&reply.body)["error"]["code"].is_string());
        // The headers end the stream: nothing to hold, a bad empty answer still a 502.
        let envoy = translating(true);
        let mut s = openai_to_anthropic(&envoy);
        upstream(&envoy);
        assert_eq!(s.response_headers(&[(":status", "200")], true), Action::Pause);
        assert_eq!(envoy.host().reply().map(|r| r.status), Some(502));
        let envoy = translating(true);
        let mut s = openai_to_anthropic(&envoy);
        upstream(&envoy);
        s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false);
        assert_eq!(
            s.response_body(b"data: \xff{{{\n\nevent: \x00\n", false),
            Action::Continue
        );
        assert_eq!(s.response_body(b"", true), Action::Continue);
        assert!(state_set(&envoy, state::BAD_UPSTREAM, "bad_upstream_response"));
    }

    /// Host calls of a translated request whose answer is read whole, and of a stream.
    #[test]
    fn host_calls_per_request_are_bounded() {
        let envoy = translating(true);
        // A first request defines the metric series the counts below use.
        let mut warm = openai_to_anthropic(&envoy);
        upstream(&envoy);
        warm.response_headers(&[(":status", "200")], false);
        warm.response_body(ANTHROPIC_ANSWER.as_bytes(), true);

        let mut whole = openai_to_anthropic(&envoy);
        let answer = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", "170"),
        ];
        whole.response_headers(&answer, false);
        whole.response_body(ANTHROPIC_ANSWER.as_bytes(), true);
        whole.log();
        let whole = whole.counts();
        println!("body-transform host calls: translated, answer read whole {whole}");
        // :path and the backend format (read by name, not the whole map); the reserved
        // tokens; :path, client API state, content-type, anthropic-version; content-length.
        assert_eq!(whole.request_headers, 8, "{whole}");
        // The body once complete (the first chunk is only buffered), the replacement, the metric.
        assert_eq!(whole.request_body, 3, "{whole}");
        // The details property; x-portico-cache, :status and content-type; content-length
        // removed.
        assert_eq!(whole.response_headers, 5, "{whole}");
        // The body, the clock, the usage state, content-length (the host removes it again on
        // a replacement under held headers), the replacement.
        assert_eq!(whole.response_body, 5, "{whole}");
        assert_eq!(whole.log, 0, "{whole}");

        let mut stream = envoy.stream();
        stream.request_headers(
            &[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                ("x-portico-backend-format", "anthropic"),
            ],
            false,
        );
        stream.request_body(
            br#"{"model":"c","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            true,
        );
        stream.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false);
        for _ in 0..3 {
            stream.response_body(b"event: ping\ndata: {\"type\":\"ping\"}\n\n", false);
        }
        stream.response_body(b"", true);
        let stream = stream.counts();
        println!("body-transform host calls: translated stream of 4 chunks {stream}");
        // The headers as for a whole answer, with the clock instead of a hold.
        assert_eq!(stream.response_headers, 6, "{stream}");
        // Each chunk replaced, each non-empty one read; the usage state at the end.
        assert_eq!(stream.response_body, 8, "{stream}");
        assert_eq!((whole.total(), stream.total()), (21, 25));
    }

    /// A request no rule matches costs one host call (its `:path`) and changes nothing.
    #[test]
    fn an_unmatched_route_reads_only_its_path() {
        let envoy = translating(true);
        let mut s = envoy.stream();
        let get = [
            (":method", "GET"),
            (":path", "/hello"),
            ("x-portico-backend-format", "anthropic"),
        ];
        assert_eq!(s.request_headers(&get, false), Action::Continue);
        assert_eq!(s.request_body(b"{}", true), Action::Continue);
        assert_eq!(s.response_headers(&[(":status", "200")], false), Action::Continue);
        assert_eq!(s.response_body(b"{}", true), Action::Continue);
        s.log();
        let counts = s.counts();
        println!("body-transform host calls: unmatched route {counts}");
        assert_eq!(counts.request_headers, 1, "{counts}");
        assert_eq!(counts.total(), 1, "{counts}");
        assert_eq!(envoy.host().mutations(), vec![]);
    }
}
