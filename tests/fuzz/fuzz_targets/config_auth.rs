//! The auth filter's configuration parser (also `portico check`'s), and the request after the
//! NUL byte decided with every configuration it accepts.
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use portico_auth::authn::{Authenticator, Decision};
use portico_auth::config::Config;
use portico_fuzz::{check_config_errors, config_and_request};

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let (config, (view, jwks)) = config_and_request(data);
    match Config::from_bytes(config) {
        Ok(config) => {
            let mut auth = Authenticator::new(Rc::new(config));
            // Remote key sets get the request's body as their JWKS document.
            for provider in auth.fetches_due(NOW) {
                auth.fetch_done(provider, Ok(jwks), NOW);
            }
            if let Decision::Deny { reason, .. } = auth.decide(&view, NOW) {
                let response = reason.response("portico", &[]);
                assert!((400..600).contains(&response.status) && !response.code.is_empty());
            }
        }
        Err(errors) => check_config_errors(&errors),
    }
});
