//! Unit tests of the auth decision, compiled only under #[cfg(test)] (declared in authn.rs).

use super::*;
use portico_core::request::RequestView;

use base64::Engine;
use jwt_simple::prelude::{Claims, Duration, HS256Key, MACLike};
use serde_json::{json, Map, Value};

const SECRET: &[u8; 32] = b"unit-test-secret-of-32-bytes-len";
const NOW: u64 = 1_700_000_000;

fn hex(key: &str) -> String {
    hmac_sha256::Hash::hash(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(extra: Value) -> Config {
    let mut base = json!({
        "jwt": {
            "sources": [{"type": "bearer"}, {"type": "cookie", "name": "session"}],
            "token_cache_entries": 16,
            "providers": [{
                "name": "p",
                "issuers": ["iss"],
                "audiences": ["aud"],
                "clock_skew_seconds": 0,
                "tier_claim": "tier",
                "keys": [{"alg": "HS256", "kid": "h", "secret": std::str::from_utf8(SECRET).unwrap()}]
            }]
        },
        "api_keys": {
            "consumers": [
                {"name": "acme", "tier": "pro", "scopes": ["chat"], "keys": [{"sha256": hex("k-acme")}, {"sha256": hex("k-old"), "revoked": true}]},
                {"name": "bob", "keys": [{"sha256": hex("k-bob")}]}
            ]
        },
        "routes": [
            {"match": {"path": "/open"}, "auth": "none"},
            {"match": {"path": "/jwt"}, "auth": "jwt"},
            {"match": {"path": "/keys"}, "auth": "api_key"},
            {"match": {"path": "/chat"}, "auth": "any", "scopes": ["chat"]},
            {"match": {"path": "/pro"}, "auth": "any", "allow": {"tiers": ["pro"]}},
            {"match": {"path": "/not-bob"}, "auth": "any", "deny": {"consumers": ["apikey:bob"]}}
        ]
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    Config::from_value(&base).unwrap_or_else(|e| panic!("{e}"))
}

fn token(claims: Value) -> String {
    let custom: Map<String, Value> = claims.as_object().cloned().unwrap();
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(0));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    HS256Key::from_bytes(SECRET).with_key_id("h").authenticate(c).unwrap()
}

fn good(sub: &str) -> String {
    token(json!({"iss": "iss", "aud": "aud", "sub": sub, "exp": NOW + 60}))
}

fn request(path: &str, headers: &[(&str, &str)]) -> RequestView {
    let mut pairs = vec![
        (":method".to_owned(), b"GET".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), b"h".to_vec()),
    ];
    pairs.extend(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
    RequestView::new(pairs)
}

fn decide(auth: &mut Authenticator, path: &str, headers: &[(&str, &str)]) -> Decision {
    auth.decide(&request(path, headers), NOW)
}

fn consumer(d: &Decision) -> Option<&str> {
    match d {
        Decision::Allow { identity, .. } => identity.as_deref().map(|i| i.consumer.as_str()),
        Decision::Deny { .. } => None,
    }
}

fn reason(d: &Decision) -> Option<Reason> {
    match d {
        Decision::Deny { reason, .. } => Some(*reason),
        Decision::Allow { .. } => None,
    }
}

/// Name, path, headers, and the consumer allowed (`None`: public) or the reason refused.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, String)>,
    Result<Option<&'static str>, Reason>,
);

#[test]
fn decisions_by_case() {
    let bearer = |t: &str| format!("Bearer {t}");
    let alice = good("alice");
    let cases: Vec<Case> = vec![
        ("public route needs nothing", "/open", vec![], Ok(None)),
        (
            "jwt accepted",
            "/jwt",
            vec![("authorization", bearer(&alice))],
            Ok(Some("p:alice")),
        ),
        (
            "jwt from a cookie",
            "/jwt",
            vec![("cookie", format!("a=b; session={alice}"))],
            Ok(Some("p:alice")),
        ),
        ("jwt missing", "/jwt", vec![], Err(Reason::MissingCredentials)),
        (
            "api key header",
            "/keys",
            vec![("x-api-key", "k-acme".into())],
            Ok(Some("apikey:acme")),
        ),
        (
            "api key as bearer",
            "/keys",
            vec![("authorization", bearer("k-acme"))],
            Ok(Some("apikey:acme")),
        ),
        (
            "unknown api key",
            "/keys",
            vec![("x-api-key", "nope".into())],
            Err(Reason::InvalidApiKey),
        ),
        (
            "revoked api key",
            "/keys",
            vec![("x-api-key", "k-old".into())],
            Err(Reason::RevokedApiKey),
        ),
        (
            "jwt shape on an any route is a jwt",
            "/chat",
            vec![("authorization", bearer(&alice))],
            Err(Reason::InsufficientScope),
        ),
        (
            "opaque bearer on an any route is a key",
            "/chat",
            vec![("authorization", bearer("k-acme"))],
            Ok(Some("apikey:acme")),
        ),
        (
            "key lacks the scope",
            "/chat",
            vec![("x-api-key", "k-bob".into())],
            Err(Reason::InsufficientScope),
        ),
        (
            "tier allowed",
            "/pro",
            vec![("x-api-key", "k-acme".into())],
            Ok(Some("apikey:acme")),
        ),
        (
            "tier refused",
            "/pro",
            vec![("x-api-key", "k-bob".into())],
            Err(Reason::TierNotAllowed),
        ),
        (
            "consumer denied",
            "/not-bob",
            vec![("x-api-key", "k-bob".into())],
            Err(Reason::ConsumerNotAllowed),
        ),
        (
            "other consumer passes a deny list",
            "/not-bob",
            vec![("x-api-key", "k-acme".into())],
            Ok(Some("apikey:acme")),
        ),
        (
            "key and jwt together",
            "/chat",
            vec![("authorization", bearer(&alice)), ("x-api-key", "k-acme".into())],
            Err(Reason::MultipleCredentials),
        ),
        (
            "comma-joined authorization headers",
            "/jwt",
            vec![("authorization", format!("Bearer {alice}, Bearer {}", good("bob")))],
            Err(Reason::MultipleCredentials),
        ),
        (
            "api key ignored on a jwt route",
            "/jwt",
            vec![("x-api-key", "k-acme".into())],
            Err(Reason::MissingCredentials),
        ),
        (
            "basic auth is not a bearer",
            "/jwt",
            vec![("authorization", "Basic YTpi".into())],
            Err(Reason::MissingCredentials),
        ),
        (
            "empty bearer",
            "/jwt",
            vec![("authorization", "Bearer ".into())],
            Err(Reason::MalformedToken),
        ),
        (
            "unlisted path uses the default",
            "/else",
            vec![],
            Err(Reason::MissingCredentials),
        ),
        (
            "expired at the exact second after exp",
            "/jwt",
            vec![(
                "authorization",
                bearer(&token(json!({"iss": "iss", "aud": "aud", "sub": "x", "exp": NOW - 1}))),
            )],
            Err(Reason::TokenExpired),
        ),
        (
            "unknown kid",
            "/jwt",
            vec![(
                "authorization",
                bearer(&{
                    let custom: Map<String, Value> = json!({"iss": "iss", "aud": "aud", "sub": "x", "exp": NOW + 9})
                        .as_object()
                        .cloned()
                        .unwrap();
                    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(0));
                    c.invalid_before = None;
                    HS256Key::from_bytes(SECRET)
                        .with_key_id("other")
                        .authenticate(c)
                        .unwrap()
                }),
            )],
            Err(Reason::UnknownKeyId),
        ),
    ];
    let mut auth = Authenticator::new(Rc::new(config(json!({}))));
    for (name, path, headers, want) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let d = decide(&mut auth, path, &headers);
        match want {
            Ok(who) => {
                assert!(reason(&d).is_none(), "{name}: denied with {d:?}");
                assert_eq!(consumer(&d), who, "{name}");
            }
            Err(r) => assert_eq!(reason(&d), Some(r), "{name}"),
        }
    }
}

