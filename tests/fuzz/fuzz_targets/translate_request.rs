//! Request translation between the OpenAI and Anthropic APIs, both ways, on the body a client
//! sent. A refusal has a code and names a field; a translation keeps the model and stream
//! choice, serialises, and is itself accepted by the translation back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_body_transform::translate::request::{anthropic_to_openai, openai_to_anthropic};
use portico_body_transform::translate::RequestError;
use serde_json::Value;

fn refused(e: &RequestError) {
    assert!(!e.code().is_empty() && !e.reason.is_empty(), "{e:?}");
}

fn kept(from: &Value, to: &Value) {
    assert!(to.is_object(), "{to}");
    assert_eq!(from.get("model"), to.get("model"), "the model changed");
    serde_json::to_vec(to).expect("a translated body serialises");
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = portico_core::json::parse(data) else {
        return;
    };
    match openai_to_anthropic(&body, 4096) {
        Ok((anthropic, facts)) => {
            kept(&body, &anthropic);
            assert_eq!(facts.stream, body.get("stream") == Some(&Value::Bool(true)));
            if let Err(e) = anthropic_to_openai(&anthropic) {
                panic!("the Anthropic request translated from OpenAI is refused back: {e}\n{anthropic}");
            }
        }
        Err(e) => refused(&e),
    }
    match anthropic_to_openai(&body) {
        Ok((openai, facts)) => {
            kept(&body, &openai);
            assert_eq!(facts.stream, body.get("stream") == Some(&Value::Bool(true)));
            if let Err(e) = openai_to_anthropic(&openai, 4096) {
                panic!("the OpenAI request translated from Anthropic is refused back: {e}\n{openai}");
            }
        }
        Err(e) => refused(&e),
    }
});
