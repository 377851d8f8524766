//! Rate-limit on the host layer: the plugin entry `portico-rate-limit` of `portico.wasm` (and
//! `rate-limit.wasm`).
//!
//! The shell gathers what admission needs (headers, the client address, lifted body fields,
//! the body's size, the clock), calls [`plan::admit`] against shared data, and records the
//! answer as effects. A request that reserved tokens has its body read, whole, to refine the
//! prompt estimate ([`plan::Hold::top_up`]); a model call's response is followed for usage and
//! settled ([`follow`] says how and when, [`plan::Hold::settle`] what is charged).

use std::rc::Rc;

use log::error;
use portico_core::clock::unix_nanos;
use portico_core::config::Errors;
use portico_core::contract::{cache, header, metadata, root_id, state};
use portico_core::refusal::{RefusalLog, Refusals};
use portico_core::request::RequestSource;
use portico_core::response::ClientApi;
use portico_core::shared::{update, Change};
use portico_core::sse::is_event_stream;
use portico_host::metrics::{Counter, Family};
use portico_host::{
    Body, BodyFlow, Effects, Env, Filter, HeadersFlow, HttpFilter, RequestHeaders, ResponseHeaders, RootHost,
};
use serde_json::Value;

use crate::config::Config;
use crate::estimate;
use crate::follow::{self, Charge, Labels, Response};
use crate::plan::{self, Anomaly, Event, Hold, TopUp};
use crate::usage::{Reported, Usage};

const NAME: &str = root_id::RATE_LIMIT;
const SALT_KEY: &str = "portico/rate-limit/salt";

// === Metrics ===

/// Distinct label sets per metric before the rest count as `other`.
const MAX_SERIES: usize = 500;

#[derive(Debug)]
struct Metrics {
    /// `portico_ratelimit_requests_total{rule, kind, outcome}`: kind is `requests` for rules
    /// and `tokens` for token quotas.
    decisions: Family,
    /// `portico_tokens_total{tier, model, kind}`: kind is `prompt` or `completion`.
    tokens: Family,
    /// `portico_consumer_tokens_total{consumer, kind}`, only when configured.
    consumer_tokens: Option<Family>,
    /// `portico_ratelimit_usage_anomalies_total{rule, reason}`: responses whose usage was above
    /// the reservation, above the bound, or not a count (`plan::Anomaly`).
    anomalies: Family,
    no_usage: Counter,
}

impl Metrics {
    fn define(env: &Env<'_>, config: &Config) -> Self {
        Self {
            decisions: Family::counter("portico_ratelimit_requests_total", MAX_SERIES),
            tokens: Family::counter("portico_tokens_total", MAX_SERIES),
            consumer_tokens: config
                .per_consumer_metrics
                .then(|| Family::counter("portico_consumer_tokens_total", 5_000)),
            anomalies: Family::counter("portico_ratelimit_usage_anomalies_total", MAX_SERIES),
            no_usage: Counter::define(env, "portico_ratelimit_responses_without_usage"),
        }
    }

    fn record(&self, env: &Env<'_>, name: Option<&str>, kind: &str, event: Event) {
        let outcome = match event {
            Event::Allowed => "allowed",
            Event::Limited => "limited",
            Event::DryRunLimited => "dry_run_limited",
            Event::StoreError => "store_error",
        };
        self.decisions.add(
            env,
            &[
                ("rule", name.unwrap_or("unknown")),
                ("kind", kind),
                ("outcome", outcome),
            ],
            1,
        );
    }
}

/// What every request of one plugin entry shares.
struct Shared {
    config: Rc<Config>,
    salt: [u8; 32],
    metrics: Metrics,
    /// Warnings about backends and shared data, through the `refusal_log` budget.
    notes: Refusals,
}

// === impl RateLimit ===

/// Rate-limit in one VM.
pub struct RateLimit {
    shared: Rc<Shared>,
}

/// One salt per Envoy process, shared by every worker through shared data, from the OS's
/// randomness (WASI `random_get`, via std's hasher seeding).
fn process_salt(env: &Env<'_>) -> Option<[u8; 32]> {
    use std::hash::{BuildHasher, Hasher};
    let mut fresh = Vec::with_capacity(32);
    for i in 0u8..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        fresh.extend_from_slice(&h.finish().to_le_bytes());
    }
    let stored = update(&env.shared(), SALT_KEY, 8, |current| match current {
        Some(existing) if existing.len() == 32 => Change::Keep(existing.to_vec()),
        _ => Change::Write(fresh.clone(), fresh.clone()),
    })
    .ok()?;
    stored.try_into().ok()
}

