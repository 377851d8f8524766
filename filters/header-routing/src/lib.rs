//! Portico header-routing: picks the backend (an Envoy cluster) for each request and shapes the
//! request for it. Envoy stays unmodified: the filter sets the header the route configuration
//! reads with `cluster_header` and asks Envoy to re-evaluate the route.
//!
//! This file is the host shell around the pure [`decide::decide`]. On model routes the body
//! callback reads the whole body strictly ([`check_body`]): it refuses repeated keys, which
//! readers resolve differently, and rewrites `model` when the alias names another upstream
//! model.
// Until issue 14 ports this shell: it still calls the SDK's host wrappers.
#![allow(clippy::disallowed_methods)]
// Off wasm the host shell below is compiled but never entered; the wasm clippy run checks it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod config;
pub mod decide;

use std::rc::Rc;

use log::warn;
use portico_core::analytics::{outcome, state};
use portico_core::clock::unix_nanos;
use portico_core::identity::TIER_HEADER;
use portico_core::json;
use portico_core::metrics::Family;
use portico_core::refusal::Refusals;
use portico_core::request::RequestView;
use portico_core::response::{ClientApi, ErrorResponse, ErrorType};
use portico_core::sse::is_event_stream;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::Config;
use crate::decide::{Decision, Inputs};

const NAME: &str = "portico-header-routing";
/// The variant chosen for the request: to the upstream, and echoed to the client.
pub const VARIANT_HEADER: &str = "x-portico-variant";
/// The feature flags on for the request, comma-separated: to the upstream and the client.
pub const FLAGS_HEADER: &str = "x-portico-flags";
/// The chosen backend's API format, for body-transform. Internal: the Envoy route removes it
/// before the request leaves (`request_headers_to_remove`).
pub const FORMAT_HEADER: &str = "x-portico-backend-format";

// The entry point exists only in the .wasm: native builds (tests, `portico check`) link
// several filters together and would clash on its exported symbol.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RoutingRoot::default()) });
}}

// === Metrics ===

/// Distinct label sets per metric before the rest count as `other`.
const MAX_SERIES: usize = 1000;

/// The request series: every request that reaches Envoy's filter chain is counted here once,
/// in `on_log`, including those refused by auth or rate-limit before this filter ran.
#[derive(Debug)]
struct Metrics {
    /// `portico_requests_total{route, tier, model, backend, variant, outcome}`.
    requests: Family,
    /// `portico_request_duration_ms{route, tier, model, backend}`: from the request's first
    /// byte to the end of the response.
    duration: Family,
    /// `portico_time_to_first_token_ms{route, tier, model, backend}`: streamed responses, to
    /// the first body bytes.
    ttft: Family,
    /// `portico_consumer_requests_total{consumer, outcome}`, only when configured.
    consumers: Option<Family>,
}

impl Metrics {
    fn define(config: &Config) -> Self {
        Self {
            requests: Family::counter("portico_requests_total", MAX_SERIES),
            duration: Family::histogram("portico_request_duration_ms", MAX_SERIES),
            ttft: Family::histogram("portico_time_to_first_token_ms", MAX_SERIES),
            consumers: config
                .per_consumer_metrics
                .then(|| Family::counter("portico_consumer_requests_total", 10_000)),
        }
    }
}

/// What this request is labelled with.
#[derive(Debug, Default)]
struct Labels {
    route: String,
    tier: String,
    backend: String,
    variant: String,
    model: String,
}

#[derive(Default)]
struct RoutingRoot {
    config: Option<Rc<Config>>,
    metrics: Option<Rc<Metrics>>,
    refusals: Option<Rc<Refusals>>,
}

impl Context for RoutingRoot {}

