//! Portico rate-limit: exact request limits across Envoy workers, and LLM token quotas.
//!
//! This file is the host shell: it gathers headers, the client address, lifted body metadata,
//! the body's size and the clock, calls [`plan::admit`], and applies the answer. On a request
//! that reserved tokens it then reads the body, whole, to refine the prompt estimate
//! ([`plan::Hold::top_up`]); on the way back it feeds the response body to the usage readers
//! and settles ([`plan::Hold::settle`]).
// Until issue 14 ports this shell: it still calls the SDK's host wrappers.
#![allow(clippy::disallowed_methods)]
// Off wasm the host shell below is compiled but never entered; the wasm clippy run checks it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
// Request and upstream numbers flow through every limit here: arithmetic that can overflow,
// wrap or divide by zero is refused at build time, not left to the release build's wrapping.
#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects))]

pub mod config;
pub mod estimate;
pub mod follow;
pub mod gcra;
pub mod headers;
pub mod lifted;
pub mod plan;
pub mod slots;
pub mod usage;

use std::rc::Rc;

use log::error;
use portico_core::analytics::{state, BackendUsage, CACHE_HEADER};
use portico_core::clock::unix_nanos;
use portico_core::identity::{CONSUMER_HEADER, TIER_HEADER};
use portico_core::metrics::{bump, counter, Family};
use portico_core::refusal::Refusals;
use portico_core::request::RequestView;
use portico_core::response::{ClientApi, ErrorResponse};
use portico_core::shared::{update, Change, HostStore};
use portico_core::sse::is_event_stream;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::Config;
use crate::plan::{Anomaly, Event, Hold, TopUp};
use crate::usage::{Reported, StreamUsage, Usage};

const NAME: &str = "portico-rate-limit";
const SALT_KEY: &str = "portico/rate-limit/salt";
/// Largest non-streaming response body kept to read its usage.
const MAX_JSON_BODY: usize = 4 << 20;

// The entry point exists only in the .wasm: native builds (tests, `portico check`) link
// several filters together and would clash on its exported symbol.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(LimitRoot::default()) });
}}

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
    no_usage: Option<u32>,
}

impl Metrics {
    fn define(config: &Config) -> Self {
        Self {
            decisions: Family::counter("portico_ratelimit_requests_total", MAX_SERIES),
            tokens: Family::counter("portico_tokens_total", MAX_SERIES),
            consumer_tokens: config
                .per_consumer_metrics
                .then(|| Family::counter("portico_consumer_tokens_total", 5_000)),
            anomalies: Family::counter("portico_ratelimit_usage_anomalies_total", MAX_SERIES),
            no_usage: counter("portico_ratelimit_responses_without_usage"),
        }
    }

    fn record_quotas(&self, config: &Config, events: &[(usize, Event)]) {
        for (i, event) in events {
            let name = config.quotas.get(*i).map(|q| q.select.name.as_str());
            self.record(name, "tokens", *event);
        }
    }

    fn record(&self, name: Option<&str>, kind: &str, event: Event) {
        let outcome = match event {
            Event::Allowed => "allowed",
            Event::Limited => "limited",
            Event::DryRunLimited => "dry_run_limited",
            Event::StoreError => "store_error",
        };
        self.decisions.add(
            &[
                ("rule", name.unwrap_or("unknown")),
                ("kind", kind),
                ("outcome", outcome),
            ],
            1,
        );
    }
}

// === impl LimitRoot ===

#[derive(Default)]
struct LimitRoot {
    config: Option<Rc<Config>>,
    salt: [u8; 32],
    metrics: Option<Rc<Metrics>>,
    refusals: Option<Rc<Refusals>>,
}

impl Context for LimitRoot {}

/// One salt per Envoy process, shared by every worker through shared data, from the OS's
/// randomness (WASI `random_get`, via std's hasher seeding).
fn process_salt() -> Option<[u8; 32]> {
    use std::hash::{BuildHasher, Hasher};
    let mut fresh = Vec::with_capacity(32);
    for i in 0u8..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        fresh.extend_from_slice(&h.finish().to_le_bytes());
    }
    let stored = update(&HostStore, SALT_KEY, 8, |current| match current {
        Some(existing) if existing.len() == 32 => Change::Keep(existing.to_vec()),
        _ => Change::Write(fresh.clone(), fresh.clone()),
    })
    .ok()?;
    stored.try_into().ok()
}

