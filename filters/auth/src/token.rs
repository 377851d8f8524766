//! Reading a compact JWT before any key is touched, and checking its claims.
//!
//! The header and claims are decoded here, so that cheap checks (size, shape, algorithm, time,
//! issuer, audience) reject a bad token before the expensive signature check, and every failure
//! gets its own stable reason.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portico_core::identity::consumer_id;
use serde_json::{Map, Value};

use crate::config::{Identity, Provider};
use crate::keys::Alg;
use crate::reason::Reason;

/// A token whose structure is valid; its signature is not checked yet.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// What the signature covers: `header.payload` exactly as sent.
    pub signing_input: &'t str,
    pub signature: Vec<u8>,
}

/// True when `value` has the shape of a compact JWS (three base64url segments), which tells a
/// JWT apart from an opaque API key sent as a bearer token.
pub fn looks_like_jwt(value: &str) -> bool {
    value.bytes().filter(|b| *b == b'.').count() == 2
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// Whether a `typ` header names a token auth accepts: a JWT (`JWT`, RFC 7519 section 5.1), a
/// JWS in compact form (`JOSE`, RFC 7515 section 4.1.9) or a JWT access token (`at+jwt`, RFC
/// 9068), each with or without the `application/` prefix, in any case. Other explicitly typed
/// JWTs (`dpop+jwt` proofs, `logout+jwt`, `secevent+jwt`) are not access tokens: RFC 8725
/// section 3.11 types them precisely so that one cannot pass for another.
fn accepted_type(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    matches!(bare, "jwt" | "jose" | "at+jwt")
}

pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, Reason> {
    if token.len() > max_bytes {
        return Err(Reason::TokenTooLarge);
    }
    let Some((signing_input, signature)) = token.rsplit_once('.') else {
        return Err(Reason::MalformedToken);
    };
    let Some((header, payload)) = signing_input.split_once('.') else {
        return Err(Reason::MalformedToken);
    };
    if payload.contains('.') {
        return Err(Reason::MalformedToken);
    }
    let header = decode_object(header)?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::from_name(name).ok_or(Reason::AlgorithmNotAllowed)?,
        _ => return Err(Reason::MalformedToken),
    };
    // No critical extension is understood here, so any listed one makes the token unusable.
    if header
        .get("crit")
        .is_some_and(|c| c.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(Reason::MalformedToken);
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if accepted_type(typ) => {}
        Some(Value::String(_)) => return Err(Reason::UnsupportedTokenType),
        Some(_) => return Err(Reason::MalformedToken),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Reason::MalformedToken),
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| Reason::MalformedToken)?;
    if signature.is_empty() {
        return Err(Reason::MalformedToken);
    }
    let claims = decode_object(payload)?;
    Ok(Parsed {
        alg,
        kid,
        claims,
        signing_input,
        signature,
    })
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, Reason> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| Reason::MalformedToken)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Reason::MalformedToken),
    }
}

/// The token's `iss`, if it is a string.
pub fn issuer(claims: &Map<String, Value>) -> Option<&str> {
    claims.get("iss").and_then(Value::as_str)
}

/// Reads a NumericDate claim; `Err` when present but not a number.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Reason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                // Fractional seconds are allowed by RFC 7519; whole seconds are enough here.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(Some(f as u64))
            } else {
                Err(Reason::MalformedToken)
            }
        }
        Some(_) => Err(Reason::MalformedToken),
    }
}

/// Checks time, issuer, audience and required claims at `now` (Unix seconds). On success,
/// returns the last second at which the token stays valid (`exp` plus skew), if it expires.
pub fn check_claims(claims: &Map<String, Value>, provider: &Provider, now: u64) -> Result<Option<u64>, Reason> {
    let skew = provider.clock_skew_seconds;
    for name in &provider.required_claims {
        if !claims.contains_key(name) {
            return Err(Reason::MissingClaim);
        }
    }
    let exp = numeric_date(claims, "exp")?;
    if let Some(exp) = exp {
        if now > exp.saturating_add(skew) {
            return Err(Reason::TokenExpired);
        }
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now.saturating_add(skew) < nbf {
            return Err(Reason::TokenNotYetValid);
        }
    }
    if !provider.issuers.is_empty() {
        let ok = issuer(claims).is_some_and(|iss| provider.issuers.iter().any(|i| i == iss));
        if !ok {
            return Err(Reason::InvalidIssuer);
        }
    }
    if !provider.audiences.is_empty() {
        let accepted = |a: &str| provider.audiences.iter().any(|x| x == a);
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => accepted(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        };
        if !ok {
            return Err(Reason::InvalidAudience);
        }
    }
    Ok(exp.map(|e| e.saturating_add(skew)))
}