#[test]
fn api_keys_are_stripped_by_default_and_jwts_kept() {
    let mut auth = Authenticator::new(Rc::new(config(json!({}))));
    match decide(&mut auth, "/keys", &[("x-api-key", "k-acme")]) {
        Decision::Allow { strip, .. } => {
            assert_eq!(strip, vec![Location::Header("x-api-key".into())])
        }
        d => panic!("{d:?}"),
    }
    let t = format!("Bearer {}", good("a"));
    match decide(&mut auth, "/jwt", &[("authorization", &t)]) {
        Decision::Allow { strip, .. } => assert!(strip.is_empty()),
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_verified_token_is_served_from_the_cache_until_it_expires() {
    let mut auth = Authenticator::new(Rc::new(config(json!({}))));
    let t = format!("Bearer {}", good("c"));
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &t)])),
        Some("p:c")
    );
    assert_eq!(auth.cache.len(), 1);
    assert_eq!(
        consumer(&auth.decide(&request("/jwt", &[("authorization", &t)]), NOW + 60)),
        Some("p:c")
    );
    // One second past exp (skew 0), the cached entry no longer counts.
    let late = auth.decide(&request("/jwt", &[("authorization", &t)]), NOW + 61);
    assert_eq!(reason(&late), Some(Reason::TokenExpired));
}

#[test]
fn failed_tokens_are_not_cached() {
    let mut auth = Authenticator::new(Rc::new(config(json!({}))));
    let bad = format!(
        "Bearer {}",
        token(json!({"iss": "evil", "aud": "aud", "sub": "x", "exp": NOW + 9}))
    );
    assert_eq!(
        reason(&decide(&mut auth, "/jwt", &[("authorization", &bad)])),
        Some(Reason::InvalidIssuer)
    );
    assert!(auth.cache.is_empty());
}

fn remote_config() -> Config {
    config(json!({"jwt": {"providers": [{
        "name": "remote",
        "remote_jwks": {"cluster": "idp", "path": "/jwks", "refresh_seconds": 60, "accept_shared_secrets": true}
    }]}}))
}

fn jwks(kid: &str) -> Vec<u8> {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    json!({"keys": [{"kty": "oct", "kid": kid, "alg": "HS256", "k": k}]})
        .to_string()
        .into_bytes()
}

