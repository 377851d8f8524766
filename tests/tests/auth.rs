//! The auth filter through a real Envoy (`--concurrency 2`) with real HTTP traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use portico_tests::demo::Shipped;
use portico_tests::envoy::{eventually, root, sum_metric, EnvoyConfig, Gateway, Plugin};
use portico_tests::http::{get, Request, Response};
use portico_tests::tokens::{
    bare_claims, claims, hs256_with_secret, now, raw_token, signers, ALGORITHMS, AUDIENCE, ISSUER,
};
use portico_tests::upstream::{Upstream, JWKS_PATH};
use serde_json::{json, Value};

fn sha256_hex(key: &str) -> String {
    hmac_sha256::Hash::hash(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The auth configuration most tests share; `keys` is the provider's key source.
fn auth_config(keys: Value) -> Value {
    let mut provider = json!({
        "name": "test",
        "issuers": [ISSUER],
        "audiences": [AUDIENCE],
        "clock_skew_seconds": 60,
        "tier_claim": "tier",
        "default_tier": "free",
        "claim_headers": {"email": "x-user-email"}
    });
    provider
        .as_object_mut()
        .unwrap()
        .extend(keys.as_object().unwrap().clone());
    json!({
        "jwt": {
            "sources": [
                {"type": "bearer"},
                {"type": "header", "name": "x-token"},
                {"type": "query", "name": "access_token"},
                {"type": "cookie", "name": "session"}
            ],
            "providers": [provider]
        },
        "api_keys": {
            "sources": [{"type": "header", "name": "x-api-key"}, {"type": "bearer"}, {"type": "query", "name": "api_key"}],
            "consumers": [
                {"name": "acme", "tier": "pro", "scopes": ["chat"], "keys": [
                    {"sha256": sha256_hex("acme-key-1"), "id": "k1"},
                    {"sha256": sha256_hex("acme-old-key"), "id": "k0", "revoked": true}
                ]},
                {"name": "hobby", "tier": "free", "keys": [{"sha256": sha256_hex("hobby-key")}]}
            ]
        },
        "routes": [
            {"match": {"path": "/public/{*rest}"}, "auth": "none"},
            {"match": {"path": "/admin/{*rest}"}, "auth": "jwt", "scopes": ["admin"]},
            {"match": {"path": "/pro/{*rest}"}, "auth": "any", "allow": {"tiers": ["pro"]}},
            {"match": {"path": "/keys/{*rest}"}, "auth": "api_key"},
            {"match": {"path": "/jwt/{*rest}"}, "auth": "jwt"}
        ],
        "default": {"auth": "any"}
    })
}

fn inline_gateway() -> (Gateway, Upstream) {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let config = auth_config(json!({"jwks": signers().jwks()}));
    let gateway = Gateway::start(&EnvoyConfig::new(upstream.addr).wasm("auth", &config));
    (gateway, upstream)
}

fn assert_denied(r: &Response, status: u16, code: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {}", r.text());
    assert_eq!(r.error_code(), code, "{case}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{case}");
    let body = r.json();
    assert!(
        body["error"]["type"].is_string() && body["error"]["message"].is_string(),
        "{case}: {body}"
    );
    if status == 401 || status == 403 {
        let challenge = r
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{case}: no WWW-Authenticate"));
        assert!(challenge.starts_with("Bearer realm=\"portico\""), "{case}: {challenge}");
    }
}

/// Allowed, as consumer id `consumer` (`<namespace>:<name>`).
fn assert_allowed(r: &Response, consumer: &str, case: &str) {
    assert_eq!(r.status, 200, "{case}: {}", r.text());
    assert_eq!(
        r.upstream_header("x-portico-consumer").as_deref(),
        Some(consumer),
        "{case}"
    );
}

/// Auth as the `portico-auth` entry of `dist/portico.wasm`, in one VM with another entry of
/// the module (the host layer's test filter, after auth): a valid token reaches the upstream
/// with its identity through both, an invalid one is refused by auth with its code, challenge
/// and log line.
#[test]
fn auth_from_the_one_module_shares_its_vm_with_another_entry() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let auth = Plugin::portico("portico-auth", auth_config(json!({"jwks": signers().jwks()})));
    let echo = Plugin::portico("portico-echo", json!({"tag": "after-auth"}));
    let gw = Gateway::start(&EnvoyConfig::new(upstream.addr).plugin(&auth).plugin(&echo));

    let token = signers().sign("ES256", &claims("shared-vm", json!({"tier": "pro"})));
    let r = get("/jwt/hello")
        .bearer(&token)
        .header("x-portico-consumer", "spoofed")
        .send(gw.addr);
    assert_allowed(&r, "test:shared-vm", "valid token");
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("pro"));
    assert_eq!(
        r.upstream_header("x-portico-echo-after-auth").as_deref(),
        Some("portico-echo"),
        "the other entry of the VM ran after auth"
    );

    let forged = hs256_with_secret(b"a-different-secret-of-32-bytes!!", "hmac", &claims("a", json!({})));
    let r = get("/jwt/hello?x=1").bearer(&forged).send(gw.addr);
    assert_denied(&r, 401, "invalid_signature", "forged token");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|c| c.contains("error=\"invalid_token\"")));
    assert_eq!(upstream.requests(), 1, "the refused request never reached the upstream");
    assert!(
        gw.log().contains("portico-auth: 401 invalid_signature GET /jwt/hello"),
        "{}",
        gw.log()
    );
    gw.assert_no_wasm_panic();
    // The second entry adds no VM: as many as auth alone.
    let alone = Gateway::start(&EnvoyConfig::new(upstream.addr).plugin(&auth));
    assert_eq!(get("/public/x").send(alone.addr).status, 200);
    let vms = gw.stat("wasm.wasm_vm_count");
    assert!(vms.is_some_and(|n| n > 0));
    assert_eq!(vms, alone.stat("wasm.wasm_vm_count"), "one VM shared by both entries");
}

