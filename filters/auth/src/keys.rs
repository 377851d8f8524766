//! Verification keys: from inline JWKS, PEM and shared secrets in config, and from remote JWKS.
//!
//! Each [`Key`] is bound to exactly one algorithm. A JWK without `alg` becomes one key per
//! algorithm its type allows (an RSA key serves RS* and PS*), so that selecting a key by the
//! token's `alg` can never use a key of another type: no HS/RS confusion, no `none`.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use portico_core::config::{Errors, Node};
use serde_json::{Map, Value};

/// The signature algorithms Portico accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

const RSA_ALGS: [Alg; 6] = [Alg::Rs256, Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512];
const HMAC_ALGS: [Alg; 3] = [Alg::Hs256, Alg::Hs384, Alg::Hs512];

/// Shortest accepted HMAC secret, in bytes (RFC 7518 section 3.2 asks for the hash size).
pub const MIN_HMAC_SECRET: usize = 32;

impl Alg {
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }
}

enum Verifier {
    Hs256(HS256Key),
    Hs384(HS384Key),
    Hs512(HS512Key),
    Rs256(RS256PublicKey),
    Rs384(RS384PublicKey),
    Rs512(RS512PublicKey),
    Ps256(PS256PublicKey),
    Ps384(PS384PublicKey),
    Ps512(PS512PublicKey),
    Es256(ES256PublicKey),
    Es384(ES384PublicKey),
    EdDsa(Ed25519PublicKey),
}

/// One verification key for one algorithm.
pub struct Key {
    pub kid: Option<String>,
    pub alg: Alg,
    verifier: Verifier,
}

// Hand-written so that a secret can never reach a log through `{:?}`.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a signature check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not match.
    Invalid,
    /// The token is not a JWT jwt-simple can read (its claims have the wrong types).
    Malformed,
}

