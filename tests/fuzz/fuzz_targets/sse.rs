//! The SSE reader (`portico_core::sse`) that rate-limit and body-transform run on every
//! streamed answer: the same events however the stream is cut into chunks, nothing but whole
//! lines in them, and oversized lines dropped the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_core::sse::SseReader;
use portico_fuzz::{control, cuts};

fuzz_target!(|data: &[u8]| {
    let (seed, stream) = control(data);
    // Small limits reach the oversized-line path; the large one is what the filters use.
    let max_line = if seed & 0x80 != 0 {
        usize::from(seed & 0x3f) + 1
    } else {
        1 << 20
    };
    let mut seen = None;
    for chunks in cuts(seed, stream) {
        let mut reader = SseReader::new(max_line);
        let events: Vec<_> = chunks.iter().flat_map(|c| reader.push(c)).collect();
        for e in &events {
            assert!(!e.data.contains('\r') && !e.name.contains(['\r', '\n']), "{e:?}");
        }
        let got = (events, reader.oversized);
        match &seen {
            None => seen = Some(got),
            Some(first) => assert_eq!(first, &got, "a different cut gave different events"),
        }
    }
});
