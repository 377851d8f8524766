//! The rate-limit filter's configuration parser (also `portico check`'s), and the request
//! after the NUL byte admitted with every configuration it accepts, as the filter does: the
//! estimate from the body's size, a top-up once the body is seen, settlement with the usage
//! the body reports. A body never estimates below its size's estimate, and settlement never
//! counts more than the request's reservations bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_core::request::RequestSource;
use portico_core::shared::MemoryStore;
use portico_fuzz::{check_config_errors, config_and_request};
use portico_rate_limit::config::Config;
use portico_rate_limit::estimate::{from_body, from_size};
use portico_rate_limit::plan::{admit, Request, Reservation, TopUp, UNRESERVED_LIMIT};
use portico_rate_limit::usage::{from_json, Reported};

const NOW_NS: u64 = 1_700_000_000_000_000_000;

fn refusal(response: &portico_core::response::ErrorResponse) {
    assert!((400..600).contains(&response.status) && !response.code.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let (config, (view, body)) = config_and_request(data);
    let config = match Config::from_bytes(config) {
        Ok(config) => config,
        Err(errors) => return check_config_errors(&errors),
    };
    let size = body.len() as u64;
    let prompt = from_body(body);
    assert!(prompt >= from_size(size), "the body's estimate is below its size's");
    let max_tokens = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("max_tokens").and_then(serde_json::Value::as_u64));
    let request = Request {
        view: &view,
        client_ip: Some("192.0.2.1"),
        body_bytes: view.header_str("content-length").and_then(|n| n.parse().ok()),
        max_tokens,
    };
    let store = MemoryStore::default();
    for now in [NOW_NS, NOW_NS + 1] {
        let mut admission = admit(&config, &store, &[7; 32], &request, now);
        if let Some(rejection) = &admission.rejection {
            refusal(rejection);
            continue;
        }
        if let (TopUp::Refused(response), _) = admission.hold.top_up(&config, &store, prompt, now) {
            refusal(&response);
            continue;
        }
        if let Reported::Usage(usage) = from_json(body) {
            let settled = admission.hold.settle(&store, usage, now);
            let bound = admission
                .hold
                .reservations()
                .iter()
                .map(Reservation::limit)
                .max()
                .unwrap_or(UNRESERVED_LIMIT);
            assert!(
                settled.counted.total() <= bound.min(usage.total()),
                "{settled:?} above {bound}"
            );
        }
    }
});