#[test]
fn every_algorithm_family_is_accepted() {
    let (gw, _up) = inline_gateway();
    for alg in ALGORITHMS {
        let token = signers().sign(
            alg,
            &claims(&format!("user-{alg}"), json!({"tier": "pro", "email": "u@example.com"})),
        );
        let r = get("/jwt/hello").bearer(&token).send(gw.addr);
        assert_allowed(&r, &format!("test:user-{alg}"), alg);
        assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("pro"), "{alg}");
        assert_eq!(
            r.upstream_header("x-user-email").as_deref(),
            Some("u@example.com"),
            "{alg}"
        );
        // The JWT is forwarded by default (strip_credentials.jwt is off).
        assert!(r.upstream_header("authorization").is_some(), "{alg}");
    }
    gw.assert_no_wasm_panic();
}

#[test]
fn hostile_and_invalid_tokens_get_stable_errors_and_never_crash_the_vm() {
    let (gw, _up) = inline_gateway();
    let s = signers();
    let t = now();
    let bearer = |path: &str, token: &str| get(path).bearer(token).send(gw.addr);
    let es = |c: Value| s.sign("ES256", &c);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired",
            es(claims("a", json!({"exp": t - 3600}))),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            es(claims("a", json!({"nbf": t + 3600}))),
            401,
            "token_not_yet_valid",
        ),
        (
            "wrong issuer",
            es(claims("a", json!({"iss": "https://evil.test"}))),
            401,
            "invalid_issuer",
        ),
        (
            "wrong audience",
            es(claims("a", json!({"aud": "someone-else"}))),
            401,
            "invalid_audience",
        ),
        (
            "bad signature (another HMAC secret, same kid)",
            hs256_with_secret(b"a-different-secret-of-32-bytes!!", "hmac", &claims("a", json!({}))),
            401,
            "invalid_signature",
        ),
        (
            "payload swapped under a valid signature",
            {
                let good = es(claims("a", json!({})));
                let forged = raw_token(&json!({}), &claims("admin", json!({"scope": "admin"})), "");
                let parts: Vec<&str> = good.split('.').collect();
                format!("{}.{}.{}", parts[0], forged.split('.').nth(1).unwrap(), parts[2])
            },
            401,
            "invalid_signature",
        ),
        (
            "alg none",
            raw_token(&json!({"alg": "none"}), &claims("admin", json!({})), "x"),
            401,
            "algorithm_not_allowed",
        ),
        (
            "alg none with empty signature",
            raw_token(&json!({"alg": "none", "typ": "JWT"}), &claims("admin", json!({})), ""),
            401,
            "algorithm_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key as secret",
            hs256_with_secret(s.rsa_public_pem().as_bytes(), "rsa", &claims("admin", json!({}))),
            401,
            "algorithm_not_allowed",
        ),
        (
            "unknown kid",
            raw_token(&json!({"alg": "ES256", "kid": "nope"}), &claims("a", json!({})), "c2ln"),
            401,
            "unknown_key_id",
        ),
        (
            "malformed base64",
            "eyJhbGc!!.e30.c2ln".to_owned(),
            401,
            "malformed_token",
        ),
        (
            "two segments",
            "eyJhbGciOiJIUzI1NiJ9.e30".to_owned(),
            401,
            "malformed_token",
        ),
        (
            "four segments",
            format!("{}.x", es(claims("a", json!({})))),
            401,
            "malformed_token",
        ),
        ("10 KB of garbage", "A".repeat(10 * 1024), 401, "token_too_large"),
        (
            "missing sub",
            es(json!({"iss": ISSUER, "aud": AUDIENCE, "exp": t + 60})),
            401,
            "missing_claim",
        ),
        (
            "missing exp",
            es(json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a"})),
            401,
            "missing_claim",
        ),
        (
            "scope missing on an admin route",
            es(claims("a", json!({"scope": "read"}))),
            403,
            "insufficient_scope",
        ),
    ];
    for (case, token, status, code) in &cases {
        let path = if *code == "insufficient_scope" {
            "/admin/x"
        } else {
            "/jwt/x"
        };
        let r = bearer(path, token);
        assert_denied(&r, *status, code, case);
        if *status == 401 {
            assert!(
                r.header("www-authenticate")
                    .unwrap()
                    .contains("error=\"invalid_token\""),
                "{case}"
            );
        }
    }

    // Skew: a token expired 30 s ago, or valid from 30 s from now, passes with 60 s of skew.
    assert_allowed(
        &bearer("/jwt/x", &es(claims("skew", json!({"exp": t - 30})))),
        "test:skew",
        "exp within skew",
    );
    assert_allowed(
        &bearer("/jwt/x", &es(claims("skew", json!({"nbf": t + 30})))),
        "test:skew",
        "nbf within skew",
    );

    // Scope present: allowed, and scope in `scp` form works too.
    assert_allowed(
        &bearer("/admin/x", &es(claims("root", json!({"scope": "read admin"})))),
        "test:root",
        "scope",
    );
    assert_allowed(
        &bearer("/admin/x", &es(claims("root", json!({"scp": ["admin"]})))),
        "test:root",
        "scp",
    );
    let scoped = bearer("/admin/x", &es(claims("a", json!({}))));
    assert!(scoped.header("www-authenticate").unwrap().contains("scope=\"admin\""));

    // No credential: a bare challenge, as RFC 6750 section 3.1 asks.
    let r = get("/jwt/x").send(gw.addr);
    assert_denied(&r, 401, "missing_credentials", "missing");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"portico\""));

    // Two different tokens is ambiguous; the same token twice is not.
    let a = es(claims("a", json!({})));
    let b = es(claims("b", json!({})));
    let r = get("/jwt/x").bearer(&a).header("x-token", &b).send(gw.addr);
    assert_denied(&r, 400, "multiple_credentials", "two tokens");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_request\""));
    let r = get("/jwt/x")
        .bearer(&a)
        .header("authorization", format!("Bearer {b}"))
        .send(gw.addr);
    assert_denied(&r, 400, "multiple_credentials", "two authorization headers");
    assert_allowed(
        &get("/jwt/x").bearer(&a).header("x-token", &a).send(gw.addr),
        "test:a",
        "same token twice",
    );

    // Bytes that are not UTF-8 in headers: Envoy passes them, the filter must not trap.
    let r = get("/jwt/x").header("authorization", b"Bearer \xff\xfe").send(gw.addr);
    assert_denied(&r, 401, "malformed_token", "non-UTF-8 token");
    assert_allowed(
        &get("/jwt/x").bearer(&a).header("x-junk", b"\xff\x80").send(gw.addr),
        "test:a",
        "non-UTF-8 header",
    );

    // A header too large for Envoy never reaches the filter.
    let r = get("/jwt/x").bearer(&"A".repeat(100 * 1024)).send(gw.addr);
    assert_eq!(r.status, 431);

    // After all of that the filter still serves valid traffic on both workers.
    for _ in 0..10 {
        assert_allowed(
            &get("/jwt/x").bearer(&a).send(gw.addr),
            "test:a",
            "after hostile traffic",
        );
    }
    gw.assert_no_wasm_panic();

    // Outcomes are counted at /stats/prometheus.
    let stats = gw.prometheus();
    let metric = |labels: &[(&str, &str)]| sum_metric(&stats, "portico_auth_requests_total", labels);
    assert!(metric(&[("outcome", "allowed")]) >= 16, "{stats}");
    assert_eq!(
        metric(&[("outcome", "denied"), ("reason", "token_expired")]),
        1,
        "{stats}"
    );
    assert_eq!(
        metric(&[("outcome", "denied"), ("reason", "multiple_credentials")]),
        2,
        "{stats}"
    );
}

