//! header-routing's check of a model route's body (`check_body`): read strictly, refused with
//! one of three codes, and when the route names an upstream model, rewritten to a JSON object
//! that names it and keeps everything else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_fuzz::control;
use portico_header_routing::check_body;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (choice, body) = control(data);
    let model = (choice & 1 == 1).then_some("claude-upstream");
    match check_body(body, model) {
        Ok(None) => {
            assert!(model.is_none());
            assert!(portico_core::json::parse(body).is_ok_and(|v| v.is_object()));
        }
        Ok(Some(rewritten)) => {
            let mut before = portico_core::json::parse(body).expect("a rewritten body was JSON");
            let after = portico_core::json::parse(&rewritten).expect("the rewritten body is strict JSON");
            assert_eq!(after.get("model").and_then(Value::as_str), model);
            before["model"] = Value::from(model);
            assert_eq!(before, after, "the rewrite changed more than the model");
        }
        Err(refusal) => {
            assert_eq!(refusal.status, 400);
            assert!(
                ["invalid_json", "duplicate_json_key", "number_out_of_range"].contains(&refusal.code),
                "{}",
                refusal.code
            );
        }
    }
});
