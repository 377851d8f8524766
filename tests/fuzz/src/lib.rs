//! What the fuzz targets share: how one fuzzer input becomes a request, a stream cut into
//! chunks or a configuration, and the checks several targets make.
//!
//! Inputs stay close to what the gateway reads, so that the seeds in `seeds/` are readable and
//! a crash reproduces as a plain file: a request is written like HTTP/1 (header lines, a blank
//! line, the body), a stream is its bytes after one byte that chooses where it is cut.

use portico_core::config::Errors;
use portico_core::request::RequestView;
use serde_json::Value;

// An overflow on request or upstream data must crash the fuzzer, not wrap: Cargo.toml turns
// debug assertions (and with them overflow checks) on for every profile cargo-fuzz uses.
#[cfg(not(debug_assertions))]
compile_error!("fuzz targets must be built with debug assertions and overflow checks on");

/// The first byte, which chooses how the rest is cut, and the rest.
pub fn control(data: &[u8]) -> (u8, &[u8]) {
    data.split_first().map_or((0, data), |(c, rest)| (*c, rest))
}

/// Ways to deliver `payload` in chunks, as Envoy may hand a body over: whole, one byte at a
/// time, and cut at points drawn from `seed` with empty chunks in between. A reader that
/// depends on where the cuts fall gives different results for two of these.
pub fn cuts(seed: u8, payload: &[u8]) -> [Vec<&[u8]>; 3] {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(0x9e37_79b9);
    let mut drawn = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        // xorshift32: cheap and deterministic; the fuzzer steers it through `seed`.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 7) as usize;
        let (head, tail) = rest.split_at(len.min(rest.len()));
        drawn.push(head);
        rest = tail;
    }
    [vec![payload], payload.chunks(1).collect(), drawn]
}

/// A request written like HTTP/1: `name: value` lines (names lower-cased, pseudo-headers
/// such as `:path` included), a blank line, then the body. Lines without `: ` are skipped.
pub fn request(data: &[u8]) -> (RequestView, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &data[data.len()..]),
    };
    let headers = head
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            // A pseudo-header's own colon is part of its name.
            let from = usize::from(line.first() == Some(&b':'));
            let at = line.get(from..)?.windows(2).position(|w| w == b": ")? + from;
            let name = String::from_utf8_lossy(&line[..at]).to_ascii_lowercase();
            Some((name, line[at + 2..].to_vec()))
        })
        .collect();
    (RequestView::new(headers), body)
}

/// A configuration (up to the first NUL byte, which JSON text cannot hold) and the request
/// after it, decided with that configuration.
pub fn config_and_request(data: &[u8]) -> (&[u8], (RequestView, &[u8])) {
    match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], request(&data[at + 1..])),
        None => (data, request(&[])),
    }
}

/// A configuration parser's verdict on `data`: a refusal lists at least one problem, each at
/// a JSON path from the root (`$`) with a message an operator can read.
pub fn check_config_errors(errors: &Errors) {
    assert!(!errors.is_empty(), "a refused configuration names no problem");
    for e in errors.list() {
        assert!(e.path.starts_with('$'), "error path {:?} is not a JSON path", e.path);
        assert!(!e.message.trim().is_empty(), "no message at {}", e.path);
    }
}

/// The sum of every non-negative integer in `value` (in u128: u64 numbers cannot overflow
/// it): no usage reader may report more tokens than the numbers the backend sent add up to.
pub fn integer_sum(value: &Value) -> u128 {
    match value {
        Value::Number(n) => n.as_u64().map_or(0, u128::from),
        Value::Array(items) => items.iter().map(integer_sum).sum(),
        Value::Object(map) => map.values().map(integer_sum).sum(),
        _ => 0,
    }
}

/// The JSON values on the `data:` lines of an SSE stream (`[DONE]` and other non-JSON data
/// skipped).
pub fn sse_json(stream: &[u8]) -> Vec<Value> {
    let mut reader = portico_core::sse::SseReader::new(usize::MAX);
    let mut events = reader.push(stream);
    events.extend(reader.push(b"\n\n"));
    events
        .iter()
        .filter_map(|e| serde_json::from_str(&e.data).ok())
        .collect()
}
