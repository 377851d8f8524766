//! The auth decision: which rule applies, which credential the request carries, whether it is
//! valid, and whether the caller may use the route. Pure: the host shell passes in the request
//! headers and the time, and applies the returned [`Decision`].

use std::rc::Rc;

use portico_core::request::{cookie_values, query_values, RequestSource};
use portico_core::secret::constant_time_eq;

use crate::cache::TokenCache;
use crate::config::{Accept, Config, Identity, Rule, TokenSource};
use crate::keys::{self, Key};
use crate::reason::Reason;
use crate::token;

/// What the shell must do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward it, with these identity headers (none on public routes), after removing the
    /// credentials found at `strip`.
    Allow {
        identity: Option<Rc<Identity>>,
        strip: Vec<Location>,
    },
    /// Answer locally. `scopes` are the route's required scopes, for the challenge.
    Deny { reason: Reason, scopes: Vec<String> },
}

/// Where a credential was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Authorization,
    Header(String),
    Query(String),
    Cookie(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jwt,
    ApiKey,
}

#[derive(Debug)]
struct Found {
    kind: Kind,
    /// `None`: present but not valid UTF-8.
    value: Option<String>,
    location: Location,
}

/// Keys fetched from a provider's `remote_jwks`, and when to fetch them next.
#[derive(Debug, Default)]
struct RemoteKeys {
    keys: Vec<Key>,
    /// When the current keys were loaded; `None`: never.
    loaded_at: Option<u64>,
    /// Bumped whenever the key set changes, so cached tokens are checked again.
    generation: u64,
    digest: Option<[u8; 32]>,
    next_fetch_at: u64,
    in_flight: bool,
}

/// What happened to a JWKS fetch, for the shell to log and count.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    Updated {
        keys: usize,
        skipped: Vec<String>,
    },
    Unchanged,
    /// `loaded_at`: when the keys still in use were loaded; `None` when no key was ever loaded,
    /// so the provider's tokens are refused with `keys_unavailable` until a fetch succeeds.
    Failed {
        message: String,
        loaded_at: Option<u64>,
    },
}

/// Retry delay after a failed JWKS fetch, capped by the provider's refresh interval.
const RETRY_SECONDS: u64 = 5;

/// Most signature checks one token may cost. A token names its key with `kid`; one without is
/// checked against the keys of its algorithm in order, and a provider with more keys than this
/// must send `kid`. Without the bound, a JWKS of many keys made one kid-less token cost a
/// signature check per key (60,000 keys: 185-345 ms of one worker's CPU).
pub const MAX_SIGNATURE_CHECKS: usize = 4;

/// The failure of an answer larger than `limit` bytes.
pub fn too_large(size: usize, limit: usize) -> String {
    format!("the answer has {size} bytes, more than remote_jwks.max_bytes ({limit})")
}

/// Per-worker authentication state around the immutable configuration.
#[derive(Debug)]
pub struct Authenticator {
    config: Rc<Config>,
    remote: Vec<RemoteKeys>,
    cache: TokenCache,
}

impl Authenticator {
    pub fn new(config: Rc<Config>) -> Self {
        let providers = config.jwt.as_ref().map_or(0, |j| j.providers.len());
        let capacity = config.jwt.as_ref().map_or(0, |j| j.cache_entries);
        Self {
            remote: (0..providers).map(|_| RemoteKeys::default()).collect(),
            cache: TokenCache::new(capacity),
            config,
        }
    }

    pub fn config(&self) -> &Rc<Config> {
        &self.config
    }

    // === Remote key sets ===

