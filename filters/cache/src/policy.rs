//! Which requests the cache answers or fills, and which responses it keeps.

use portico_core::contract::header;
use portico_core::sse::is_event_stream;

use crate::config::{Replay, Rule};
use crate::key::Body;

/// What the client's `Cache-Control` (or `Pragma`) asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    Normal,
    /// `no-cache`: do not answer from the cache; a fresh response may refresh the entry.
    Refresh,
    /// `no-store`: neither answer from nor store into the cache.
    NoStore,
}

/// Whether a comma-separated directive list holds `token` (case-insensitive, arguments ignored).
fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .map(|d| d.split('=').next().unwrap_or("").trim())
        .any(|d| d.eq_ignore_ascii_case(token))
}

pub fn directive(cache_control: Option<&str>, pragma: Option<&str>) -> Directive {
    let cc = cache_control.unwrap_or("");
    if has_token(cc, "no-store") {
        Directive::NoStore
    } else if has_token(cc, "no-cache") || (cache_control.is_none() && pragma.is_some_and(|p| has_token(p, "no-cache")))
    {
        Directive::Refresh
    } else {
        Directive::Normal
    }
}

/// The opt-in header's value says yes.
pub fn opted_in(value: Option<&[u8]>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim_ascii();
        v == b"1" || v.eq_ignore_ascii_case(b"true")
    })
}

/// What to do with a request on a cached route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer from the cache if an entry is fresh, else fill it.
    Lookup,
    /// Go upstream, then store the fresh answer (client `no-cache`).
    Refresh,
    /// Go upstream and store nothing, for this reason.
    Bypass(&'static str),
}

pub fn judge(rule: &Rule, directive: Directive, opted_in: bool, body: &Body) -> Verdict {
    if body.streaming {
        return Verdict::Bypass("stream");
    }
    let replayable = match rule.replay {
        Replay::Deterministic => body.deterministic || opted_in,
        Replay::OptIn => opted_in,
        Replay::Always => true,
    };
    if !replayable {
        return Verdict::Bypass("not_replayable");
    }
    match directive {
        Directive::NoStore => Verdict::Bypass("client_no_store"),
        Directive::Refresh => Verdict::Refresh,
        Directive::Normal => Verdict::Lookup,
    }
}

/// Response headers never stored: per-connection, per-response, or set again by Envoy or a
/// Portico filter on the way out.
const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "date",
    "age",
    "server",
];