#[test]
fn remote_keys_are_fetched_on_schedule_and_kept_on_failure() {
    let mut auth = Authenticator::new(Rc::new(remote_config()));
    let t = format!("Bearer {}", token(json!({"sub": "r", "exp": NOW + 600})));

    assert_eq!(auth.fetches_due(NOW), vec![0]);
    assert!(auth.fetches_due(NOW).is_empty(), "one fetch in flight at a time");
    assert_eq!(
        reason(&decide(&mut auth, "/jwt", &[("authorization", &t)])),
        Some(Reason::KeysUnavailable)
    );

    // A failure before the first success retries after a second.
    assert!(matches!(
        auth.fetch_done(0, Err("down".into()), NOW),
        FetchOutcome::Failed { .. }
    ));
    assert!(auth.fetches_due(NOW).is_empty());
    assert_eq!(auth.fetches_due(NOW + 1), vec![0]);

    assert_eq!(
        auth.fetch_done(0, Ok(&jwks("h")), NOW + 1),
        FetchOutcome::Updated {
            keys: 1,
            skipped: vec![]
        }
    );
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &t)])),
        Some("remote:r")
    );

    // Next refresh after the interval; the same document changes nothing.
    assert!(auth.fetches_due(NOW + 60).is_empty());
    assert_eq!(auth.fetches_due(NOW + 61), vec![0]);
    assert_eq!(auth.fetch_done(0, Ok(&jwks("h")), NOW + 61), FetchOutcome::Unchanged);

    // A failed refresh keeps the keys; a garbage document counts as a failure.
    assert_eq!(auth.fetches_due(NOW + 121), vec![0]);
    assert!(matches!(
        auth.fetch_done(0, Ok(b"<html>"), NOW + 121),
        FetchOutcome::Failed { .. }
    ));
    let fresh = format!("Bearer {}", token(json!({"sub": "fresh", "exp": NOW + 600})));
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &fresh)])),
        Some("remote:fresh")
    );
    assert_eq!(auth.fetches_due(NOW + 126), vec![0], "failed refreshes retry after 5 s");

    // Rotation: the cached token of the old kid is checked again and refused.
    assert!(matches!(
        auth.fetch_done(0, Ok(&jwks("h2")), NOW + 126),
        FetchOutcome::Updated { .. }
    ));
    assert_eq!(
        reason(&decide(&mut auth, "/jwt", &[("authorization", &t)])),
        Some(Reason::UnknownKeyId)
    );
}

#[test]
fn several_providers_are_chosen_by_issuer() {
    let other_secret = "another-unit-test-secret-32bytes";
    let cfg = config(json!({"jwt": {"providers": [
        {"name": "a", "issuers": ["iss-a"], "required_claims": [], "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]},
        {"name": "b", "issuers": ["iss-b"], "required_claims": [], "consumer_claim": "client_id", "keys": [{"alg": "HS256", "secret": other_secret}]}
    ]}}));
    let mut auth = Authenticator::new(Rc::new(cfg));
    let custom: Map<String, Value> = json!({"iss": "iss-b", "client_id": "svc"})
        .as_object()
        .cloned()
        .unwrap();
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(0));
    c.invalid_before = None;
    let tb = HS256Key::from_bytes(other_secret.as_bytes()).authenticate(c).unwrap();
    assert_eq!(
        consumer(&decide(
            &mut auth,
            "/jwt",
            &[("authorization", &format!("Bearer {tb}"))]
        )),
        Some("b:svc")
    );
    let tc = token(json!({"iss": "iss-c", "sub": "x"}));
    assert_eq!(
        reason(&decide(
            &mut auth,
            "/jwt",
            &[("authorization", &format!("Bearer {tc}"))]
        )),
        Some(Reason::InvalidIssuer)
    );
}

