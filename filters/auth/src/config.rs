//! The auth filter's configuration: JSON in, checked and ready-to-use types out.
//!
//! Every problem is reported with its JSON path, all in one pass (see `portico_core::config`).

use std::collections::HashMap;
use std::rc::Rc;

use std::ops::RangeInclusive;

use portico_core::config::{read_bytes, read_value, Errors, Node, Object};
use portico_core::header::{cookie_name_problem, name_problem, value_problem, write_problem, Writer};
use portico_core::identity::{consumer_id, parse_consumer_id, valid_namespace};
use portico_core::refusal::RefusalLog;
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
    pub refusal_log: RefusalLog,
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
    /// The namespace of this provider's consumer ids: `consumer_namespace`, else `name`.
    pub namespace: String,
    /// Whether `consumer_namespace` was written (a deliberate choice, which may be shared).
    pub namespace_explicit: bool,
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
    /// A larger answer is a failed fetch.
    pub max_bytes: usize,
    /// Whether `oct` keys (shared secrets) in the document are used.
    pub accept_shared_secrets: bool,
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
    /// The namespace of API-key consumer ids (`namespace`, default `apikey`).
    pub namespace: String,
    /// Whether `namespace` was written.
    pub namespace_explicit: bool,
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
    /// The consumer id, `<namespace>:<name>` (see `portico_core::identity`).
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
    /// Consumer ids, checked at load to be in a namespace that exists.
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
const TOKEN_BYTES: RangeInclusive<u64> = 256..=65536;
const DEFAULT_CACHE_ENTRIES: u64 = 1024;
/// An entry holds an identity (consumer, tier, scopes, claim headers): a few hundred bytes.
const CACHE_ENTRIES: RangeInclusive<u64> = 0..=100_000;
const DEFAULT_CLOCK_SKEW: u64 = 30;
const CLOCK_SKEW: RangeInclusive<u64> = 0..=600;
const DEFAULT_REFRESH_SECONDS: u64 = 300;
const REFRESH_SECONDS: RangeInclusive<u64> = 1..=86_400;
const DEFAULT_TIMEOUT_MS: u64 = 5000;
const TIMEOUT_MS: RangeInclusive<u64> = 100..=60_000;
const DEFAULT_JWKS_BYTES: u64 = 256 * 1024;
const JWKS_BYTES: RangeInclusive<u64> = 1024..=4 * 1024 * 1024;
const MAX_REALM: usize = 128;
/// The namespace of API-key consumers unless `api_keys.namespace` says otherwise.
pub const API_KEY_NAMESPACE: &str = "apikey";

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
    let realm_ok = realm.len() <= MAX_REALM
        && realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if !realm_ok {
        root.field_error(
            "realm",
            errors,
            format!("must be printable ASCII without quotes or backslashes, at most {MAX_REALM} bytes"),
        );
    }
    let jwt = root.opt("jwt").and_then(|n| read_jwt(&n, errors));
    let api_keys = root.opt("api_keys").and_then(|n| read_api_keys(&n, errors));
    let namespaces = check_namespaces(jwt.as_ref(), api_keys.as_ref(), root.path(), errors);
    if let Some(jwt) = &jwt {
        check_claim_headers(jwt, api_keys.as_ref(), root.path(), errors);
    }

    let mut rules = Vec::new();
    // The configuration index of each rule kept, so errors name the right one after a skip.
    for node in root.array("routes", errors) {
        let Some(mut obj) = node.object(errors) else {
            continue;
        };
        let m = obj.req("match", errors).and_then(|n| RouteMatch::parse(&n, errors));
        let rule = read_rule(&mut obj, &namespaces, errors);
        obj.finish(errors);
        if let (Some(m), Some(rule)) = (m, rule) {
            check_rule(&rule, node.path(), jwt.is_some(), api_keys.is_some(), errors);
            rules.push((node.path().to_owned(), m, rule));
        }
    }
    let routes = RouteTable::build_at(rules, errors);

    // Without a `default`, unmatched requests need a credential: fail closed. A `default` that
    // does not parse has been reported; the fallback only keeps reading the rest.
    let default_rule = root
        .opt("default")
        .and_then(|n| n.object(errors))
        .and_then(|mut obj| {
            let rule = read_rule(&mut obj, &namespaces, errors);
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
    let refusal_log = RefusalLog::read(&mut root, errors);
    root.finish(errors);

    let mut owned_headers = vec![
        portico_core::contract::header::CONSUMER.to_owned(),
        portico_core::contract::header::TIER.to_owned(),
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
        refusal_log,
    }
}

/// Every consumer namespace in use. Two credential sources may share a namespace (and with it
/// their consumers' rate limits, budgets and cache entries) only when at least one of them says
/// so with `consumer_namespace` or `namespace`: never by the accident of a provider named
/// `apikey`.
fn check_namespaces(
    jwt: Option<&JwtConfig>,
    api_keys: Option<&ApiKeyConfig>,
    root: &str,
    errors: &mut Errors,
) -> Vec<String> {
    // (namespace, set explicitly, JSON path of the source)
    let mut sources: Vec<(&str, bool, String)> = Vec::new();
    for (i, p) in jwt.iter().flat_map(|j| j.providers.iter().enumerate()) {
        sources.push((&p.namespace, p.namespace_explicit, format!("{root}.jwt.providers[{i}]")));
    }
    if let Some(keys) = api_keys {
        sources.push((&keys.namespace, keys.namespace_explicit, format!("{root}.api_keys")));
    }
    let mut namespaces: Vec<String> = Vec::new();
    for (i, (namespace, explicit, path)) in sources.iter().enumerate() {
        let earlier = sources.iter().take(i).find(|(ns, _, _)| ns == namespace);
        if let Some((_, earlier_explicit, earlier_path)) = earlier {
            if !explicit && !earlier_explicit {
                errors.push(
                    path,
                    format!(
                        "would share the consumer namespace {namespace:?} with {earlier_path} by default; \
                         set `consumer_namespace` (or `api_keys.namespace`) to share it deliberately, or rename"
                    ),
                );
            }
        }
        if !namespace.is_empty() && !namespaces.iter().any(|n| n == namespace) {
            namespaces.push((*namespace).to_owned());
        }
    }
    namespaces
}

/// Why `name` may not receive a claim, if it may not. Claims are the token holder's words: they
/// must never land where Envoy, Portico or the upstream reads something else. Beyond what no
/// configured header write may touch (pseudo-headers, framing, `host`, `x-portico-*`), a claim
/// header is a lowercase `x-` name outside Envoy's, the forwarding and the credential headers.
fn claim_header_problem(name: &str) -> Option<String> {
    if let Some(problem) = write_problem(name, Writer::Operation) {
        return Some(problem);
    }
    let reason = if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        // No `_` either: CGI-style upstreams read `x_a` and `x-a` as one header.
        "claim header names use lowercase letters, digits and `-` only"
    } else if name.starts_with("x-envoy-") {
        "`x-envoy-` headers steer Envoy"
    } else if name.starts_with("x-forwarded-") || name == "x-real-ip" {
        "forwarding headers describe the client connection"
    } else if matches!(name, "x-api-key" | "x-request-id") {
        "this header already means something to the gateway"
    } else if !name.starts_with("x-") {
        "claim headers must start with `x-` (standard headers such as authorization, cookie, \
         forwarded or via keep their meaning)"
    } else {
        return None;
    };
    Some(format!("{name:?}: {reason}"))
}

