//! The header-routing filter's configuration parser (also `portico check`'s), and the request
//! after the NUL byte routed with every configuration it accepts: a route names a backend
//! that exists, a refusal has a code, and a model route's body check holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_fuzz::{check_config_errors, config_and_request};
use portico_header_routing::check_body;
use portico_header_routing::config::Config;
use portico_header_routing::decide::{decide, Decision, Inputs};

fuzz_target!(|data: &[u8]| {
    let (config, (view, body)) = config_and_request(data);
    let config = match Config::from_bytes(config) {
        Ok(config) => config,
        Err(errors) => return check_config_errors(&errors),
    };
    let lifted = serde_json::from_slice::<serde_json::Value>(body);
    let model = lifted
        .as_ref()
        .ok()
        .and_then(|v| v.get("model"))
        .and_then(|m| m.as_str());
    let inputs = Inputs {
        view: &view,
        model,
        json_error: !body.is_empty() && lifted.is_err(),
    };
    match decide(&config, &inputs) {
        Decision::Route(routed) => {
            assert!(config.backend(routed.backend).is_some());
            assert!(routed.route < config.routes.len());
            if let Ok(Some(rewritten)) = check_body(body, routed.model.as_deref()) {
                let v: serde_json::Value = serde_json::from_slice(&rewritten).expect("rewritten body is JSON");
                assert_eq!(v.get("model").and_then(|m| m.as_str()), routed.model.as_deref());
            }
        }
        Decision::Reject(response) => {
            assert!((400..600).contains(&response.status) && !response.code.is_empty());
        }
    }
});