impl Filter for RateLimit {
    const ROOT_ID: &'static str = NAME;
    type Config = Config;
    type Http = LimitHttp;

    fn configure(config: &Value) -> Result<Config, Errors> {
        Config::from_value(config)
    }

    fn new(config: Rc<Config>, root: &mut RootHost<'_>) -> Result<Self, String> {
        let env = root.env();
        let salt = process_salt(&env).ok_or("cannot read or create the shared salt in shared data")?;
        Ok(Self {
            shared: Rc::new(Shared {
                salt,
                metrics: Metrics::define(&env, &config),
                notes: Refusals::new(NAME, config.refusal_log),
                config,
            }),
        })
    }

    fn http(&self) -> LimitHttp {
        LimitHttp {
            shared: Rc::clone(&self.shared),
            api: ClientApi::OpenAi,
            headers: Vec::new(),
            hold: Hold::default(),
            pending_quota_events: Vec::new(),
            read_request_body: false,
            labels: None,
            response: Response::Off,
        }
    }

    fn refusal_log(&self) -> RefusalLog {
        self.shared.config.refusal_log
    }
}

/// Whether admission let the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    Yes,
    Refused,
}

// === impl LimitHttp ===

/// One request through rate-limit.
pub struct LimitHttp {
    shared: Rc<Shared>,
    /// The client's API, from the path it called: the shape of this filter's errors.
    api: ClientApi,
    /// The rate-limit headers for the response.
    headers: Vec<(&'static str, String)>,
    hold: Hold,
    /// Quota decisions not yet counted: the body may still change them.
    pending_quota_events: Vec<(usize, Event)>,
    /// The request reserved tokens and has a body: read it to refine the prompt estimate.
    read_request_body: bool,
    /// A model call's token labels.
    labels: Option<Labels>,
    response: Response,
}

impl HttpFilter for LimitHttp {
    fn request_headers(&mut self, headers: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        let shared = Rc::clone(&self.shared);
        let config = &*shared.config;
        // Rules match on the headers they name: each is read once, when a rule asks for it.
        let view: &dyn RequestSource = headers;
        let selected = plan::selects_any(config, view);
        // Lifted body fields exist only when a body follows (json_to_metadata reads it first).
        let body_follows = !headers.end_of_stream();
        if !selected && !body_follows {
            // Nothing to take and no model call to follow: no more host calls.
            return HeadersFlow::Continue;
        }
        let env = headers.env();
        self.api = ClientApi::of_path(view.path());
        if selected && self.admit(headers, &env, fx) == Admitted::Refused {
            return HeadersFlow::Continue;
        }
        let lifted = if body_follows {
            self.metadata(&env, metadata::MODEL)
                .and_then(|m| String::from_utf8(m).ok())
        } else {
            None
        };
        // A model call is one whose body named a model (lifted by json_to_metadata) or that
        // reserved tokens; header-routing may later name the upstream model instead.
        let model_call = lifted.is_some() || !self.hold.reservations().is_empty();
        if model_call {
            self.labels = Some(Labels::new(view, lifted, config.per_consumer_metrics));
        }
        self.response = Response::new(model_call);
        HeadersFlow::Continue
    }

    fn request_body(&mut self, body: &Body<'_>, _held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        if !self.read_request_body {
            return BodyFlow::Continue;
        }
        // Collected until the whole body is here; behind json_to_metadata it arrives whole.
        if !body.end_of_stream() {
            return BodyFlow::Buffer;
        }
        self.read_request_body = false;
        let env = body.env();
        let prompt = estimate::from_body(body.bytes());
        let now = unix_nanos(env.now());
        let shared = Rc::clone(&self.shared);
        let (top_up, events) = self.hold.top_up(&shared.config, &env.shared(), prompt, now);
        follow::revise(&mut self.pending_quota_events, &events);
        self.flush_quota_events(&env);
        match top_up {
            TopUp::Unchanged => {}
            TopUp::Reserved(headers) => self.headers = headers,
            TopUp::Refused(response) => {
                // The local reply passes through the response callbacks: nothing to add or settle.
                self.headers.clear();
                self.response.refused();
                fx.refuse_with(
                    &response,
                    self.api,
                    format!("once the body showed a prompt of about {prompt} tokens"),
                );
            }
        }
        BodyFlow::Continue
    }

