//! Verification keys: from inline JWKS, PEM and shared secrets in config, and from remote JWKS.
//!
//! Each [`Key`] is bound to exactly one algorithm. A JWK without `alg` becomes one key per
//! algorithm its type allows (an RSA key serves RS* and PS*), so that selecting a key by the
//! token's `alg` can never use a key of another type: no HS/RS confusion, no `none`.
//!
//! Keys are read with jwt-simple (its key-size policy included), but the signature is checked
//! here with the primitives jwt-simple itself is built on, over the exact signing input:
//! jwt-simple's own check also reads the claims, with `sub`, `jti` and `nonce` typed as
//! strings, so a valid token whose `sub` is a number would fail as malformed. Auth reads the
//! claims once, by its own rules (see `token`).

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jwt_simple::prelude::*;
use p256::ecdsa::signature::Verifier as _;
use portico_core::config::{Errors, Node};
use portico_core::secret::constant_time_eq;
use serde_json::{Map, Value};
use superboring::hash::MessageDigest;
use superboring::pkey::{PKey, Public};
use superboring::rsa::Padding;

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

/// Most keys a remote JWKS document may list. Identity providers publish a handful (two or
/// three during a rotation); a document with more is refused as a failed fetch, so a hostile
/// or broken key server cannot fill a worker's memory or make kid-less tokens expensive.
pub const MAX_REMOTE_KEYS: usize = 100;

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

    /// The digest and padding of an RSA algorithm (RFC 7518 sections 3.3 and 3.5; PSS with a
    /// salt as long as the hash, superboring's default, as jwt-simple uses it).
    fn rsa_scheme(self) -> Option<(MessageDigest, Padding)> {
        Some(match self {
            Alg::Rs256 => (MessageDigest::sha256(), Padding::PKCS1),
            Alg::Rs384 => (MessageDigest::sha384(), Padding::PKCS1),
            Alg::Rs512 => (MessageDigest::sha512(), Padding::PKCS1),
            Alg::Ps256 => (MessageDigest::sha256(), Padding::PKCS1_PSS),
            Alg::Ps384 => (MessageDigest::sha384(), Padding::PKCS1_PSS),
            Alg::Ps512 => (MessageDigest::sha512(), Padding::PKCS1_PSS),
            _ => return None,
        })
    }
}

