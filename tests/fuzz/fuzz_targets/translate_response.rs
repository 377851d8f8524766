//! Translation of a whole upstream answer into the client's API, both ways, and of upstream
//! errors. An untranslatable answer becomes an error with the stable code, never a success;
//! a translated answer is translated back; its token counts never exceed what the backend
//! reported.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_body_transform::translate::response::{
    anthropic_to_openai, error_to_anthropic, error_to_openai, openai_to_anthropic,
};
use portico_body_transform::translate::BadUpstream;
use portico_fuzz::integer_sum;
use serde_json::Value;

fn failed(bad: &BadUpstream) {
    assert!(!bad.field.is_empty() && !bad.reason.is_empty(), "{bad:?}");
    let response = bad.response();
    assert_eq!((response.status, response.code), (502, BadUpstream::CODE));
}

/// Every token a translated `usage` counts, once (OpenAI's prompt includes its cache counts).
fn counted(usage: &Value, keys: &[&str]) -> u128 {
    keys.iter()
        .filter_map(|k| usage.get(k).and_then(Value::as_u64))
        .map(u128::from)
        .sum()
}

fn error_shape(body: &Value) {
    let error = body.get("error").expect("a translated error has `error`");
    assert!(error.get("type").is_some_and(Value::is_string), "{body}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let reported = integer_sum(answer.get("usage").unwrap_or(&Value::Null));
    match anthropic_to_openai(&answer, 1_700_000_000) {
        Ok(openai) => {
            let usage = &openai["usage"];
            assert!(
                counted(usage, &["prompt_tokens", "completion_tokens"]) <= reported,
                "{usage}"
            );
            if let Err(bad) = openai_to_anthropic(&openai) {
                panic!("the OpenAI answer translated from Anthropic is refused back: {bad}\n{openai}");
            }
        }
        Err(bad) => failed(&bad),
    }
    match openai_to_anthropic(&answer) {
        Ok(anthropic) => {
            let usage = &anthropic["usage"];
            let keys = [
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ];
            assert!(counted(usage, &keys) <= reported, "{usage}");
            if let Err(bad) = anthropic_to_openai(&anthropic, 0) {
                panic!("the Anthropic answer translated from OpenAI is refused back: {bad}\n{anthropic}");
            }
        }
        Err(bad) => failed(&bad),
    }
    for status in [400, 429, 500, 529] {
        error_shape(&error_to_openai(&answer, status));
        error_shape(&error_to_anthropic(&answer, status));
    }
});
