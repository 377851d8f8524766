//! Header-routing on the host layer: the plugin entry `portico-header-routing` of
//! `portico.wasm` (and `header-routing.wasm`).
//!
//! The shell reads the request headers (the whole map once: routes match on headers named by
//! configuration and on every cookie) and the fields `json_to_metadata` lifted from the body,
//! and hands them to the pure [`shape::route`]; a model route's body goes through
//! [`check_body`]; the log callback records the request series ([`crate::analytics`]).

use std::rc::Rc;

use log::error;
use portico_core::config::Errors;
use portico_core::contract::{metadata, root_id, state};
use portico_core::refusal::RefusalLog;
use portico_core::request::RequestSource;
use portico_core::response::ClientApi;
use portico_core::sse::is_event_stream;
use portico_host::metrics::Family;
use portico_host::{
    Body, BodyFlow, Effects, Env, Exchange, Filter, HeadersFlow, HttpFilter, RequestHeaders, ResponseHeaders, RootHost,
};
use serde_json::Value;

use crate::analytics::{consumer_labels, elapsed_ms, status, Labels};
use crate::check_body;
use crate::config::{Action, Config};
use crate::shape::{self, BodyPhase, Lifted, Routing};

const NAME: &str = root_id::HEADER_ROUTING;
/// Distinct label sets per metric before the rest count as `other`.
const MAX_SERIES: usize = 1000;

// === Metrics ===

/// The request series ([`crate::analytics`]), defined once per VM.
#[derive(Debug)]
struct Metrics {
    requests: Family,
    duration: Family,
    ttft: Family,
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

// === impl HeaderRouting ===

/// Header-routing in one VM.
pub struct HeaderRouting {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    /// Whether any route reads the lifted `json_error` (only model routes do).
    model_routes: bool,
}

impl Filter for HeaderRouting {
    const ROOT_ID: &'static str = NAME;
    type Config = Config;
    type Http = RoutingHttp;

    fn configure(config: &Value) -> Result<Config, Errors> {
        Config::from_value(config)
    }

    fn new(config: Rc<Config>, _root: &mut RootHost<'_>) -> Result<Self, String> {
        Ok(Self {
            metrics: Rc::new(Metrics::define(&config)),
            model_routes: config.routes.iter().any(|r| matches!(r.action, Action::Models(_))),
            config,
        })
    }

    fn http(&self) -> RoutingHttp {
        RoutingHttp {
            config: Rc::clone(&self.config),
            metrics: Rc::clone(&self.metrics),
            model_routes: self.model_routes,
            api: ClientApi::OpenAi,
            routing: None,
            streaming: false,
            first_byte_seen: false,
        }
    }

    fn refusal_log(&self) -> RefusalLog {
        self.config.refusal_log
    }
}

// === impl RoutingHttp ===

/// One request through header-routing.
pub struct RoutingHttp {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    model_routes: bool,
    /// The client's API, from the path it called: the shape of this filter's errors.
    api: ClientApi,
    /// Set once the request is routed.
    routing: Option<Routing>,
    streaming: bool,
    first_byte_seen: bool,
}

impl RoutingHttp {
    /// A field `json_to_metadata` lifted into this filter's metadata namespace.
    fn lifted(&self, env: &Env<'_>, key: &str) -> Option<Vec<u8>> {
        env.property(&metadata::path(&self.config.metadata_namespace, key))
            .unwrap_or_else(|e| {
                error!("{NAME}: reading the lifted {key:?} failed: host status {}", e.0);
                None
            })
    }

    /// A filter-state value set by an earlier filter, as text.
    fn state(env: &Env<'_>, key: &str) -> Option<String> {
        env.property(&[key])
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
    }

    fn elapsed_ms(env: &Env<'_>) -> Option<u64> {
        let start = env.property(&["request", "time"]).ok().flatten();
        elapsed_ms(start.as_deref(), env.now())
    }
}

impl HttpFilter for RoutingHttp {
    fn request_headers(&mut self, headers: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        let env = headers.env();
        // Every request is checked for the four headers this filter owns, besides what its
        // routes read: one read of the whole map answers them all, where reading name by name
        // would cost a host call each.
        let _ = headers.all();
        let view: &dyn RequestSource = headers;
        self.api = ClientApi::of_path(view.path());
        // Lifted body fields exist only when a body follows (json_to_metadata reads it first).
        let body_follows = !headers.end_of_stream();
        let model = if body_follows {
            self.lifted(&env, metadata::MODEL)
                .and_then(|m| String::from_utf8(m).ok())
        } else {
            None
        };
        let json_error = self.model_routes && body_follows && self.lifted(&env, metadata::JSON_ERROR).is_some();
        let lifted = Lifted {
            model: model.as_deref(),
            json_error,
        };
        self.routing = shape::route(&self.config, view, lifted, fx);
        HeadersFlow::Continue
    }

    fn request_body(&mut self, body: &Body<'_>, _held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        let Some(routing) = &mut self.routing else {
            return BodyFlow::Continue;
        };
        let BodyPhase::Check(model) = &routing.body else {
            return BodyFlow::Continue;
        };
        if !body.end_of_stream() {
            // Hold the body until it is complete (json_to_metadata in front already buffered
            // it, so this is rare).
            return BodyFlow::Buffer;
        }
        match check_body(body.bytes(), model.as_deref()) {
            Ok(Some(new_body)) => fx.replace_request_body(new_body),
            Ok(None) => {}
            Err(response) => {
                // Answered here, the upstream never gets a complete request (ENVOY-FACTS 5).
                // The request headers are gone: the log line names the route instead.
                fx.refuse_with(&response, self.api, format!("on route {}", routing.labels.route));
            }
        }
        // Checked: any later body callback lets data pass.
        routing.body = BodyPhase::Pass;
        BodyFlow::Continue
    }

    fn response_headers(&mut self, response: &ResponseHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        if let Some(routing) = &self.routing {
            for (name, value) in &routing.echo {
                fx.set_response_header(*name, value);
            }
            self.streaming = response.get("content-type").is_some_and(is_event_stream);
        }
        HeadersFlow::Continue
    }

    fn response_body(&mut self, body: &Body<'_>, _held: Option<&ResponseHeaders<'_>>, _fx: &mut Effects) -> BodyFlow {
        if self.streaming && !self.first_byte_seen && !body.is_empty() {
            self.first_byte_seen = true;
            let env = body.env();
            if let (Some(ms), Some(routing)) = (Self::elapsed_ms(&env), &self.routing) {
                self.metrics.ttft.add(&env, &routing.labels.timing(), ms);
            }
        }
        BodyFlow::Continue
    }

    fn log_exchange(&mut self, exchange: &Exchange<'_>) {
        let env = exchange.env();
        let status = status(exchange.response().get(":status"));
        let labels = match self.routing.take() {
            Some(routing) => routing.labels,
            None => {
                let model = self
                    .lifted(&env, metadata::MODEL)
                    .and_then(|m| String::from_utf8(m).ok());
                Labels::unrouted(&self.config, exchange.request(), Self::state(&env, state::TIER), model)
            }
        };
        self.metrics.requests.add(&env, &labels.requests(status), 1);
        if let Some(ms) = Self::elapsed_ms(&env) {
            self.metrics.duration.add(&env, &labels.timing(), ms);
        }
        if let Some(family) = &self.metrics.consumers {
            let consumer = Self::state(&env, state::CONSUMER);
            family.add(&env, &consumer_labels(consumer.as_deref(), status), 1);
        }
    }
}

#[cfg(test)]
mod tests;
