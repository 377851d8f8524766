//! The request series, decided without the host: how a request is labelled (routed by this
//! filter, or refused before it ran or by it), and what each series records.
//!
//! Every request that reaches Envoy's filter chain is counted once, in the log callback,
//! including those refused by auth or rate-limit before this filter ran:
//! - `portico_requests_total{route, tier, model, backend, variant, outcome}`;
//! - `portico_request_duration_ms{route, tier, model, backend}`: from the request's first
//!   byte to the end of the response;
//! - `portico_time_to_first_token_ms{route, tier, model, backend}`: streamed responses, to
//!   the first body bytes;
//! - `portico_consumer_requests_total{consumer, outcome}`, only when configured.

use std::time::SystemTime;

use portico_core::analytics::outcome;
use portico_core::clock::unix_nanos;
use portico_core::request::RequestSource;

use crate::config::Config;
use crate::decide;

/// What a request is labelled with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub route: String,
    pub tier: String,
    pub backend: String,
    pub variant: String,
    pub model: String,
}

impl Labels {
    /// Labels for a request this filter did not route (refused before it ran, or by it): the
    /// route it falls under, `none` when no route matches; backend and variant `none`.
    /// `tier` is auth's filter state (set only for an authenticated request), `model` the
    /// lifted body field.
    pub fn unrouted(config: &Config, view: &dyn RequestSource, tier: Option<String>, model: Option<String>) -> Self {
        Self {
            route: decide::route_of(config, view).map_or_else(|| "none".to_owned(), |r| r.name.clone()),
            tier: tier.unwrap_or_default(),
            backend: "none".to_owned(),
            variant: "none".to_owned(),
            model: model.unwrap_or_default(),
        }
    }

    /// The labels of `portico_requests_total` for a response with `status` (0: none).
    pub fn requests(&self, status: u32) -> [(&'static str, &str); 6] {
        [
            ("route", &self.route),
            ("tier", &self.tier),
            ("model", &self.model),
            ("backend", &self.backend),
            ("variant", &self.variant),
            ("outcome", outcome(status)),
        ]
    }

    /// The labels of the duration and time-to-first-token histograms.
    pub fn timing(&self) -> [(&'static str, &str); 4] {
        [
            ("route", &self.route),
            ("tier", &self.tier),
            ("model", &self.model),
            ("backend", &self.backend),
        ]
    }
}

/// The labels of `portico_consumer_requests_total`: auth's consumer, `anonymous` without one.
pub fn consumer_labels(consumer: Option<&str>, status: u32) -> [(&'static str, &str); 2] {
    [
        ("consumer", consumer.unwrap_or("anonymous")),
        ("outcome", outcome(status)),
    ]
}

/// The response status as the log callback reads it: 0 (cancelled) when there is none.
pub fn status(raw: Option<&[u8]>) -> u32 {
    raw.and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()).unwrap_or(0)
}

/// Milliseconds from the request's first byte (Envoy's `request.time` property: nanoseconds
/// since the Unix epoch, a little-endian i64) to `now`; `None` when the property is absent
/// or malformed.
pub fn elapsed_ms(request_time: Option<&[u8]>, now: SystemTime) -> Option<u64> {
    let start: [u8; 8] = request_time?.try_into().ok()?;
    let start = u64::try_from(i64::from_le_bytes(start)).ok()?;
    Some(unix_nanos(now).saturating_sub(start) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::request::RequestView;
    use std::time::{Duration, UNIX_EPOCH};

    fn config() -> Config {
        Config::from_value(&serde_json::json!({
            "backends": [{"name": "a", "cluster": "a"}],
            "routes": [{"name": "chat", "match": {"path": "/v1/{*rest}"}, "backend": "a"}]
        }))
        .unwrap()
    }

    fn view(path: &str) -> RequestView {
        RequestView::new(vec![
            (":method".to_owned(), b"GET".to_vec()),
            (":path".to_owned(), path.as_bytes().to_vec()),
        ])
    }

    #[test]
    fn a_request_refused_before_routing_is_labelled_with_the_route_it_falls_under() {
        let labels = Labels::unrouted(&config(), &view("/v1/x"), Some("gold".to_owned()), None);
        assert_eq!(
            labels,
            Labels {
                route: "chat".to_owned(),
                tier: "gold".to_owned(),
                backend: "none".to_owned(),
                variant: "none".to_owned(),
                model: String::new(),
            }
        );
        let nowhere = Labels::unrouted(&config(), &view("/elsewhere"), None, Some("m".to_owned()));
        assert_eq!((nowhere.route.as_str(), nowhere.model.as_str()), ("none", "m"));
    }

    #[test]
    fn series_labels_come_in_the_order_envoy_extracts_them() {
        let labels = Labels {
            route: "r".to_owned(),
            tier: "t".to_owned(),
            backend: "b".to_owned(),
            variant: "v".to_owned(),
            model: "m".to_owned(),
        };
        assert_eq!(
            labels.requests(429),
            [
                ("route", "r"),
                ("tier", "t"),
                ("model", "m"),
                ("backend", "b"),
                ("variant", "v"),
                ("outcome", "rate_limited")
            ]
        );
        assert_eq!(
            labels.timing(),
            [("route", "r"), ("tier", "t"), ("model", "m"), ("backend", "b")]
        );
        assert_eq!(
            consumer_labels(None, 200),
            [("consumer", "anonymous"), ("outcome", "success")]
        );
    }

    #[test]
    fn a_missing_or_garbled_status_is_a_cancelled_request() {
        assert_eq!(status(Some(b"503")), 503);
        assert_eq!(status(None), 0);
        assert_eq!(status(Some(b"\xff")), 0);
        assert_eq!(status(Some(b"-1")), 0);
    }

    #[test]
    fn elapsed_time_reads_envoys_request_time() {
        let start = 1_700_000_000_000_000_000_i64;
        let now = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_250_000_000);
        assert_eq!(elapsed_ms(Some(&start.to_le_bytes()), now), Some(250));
        assert_eq!(elapsed_ms(Some(b"short"), now), None);
        assert_eq!(elapsed_ms(Some(&(-5_i64).to_le_bytes()), now), None);
        assert_eq!(elapsed_ms(None, now), None);
        // A clock behind the request's start counts zero, not a wrapped number.
        assert_eq!(elapsed_ms(Some(&start.to_le_bytes()), UNIX_EPOCH), Some(0));
    }
}
