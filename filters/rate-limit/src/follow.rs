//! The policy around admission that is not admission itself: what the shell turns host answers
//! into before deciding, when it follows the request body, and how it follows the response
//! until the request's [`Hold`] can be settled.
//!
//! A request is followed for usage when it is a model call: its body named a model (lifted by
//! `json_to_metadata`) or it reserved tokens. Its response is then read for usage ([`Response`])
//! and, once the answer is known, one [`Charge`] settles what the request reserved:
//!
//! - a cache hit spent nothing upstream: the reservation is released;
//! - a JSON answer is kept whole (up to [`MAX_JSON_BODY`]) and read at its end; an SSE answer is
//!   read event by event ([`StreamUsage`]);
//! - when body-transform translated (or refused) the backend's answer, what it saw the backend
//!   report (`portico_backend_usage`) is what counts, not the translated body;
//! - an error answer that reports no usage charges nothing; a success without usage keeps its
//!   reservation (the backend did work that cannot be counted);
//! - an answer that never reached this filter's end (client gone, upstream reset, a local reply
//!   from a later filter) is settled in the log callback from `portico_backend_usage`, or keeps
//!   its reservation.

use portico_core::contract::header;
use portico_core::contract::BackendUsage;
use portico_core::request::RequestSource;
use portico_core::response::ErrorResponse;

use crate::lifted;
use crate::plan::{Anomaly, Event, Hold};
use crate::usage::{self, Reported, StreamUsage, Usage};

/// Largest non-streaming response body kept to read its usage.
pub const MAX_JSON_BODY: usize = 4 << 20;

/// The client's IP from Envoy's `source.address`, a socket address: `1.2.3.4` from
/// `1.2.3.4:5678`, `::1` from `[::1]:5678`; anything else (a bare IPv6 address, a name) as it
/// is. Not `portico_core::request::normalize_host`, which reads a host name from an authority
/// the client wrote.
pub fn ip_of_source_address(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(address, |(ip, _)| ip);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

/// The output budget the request states, from the lifted `max_tokens` and
/// `max_completion_tokens`, or the 400 for a number that is no count. OpenAI's
/// `max_completion_tokens` supersedes `max_tokens`; a request naming both is held to the
/// larger, which no backend exceeds.
pub fn stated_max_tokens(
    max_tokens: Option<&[u8]>,
    max_completion_tokens: Option<&[u8]>,
) -> Result<Option<u64>, ErrorResponse> {
    let mut stated = None;
    for (field, raw) in [
        ("max_tokens", max_tokens),
        ("max_completion_tokens", max_completion_tokens),
    ] {
        if let Some(raw) = raw {
            stated = stated.max(lifted::max_tokens(field, raw)?);
        }
    }
    Ok(stated)
}

/// The request body's size as far as Envoy knows it at header time: the `request.size`
/// property (an 8-byte little-endian integer: all of it when a buffering filter such as
/// `json_to_metadata` runs first), else `content-length`, else `None` (a chunked body still on
/// its way).
pub fn body_size(request_size: Option<&[u8]>, content_length: Option<&[u8]>) -> Option<u64> {
    let from_property = request_size
        .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
        .and_then(|bytes| u64::try_from(i64::from_le_bytes(bytes)).ok());
    from_property.or_else(|| {
        content_length
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok())
    })
}

/// What body-transform saw the backend report (`portico_backend_usage`), as usage.
pub fn backend_usage(raw: &[u8]) -> Reported {
    match BackendUsage::decode(raw) {
        BackendUsage::Reported { prompt, completion } => Reported::Usage(Usage { prompt, completion }),
        BackendUsage::Unknown => Reported::Missing,
    }
}

/// Whether the request body is read to refine the prompt estimate: only when tokens were
/// reserved and a body follows.
pub fn reads_body(hold: &Hold, end_of_stream: bool) -> bool {
    !end_of_stream && !hold.reservations().is_empty()
}

/// Replaces the admission events of the quotas the body changed.
pub fn revise(pending: &mut [(usize, Event)], later: &[(usize, Event)]) {
    for (quota, event) in later {
        if let Some(slot) = pending.iter_mut().find(|(q, _)| q == quota) {
            slot.1 = *event;
        }
    }
}

/// The anomalies of an answer whose usage is not a count: one per reservation, or one without
/// a quota when the request reserved nothing.
pub fn unparseable(hold: &Hold) -> Vec<(Option<usize>, Anomaly)> {
    match hold.reservations() {
        [] => vec![(None, Anomaly::Unparseable)],
        held => held.iter().map(|r| (Some(r.quota), Anomaly::Unparseable)).collect(),
    }
}