impl RootContext for LimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::from_bytes(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                errors.log(NAME);
                return false;
            }
        };
        let Some(salt) = process_salt() else {
            error!("{NAME}: cannot read or create the shared salt in shared data");
            return false;
        };
        self.salt = salt;
        self.metrics = Some(Rc::new(Metrics::define(&config)));
        self.refusals = Some(Rc::new(Refusals::new(NAME, config.refusal_log)));
        self.config = Some(Rc::new(config));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(LimitHttp {
            config: self.config.clone()?,
            salt: self.salt,
            metrics: self.metrics.clone()?,
            refusals: self.refusals.clone()?,
            api: ClientApi::OpenAi,
            headers: Vec::new(),
            hold: Hold::default(),
            pending_quota_events: Vec::new(),
            read_request_body: false,
            follow_usage: false,
            tier: String::new(),
            consumer: String::new(),
            model: String::new(),
            body: Body::Unread,
            status: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// === impl LimitHttp ===

/// How the response body is followed for usage.
enum Body {
    Unread,
    Json(Vec<u8>),
    /// A JSON body too large to keep: usage unknown.
    JsonTooLarge,
    Stream(Box<StreamUsage>),
    Settled,
}

struct LimitHttp {
    config: Rc<Config>,
    salt: [u8; 32],
    metrics: Rc<Metrics>,
    refusals: Rc<Refusals>,
    /// The client's API, from the path it called: the shape of this filter's errors.
    api: ClientApi,
    headers: Vec<(&'static str, String)>,
    hold: Hold,
    /// Quota decisions not yet counted: the body may still change them.
    pending_quota_events: Vec<(usize, Event)>,
    /// The request reserved tokens and has a body: read it to refine the prompt estimate.
    read_request_body: bool,
    /// A model call: its usage is read for token series, quota or not.
    follow_usage: bool,
    tier: String,
    consumer: String,
    model: String,
    body: Body,
    /// The response status (0 until the response headers came).
    status: u32,
}

impl Context for LimitHttp {}

impl LimitHttp {
    fn metadata(&self, key: &str) -> Option<Vec<u8>> {
        self.get_property(vec![
            "metadata",
            "filter_metadata",
            &self.config.metadata_namespace,
            key,
        ])
    }

    /// The output budget the request states, or the 400 for a number that is no count.
    /// OpenAI's `max_completion_tokens` supersedes `max_tokens`; a request naming both is held
    /// to the larger, which no backend exceeds.
    fn stated_max_tokens(&self) -> Result<Option<u64>, ErrorResponse> {
        let mut stated = None;
        for field in ["max_tokens", "max_completion_tokens"] {
            if let Some(raw) = self.metadata(field) {
                stated = stated.max(lifted::max_tokens(field, &raw)?);
            }
        }
        Ok(stated)
    }

    /// The request body's size as far as Envoy knows it at header time: all of it when a
    /// buffering filter (`json_to_metadata`) runs first, else `content-length`, else 0 for a
    /// chunked body still on its way (`../shared/ENVOY-FINDINGS`, `request.size`).
    fn body_size(&self, view: &RequestView) -> Option<u64> {
        let from_property = self
            .get_property(vec!["request", "size"])
            .and_then(|raw| <[u8; 8]>::try_from(raw.as_slice()).ok())
            .and_then(|bytes| u64::try_from(i64::from_le_bytes(bytes)).ok());
        from_property.or_else(|| view.header_str("content-length").and_then(|v| v.trim().parse().ok()))
    }

    /// The usage body-transform read from the backend's answer before translating it (or
    /// refusing it): `None` when the answer was not translated.
    fn backend_usage(&self) -> Option<Reported> {
        let raw = self.get_property(vec![state::BACKEND_USAGE])?;
        Some(match BackendUsage::decode(&raw) {
            BackendUsage::Reported { prompt, completion } => Reported::Usage(Usage { prompt, completion }),
            BackendUsage::Unknown => Reported::Missing,
        })
    }

    /// Counts quota decisions that are final.
    fn flush_quota_events(&mut self) {
        let events = std::mem::take(&mut self.pending_quota_events);
        self.metrics.record_quotas(&self.config, &events);
    }

    fn count_anomaly(&self, quota: Option<usize>, anomaly: Anomaly) {
        let rule = match quota {
            Some(i) => self.config.quotas.get(i).map_or("unknown", |q| q.select.name.as_str()),
            None => "none",
        };
        self.metrics
            .anomalies
            .add(&[("rule", rule), ("reason", anomaly.as_str())], 1);
    }

    /// Charges what the response reported (keeping the reservations when its usage is
    /// unknown) and counts the tokens by tier and model, as far as the bound allows.
    fn settle(&mut self, reported: Reported) {
        self.body = Body::Settled;
        let used = match reported {
            Reported::Usage(used) => used,
            Reported::Missing => {
                bump(self.metrics.no_usage, 1);
                return;
            }
            Reported::Unparseable => {
                self.refusals.warn(
                    self.get_current_time(),
                    format_args!("a response reported usage that is not a count; the reservation stands"),
                );
                bump(self.metrics.no_usage, 1);
                let quotas: Vec<Option<usize>> = match self.hold.reservations() {
                    [] => vec![None],
                    held => held.iter().map(|r| Some(r.quota)).collect(),
                };
                for quota in quotas {
                    self.count_anomaly(quota, Anomaly::Unparseable);
                }
                return;
            }
        };
        let now = unix_nanos(self.get_current_time());
        let settled = self.hold.settle(&HostStore, used, now);
        for (quota, anomaly) in &settled.anomalies {
            self.count_anomaly(*quota, *anomaly);
        }
        // Over the reservation happens to honest answers (see the README); over the bound
        // does not.
        if settled.anomalies.iter().any(|(_, a)| *a == Anomaly::Clamped) {
            self.refusals.warn(
                self.get_current_time(),
                format_args!(
                    "a response reported {} prompt and {} completion tokens, beyond belief; counted {} and {}",
                    used.prompt, used.completion, settled.counted.prompt, settled.counted.completion
                ),
            );
        }
        let counted = settled.counted;
        for (kind, n, key) in [
            ("prompt", counted.prompt, state::PROMPT_TOKENS),
            ("completion", counted.completion, state::COMPLETION_TOKENS),
        ] {
            self.metrics
                .tokens
                .add(&[("tier", &self.tier), ("model", &self.model), ("kind", kind)], n);
            if let Some(family) = &self.metrics.consumer_tokens {
                family.add(&[("consumer", &self.consumer), ("kind", kind)], n);
            }
            self.set_property(vec![key], Some(n.to_string().as_bytes()));
        }
    }
}

impl HttpContext for LimitHttp {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let view = RequestView::new(self.get_http_request_headers_bytes());
        self.api = ClientApi::of_path(view.path());
        let address = if self.config.needs_client_ip {
            self.get_property(vec!["source", "address"])
                .and_then(|a| String::from_utf8(a).ok())
        } else {
            None
        };
        let client_ip = address.as_deref().map(strip_port);
        let (body_bytes, max_tokens) = if self.config.quotas.is_empty() {
            (None, None)
        } else {
            match self.stated_max_tokens() {
                Ok(max_tokens) => (self.body_size(&view), max_tokens),
                Err(response) => {
                    self.refusals.refuse(
                        &response,
                        self.api,
                        self.get_current_time(),
                        format_args!("{} {}", view.method(), view.path()),
                    );
                    return Action::Pause;
                }
            }
        };
        let request = plan::Request {
            view: &view,
            client_ip,
            body_bytes,
            max_tokens,
        };
        let now = unix_nanos(self.get_current_time());
        let admission = plan::admit(&self.config, &HostStore, &self.salt, &request, now);
        for (i, event) in &admission.rule_events {
            let name = self.config.rules.get(*i).map(|r| r.select.name.as_str());
            self.metrics.record(name, "requests", *event);
            if *event == Event::StoreError {
                self.refusals.warn(
                    self.get_current_time(),
                    format_args!(
                        "shared data unavailable for rule {:?}",
                        self.config.rules.get(*i).map(|r| &r.select.name)
                    ),
                );
            }
        }
        self.pending_quota_events = admission.quota_events;
        if let Some(response) = admission.rejection {
            self.flush_quota_events();
            self.refusals.refuse(
                &response,
                self.api,
                self.get_current_time(),
                format_args!("{} {}", view.method(), view.path()),
            );
            return Action::Pause;
        }
        self.headers = admission.headers;
        self.hold = admission.hold;
        if let Some(output) = self.hold.output_budget() {
            self.set_property(vec![state::MAX_OUTPUT_TOKENS], Some(output.to_string().as_bytes()));
        }
        self.read_request_body = !end_of_stream && !self.hold.reservations().is_empty();
        if !self.read_request_body {
            self.flush_quota_events();
        }
        // A model call is one whose body named a model (lifted by json_to_metadata) or that
        // reserved tokens; header-routing may later name the upstream model instead.
        let lifted = self.metadata("model").and_then(|m| String::from_utf8(m).ok());
        self.follow_usage = lifted.is_some() || !self.hold.reservations().is_empty();
        if self.follow_usage {
            self.tier = view.header_str(TIER_HEADER).unwrap_or("none").to_owned();
            if self.config.per_consumer_metrics {
                self.consumer = view.header_str(CONSUMER_HEADER).unwrap_or("anonymous").to_owned();
            }
            self.model = lifted.unwrap_or_else(|| "unknown".to_owned());
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.read_request_body {
            return Action::Continue;
        }
        // Held until the whole body is here (each call then sees all of it so far); behind
        // json_to_metadata it arrives whole in one call.
        if !end_of_stream {
            return Action::Pause;
        }
        self.read_request_body = false;
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let prompt = estimate::from_body(&body);
        let now = unix_nanos(self.get_current_time());
        let (top_up, events) = self.hold.top_up(&self.config, &HostStore, prompt, now);
        for (quota, event) in events {
            if let Some(pending) = self.pending_quota_events.iter_mut().find(|(q, _)| *q == quota) {
                pending.1 = event;
            }
        }
        self.flush_quota_events();
        match top_up {
            TopUp::Unchanged => Action::Continue,
            TopUp::Reserved(headers) => {
                self.headers = headers;
                Action::Continue
            }
            TopUp::Refused(response) => {
                // The local reply passes through the response callbacks: nothing to add or settle.
                self.headers.clear();
                self.follow_usage = false;
                self.body = Body::Settled;
                self.refusals.refuse(
                    &response,
                    self.api,
                    self.get_current_time(),
                    format_args!("once the body showed a prompt of about {prompt} tokens"),
                );
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.headers {
            self.set_http_response_header(name, Some(value));
        }
        if self.follow_usage {
            // A cache hit replays an earlier answer: the upstream spent nothing, so the
            // reservation is released and no tokens are counted.
            let hit = self
                .get_http_response_header_bytes(CACHE_HEADER)
                .is_some_and(|v| v == b"HIT");
            if hit {
                let now = unix_nanos(self.get_current_time());
                self.hold.settle(&HostStore, Usage::default(), now);
                self.body = Body::Settled;
                return Action::Continue;
            }
            if let Some(model) = self
                .get_property(vec![state::MODEL])
                .and_then(|m| String::from_utf8(m).ok())
            {
                self.model = model;
            }
            self.status = self
                .get_http_response_header_bytes(":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
                .unwrap_or(0);
            let sse = self
                .get_http_response_header_bytes("content-type")
                .is_some_and(|ct| is_event_stream(&ct));
            self.body = if sse {
                Body::Stream(Box::default())
            } else {
                Body::Json(Vec::new())
            };
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if matches!(self.body, Body::Unread | Body::Settled) {
            return Action::Continue;
        }
        let chunk = self.get_http_response_body(0, body_size).unwrap_or_default();
        match &mut self.body {
            Body::Stream(stream) => stream.push(&chunk),
            Body::Json(buffer) => {
                if buffer.len().saturating_add(chunk.len()) > MAX_JSON_BODY {
                    self.body = Body::JsonTooLarge;
                } else {
                    buffer.extend_from_slice(&chunk);
                }
            }
            Body::JsonTooLarge | Body::Unread | Body::Settled => {}
        }
        if end_of_stream {
            match std::mem::replace(&mut self.body, Body::Settled) {
                Body::Stream(stream) => {
                    let reported = self.backend_usage().unwrap_or_else(|| stream.usage());
                    self.settle(reported);
                }
                Body::Json(buffer) => match self.backend_usage().unwrap_or_else(|| usage::from_json(&buffer)) {
                    // An error answer that reports no usage charges nothing; a success without
                    // usage keeps its reservation (the backend did work we cannot count).
                    Reported::Missing if self.status >= 400 => {
                        bump(self.metrics.no_usage, 1);
                        let now = unix_nanos(self.get_current_time());
                        self.hold.settle(&HostStore, Usage::default(), now);
                    }
                    reported => self.settle(reported),
                },
                Body::JsonTooLarge => self.settle(Reported::Missing),
                Body::Unread | Body::Settled => {}
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The body never completed: its quota decisions stand as taken at admission.
        self.flush_quota_events();
        // The answer never reached this filter's end (client gone, upstream reset, no body, an
        // answer body-transform replaced with its own 502): settle from what body-transform
        // saw the backend report, else keep the reservation.
        if self.follow_usage && !matches!(self.body, Body::Settled) {
            let reported = self.backend_usage().unwrap_or(Reported::Missing);
            self.settle(reported);
        }
    }
}

/// `1.2.3.4` from `1.2.3.4:5678`, `::1` from `[::1]:5678`.
fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(address, |(ip, _)| ip);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}