    fn response_headers(&mut self, response: &ResponseHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        for (name, value) in &self.headers {
            fx.set_response_header(*name, value);
        }
        if !matches!(self.response, Response::Awaiting) {
            return HeadersFlow::Continue;
        }
        let env = response.env();
        // A cache hit replays an earlier answer: the upstream spent nothing.
        let hit = response.get(header::CACHE) == Some(cache::HIT.as_bytes());
        let (status, sse) = if hit {
            (0, false)
        } else {
            if let (Some(model), Some(labels)) = (
                property(&env, &[state::MODEL]).and_then(|m| String::from_utf8(m).ok()),
                self.labels.as_mut(),
            ) {
                labels.model = model;
            }
            (
                response.status().unwrap_or(0),
                response.get("content-type").is_some_and(is_event_stream),
            )
        };
        if let Some(charge) = self.response.headers(status, hit, sse) {
            self.charge(&env, charge);
        }
        HeadersFlow::Continue
    }

    fn response_body(&mut self, body: &Body<'_>, _held: Option<&ResponseHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        if !self.response.reads_body() {
            return BodyFlow::Continue;
        }
        if self.response.keeps_chunks() {
            self.response.push(body.bytes());
        }
        if body.end_of_stream() {
            let env = body.env();
            if let Some(charge) = self.response.end(|| backend_usage(&env)) {
                if let Some(counted) = self.charge(&env, charge) {
                    fx.set_state(state::PROMPT_TOKENS, counted.prompt.to_string());
                    fx.set_state(state::COMPLETION_TOKENS, counted.completion.to_string());
                }
            }
        }
        BodyFlow::Continue
    }

    fn log(&mut self, env: &Env<'_>) {
        // The body never completed: its quota decisions stand as taken at admission.
        self.flush_quota_events(env);
        if let Some(charge) = self.response.log(|| backend_usage(env)) {
            if let Some(counted) = self.charge(env, charge) {
                for (key, n) in [
                    (state::PROMPT_TOKENS, counted.prompt),
                    (state::COMPLETION_TOKENS, counted.completion),
                ] {
                    if let Err(e) = env.set_state(key, n.to_string().as_bytes()) {
                        error!("{NAME}: setting {key} failed: host status {}", e.0);
                    }
                }
            }
        }
    }
}

impl LimitHttp {
    /// A body field `json_to_metadata` lifted into the configured namespace.
    /// Admission for a request some rule or quota selects: gathers what it needs (the client
    /// address, stated output budget, body size), takes from shared data, and records the
    /// answer. Its metrics and warnings are this filter's.
    fn admit(&mut self, headers: &RequestHeaders<'_>, env: &Env<'_>, fx: &mut Effects) -> Admitted {
        let shared = Rc::clone(&self.shared);
        let config = &*shared.config;
        // Keys, tiers, the body's encoding and length: several names, one read of the map.
        let _ = headers.all();
        let view: &dyn RequestSource = headers;
        let context = || format!("{} {}", view.method(), view.path());
        let address = if config.needs_client_ip {
            property(env, &["source", "address"]).and_then(|a| String::from_utf8(a).ok())
        } else {
            None
        };
        let (body_bytes, max_tokens) = if config.quotas.is_empty() || headers.end_of_stream() {
            (None, None)
        } else {
            let stated = follow::stated_max_tokens(
                self.metadata(env, "max_tokens").as_deref(),
                self.metadata(env, "max_completion_tokens").as_deref(),
            );
            match stated {
                Ok(max_tokens) => {
                    let size = property(env, &["request", "size"]);
                    (
                        follow::body_size(size.as_deref(), view.header("content-length")),
                        max_tokens,
                    )
                }
                Err(response) => {
                    fx.refuse_with(&response, self.api, context());
                    return Admitted::Refused;
                }
            }
        };
        let request = plan::Request {
            view,
            client_ip: address.as_deref().map(follow::ip_of_source_address),
            body_bytes,
            max_tokens,
        };
        let now = env.now();
        let admission = plan::admit(config, &env.shared(), &shared.salt, &request, unix_nanos(now));
        for (i, event) in &admission.rule_events {
            let name = config.rules.get(*i).map(|r| r.select.name.as_str());
            shared.metrics.record(env, name, "requests", *event);
            if *event == Event::StoreError {
                shared.notes.warn(
                    now,
                    format_args!("shared data unavailable for rule {:?}", name.unwrap_or("unknown")),
                );
            }
        }
        self.pending_quota_events = admission.quota_events;
        if let Some(response) = admission.rejection {
            self.flush_quota_events(env);
            fx.refuse_with(&response, self.api, context());
            return Admitted::Refused;
        }
        self.headers = admission.headers;
        self.hold = admission.hold;
        if let Some(output) = self.hold.output_budget() {
            fx.set_state(state::MAX_OUTPUT_TOKENS, output.to_string());
        }
        self.read_request_body = follow::reads_body(&self.hold, headers.end_of_stream());
        if !self.read_request_body {
            self.flush_quota_events(env);
        }
        Admitted::Yes
    }