#[test]
fn configuration_errors_name_every_bad_field() {
    let cases = [
        (
            json!({"routes": [{"match": {"path": "/a"}, "auth": "jwt"}]}),
            "$.routes[0].auth: accepts a credential kind that is not configured (add `jwt` or `api_keys`); \
             $.default.auth: accepts a credential kind that is not configured (add `jwt` or `api_keys`)",
        ),
        (json!({"api_keys": {"consumers": []}}), "$.api_keys.consumers: must list at least one consumer"),
        (
            json!({"api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": hex("x")}]}, {"name": "a", "keys": [{"sha256": hex("x")}]}]}}),
            "$.api_keys.consumers[1].name: duplicate consumer \"a\"; $.api_keys.consumers[1].keys[0]: the same key digest is listed twice",
        ),
        (
            json!({"jwt": {"providers": [{"name": "p", "keys": [{"alg": "HS256", "secret": "x", "pem": "y"}]}]}}),
            "$.jwt.providers[0].keys[0].secret: give either `pem` or `secret`, not both; $.jwt.providers[0].jwks: a provider needs keys: `jwks`, `keys` or `remote_jwks`",
        ),
        (
            json!({"jwt": {"sources": [{"type": "header"}], "providers": [{"name": "p", "remote_jwks": {"cluster": "c", "path": "jwks", "refresh_seconds": 0}}]}}),
            "$.jwt.sources[0].name: required field is missing; $.jwt.providers[0].remote_jwks.path: must start with '/' and hold no spaces or control characters; $.jwt.providers[0].remote_jwks.refresh_seconds: must be between 1 and 86400",
        ),
        (
            json!({"api_keys": {"sources": [{"type": "cookie", "name": "k"}], "consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}}),
            "$.api_keys.sources[0].type: unknown value \"cookie\", expected one of: bearer, header, query",
        ),
        (
            json!({"api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}, "routes": [{"match": {"path": "/p"}, "auth": "none", "scopes": ["x"]}]}),
            "$.routes[0].auth: a public route (\"none\") cannot require scopes or consumers",
        ),
        (json!({"realm": "a\"b", "api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}}), "$.realm: must be printable ASCII without quotes or backslashes, at most 128 bytes"),
        (
            json!({"jwt": {"providers": [{"name": "p", "claim_headers": {"email": "authorization"}, "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]}]}}),
            "$.jwt.providers[0].claim_headers.email: \"authorization\": claim headers must start with `x-` (standard headers such as authorization, cookie, forwarded or via keep their meaning)",
        ),
    ];
    for (value, want) in cases {
        let got = Config::from_value(&value).map(|_| ()).unwrap_err().to_string();
        assert_eq!(got, want, "for {value}");
    }
}

#[test]
fn empty_configuration_is_refused_because_nothing_could_authenticate() {
    let err = Config::from_bytes(b"").unwrap_err().to_string();
    assert_eq!(
        err,
        "$.default.auth: accepts a credential kind that is not configured (add `jwt` or `api_keys`)"
    );
    let err = Config::from_bytes(b"{not json").unwrap_err().to_string();
    assert!(err.starts_with("$: not valid JSON"), "{err}");
}

// === Identity: consumer namespaces ===

const OTHER_SECRET: &str = "another-unit-test-secret-32bytes";

/// Two providers, `a` and `b`, whose tokens carry the same `sub`; `b_extra` adds fields to `b`.
fn two_providers(b_extra: Value, api_keys_extra: Value) -> Config {
    let mut b = json!({"name": "b", "issuers": ["iss-b"], "required_claims": [],
                       "keys": [{"alg": "HS256", "secret": OTHER_SECRET}]});
    b.as_object_mut().unwrap().extend(b_extra.as_object().unwrap().clone());
    let mut keys = json!({"consumers": [{"name": "alice", "keys": [{"sha256": hex("k-alice")}]}]});
    keys.as_object_mut()
        .unwrap()
        .extend(api_keys_extra.as_object().unwrap().clone());
    config(json!({
        "routes": [
            {"match": {"path": "/jwt"}, "auth": "jwt"},
            {"match": {"path": "/keys"}, "auth": "api_key"},
            {"match": {"path": "/chat"}, "auth": "any", "scopes": ["chat"]}
        ],
        "jwt": {"providers": [
            {"name": "a", "issuers": ["iss-a"], "required_claims": [],
             "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]},
            b
        ]},
        "api_keys": keys
    }))
}

fn signed(secret: &[u8], claims: Value) -> String {
    let custom: Map<String, Value> = claims.as_object().cloned().unwrap();
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(0));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    HS256Key::from_bytes(secret).authenticate(c).unwrap()
}

fn who(auth: &mut Authenticator, headers: &[(&str, &str)]) -> Option<String> {
    consumer(&decide(auth, "/chat", headers)).map(str::to_owned)
}

#[test]
fn the_same_name_from_two_providers_or_an_api_key_is_three_consumers() {
    let mut auth = Authenticator::new(Rc::new(two_providers(json!({}), json!({}))));
    let from_a = format!(
        "Bearer {}",
        signed(SECRET, json!({"iss": "iss-a", "sub": "alice", "scope": "chat"}))
    );
    let from_b = format!(
        "Bearer {}",
        signed(
            OTHER_SECRET.as_bytes(),
            json!({"iss": "iss-b", "sub": "alice", "scope": "chat"})
        )
    );
    let a = who(&mut auth, &[("authorization", &from_a)]);
    let b = who(&mut auth, &[("authorization", &from_b)]);
    let key = who(&mut auth, &[("x-api-key", "k-alice")]);
    assert_eq!(a.as_deref(), Some("a:alice"));
    assert_eq!(b.as_deref(), Some("b:alice"));
    assert_eq!(key.as_deref(), None, "the key lacks the chat scope");
    let d = decide(&mut auth, "/jwt", &[("x-api-key", "k-alice")]);
    assert_eq!(reason(&d), Some(Reason::MissingCredentials));
    let d = decide(&mut auth, "/keys", &[("x-api-key", "k-alice")]);
    assert_eq!(consumer(&d), Some("apikey:alice"));
}

#[test]
fn an_operator_may_map_providers_and_api_keys_into_one_namespace() {
    let cfg = two_providers(json!({"consumer_namespace": "a"}), json!({"namespace": "a"}));
    let mut auth = Authenticator::new(Rc::new(cfg));
    let from_b = format!(
        "Bearer {}",
        signed(OTHER_SECRET.as_bytes(), json!({"iss": "iss-b", "sub": "alice"}))
    );
    let from_a = format!("Bearer {}", signed(SECRET, json!({"iss": "iss-a", "sub": "alice"})));
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &from_a)])),
        Some("a:alice")
    );
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &from_b)])),
        Some("a:alice")
    );
    assert_eq!(
        consumer(&decide(&mut auth, "/keys", &[("x-api-key", "k-alice")])),
        Some("a:alice")
    );
}

#[test]
fn a_numeric_sub_is_its_decimal_text_and_other_types_are_refused() {
    let mut auth = Authenticator::new(Rc::new(config(json!({}))));
    let numeric = format!(
        "Bearer {}",
        token(json!({"iss": "iss", "aud": "aud", "sub": 1001, "exp": NOW + 60}))
    );
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &numeric)])),
        Some("p:1001")
    );
    let float = format!(
        "Bearer {}",
        token(json!({"iss": "iss", "aud": "aud", "sub": 10.5, "exp": NOW + 60}))
    );
    assert_eq!(
        reason(&decide(&mut auth, "/jwt", &[("authorization", &float)])),
        Some(Reason::InvalidConsumerClaim)
    );
    // Other registered claims of unexpected types no longer make a valid token malformed.
    let odd = format!(
        "Bearer {}",
        token(json!({"iss": "iss", "aud": "aud", "sub": "s", "jti": 7, "nonce": 8, "exp": NOW + 60}))
    );
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &odd)])),
        Some("p:s")
    );
}