#[test]
fn api_keys_map_to_consumers_and_are_stripped() {
    let (gw, _up) = inline_gateway();

    let r = get("/keys/x").header("x-api-key", "acme-key-1").send(gw.addr);
    assert_allowed(&r, "apikey:acme", "header key");
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("pro"));
    assert_eq!(
        r.upstream_header("x-api-key"),
        None,
        "the key must not reach the upstream"
    );

    // OpenAI-style clients send their key as a bearer token.
    let r = get("/keys/x").bearer("acme-key-1").send(gw.addr);
    assert_allowed(&r, "apikey:acme", "bearer key");
    assert_eq!(r.upstream_header("authorization"), None);

    let r = get("/keys/x?a=1&api_key=acme-key-1&b=2").send(gw.addr);
    assert_allowed(&r, "apikey:acme", "query key");
    assert_eq!(r.json()["path"], "/keys/x?a=1&b=2");

    assert_denied(
        &get("/keys/x").header("x-api-key", "guess").send(gw.addr),
        401,
        "invalid_api_key",
        "unknown",
    );
    assert_denied(
        &get("/keys/x").header("x-api-key", "acme-old-key").send(gw.addr),
        401,
        "revoked_api_key",
        "revoked",
    );
    assert_denied(&get("/keys/x").send(gw.addr), 401, "missing_credentials", "none");
    assert_denied(
        &get("/keys/x")
            .header("x-api-key", "acme-key-1")
            .header("x-api-key", "hobby-key")
            .send(gw.addr),
        400,
        "multiple_credentials",
        "two keys",
    );

    // Tier rules: /pro/ admits only the pro tier, whatever the credential kind.
    assert_allowed(
        &get("/pro/x").header("x-api-key", "acme-key-1").send(gw.addr),
        "apikey:acme",
        "pro tier",
    );
    assert_denied(
        &get("/pro/x").header("x-api-key", "hobby-key").send(gw.addr),
        403,
        "tier_not_allowed",
        "free tier",
    );
    let free_jwt = signers().sign("ES256", &claims("jo", json!({})));
    assert_denied(
        &get("/pro/x").bearer(&free_jwt).send(gw.addr),
        403,
        "tier_not_allowed",
        "default tier",
    );

    // A JWT-only route ignores API keys entirely.
    assert_denied(
        &get("/jwt/x").header("x-api-key", "acme-key-1").send(gw.addr),
        401,
        "missing_credentials",
        "key on jwt route",
    );
    // On a route that takes either, a key and a JWT together are ambiguous.
    assert_denied(
        &get("/any")
            .bearer(&free_jwt)
            .header("x-api-key", "acme-key-1")
            .send(gw.addr),
        400,
        "multiple_credentials",
        "jwt and key",
    );
    gw.assert_no_wasm_panic();
    assert!(!gw.log().contains("acme-key-1"), "a key reached Envoy's log");
}

