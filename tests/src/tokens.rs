//! Keys and tokens minted by the tests themselves, for every algorithm Portico accepts.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

pub const ISSUER: &str = "https://idp.portico.test";
pub const AUDIENCE: &str = "portico-tests";
/// The HMAC secret (32 bytes) the JWKS publishes as an `oct` key with kid `hmac`.
pub const HMAC_SECRET: &[u8; 32] = b"portico-test-hmac-secret-32bytes";

/// Every algorithm Portico accepts.
pub const ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// One signing key per family, generated once per test process.
pub struct Signers {
    pub rsa: RS256KeyPair,
    pub es256: ES256KeyPair,
    pub es384: ES384KeyPair,
    pub eddsa: Ed25519KeyPair,
}

pub fn signers() -> &'static Signers {
    static SIGNERS: OnceLock<Signers> = OnceLock::new();
    SIGNERS.get_or_init(|| Signers {
        rsa: RS256KeyPair::generate(2048).expect("rsa keygen"),
        es256: ES256KeyPair::generate(),
        es384: ES384KeyPair::generate(),
        eddsa: Ed25519KeyPair::generate(),
    })
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn without_alg(jwk: &str, kid: &str) -> Value {
    let mut v: Value = serde_json::from_str(jwk).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("alg");
    obj.insert("kid".into(), json!(kid));
    v
}

impl Signers {
    /// The public JWKS for every family: kids `hmac`, `rsa`, `es256`, `es384`, `ed`. The RSA
    /// and HMAC keys carry no `alg`, so each serves all algorithms of its family.
    pub fn jwks(&self) -> Value {
        json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(HMAC_SECRET)},
            without_alg(&self.rsa.public_key().to_jwk(), "rsa"),
            without_alg(&self.es256.public_key().to_jwk(), "es256"),
            without_alg(&self.es384.public_key().to_jwk(), "es384"),
            without_alg(&self.eddsa.public_key().to_jwk(), "ed"),
        ]})
    }

    /// An ES256 token (kid `es256`) whose header carries `typ`.
    pub fn es256_typed(&self, typ: &str, claims: &Value) -> String {
        let options = HeaderOptions {
            signature_type: Some(typ.to_owned()),
            ..Default::default()
        };
        ES256KeyPair::from_bytes(&self.es256.to_bytes())
            .unwrap()
            .with_key_id("es256")
            .sign_with_options(bare_claims(claims), &options)
            .unwrap()
    }

    /// The RSA public key in PEM form (what an attacker would use as an HMAC secret).
    pub fn rsa_public_pem(&self) -> String {
        self.rsa.public_key().to_pem().unwrap()
    }

    /// A token signed with `alg` (see [`ALGORITHMS`]) over exactly `claims`.
    pub fn sign(&self, alg: &str, claims: &Value) -> String {
        let c = bare_claims(claims);
        let der = self.rsa.to_der().unwrap();
        let r = match alg {
            "HS256" => HS256Key::from_bytes(HMAC_SECRET).with_key_id("hmac").authenticate(c),
            "HS384" => HS384Key::from_bytes(HMAC_SECRET).with_key_id("hmac").authenticate(c),
            "HS512" => HS512Key::from_bytes(HMAC_SECRET).with_key_id("hmac").authenticate(c),
            "RS256" => RS256KeyPair::from_der(&der).unwrap().with_key_id("rsa").sign(c),
            "RS384" => RS384KeyPair::from_der(&der).unwrap().with_key_id("rsa").sign(c),
            "RS512" => RS512KeyPair::from_der(&der).unwrap().with_key_id("rsa").sign(c),
            "PS256" => PS256KeyPair::from_der(&der).unwrap().with_key_id("rsa").sign(c),
            "PS384" => PS384KeyPair::from_der(&der).unwrap().with_key_id("rsa").sign(c),
            "PS512" => PS512KeyPair::from_der(&der).unwrap().with_key_id("rsa").sign(c),
            "ES256" => ES256KeyPair::from_bytes(&self.es256.to_bytes())
                .unwrap()
                .with_key_id("es256")
                .sign(c),
            "ES384" => ES384KeyPair::from_bytes(&self.es384.to_bytes())
                .unwrap()
                .with_key_id("es384")
                .sign(c),
            "EdDSA" => Ed25519KeyPair::from_bytes(&self.eddsa.to_bytes())
                .unwrap()
                .with_key_id("ed")
                .sign(c),
            other => panic!("no signer for {other}"),
        };
        r.unwrap()
    }
}

/// jwt-simple claims that serialise to exactly `claims`: its own `iat`, `exp` and `nbf` are
/// cleared, so a test controls every field (and never sends one twice).
pub fn bare_claims(claims: &Value) -> JWTClaims<Map<String, Value>> {
    let custom: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(0));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    c
}

/// Standard valid claims for `sub`, expiring in an hour, plus `extra`.
pub fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now() + 3600, "iat": now()});
    if let (Some(base), Some(more)) = (c.as_object_mut(), extra.as_object()) {
        base.extend(more.clone());
    }
    c
}

/// Builds a token from raw parts (for hostile cases): base64url of the header and claims JSON,
/// and `signature` as given.
pub fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An HS256 token signed with `secret` (any bytes), with the given kid.
pub fn hs256_with_secret(secret: &[u8], kid: &str, claims: &Value) -> String {
    let c = bare_claims(claims);
    HS256Key::from_bytes(secret).with_key_id(kid).authenticate(c).unwrap()
}
