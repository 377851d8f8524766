//! The rate-limit filter's configuration parser (also `portico check`'s), and the request
//! after the NUL byte admitted twice with every configuration it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_core::shared::MemoryStore;
use portico_fuzz::{check_config_errors, config_and_request};
use portico_rate_limit::config::Config;
use portico_rate_limit::plan::{admit, settle, Request};

const NOW_NS: u64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let (config, (view, body)) = config_and_request(data);
    match Config::from_bytes(config) {
        Ok(config) => {
            let store = MemoryStore::default();
            let max_tokens = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("max_tokens").and_then(serde_json::Value::as_u64));
            let request = Request {
                view: &view,
                client_ip: Some("192.0.2.1"),
                body_bytes: Some(body.len() as u64),
                max_tokens,
            };
            for now in [NOW_NS, NOW_NS + 1] {
                let admission = admit(&config, &store, &[7; 32], &request, now);
                if let Some(rejection) = &admission.rejection {
                    assert!((400..600).contains(&rejection.status) && !rejection.code.is_empty());
                }
                settle(&store, &admission.reservations, max_tokens, now);
            }
        }
        Err(errors) => check_config_errors(&errors),
    }
});