#[test]
fn spoofed_identity_headers_are_removed_on_every_route() {
    let (gw, _up) = inline_gateway();
    let spoof = |req: portico_tests::http::Request| {
        req.header("x-portico-consumer", "admin")
            .header("x-portico-tier", "enterprise")
            .header("x-user-email", "ceo@example.com")
    };

    let r = spoof(get("/public/x")).send(gw.addr);
    assert_eq!(r.status, 200);
    for h in ["x-portico-consumer", "x-portico-tier", "x-user-email"] {
        assert_eq!(r.upstream_header(h), None, "public route kept {h}");
    }

    let token = signers().sign("EdDSA", &claims("real-user", json!({})));
    let r = spoof(get("/jwt/x")).bearer(&token).send(gw.addr);
    assert_allowed(&r, "test:real-user", "private route");
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("free"));
    assert_eq!(
        r.upstream_header("x-user-email"),
        None,
        "a claim the token lacks must not pass through"
    );

    // Denied requests never reach the upstream, spoofed or not.
    let r = spoof(get("/jwt/x")).send(gw.addr);
    assert_denied(&r, 401, "missing_credentials", "spoofed only");
}

#[test]
fn public_routes_need_nothing_and_paths_are_normalised_before_matching() {
    let (gw, _up) = inline_gateway();
    assert_eq!(get("/public/docs").send(gw.addr).status, 200);
    assert_eq!(get("/public").send(gw.addr).status, 200);
    // Envoy normalises the path first, so dot segments cannot escape a public prefix.
    let r = get("/public/../jwt/secret").send(gw.addr);
    assert_denied(&r, 401, "missing_credentials", "dot segments");
    let r = get("/jwt//secret").send(gw.addr);
    assert_denied(&r, 401, "missing_credentials", "doubled slashes");
    // Whatever passes as public is what the upstream receives: the filter matched the same path.
    for path in ["/public//..//jwt/secret", "/public/%2e%2e/jwt/secret", "/public/./x"] {
        let r = get(path).send(gw.addr);
        if r.status == 200 {
            let seen = r.json()["path"].as_str().unwrap().to_owned();
            assert!(seen.starts_with("/public/"), "{path} reached the upstream as {seen}");
        } else {
            assert_denied(&r, 401, "missing_credentials", path);
        }
    }
    // Anything not listed falls to the default rule, which requires a credential.
    assert_denied(
        &get("/elsewhere").send(gw.addr),
        401,
        "missing_credentials",
        "default rule",
    );
}