/// Who the token says the caller is. The consumer claim must be a string without surrounding
/// whitespace, or an integer (taken as its decimal text); the consumer id is it in the
/// provider's namespace. A blank one is refused with its own code: every such token would
/// otherwise be one shared consumer. The tier claim, when present, must be a non-empty string:
/// a number or an object is a mistake in the issuer's mapping, which silently giving the
/// default tier would hide.
pub fn identity(claims: &Map<String, Value>, provider: &Provider) -> Result<Identity, Reason> {
    let name = match claims.get(&provider.consumer_claim) {
        None => return Err(Reason::MissingClaim),
        Some(Value::String(s)) if s.trim().is_empty() => return Err(Reason::BlankConsumerClaim),
        Some(Value::String(s)) if s.trim() == s && header_safe(s) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(_) => return Err(Reason::InvalidConsumerClaim),
    };
    let tier = match provider.tier_claim.as_ref().and_then(|name| claims.get(name)) {
        None | Some(Value::Null) => provider.default_tier.clone(),
        Some(Value::String(t)) if !t.trim().is_empty() && t.trim() == t && header_safe(t) => Some(t.clone()),
        Some(_) => return Err(Reason::InvalidTierClaim),
    };
    let mut scopes: Vec<String> = Vec::new();
    if let Some(Value::String(s)) = claims.get("scope") {
        scopes.extend(s.split_whitespace().map(str::to_owned));
    }
    match claims.get("scp") {
        Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
        Some(Value::Array(list)) => scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_owned)),
        _ => {}
    }
    let headers = provider
        .claim_headers
        .iter()
        .filter_map(|(claim, header)| {
            let value = match claims.get(claim)? {
                Value::Array(items) => items.iter().filter_map(scalar_text).collect::<Vec<_>>().join(","),
                other => scalar_text(other)?,
            };
            header_safe(&value).then(|| (header.clone(), value))
        })
        .collect();
    Ok(Identity {
        consumer: consumer_id(&provider.namespace, &name),
        tier,
        scopes,
        headers,
    })
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Claim values become header values: refuse anything that could split or corrupt a header,
/// and anything absurdly long.
fn header_safe(value: &str) -> bool {
    value.len() <= 1024 && value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> Provider {
        Provider {
            name: "p".into(),
            namespace: "p".into(),
            namespace_explicit: false,
            issuers: vec!["https://iss".into()],
            audiences: vec!["api".into()],
            clock_skew_seconds: 10,
            required_claims: vec!["exp".into()],
            consumer_claim: "sub".into(),
            tier_claim: Some("tier".into()),
            default_tier: Some("free".into()),
            claim_headers: vec![
                ("email".into(), "x-portico-email".into()),
                ("groups".into(), "x-portico-groups".into()),
            ],
            static_keys: vec![],
            remote: None,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn seg(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn structure_errors_are_malformed() {
        let good_header = seg(&json!({"alg": "HS256"}));
        let cases = [
            ("two segments", format!("{good_header}.e30")),
            ("four segments", format!("{good_header}.e30.c2ln.x")),
            ("bad base64", format!("{good_header}.e30*.c2ln")),
            (
                "header not json",
                format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("nope")),
            ),
            ("claims an array", format!("{good_header}.{}.c2ln", seg(&json!([1])))),
            ("empty signature", format!("{good_header}.e30.")),
            ("signature not base64url", format!("{good_header}.e30.c2ln+")),
            ("padded signature", format!("{good_header}.e30.c2lnbg==")),
            (
                "kid not a string",
                format!("{}.e30.c2ln", seg(&json!({"alg": "HS256", "kid": 1}))),
            ),
            (
                "critical extension",
                format!("{}.e30.c2ln", seg(&json!({"alg": "HS256", "crit": ["b64"]}))),
            ),
        ];
        for (name, token) in cases {
            assert_eq!(parse(&token, 8192).unwrap_err(), Reason::MalformedToken, "{name}");
        }
    }

    #[test]
    fn none_and_unknown_algorithms_are_refused() {
        for alg in ["none", "None", "HS1", "ES512", "RSA-OAEP"] {
            let token = format!("{}.e30.c2ln", seg(&json!({"alg": alg})));
            assert_eq!(parse(&token, 8192).unwrap_err(), Reason::AlgorithmNotAllowed, "{alg}");
        }
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let token = "a".repeat(10_000);
        assert_eq!(parse(&token, 8192).unwrap_err(), Reason::TokenTooLarge);
    }

    #[test]
    fn a_good_token_parses() {
        let token = format!(
            "{}.{}.c2ln",
            seg(&json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})),
            seg(&json!({"sub": "a"}))
        );
        let p = parse(&token, 8192).unwrap();
        assert_eq!(p.alg, Alg::Es256);
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims.get("sub"), Some(&json!("a")));
        assert_eq!(Some(p.signing_input), token.rsplit_once('.').map(|(input, _)| input));
        assert_eq!(p.signature, b"sig");
    }

    #[test]
    fn claim_checks_use_the_skew() {
        let p = provider();
        let base = json!({"iss": "https://iss", "aud": "api"});
        let with = |extra: Value| {
            let mut m = claims(base.clone());
            m.extend(claims(extra));
            m
        };
        assert_eq!(check_claims(&with(json!({"exp": 100})), &p, 110), Ok(Some(110)));
        assert_eq!(
            check_claims(&with(json!({"exp": 100})), &p, 111),
            Err(Reason::TokenExpired)
        );
        assert_eq!(
            check_claims(&with(json!({"exp": 1000, "nbf": 200})), &p, 190),
            Ok(Some(1010))
        );
        assert_eq!(
            check_claims(&with(json!({"exp": 1000, "nbf": 200})), &p, 189),
            Err(Reason::TokenNotYetValid)
        );
        assert_eq!(
            check_claims(&with(json!({"exp": "soon"})), &p, 0),
            Err(Reason::MalformedToken)
        );
        assert_eq!(check_claims(&with(json!({"exp": 100.7})), &p, 105), Ok(Some(110)));
    }

    #[test]
    fn issuer_audience_and_required_claims_are_enforced() {
        let p = provider();
        let ok = json!({"iss": "https://iss", "aud": ["x", "api"], "exp": 50});
        assert!(check_claims(&claims(ok), &p, 0).is_ok());
        let cases = [
            (
                json!({"iss": "https://evil", "aud": "api", "exp": 50}),
                Reason::InvalidIssuer,
            ),
            (json!({"aud": "api", "exp": 50}), Reason::InvalidIssuer),
            (
                json!({"iss": "https://iss", "aud": "other", "exp": 50}),
                Reason::InvalidAudience,
            ),
            (json!({"iss": "https://iss", "exp": 50}), Reason::InvalidAudience),
            (json!({"iss": "https://iss", "aud": "api"}), Reason::MissingClaim),
        ];
        for (c, want) in cases {
            assert_eq!(check_claims(&claims(c.clone()), &p, 0), Err(want), "{c}");
        }
    }

    #[test]
    fn identity_maps_consumer_tier_scopes_and_headers() {
        let p = provider();
        let c = claims(
            json!({"sub": "alice", "tier": "pro", "scope": "read write", "scp": ["admin"], "email": "a@x", "groups": ["g1", "g2"]}),
        );
        let id = identity(&c, &p).unwrap();
        assert_eq!(id.consumer, "p:alice");
        assert_eq!(id.tier.as_deref(), Some("pro"));
        assert_eq!(id.scopes, vec!["read", "write", "admin"]);
        assert_eq!(
            id.headers,
            vec![
                ("x-portico-email".to_owned(), "a@x".to_owned()),
                ("x-portico-groups".to_owned(), "g1,g2".to_owned())
            ]
        );
        let no_tier = identity(&claims(json!({"sub": "bob"})), &p).unwrap();
        assert_eq!(no_tier.tier.as_deref(), Some("free"));
    }

    #[test]
    fn the_consumer_claim_is_a_string_or_an_integer_in_the_providers_namespace() {
        let mut p = provider();
        p.namespace = "shared".into();
        let consumer = |sub: Value| identity(&claims(json!({ "sub": sub })), &p).map(|id| id.consumer);
        assert_eq!(consumer(json!("user-1001")), Ok("shared:user-1001".to_owned()));
        assert_eq!(consumer(json!(1001)), Ok("shared:1001".to_owned()));
        assert_eq!(consumer(json!(-7)), Ok("shared:-7".to_owned()));
        assert_eq!(
            consumer(json!(18_446_744_073_709_551_615u64)),
            Ok("shared:18446744073709551615".to_owned())
        );
        for bad in [
            json!(1001.5),
            json!(1e300),
            json!(true),
            json!(null),
            json!(["a"]),
            json!({"id": 1}),
        ] {
            assert_eq!(consumer(bad.clone()), Err(Reason::InvalidConsumerClaim), "{bad}");
        }
        assert_eq!(
            identity(&claims(json!({"email": "x"})), &p).unwrap_err(),
            Reason::MissingClaim
        );
    }

    #[test]
    fn a_blank_consumer_claim_and_a_tier_claim_that_is_not_a_name_are_refused() {
        let p = provider();
        let refused = |c: Value| identity(&claims(c), &p).map(|id| id.consumer).unwrap_err();
        for blank in [json!(""), json!(" "), json!("\t \t")] {
            assert_eq!(refused(json!({ "sub": blank })), Reason::BlankConsumerClaim, "{blank}");
        }
        // Around a name, whitespace would make ` alice` a consumer that looks like `alice`.
        assert_eq!(refused(json!({"sub": " alice"})), Reason::InvalidConsumerClaim);
        for bad in [
            json!(3),
            json!({"name": "pro"}),
            json!(["pro"]),
            json!(true),
            json!(""),
            json!(" "),
        ] {
            assert_eq!(
                refused(json!({"sub": "alice", "tier": bad.clone()})),
                Reason::InvalidTierClaim,
                "{bad}"
            );
        }
        let tier = |c: Value| identity(&claims(c), &p).unwrap().tier;
        assert_eq!(tier(json!({"sub": "alice", "tier": "pro"})), Some("pro".to_owned()));
        assert_eq!(
            tier(json!({"sub": "alice"})),
            Some("free".to_owned()),
            "absent: the default"
        );
        assert_eq!(
            tier(json!({"sub": "alice", "tier": null})),
            Some("free".to_owned()),
            "null: absent"
        );
    }

    #[test]
    fn jwt_jose_and_access_token_types_are_accepted_in_any_case() {
        let token = |typ: Value| format!("{}.{}.c2ln", seg(&json!({"alg": "HS256", "typ": typ})), seg(&json!({})));
        for ok in [
            "JWT",
            "jwt",
            "JOSE",
            "jose",
            "application/jwt",
            "Application/JOSE",
            "at+jwt",
            "application/at+JWT",
        ] {
            assert!(parse(&token(json!(ok)), 8192).is_ok(), "{ok}");
        }
        for other in [
            "dpop+jwt",
            "logout+jwt",
            "secevent+jwt",
            "JWE",
            "application/json",
            "",
            "jwt ",
        ] {
            assert_eq!(
                parse(&token(json!(other)), 8192).unwrap_err(),
                Reason::UnsupportedTokenType,
                "{other}"
            );
        }
        assert_eq!(parse(&token(json!(1)), 8192).unwrap_err(), Reason::MalformedToken);
        let untyped = format!("{}.{}.c2ln", seg(&json!({"alg": "HS256"})), seg(&json!({})));
        assert!(parse(&untyped, 8192).is_ok());
    }

    #[test]
    fn header_breaking_claim_values_are_not_used() {
        let p = provider();
        assert_eq!(
            identity(&claims(json!({"sub": "a\r\nx-evil: 1"})), &p).unwrap_err(),
            Reason::InvalidConsumerClaim
        );
        let id = identity(&claims(json!({"sub": "a", "email": "x\ny"})), &p).unwrap();
        assert!(id.headers.is_empty());
    }

    #[test]
    fn jwt_shape_tells_tokens_from_api_keys() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("sk-live-abc123"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c d"));
    }
}
