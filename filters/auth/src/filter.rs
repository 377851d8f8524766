//! Auth on the host layer: the plugin entry `portico-auth` of `portico.wasm` (and `auth.wasm`).
//!
//! The shell reads the request headers through the view, calls the pure
//! [`Authenticator::decide`], and records what to do as effects: spoofed identity headers
//! removed, identity headers and filter state set, credentials stripped (headers, query
//! parameters, cookies), or a local reply with the challenge. The root fetches remote JWKS on
//! its tick and loads their answers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{error, info, warn};
use portico_core::analytics::state;
use portico_core::clock::unix_seconds;
use portico_core::config::Errors;
use portico_core::identity::{CONSUMER_HEADER, TIER_HEADER};
use portico_core::refusal::RefusalLog;
use portico_core::request::{remove_cookie, remove_query_param, RequestView};
use portico_core::response::ClientApi;
use portico_host::metrics::{Counter, Family};
use portico_host::{CallResponse, Effects, Env, Filter, HeadersFlow, HttpCall, HttpFilter, RequestHeaders, RootHost};
use serde_json::Value;

use crate::authn::{too_large, Authenticator, Decision, FetchOutcome, Location};
use crate::config::Config;
use crate::reason::Reason;

const NAME: &str = "portico-auth";
/// How often the root looks for due JWKS refreshes.
const TICK: Duration = Duration::from_millis(500);

// === Metrics ===

/// The filter's metrics, defined once per VM.
#[derive(Debug)]
struct Metrics {
    /// `portico_auth_requests_total{outcome, reason, tier}`.
    requests: Family,
    jwks_updated: Counter,
    jwks_failed: Counter,
    jwks_keys_skipped: Counter,
}

impl Metrics {
    fn define(env: &Env<'_>) -> Self {
        Self {
            // Tiers and reasons are both few; the cap only guards against a tier claim that
            // takes a new value on every token.
            requests: Family::counter("portico_auth_requests_total", 200),
            jwks_updated: Counter::define(env, "portico_auth_jwks_updated"),
            jwks_failed: Counter::define(env, "portico_auth_jwks_fetch_failed"),
            jwks_keys_skipped: Counter::define(env, "portico_auth_jwks_keys_skipped"),
        }
    }

    fn count(&self, env: &Env<'_>, outcome: &str, reason: &str, tier: &str) {
        self.requests
            .add(env, &[("outcome", outcome), ("reason", reason), ("tier", tier)], 1);
    }
}

// === impl Auth ===

/// Auth in one VM: the authenticator (token cache, remote keys) shared by its requests.
pub struct Auth {
    auth: Rc<RefCell<Authenticator>>,
    metrics: Rc<Metrics>,
    refusal_log: RefusalLog,
    /// Dispatched JWKS calls: call token to provider index.
    pending: HashMap<u32, usize>,
}

impl Filter for Auth {
    const ROOT_ID: &'static str = NAME;
    type Config = Config;
    type Http = AuthHttp;

    fn configure(config: &Value) -> Result<Config, Errors> {
        Config::from_value(config)
    }

    fn new(config: Rc<Config>, root: &mut RootHost<'_>) -> Result<Self, String> {
        if config.remote_providers().next().is_some() {
            root.set_tick_period(TICK)
                .map_err(|e| format!("cannot set the JWKS refresh tick: host status {}", e.0))?;
        }
        Ok(Self {
            refusal_log: config.refusal_log,
            auth: Rc::new(RefCell::new(Authenticator::new(config))),
            metrics: Rc::new(Metrics::define(&root.env())),
            pending: HashMap::new(),
        })
    }

    fn http(&self) -> AuthHttp {
        AuthHttp {
            auth: Rc::clone(&self.auth),
            metrics: Rc::clone(&self.metrics),
        }
    }

    fn refusal_log(&self) -> RefusalLog {
        self.refusal_log
    }

    fn on_tick(&mut self, root: &mut RootHost<'_>) {
        let env = root.env();
        let now = unix_seconds(env.now());
        let Ok(mut auth) = self.auth.try_borrow_mut() else {
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
            let headers = [
                (":method", "GET"),
                (":path", remote.path.as_str()),
                (":authority", remote.authority.as_str()),
                ("accept", "application/json"),
            ];
            let call = HttpCall {
                cluster: &remote.cluster,
                headers: &headers,
                body: None,
                timeout: Duration::from_millis(remote.timeout_ms),
            };
            match root.dispatch_http_call(&call) {
                Ok(token) => {
                    self.pending.insert(token, provider);
                }
                Err(status) => {
                    auth.fetch_not_sent(provider, now);
                    self.metrics.jwks_failed.add(&env, 1);
                    warn!(
                        "{NAME}: could not call JWKS cluster {:?}: host status {} (is the cluster defined?)",
                        remote.cluster, status.0
                    );
                }
            }
        }
    }