#[test]
fn tokens_are_read_from_every_configured_source() {
    let (gw, _up) = inline_gateway();
    let token = signers().sign("RS256", &claims("src", json!({})));
    assert_allowed(
        &get("/jwt/x").header("x-token", &token).send(gw.addr),
        "test:src",
        "header",
    );
    let r = get(&format!("/jwt/x?access_token={token}")).send(gw.addr);
    assert_allowed(&r, "test:src", "query");
    let r = get("/jwt/x")
        .header("cookie", format!("theme=dark; session={token}"))
        .send(gw.addr);
    assert_allowed(&r, "test:src", "cookie");
    // The bearer scheme is case-insensitive (RFC 6750 follows RFC 7235).
    assert_allowed(
        &get("/jwt/x")
            .header("authorization", format!("bearer {token}"))
            .send(gw.addr),
        "test:src",
        "lowercase scheme",
    );
    // Another scheme is not a bearer token.
    let r = get("/jwt/x")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send(gw.addr);
    assert_denied(&r, 401, "missing_credentials", "basic auth");
}

#[test]
fn credentials_are_stripped_when_configured() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let mut config = auth_config(json!({"jwks": signers().jwks()}));
    config["strip_credentials"] = json!({"jwt": true, "api_key": true});
    let gw = Gateway::start(&EnvoyConfig::new(upstream.addr).wasm("auth", &config));
    let token = signers().sign("ES384", &claims("strip", json!({})));
    let r = get("/jwt/x").bearer(&token).send(gw.addr);
    assert_allowed(&r, "test:strip", "bearer");
    assert_eq!(r.upstream_header("authorization"), None);
    let r = get(&format!("/jwt/x?keep=1&access_token={token}"))
        .header("cookie", format!("a=1; session={token}"))
        .send(gw.addr);
    assert_allowed(&r, "test:strip", "query and cookie");
    assert_eq!(r.json()["path"], "/jwt/x?keep=1");
    assert_eq!(r.upstream_header("cookie").as_deref(), Some("a=1"));
}

#[test]
fn remote_jwks_is_fetched_kept_on_failure_and_rotated() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let keys = json!({"remote_jwks": {"cluster": "jwks", "path": JWKS_PATH, "refresh_seconds": 1, "timeout_ms": 1000}});
    let config = auth_config(keys);
    // The key server is down when the gateway starts.
    upstream.set_jwks(500, "down");
    let gw = Gateway::start(
        &EnvoyConfig::new(upstream.addr)
            .cluster("jwks", upstream.addr)
            .wasm("auth", &config),
    );
    let s = signers();
    let first = s.sign("ES256", &claims("first", json!({})));

    // Until keys arrive, tokens cannot be checked: a retryable 503, not a 401.
    let r = get("/jwt/x").bearer(&first).send(gw.addr);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "keys_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // The log says what is true: there are no keys at all yet, none is being kept.
    assert!(eventually(Duration::from_secs(5), || gw
        .log()
        .contains("JWKS fetch failed and no key was ever loaded")));
    assert!(!gw.log().contains("keeping the keys"));

    upstream.set_jwks(200, s.jwks().to_string());
    let all_ok = |token: &str, consumer: &str| {
        (0..6).all(|_| {
            let r = get("/jwt/x").bearer(token).send(gw.addr);
            r.status == 200 && r.upstream_header("x-portico-consumer").as_deref() == Some(&*format!("test:{consumer}"))
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || all_ok(&first, "first")),
        "keys never loaded"
    );

    // The key server fails: the last good keys stay in use, even for tokens never seen before.
    upstream.set_jwks(500, "broken");
    let hits = upstream.jwks_hits();
    assert!(
        eventually(Duration::from_secs(10), || upstream.jwks_hits() >= hits + 4),
        "no refresh attempts"
    );
    let fresh = s.sign("ES256", &claims("fresh", json!({})));
    assert!(all_ok(&fresh, "fresh"), "last good keys were dropped");
    assert!(gw.log().contains("JWKS refresh failed, keeping the keys loaded"));

    // The key set rotates: the new key works and the old one stops, cached tokens included.
    let rotated = jwt_simple::prelude::ES256KeyPair::generate().with_key_id("es256-v2");
    let mut jwk: Value = serde_json::from_str(&rotated.public_key().to_jwk()).unwrap();
    jwk["kid"] = json!("es256-v2");
    upstream.set_jwks(200, json!({"keys": [jwk]}).to_string());
    let new_token =
        jwt_simple::prelude::ECDSAP256KeyPairLike::sign(&rotated, bare_claims(&claims("rotated", json!({})))).unwrap();
    let switched = || {
        all_ok(&new_token, "rotated")
            && (0..6).all(|_| get("/jwt/x").bearer(&first).send(gw.addr).error_code() == "unknown_key_id")
    };
    assert!(eventually(Duration::from_secs(10), switched), "rotation not picked up");
    gw.assert_no_wasm_panic();
}

