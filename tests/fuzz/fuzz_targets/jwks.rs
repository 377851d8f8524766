//! Remote JWKS documents, as fetched from an identity provider, with and without shared
//! secrets allowed: parsed into keys (or refused with a reason); every key read checks a
//! signature of each size an algorithm uses without panicking, and accepts none of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_auth::keys::parse_remote_jwks;

const SIGNING_INPUT: &[u8] = b"eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ1In0";

fuzz_target!(|data: &[u8]| {
    for shared_secrets in [false, true] {
        match parse_remote_jwks(data, shared_secrets) {
            Ok((keys, _skipped)) => {
                assert!(!keys.is_empty(), "a key set without usable keys was accepted");
                for key in &keys {
                    for len in [0, 32, 48, 64, 96, 256, 512] {
                        assert!(
                            !key.verify(SIGNING_INPUT, &vec![0; len]),
                            "{key:?} accepts a zero signature"
                        );
                    }
                }
            }
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
});