    fn metadata(&self, env: &Env<'_>, key: &str) -> Option<Vec<u8>> {
        property(env, &metadata::path(&self.shared.config.metadata_namespace, key))
    }

    /// Counts quota decisions that are final.
    fn flush_quota_events(&mut self, env: &Env<'_>) {
        let shared = &self.shared;
        for (i, event) in std::mem::take(&mut self.pending_quota_events) {
            let name = shared.config.quotas.get(i).map(|q| q.select.name.as_str());
            shared.metrics.record(env, name, "tokens", event);
        }
    }

    fn count_anomaly(&self, env: &Env<'_>, quota: Option<usize>, anomaly: Anomaly) {
        let rule = match quota {
            Some(i) => self
                .shared
                .config
                .quotas
                .get(i)
                .map_or("unknown", |q| q.select.name.as_str()),
            None => "none",
        };
        self.shared
            .metrics
            .anomalies
            .add(env, &[("rule", rule), ("reason", anomaly.as_str())], 1);
    }

    /// Settles the hold: releases it, keeps it (usage unknown) or charges what the answer
    /// reported, counting the tokens by tier and model as far as the bound allows. Returns the
    /// usage counted, for the filter state.
    fn charge(&mut self, env: &Env<'_>, charge: Charge) -> Option<Usage> {
        let metrics = &self.shared.metrics;
        let used = match charge {
            Charge::Release { no_usage } => {
                if no_usage {
                    metrics.no_usage.add(env, 1);
                }
                self.hold.settle(&env.shared(), Usage::default(), unix_nanos(env.now()));
                return None;
            }
            Charge::Settle(Reported::Missing) => {
                metrics.no_usage.add(env, 1);
                return None;
            }
            Charge::Settle(Reported::Unparseable) => {
                self.shared.notes.warn(
                    env.now(),
                    format_args!("a response reported usage that is not a count; the reservation stands"),
                );
                metrics.no_usage.add(env, 1);
                for (quota, anomaly) in follow::unparseable(&self.hold) {
                    self.count_anomaly(env, quota, anomaly);
                }
                return None;
            }
            Charge::Settle(Reported::Usage(used)) => used,
        };
        let now = env.now();
        let settled = self.hold.settle(&env.shared(), used, unix_nanos(now));
        for (quota, anomaly) in &settled.anomalies {
            self.count_anomaly(env, *quota, *anomaly);
        }
        // Over the reservation happens to honest answers (see the README); over the bound
        // does not.
        if settled.anomalies.iter().any(|(_, a)| *a == Anomaly::Clamped) {
            self.shared.notes.warn(
                now,
                format_args!(
                    "a response reported {} prompt and {} completion tokens, beyond belief; counted {} and {}",
                    used.prompt, used.completion, settled.counted.prompt, settled.counted.completion
                ),
            );
        }
        let counted = settled.counted;
        if let Some(labels) = &self.labels {
            for (kind, n) in [("prompt", counted.prompt), ("completion", counted.completion)] {
                metrics.tokens.add(
                    env,
                    &[("tier", &labels.tier), ("model", &labels.model), ("kind", kind)],
                    n,
                );
                if let Some(family) = &metrics.consumer_tokens {
                    family.add(env, &[("consumer", &labels.consumer), ("kind", kind)], n);
                }
            }
        }
        Some(counted)
    }
}