enum Verifier {
    Hs256(HS256Key),
    Hs384(HS384Key),
    Hs512(HS512Key),
    /// Built once at load: jwt-simple would rebuild it for every token. Boxed: it is several
    /// times the size of the other variants.
    Rsa(Box<PKey<Public>>),
    Es256(p256::ecdsa::VerifyingKey),
    Es384(p384::ecdsa::VerifyingKey),
    EdDsa(ed25519_compact::PublicKey),
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

impl Key {
    /// Whether `signature` (decoded from base64url) signs `signing_input` (the token's
    /// `header.payload`, as sent) under this key and its algorithm.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Hs256(k) => constant_time_eq(&k.authentication_tag(signing_input), signature),
            Verifier::Hs384(k) => constant_time_eq(&k.authentication_tag(signing_input), signature),
            Verifier::Hs512(k) => constant_time_eq(&k.authentication_tag(signing_input), signature),
            Verifier::Rsa(key) => {
                let Some((digest, padding)) = self.alg.rsa_scheme() else {
                    return false;
                };
                let Ok(mut verifier) = superboring::sign::Verifier::new(digest, key) else {
                    return false;
                };
                verifier.set_rsa_padding(padding).is_ok()
                    && verifier.update(signing_input).is_ok()
                    && verifier.verify(signature).unwrap_or(false)
            }
            Verifier::Es256(k) => {
                p256::ecdsa::Signature::from_slice(signature).is_ok_and(|sig| k.verify(signing_input, &sig).is_ok())
            }
            Verifier::Es384(k) => {
                p384::ecdsa::Signature::from_slice(signature).is_ok_and(|sig| k.verify(signing_input, &sig).is_ok())
            }
            Verifier::EdDsa(k) => {
                ed25519_compact::Signature::from_slice(signature).is_ok_and(|sig| k.verify(signing_input, &sig).is_ok())
            }
        }
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
            Alg::Rs256 => RS256PublicKey::from_pem(pem).map(|k| rsa(&k)),
            Alg::Rs384 => RS384PublicKey::from_pem(pem).map(|k| rsa(&k)),
            Alg::Rs512 => RS512PublicKey::from_pem(pem).map(|k| rsa(&k)),
            Alg::Ps256 => PS256PublicKey::from_pem(pem).map(|k| rsa(&k)),
            Alg::Ps384 => PS384PublicKey::from_pem(pem).map(|k| rsa(&k)),
            Alg::Ps512 => PS512PublicKey::from_pem(pem).map(|k| rsa(&k)),
            Alg::Es256 => ES256PublicKey::from_pem(pem).map(|k| Ok(es256(&k))),
            Alg::Es384 => ES384PublicKey::from_pem(pem).map(|k| Ok(es384(&k))),
            Alg::EdDsa => Ed25519PublicKey::from_pem(pem).map(|k| Ok(eddsa(&k))),
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => return Err("HMAC algorithms take `secret`, not `pem`".to_owned()),
        }
        .map_err(|_| format!("not a {} public key in PEM form", alg.name()))??;
        Ok(Key { kid, alg, verifier })
    }

    fn from_jwk_json(alg: Alg, jwk: &str, kid: Option<String>) -> Result<Key, String> {
        let verifier = match alg {
            Alg::Rs256 => RS256PublicKey::from_jwk(jwk).map(|k| rsa(&k)),
            Alg::Rs384 => RS384PublicKey::from_jwk(jwk).map(|k| rsa(&k)),
            Alg::Rs512 => RS512PublicKey::from_jwk(jwk).map(|k| rsa(&k)),
            Alg::Ps256 => PS256PublicKey::from_jwk(jwk).map(|k| rsa(&k)),
            Alg::Ps384 => PS384PublicKey::from_jwk(jwk).map(|k| rsa(&k)),
            Alg::Ps512 => PS512PublicKey::from_jwk(jwk).map(|k| rsa(&k)),
            Alg::Es256 => ES256PublicKey::from_jwk(jwk).map(|k| Ok(es256(&k))),
            Alg::Es384 => ES384PublicKey::from_jwk(jwk).map(|k| Ok(es384(&k))),
            Alg::EdDsa => Ed25519PublicKey::from_jwk(jwk).map(|k| Ok(eddsa(&k))),
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => return Err("oct keys are read from `k`".to_owned()),
        }
        .map_err(|e| format!("invalid {} key: {e}", alg.name()))??;
        Ok(Key { kid, alg, verifier })
    }
}

fn rsa(key: &impl RSAPublicKeyLike) -> Result<Verifier, String> {
    PKey::from_rsa(key.public_key().as_ref().clone())
        .map(|key| Verifier::Rsa(Box::new(key)))
        .map_err(|_| "unusable RSA public key".to_owned())
}

fn es256(key: &ES256PublicKey) -> Verifier {
    Verifier::Es256(*ECDSAP256PublicKeyLike::public_key(key).as_ref())
}

fn es384(key: &ES384PublicKey) -> Verifier {
    Verifier::Es384(*ECDSAP384PublicKeyLike::public_key(key).as_ref())
}

fn eddsa(key: &Ed25519PublicKey) -> Verifier {
    Verifier::EdDsa(*EdDSAPublicKeyLike::public_key(key).as_ref())
}

