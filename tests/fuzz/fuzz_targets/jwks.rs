//! Remote JWKS documents, as fetched from an identity provider: parsed into keys (or refused
//! with a reason), and every key read checks a token without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_auth::keys::parse_remote_jwks;

/// An HS256 token with `kid` "k"; each parsed key checks it whatever its algorithm.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ1In0.Dr0Xy0HGTTyDmhp_zcV4qRQ5Lrt0VIxdqoYo1Zd-nVY";

fuzz_target!(|data: &[u8]| match parse_remote_jwks(data) {
    Ok((keys, _skipped)) => {
        assert!(!keys.is_empty(), "a key set without usable keys was accepted");
        for key in &keys {
            let _ = key.verify(TOKEN);
        }
    }
    Err(reason) => assert!(!reason.is_empty()),
});