#[test]
fn bad_configuration_is_refused_with_every_json_path() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let config = json!({
        "jwt": {"providers": [{"name": "p", "issuers": "not-a-list", "claim_headers": {"sub": "x-portico-consumer"},
                               "jwks": {"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}}]},
        "api_keys": {"consumers": [{"name": "c", "keys": [{"sha256": "abc"}]}]},
        "routes": [
            {"match": {"path": "/a"}, "auth": "maybe"},
            {"match": {"path": "/admin/{*rest}"}, "auth": "none"},
            {"match": {"path": "/admin/{*rest}", "methods": ["POST"]}, "auth": "jwt", "allow": {"consumers": ["alice"]}}
        ],
        "strip_credential": true
    });
    let failure = Gateway::try_start(&EnvoyConfig::new(upstream.addr).wasm("auth", &config))
        .expect_err("Envoy accepted a bad config");
    assert!(
        failure.status.is_some_and(|s| !s.success()),
        "Envoy should exit with an error"
    );
    for expected in [
        "invalid configuration: $.jwt.providers[0].issuers: expected an array",
        "invalid configuration: $.jwt.providers[0].jwks.keys[0]: HMAC secrets must be at least 32 bytes",
        "invalid configuration: $.api_keys.consumers[0].keys[0].sha256: expected 64 hex digits",
        "invalid configuration: $.routes[0].auth: unknown value \"maybe\", expected one of: none, jwt, api_key, any",
        "invalid configuration: $.strip_credential: unknown field",
        "invalid configuration: $.jwt.providers[0].claim_headers.sub: \"x-portico-consumer\" is Portico's own header",
        "invalid configuration: $.routes[2].allow.consumers[0]: \"alice\" is not a consumer id: write `<namespace>:<name>`, such as `apikey:alice`",
        "invalid configuration: $.routes[2]: competes with $.routes[1] (path \"/admin/{*rest}\"",
    ] {
        assert!(
            failure.log.contains(expected),
            "missing {expected:?} in:\n{}",
            failure.log
        );
    }
}

#[test]
fn pem_keys_and_several_providers_are_chosen_by_issuer() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let s = signers();
    let partner_key = jwt_simple::prelude::ES256KeyPair::generate();
    let config = json!({
        "jwt": {"providers": [
            {"name": "main", "issuers": [ISSUER], "audiences": [AUDIENCE], "jwks": s.jwks()},
            {"name": "partner", "issuers": ["https://partner.test"], "consumer_claim": "client_id",
             "keys": [{"alg": "ES256", "pem": partner_key.public_key().to_pem().unwrap()}]}
        ]}
    });
    let gw = Gateway::start(&EnvoyConfig::new(upstream.addr).wasm("auth", &config));

    let c = bare_claims(&json!({"iss": "https://partner.test", "client_id": "svc-7", "exp": now() + 60}));
    let partner_token = jwt_simple::prelude::ECDSAP256KeyPairLike::sign(&partner_key, c).unwrap();
    assert_allowed(
        &get("/x").bearer(&partner_token).send(gw.addr),
        "partner:svc-7",
        "PEM key, partner issuer",
    );
    assert_allowed(
        &get("/x")
            .bearer(&s.sign("PS384", &claims("m", json!({}))))
            .send(gw.addr),
        "main:m",
        "main issuer",
    );

    // A main-issuer token signed with the partner's key, and the reverse, both fail.
    let forged = s.sign(
        "ES256",
        &json!({"iss": "https://partner.test", "client_id": "svc-7", "exp": now() + 60}),
    );
    assert_denied(
        &get("/x").bearer(&forged).send(gw.addr),
        401,
        "invalid_signature",
        "wrong provider's key",
    );
    let stranger = s.sign("ES256", &claims("z", json!({"iss": "https://stranger.test"})));
    assert_denied(
        &get("/x").bearer(&stranger).send(gw.addr),
        401,
        "invalid_issuer",
        "unknown issuer",
    );
    gw.assert_no_wasm_panic();
}

#[test]
fn numeric_subjects_and_jose_typed_tokens_pass_and_foreign_types_do_not() {
    let (gw, _up) = inline_gateway();
    let s = signers();
    let exp = now() + 600;
    let numeric = s.sign(
        "ES256",
        &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": 1001, "exp": exp}),
    );
    assert_allowed(
        &get("/jwt/x").bearer(&numeric).send(gw.addr),
        "test:1001",
        "numeric sub",
    );
    let fractional = s.sign(
        "RS256",
        &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": 1001.5, "exp": exp}),
    );
    assert_denied(
        &get("/jwt/x").bearer(&fractional).send(gw.addr),
        401,
        "invalid_consumer_claim",
        "fractional sub",
    );
    for typ in ["JOSE", "application/jwt", "at+jwt"] {
        let token = s.es256_typed(typ, &claims("typed", json!({})));
        assert_allowed(&get("/jwt/x").bearer(&token).send(gw.addr), "test:typed", typ);
    }
    let proof = s.es256_typed("dpop+jwt", &claims("typed", json!({})));
    assert_denied(
        &get("/jwt/x").bearer(&proof).send(gw.addr),
        401,
        "unsupported_token_type",
        "a DPoP proof is no access token",
    );
    gw.assert_no_wasm_panic();
}

#[test]
fn api_keys_never_reach_an_upstream_on_any_route_and_jwts_do_unless_stripped() {
    let (gw, _up) = inline_gateway();
    let token = signers().sign("ES256", &claims("k", json!({})));

    // A public route checks nothing, and still removes every API key source.
    let r = get("/public/x?api_key=acme-key-1&keep=1")
        .header("x-api-key", "acme-key-1")
        .send(gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-api-key"), None);
    assert_eq!(r.json()["path"], "/public/x?keep=1");
    let r = get("/public/x").bearer("hobby-key").send(gw.addr);
    assert_eq!(r.upstream_header("authorization"), None, "an opaque bearer is a key");

    // A JWT route forwards the token (JWT stripping is opt-in) and drops a stray key.
    let r = get("/jwt/x")
        .bearer(&token)
        .header("x-api-key", "hobby-key")
        .send(gw.addr);
    assert_allowed(&r, "test:k", "jwt with a stray key");
    assert!(r.upstream_header("authorization").is_some());
    assert_eq!(r.upstream_header("x-api-key"), None);
    let r = get("/public/x").bearer(&token).send(gw.addr);
    assert!(
        r.upstream_header("authorization").is_some(),
        "a JWT on a public route stays"
    );
}

#[test]
fn header_names_with_underscores_are_refused_by_envoy_before_any_filter() {
    let (gw, up) = inline_gateway();
    assert_eq!(get("/public/x").send(gw.addr).status, 200);
    for name in ["x_portico_consumer", "x_portico_tier", "x_api_key"] {
        let r = get("/public/x").header(name, "apikey:admin").send(gw.addr);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
    }
    assert_eq!(up.requests(), 1, "nothing after the first request reached the upstream");
    assert!(eventually(Duration::from_secs(3), || gw
        .metric("portico_auth_requests_total", &[])
        == 1));
    assert_eq!(gw.metric("portico_auth_requests_total", &[]), 1, "auth never saw them");

    // Every shipped Envoy config refuses them too; the embedded gateway, for real.
    let mut shipped_configs = vec![root().join("envoy/gateway.yaml")];
    let mut examples: Vec<_> = std::fs::read_dir(root().join("envoy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    examples.sort();
    shipped_configs.extend(examples);
    for path in shipped_configs {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("headers_with_underscores_action: REJECT_REQUEST"),
            "{} lets `x_portico_consumer` through",
            path.display()
        );
    }
    let shipped = Shipped::start(None);
    let r = get("/public/status")
        .header("x_portico_consumer", "apikey:admin")
        .send(shipped.gw.addr);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(shipped.backend_a.requests() + shipped.backend_b.requests(), 0);
}

/// A JWKS document of `keys` padded with an unused member to at least `bytes` bytes.
fn padded_jwks(keys: Value, bytes: usize) -> String {
    json!({"keys": keys, "padding": "x".repeat(bytes)}).to_string()
}

#[test]
fn remote_jwks_beyond_its_bounds_is_a_failed_fetch_and_shared_secrets_are_opt_in() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let s = signers();
    // The test JWKS holds an `oct` key (kid `hmac`) beside the public keys.
    upstream.set_jwks(200, s.jwks().to_string());
    let remote = |extra: Value| {
        let mut r = json!({"cluster": "jwks", "path": JWKS_PATH, "refresh_seconds": 1, "timeout_ms": 1000,
                           "max_bytes": 65536});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        auth_config(json!({ "remote_jwks": r }))
    };
    let gw = Gateway::start(
        &EnvoyConfig::new(upstream.addr)
            .cluster("jwks", upstream.addr)
            .wasm("auth", &remote(json!({}))),
    );
    let es = s.sign("ES256", &claims("es", json!({})));
    let works = |token: &str| (0..6).all(|_| get("/jwt/x").bearer(token).send(gw.addr).status == 200);
    assert!(eventually(Duration::from_secs(10), || works(&es)), "keys never loaded");

    // The shared secret was skipped, said so and counted: an HS256 token names an unknown key.
    let hs = s.sign("HS256", &claims("hs", json!({})));
    assert_denied(
        &get("/jwt/x").bearer(&hs).send(gw.addr),
        401,
        "unknown_key_id",
        "oct skipped",
    );
    assert!(gw
        .log()
        .contains("skipped a JWKS key: keys[0]: a shared secret (kty \"oct\")"));
    assert!(gw.metric("portico_auth_jwks_keys_skipped", &[]) >= 1);

    // An answer over max_bytes, then one with too many keys: failed fetches, keys kept.
    let failed = gw.metric("portico_auth_jwks_fetch_failed", &[]);
    upstream.set_jwks(200, padded_jwks(s.jwks()["keys"].clone(), 70_000));
    assert!(eventually(Duration::from_secs(10), || gw
        .log()
        .contains("more than remote_jwks.max_bytes (65536)")));
    let es_key = s.jwks()["keys"][2].clone();
    upstream.set_jwks(200, json!({ "keys": vec![es_key; 101] }).to_string());
    assert!(eventually(Duration::from_secs(10), || gw
        .log()
        .contains("101 keys, more than the 100 accepted")));
    assert!(gw.log().contains("JWKS refresh failed, keeping the keys loaded"));
    assert!(gw.metric("portico_auth_jwks_fetch_failed", &[]) >= failed + 2);
    let fresh = s.sign("ES256", &claims("fresh", json!({})));
    assert!(works(&fresh), "the last good keys were dropped");
    gw.assert_no_wasm_panic();
    drop(gw);

    // Opted in, the shared secret serves HS256 tokens.
    upstream.set_jwks(200, s.jwks().to_string());
    let gw = Gateway::start(
        &EnvoyConfig::new(upstream.addr)
            .cluster("jwks", upstream.addr)
            .wasm("auth", &remote(json!({"accept_shared_secrets": true}))),
    );
    let hs = s.sign("HS256", &claims("hs", json!({})));
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = get("/jwt/x").bearer(&hs).send(gw.addr);
            r.status == 200 && r.upstream_header("x-portico-consumer").as_deref() == Some("test:hs")
        }),
        "accepted shared secrets are used"
    );
}

