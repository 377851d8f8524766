//! Translation of a streamed upstream answer (SSE) into the client's API, both ways, with the
//! stream cut into chunks where the control byte says. The client gets the same bytes however
//! the stream was cut; every event it gets carries JSON (or OpenAI's `[DONE]`); a stream ends
//! with an end or an error the client can read; a translation failure reaches the client with
//! the stable code; the usage kept for rate-limit never exceeds what the backend reported.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_body_transform::translate::stream::{AnthropicToOpenAi, OpenAiToAnthropic};
use portico_body_transform::translate::BadUpstream;
use portico_core::contract::BackendUsage;
use portico_core::sse::SseReader;
use portico_fuzz::{control, cuts, integer_sum, sse_json};

/// The client's events, each of which must carry JSON or `[DONE]`.
fn events(out: &[u8]) -> Vec<String> {
    let mut reader = SseReader::new(usize::MAX);
    let events = reader.push(out);
    assert!(reader.push(b"\n").is_empty(), "the output ends inside an event");
    events
        .into_iter()
        .map(|e| {
            assert!(
                e.data == "[DONE]" || serde_json::from_str::<serde_json::Value>(&e.data).is_ok(),
                "event data is not JSON: {:?}",
                e.data
            );
            e.data
        })
        .collect()
}

fn reports_failure(out: &[u8], failure: Option<&BadUpstream>) {
    if failure.is_some() {
        let code = format!("\"code\":\"{}\"", BadUpstream::CODE);
        assert!(
            out.windows(code.len()).any(|w| w == code.as_bytes()),
            "the failure is not in the stream"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (seed, upstream) = control(data);
    let reported: u128 = sse_json(upstream).iter().map(integer_sum).sum();

    let mut first = None;
    for chunks in cuts(seed, upstream) {
        let mut t = AnthropicToOpenAi::new(1_700_000_000, seed & 1 == 1);
        let mut out: Vec<u8> = chunks.iter().flat_map(|c| t.push(c)).collect();
        out.extend(t.finish());
        let sent = events(&out);
        assert_eq!(
            sent.last().map(String::as_str),
            Some("[DONE]"),
            "an OpenAI stream ends with [DONE]"
        );
        reports_failure(&out, t.failure());
        if let BackendUsage::Reported { prompt, completion } = t.usage() {
            assert!(u128::from(prompt) + u128::from(completion) <= reported);
        }
        match &first {
            None => first = Some(out),
            Some(first) => assert_eq!(first, &out, "a different cut gave a different OpenAI stream"),
        }
    }

    let mut first = None;
    for chunks in cuts(seed, upstream) {
        let mut t = OpenAiToAnthropic::default();
        let mut out: Vec<u8> = chunks.iter().flat_map(|c| t.push(c)).collect();
        out.extend(t.finish());
        let sent = events(&out);
        let last: serde_json::Value = sent
            .last()
            .and_then(|d| serde_json::from_str(d).ok())
            .expect("an Anthropic stream ends with an event");
        assert!(
            matches!(last["type"].as_str(), Some("message_stop" | "error")),
            "an Anthropic stream ends with message_stop or error, not {last}"
        );
        reports_failure(&out, t.failure());
        match &first {
            None => first = Some(out),
            Some(first) => assert_eq!(first, &out, "a different cut gave a different Anthropic stream"),
        }
    }
});
