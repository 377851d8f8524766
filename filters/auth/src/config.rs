//! The auth filter's configuration: JSON in, checked and ready-to-use types out.
//!
//! Every problem is reported with its JSON path, all in one pass (see `portico_core::config`).

use std::collections::HashMap;
use std::rc::Rc;

use portico_core::config::{read_bytes, read_value, Errors, Node, Object};
use portico_core::route::{RouteMatch, RouteTable};
use serde_json::Value;

use crate::keys::{self, Key};

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    pub realm: String,
    pub jwt: Option<JwtConfig>,
    pub api_keys: Option<ApiKeyConfig>,
    pub routes: RouteTable<Rule>,
    pub default_rule: Rule,
    pub strip: StripPolicy,
    /// Every header auth owns on the upstream request: removed from the client's request first.
    pub owned_headers: Vec<String>,
}

#[derive(Debug)]
pub struct JwtConfig {
    pub sources: Vec<TokenSource>,
    pub max_token_bytes: usize,
    pub cache_entries: usize,
    pub providers: Vec<Provider>,
}

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub clock_skew_seconds: u64,
    pub required_claims: Vec<String>,
    pub consumer_claim: String,
    pub tier_claim: Option<String>,
    pub default_tier: Option<String>,
    /// Claim name to upstream header name.
    pub claim_headers: Vec<(String, String)>,
    /// Keys from inline JWKS, PEM and shared secrets.
    pub static_keys: Vec<Key>,
    pub remote: Option<RemoteJwks>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub refresh_seconds: u64,
    pub timeout_ms: u64,
}

/// Where a credential is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <value>`.
    Bearer,
    Header(String),
    Query(String),
    Cookie(String),
}

#[derive(Debug)]
pub struct ApiKeyConfig {
    pub sources: Vec<TokenSource>,
    /// SHA-256 digest of a key to the key's entry.
    pub by_digest: HashMap<[u8; 32], ApiKeyEntry>,
}

#[derive(Debug)]
pub struct ApiKeyEntry {
    pub identity: Rc<Identity>,
    pub revoked: bool,
}

/// Who the caller is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub consumer: String,
    pub tier: Option<String>,
    pub scopes: Vec<String>,
    /// Extra upstream headers (from `claim_headers`).
    pub headers: Vec<(String, String)>,
}

/// What one route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub accept: Accept,
    pub scopes: Vec<String>,
    pub allow: Access,
    pub deny: Access,
}

/// Which credential kinds a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// A public route: no credential needed, identity headers still cleared.
    None,
    Jwt,
    ApiKey,
    Any,
}

impl Accept {
    pub fn jwt(self) -> bool {
        matches!(self, Accept::Jwt | Accept::Any)
    }
    pub fn api_key(self) -> bool {
        matches!(self, Accept::ApiKey | Accept::Any)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub consumers: Vec<String>,
    pub tiers: Vec<String>,
}

impl Access {
    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty() && self.tiers.is_empty()
    }

