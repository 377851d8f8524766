//! Rate-limit's usage readers, which settle token budgets from what a backend reports: a
//! JSON answer and an SSE stream (the same bytes, cut where the control byte says). A reader
//! never reports more tokens than the numbers in the answer add up to, and a stream's usage
//! does not depend on how it was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_fuzz::{control, cuts, integer_sum, sse_json};
use portico_rate_limit::usage::{from_json, Reported, StreamUsage};

fuzz_target!(|data: &[u8]| {
    let (seed, answer) = control(data);
    if let Reported::Usage(usage) = from_json(answer) {
        let value: serde_json::Value = serde_json::from_slice(answer).expect("usage came from JSON");
        let present = integer_sum(&value["usage"]);
        let reported = u128::from(usage.prompt) + u128::from(usage.completion);
        assert!(reported <= present, "{usage:?} from {present}");
    }

    let present: u128 = sse_json(answer).iter().map(integer_sum).sum();
    let mut seen = None;
    for chunks in cuts(seed, answer) {
        let mut stream = StreamUsage::default();
        for chunk in chunks {
            stream.push(chunk);
        }
        let usage = stream.usage();
        if let Reported::Usage(u) = usage {
            let reported = u128::from(u.prompt) + u128::from(u.completion);
            assert!(reported <= present, "{u:?} from {present}");
        }
        match seen {
            None => seen = Some(usage),
            Some(first) => assert_eq!(first, usage, "a different cut gave different usage"),
        }
    }
});
