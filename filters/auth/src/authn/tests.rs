//! Unit tests of the auth decision, compiled only under #[cfg(test)] (declared in authn.rs).

use super::*;

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
            {"match": {"path": "/not-bob"}, "auth": "any", "deny": {"consumers": ["bob"]}}
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
            Ok(Some("alice")),
        ),
        (
            "jwt from a cookie",
            "/jwt",
            vec![("cookie", format!("a=b; session={alice}"))],
            Ok(Some("alice")),
        ),
        ("jwt missing", "/jwt", vec![], Err(Reason::MissingCredentials)),
        (
            "api key header",
            "/keys",
            vec![("x-api-key", "k-acme".into())],
            Ok(Some("acme")),
        ),
        (
            "api key as bearer",
            "/keys",
            vec![("authorization", bearer("k-acme"))],
            Ok(Some("acme")),
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
            Ok(Some("acme")),
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
            Ok(Some("acme")),
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
            Ok(Some("acme")),
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
        Some("c")
    );
    assert_eq!(auth.cache.len(), 1);
    assert_eq!(
        consumer(&auth.decide(&request("/jwt", &[("authorization", &t)]), NOW + 60)),
        Some("c")
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
        "remote_jwks": {"cluster": "idp", "path": "/jwks", "refresh_seconds": 60}
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
        FetchOutcome::Failed(_)
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
        Some("r")
    );

    // Next refresh after the interval; the same document changes nothing.
    assert!(auth.fetches_due(NOW + 60).is_empty());
    assert_eq!(auth.fetches_due(NOW + 61), vec![0]);
    assert_eq!(auth.fetch_done(0, Ok(&jwks("h")), NOW + 61), FetchOutcome::Unchanged);

    // A failed refresh keeps the keys; a garbage document counts as a failure.
    assert_eq!(auth.fetches_due(NOW + 121), vec![0]);
    assert!(matches!(
        auth.fetch_done(0, Ok(b"<html>"), NOW + 121),
        FetchOutcome::Failed(_)
    ));
    let fresh = format!("Bearer {}", token(json!({"sub": "fresh", "exp": NOW + 600})));
    assert_eq!(
        consumer(&decide(&mut auth, "/jwt", &[("authorization", &fresh)])),
        Some("fresh")
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
        Some("svc")
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
            "$.jwt.sources[0].name: required field is missing; $.jwt.providers[0].remote_jwks.path: must start with '/'; $.jwt.providers[0].remote_jwks.refresh_seconds: must be at least 1",
        ),
        (
            json!({"api_keys": {"sources": [{"type": "cookie", "name": "k"}], "consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}}),
            "$.api_keys.sources[0].type: unknown value \"cookie\", expected one of: bearer, header, query",
        ),
        (
            json!({"api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}, "routes": [{"match": {"path": "/p"}, "auth": "none", "scopes": ["x"]}]}),
            "$.routes[0].auth: a public route (\"none\") cannot require scopes or consumers",
        ),
        (json!({"realm": "a\"b", "api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": hex("q")}]}]}}), "$.realm: must not contain quotes or backslashes"),
        (
            json!({"jwt": {"providers": [{"name": "p", "claim_headers": {"email": "authorization"}, "keys": [{"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()}]}]}}),
            "$.jwt.providers[0].claim_headers.email: claim headers must start with `x-`",
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