    pub fn admits(&self, identity: &Identity) -> bool {
        self.consumers.contains(&identity.consumer)
            || identity
                .tier
                .as_ref()
                .is_some_and(|t| self.tiers.iter().any(|x| x == t))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripPolicy {
    pub jwt: bool,
    pub api_key: bool,
}

const DEFAULT_MAX_TOKEN_BYTES: u64 = 8192;
const DEFAULT_CACHE_ENTRIES: u64 = 1024;
const DEFAULT_CLOCK_SKEW: u64 = 30;
const DEFAULT_REFRESH_SECONDS: u64 = 300;
const DEFAULT_TIMEOUT_MS: u64 = 5000;

impl Config {
    /// Parses and checks the plugin configuration bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, Errors> {
        read_bytes(bytes, read_config)
    }

    pub fn from_value(value: &Value) -> Result<Config, Errors> {
        read_value(value, read_config)
    }

    pub fn remote_providers(&self) -> impl Iterator<Item = (usize, &RemoteJwks)> {
        self.jwt
            .iter()
            .flat_map(|j| j.providers.iter().enumerate())
            .filter_map(|(i, p)| p.remote.as_ref().map(|r| (i, r)))
    }
}

fn read_config(mut root: Object<'_>, errors: &mut Errors) -> Config {
    let realm = root.opt_str("realm", errors).unwrap_or("portico").to_owned();
    if realm.contains('"') || realm.contains('\\') {
        root.field_error("realm", errors, "must not contain quotes or backslashes");
    }
    let jwt = root.opt("jwt").and_then(|n| read_jwt(&n, errors));
    let api_keys = root.opt("api_keys").and_then(|n| read_api_keys(&n, errors));

    let mut rules = Vec::new();
    for (i, node) in root.array("routes", errors).into_iter().enumerate() {
        let Some(mut obj) = node.object(errors) else {
            continue;
        };
        let m = obj.req("match", errors).and_then(|n| RouteMatch::parse(&n, errors));
        let rule = read_rule(&mut obj, errors);
        obj.finish(errors);
        if let (Some(m), Some(rule)) = (m, rule) {
            check_rule(
                &rule,
                &format!("$.routes[{i}]"),
                jwt.is_some(),
                api_keys.is_some(),
                errors,
            );
            rules.push((m, rule));
        }
    }
    let routes = RouteTable::build(rules, |i| format!("$.routes[{i}]"), errors);

    // Without a `default`, unmatched requests need a credential: fail closed. A `default` that
    // does not parse has been reported; the fallback only keeps reading the rest.
    let default_rule = root
        .opt("default")
        .and_then(|n| n.object(errors))
        .and_then(|mut obj| {
            let rule = read_rule(&mut obj, errors);
            obj.finish(errors);
            rule
        })
        .unwrap_or(Rule {
            accept: Accept::Any,
            scopes: Vec::new(),
            allow: Access::default(),
            deny: Access::default(),
        });
    check_rule(&default_rule, "$.default", jwt.is_some(), api_keys.is_some(), errors);

    let strip = match root.opt("strip_credentials").and_then(|n| n.object(errors)) {
        Some(mut obj) => {
            let strip = StripPolicy {
                jwt: obj.opt_bool("jwt", errors).unwrap_or(false),
                api_key: obj.opt_bool("api_key", errors).unwrap_or(true),
            };
            obj.finish(errors);
            strip
        }
        None => StripPolicy {
            jwt: false,
            api_key: true,
        },
    };
    root.finish(errors);

    let mut owned_headers = vec![
        portico_core::identity::CONSUMER_HEADER.to_owned(),
        portico_core::identity::TIER_HEADER.to_owned(),
    ];
    for provider in jwt.iter().flat_map(|j| &j.providers) {
        for (_, header) in &provider.claim_headers {
            if !owned_headers.contains(header) {
                owned_headers.push(header.clone());
            }
        }
    }

    Config {
        realm,
        jwt,
        api_keys,
        routes,
        default_rule,
        strip,
        owned_headers,
    }
}

fn read_rule(obj: &mut Object<'_>, errors: &mut Errors) -> Option<Rule> {
    let accept = match obj
        .req("auth", errors)?
        .one_of(&["none", "jwt", "api_key", "any"], errors)?
    {
        0 => Accept::None,
        1 => Accept::Jwt,
        2 => Accept::ApiKey,
        _ => Accept::Any,
    };
    let scopes = obj.string_list("scopes", errors);
    let allow = obj.opt("allow").map(|n| read_access(&n, errors)).unwrap_or_default();
    let deny = obj.opt("deny").map(|n| read_access(&n, errors)).unwrap_or_default();
    Some(Rule {
        accept,
        scopes,
        allow,
        deny,
    })
}

fn check_rule(rule: &Rule, path: &str, has_jwt: bool, has_keys: bool, errors: &mut Errors) {
    let unusable = match rule.accept {
        Accept::Jwt => !has_jwt,
        Accept::ApiKey => !has_keys,
        Accept::Any => !has_jwt && !has_keys,
        Accept::None => false,
    };
    if unusable {
        errors.push(
            &format!("{path}.auth"),
            "accepts a credential kind that is not configured (add `jwt` or `api_keys`)",
        );
    }
    if rule.accept == Accept::None && (!rule.scopes.is_empty() || !rule.allow.is_empty() || !rule.deny.is_empty()) {
        errors.push(
            &format!("{path}.auth"),
            "a public route (\"none\") cannot require scopes or consumers",
        );
    }
}

fn read_access(node: &Node<'_>, errors: &mut Errors) -> Access {
    let Some(mut obj) = node.object(errors) else {
        return Access::default();
    };
    let access = Access {
        consumers: obj.string_list("consumers", errors),
        tiers: obj.string_list("tiers", errors),
    };
    obj.finish(errors);
    access
}

fn read_sources(
    node: Option<Node<'_>>,
    default: Vec<TokenSource>,
    allow_cookie: bool,
    errors: &mut Errors,
) -> Vec<TokenSource> {
    let Some(node) = node else { return default };
    let Some(items) = node.array(errors) else {
        return default;
    };
    if items.is_empty() {
        node.error(errors, "must list at least one source");
    }
    let kinds: &[&str] = if allow_cookie {
        &["bearer", "header", "query", "cookie"]
    } else {
        &["bearer", "header", "query"]
    };
    let mut sources = Vec::new();
    for item in items {
        let Some(mut obj) = item.object(errors) else {
            continue;
        };
        let kind = obj.req("type", errors).and_then(|n| n.one_of(kinds, errors));
        let name = obj.opt("name");
        let source = match kind {
            Some(0) => {
                if name.is_some() {
                    obj.field_error("name", errors, "a bearer source has no name");
                }
                Some(TokenSource::Bearer)
            }
            Some(k) => match name.and_then(|n| n.non_empty_str(errors)) {
                Some(name) => {
                    let lower = name.to_ascii_lowercase();
                    Some(match k {
                        1 => TokenSource::Header(lower),
                        2 => TokenSource::Query(name.to_owned()),
                        _ => TokenSource::Cookie(name.to_owned()),
                    })
                }
                None => {
                    obj.field_error("name", errors, "required field is missing");
                    None
                }
            },
            None => None,
        };
        obj.finish(errors);
        sources.extend(source);
    }
    sources
}

fn read_jwt(node: &Node<'_>, errors: &mut Errors) -> Option<JwtConfig> {
    let mut obj = node.object(errors)?;
    let sources = read_sources(obj.opt("sources"), vec![TokenSource::Bearer], true, errors);
    let max_token_bytes = obj
        .opt_u64("max_token_bytes", errors)
        .unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(256..=65536).contains(&max_token_bytes) {
        obj.field_error("max_token_bytes", errors, "must be between 256 and 65536");
    }
    let cache_entries = obj
        .opt_u64("token_cache_entries", errors)
        .unwrap_or(DEFAULT_CACHE_ENTRIES);
    if cache_entries > 1_000_000 {
        obj.field_error("token_cache_entries", errors, "must be at most 1000000");
    }
    let providers: Vec<Provider> = obj
        .array("providers", errors)
        .iter()
        .filter_map(|n| read_provider(n, errors))
        .collect();
    if providers.is_empty() {
        obj.field_error("providers", errors, "must list at least one provider");
    }
    if providers.len() > 1 && providers.iter().any(|p| p.issuers.is_empty()) {
        obj.field_error(
            "providers",
            errors,
            "with several providers, each must list its `issuers` (tokens are routed to a provider by `iss`)",
        );
    }
    obj.finish(errors);
    Some(JwtConfig {
        sources,
        max_token_bytes: usize::try_from(max_token_bytes).unwrap_or(usize::MAX),
        cache_entries: usize::try_from(cache_entries).unwrap_or(0),
        providers,
    })
}

fn read_provider(node: &Node<'_>, errors: &mut Errors) -> Option<Provider> {
    let mut obj = node.object(errors)?;
    let name = obj.req_str("name", errors).unwrap_or_default().to_owned();
    let issuers = obj.string_list("issuers", errors);
    let audiences = obj.string_list("audiences", errors);
    let clock_skew_seconds = obj.opt_u64("clock_skew_seconds", errors).unwrap_or(DEFAULT_CLOCK_SKEW);
    if clock_skew_seconds > 600 {
        obj.field_error("clock_skew_seconds", errors, "must be at most 600");
    }
    let required_claims = match obj.opt("required_claims") {
        Some(n) => n.string_list(errors).unwrap_or_default(),
        None => vec!["exp".to_owned()],
    };
    let consumer_claim = obj.opt_str("consumer_claim", errors).unwrap_or("sub").to_owned();
    let tier_claim = obj.opt_str("tier_claim", errors).map(str::to_owned);
    let default_tier = obj.opt_str("default_tier", errors).map(str::to_owned);
    let mut claim_headers = Vec::new();
    if let Some(mut map) = obj.opt("claim_headers").and_then(|n| n.object(errors)) {
        for (claim, header_node) in map.entries() {
            let Some(header) = header_node.non_empty_str(errors) else {
                continue;
            };
            let header = header.to_ascii_lowercase();
            if !valid_header_name(&header) {
                header_node.error(errors, "not a valid header name");
            } else if !header.starts_with("x-") {
                header_node.error(errors, "claim headers must start with `x-`");
            } else {
                claim_headers.push((claim.to_owned(), header));
            }
        }
        map.finish(errors);
    }

    let mut static_keys = Vec::new();
    if let Some(jwks) = obj.opt("jwks") {
        static_keys.extend(keys::parse_inline_jwks(&jwks, errors));
    }
    for item in obj.array("keys", errors) {
        static_keys.extend(keys::parse_config_key(&item, errors));
    }
    let remote = obj.opt("remote_jwks").and_then(|n| read_remote(&n, errors));
    if static_keys.is_empty() && remote.is_none() {
        errors.push(
            &format!("{}.jwks", node.path()),
            "a provider needs keys: `jwks`, `keys` or `remote_jwks`",
        );
    }
    obj.finish(errors);
    Some(Provider {
        name,
        issuers,
        audiences,
        clock_skew_seconds,
        required_claims,
        consumer_claim,
        tier_claim,
        default_tier,
        claim_headers,
        static_keys,
        remote,
    })
}

fn read_remote(node: &Node<'_>, errors: &mut Errors) -> Option<RemoteJwks> {
    let mut obj = node.object(errors)?;
    let cluster = obj.req_str("cluster", errors).map(str::to_owned);
    let path = obj.req_str("path", errors).map(str::to_owned);
    if path.as_ref().is_some_and(|p| !p.starts_with('/')) {
        obj.field_error("path", errors, "must start with '/'");
    }
    let authority = obj.opt_str("authority", errors).map(str::to_owned);
    let refresh_seconds = obj
        .opt_u64("refresh_seconds", errors)
        .unwrap_or(DEFAULT_REFRESH_SECONDS);
    if refresh_seconds == 0 {
        obj.field_error("refresh_seconds", errors, "must be at least 1");
    }
    let timeout_ms = obj.opt_u64("timeout_ms", errors).unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        obj.field_error("timeout_ms", errors, "must be between 1 and 60000");
    }
    obj.finish(errors);
    let cluster = cluster?;
    Some(RemoteJwks {
        authority: authority.unwrap_or_else(|| cluster.clone()),
        cluster,
        path: path?,
        refresh_seconds,
        timeout_ms,
    })
}