#[test]
fn path_parameters_escapes_trailing_dots_and_narrow_rules_do_not_skip_a_protected_rule() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let mut config = auth_config(json!({"jwks": signers().jwks()}));
    config["routes"] = json!([
        {"match": {"path": "/{*rest}", "methods": ["DELETE"]}, "auth": "jwt"},
        {"match": {"path": "/users/{id}", "methods": ["GET"]}, "auth": "none"},
        {"match": {"path": "/admin/{*rest}"}, "auth": "jwt"},
        {"match": {"hosts": ["api.example.com"]}, "auth": "jwt"}
    ]);
    config["default"] = json!({"auth": "none"});
    let gw = Gateway::start(&EnvoyConfig::new(upstream.addr).wasm("auth", &config));
    assert_eq!(get("/users/7").send(gw.addr).status, 200, "the public rule");
    assert_eq!(get("/elsewhere").send(gw.addr).status, 200, "the public default");
    // Before: the most specific pattern (/users/{id}) did not apply to DELETE, and the request
    // fell to the public default instead of the DELETE rule on /{*rest}.
    let r = Request::new("DELETE", "/users/7").send(gw.addr);
    assert_denied(&r, 401, "missing_credentials", "DELETE falls back to /{*rest}");
    // Envoy passes `;` parameters and %3B on as they are (normalize_path decodes only
    // unreserved escapes); upstreams such as servlet containers read them as /admin.
    for path in [
        "/admin;x=1",
        "/admin;x=1/users",
        "/%61dmin",
        "/admin%3Bx=1",
        "/ad%6Din/a;b/c",
    ] {
        assert_denied(&get(path).send(gw.addr), 401, "missing_credentials", path);
    }
    for host in ["api.example.com.", "API.example.com.:10000", "api.example.com:443"] {
        let r = get("/anything").header("host", host).send(gw.addr);
        assert_denied(&r, 401, "missing_credentials", host);
    }
    gw.assert_no_wasm_panic();
}