    /// Providers whose remote JWKS should be fetched now; each is marked in flight.
    pub fn fetches_due(&mut self, now: u64) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, _) in self.config.remote_providers() {
            if let Some(state) = self.remote.get_mut(i) {
                if !state.in_flight && now >= state.next_fetch_at {
                    state.in_flight = true;
                    due.push(i);
                }
            }
        }
        due
    }

    /// The largest JWKS answer `provider` accepts, so the shell can refuse a larger one before
    /// copying it into the VM.
    pub fn jwks_max_bytes(&self, provider: usize) -> usize {
        self.remote_config(provider).map_or(0, |r| r.max_bytes)
    }

    fn remote_config(&self, provider: usize) -> Option<&crate::config::RemoteJwks> {
        self.config
            .jwt
            .as_ref()
            .and_then(|j| j.providers.get(provider))
            .and_then(|p| p.remote.as_ref())
    }

    /// Records the result of a fetch for `provider`: `Ok(body)` for a 200 answer.
    pub fn fetch_done(&mut self, provider: usize, result: Result<&[u8], String>, now: u64) -> FetchOutcome {
        let Some(remote) = self.remote_config(provider).cloned() else {
            return FetchOutcome::Failed {
                message: "unknown provider".to_owned(),
                loaded_at: None,
            };
        };
        let Some(state) = self.remote.get_mut(provider) else {
            return FetchOutcome::Failed {
                message: "unknown provider".to_owned(),
                loaded_at: None,
            };
        };
        state.in_flight = false;
        let refresh = remote.refresh_seconds;
        let failed = |state: &mut RemoteKeys, message: String| {
            // Before the first success, retry every second: requests are waiting on it.
            let retry = if state.loaded_at.is_some() {
                RETRY_SECONDS.min(refresh)
            } else {
                1
            };
            state.next_fetch_at = now.saturating_add(retry);
            FetchOutcome::Failed {
                message,
                loaded_at: state.loaded_at,
            }
        };
        let body = match result {
            Ok(body) if body.len() > remote.max_bytes => return failed(state, too_large(body.len(), remote.max_bytes)),
            Ok(body) => body,
            Err(message) => return failed(state, message),
        };
        let digest = hmac_sha256::Hash::hash(body);
        if state.loaded_at.is_some() && state.digest == Some(digest) {
            state.next_fetch_at = now.saturating_add(refresh);
            return FetchOutcome::Unchanged;
        }
        match keys::parse_remote_jwks(body, remote.accept_shared_secrets) {
            Ok((keys, skipped)) => {
                let count = keys.len();
                state.keys = keys;
                state.loaded_at = Some(now);
                state.digest = Some(digest);
                state.generation = state.generation.wrapping_add(1);
                state.next_fetch_at = now.saturating_add(refresh);
                FetchOutcome::Updated { keys: count, skipped }
            }
            Err(message) => failed(state, message),
        }
    }

    /// Drops the in-flight mark of a fetch that could not be dispatched.
    pub fn fetch_not_sent(&mut self, provider: usize, now: u64) {
        if let Some(state) = self.remote.get_mut(provider) {
            state.in_flight = false;
            state.next_fetch_at = now.saturating_add(1);
        }
    }

    fn generation(&self, provider: usize) -> u64 {
        self.remote.get(provider).map_or(0, |r| r.generation)
    }

    // === The decision ===

    /// Decides a request at `now` (Unix seconds).
    pub fn decide(&mut self, request: &dyn RequestSource, now: u64) -> Decision {
        let config = Rc::clone(&self.config);
        let rule = config.routes.find(request).map_or(&config.default_rule, |m| m.rule);
        // Every credential of every kind, when stripping or the route needs them all; read once.
        let everything = if config.strip.jwt || config.strip.api_key || rule.accept == Accept::Any {
            collect(&config, Accept::Any, request)
        } else {
            Vec::new()
        };
        let strip = strip_locations(&config, &everything);
        if rule.accept == Accept::None {
            return Decision::Allow { identity: None, strip };
        }
        let deny = |reason| Decision::Deny {
            reason,
            scopes: rule.scopes.clone(),
        };
        let found = if rule.accept == Accept::Any {
            everything
        } else {
            collect(&config, rule.accept, request)
        };
        let Some(first) = found.first() else {
            return deny(Reason::MissingCredentials);
        };
        if found.iter().any(|f| f.kind != first.kind || f.value != first.value) {
            return deny(Reason::MultipleCredentials);
        }
        let Some(value) = first.value.as_deref() else {
            return deny(match first.kind {
                Kind::Jwt => Reason::MalformedToken,
                Kind::ApiKey => Reason::InvalidApiKey,
            });
        };
        let identity = match first.kind {
            Kind::Jwt => self.verify_jwt(value, now),
            Kind::ApiKey => verify_api_key(&config, value),
        };
        match identity.and_then(|id| authorize(rule, &id).map(|()| id)) {
            Ok(identity) => Decision::Allow {
                identity: Some(identity),
                strip,
            },
            Err(reason) => deny(reason),
        }
    }

    fn verify_jwt(&mut self, raw: &str, now: u64) -> Result<Rc<Identity>, Reason> {
        let config = Rc::clone(&self.config);
        let jwt = config.jwt.as_ref().ok_or(Reason::Internal)?;
        if raw.len() > jwt.max_token_bytes {
            return Err(Reason::TokenTooLarge);
        }
        let digest = hmac_sha256::Hash::hash(raw.as_bytes());
        if let Some(identity) = self.cache.get(&digest, now, |p| self.generation(p)) {
            return Ok(identity);
        }
        let parsed = token::parse(raw, jwt.max_token_bytes)?;
        let iss = token::issuer(&parsed.claims);
        // A lone provider checks `iss` itself (if it lists issuers); with several, `iss` picks one.
        let (index, provider) = if jwt.providers.len() == 1 {
            jwt.providers.first().map(|p| (0, p)).ok_or(Reason::Internal)?
        } else {
            jwt.providers
                .iter()
                .enumerate()
                .find(|(_, p)| iss.is_some_and(|iss| p.issuers.iter().any(|i| i == iss)))
                .ok_or(Reason::InvalidIssuer)?
        };
        let valid_until = token::check_claims(&parsed.claims, provider, now)?;

        let remote = self.remote.get(index);
        let waiting_for_remote = provider.remote.is_some() && remote.is_none_or(|r| r.loaded_at.is_none());
        let candidates = provider
            .static_keys
            .iter()
            .chain(remote.map(|r| r.keys.as_slice()).unwrap_or_default());
        let mut kid_known = false;
        let mut checks = 0;
        let mut verified = false;
        for key in candidates {
            if let (Some(want), Some(have)) = (&parsed.kid, &key.kid) {
                if want != have {
                    continue;
                }
            }
            kid_known = true;
            if key.alg != parsed.alg {
                continue;
            }
            if checks == MAX_SIGNATURE_CHECKS {
                break;
            }
            checks += 1;
            if key.verify(parsed.signing_input.as_bytes(), &parsed.signature) {
                verified = true;
                break;
            }
        }
        if checks == 0 {
            return Err(if waiting_for_remote && !kid_known {
                Reason::KeysUnavailable
            } else if parsed.kid.is_some() && !kid_known {
                Reason::UnknownKeyId
            } else {
                Reason::AlgorithmNotAllowed
            });
        }
        if !verified {
            return Err(Reason::InvalidSignature);
        }
        let identity = Rc::new(token::identity(&parsed.claims, provider)?);
        let generation = self.generation(index);
        self.cache
            .insert(digest, index, generation, valid_until, Rc::clone(&identity));
        Ok(identity)
    }
}

