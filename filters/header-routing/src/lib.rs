//! Portico header-routing: picks the backend (an Envoy cluster) for each request and shapes the
//! request for it. Envoy stays unmodified: the filter sets the header the route configuration
//! reads with `cluster_header` and asks Envoy to re-evaluate the route.
//!
//! This file is the host shell around the pure [`decide::decide`]; the body callback only
//! rewrites the JSON `model` field of model routes whose alias names another upstream model.
// Off wasm the host shell below is compiled but never entered; the wasm clippy run checks it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod config;
pub mod decide;

use std::rc::Rc;

use log::{info, warn};
use portico_core::analytics::{outcome, state};
use portico_core::clock::unix_nanos;
use portico_core::identity::TIER_HEADER;
use portico_core::metrics::Family;
use portico_core::request::RequestView;
use portico_core::response::{ErrorResponse, ErrorType};
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
}

impl Context for RoutingRoot {}

impl RootContext for RoutingRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                self.metrics = Some(Rc::new(Metrics::define(&config)));
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
            echo: Vec::new(),
            rewrite_model: None,
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
    /// Set once the request is routed.
    labels: Option<Labels>,
    streaming: bool,
    first_byte_seen: bool,
    /// Headers echoed on the response.
    echo: Vec<(&'static str, String)>,
    /// The upstream model name to write into the JSON body.
    rewrite_model: Option<String>,
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

    fn respond(&self, response: &ErrorResponse, view: Option<&RequestView>) {
        if let Some(v) = view {
            info!(
                "{NAME}: {} {} {} {}",
                response.status,
                response.code,
                v.method(),
                v.path()
            );
        }
        self.send_http_response(response.status, response.header_pairs(), Some(&response.body()));
    }
}

impl HttpContext for RoutingHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let view = RequestView::new(self.get_http_request_headers_bytes());
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
                self.respond(&response, Some(&view));
                return Action::Pause;
            }
        };
        let Some(backend) = self.config.backend(routed.backend) else {
            let response = ErrorResponse::new(500, ErrorType::Api, "internal_error", "routing failed");
            self.respond(&response, Some(&view));
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
        if routed.model.is_some() {
            // The body changes size: Envoy sends it chunked instead.
            self.set_http_request_header("content-length", None);
            self.rewrite_model = routed.model;
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
            model: self.rewrite_model.clone().or(model).unwrap_or_default(),
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
        let Some(model) = &self.rewrite_model else {
            return Action::Continue;
        };
        if !end_of_stream {
            // Hold the body until it is complete (json_to_metadata in front already buffered it).
            return Action::Pause;
        }
        let too_large = u64::try_from(body_size).map_or(true, |n| n > self.config.max_body_bytes);
        if too_large {
            let response = ErrorResponse::new(
                413,
                ErrorType::InvalidRequest,
                "body_too_large",
                "the request body is larger than this route accepts",
            );
            self.respond(&response, None);
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match rewrite_model(&body, model) {
            Some(new_body) => {
                self.set_http_request_body(0, body_size, &new_body);
                Action::Continue
            }
            None => {
                let response = ErrorResponse::new(
                    400,
                    ErrorType::InvalidRequest,
                    "invalid_json",
                    "the request body is not a JSON object",
                );
                self.respond(&response, None);
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

/// The body with its top-level `model` set to `model`; `None` if it is not a JSON object.
pub fn rewrite_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object_mut()?;
    object.insert("model".to_owned(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_field_is_replaced_and_the_rest_kept() {
        let out = rewrite_model(
            br#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            "claude-haiku",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "claude-haiku");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["max_tokens"], 5);
    }

    #[test]
    fn hostile_bodies_are_refused_not_panicked_on() {
        assert!(rewrite_model(b"{\"model\": ", "m").is_none());
        assert!(rewrite_model(b"[1,2]", "m").is_none());
        assert!(rewrite_model(b"\xff\xfe", "m").is_none());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(rewrite_model(deep.as_bytes(), "m").is_none());
    }
}
