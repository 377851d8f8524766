//! Portico auth: JWT and API-key authentication for Envoy, as a proxy-wasm filter.
//!
//! This file is the host shell: it reads what the decision needs from Envoy, calls the pure
//! [`authn::Authenticator::decide`], and applies the answer. Everything worth testing lives in
//! the other modules and is tested natively.
// Until issue 14 ports this shell: it still calls the SDK's host wrappers.
#![allow(clippy::disallowed_methods)]
// Off wasm the host shell below is compiled but never entered; the wasm clippy run checks it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod authn;
pub mod cache;
pub mod config;
pub mod keys;
pub mod reason;
pub mod token;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use portico_core::analytics::state;
use portico_core::clock::unix_seconds;
use portico_core::identity::{CONSUMER_HEADER, TIER_HEADER};
use portico_core::metrics::{bump, counter, Family};
use portico_core::refusal::Refusals;
use portico_core::request::{remove_cookie, remove_query_param, RequestView};
use portico_core::response::ClientApi;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::authn::{too_large, Authenticator, Decision, FetchOutcome, Location};
use crate::config::Config;
use crate::reason::Reason;

const NAME: &str = "portico-auth";
/// How often the root context looks for due JWKS refreshes.
const TICK: Duration = Duration::from_millis(500);

// The entry point exists only in the .wasm: native builds (tests, `portico check`) link
// several filters together and would clash on its exported symbol.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthRoot::default()) });
}}

// === Metrics ===

/// Metric ids, defined once per VM.
#[derive(Debug, Default)]
struct Metrics {
    /// `portico_auth_requests_total{outcome, reason, tier}`.
    requests: Option<Family>,
    jwks_updated: Option<u32>,
    jwks_failed: Option<u32>,
    jwks_keys_skipped: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        Self {
            // Tiers and reasons are both few; the cap only guards against a tier claim that
            // takes a new value on every token.
            requests: Some(Family::counter("portico_auth_requests_total", 200)),
            jwks_updated: counter("portico_auth_jwks_updated"),
            jwks_failed: counter("portico_auth_jwks_fetch_failed"),
            jwks_keys_skipped: counter("portico_auth_jwks_keys_skipped"),
        }
    }

    fn count(&self, outcome: &str, reason: &str, tier: &str) {
        if let Some(family) = &self.requests {
            family.add(&[("outcome", outcome), ("reason", reason), ("tier", tier)], 1);
        }
    }
}

// === impl AuthRoot ===

#[derive(Default)]
struct AuthRoot {
    auth: Option<Rc<RefCell<Authenticator>>>,
    metrics: Rc<Metrics>,
    refusals: Option<Rc<Refusals>>,
    /// Dispatched JWKS calls: call token to provider index.
    pending: HashMap<u32, usize>,
}

impl Context for AuthRoot {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(provider) = self.pending.remove(&token) else {
            return;
        };
        let Some(auth) = &self.auth else { return };
        let Ok(mut auth) = auth.try_borrow_mut() else {
            return;
        };
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| String::from_utf8(s).ok());
        let limit = auth.jwks_max_bytes(provider);
        // A larger answer is never copied into the VM.
        let body = match status.as_deref() {
            Some("200") if body_size > limit => Err(too_large(body_size, limit)),
            Some("200") => Ok(self.get_http_call_response_body(0, body_size).unwrap_or_default()),
            Some(other) => Err(format!("JWKS server answered status {other}")),
            None => Err("no answer from the JWKS server (timeout or connection failure)".to_owned()),
        };
        let now = unix_seconds(self.get_current_time());
        let name = provider_name(&auth, provider);
        match auth.fetch_done(provider, body.as_deref().map_err(Clone::clone), now) {
            FetchOutcome::Updated { keys, skipped } => {
                bump(self.metrics.jwks_updated, 1);
                info!("{NAME}: provider {name}: loaded {keys} keys from remote JWKS");
                bump(
                    self.metrics.jwks_keys_skipped,
                    u64::try_from(skipped.len()).unwrap_or(u64::MAX),
                );
                for s in skipped {
                    warn!("{NAME}: provider {name}: skipped a JWKS key: {s}");
                }
            }
            FetchOutcome::Unchanged => {}
            FetchOutcome::Failed {
                message,
                loaded_at: Some(loaded_at),
            } => {
                bump(self.metrics.jwks_failed, 1);
                warn!(
                    "{NAME}: provider {name}: JWKS refresh failed, keeping the keys loaded {} s ago: {message}",
                    now.saturating_sub(loaded_at)
                );
            }
            FetchOutcome::Failed {
                message,
                loaded_at: None,
            } => {
                bump(self.metrics.jwks_failed, 1);
                warn!(
                    "{NAME}: provider {name}: JWKS fetch failed and no key was ever loaded: its tokens get \
                     503 keys_unavailable until a fetch succeeds: {message}"
                );
            }
        }
    }
}