fn verify_api_key(config: &Config, key: &str) -> Result<Rc<Identity>, Reason> {
    let keys = config.api_keys.as_ref().ok_or(Reason::Internal)?;
    // The key is hashed before lookup, so lookup time depends on the digest only, which tells
    // an attacker nothing about stored keys; the final comparison is constant-time as well.
    let digest = hmac_sha256::Hash::hash(key.as_bytes());
    let (stored, entry) = keys.by_digest.get_key_value(&digest).ok_or(Reason::InvalidApiKey)?;
    if !constant_time_eq(stored, &digest) {
        return Err(Reason::InvalidApiKey);
    }
    if entry.revoked {
        return Err(Reason::RevokedApiKey);
    }
    Ok(Rc::clone(&entry.identity))
}

fn authorize(rule: &Rule, identity: &Identity) -> Result<(), Reason> {
    if !rule.deny.is_empty() && rule.deny.admits(identity) {
        return Err(if rule.deny.consumers.contains(&identity.consumer) {
            Reason::ConsumerNotAllowed
        } else {
            Reason::TierNotAllowed
        });
    }
    if !rule.allow.is_empty() && !rule.allow.admits(identity) {
        return Err(if rule.allow.consumers.is_empty() {
            Reason::TierNotAllowed
        } else {
            Reason::ConsumerNotAllowed
        });
    }
    if rule.scopes.iter().all(|s| identity.scopes.contains(s)) {
        Ok(())
    } else {
        Err(Reason::InsufficientScope)
    }
}