impl Key {
    /// Checks `token`'s signature. Claims are checked by the caller with the host clock.
    pub fn verify(&self, token: &str) -> Result<(), SignatureError> {
        let options = VerificationOptions {
            // Time-based checks are Portico's (host clock, configured skew): pin jwt-simple's
            // clock to zero with no tolerance so that it checks only the signature and shape.
            accept_future: true,
            artificial_time: Some(UnixTimeStamp::from_secs(0)),
            time_tolerance: Some(Duration::from_secs(0)),
            max_token_length: None,
            ..Default::default()
        };
        let options = Some(options);
        let result = match &self.verifier {
            Verifier::Hs256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Hs384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Hs512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Rs256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Rs384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Rs512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Ps256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Ps384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Ps512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Es256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::Es384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            Verifier::EdDsa(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
        };
        result.map_err(|e| match e.downcast_ref::<JWTError>() {
            Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => SignatureError::Invalid,
            _ => SignatureError::Malformed,
        })
    }

    fn hmac(alg: Alg, secret: &[u8], kid: Option<String>) -> Option<Key> {
        let verifier = match alg {
            Alg::Hs256 => Verifier::Hs256(HS256Key::from_bytes(secret)),
            Alg::Hs384 => Verifier::Hs384(HS384Key::from_bytes(secret)),
            Alg::Hs512 => Verifier::Hs512(HS512Key::from_bytes(secret)),
            _ => return None,
        };
        Some(Key { kid, alg, verifier })
    }

    fn from_pem(alg: Alg, pem: &str, kid: Option<String>) -> Result<Key, String> {
        let verifier = match alg {
            Alg::Rs256 => RS256PublicKey::from_pem(pem).map(Verifier::Rs256),
            Alg::Rs384 => RS384PublicKey::from_pem(pem).map(Verifier::Rs384),
            Alg::Rs512 => RS512PublicKey::from_pem(pem).map(Verifier::Rs512),
            Alg::Ps256 => PS256PublicKey::from_pem(pem).map(Verifier::Ps256),
            Alg::Ps384 => PS384PublicKey::from_pem(pem).map(Verifier::Ps384),
            Alg::Ps512 => PS512PublicKey::from_pem(pem).map(Verifier::Ps512),
            Alg::Es256 => ES256PublicKey::from_pem(pem).map(Verifier::Es256),
            Alg::Es384 => ES384PublicKey::from_pem(pem).map(Verifier::Es384),
            Alg::EdDsa => Ed25519PublicKey::from_pem(pem).map(Verifier::EdDsa),
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => return Err("HMAC algorithms take `secret`, not `pem`".to_owned()),
        }
        .map_err(|_| format!("not a {} public key in PEM form", alg.name()))?;
        Ok(Key { kid, alg, verifier })
    }

    fn from_jwk_json(alg: Alg, jwk: &str, kid: Option<String>) -> Result<Key, String> {
        let verifier = match alg {
            Alg::Rs256 => RS256PublicKey::from_jwk(jwk).map(Verifier::Rs256),
            Alg::Rs384 => RS384PublicKey::from_jwk(jwk).map(Verifier::Rs384),
            Alg::Rs512 => RS512PublicKey::from_jwk(jwk).map(Verifier::Rs512),
            Alg::Ps256 => PS256PublicKey::from_jwk(jwk).map(Verifier::Ps256),
            Alg::Ps384 => PS384PublicKey::from_jwk(jwk).map(Verifier::Ps384),
            Alg::Ps512 => PS512PublicKey::from_jwk(jwk).map(Verifier::Ps512),
            Alg::Es256 => ES256PublicKey::from_jwk(jwk).map(Verifier::Es256),
            Alg::Es384 => ES384PublicKey::from_jwk(jwk).map(Verifier::Es384),
            Alg::EdDsa => Ed25519PublicKey::from_jwk(jwk).map(Verifier::EdDsa),
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => return Err("oct keys are read from `k`".to_owned()),
        }
        .map_err(|e| format!("invalid {} key: {e}", alg.name()))?;
        Ok(Key { kid, alg, verifier })
    }
}

fn base64url() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// The keys one JWK describes (several when it has no `alg`).
fn keys_from_jwk(jwk: &Map<String, Value>) -> Result<Vec<Key>, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|u| u != "sig") {
        return Err("not a signature key (`use` is not \"sig\")".to_owned());
    }
    let kid = text("kid").map(str::to_owned);
    let kty = text("kty").ok_or("missing `kty`")?;
    let family: Vec<Alg> = match (kty, text("crv")) {
        ("RSA", _) => RSA_ALGS.to_vec(),
        ("EC", Some("P-256")) => vec![Alg::Es256],
        ("EC", Some("P-384")) => vec![Alg::Es384],
        ("OKP", Some("Ed25519")) => vec![Alg::EdDsa],
        ("oct", _) => HMAC_ALGS.to_vec(),
        (kty, crv) => {
            return Err(format!(
                "unsupported key type {kty:?}{}",
                crv.map(|c| format!(" with curve {c:?}")).unwrap_or_default()
            ))
        }
    };
    let algs = match jwk.get("alg") {
        None => family,
        Some(Value::String(name)) => match Alg::from_name(name) {
            Some(alg) if family.contains(&alg) => vec![alg],
            Some(_) => return Err(format!("`alg` {name:?} does not fit key type {kty:?}")),
            None => return Err(format!("unsupported `alg` {name:?}")),
        },
        Some(_) => return Err("`alg` must be a string".to_owned()),
    };
    if kty == "oct" {
        let secret = text("k")
            .and_then(|k| base64url().decode(k).ok())
            .ok_or("`k` must be base64url")?;
        if secret.len() < MIN_HMAC_SECRET {
            return Err(format!("HMAC secrets must be at least {MIN_HMAC_SECRET} bytes"));
        }
        return Ok(algs
            .into_iter()
            .filter_map(|alg| Key::hmac(alg, &secret, kid.clone()))
            .collect());
    }
    let json = serde_json::to_string(jwk).map_err(|e| e.to_string())?;
    algs.into_iter()
        .map(|alg| Key::from_jwk_json(alg, &json, kid.clone()))
        .collect()
}