fn provider_name(auth: &Authenticator, index: usize) -> String {
    auth.config()
        .jwt
        .as_ref()
        .and_then(|j| j.providers.get(index))
        .map_or_else(|| index.to_string(), |p| p.name.clone())
}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::from_bytes(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                errors.log(NAME);
                return false;
            }
        };
        let has_remote = config.remote_providers().next().is_some();
        self.refusals = Some(Rc::new(Refusals::new(NAME, config.refusal_log)));
        self.auth = Some(Rc::new(RefCell::new(Authenticator::new(Rc::new(config)))));
        self.metrics = Rc::new(Metrics::define());
        if has_remote {
            self.set_tick_period(TICK);
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(auth) = self.auth.clone() else {
            return;
        };
        let now = unix_seconds(self.get_current_time());
        let Ok(mut auth) = auth.try_borrow_mut() else {
            return;
        };
        for provider in auth.fetches_due(now) {
            let Some(remote) = auth
                .config()
                .jwt
                .as_ref()
                .and_then(|j| j.providers.get(provider))
                .and_then(|p| p.remote.clone())
            else {
                continue;
            };
            let headers = vec![
                (":method", "GET"),
                (":path", remote.path.as_str()),
                (":authority", remote.authority.as_str()),
                ("accept", "application/json"),
            ];
            let timeout = Duration::from_millis(remote.timeout_ms);
            match self.dispatch_http_call(&remote.cluster, headers, None, vec![], timeout) {
                Ok(token) => {
                    self.pending.insert(token, provider);
                }
                Err(status) => {
                    auth.fetch_not_sent(provider, now);
                    bump(self.metrics.jwks_failed, 1);
                    warn!(
                        "{NAME}: could not call JWKS cluster {:?}: {status:?} (is the cluster defined?)",
                        remote.cluster
                    );
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let auth = self.auth.clone()?;
        Some(Box::new(AuthHttp {
            auth,
            metrics: Rc::clone(&self.metrics),
            refusals: self.refusals.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// === impl AuthHttp ===

struct AuthHttp {
    auth: Rc<RefCell<Authenticator>>,
    metrics: Rc<Metrics>,
    refusals: Rc<Refusals>,
}

impl Context for AuthHttp {}

impl HttpContext for AuthHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let request = RequestView::new(self.get_http_request_headers_bytes());
        let now = unix_seconds(self.get_current_time());
        let (decision, config) = match self.auth.try_borrow_mut() {
            Ok(mut auth) => (auth.decide(&request, now), Rc::clone(auth.config())),
            Err(_) => {
                error!("{NAME}: authenticator busy (re-entrant call); refusing the request");
                self.deny(Reason::Internal, &[], "portico", &request);
                return Action::Pause;
            }
        };
        // Spoofed identity headers go first, on every request, whatever the decision.
        for name in &config.owned_headers {
            if request.header(name).is_some() {
                self.set_http_request_header(name, None);
            }
        }
        match decision {
            Decision::Allow { identity, strip } => {
                let mut tier = "none";
                if let Some(identity) = &identity {
                    self.set_http_request_header(CONSUMER_HEADER, Some(&identity.consumer));
                    self.set_property(vec![state::CONSUMER], Some(identity.consumer.as_bytes()));
                    if let Some(t) = &identity.tier {
                        self.set_http_request_header(TIER_HEADER, Some(t));
                        self.set_property(vec![state::TIER], Some(t.as_bytes()));
                        tier = t;
                    }
                    for (name, value) in &identity.headers {
                        self.set_http_request_header(name, Some(value));
                    }
                }
                self.strip(&strip, &request);
                self.metrics.count("allowed", "none", tier);
                Action::Continue
            }
            Decision::Deny { reason, scopes } => {
                self.deny(reason, &scopes, &config.realm, &request);
                Action::Pause
            }
        }
    }
}

impl AuthHttp {
    fn deny(&self, reason: Reason, scopes: &[String], realm: &str, request: &RequestView) {
        let response = reason.response(realm, scopes);
        self.metrics.count("denied", reason.code(), "none");
        // The path without its query: a query parameter may carry a credential.
        self.refusals.refuse(
            &response,
            ClientApi::of_path(request.path()),
            self.get_current_time(),
            format_args!("{} {}", request.method(), request.path()),
        );
    }

    fn strip(&self, locations: &[Location], request: &RequestView) {
        let mut path: Option<String> = None;
        let mut cookies: Option<Option<Vec<u8>>> = None;
        for location in locations {
            match location {
                Location::Authorization => self.set_http_request_header("authorization", None),
                Location::Header(name) => self.set_http_request_header(name, None),
                Location::Query(name) => {
                    let current = path.as_deref().unwrap_or(request.path_and_query());
                    path = Some(remove_query_param(current, name));
                }
                Location::Cookie(name) => {
                    let current = match &cookies {
                        Some(current) => current.clone().unwrap_or_default(),
                        None => request.headers_named("cookie").collect::<Vec<_>>().join(&b"; "[..]),
                    };
                    cookies = Some(remove_cookie(&current, name));
                }
            }
        }
        if let Some(path) = path {
            self.set_http_request_header(":path", Some(&path));
        }
        if let Some(rest) = cookies {
            self.set_http_request_header_bytes("cookie", rest.as_deref());
        }
    }
}
