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

use portico_core::analytics::{state, BackendUsage, CACHE_HEADER};
use portico_core::clock::unix_seconds;
use portico_core::config::Errors;
use portico_core::refusal::{RefusalLog, Refusals};
use portico_core::request::RequestView;
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

const NAME: &str = "portico-body-transform";
/// Set by header-routing: the chosen backend's API format.
const FORMAT_HEADER: &str = "x-portico-backend-format";

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
        // Route matching and header operations may read any header: one read of the map.
        let view = RequestView::new(headers.all().to_vec());
        let Some(matched) = self.shared.config.routes.find(&view) else {
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
        let plan = flow::plan_request(rule, view.path(), view.header_str(FORMAT_HEADER), reserved);
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
        if !flow::answered_by_upstream(details.as_deref(), response.get(CACHE_HEADER)) {
            // A local reply (a refusal, Envoy's own error) is already in the client's shape.
            return HeadersFlow::Continue;
        }
        let Some(matched) = &self.request else {
            return HeadersFlow::Continue;
        };
        let status = response.status().map_or(200, u32::from);
        let sse = response.get("content-type").is_some_and(is_event_stream);
        let now = unix_seconds(env.now());
        self.response = match flow::response_mode(&matched.plan, rewrite_body, status, sse) {
            Mode::Untouched => return HeadersFlow::Continue,
            Mode::Whole => Response::Whole { status },
            Mode::Stream(direction) => Response::Stream(StreamTranslator::new(direction, &matched.facts, now)),
        };
        if response.end_of_stream() {
            // No body will follow, and the headers have not left yet.
            if let Response::Whole { status } = self.response {
                let outcome = flow::answer_whole(&self.exchange(matched, now), &[], status, true);
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