/// Where to remove credentials before the request goes upstream: every credential of a kind
/// `strip_credentials` names, wherever the configuration looks for that kind, on every route,
/// whichever credential (if any) the route used. A gateway credential is for the gateway: an API
/// key sent along on a public or JWT route must not reach the upstream either. A bearer value
/// counts as the kind its shape says when both kinds are read from `Authorization`.
/// `everything` is what [`collect`] finds for [`Accept::Any`].
fn strip_locations(config: &Config, everything: &[Found]) -> Vec<Location> {
    let mut locations: Vec<Location> = Vec::new();
    for found in everything {
        let strip = match found.kind {
            Kind::Jwt => config.strip.jwt,
            Kind::ApiKey => config.strip.api_key,
        };
        if strip && !locations.contains(&found.location) {
            locations.push(found.location.clone());
        }
    }
    locations
}

/// Every credential the request carries in a place the route's accepted kinds look at.
fn collect(config: &Config, accept: Accept, request: &dyn RequestSource) -> Vec<Found> {
    let jwt_sources = config
        .jwt
        .as_ref()
        .filter(|_| accept.jwt())
        .map(|j| j.sources.as_slice())
        .unwrap_or_default();
    let key_sources = config
        .api_keys
        .as_ref()
        .filter(|_| accept.api_key())
        .map(|k| k.sources.as_slice())
        .unwrap_or_default();
    let mut found = Vec::new();

    let bearer_jwt = jwt_sources.contains(&TokenSource::Bearer);
    let bearer_key = key_sources.contains(&TokenSource::Bearer);
    if bearer_jwt || bearer_key {
        // Envoy joins repeated `authorization` headers with commas, and a token68 value never
        // contains one: each comma-separated part is a credential of its own.
        let parts = request
            .headers_named("authorization")
            .into_iter()
            .flat_map(|value| value.split(|b| *b == b','));
        for part in parts {
            let Some(token) = bearer_token(part.trim_ascii()) else {
                continue;
            };
            let value = std::str::from_utf8(token).ok().map(str::to_owned);
            // With both kinds accepted as bearer, the token's shape tells them apart.
            let kind = match (bearer_jwt, bearer_key) {
                (true, true) if value.as_deref().is_some_and(token::looks_like_jwt) => Kind::Jwt,
                (true, true) => Kind::ApiKey,
                (true, false) => Kind::Jwt,
                _ => Kind::ApiKey,
            };
            found.push(Found {
                kind,
                value,
                location: Location::Authorization,
            });
        }
    }
    for (kind, sources) in [(Kind::Jwt, jwt_sources), (Kind::ApiKey, key_sources)] {
        for source in sources {
            match source {
                TokenSource::Bearer => {}
                TokenSource::Header(name) => {
                    for value in request.headers_named(name) {
                        found.push(Found {
                            kind,
                            value: std::str::from_utf8(value).ok().map(|v| v.trim().to_owned()),
                            location: Location::Header(name.clone()),
                        });
                    }
                }
                TokenSource::Query(name) => {
                    for value in query_values(request.query().unwrap_or_default(), name) {
                        found.push(Found {
                            kind,
                            value,
                            location: Location::Query(name.clone()),
                        });
                    }
                }
                TokenSource::Cookie(name) => {
                    for value in cookie_values(request.headers_named("cookie").into_iter(), name) {
                        found.push(Found {
                            kind,
                            value: std::str::from_utf8(value).ok().map(str::to_owned),
                            location: Location::Cookie(name.clone()),
                        });
                    }
                }
            }
        }
    }
    found
}

/// The token of an `Authorization: Bearer <token>` value; `None` for other schemes.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = value.get(6..)?;
    if !rest.is_empty() && !rest.first().is_some_and(u8::is_ascii_whitespace) {
        return None;
    }
    Some(rest.trim_ascii())
}

#[cfg(test)]
mod tests;
