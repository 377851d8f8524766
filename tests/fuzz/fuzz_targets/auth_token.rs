//! Tokens through the auth decision, with a provider whose HS256 secret the harness knows.
//!
//! The input is a control byte and the token's claims. The harness signs them, so the
//! fuzzer reaches every claim check; then it alters one byte of the signature or of the
//! signed text (the control byte chooses which): that token must be refused whatever the
//! claims say. The input is also sent as a raw bearer value and API key, and must never panic.
#![no_main]

use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use portico_auth::authn::{Authenticator, Decision};
use portico_auth::config::Config;
use portico_core::request::RequestView;
use portico_fuzz::control;

const SECRET: &str = "fuzz-target-secret-of-32-bytes!!";
const NOW: u64 = 1_700_000_000;

thread_local! {
    static CONFIG: Rc<Config> = Rc::new(
        Config::from_bytes(
            format!(
                r#"{{"jwt": {{"sources": [{{"type": "bearer"}}, {{"type": "cookie", "name": "session"}}],
                    "providers": [{{"name": "p", "tier_claim": "tier", "required_claims": [],
                        "claim_headers": {{"email": "x-email", "groups": "x-groups"}},
                        "keys": [{{"alg": "HS256", "kid": "h", "secret": "{SECRET}"}}]}}]}},
                   "api_keys": {{"consumers": [{{"name": "acme", "keys": [{{"sha256": "{}"}}]}}]}},
                   "routes": [{{"match": {{"path": "/open"}}, "auth": "none"}}],
                   "default": {{"auth": "any"}}}}"#,
                hex(&hmac_sha256::Hash::hash(b"k-acme"))
            )
            .as_bytes(),
        )
        .expect("the harness configuration is valid"),
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decide(header: &str, value: &[u8]) -> Decision {
    let view = RequestView::new(vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), b"/v1/chat/completions".to_vec()),
        (":authority".to_owned(), b"api.example.com".to_vec()),
        (header.to_owned(), value.to_vec()),
    ]);
    // A fresh authenticator: its token cache must not answer for the altered token.
    let mut auth = Authenticator::new(CONFIG.with(Rc::clone));
    auth.decide(&view, NOW)
}

fn allowed(decision: &Decision) -> bool {
    matches!(decision, Decision::Allow { .. })
}

fuzz_target!(|data: &[u8]| {
    let (choice, claims) = control(data);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT","kid":"h"}"#);
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let mut signature = hmac_sha256::HMAC::mac(signed.as_bytes(), SECRET.as_bytes());
    let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature));
    let honest = decide("authorization", format!("Bearer {token}").as_bytes());
    if let Decision::Allow { identity, .. } = &honest {
        let identity = identity.as_ref().expect("a JWT route names the caller");
        assert!(!identity.consumer.is_empty());
        for (_, value) in &identity.headers {
            assert!(!value.contains(['\r', '\n', '\0']), "claim header value {value:?}");
        }
    }

    // The altered token: one bit of the signature, or one character of the signed text
    // replaced by another base64url character under the honest signature.
    let at = usize::from(choice >> 1);
    let altered = if choice & 1 == 0 {
        let i = at % signature.len();
        signature[i] ^= 1 << (at % 8);
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    } else {
        let mut bytes = signed.into_bytes();
        let i = at % bytes.len();
        bytes[i] = match bytes[i] {
            b'.' => return,
            b'A' => b'B',
            _ => b'A',
        };
        format!(
            "{}.{}",
            String::from_utf8(bytes).expect("base64url is ASCII"),
            URL_SAFE_NO_PAD.encode(signature)
        )
    };
    assert!(
        !allowed(&decide("authorization", format!("Bearer {altered}").as_bytes())),
        "an altered token was accepted: {altered}"
    );

    decide("authorization", &[b"Bearer ", data].concat());
    decide("x-api-key", claims);
    decide("cookie", &[b"session=", claims].concat());
});