/// A JWKS document in config: every unusable key is an error at its path.
pub fn parse_inline_jwks(node: &Node<'_>, errors: &mut Errors) -> Vec<Key> {
    let Some(mut obj) = node.object(errors) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let items = obj
        .req("keys", errors)
        .and_then(|n| n.array(errors))
        .unwrap_or_default();
    for item in items {
        let Some(map) = item.value().as_object() else {
            item.error(errors, "expected an object");
            continue;
        };
        match keys_from_jwk(map) {
            Ok(k) => keys.extend(k),
            Err(message) => item.error(errors, message),
        }
    }
    // JWKS documents carry other members (x5c, x5t, ...): only `keys` is read, the rest is
    // accepted as-is, like a remote document.
    let _ = obj.entries();
    obj.finish(errors);
    keys
}

/// A remote JWKS document: keys Portico cannot use are skipped and named in `skipped`.
pub fn parse_remote_jwks(body: &[u8]) -> Result<(Vec<Key>, Vec<String>), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = value.get("keys").and_then(Value::as_array).ok_or("no `keys` array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item
            .as_object()
            .ok_or_else(|| "not an object".to_owned())
            .and_then(keys_from_jwk)
        {
            Ok(k) => keys.extend(k),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    if keys.is_empty() {
        return Err(format!("no usable key ({})", skipped.join("; ")));
    }
    Ok((keys, skipped))
}

/// One entry of a provider's `keys`: `{"alg", "pem"|"secret", "kid"?}`.
pub fn parse_config_key(node: &Node<'_>, errors: &mut Errors) -> Option<Key> {
    let mut obj = node.object(errors)?;
    let alg = obj.req("alg", errors).and_then(|n| {
        let name = n.str(errors)?;
        let alg = Alg::from_name(name);
        if alg.is_none() {
            n.error(errors, format!("unsupported algorithm {name:?}"));
        }
        alg
    });
    let kid = obj.opt_str("kid", errors).map(str::to_owned);
    let pem = obj.opt("pem");
    let secret = obj.opt("secret");
    let key = match (alg, pem, secret) {
        (Some(alg), Some(pem), None) => pem.non_empty_str(errors).and_then(|text| {
            Key::from_pem(alg, text, kid)
                .map_err(|message| pem.error(errors, message))
                .ok()
        }),
        (Some(alg), None, Some(secret)) => secret.non_empty_str(errors).and_then(|text| {
            if !HMAC_ALGS.contains(&alg) {
                secret.error(errors, format!("{} takes `pem`, not `secret`", alg.name()));
                None
            } else if text.len() < MIN_HMAC_SECRET {
                secret.error(errors, format!("must be at least {MIN_HMAC_SECRET} bytes"));
                None
            } else {
                Key::hmac(alg, text.as_bytes(), kid)
            }
        }),
        (_, Some(_), Some(_)) => {
            obj.field_error("secret", errors, "give either `pem` or `secret`, not both");
            None
        }
        (_, None, None) => {
            obj.field_error("pem", errors, "required: `pem` (public key) or `secret` (HMAC)");
            None
        }
        (None, _, _) => None,
    };
    obj.finish(errors);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inline(v: Value) -> (Vec<Key>, Errors) {
        let mut errors = Errors::default();
        let keys = parse_inline_jwks(&Node::new("$.jwks".into(), &v), &mut errors);
        (keys, errors)
    }

    #[test]
    fn an_rsa_jwk_without_alg_serves_every_rsa_algorithm() {
        let pair = RS256KeyPair::generate(2048).unwrap();
        let mut jwk: Value = serde_json::from_str(&pair.public_key().to_jwk()).unwrap();
        jwk.as_object_mut().unwrap().remove("alg");
        jwk["kid"] = json!("r1");
        let (keys, errors) = inline(json!({"keys": [jwk]}));
        assert!(errors.is_empty(), "{errors}");
        let algs: Vec<Alg> = keys.iter().map(|k| k.alg).collect();
        assert_eq!(algs, RSA_ALGS.to_vec());
        assert!(keys.iter().all(|k| k.kid.as_deref() == Some("r1")));
    }

    #[test]
    fn a_jwk_alg_must_fit_its_key_type() {
        let (_, errors) = inline(json!({"keys": [{"kty": "oct", "alg": "RS256", "k": "AAAA"}]}));
        assert_eq!(
            errors.to_string(),
            "$.jwks.keys[0]: `alg` \"RS256\" does not fit key type \"oct\""
        );
    }

    #[test]
    fn encryption_keys_and_unknown_curves_are_rejected_in_config() {
        let (_, errors) = inline(json!({"keys": [
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-521", "x": "", "y": ""}
        ]}));
        assert_eq!(
            errors.to_string(),
            "$.jwks.keys[0]: not a signature key (`use` is not \"sig\"); \
             $.jwks.keys[1]: unsupported key type \"EC\" with curve \"P-521\""
        );
    }

    #[test]
    fn short_hmac_secrets_are_rejected() {
        let (_, errors) = inline(json!({"keys": [{"kty": "oct", "k": base64url().encode(b"short")}]}));
        assert_eq!(
            errors.to_string(),
            "$.jwks.keys[0]: HMAC secrets must be at least 32 bytes"
        );
        let mut errors = Errors::default();
        let v = json!({"alg": "HS256", "secret": "short"});
        assert!(parse_config_key(&Node::new("$.k".into(), &v), &mut errors).is_none());
        assert_eq!(errors.to_string(), "$.k.secret: must be at least 32 bytes");
    }

    #[test]
    fn pem_keys_must_match_their_algorithm() {
        let pair = ES256KeyPair::generate();
        let pem = pair.public_key().to_pem().unwrap();
        let mut errors = Errors::default();
        let ok = json!({"alg": "ES256", "pem": pem});
        assert!(parse_config_key(&Node::new("$.k".into(), &ok), &mut errors).is_some());
        let wrong = json!({"alg": "RS256", "pem": pem});
        assert!(parse_config_key(&Node::new("$.k".into(), &wrong), &mut errors).is_none());
        assert_eq!(errors.to_string(), "$.k.pem: not a RS256 public key in PEM form");
    }

    #[test]
    fn remote_jwks_skips_unusable_keys_but_needs_one() {
        let secret = base64url().encode([7u8; 32]);
        let body = json!({"keys": [{"kty": "XYZ"}, {"kty": "oct", "alg": "HS256", "kid": "h", "k": secret}]});
        let (keys, skipped) = parse_remote_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(skipped, vec!["keys[0]: unsupported key type \"XYZ\"".to_owned()]);
        assert!(parse_remote_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_remote_jwks(b"<html>").is_err());
    }

    #[test]
    fn signatures_are_checked_and_errors_classified() {
        let secret = [9u8; 32];
        let key = Key::hmac(Alg::Hs256, &secret, None).unwrap();
        let signer = HS256Key::from_bytes(&secret);
        let token = signer.authenticate(Claims::create(Duration::from_hours(1))).unwrap();
        assert_eq!(key.verify(&token), Ok(()));
        let other = HS256Key::from_bytes(&[8u8; 32])
            .authenticate(Claims::create(Duration::from_hours(1)))
            .unwrap();
        assert_eq!(key.verify(&other), Err(SignatureError::Invalid));
        assert_eq!(key.verify("a.b.c"), Err(SignatureError::Malformed));
    }

    #[test]
    fn key_debug_output_never_shows_material() {
        let key = Key::hmac(Alg::Hs256, b"0123456789abcdef0123456789abcdef", Some("k".into())).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("0123"), "{shown}");
        assert!(shown.contains("Hs256"));
    }
}