/// The labels a model call's tokens are counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub tier: String,
    /// Empty unless per-consumer series are configured.
    pub consumer: String,
    /// The lifted model until header-routing names the upstream one.
    pub model: String,
}

impl Labels {
    pub fn new(request: &dyn RequestSource, model: Option<String>, per_consumer: bool) -> Self {
        Self {
            tier: request.header_str(header::TIER).unwrap_or("none").to_owned(),
            consumer: if per_consumer {
                request.header_str(header::CONSUMER).unwrap_or("anonymous").to_owned()
            } else {
                String::new()
            },
            model: model.unwrap_or_else(|| "unknown".to_owned()),
        }
    }
}

// === impl Response ===

/// What settles a followed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Replace the reservations with what the answer reported (kept when it is unknown).
    Settle(Reported),
    /// Nothing was spent: release the reservations. `no_usage` counts an error answer that
    /// reported nothing.
    Release { no_usage: bool },
}

/// How the response is followed for usage.
#[derive(Debug)]
pub enum Response {
    /// Not a model call, or refused here: nothing to settle.
    Off,
    /// A model call whose response headers have not come yet.
    Awaiting,
    Json {
        status: u16,
        buffer: Vec<u8>,
    },
    /// A JSON body too large to keep: its usage is unknown.
    JsonTooLarge,
    Stream(Box<StreamUsage>),
    /// Charged: nothing more to do.
    Settled,
}

impl Response {
    pub fn new(model_call: bool) -> Self {
        if model_call {
            Response::Awaiting
        } else {
            Response::Off
        }
    }

    pub fn is_followed(&self) -> bool {
        !matches!(self, Response::Off)
    }

    /// The response headers came: `cache_hit` when the cache replayed an earlier answer,
    /// `sse` for an event stream. A hit is settled at once.
    pub fn headers(&mut self, status: u16, cache_hit: bool, sse: bool) -> Option<Charge> {
        if !matches!(self, Response::Awaiting) {
            return None;
        }
        if cache_hit {
            *self = Response::Settled;
            return Some(Charge::Release { no_usage: false });
        }
        *self = if sse {
            Response::Stream(Box::default())
        } else {
            Response::Json {
                status,
                buffer: Vec::new(),
            }
        };
        None
    }

    /// Whether body chunks are wanted.
    pub fn reads_body(&self) -> bool {
        matches!(
            self,
            Response::Json { .. } | Response::JsonTooLarge | Response::Stream(_)
        )
    }

    /// Whether the chunks themselves are wanted (a JSON body past the limit is not read).
    pub fn keeps_chunks(&self) -> bool {
        matches!(self, Response::Json { .. } | Response::Stream(_))
    }

    /// One chunk of the response body.
    pub fn push(&mut self, chunk: &[u8]) {
        match self {
            Response::Stream(stream) => stream.push(chunk),
            Response::Json { buffer, .. } => {
                if buffer.len().saturating_add(chunk.len()) > MAX_JSON_BODY {
                    *self = Response::JsonTooLarge;
                } else {
                    buffer.extend_from_slice(chunk);
                }
            }
            Response::JsonTooLarge | Response::Off | Response::Awaiting | Response::Settled => {}
        }
    }

    /// The body ended; `backend` is what body-transform saw the backend report (asked only
    /// when it decides).
    pub fn end(&mut self, backend: impl FnOnce() -> Option<Reported>) -> Option<Charge> {
        match std::mem::replace(self, Response::Settled) {
            Response::Stream(stream) => Some(Charge::Settle(backend().unwrap_or_else(|| stream.usage()))),
            Response::Json { status, buffer } => match backend().unwrap_or_else(|| usage::from_json(&buffer)) {
                Reported::Missing if status >= 400 => Some(Charge::Release { no_usage: true }),
                reported => Some(Charge::Settle(reported)),
            },
            Response::JsonTooLarge => Some(Charge::Settle(Reported::Missing)),
            unread @ (Response::Off | Response::Awaiting) => {
                *self = unread;
                None
            }
            Response::Settled => None,
        }
    }

    /// The log callback: a followed answer not settled yet is settled from what body-transform
    /// saw the backend report, else its reservation stands.
    pub fn log(&mut self, backend: impl FnOnce() -> Option<Reported>) -> Option<Charge> {
        match std::mem::replace(self, Response::Settled) {
            Response::Off => {
                *self = Response::Off;
                None
            }
            Response::Settled => None,
            _ => Some(Charge::Settle(backend().unwrap_or(Reported::Missing))),
        }
    }