/// Claim headers must not be where a credential is read from, and one header takes one claim.
fn check_claim_headers(jwt: &JwtConfig, api_keys: Option<&ApiKeyConfig>, root: &str, errors: &mut Errors) {
    let source_headers: Vec<&str> = jwt
        .sources
        .iter()
        .chain(api_keys.iter().flat_map(|k| &k.sources))
        .filter_map(|s| match s {
            TokenSource::Header(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for (i, provider) in jwt.providers.iter().enumerate() {
        let path = format!("{root}.jwt.providers[{i}].claim_headers");
        for (n, (claim, header)) in provider.claim_headers.iter().enumerate() {
            if source_headers.contains(&header.as_str()) {
                errors.push(
                    &path,
                    format!("claim {claim:?} would write {header:?}, where credentials are read from"),
                );
            }
            let twice = provider.claim_headers.iter().take(n).find(|(_, h)| h == header);
            if let Some((first, _)) = twice {
                errors.push(&path, format!("claims {first:?} and {claim:?} both write {header:?}"));
            }
        }
    }
}

fn read_rule(obj: &mut Object<'_>, namespaces: &[String], errors: &mut Errors) -> Option<Rule> {
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
    let allow = obj
        .opt("allow")
        .map(|n| read_access(&n, namespaces, errors))
        .unwrap_or_default();
    let deny = obj
        .opt("deny")
        .map(|n| read_access(&n, namespaces, errors))
        .unwrap_or_default();
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

/// An `allow` or `deny` list. Consumers are ids in a namespace that exists: a bare `alice`,
/// or a namespace no credential source has, could never match, and an `allow` that can never
/// match is as silent as a typo gets.
fn read_access(node: &Node<'_>, namespaces: &[String], errors: &mut Errors) -> Access {
    let Some(mut obj) = node.object(errors) else {
        return Access::default();
    };
    let mut consumers = Vec::new();
    for item in obj.array("consumers", errors) {
        let Some(id) = item.non_empty_str(errors) else {
            continue;
        };
        match parse_consumer_id(id) {
            Err(message) => item.error(errors, message),
            Ok((namespace, _)) if !namespaces.iter().any(|n| n == namespace) => item.error(
                errors,
                format!(
                    "{id:?}: no JWT provider or API-key set has the consumer namespace {namespace:?} (known: {})",
                    namespaces.join(", ")
                ),
            ),
            Ok(_) => consumers.push(id.to_owned()),
        }
    }
    let access = Access {
        consumers,
        tiers: obj.narrowing_list("tiers", errors),
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
            Some(k) => match name.as_ref().and_then(|n| n.non_empty_str(errors).map(|s| (n, s))) {
                Some((node, name)) => {
                    let lower = name.to_ascii_lowercase();
                    let problem = match k {
                        1 => name_problem(name).or_else(|| {
                            lower.starts_with(portico_core::contract::header::PREFIX).then(|| {
                                format!(
                                    "{lower:?} is Portico's own header: auth removes every client-sent {} \
                                     header, so no credential could be read from it",
                                    portico_core::contract::header::PREFIX
                                )
                            })
                        }),
                        3 => cookie_name_problem(name),
                        _ => None,
                    };
                    node.report(problem, errors).then(|| match k {
                        1 => TokenSource::Header(lower),
                        2 => TokenSource::Query(name.to_owned()),
                        _ => TokenSource::Cookie(name.to_owned()),
                    })
                }
                None => {
                    if name.is_none() {
                        obj.field_error("name", errors, "required field is missing");
                    }
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
        .opt_u64_in("max_token_bytes", TOKEN_BYTES, errors)
        .unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    let cache_entries = obj
        .opt_u64_in("token_cache_entries", CACHE_ENTRIES, errors)
        .unwrap_or(DEFAULT_CACHE_ENTRIES);
    let nodes = obj.array("providers", errors);
    let mut providers: Vec<Provider> = Vec::new();
    for node in &nodes {
        let Some(provider) = read_provider(node, errors) else {
            continue;
        };
        if let Some(i) = providers.iter().position(|p| p.name == provider.name) {
            errors.push(
                &format!("{}.name", node.path()),
                format!("provider name {:?} is taken by $.jwt.providers[{i}]", provider.name),
            );
        }
        for issuer in &provider.issuers {
            if let Some(i) = providers.iter().position(|p| p.issuers.contains(issuer)) {
                errors.push(
                    &format!("{}.issuers", node.path()),
                    format!(
                        "issuer {issuer:?} is listed by $.jwt.providers[{i}] too: a token's `iss` picks one provider"
                    ),
                );
            }
        }
        providers.push(provider);
    }
    if nodes.is_empty() {
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
    let explicit = obj.opt_str("consumer_namespace", errors);
    let namespace = match explicit {
        Some(ns) => {
            if !valid_namespace(ns) {
                obj.field_error(
                    "consumer_namespace",
                    errors,
                    "must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes)",
                );
            }
            ns.to_owned()
        }
        None => {
            if !name.is_empty() && !valid_namespace(&name) {
                obj.field_error(
                    "name",
                    errors,
                    "is the provider's consumer namespace unless `consumer_namespace` is set, so it \
                     must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes)",
                );
            }
            name.clone()
        }
    };
    let issuers = obj.string_list("issuers", errors);
    let audiences = obj.string_list("audiences", errors);
    let clock_skew_seconds = obj
        .opt_u64_in("clock_skew_seconds", CLOCK_SKEW, errors)
        .unwrap_or(DEFAULT_CLOCK_SKEW);
    let required_claims = match obj.opt("required_claims") {
        Some(n) => n.string_list(errors).unwrap_or_default(),
        None => vec!["exp".to_owned()],
    };
    let consumer_claim = obj.opt_str("consumer_claim", errors).unwrap_or("sub").to_owned();
    let tier_claim = obj.opt_str("tier_claim", errors).map(str::to_owned);
    let default_tier = obj.opt("default_tier").and_then(|n| n.header_value(errors));
    let mut claim_headers = Vec::new();
    if let Some(mut map) = obj.opt("claim_headers").and_then(|n| n.object(errors)) {
        for (claim, header_node) in map.entries() {
            let Some(header) = header_node.non_empty_str(errors) else {
                continue;
            };
            if header_node.report(claim_header_problem(header), errors) {
                claim_headers.push((claim.to_owned(), header.to_owned()));
            }
        }
        map.finish(errors);
    }

    let mut static_keys = Vec::new();
    // Every `kid` written in this provider's keys, with where: a token names one key by it.
    let mut kids: Vec<(String, String)> = Vec::new();
    let mut check_kid = |item: &Node<'_>, at: String, errors: &mut Errors| {
        let Some(kid) = item.value().get("kid").and_then(Value::as_str) else {
            return;
        };
        if let Some((_, first)) = kids.iter().find(|(k, _)| k == kid) {
            errors.push(
                &at,
                format!("{kid:?} is the kid of {first} too: a token names its key by kid, so give each key its own"),
            );
        }
        kids.push((kid.to_owned(), item.path().to_owned()));
    };
    if let Some(jwks) = obj.opt("jwks") {
        static_keys.extend(keys::parse_inline_jwks(&jwks, errors));
        let items = jwks.value().get("keys").and_then(Value::as_array).into_iter().flatten();
        for (i, item) in items.enumerate() {
            let item = Node::new(format!("{}.keys[{i}]", jwks.path()), item);
            check_kid(&item, format!("{}.kid", item.path()), errors);
        }
    }
    for item in obj.array("keys", errors) {
        static_keys.extend(keys::parse_config_key(&item, errors));
        check_kid(&item, format!("{}.kid", item.path()), errors);
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
        namespace,
        namespace_explicit: explicit.is_some(),
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

/// Printable ASCII without spaces: what a request path or authority may be sent as.
fn request_line_safe(value: &str) -> bool {
    value.bytes().all(|b| b > 0x20 && b < 0x7f)
}

fn read_remote(node: &Node<'_>, errors: &mut Errors) -> Option<RemoteJwks> {
    let mut obj = node.object(errors)?;
    let cluster = obj.req_str("cluster", errors).map(str::to_owned);
    let path = obj.req_str("path", errors).map(str::to_owned);
    if path
        .as_ref()
        .is_some_and(|p| !p.starts_with('/') || !request_line_safe(p))
    {
        obj.field_error(
            "path",
            errors,
            "must start with '/' and hold no spaces or control characters",
        );
    }
    let authority = obj.opt_str("authority", errors).map(str::to_owned);
    if authority.as_deref().is_some_and(|a| !request_line_safe(a)) {
        obj.field_error("authority", errors, "must hold no spaces or control characters");
    }
    let refresh_seconds = obj
        .opt_u64_in("refresh_seconds", REFRESH_SECONDS, errors)
        .unwrap_or(DEFAULT_REFRESH_SECONDS);
    let timeout_ms = obj
        .opt_u64_in("timeout_ms", TIMEOUT_MS, errors)
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let max_bytes = obj
        .opt_u64_in("max_bytes", JWKS_BYTES, errors)
        .unwrap_or(DEFAULT_JWKS_BYTES);
    let accept_shared_secrets = obj.opt_bool("accept_shared_secrets", errors).unwrap_or(false);
    obj.finish(errors);
    let cluster = cluster?;
    Some(RemoteJwks {
        authority: authority.unwrap_or_else(|| cluster.clone()),
        cluster,
        path: path?,
        refresh_seconds,
        timeout_ms,
        max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        accept_shared_secrets,
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
    let explicit = obj.opt_str("namespace", errors);
    let namespace = explicit.unwrap_or(API_KEY_NAMESPACE).to_owned();
    if !valid_namespace(&namespace) {
        obj.field_error(
            "namespace",
            errors,
            "must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes)",
        );
    }
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
        let name_node = c.req("name", errors);
        let name = name_node
            .as_ref()
            .and_then(|n| n.non_empty_str(errors))
            .map(str::to_owned);
        if let (Some(n), Some(node)) = (&name, &name_node) {
            if names.contains(n) {
                node.error(errors, format!("duplicate consumer {n:?}"));
            } else {
                // It travels in `x-portico-consumer`.
                node.report(value_problem(n), errors);
            }
            names.push(n.clone());
        }
        let identity = Rc::new(Identity {
            consumer: consumer_id(&namespace, name.as_deref().unwrap_or_default()),
            tier: c.opt("tier").and_then(|n| n.header_value(errors)),
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
    Some(ApiKeyConfig {
        sources,
        namespace,
        namespace_explicit: explicit.is_some(),
        by_digest,
    })
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