fn read_api_keys(node: &Node<'_>, errors: &mut Errors) -> Option<ApiKeyConfig> {
    let mut obj = node.object(errors)?;
    let sources = read_sources(
        obj.opt("sources"),
        vec![TokenSource::Header("x-api-key".to_owned()), TokenSource::Bearer],
        false,
        errors,
    );
    let mut by_digest = HashMap::new();
    let consumers = obj.array("consumers", errors);
    if consumers.is_empty() {
        obj.field_error("consumers", errors, "must list at least one consumer");
    }
    let mut names: Vec<String> = Vec::new();
    for consumer in consumers {
        let Some(mut c) = consumer.object(errors) else {
            continue;
        };
        let name = c.req_str("name", errors).map(str::to_owned);
        if let Some(n) = &name {
            if names.contains(n) {
                c.field_error("name", errors, format!("duplicate consumer {n:?}"));
            }
            names.push(n.clone());
        }
        let identity = Rc::new(Identity {
            consumer: name.unwrap_or_default(),
            tier: c.opt_str("tier", errors).map(str::to_owned),
            scopes: c.string_list("scopes", errors),
            headers: Vec::new(),
        });
        let keys = c.array("keys", errors);
        if keys.is_empty() {
            c.field_error("keys", errors, "must list at least one key digest");
        }
        for key in keys {
            let Some(mut k) = key.object(errors) else {
                continue;
            };
            let digest = k.req("sha256", errors).and_then(|n| {
                let parsed = n.str(errors).and_then(parse_digest);
                if parsed.is_none() {
                    n.error(
                        errors,
                        "expected 64 hex digits (the SHA-256 of the key; see `make api-key`)",
                    );
                }
                parsed
            });
            let revoked = k.opt_bool("revoked", errors).unwrap_or(false);
            let _ = k.opt_str("id", errors);
            k.finish(errors);
            if let Some(digest) = digest {
                let entry = ApiKeyEntry {
                    identity: Rc::clone(&identity),
                    revoked,
                };
                if by_digest.insert(digest, entry).is_some() {
                    key.error(errors, "the same key digest is listed twice");
                }
            }
        }
        c.finish(errors);
    }
    obj.finish(errors);
    Some(ApiKeyConfig { sources, by_digest })
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