/// The headers to keep with a response, or why it must not be stored.
pub fn storable(status: Option<&[u8]>, headers: &[(String, Vec<u8>)]) -> Result<Vec<(String, String)>, &'static str> {
    if status != Some(b"200") {
        return Err("status");
    }
    let mut kept = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let text = std::str::from_utf8(value).ok();
        match name.as_str() {
            "cache-control" => {
                let v = text.unwrap_or("no-store");
                if has_token(v, "no-store") || has_token(v, "private") {
                    return Err("upstream_no_store");
                }
            }
            "set-cookie" => return Err("set_cookie"),
            "content-type" if is_event_stream(value) => return Err("stream"),
            _ => {}
        }
        if name.starts_with(':')
            || name.starts_with(header::PREFIX)
            || name.starts_with("x-envoy-")
            || NOT_STORED.contains(&name.as_str())
        {
            continue;
        }
        if let Some(text) = text {
            kept.push((name, text.to_owned()));
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scope;

    fn rule(replay: Replay) -> Rule {
        Rule {
            name: "chat".into(),
            ttl_seconds: 60,
            scope: Scope::Consumer,
            replay,
            opt_in_header: "x-portico-cache-replay".into(),
            vary: Vec::new(),
        }
    }

    fn body(json: &str) -> Body {
        Body::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn client_directives() {
        let cases = [
            (None, None, Directive::Normal),
            (Some("max-age=0"), None, Directive::Normal),
            (Some("no-cache"), None, Directive::Refresh),
            (Some("No-Cache, max-age=0"), None, Directive::Refresh),
            (Some("no-store"), None, Directive::NoStore),
            (Some("no-cache, no-store"), None, Directive::NoStore),
            (None, Some("no-cache"), Directive::Refresh),
            (Some("max-age=5"), Some("no-cache"), Directive::Normal),
        ];
        for (cc, pragma, want) in cases {
            assert_eq!(directive(cc, pragma), want, "{cc:?} {pragma:?}");
        }
    }

    #[test]
    fn only_replay_safe_requests_are_looked_up() {
        let det = rule(Replay::Deterministic);
        let n = Directive::Normal;
        assert_eq!(judge(&det, n, false, &body(r#"{"temperature":0}"#)), Verdict::Lookup);
        // No temperature: the API's default of 1 samples.
        assert_eq!(
            judge(&det, n, false, &body(r#"{"model":"m"}"#)),
            Verdict::Bypass("not_replayable")
        );
        assert_eq!(judge(&det, n, true, &body(r#"{"model":"m"}"#)), Verdict::Lookup);
        assert_eq!(
            judge(&det, n, false, &body(r#"{"temperature":0.8}"#)),
            Verdict::Bypass("not_replayable")
        );
        assert_eq!(judge(&det, n, true, &body(r#"{"temperature":0.8}"#)), Verdict::Lookup);
        assert_eq!(
            judge(&det, n, true, &body(r#"{"stream":true}"#)),
            Verdict::Bypass("stream")
        );
        let opt = rule(Replay::OptIn);
        assert_eq!(judge(&opt, n, false, &body("{}")), Verdict::Bypass("not_replayable"));
        assert_eq!(judge(&opt, n, true, &body("{}")), Verdict::Lookup);
        let always = rule(Replay::Always);
        assert_eq!(judge(&always, n, false, &body(r#"{"temperature":2}"#)), Verdict::Lookup);
        assert_eq!(
            judge(&always, Directive::NoStore, false, &body("{}")),
            Verdict::Bypass("client_no_store")
        );
        assert_eq!(judge(&always, Directive::Refresh, false, &body("{}")), Verdict::Refresh);
    }

    #[test]
    fn opt_in_values() {
        assert!(opted_in(Some(b"1")));
        assert!(opted_in(Some(b" TRUE ")));
        assert!(!opted_in(Some(b"0")));
        assert!(!opted_in(Some(b"yes please")));
        assert!(!opted_in(None));
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn responses_that_must_not_be_stored() {
        let ok = Some(&b"200"[..]);
        assert_eq!(storable(Some(b"500"), &[]), Err("status"));
        assert_eq!(storable(None, &[]), Err("status"));
        for cc in ["no-store", "private", "Private, max-age=60", "max-age=0, no-store"] {
            assert_eq!(
                storable(ok, &h(&[("cache-control", cc)])),
                Err("upstream_no_store"),
                "{cc}"
            );
        }
        assert_eq!(storable(ok, &h(&[("set-cookie", "a=b")])), Err("set_cookie"));
        assert_eq!(
            storable(ok, &h(&[("content-type", "text/event-stream; charset=utf-8")])),
            Err("stream")
        );
        let bad_cc = vec![("cache-control".to_owned(), vec![0xff])];
        assert_eq!(storable(ok, &bad_cc), Err("upstream_no_store"));
    }

    #[test]
    fn stored_headers_leave_out_per_response_ones() {
        let kept = storable(
            Some(b"200"),
            &h(&[
                (":status", "200"),
                ("content-type", "application/json"),
                ("Content-Length", "12"),
                ("date", "x"),
                ("x-envoy-upstream-service-time", "3"),
                ("x-portico-cache", "HIT"),
                ("x-request-id", "abc"),
                ("cache-control", "max-age=60"),
            ]),
        )
        .unwrap();
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-id", "cache-control"]);
    }
}
