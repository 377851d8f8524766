//! `portico-stages` with the real filters: auth, rate-limit and header-routing as stages of one
//! plugin entry behave as the same three as separate entries, and cost fewer host calls and
//! VM crossings per request.
#![cfg(all(
    feature = "stages",
    feature = "auth",
    feature = "rate-limit",
    feature = "header-routing"
))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, UNIX_EPOCH};

use portico_host::host::Map;
use portico_host::mock::{Action, MockEntries, MockEnvoy, MockHost};
use serde_json::{json, Value};

use portico::FILTERS;

/// sha256("k-acme").
const KEY_DIGEST: &str = "0b131655124822cb1cf254042086d2bf26a4f1c6cd82727aab583e915346aca3";

fn configs() -> [(&'static str, Value); 3] {
    [
        (
            "portico-auth",
            json!({
                "api_keys": {
                    "sources": [{"type": "header", "name": "x-api-key"}],
                    "consumers": [{"name": "acme", "tier": "pro", "keys": [{"sha256": KEY_DIGEST}]}]
                },
                "default": {"auth": "any"}
            }),
        ),
        (
            "portico-rate-limit",
            json!({"rules": [{"name": "per_consumer", "key": ["consumer"],
                              "limit": {"requests": 2, "period_seconds": 60}}]}),
        ),
        (
            "portico-header-routing",
            json!({
                "backends": [{"name": "a", "cluster": "ca"}, {"name": "b", "cluster": "cb"}],
                "routes": [{"name": "plain", "match": {"path": "/plain"}, "backend": "a"},
                           {"name": "beta", "match": {"path": "/other", "headers": [{"name": "x-beta", "exact": "1"}]}, "backend": "b"}]
            }),
        ),
    ]
}

fn prepare(host: &MockHost) {
    host.set_now(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    host.put_property(&["request", "time"], &1_700_000_000_000_000_000i64.to_le_bytes());
}

/// The three filters as separate entries of one chain.
fn separate() -> Vec<MockEnvoy> {
    let host = MockHost::new();
    prepare(&host);
    configs()
        .iter()
        .map(|(root_id, config)| {
            MockEnvoy::start_on(host.clone(), FILTERS, root_id, &config.to_string(), false)
                .unwrap_or_else(|e| panic!("{e:?}"))
        })
        .collect()
}

/// The same three as the stages of one entry.
fn stages() -> MockEnvoy {
    let stages: Vec<Value> = configs()
        .into_iter()
        .map(|(filter, config)| json!({"filter": filter, "config": config}))
        .collect();
    let config = json!({ "stages": stages }).to_string();
    let envoy = MockEnvoy::start(FILTERS, "portico-stages", &config, false).unwrap_or_else(|e| panic!("{e:?}"));
    prepare(envoy.host());
    envoy
}

/// What the client and the upstream see of one request.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    action: Action,
    reply: Option<(u32, String)>,
    upstream: Vec<(String, String)>,
    response: Vec<(String, String)>,
}

fn outcome(host: &MockHost, action: Action) -> Outcome {
    let reply = host.reply().map(|r| (r.status, r.details.into_owned()));
    Outcome {
        action,
        reply,
        upstream: host.headers(Map::RequestHeaders),
        response: host.headers(Map::ResponseHeaders),
    }
}

const KEYED: &[(&str, &str)] = &[(":method", "GET"), (":path", "/plain"), ("x-api-key", "k-acme")];
const BETA: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/other"),
    ("x-api-key", "k-acme"),
    ("x-beta", "1"),
];
const ANONYMOUS: &[(&str, &str)] = &[(":method", "GET"), (":path", "/plain")];

#[test]
fn stages_answer_every_request_as_the_separate_entries_do() {
    let chain = separate();
    let entries: Vec<&MockEnvoy> = chain.iter().collect();
    let one = stages();
    // Unauthenticated, routed by path, routed by header, past the limit.
    for (n, request) in [ANONYMOUS, KEYED, BETA, KEYED].into_iter().enumerate() {
        let mut apart = MockEntries::new(&entries);
        let action = apart.request_headers(request);
        let _ = apart.response_headers(&[(":status", "200")]);
        apart.log();
        let expected = outcome(apart.host(), action);
        apart.host().take_mutations();

        let mut s = one.stream();
        let action = s.request_headers(request, true);
        let _ = s.response_headers(&[(":status", "200")], true);
        s.log();
        let got = outcome(one.host(), action);
        one.host().take_mutations();
        assert_eq!(got, expected, "request {n}");
        let status = got.reply.map(|(status, _)| status);
        assert_eq!(
            status,
            [Some(401), None, None, Some(429)].get(n).copied().flatten(),
            "request {n}"
        );
    }
}

/// Host calls and VM crossings of one allowed request routed by path (the second: the first
/// defines the metrics), auth + rate-limit + header-routing as stages and as separate entries.
#[test]
fn stages_make_fewer_host_calls_and_crossings_than_separate_entries() {
    let chain = separate();
    let entries: Vec<&MockEnvoy> = chain.iter().collect();
    let one = stages();
    let mut apart = None;
    let mut staged = None;
    for _ in 0..2 {
        let mut c = MockEntries::new(&entries);
        assert_eq!(c.request_headers(KEYED), Action::Continue);
        let _ = c.response_headers(&[(":status", "200")]);
        c.log();
        apart = Some((c.counts(), c.crossings()));
        let mut s = one.stream();
        assert_eq!(s.request_headers(KEYED, true), Action::Continue);
        let _ = s.response_headers(&[(":status", "200")], true);
        s.log();
        staged = Some((s.counts(), s.crossings()));
    }
    let (Some((apart, apart_crossings)), Some((staged, staged_crossings))) = (apart, staged) else {
        panic!("no request ran");
    };
    println!("auth + rate-limit + header-routing, separate entries: {apart}; crossings {apart_crossings}");
    println!("auth + rate-limit + header-routing, stages of one entry: {staged}; crossings {staged_crossings}");
    assert_eq!(apart_crossings, 3 * 4, "three contexts, each with four callbacks");
    assert_eq!(staged_crossings, 4, "one context");
    assert!(staged.total() < apart.total(), "{staged} vs {apart}");
}