    /// The request was refused after admission: the local reply passes the response callbacks
    /// with nothing to settle.
    pub fn refused(&mut self) {
        *self = Response::Off;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{admit, Request};
    use portico_core::request::RequestView;
    use portico_core::shared::MemoryStore;

    fn used(prompt: u64, completion: u64) -> Reported {
        Reported::Usage(Usage { prompt, completion })
    }

    #[test]
    fn ports_are_stripped_from_v4_and_bracketed_v6_addresses_only() {
        for (address, ip) in [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("[::1]:5678", "::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("1.2.3.4", "1.2.3.4"),
            ("host:http", "host:http"),
            ("[broken", "[broken"),
            ("", ""),
        ] {
            assert_eq!(ip_of_source_address(address), ip, "{address}");
        }
    }

    #[test]
    fn the_stated_budget_is_the_larger_of_both_fields_and_a_non_count_is_a_400_naming_its_field() {
        assert_eq!(stated_max_tokens(None, None), Ok(None));
        assert_eq!(stated_max_tokens(Some(b"100"), None), Ok(Some(100)));
        assert_eq!(stated_max_tokens(Some(b"100"), Some(b"5e2")), Ok(Some(500)));
        assert_eq!(stated_max_tokens(Some(b"900"), Some(b"5e2")), Ok(Some(900)));
        assert_eq!(stated_max_tokens(Some(b"many"), None), Ok(None), "no number at all");
        let refused = stated_max_tokens(Some(b"10"), Some(b"-1")).err();
        assert_eq!(
            refused.as_ref().map(|r| (r.status, r.code)),
            Some((400, "invalid_field"))
        );
        assert!(refused.is_some_and(|r| r.message.contains("max_completion_tokens")));
    }

    #[test]
    fn the_body_size_comes_from_the_property_then_content_length() {
        let size = 1234i64.to_le_bytes();
        assert_eq!(body_size(Some(&size), Some(b"5")), Some(1234));
        assert_eq!(body_size(None, Some(b" 5 ")), Some(5));
        assert_eq!(body_size(Some(b"short"), Some(b"5")), Some(5), "a malformed property");
        assert_eq!(
            body_size(Some(&(-1i64).to_le_bytes()), None),
            None,
            "a negative size is unknown"
        );
        assert_eq!(body_size(None, Some(b"lots")), None);
        assert_eq!(body_size(None, None), None);
    }

    #[test]
    fn backend_usage_is_usage_or_missing() {
        assert_eq!(backend_usage(b"12 34"), used(12, 34));
        assert_eq!(backend_usage(b"unknown"), Reported::Missing);
        assert_eq!(backend_usage(b"12"), Reported::Missing);
        assert_eq!(backend_usage(b"\xff"), Reported::Missing);
    }

    #[test]
    fn revised_events_replace_only_their_quota() {
        let mut pending = vec![(0, Event::Allowed), (2, Event::Allowed)];
        revise(&mut pending, &[(2, Event::Limited), (7, Event::StoreError)]);
        assert_eq!(pending, vec![(0, Event::Allowed), (2, Event::Limited)]);
    }

    fn hold_with_quota(end_of_stream: bool) -> (bool, Vec<(Option<usize>, Anomaly)>) {
        let config = crate::config::Config::from_value(&serde_json::json!({"token_quotas": [
            {"name": "q", "key": [], "budgets": [{"tokens": 100000, "period_seconds": 60}]}
        ]}))
        .unwrap_or_else(|e| panic!("{e:?}"));
        let view = RequestView::new(vec![(":path".to_owned(), b"/v1/x".to_vec())]);
        let request = Request {
            view: &view,
            client_ip: None,
            body_bytes: Some(40),
            max_tokens: Some(10),
        };
        let admission = admit(&config, &MemoryStore::default(), &[0; 32], &request, 1);
        (reads_body(&admission.hold, end_of_stream), unparseable(&admission.hold))
    }

    #[test]
    fn the_request_body_is_read_only_when_tokens_were_reserved_and_a_body_follows() {
        assert!(hold_with_quota(false).0);
        assert!(!hold_with_quota(true).0);
        assert!(!reads_body(&Hold::default(), false));
    }

    #[test]
    fn unparseable_usage_is_an_anomaly_of_every_reservation_or_of_none() {
        assert_eq!(hold_with_quota(false).1, vec![(Some(0), Anomaly::Unparseable)]);
        assert_eq!(unparseable(&Hold::default()), vec![(None, Anomaly::Unparseable)]);
    }

    #[test]
    fn labels_default_when_the_identity_is_missing() {
        let view = RequestView::new(vec![("x-portico-tier".to_owned(), b"gold".to_vec())]);
        assert_eq!(
            Labels::new(&view, None, true),
            Labels {
                tier: "gold".into(),
                consumer: "anonymous".into(),
                model: "unknown".into()
            }
        );
        assert_eq!(Labels::new(&view, Some("m".into()), false).consumer, "");
    }

    #[test]
    fn a_request_that_is_no_model_call_is_never_charged() {
        let mut r = Response::new(false);
        assert_eq!(r.headers(200, false, false), None);
        assert!(!r.reads_body());
        assert_eq!(r.end(|| Some(used(1, 1))), None);
        assert_eq!(r.log(|| Some(used(1, 1))), None);
    }

    #[test]
    fn a_cache_hit_releases_the_reservation_at_once() {
        let mut r = Response::new(true);
        assert_eq!(r.headers(200, true, false), Some(Charge::Release { no_usage: false }));
        assert!(!r.reads_body());
        assert_eq!(r.log(|| Some(used(5, 5))), None, "settled once");
    }

    #[test]
    fn a_json_answer_is_settled_from_its_usage_at_its_end() {
        let mut r = Response::new(true);
        assert_eq!(r.headers(200, false, false), None);
        assert!(r.reads_body());
        r.push(br#"{"usage": {"prompt_tokens": 3,"#);
        r.push(br#" "completion_tokens": 4}}"#);
        assert_eq!(r.end(|| None), Some(Charge::Settle(used(3, 4))));
        assert_eq!(r.log(|| None), None);
    }

    #[test]
    fn the_backends_report_wins_over_the_translated_body() {
        let mut r = Response::new(true);
        r.headers(200, false, false);
        r.push(br#"{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}"#);
        assert_eq!(r.end(|| Some(used(30, 40))), Some(Charge::Settle(used(30, 40))));
        let mut s = Response::new(true);
        s.headers(200, false, true);
        assert_eq!(
            s.end(|| Some(Reported::Missing)),
            Some(Charge::Settle(Reported::Missing))
        );
    }

    #[test]
    fn an_error_without_usage_releases_and_a_success_without_usage_keeps_the_reservation() {
        let mut error = Response::new(true);
        error.headers(429, false, false);
        error.push(b"{\"error\": {}}");
        assert_eq!(error.end(|| None), Some(Charge::Release { no_usage: true }));
        let mut success = Response::new(true);
        success.headers(200, false, false);
        success.push(b"not json at all");
        assert_eq!(success.end(|| None), Some(Charge::Settle(Reported::Missing)));
    }

    #[test]
    fn hostile_usage_is_unparseable_not_a_count() {
        let mut r = Response::new(true);
        r.headers(200, false, false);
        r.push(br#"{"usage": {"prompt_tokens": -5, "completion_tokens": 1e30}}"#);
        assert_eq!(r.end(|| None), Some(Charge::Settle(Reported::Unparseable)));
    }

    #[test]
    fn a_json_body_past_the_limit_is_not_kept_and_its_usage_is_unknown() {
        let mut r = Response::new(true);
        r.headers(200, false, false);
        r.push(&vec![b' '; MAX_JSON_BODY]);
        assert!(matches!(r, Response::Json { .. }));
        r.push(b" ");
        assert!(matches!(r, Response::JsonTooLarge));
        assert_eq!(r.end(|| Some(used(1, 1))), Some(Charge::Settle(Reported::Missing)));
    }

    #[test]
    fn a_stream_is_settled_from_its_usage_event() {
        let mut r = Response::new(true);
        r.headers(200, false, true);
        r.push(b"data: {\"choices\": [], \"usage\": null}\n\n");
        r.push(
            b"data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 7, \"completion_tokens\": 8}}\n\ndata: [DONE]\n\n",
        );
        assert_eq!(r.end(|| None), Some(Charge::Settle(used(7, 8))));
    }

    #[test]
    fn an_answer_that_never_ended_here_is_settled_in_log_from_the_backends_report() {
        let mut cut = Response::new(true);
        cut.headers(200, false, true);
        assert_eq!(cut.log(|| Some(used(2, 9))), Some(Charge::Settle(used(2, 9))));
        let mut no_headers = Response::new(true);
        assert_eq!(no_headers.log(|| None), Some(Charge::Settle(Reported::Missing)));
        assert_eq!(no_headers.log(|| None), None, "once");
    }

    #[test]
    fn a_request_refused_after_admission_is_not_followed() {
        let mut r = Response::new(true);
        r.refused();
        assert!(!r.is_followed());
        assert_eq!(r.headers(200, false, false), None);
        assert_eq!(r.log(|| Some(used(1, 1))), None);
    }
}