/// A property, `None` when it is absent or the host refuses it (logged).
fn property(env: &Env<'_>, path: &[&str]) -> Option<Vec<u8>> {
    env.property(path).unwrap_or_else(|e| {
        error!("{NAME}: reading property {path:?} failed: host status {}", e.0);
        None
    })
}

/// What body-transform saw the backend report; `None` when it did not translate the answer.
fn backend_usage(env: &Env<'_>) -> Option<Reported> {
    property(env, &[state::BACKEND_USAGE]).map(|raw| follow::backend_usage(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    use portico_host::mock::{Action, MockEnvoy, Mutation};
    use portico_host::{entry, Entry};
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    static REGISTRY: &[Entry] = &[entry::<RateLimit>()];

    const NOW: u64 = 1_700_000_000;

    fn start(config: serde_json::Value) -> MockEnvoy {
        let envoy = MockEnvoy::start(REGISTRY, NAME, &config.to_string(), false).unwrap_or_else(|e| panic!("{e:?}"));
        envoy.host().set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        envoy
    }

    /// Two requests a minute per consumer; a 2000-token budget a minute on /v1.
    fn limited() -> MockEnvoy {
        start(json!({
            "rules": [{"name": "per_consumer", "key": ["consumer"], "match": {"path": "/api/{*rest}"},
                       "limit": {"requests": 2, "period_seconds": 60}}],
            "token_quotas": [{"name": "llm", "key": ["consumer"], "match": {"path": "/v1/{*rest}"},
                              "budgets": [{"tokens": 2000, "period_seconds": 60}]}]
        }))
    }

    const API: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/api/items"),
        ("x-portico-consumer", "acme"),
    ];

    fn header<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn lift(envoy: &MockEnvoy, key: &str, value: &[u8]) {
        envoy
            .host()
            .put_property(&["metadata", "filter_metadata", "portico", key], value);
    }

    /// A model call with a 400-byte body (100 tokens estimated) stating `max_tokens`.
    fn send_model_call(envoy: &MockEnvoy, max_tokens: &str) -> (portico_host::mock::MockStream, Action) {
        lift(envoy, "model", b"gpt-x");
        lift(envoy, "max_tokens", max_tokens.as_bytes());
        envoy.host().put_property(&["request", "size"], &400i64.to_le_bytes());
        let mut s = envoy.stream();
        let action = s.request_headers(
            &[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                ("x-portico-consumer", "acme"),
                ("x-portico-tier", "gold"),
                ("content-length", "400"),
            ],
            // A model call has a body: json_to_metadata lifted its fields before this callback.
            false,
        );
        (s, action)
    }

    fn model_call(envoy: &MockEnvoy, max_tokens: &str) -> portico_host::mock::MockStream {
        let (s, action) = send_model_call(envoy, max_tokens);
        assert_eq!(action, Action::Continue, "{:?}", envoy.host().reply());
        s
    }

    #[test]
    fn an_admitted_request_continues_and_its_answer_carries_the_limit_headers() {
        let envoy = limited();
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(API, true), Action::Continue);
        assert!(envoy.host().reply().is_none());
        assert_eq!(s.response_headers(&[(":status", "200")], true), Action::Continue);
        let response = envoy.host().headers(portico_host::host::Map::ResponseHeaders);
        assert_eq!(header(&response, "ratelimit-policy"), Some("\"per_consumer\";q=2;w=60"));
        assert_eq!(header(&response, "ratelimit"), Some("\"per_consumer\";r=1;t=30"));
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some("1"));
        assert_eq!(
            envoy
                .host()
                .metric("portico_ratelimit_requests_total;rule=per_consumer;kind=requests;outcome=allowed"),
            Some(1)
        );
        s.log();
    }

    #[test]
    fn a_limited_request_gets_a_429_with_its_headers_and_json_body() {
        let envoy = limited();
        for _ in 0..2 {
            let mut s = envoy.stream();
            assert_eq!(s.request_headers(API, true), Action::Continue);
        }
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(API, true), Action::Pause);
        let Some(reply) = envoy.host().reply() else {
            panic!("no reply: {:?}", envoy.host().mutations())
        };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.details, "portico-rate-limit.rate_limited");
        assert_eq!(reply.context.as_deref(), Some("GET /api/items"));
        let headers: Vec<(String, String)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(header(&headers, "retry-after"), Some("30"));
        assert_eq!(header(&headers, "ratelimit"), Some("\"per_consumer\";r=0;t=60"));
        assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("0"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(
            envoy
                .host()
                .metric("portico_ratelimit_requests_total;rule=per_consumer;kind=requests;outcome=limited"),
            Some(1)
        );
        // The local reply passes the response callbacks: this filter adds nothing to it.
        envoy.host().take_mutations();
        let _ = s.response_headers(&[(":status", "429")], true);
        assert_eq!(envoy.host().mutations(), vec![]);
    }

    #[test]
    fn a_token_quota_reserves_at_admission_and_settles_in_log_from_the_backends_report() {
        let envoy = limited();
        // 400 bytes (100 tokens) and max_tokens 1500: 1600 of the 2000 reserved.
        let mut s = model_call(&envoy, "1500");
        assert!(envoy.host().mutations().contains(&Mutation::SetProperty(
            vec![state::MAX_OUTPUT_TOKENS.to_owned()],
            b"1500".to_vec()
        )));
        let _ = s.response_headers(&[(":status", "502"), ("content-type", "application/json")], false);
        let response = envoy.host().headers(portico_host::host::Map::ResponseHeaders);
        assert_eq!(header(&response, "x-ratelimit-remaining-tokens"), Some("400"));
        // While it runs, a second call cannot reserve as much.
        envoy.host().take_mutations();
        let (mut second, action) = send_model_call(&envoy, "1500");
        assert_eq!(action, Action::Pause);
        let reply = envoy.host().reply();
        assert_eq!(
            reply.as_ref().map(|r| (r.status, r.code)),
            Some((429, Some("token_quota_exceeded")))
        );
        second.log();
        envoy.host().take_mutations();
        // body-transform replaced the backend's answer with its own 502 and published what the
        // backend reported: the log settles on it.
        envoy.host().put_property(&[state::BACKEND_USAGE], b"120 30");
        s.log();
        assert_eq!(
            envoy.host().mutations(),
            vec![
                Mutation::SetProperty(vec![state::PROMPT_TOKENS.to_owned()], b"120".to_vec()),
                Mutation::SetProperty(vec![state::COMPLETION_TOKENS.to_owned()], b"30".to_vec()),
            ]
        );
        assert_eq!(
            envoy
                .host()
                .metric("portico_tokens_total;tier=gold;model=gpt-x;kind=prompt"),
            Some(120)
        );
        // Only 150 were charged: another 1600 fit again.
        let mut third = model_call(&envoy, "1500");
        let _ = third.response_headers(&[(":status", "200")], true);
        let response = envoy.host().headers(portico_host::host::Map::ResponseHeaders);
        assert_eq!(header(&response, "x-ratelimit-remaining-tokens"), Some("250"));
    }

    #[test]
    fn a_chunked_body_is_read_whole_and_a_prompt_past_the_budget_is_refused_from_the_body() {
        let envoy = limited();
        lift(&envoy, "max_tokens", b"500");
        let mut s = envoy.stream();
        let chunked = [
            (":method", "POST"),
            (":path", "/v1/messages"),
            ("x-portico-consumer", "acme"),
        ];
        assert_eq!(s.request_headers(&chunked, false), Action::Continue);
        assert!(envoy.host().reply().is_none(), "no size known yet: 500 reserved");
        // Not JSON at all: the estimate counts its bytes all the same.
        let body = vec![b'x'; 8_000];
        assert_eq!(
            s.request_body(body.get(..100).unwrap_or_default(), false),
            Action::Pause
        );
        assert_eq!(s.request_body(&body, true), Action::Pause, "refused");
        let Some(reply) = envoy.host().reply() else {
            panic!("no reply: {:?}", envoy.host().mutations())
        };
        assert_eq!((reply.status, reply.code), (400, Some("exceeds_token_budget")));
        assert_eq!(
            reply.context.as_deref(),
            Some("once the body showed a prompt of about 2000 tokens")
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        assert_eq!(body["type"], "error", "Anthropic's shape on /v1/messages: {body}");
        // Everything it took was refunded, and nothing is settled for the local reply.
        envoy.host().take_mutations();
        let _ = s.response_headers(&[(":status", "400")], false);
        let _ = s.response_body(b"{}", true);
        s.log();
        assert_eq!(envoy.host().mutations(), vec![]);
        let _ = model_call(&envoy, "1500");
    }

    #[test]
    fn hostile_input_is_refused_or_counted_never_trusted() {
        let envoy = limited();
        // A budget that is no count: 400, named.
        let (_, action) = send_model_call(&envoy, "1.5");
        assert_eq!(action, Action::Pause);
        let reply = envoy.host().reply();
        assert_eq!(
            reply.as_ref().map(|r| (r.status, r.code)),
            Some((400, Some("invalid_field")))
        );
        let body: serde_json::Value =
            serde_json::from_slice(&reply.map(|r| r.body).unwrap_or_default()).unwrap_or_default();
        assert_eq!(body["error"]["message"], "`max_tokens` must be an integer");

        // Usage that is not a count keeps the reservation (1600 of 2000) and is an anomaly.
        envoy.host().take_mutations();
        let mut s = model_call(&envoy, "1500");
        let _ = s.response_headers(&[(":status", "200"), ("content-type", "application/json")], false);
        let _ = s.response_body(br#"{"usage": {"prompt_tokens": -5, "completion_tokens": "#, false);
        let _ = s.response_body(b"1e30}}", true);
        s.log();
        assert_eq!(
            envoy
                .host()
                .metric("portico_ratelimit_usage_anomalies_total;rule=llm;reason=unparseable"),
            Some(1)
        );
        assert_eq!(
            envoy.host().metric("portico_ratelimit_responses_without_usage"),
            Some(1)
        );
        let (_, action) = send_model_call(&envoy, "1500");
        assert_eq!(action, Action::Pause, "the reservation stands");

        // An error answer without usage releases its reservation; a success without one keeps it.
        let envoy = limited();
        let mut s = model_call(&envoy, "1500");
        let _ = s.response_headers(&[(":status", "503")], false);
        let _ = s.response_body(b"upstream connect error", true);
        s.log();
        let mut s = model_call(&envoy, "1500");
        let _ = s.response_headers(&[(":status", "200")], false);
        let _ = s.response_body(b"{\"choices\": []}", true);
        s.log();
        assert_eq!(
            envoy.host().metric("portico_ratelimit_responses_without_usage"),
            Some(2)
        );
        let (_, action) = send_model_call(&envoy, "1500");
        assert_eq!(action, Action::Pause, "the success's reservation stands");
    }

    #[test]
    fn a_streamed_answer_is_settled_from_its_usage_event_and_a_cache_hit_charges_nothing() {
        let envoy = limited();
        let mut s = model_call(&envoy, "1500");
        envoy.host().put_property(&[state::MODEL], b"upstream-model");
        let _ = s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false);
        let _ = s.response_body(b"data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 90,", false);
        let _ = s.response_body(b" \"completion_tokens\": 10}}\n\ndata: [DONE]\n\n", true);
        assert!(envoy.host().mutations().contains(&Mutation::SetProperty(
            vec![state::PROMPT_TOKENS.to_owned()],
            b"90".to_vec()
        )));
        s.log();
        assert_eq!(
            envoy
                .host()
                .metric("portico_tokens_total;tier=gold;model=upstream-model;kind=completion"),
            Some(10)
        );
        let mut hit = model_call(&envoy, "1500");
        let _ = hit.response_headers(&[(":status", "200"), ("x-portico-cache", "HIT")], false);
        let _ = hit.response_body(br#"{"usage": {"prompt_tokens": 900, "completion_tokens": 900}}"#, true);
        hit.log();
        let mut next = model_call(&envoy, "1500");
        let _ = next.response_headers(&[(":status", "200")], true);
        let response = envoy.host().headers(portico_host::host::Map::ResponseHeaders);
        assert_eq!(
            header(&response, "x-ratelimit-remaining-tokens"),
            Some("300"),
            "100 charged for the stream, none for the hit"
        );
    }

    /// A request no rule or quota selects reads what the lookup needs (its `:path`), and the
    /// lifted model only when a body follows (it may be a model call whose tokens are counted).
    #[test]
    fn an_unmatched_route_reads_only_what_the_lookup_needs() {
        let envoy = limited();
        let mut s = envoy.stream();
        let get = [(":method", "GET"), (":path", "/hello"), ("x-portico-tier", "gold")];
        assert_eq!(s.request_headers(&get, true), Action::Continue);
        let _ = s.response_headers(&[(":status", "200")], true);
        s.log();
        let counts = s.counts();
        println!("rate-limit host calls: unmatched route {counts}");
        assert_eq!(counts.total(), 1, "{counts}");
        assert_eq!(envoy.host().mutations(), vec![]);

        let mut s = envoy.stream();
        let post = [(":method", "POST"), (":path", "/hello")];
        assert_eq!(s.request_headers(&post, false), Action::Continue);
        assert_eq!(s.request_body(b"{}", true), Action::Continue);
        let _ = s.response_headers(&[(":status", "200")], false);
        let _ = s.response_body(b"{}", true);
        s.log();
        let counts = s.counts();
        println!("rate-limit host calls: unmatched route with a body {counts}");
        assert_eq!(counts.total(), 2, "{counts}");
    }

    /// Host calls per request, reported by the port of issue 14 (the SDK shell read the whole
    /// map as one buffer too, and asked the clock once per use).
    #[test]
    fn host_calls_per_request_are_bounded() {
        let envoy = limited();
        let mut first = envoy.stream();
        let _ = first.request_headers(API, true);
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(API, true), Action::Continue);
        let _ = s.response_headers(&[(":status", "200")], true);
        s.log();
        let admitted = s.counts();
        // :path for the lookup, then the map (the key, the tier); the clock; shared data get
        // and set; the decision metric. No body follows: no lifted field is asked for.
        assert_eq!(admitted.request_headers, 6, "{admitted}");
        // The five rate-limit headers.
        assert_eq!(admitted.response_headers, 5, "{admitted}");
        assert_eq!(admitted.log, 0, "{admitted}");
        let mut refused = envoy.stream();
        assert_eq!(refused.request_headers(API, true), Action::Pause);
        let _ = refused.response_headers(&[(":status", "429")], true);
        refused.log();
        let refusal = refused.counts();
        // :path, the map, the clock, shared data get (no set: the bucket is full), the metric (a
        // new series: defined, then counted), the clock of the refusal log, the reply.
        assert_eq!(refusal.request_headers, 8, "{refusal}");
        assert_eq!(refusal.total(), 8, "{refusal}");
        eprintln!("rate-limit host calls: admitted {admitted}; limited {refusal}");

        // Without token quotas the budgets and size are never asked for.
        let rules_only = start(json!({"rules": [{"name": "r", "key": ["consumer"],
                                                 "limit": {"requests": 5, "period_seconds": 60}}]}));
        let _ = rules_only.stream().request_headers(API, true);
        let mut s = rules_only.stream();
        let _ = s.request_headers(API, true);
        let _ = s.response_headers(&[(":status", "200")], true);
        s.log();
        // :path (for the client's API), the map, the clock, shared get and set, the metric.
        assert_eq!(s.counts().request_headers, 6, "{}", s.counts());
        eprintln!("rate-limit host calls, rules only: admitted {}", s.counts());

        // A model call with a token quota, its JSON answer settled at its end.
        let envoy = limited();
        model_call(&envoy, "100").log();
        let mut s = model_call(&envoy, "100");
        let _ = s.response_headers(&[(":status", "200"), ("content-type", "application/json")], false);
        let _ = s.response_body(br#"{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}"#, true);
        s.log();
        let settled = s.counts();
        eprintln!("rate-limit host calls, model call: {settled}");
        // Request: :path, the map, the budgets and size, the clock, shared get and set, the
        // output budget as filter state, the lifted model (the quota's metric waits for the
        // body, which this request never sends: it is counted in the log). Response headers: the
        // five limit headers, the cache header, the model state, status and content type.
        // Body: the chunk, the backend's report, the clock, shared get and set, two token series
        // (new here: defined, then counted), the two states. Log: nothing left to do.
        assert_eq!(
            (
                settled.request_headers,
                settled.response_headers,
                settled.response_body,
                settled.log
            ),
            (10, 9, 11, 1),
            "{settled}"
        );
    }
}