    fn on_http_call_response(&mut self, root: &mut RootHost<'_>, token: u32, response: &CallResponse<'_>) {
        let Some(provider) = self.pending.remove(&token) else {
            return;
        };
        let Ok(mut auth) = self.auth.try_borrow_mut() else {
            return;
        };
        let env = root.env();
        let status = response.header(":status").and_then(|s| String::from_utf8(s).ok());
        let limit = auth.jwks_max_bytes(provider);
        let size = response.body_size();
        // A larger answer is never copied into the VM.
        let body = match status.as_deref() {
            Some("200") if size > limit => Err(too_large(size, limit)),
            Some("200") => Ok(response.body()),
            Some(other) => Err(format!("JWKS server answered status {other}")),
            None => Err("no answer from the JWKS server (timeout or connection failure)".to_owned()),
        };
        let now = unix_seconds(env.now());
        let name = provider_name(&auth, provider);
        match auth.fetch_done(provider, body, now) {
            FetchOutcome::Updated { keys, skipped } => {
                self.metrics.jwks_updated.add(&env, 1);
                info!("{NAME}: provider {name}: loaded {keys} keys from remote JWKS");
                self.metrics
                    .jwks_keys_skipped
                    .add(&env, u64::try_from(skipped.len()).unwrap_or(u64::MAX));
                for s in skipped {
                    warn!("{NAME}: provider {name}: skipped a JWKS key: {s}");
                }
            }
            FetchOutcome::Unchanged => {}
            FetchOutcome::Failed {
                message,
                loaded_at: Some(loaded_at),
            } => {
                self.metrics.jwks_failed.add(&env, 1);
                warn!(
                    "{NAME}: provider {name}: JWKS refresh failed, keeping the keys loaded {} s ago: {message}",
                    now.saturating_sub(loaded_at)
                );
            }
            FetchOutcome::Failed {
                message,
                loaded_at: None,
            } => {
                self.metrics.jwks_failed.add(&env, 1);
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

// === impl AuthHttp ===

/// One request through auth.
pub struct AuthHttp {
    auth: Rc<RefCell<Authenticator>>,
    metrics: Rc<Metrics>,
}

impl HttpFilter for AuthHttp {
    fn request_headers(&mut self, headers: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        let env = headers.env();
        // The decision looks at headers named by configuration and at every value of repeated
        // ones (`authorization`, `cookie`): one read of the whole map.
        let request = RequestView::new(headers.all().to_vec());
        let now = unix_seconds(env.now());
        let (decision, config) = match self.auth.try_borrow_mut() {
            Ok(mut auth) => (auth.decide(&request, now), Rc::clone(auth.config())),
            Err(_) => {
                error!("{NAME}: authenticator busy (re-entrant call); refusing the request");
                self.deny(&env, fx, Reason::Internal, &[], "portico", &request);
                return HeadersFlow::Continue;
            }
        };
        // Spoofed identity headers go first, on every request, whatever the decision.
        for name in &config.owned_headers {
            if request.header(name).is_some() {
                fx.remove_request_header(name.clone());
            }
        }
        match decision {
            Decision::Allow { identity, strip } => {
                let mut tier = "none";
                if let Some(identity) = &identity {
                    fx.set_request_header(CONSUMER_HEADER, &identity.consumer);
                    fx.set_state(state::CONSUMER, &identity.consumer);
                    if let Some(t) = &identity.tier {
                        fx.set_request_header(TIER_HEADER, t);
                        fx.set_state(state::TIER, t);
                        tier = t;
                    }
                    for (name, value) in &identity.headers {
                        fx.set_request_header(name.clone(), value);
                    }
                }
                strip_credentials(&strip, &request, fx);
                self.metrics.count(&env, "allowed", "none", tier);
            }
            Decision::Deny { reason, scopes } => {
                self.deny(&env, fx, reason, &scopes, &config.realm, &request);
            }
        }
        HeadersFlow::Continue
    }
}

impl AuthHttp {
    fn deny(
        &self,
        env: &Env<'_>,
        fx: &mut Effects,
        reason: Reason,
        scopes: &[String],
        realm: &str,
        request: &RequestView,
    ) {
        let response = reason.response(realm, scopes);
        self.metrics.count(env, "denied", reason.code(), "none");
        // The path without its query: a query parameter may carry a credential.
        fx.refuse_with(
            &response,
            ClientApi::of_path(request.path()),
            format!("{} {}", request.method(), request.path()),
        );
    }
}

/// Records the removal of the credentials found at `locations`: their headers, their query
/// parameters (one new `:path`) and their cookies (one new `cookie` header, or none).
fn strip_credentials(locations: &[Location], request: &RequestView, fx: &mut Effects) {
    let mut path: Option<String> = None;
    let mut cookies: Option<Option<Vec<u8>>> = None;
    for location in locations {
        match location {
            Location::Authorization => fx.remove_request_header("authorization"),
            Location::Header(name) => fx.remove_request_header(name.clone()),
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
        fx.set_path(path);
    }
    match cookies {
        Some(Some(rest)) => fx.set_request_header("cookie", rest),
        Some(None) => fx.remove_request_header("cookie"),
        None => {}
    }
}