#[test]
fn blank_consumer_claims_and_tier_claims_of_the_wrong_type_are_refused_with_their_codes() {
    let (gw, _up) = inline_gateway();
    let s = signers();
    let exp = now() + 600;
    let token = |sub: Value, tier: Option<Value>| {
        let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": exp});
        if let Some(tier) = tier {
            c["tier"] = tier;
        }
        s.sign("ES256", &c)
    };
    for sub in ["", " ", "\t"] {
        let r = get("/jwt/x").bearer(&token(json!(sub), None)).send(gw.addr);
        assert_denied(&r, 401, "blank_consumer_claim", &format!("sub {sub:?}"));
    }
    for tier in [json!(3), json!({"plan": "pro"}), json!(["pro"]), json!("")] {
        let r = get("/jwt/x")
            .bearer(&token(json!("alice"), Some(tier.clone())))
            .send(gw.addr);
        assert_denied(&r, 401, "invalid_tier_claim", &format!("tier {tier}"));
    }
    let r = get("/jwt/x")
        .bearer(&token(json!("alice"), Some(json!("pro"))))
        .send(gw.addr);
    assert_allowed(&r, "test:alice", "string tier");
    assert_eq!(r.upstream_header("x-portico-tier").as_deref(), Some("pro"));
    gw.assert_no_wasm_panic();
}