/// A compact token with this header, signed with `SECRET` over exactly these bytes.
fn token_with_header(header: Value, claims: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims.to_string()));
    let tag = HS256Key::from_bytes(SECRET).authentication_tag(input.as_bytes());
    format!("{input}.{}", b64.encode(tag))
}

#[test]
fn tokens_typed_jose_are_verified_and_foreign_types_refused() {
    let mut auth = Authenticator::new(Rc::new(config(json!({}))));
    let claims = json!({"iss": "iss", "aud": "aud", "sub": "j", "exp": NOW + 60});
    for typ in ["JOSE", "jwt", "application/at+jwt"] {
        let t = format!(
            "Bearer {}",
            token_with_header(json!({"alg": "HS256", "kid": "h", "typ": typ}), claims.clone())
        );
        assert_eq!(
            consumer(&decide(&mut auth, "/jwt", &[("authorization", &t)])),
            Some("p:j"),
            "{typ}"
        );
    }
    let dpop = format!(
        "Bearer {}",
        token_with_header(json!({"alg": "HS256", "kid": "h", "typ": "dpop+jwt"}), claims)
    );
    assert_eq!(
        reason(&decide(&mut auth, "/jwt", &[("authorization", &dpop)])),
        Some(Reason::UnsupportedTokenType)
    );
}

// === Stripping ===

fn strip_of(d: &Decision) -> Vec<Location> {
    match d {
        Decision::Allow { strip, .. } => strip.clone(),
        Decision::Deny { .. } => panic!("denied: {d:?}"),
    }
}

#[test]
fn api_keys_never_reach_the_upstream_whatever_the_route_used() {
    let mut auth = Authenticator::new(Rc::new(config(json!({}))));
    let jwt = format!("Bearer {}", good("a"));
    let key_header = Location::Header("x-api-key".into());
    // A public route: nothing is checked, the key is still removed.
    assert_eq!(
        strip_of(&decide(&mut auth, "/open", &[("x-api-key", "k-acme")])),
        vec![key_header.clone()]
    );
    assert_eq!(
        strip_of(&decide(&mut auth, "/open", &[("authorization", "Bearer sk-opaque")])),
        vec![Location::Authorization]
    );
    // A JWT route: the token is kept (JWT stripping is opt-in), the stray key is not.
    assert_eq!(
        strip_of(&decide(
            &mut auth,
            "/jwt",
            &[("authorization", &jwt), ("x-api-key", "k-acme")]
        )),
        vec![key_header]
    );
    assert!(strip_of(&decide(&mut auth, "/open", &[("authorization", &jwt)])).is_empty());
    // A route that takes either kind: the key it used, as before.
    assert_eq!(
        strip_of(&decide(&mut auth, "/pro", &[("authorization", "Bearer k-acme")])),
        vec![Location::Authorization]
    );
}

#[test]
fn jwt_stripping_when_configured_covers_every_route_too() {
    let cfg = config(json!({"strip_credentials": {"jwt": true, "api_key": false}}));
    let mut auth = Authenticator::new(Rc::new(cfg));
    let session = format!("session={}", good("a"));
    assert_eq!(
        strip_of(&decide(
            &mut auth,
            "/open",
            &[("cookie", &session), ("x-api-key", "k-acme")]
        )),
        vec![Location::Cookie("session".into())]
    );
    let none = config(json!({"strip_credentials": {"jwt": false, "api_key": false}}));
    let mut auth = Authenticator::new(Rc::new(none));
    assert!(strip_of(&decide(&mut auth, "/keys", &[("x-api-key", "k-acme")])).is_empty());
}

// === Bounded signature work ===

/// A provider with `n` HS256 keys without `kid`, the i-th with secret `secret(i)`.
fn many_keys(n: usize) -> (Authenticator, impl Fn(usize) -> String) {
    let secret = |i: usize| format!("kidless-secret-number-{i:02}-32-bytes!!");
    let keys: Vec<Value> = (0..n).map(|i| json!({"alg": "HS256", "secret": secret(i)})).collect();
    let cfg = config(json!({"jwt": {"providers": [{"name": "p", "required_claims": [], "keys": keys}]}}));
    let tok = move |i: usize| {
        format!(
            "Bearer {}",
            signed(secret(i).as_bytes(), json!({"sub": format!("u{i}")}))
        )
    };
    (Authenticator::new(Rc::new(cfg)), tok)
}