fn base64url() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// The keys one JWK describes (several when it has no `alg`). `shared_secrets`: whether an
/// `oct` key (an HMAC secret) is accepted.
fn keys_from_jwk(jwk: &Map<String, Value>, shared_secrets: bool) -> Result<Vec<Key>, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|u| u != "sig") {
        return Err("not a signature key (`use` is not \"sig\")".to_owned());
    }
    let kid = text("kid").map(str::to_owned);
    let kty = text("kty").ok_or("missing `kty`")?;
    if kty == "oct" && !shared_secrets {
        return Err(
            "a shared secret (kty \"oct\"): anyone who can read this JWKS could sign tokens; \
             set `remote_jwks.accept_shared_secrets` to use it"
                .to_owned(),
        );
    }
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
        // A secret written into the configuration is the operator's own choice.
        match keys_from_jwk(map, true) {
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

/// A remote JWKS document: keys Portico cannot use, and shared secrets unless
/// `shared_secrets`, are skipped and named in `skipped`. More than [`MAX_REMOTE_KEYS`] keys is
/// an error (the caller's size bound has already been applied to `body`).
pub fn parse_remote_jwks(body: &[u8], shared_secrets: bool) -> Result<(Vec<Key>, Vec<String>), String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = value.get("keys").and_then(Value::as_array).ok_or("no `keys` array")?;
    if items.len() > MAX_REMOTE_KEYS {
        return Err(format!(
            "{} keys, more than the {MAX_REMOTE_KEYS} accepted",
            items.len()
        ));
    }
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item
            .as_object()
            .ok_or_else(|| "not an object".to_owned())
            .and_then(|jwk| keys_from_jwk(jwk, shared_secrets))
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
        let (keys, skipped) = parse_remote_jwks(body.to_string().as_bytes(), true).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(skipped, vec!["keys[0]: unsupported key type \"XYZ\"".to_owned()]);
        assert!(parse_remote_jwks(b"{\"keys\": []}", true).is_err());
        assert!(parse_remote_jwks(b"<html>", true).is_err());
    }

    #[test]
    fn remote_shared_secrets_are_skipped_unless_accepted() {
        let secret = base64url().encode([7u8; 32]);
        let pair = ES256KeyPair::generate();
        let body = json!({"keys": [
            {"kty": "oct", "alg": "HS256", "kid": "h", "k": secret},
            serde_json::from_str::<Value>(&pair.public_key().to_jwk()).unwrap()
        ]})
        .to_string();
        let (keys, skipped) = parse_remote_jwks(body.as_bytes(), false).unwrap();
        assert_eq!(keys.iter().map(|k| k.alg).collect::<Vec<_>>(), vec![Alg::Es256]);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].starts_with("keys[0]: a shared secret (kty \"oct\")"),
            "{skipped:?}"
        );
        let (keys, skipped) = parse_remote_jwks(body.as_bytes(), true).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(skipped.is_empty());
        // Only shared secrets, none accepted: nothing usable, a failed fetch.
        let only = json!({"keys": [{"kty": "oct", "k": secret}]}).to_string();
        assert!(parse_remote_jwks(only.as_bytes(), false).is_err());
    }

    #[test]
    fn remote_jwks_with_too_many_keys_is_refused_whole() {
        let jwk: Value = serde_json::from_str(&ES256KeyPair::generate().public_key().to_jwk()).unwrap();
        let at_bound = json!({"keys": vec![jwk.clone(); MAX_REMOTE_KEYS]}).to_string();
        assert_eq!(
            parse_remote_jwks(at_bound.as_bytes(), false).unwrap().0.len(),
            MAX_REMOTE_KEYS
        );
        let over = json!({"keys": vec![jwk; MAX_REMOTE_KEYS + 1]}).to_string();
        assert_eq!(
            parse_remote_jwks(over.as_bytes(), false).unwrap_err(),
            "101 keys, more than the 100 accepted"
        );
    }

    /// The signing input and decoded signature of a compact token.
    fn split(token: &str) -> (&[u8], Vec<u8>) {
        let (input, sig) = token.rsplit_once('.').unwrap();
        (input.as_bytes(), base64url().decode(sig).unwrap())
    }

    fn claims() -> JWTClaims<NoCustomClaims> {
        Claims::create(Duration::from_hours(1))
    }

    fn jwk_of(public_jwk: &str) -> Map<String, Value> {
        serde_json::from_str(public_jwk).unwrap()
    }

    #[test]
    fn every_algorithm_verifies_its_own_signatures_and_nothing_else() {
        let rsa = RS256KeyPair::generate(2048).unwrap();
        let der = rsa.to_der().unwrap();
        let es256 = ES256KeyPair::generate();
        let es384 = ES384KeyPair::generate();
        let ed = Ed25519KeyPair::generate();
        let secret = [9u8; 32];
        let mut rsa_jwk = jwk_of(&rsa.public_key().to_jwk());
        rsa_jwk.remove("alg");
        let mut keys: Vec<Key> = HMAC_ALGS.iter().filter_map(|a| Key::hmac(*a, &secret, None)).collect();
        keys.extend(keys_from_jwk(&rsa_jwk, false).unwrap());
        keys.extend(keys_from_jwk(&jwk_of(&es256.public_key().to_jwk()), false).unwrap());
        keys.extend(keys_from_jwk(&jwk_of(&es384.public_key().to_jwk()), false).unwrap());
        keys.extend(keys_from_jwk(&jwk_of(&ed.public_key().to_jwk()), false).unwrap());
        let tokens: Vec<(Alg, String)> = vec![
            (
                Alg::Hs256,
                HS256Key::from_bytes(&secret).authenticate(claims()).unwrap(),
            ),
            (
                Alg::Hs384,
                HS384Key::from_bytes(&secret).authenticate(claims()).unwrap(),
            ),
            (
                Alg::Hs512,
                HS512Key::from_bytes(&secret).authenticate(claims()).unwrap(),
            ),
            (
                Alg::Rs256,
                RS256KeyPair::from_der(&der).unwrap().sign(claims()).unwrap(),
            ),
            (
                Alg::Rs384,
                RS384KeyPair::from_der(&der).unwrap().sign(claims()).unwrap(),
            ),
            (
                Alg::Rs512,
                RS512KeyPair::from_der(&der).unwrap().sign(claims()).unwrap(),
            ),
            (
                Alg::Ps256,
                PS256KeyPair::from_der(&der).unwrap().sign(claims()).unwrap(),
            ),
            (
                Alg::Ps384,
                PS384KeyPair::from_der(&der).unwrap().sign(claims()).unwrap(),
            ),
            (
                Alg::Ps512,
                PS512KeyPair::from_der(&der).unwrap().sign(claims()).unwrap(),
            ),
            (Alg::Es256, es256.sign(claims()).unwrap()),
            (Alg::Es384, es384.sign(claims()).unwrap()),
            (Alg::EdDsa, ed.sign(claims()).unwrap()),
        ];
        assert_eq!(keys.len(), tokens.len());
        for (alg, token) in &tokens {
            let (input, sig) = split(token);
            for key in &keys {
                assert_eq!(
                    key.verify(input, &sig),
                    key.alg == *alg,
                    "{alg:?} token, {:?} key",
                    key.alg
                );
            }
            // One changed byte in the input or the signature, a cut signature: all refused.
            let key = keys.iter().find(|k| k.alg == *alg).unwrap();
            let mut tampered = input.to_vec();
            tampered[input.len() - 1] ^= 1;
            assert!(!key.verify(&tampered, &sig), "{alg:?} tampered input");
            let mut bad_sig = sig.clone();
            bad_sig[0] ^= 1;
            assert!(!key.verify(input, &bad_sig), "{alg:?} tampered signature");
            assert!(!key.verify(input, &sig[..sig.len() - 1]), "{alg:?} short signature");
            assert!(!key.verify(input, &[]), "{alg:?} empty signature");
        }
    }

    #[test]
    fn signatures_from_another_key_of_the_same_algorithm_fail() {
        let key = Key::hmac(Alg::Hs256, &[9u8; 32], None).unwrap();
        let other = HS256Key::from_bytes(&[8u8; 32]).authenticate(claims()).unwrap();
        let (input, sig) = split(&other);
        assert!(!key.verify(input, &sig));
        let es = keys_from_jwk(&jwk_of(&ES256KeyPair::generate().public_key().to_jwk()), false).unwrap();
        let token = ES256KeyPair::generate().sign(claims()).unwrap();
        let (input, sig) = split(&token);
        assert!(!es[0].verify(input, &sig));
    }

    #[test]
    fn key_debug_output_never_shows_material() {
        let key = Key::hmac(Alg::Hs256, b"0123456789abcdef0123456789abcdef", Some("k".into())).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("0123"), "{shown}");
        assert!(shown.contains("Hs256"));
    }
}