impl RootContext for RoutingRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                self.metrics = Some(Rc::new(Metrics::define(&config)));
                self.refusals = Some(Rc::new(Refusals::new(NAME, config.refusal_log)));
                self.config = Some(Rc::new(config));
                true
            }
            Err(errors) => {
                errors.log(NAME);
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RoutingHttp {
            config: self.config.clone()?,
            metrics: self.metrics.clone()?,
            refusals: self.refusals.clone()?,
            api: ClientApi::OpenAi,
            echo: Vec::new(),
            body: BodyPhase::Pass,
            labels: None,
            streaming: false,
            first_byte_seen: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RoutingHttp {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    refusals: Rc<Refusals>,
    /// The client's API, from the path it called: the shape of this filter's errors.
    api: ClientApi,
    /// Set once the request is routed.
    labels: Option<Labels>,
    streaming: bool,
    first_byte_seen: bool,
    /// Headers echoed on the response.
    echo: Vec<(&'static str, String)>,
    body: BodyPhase,
}

/// What the body callback does with the request body.
enum BodyPhase {
    /// Not a model route: the body passes untouched.
    Pass,
    /// A model route: read the whole body strictly and, with `Some`, write this upstream
    /// model into it.
    Check(Option<String>),
}

impl Context for RoutingHttp {}

impl RoutingHttp {
    fn metadata(&self, key: &str) -> Option<Vec<u8>> {
        self.get_property(vec![
            "metadata",
            "filter_metadata",
            &self.config.metadata_namespace,
            key,
        ])
    }

    fn property(&self, key: &str) -> Option<String> {
        self.get_property(vec![key]).and_then(|v| String::from_utf8(v).ok())
    }

    /// Milliseconds since the request's first byte reached Envoy.
    fn elapsed_ms(&self) -> Option<u64> {
        let start: [u8; 8] = self.get_property(vec!["request", "time"])?.try_into().ok()?;
        let start = u64::try_from(i64::from_le_bytes(start)).ok()?;
        Some(unix_nanos(self.get_current_time()).saturating_sub(start) / 1_000_000)
    }

    /// Labels for a request this filter did not route (refused before it ran, or by it).
    fn unrouted_labels(&self) -> Labels {
        let view = RequestView::new(self.get_http_request_headers_bytes());
        let route = decide::route_of(&self.config, &view).map_or_else(|| "none".to_owned(), |r| r.name.clone());
        Labels {
            route,
            // Set by auth only for an authenticated request.
            tier: self.property(state::TIER).unwrap_or_default(),
            backend: "none".to_owned(),
            variant: "none".to_owned(),
            model: String::from_utf8(self.metadata("model").unwrap_or_default()).unwrap_or_default(),
        }
    }

    /// Answers with `response` and logs it with `context` (what the request was).
    fn respond(&self, response: &ErrorResponse, context: std::fmt::Arguments<'_>) {
        self.refusals
            .refuse(response, self.api, self.get_current_time(), context);
    }

    /// Refuses a request from the body callback, where the request headers are gone: the log
    /// line names the route instead of the path.
    fn refuse_body(&mut self, response: &ErrorResponse) {
        // Answered: any later body callback lets data pass instead of answering twice.
        self.body = BodyPhase::Pass;
        let route = self.labels.as_ref().map_or("none", |l| l.route.as_str());
        self.respond(response, format_args!("on route {route}"));
    }
}

impl HttpContext for RoutingHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let view = RequestView::new(self.get_http_request_headers_bytes());
        self.api = ClientApi::of_path(view.path());
        // Headers this filter owns: a client never chooses a cluster or fakes a variant.
        for name in [
            self.config.cluster_header.as_str(),
            FORMAT_HEADER,
            VARIANT_HEADER,
            FLAGS_HEADER,
        ] {
            if view.header(name).is_some() {
                self.set_http_request_header(name, None);
            }
        }
        let model = self.metadata("model").and_then(|m| String::from_utf8(m).ok());
        let json_error = self.metadata("json_error").is_some();
        let inputs = Inputs {
            view: &view,
            model: model.as_deref(),
            json_error,
        };
        let routed = match decide::decide(&self.config, &inputs) {
            Decision::Route(r) => r,
            Decision::Reject(response) => {
                self.respond(&response, format_args!("{} {}", view.method(), view.path()));
                return Action::Pause;
            }
        };
        let Some(backend) = self.config.backend(routed.backend) else {
            let response = ErrorResponse::new(500, ErrorType::Api, "internal_error", "routing failed");
            self.respond(&response, format_args!("{} {}", view.method(), view.path()));
            return Action::Pause;
        };
        for name in &backend.remove_headers {
            self.set_http_request_header(name, None);
        }
        if let Some((name, value)) = &backend.credential {
            // The client's gateway credential never reaches a provider; the provider's key
            // never reaches the client.
            self.set_http_request_header("authorization", None);
            self.set_http_request_header("x-api-key", None);
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in &backend.add_headers {
            self.set_http_request_header(name, Some(value));
        }
        if let Some(host) = &backend.host_rewrite {
            self.set_http_request_header(":authority", Some(host));
        }
        if let Some(path) = &routed.path {
            self.set_http_request_header(":path", Some(path));
            if ClientApi::of_path(path) != self.api {
                // Envoy's own errors (timeouts, resets) are shaped by the path they see.
                self.set_property(vec![state::CLIENT_API], Some(self.api.as_str().as_bytes()));
            }
        }
        if let Some(format) = backend.format {
            self.set_http_request_header(FORMAT_HEADER, Some(format.as_str()));
        }
        if let Some(variant) = &routed.variant {
            self.set_http_request_header(VARIANT_HEADER, Some(variant));
            self.echo.push((VARIANT_HEADER, variant.clone()));
        }
        if !routed.flags.is_empty() {
            let flags = routed.flags.join(",");
            self.set_http_request_header(FLAGS_HEADER, Some(&flags));
            self.echo.push((FLAGS_HEADER, flags));
        }
        let model_route = self
            .config
            .routes
            .get(routed.route)
            .is_some_and(|r| matches!(r.action, config::Action::Models(_)));
        if routed.model.is_some() {
            // The body changes size: Envoy sends it chunked instead.
            self.set_http_request_header("content-length", None);
        }
        if model_route {
            self.body = BodyPhase::Check(routed.model.clone());
        }
        self.set_http_request_header(&self.config.cluster_header, Some(&backend.cluster));
        let labels = Labels {
            route: self
                .config
                .routes
                .get(routed.route)
                .map_or_else(String::new, |r| r.name.clone()),
            // Auth's header (it removes any copy a client sent), read without a host call.
            tier: view.header_str(TIER_HEADER).unwrap_or_default().to_owned(),
            backend: backend.name.clone(),
            variant: routed.variant.clone().unwrap_or_default(),
            model: routed.model.or(model).unwrap_or_default(),
        };
        for (key, value) in [
            (state::ROUTE, &labels.route),
            (state::BACKEND, &labels.backend),
            (state::VARIANT, &labels.variant),
            (state::MODEL, &labels.model),
        ] {
            if !value.is_empty() {
                self.set_property(vec![key], Some(value.as_bytes()));
            }
        }
        self.labels = Some(labels);
        // Envoy 1.40 re-evaluates the route after a header change by itself; newer versions
        // will not, so say it explicitly.
        if let Err(status) = proxy_wasm::hostcalls::call_foreign_function("clear_route_cache", None) {
            warn!("{NAME}: clear_route_cache failed: {status:?}");
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let BodyPhase::Check(model) = &self.body else {
            return Action::Continue;
        };
        if !end_of_stream {
            // Hold the body until it is complete (json_to_metadata in front already buffered
            // it, so this is rare).
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match check_body(&body, model.as_deref()) {
            Ok(Some(new_body)) => {
                self.set_http_request_body(0, body_size, &new_body);
                Action::Continue
            }
            Ok(None) => Action::Continue,
            Err(response) => {
                // Answered here, the upstream never gets a complete request (ENVOY-FACTS 5).
                self.refuse_body(&response);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.echo {
            self.set_http_response_header(name, Some(value));
        }
        if self.labels.is_some() {
            self.streaming = self
                .get_http_response_header_bytes("content-type")
                .is_some_and(|ct| is_event_stream(&ct));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.streaming && !self.first_byte_seen && body_size > 0 {
            self.first_byte_seen = true;
            if let (Some(ms), Some(l)) = (self.elapsed_ms(), &self.labels) {
                self.metrics.ttft.add(
                    &[
                        ("route", &l.route),
                        ("tier", &l.tier),
                        ("model", &l.model),
                        ("backend", &l.backend),
                    ],
                    ms,
                );
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self
            .get_http_response_header_bytes(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok())
            .unwrap_or(0);
        let labels = match self.labels.take() {
            Some(labels) => labels,
            None => self.unrouted_labels(),
        };
        let tier = labels.tier.as_str();
        let outcome = outcome(status);
        self.metrics.requests.add(
            &[
                ("route", &labels.route),
                ("tier", tier),
                ("model", &labels.model),
                ("backend", &labels.backend),
                ("variant", &labels.variant),
                ("outcome", outcome),
            ],
            1,
        );
        if let Some(ms) = self.elapsed_ms() {
            self.metrics.duration.add(
                &[
                    ("route", &labels.route),
                    ("tier", tier),
                    ("model", &labels.model),
                    ("backend", &labels.backend),
                ],
                ms,
            );
        }
        if let Some(family) = &self.metrics.consumers {
            let consumer = self.property(state::CONSUMER).unwrap_or_else(|| "anonymous".to_owned());
            family.add(&[("consumer", &consumer), ("outcome", outcome)], 1);
        }
    }
}

/// A model route's whole body, read strictly: refused with 400 `duplicate_json_key` when an
/// object repeats a key (json_to_metadata lifted the last `model`, a backend may read the
/// first) and 400 `invalid_json` when it is not a JSON object; otherwise `Some` new body with
/// its top-level `model` set to `model`, or `None` to send it unchanged.
pub fn check_body(body: &[u8], model: Option<&str>) -> Result<Option<Vec<u8>>, ErrorResponse> {
    let invalid = || {
        ErrorResponse::new(
            400,
            ErrorType::InvalidRequest,
            "invalid_json",
            "the request body is not a JSON object",
        )
    };
    let mut value = match json::parse(body) {
        Ok(value) => value,
        Err(refusal) => return Err(refusal.content_refusal().unwrap_or_else(invalid)),
    };
    let object = value.as_object_mut().ok_or_else(invalid)?;
    let Some(model) = model else {
        return Ok(None);
    };
    object.insert("model".to_owned(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&value).map(Some).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &[u8], model: Option<&str>) -> (u32, &'static str, String) {
        let e = check_body(body, model).unwrap_err();
        (e.status, e.code, e.message)
    }

    #[test]
    fn the_model_field_is_replaced_and_the_rest_kept() {
        let out = check_body(
            br#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            Some("claude-haiku"),
        )
        .unwrap()
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "claude-haiku");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["max_tokens"], 5);
    }

    #[test]
    fn numbers_reach_the_backend_as_the_client_sent_them_when_the_model_is_rewritten() {
        // Found by the model_body fuzz target: serde_json's default float reader rounds some
        // long decimals to a neighbouring double, so rewriting `model` changed other fields.
        let sent = [
            "0.1519875916755563195",
            "99999999999999999999999999999999999999999999999999999999999999990e5",
        ];
        let body = format!(r#"{{"model":"fast","top_p":{},"n":{}}}"#, sent[0], sent[1]);
        let out = check_body(body.as_bytes(), Some("claude-haiku")).unwrap().unwrap();
        let text = String::from_utf8(out).unwrap();
        for (field, sent) in ["top_p", "n"].into_iter().zip(sent) {
            // The number as written upstream, read by Rust's exact parser.
            let written = text
                .split_once(&format!("\"{field}\":"))
                .and_then(|(_, rest)| rest.split([',', '}']).next())
                .unwrap();
            let want: f64 = sent.parse().unwrap();
            assert_eq!(written.parse::<f64>(), Ok(want), "{field}: sent {sent}, got {text}");
        }
    }

    #[test]
    fn a_body_without_a_new_model_passes_unchanged() {
        assert_eq!(check_body(br#"{"model":"gpt-4o","messages":[]}"#, None), Ok(None));
    }

    #[test]
    fn repeated_keys_are_refused_with_their_path_whether_or_not_the_model_changes() {
        for model in [None, Some("claude-haiku")] {
            let (status, code, message) = refusal(br#"{"model":"fast","model":"smart","messages":[]}"#, model);
            assert_eq!((status, code), (400, "duplicate_json_key"));
            assert!(message.contains("$.model"), "{message}");
            assert!(!message.contains("fast") && !message.contains("smart"), "{message}");
            let nested = br#"{"model":"fast","messages":[{"role":"user","content":"a","content":"b"}]}"#;
            let (status, code, message) = refusal(nested, model);
            assert_eq!((status, code), (400, "duplicate_json_key"));
            assert!(message.contains("$.messages[0].content"), "{message}");
        }
    }

    #[test]
    fn hostile_bodies_are_refused_not_panicked_on() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for model in [None, Some("m")] {
            for body in [&b"{\"model\": "[..], b"[1,2]", b"\xff\xfe", b"", deep.as_bytes()] {
                assert_eq!(
                    refusal(body, model).1,
                    "invalid_json",
                    "{:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
}