#[test]
fn a_token_without_kid_costs_at_most_a_few_signature_checks() {
    let (mut auth, tok) = many_keys(MAX_SIGNATURE_CHECKS + 2);
    for i in 0..MAX_SIGNATURE_CHECKS {
        assert_eq!(
            consumer(&decide(&mut auth, "/jwt", &[("authorization", &tok(i))])),
            Some(format!("p:u{i}").as_str())
        );
    }
    for i in MAX_SIGNATURE_CHECKS..MAX_SIGNATURE_CHECKS + 2 {
        assert_eq!(
            reason(&decide(&mut auth, "/jwt", &[("authorization", &tok(i))])),
            Some(Reason::InvalidSignature),
            "key {i} is past the bound: the token must name it with kid"
        );
    }
}

// === Remote key sets: bounds and truthful outcomes ===

#[test]
fn a_jwks_answer_over_max_bytes_is_a_failed_fetch_and_keys_are_kept() {
    let cfg = config(json!({"jwt": {"providers": [{
        "name": "remote",
        "remote_jwks": {"cluster": "idp", "path": "/jwks", "refresh_seconds": 60, "max_bytes": 1024,
                        "accept_shared_secrets": true}
    }]}}));
    let mut auth = Authenticator::new(Rc::new(cfg));
    assert_eq!(auth.jwks_max_bytes(0), 1024);
    let big = vec![b' '; 1025];
    assert_eq!(
        auth.fetch_done(0, Ok(&big), NOW),
        FetchOutcome::Failed {
            message: "the answer has 1025 bytes, more than remote_jwks.max_bytes (1024)".into(),
            loaded_at: None
        }
    );
    assert!(matches!(
        auth.fetch_done(0, Ok(&jwks("h")), NOW + 1),
        FetchOutcome::Updated { .. }
    ));
    assert_eq!(
        auth.fetch_done(0, Ok(&big), NOW + 70),
        FetchOutcome::Failed {
            message: "the answer has 1025 bytes, more than remote_jwks.max_bytes (1024)".into(),
            loaded_at: Some(NOW + 1)
        }
    );
    let t = format!("Bearer {}", token(json!({"sub": "r", "exp": NOW + 600})));
    assert_eq!(
        consumer(&auth.decide(&request("/jwt", &[("authorization", &t)]), NOW + 70)),
        Some("remote:r")
    );
}

#[test]
fn remote_shared_secrets_are_not_used_unless_accepted() {
    let mut auth = Authenticator::new(Rc::new(config(json!({"jwt": {"providers": [{
        "name": "remote",
        "remote_jwks": {"cluster": "idp", "path": "/jwks"}
    }]}}))));
    let outcome = auth.fetch_done(0, Ok(&jwks("h")), NOW);
    assert!(
        matches!(&outcome, FetchOutcome::Failed { message, loaded_at: None } if message.starts_with("no usable key (keys[0]: a shared secret")),
        "{outcome:?}"
    );
    let t = format!("Bearer {}", token(json!({"sub": "r", "exp": NOW + 600})));
    assert_eq!(
        reason(&decide(&mut auth, "/jwt", &[("authorization", &t)])),
        Some(Reason::KeysUnavailable)
    );
}

// === Configuration that would break at runtime ===

