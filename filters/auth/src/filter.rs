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
use portico_core::clock::unix_seconds;
use portico_core::config::Errors;
use portico_core::contract::{header, root_id, state};
use portico_core::refusal::RefusalLog;
use portico_core::request::{remove_cookie, remove_query_param, RequestSource};
use portico_core::response::ClientApi;
use portico_host::metrics::{Counter, Family};
use portico_host::{CallResponse, Effects, Env, Filter, HeadersFlow, HttpCall, HttpFilter, RequestHeaders, RootHost};
use serde_json::Value;

use crate::authn::{too_large, Authenticator, Decision, FetchOutcome, Location};
use crate::config::Config;
use crate::reason::Reason;

const NAME: &str = root_id::AUTH;
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
        // The decision looks at every value of repeated headers (`authorization`, `cookie`), and
        // every request is checked for client-sent identity headers: one read of the whole map
        // answers all of them, where reading name by name would cost a host call each.
        let _ = headers.all();
        let request: &dyn RequestSource = headers;
        let now = unix_seconds(env.now());
        let (decision, config) = match self.auth.try_borrow_mut() {
            Ok(mut auth) => (auth.decide(request, now), Rc::clone(auth.config())),
            Err(_) => {
                error!("{NAME}: authenticator busy (re-entrant call); refusing the request");
                self.deny(&env, fx, Reason::Internal, &[], "portico", request);
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
                    fx.set_request_header(header::CONSUMER, &identity.consumer);
                    fx.set_state(state::CONSUMER, &identity.consumer);
                    if let Some(t) = &identity.tier {
                        fx.set_request_header(header::TIER, t);
                        fx.set_state(state::TIER, t);
                        tier = t;
                    }
                    for (name, value) in &identity.headers {
                        fx.set_request_header(name.clone(), value);
                    }
                }
                strip_credentials(&strip, request, fx);
                self.metrics.count(&env, "allowed", "none", tier);
            }
            Decision::Deny { reason, scopes } => {
                self.deny(&env, fx, reason, &scopes, &config.realm, request);
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
        request: &dyn RequestSource,
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
fn strip_credentials(locations: &[Location], request: &dyn RequestSource, fx: &mut Effects) {
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
                    None => request.headers_named("cookie").join(&b"; "[..]),
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

#[cfg(test)]
mod tests {
    use super::*;

    use base64::Engine;
    use jwt_simple::prelude::{Claims, HS256Key, MACLike};
    use portico_host::host::Map;
    use portico_host::mock::{Action, MockEnvoy, Mutation};
    use portico_host::{entry, Entry};
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    static REGISTRY: &[Entry] = &[entry::<Auth>()];

    const SECRET: &[u8; 32] = b"shell-test-secret-of-32-bytes-ok";
    const NOW: u64 = 1_700_000_000;

    fn hex(key: &str) -> String {
        hmac_sha256::Hash::hash(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn token(sub: &str, kid: &str) -> String {
        let custom = json!({"sub": sub, "tier": "gold", "exp": NOW + 600});
        let custom = custom.as_object().cloned().unwrap_or_default();
        let mut claims = Claims::with_custom_claims(custom, jwt_simple::prelude::Duration::from_secs(0));
        claims.issued_at = None;
        claims.expires_at = None;
        claims.invalid_before = None;
        HS256Key::from_bytes(SECRET)
            .with_key_id(kid)
            .authenticate(claims)
            .unwrap_or_default()
    }

    fn start(config: serde_json::Value) -> MockEnvoy {
        let envoy = MockEnvoy::start(REGISTRY, NAME, &config.to_string(), false).unwrap_or_else(|e| panic!("{e:?}"));
        envoy.host().set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        envoy
    }

    fn local() -> MockEnvoy {
        start(json!({
            "jwt": {
                "sources": [{"type": "bearer"}, {"type": "cookie", "name": "session"}],
                "providers": [{
                    "name": "p",
                    "tier_claim": "tier",
                    "keys": [{"alg": "HS256", "kid": "h", "secret": std::str::from_utf8(SECRET).unwrap_or_default()}]
                }]
            },
            "api_keys": {
                "sources": [{"type": "query", "name": "key"}],
                "consumers": [{"name": "acme", "tier": "pro", "keys": [{"sha256": hex("k-acme")}]}]
            },
            "strip_credentials": {"jwt": true, "api_key": true},
            "routes": [{"match": {"path": "/open"}, "auth": "none"}],
            "default": {"auth": "any"},
            "refusal_log": {"level": "debug", "per_second": 3}
        }))
    }

    fn request_headers(envoy: &MockEnvoy) -> Vec<(String, String)> {
        envoy.host().headers(Map::RequestHeaders)
    }

    #[test]
    fn a_valid_token_sets_the_identity_and_spoofed_identity_headers_are_removed_first() {
        let envoy = local();
        let mut s = envoy.stream();
        let bearer = format!("Bearer {}", token("alice", "h"));
        let action = s.request_headers(
            &[
                (":method", "GET"),
                (":path", "/v1/x"),
                ("authorization", &bearer),
                ("x-portico-consumer", "spoofed"),
                ("x-portico-tier", "spoofed"),
            ],
            true,
        );
        assert_eq!(action, Action::Continue);
        assert_eq!(
            request_headers(&envoy),
            vec![
                (":method".to_owned(), "GET".to_owned()),
                (":path".to_owned(), "/v1/x".to_owned()),
                ("x-portico-consumer".to_owned(), "p:alice".to_owned()),
                ("x-portico-tier".to_owned(), "gold".to_owned()),
            ],
            "spoofed headers gone, the identity set, the stripped token gone"
        );
        let mutations = envoy.host().mutations();
        assert_eq!(
            mutations.first(),
            Some(&Mutation::RemoveHeader(
                Map::RequestHeaders,
                "x-portico-consumer".into()
            ))
        );
        assert!(mutations.contains(&Mutation::SetProperty(
            vec![state::CONSUMER.to_owned()],
            b"p:alice".to_vec()
        )));
        assert!(mutations.contains(&Mutation::SetProperty(vec![state::TIER.to_owned()], b"gold".to_vec())));
        assert_eq!(
            envoy
                .host()
                .metric("portico_auth_requests_total;outcome=allowed;reason=none;tier=gold"),
            Some(1)
        );
    }

    /// Host calls of an allowed request with a bearer token (reported by the port of issue 14:
    /// the SDK shell made the same calls, with the whole map read as one serialised buffer).
    #[test]
    fn host_calls_per_request_are_bounded() {
        let envoy = local();
        let bearer = format!("Bearer {}", token("alice", "h"));
        let headers = [
            (":method", "GET"),
            (":path", "/v1/x"),
            ("authorization", bearer.as_str()),
        ];
        let mut first = envoy.stream();
        let _ = first.request_headers(&headers, true);
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(&headers, true), Action::Continue);
        // The map once, the clock, consumer and tier as headers and filter state, the token
        // stripped, one metric (defined by the first request only).
        assert_eq!(s.counts().request_headers, 1 + 1 + 4 + 1 + 1, "{}", s.counts());
        assert_eq!(first.counts().request_headers, 8 + 1, "{}", first.counts());
        let mut refused = envoy.stream();
        let _ = refused.request_headers(&[(":method", "GET"), (":path", "/v1/x")], true);
        // The map, the clock, the metric (a new series), the clock for the log limit, the reply.
        assert_eq!(refused.counts().request_headers, 6, "{}", refused.counts());
    }

    #[test]
    fn credentials_in_the_query_and_cookies_are_stripped() {
        let envoy = local();
        let mut s = envoy.stream();
        let session = format!("a=1; session={}; b=2", token("bob", "h"));
        // An API key in the query and the same JWT kind twice would be two credentials: a
        // public route strips both without deciding on them.
        let action = s.request_headers(
            &[
                (":method", "GET"),
                (":path", "/open?x=1&key=k-acme&y=2"),
                ("cookie", &session),
            ],
            true,
        );
        assert_eq!(action, Action::Continue);
        assert_eq!(
            request_headers(&envoy),
            vec![
                (":method".to_owned(), "GET".to_owned()),
                (":path".to_owned(), "/open?x=1&y=2".to_owned()),
                ("cookie".to_owned(), "a=1; b=2".to_owned()),
            ]
        );
    }

    #[test]
    fn a_refusal_is_a_local_reply_with_its_status_code_challenge_and_details() {
        let envoy = local();
        let mut s = envoy.stream();
        let action = s.request_headers(&[(":method", "POST"), (":path", "/v1/messages?key=nope")], false);
        assert_eq!(action, Action::Pause);
        let Some(reply) = envoy.host().reply() else {
            panic!("no reply: {:?}", envoy.host().mutations())
        };
        assert_eq!(reply.status, 401);
        assert_eq!(reply.details, "portico-auth.invalid_api_key");
        assert_eq!(reply.code, Some("invalid_api_key"));
        assert_eq!(
            reply.context.as_deref(),
            Some("POST /v1/messages"),
            "the log line never carries the query (a credential may be there)"
        );
        let challenge = reply
            .headers
            .iter()
            .find(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"portico\", error=\"invalid_token\", error_description=\"the API key is not valid\"")
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        assert_eq!(
            body["error"]["code"], "invalid_api_key",
            "Anthropic's shape on /v1/messages: {body}"
        );
        assert_eq!(body["type"], "error");
        assert_eq!(
            envoy
                .host()
                .metric("portico_auth_requests_total;outcome=denied;reason=invalid_api_key;tier=none"),
            Some(1)
        );
        // A missing credential: the bare challenge.
        let mut s = envoy.stream();
        envoy.host().take_mutations();
        assert_eq!(
            s.request_headers(&[(":method", "GET"), (":path", "/x")], true),
            Action::Pause
        );
        let reply = envoy.host().reply();
        assert_eq!(reply.as_ref().map(|r| r.status), Some(401));
        assert_eq!(
            reply.and_then(|r| r.headers.into_iter().find(|(n, _)| n == "www-authenticate")),
            Some(("www-authenticate".into(), b"Bearer realm=\"portico\"".to_vec()))
        );
    }

    fn jwks(kid: &str) -> Vec<u8> {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        json!({"keys": [{"kty": "oct", "kid": kid, "alg": "HS256", "k": k}]})
            .to_string()
            .into_bytes()
    }

    fn remote() -> MockEnvoy {
        start(json!({
            "jwt": {"providers": [{
                "name": "r",
                "remote_jwks": {"cluster": "idp", "authority": "idp.example", "path": "/jwks",
                                "refresh_seconds": 60, "max_bytes": 1024, "accept_shared_secrets": true}
            }]},
            "default": {"auth": "jwt"}
        }))
    }

    #[test]
    fn remote_keys_are_fetched_on_the_tick_and_their_answer_loads_them() {
        let mut envoy = remote();
        assert!(envoy
            .host()
            .mutations()
            .contains(&Mutation::TickPeriod(Duration::from_millis(500))));
        let bearer = format!("Bearer {}", token("carol", "k1"));
        let ask = |envoy: &MockEnvoy| {
            envoy.host().take_mutations();
            let mut s = envoy.stream();
            let _ = s.request_headers(&[(":method", "GET"), (":path", "/x"), ("authorization", &bearer)], true);
            envoy.host().reply().map(|r| r.status)
        };
        assert_eq!(ask(&envoy), Some(503), "no key yet: keys_unavailable");

        envoy.host().take_mutations();
        envoy.tick();
        assert_eq!(
            envoy.host().mutations(),
            vec![Mutation::HttpCall {
                cluster: "idp".into(),
                headers: vec![
                    (":method".into(), "GET".into()),
                    (":path".into(), "/jwks".into()),
                    (":authority".into(), "idp.example".into()),
                    ("accept".into(), "application/json".into()),
                ]
            }]
        );
        envoy.http_call_response(1, Some((200, &jwks("k1"))));
        assert_eq!(envoy.host().metric("portico_auth_jwks_updated"), Some(1));
        assert_eq!(ask(&envoy), None, "the token verifies with the fetched key");
        assert!(envoy
            .host()
            .headers(Map::RequestHeaders)
            .contains(&("x-portico-consumer".to_owned(), "r:carol".to_owned())));

        // An answer to a call it did not make is ignored; a later refresh that is too large
        // fails without being read and keeps the keys.
        envoy.http_call_response(99, Some((200, &jwks("other"))));
        envoy.host().advance(Duration::from_secs(61));
        envoy.tick();
        envoy.http_call_response(2, Some((200, &[b' '; 1025])));
        assert_eq!(envoy.host().metric("portico_auth_jwks_fetch_failed"), Some(1));
        assert_eq!(envoy.host().metric("portico_auth_jwks_updated"), Some(1));
        assert_eq!(ask(&envoy), None, "the keys loaded before are kept");
    }

    #[test]
    fn a_failed_fetch_without_an_answer_is_counted() {
        let mut envoy = remote();
        envoy.tick();
        envoy.http_call_response(1, None);
        assert_eq!(envoy.host().metric("portico_auth_jwks_fetch_failed"), Some(1));
    }

    #[test]
    fn bad_configuration_is_refused_with_its_path() {
        let lines = MockEnvoy::start(REGISTRY, NAME, r#"{"default": {"auth": "maybe"}}"#, false)
            .err()
            .unwrap_or_default();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("portico-auth: invalid configuration: $.default.auth")),
            "{lines:?}"
        );
    }
}