fn config_error(extra: Value) -> String {
    let mut base = json!({
        "jwt": {"providers": [{"name": "p", "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]}]},
        "api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}
    });
    base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    Config::from_value(&base)
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

fn provider_with(extra: Value) -> Value {
    let mut p = json!({"name": "p", "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]});
    p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"jwt": {"providers": [p]}})
}

#[test]
fn consumer_lists_name_namespaced_ids_of_namespaces_that_exist() {
    let route = |consumers: Value| json!({"routes": [{"match": {"path": "/x"}, "auth": "any", "allow": {"consumers": consumers}}]});
    assert_eq!(config_error(route(json!(["apikey:a", "p:alice", "p:urn:x:1"]))), "");
    assert_eq!(
        config_error(route(json!(["alice"]))),
        "$.routes[0].allow.consumers[0]: \"alice\" is not a consumer id: write `<namespace>:<name>`, such as `apikey:alice`"
    );
    assert_eq!(
        config_error(route(json!(["idp:alice"]))),
        "$.routes[0].allow.consumers[0]: \"idp:alice\": no JWT provider or API-key set has the consumer namespace \"idp\" (known: p, apikey)"
    );
    let deny = json!({"default": {"auth": "any", "deny": {"consumers": ["Apikey:a"]}}});
    assert!(config_error(deny)
        .starts_with("$.default.deny.consumers[0]: \"Apikey:a\": the namespace \"Apikey\" must match"),);
}

#[test]
fn namespaces_are_checked_and_shared_only_on_purpose() {
    let cases = [
        (
            provider_with(json!({"name": "Corp IdP"})),
            "$.jwt.providers[0].name: is the provider's consumer namespace unless `consumer_namespace` is set, so it must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes)",
        ),
        (
            provider_with(json!({"name": "Corp IdP", "consumer_namespace": "CORP"})),
            "$.jwt.providers[0].consumer_namespace: must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes)",
        ),
        (
            provider_with(json!({"name": "apikey"})),
            "$.api_keys: would share the consumer namespace \"apikey\" with $.jwt.providers[0] by default; set `consumer_namespace` (or `api_keys.namespace`) to share it deliberately, or rename",
        ),
        (json!({"api_keys": {"namespace": "a:b", "consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}}),
            "$.api_keys.namespace: must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes)"),
        (
            json!({"jwt": {"providers": [
                {"name": "p", "issuers": ["i1"], "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]},
                {"name": "p", "issuers": ["i2", "i1"], "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]}
            ]}}),
            "$.jwt.providers[1].name: provider name \"p\" is taken by $.jwt.providers[0]; \
             $.jwt.providers[1].issuers: issuer \"i1\" is listed by $.jwt.providers[0] too: a token's `iss` picks one provider; \
             $.jwt.providers[1]: would share the consumer namespace \"p\" with $.jwt.providers[0] by default; \
             set `consumer_namespace` (or `api_keys.namespace`) to share it deliberately, or rename",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(config_error(extra.clone()), want, "{extra}");
    }
    // Deliberate sharing is fine, in either direction.
    assert_eq!(
        config_error(provider_with(json!({"name": "apikey", "consumer_namespace": "apikey"}))),
        ""
    );
    assert_eq!(
        config_error(
            json!({"api_keys": {"namespace": "p", "consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}})
        ),
        ""
    );
}

#[test]
fn claim_headers_cannot_overwrite_what_others_read() {
    let claim = |header: &str| provider_with(json!({"claim_headers": {"c": header}}));
    let portico = |h: &str| {
        format!(
            "\"{h}\" is Portico's own header (x-portico- headers carry identity and routing between its filters): \
             header operations cannot change it"
        )
    };
    let own = |h: &str, reason: &str| format!("\"{h}\": {reason}");
    let cases = [
        ("x-portico-consumer", portico("x-portico-consumer")),
        ("x-portico-tier", portico("x-portico-tier")),
        ("x-portico-cluster", portico("x-portico-cluster")),
        (
            "x-forwarded-for",
            own("x-forwarded-for", "forwarding headers describe the client connection"),
        ),
        (
            "x-real-ip",
            own("x-real-ip", "forwarding headers describe the client connection"),
        ),
        (
            "x-envoy-original-path",
            own("x-envoy-original-path", "`x-envoy-` headers steer Envoy"),
        ),
        (
            "x-api-key",
            own("x-api-key", "this header already means something to the gateway"),
        ),
        (
            "x-request-id",
            own("x-request-id", "this header already means something to the gateway"),
        ),
        (":authority", "\":authority\" is the request's authority".to_owned()),
        (":status", "\":status\" is a pseudo-header".to_owned()),
        ("host", "\"host\" is the request's authority".to_owned()),
        ("content-length", "\"content-length\" frames the message".to_owned()),
        (
            "transfer-encoding",
            "\"transfer-encoding\" frames the message".to_owned(),
        ),
        ("x-us er", "header name \"x-us er\" contains ' '".to_owned()),
        (
            "X-User",
            own(
                "X-User",
                "claim header names use lowercase letters, digits and `-` only",
            ),
        ),
        (
            "x_user",
            own(
                "x_user",
                "claim header names use lowercase letters, digits and `-` only",
            ),
        ),
        ("forwarded", own("forwarded", "claim headers must start with `x-`")),
        ("cookie", own("cookie", "claim headers must start with `x-`")),
        (
            "authorization",
            own("authorization", "claim headers must start with `x-`"),
        ),
    ];
    for (header, want) in cases {
        let got = config_error(claim(header));
        assert!(
            got.starts_with(&format!("$.jwt.providers[0].claim_headers.c: {want}")),
            "{header}: {got}"
        );
    }
    let token_header = json!({"jwt": {"sources": [{"type": "header", "name": "X-Token"}],
        "providers": [{"name": "p", "claim_headers": {"email": "x-token", "mail": "x-user", "e": "x-user"},
                       "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]}]}});
    assert_eq!(
        config_error(token_header),
        "$.jwt.providers[0].claim_headers: claim \"email\" would write \"x-token\", where credentials are read from; \
         $.jwt.providers[0].claim_headers: claims \"e\" and \"mail\" both write \"x-user\""
    );
    assert_eq!(config_error(claim("x-user-email")), "");
}

#[test]
fn sizes_and_periods_have_stated_bounds() {
    let jwt = |extra: Value| {
        let mut j = json!({"providers": [{"name": "p", "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]}]});
        j.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({ "jwt": j })
    };
    let remote = |extra: Value| {
        let mut r = json!({"cluster": "c", "path": "/jwks"});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        provider_with(json!({"remote_jwks": r}))
    };
    let cases = [
        (jwt(json!({"max_token_bytes": 0})), "$.jwt.max_token_bytes: must be between 256 and 65536"),
        (jwt(json!({"max_token_bytes": 1_000_000})), "$.jwt.max_token_bytes: must be between 256 and 65536"),
        (jwt(json!({"token_cache_entries": 100_001})), "$.jwt.token_cache_entries: must be between 0 and 100000"),
        (provider_with(json!({"clock_skew_seconds": 601})), "$.jwt.providers[0].clock_skew_seconds: must be between 0 and 600"),
        (remote(json!({"refresh_seconds": 0})), "$.jwt.providers[0].remote_jwks.refresh_seconds: must be between 1 and 86400"),
        (remote(json!({"refresh_seconds": 86_401})), "$.jwt.providers[0].remote_jwks.refresh_seconds: must be between 1 and 86400"),
        (remote(json!({"timeout_ms": 0})), "$.jwt.providers[0].remote_jwks.timeout_ms: must be between 100 and 60000"),
        (remote(json!({"timeout_ms": 3_600_000})), "$.jwt.providers[0].remote_jwks.timeout_ms: must be between 100 and 60000"),
        (remote(json!({"max_bytes": 0})), "$.jwt.providers[0].remote_jwks.max_bytes: must be between 1024 and 4194304"),
        (remote(json!({"max_bytes": 1u64 << 40})), "$.jwt.providers[0].remote_jwks.max_bytes: must be between 1024 and 4194304"),
        (remote(json!({"path": "/jwks\r\nx: y"})), "$.jwt.providers[0].remote_jwks.path: must start with '/' and hold no spaces or control characters"),
        (remote(json!({"authority": "idp example"})), "$.jwt.providers[0].remote_jwks.authority: must hold no spaces or control characters"),
        (provider_with(json!({"default_tier": "pro\r\nx-portico-tier: admin"})), "$.jwt.providers[0].default_tier: header value contains '\\r', a control character HTTP does not allow in a value (CR and LF would split the message)"),
        (json!({"api_keys": {"consumers": [{"name": "a\nb", "tier": "t\u{7f}", "keys": [{"sha256": hex("q")}]}]}}),
         "$.api_keys.consumers[0].name: header value contains '\\n', a control character HTTP does not allow in a value (CR and LF would split the message); \
          $.api_keys.consumers[0].tier: header value contains '\\u{7f}', a control character HTTP does not allow in a value (CR and LF would split the message)"),
        (json!({"realm": "r\r\nx: y"}), "$.realm: must be printable ASCII without quotes or backslashes, at most 128 bytes"),
    ];
    for (extra, want) in cases {
        assert_eq!(config_error(extra.clone()), want, "{extra}");
    }
    assert_eq!(
        config_error(remote(
            json!({"refresh_seconds": 1, "timeout_ms": 100, "max_bytes": 1024})
        )),
        ""
    );
}

#[test]
fn a_public_rule_cannot_shadow_a_protected_one_with_the_same_pattern() {
    let routes = json!({"routes": [
        {"match": {"path": "/admin/{*rest}"}, "auth": "none"},
        {"match": {"path": "/admin/{*rest}", "methods": ["POST"]}, "auth": "jwt"}
    ]});
    assert_eq!(
        config_error(routes),
        "$.routes[1]: competes with $.routes[0] (path \"/admin/{*rest}\", overlapping methods and hosts): \
         the earlier rule would always win; give them disjoint methods or hosts, or merge them"
    );
}

#[test]
fn errors_name_the_configured_rule_even_after_an_unreadable_one() {
    let routes = json!({"routes": [
        {"match": {"path": "/a"}, "auth": "maybe"},
        {"match": {"path": "/b"}, "auth": "none"},
        {"match": {"path": "/b"}, "auth": "jwt"}
    ]});
    let got = config_error(routes);
    assert!(
        got.ends_with(
            "$.routes[2]: competes with $.routes[1] (path \"/b\", overlapping methods and hosts): \
                       the earlier rule would always win; give them disjoint methods or hosts, or merge them"
        ),
        "{got}"
    );
}

#[test]
fn credential_sources_kid_collisions_and_empty_tier_lists_are_refused_with_their_paths() {
    let secret = std::str::from_utf8(SECRET).unwrap();
    let provider = |keys: Value| json!({"jwt": {"providers": [{"name": "p", "keys": keys}]}});
    let cases = [
        (
            json!({"api_keys": {"sources": [{"type": "header", "name": "x-portico-consumer"}],
                                "consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}}),
            "$.api_keys.sources[0].name: \"x-portico-consumer\" is Portico's own header: auth removes every client-sent x-portico- header, so no credential could be read from it",
        ),
        (
            json!({"jwt": {"sources": [{"type": "header", "name": "x token"}], "providers": [{"name": "p", "keys": [{"alg": "HS256", "secret": secret}]}]}}),
            "$.jwt.sources[0].name: header name \"x token\" contains ' '",
        ),
        (
            json!({"jwt": {"sources": [{"type": "cookie", "name": "se ssion"}], "providers": [{"name": "p", "keys": [{"alg": "HS256", "secret": secret}]}]}}),
            "$.jwt.sources[0].name: cookie name \"se ssion\" contains ' '",
        ),
        (
            provider(json!([{"alg": "HS256", "kid": "k", "secret": secret}, {"alg": "HS384", "kid": "k", "secret": secret}])),
            "$.jwt.providers[0].keys[1].kid: \"k\" is the kid of $.jwt.providers[0].keys[0] too: a token names its key by kid, so give each key its own",
        ),
        (
            json!({"routes": [{"match": {"path": "/x"}, "auth": "any", "allow": {"tiers": []}}]}),
            "$.routes[0].allow.tiers: an empty list would leave the rule to every value",
        ),
    ];
    for (extra, want) in cases {
        let got = config_error(extra);
        assert!(got.starts_with(want), "want {want}\n got {got}");
    }
    let jwk = |kid: &str| json!({"kty": "oct", "alg": "HS256", "kid": kid, "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)});
    let got = config_error(
        json!({"jwt": {"providers": [{"name": "p", "jwks": {"keys": [jwk("a"), jwk("b")]},
        "keys": [{"alg": "HS256", "kid": "a", "secret": secret}]}]}}),
    );
    assert!(
        got.starts_with("$.jwt.providers[0].keys[0].kid: \"a\" is the kid of $.jwt.providers[0].jwks.keys[0] too"),
        "{got}"
    );
}
