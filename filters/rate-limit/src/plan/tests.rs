//! Unit tests of admission, compiled only under #[cfg(test)] (declared in plan.rs).

use super::*;
use portico_core::shared::{HostError, MemoryStore, SetOutcome};
use serde_json::{json, Value};

const NS: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * NS;
const SALT: [u8; 32] = [3; 32];

fn config(v: Value) -> Config {
    Config::from_value(&v).unwrap_or_else(|e| panic!("{e}"))
}

fn view(path: &str, headers: &[(&str, &str)]) -> RequestView {
    let mut pairs = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
    ];
    pairs.extend(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
    RequestView::new(pairs)
}

fn admit_at(c: &Config, s: &MemoryStore, v: &RequestView, now: u64) -> Admission {
    let req = Request {
        view: v,
        client_ip: Some("10.0.0.1"),
        body_bytes: Some(400),
        max_tokens: None,
    };
    admit(c, s, &SALT, &req, now)
}

fn status(a: &Admission) -> u32 {
    a.rejection.as_ref().map_or(200, |r| r.status)
}

fn header<'a>(a: &'a Admission, name: &str) -> Option<&'a str> {
    let list = a.rejection.as_ref().map_or(&a.headers, |r| &r.headers);
    list.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn a_refused_request_consumes_nothing_from_rules_that_allowed_it() {
    let c = config(json!({"rules": [
        {"name": "wide", "key": ["consumer"], "limit": {"requests": 5, "period_seconds": 3600}},
        {"name": "narrow", "match": {"path": "/narrow"}, "key": ["consumer"], "limit": {"requests": 1, "period_seconds": 3600}}
    ]}));
    let s = MemoryStore::default();
    let me = [("x-portico-consumer", "me")];
    assert_eq!(status(&admit_at(&c, &s, &view("/narrow", &me), T0)), 200);
    for _ in 0..10 {
        let a = admit_at(&c, &s, &view("/narrow", &me), T0);
        assert_eq!(status(&a), 429);
        assert_eq!(a.rejection.as_ref().unwrap().code, "rate_limited");
        assert_eq!(header(&a, "retry-after"), Some("3600"));
        // Reported as it stands after the refund: one unit used of "wide".
        assert_eq!(
            header(&a, "ratelimit"),
            Some("\"wide\";r=4;t=720, \"narrow\";r=0;t=3600")
        );
    }
    // "wide" was charged once (by the admitted request) and refunded for every refusal.
    let n = (0..10)
        .filter(|_| status(&admit_at(&c, &s, &view("/other", &me), T0)) == 200)
        .count();
    assert_eq!(n, 4);
}

#[test]
fn limits_follow_the_tier_and_fall_back_to_the_default() {
    let c = config(json!({"rules": [{"name": "t", "key": ["consumer"],
        "limit": {"requests": 1, "period_seconds": 3600},
        "tiers": {"pro": {"requests": 3, "period_seconds": 3600}}}]}));
    let s = MemoryStore::default();
    let count = |who: &str, tier: Option<&str>| {
        let mut h = vec![("x-portico-consumer", who)];
        if let Some(t) = tier {
            h.push(("x-portico-tier", t));
        }
        (0..10)
            .filter(|_| status(&admit_at(&c, &s, &view("/", &h), T0)) == 200)
            .count()
    };
    assert_eq!(count("p", Some("pro")), 3);
    assert_eq!(count("f", Some("free")), 1);
    assert_eq!(count("n", None), 1);
}

#[test]
fn keys_separate_callers() {
    let c = config(
        json!({"rules": [{"name": "h", "key": [{"header": "x-user"}, "client_ip"], "limit": {"requests": 2, "period_seconds": 3600}}]}),
    );
    let s = MemoryStore::default();
    for user in ["a", "b"] {
        let n = (0..5)
            .filter(|_| status(&admit_at(&c, &s, &view("/", &[("x-user", user)]), T0)) == 200)
            .count();
        assert_eq!(n, 2, "{user}");
    }
}

#[test]
fn when_conditions_select_requests() {
    let c = config(
        json!({"rules": [{"name": "beta", "when": {"tiers": ["free"], "headers": [{"name": "x-beta", "value": "1"}]},
        "limit": {"requests": 1, "period_seconds": 3600}}]}),
    );
    let s = MemoryStore::default();
    let free_beta = [("x-portico-tier", "free"), ("x-beta", "1")];
    assert_eq!(status(&admit_at(&c, &s, &view("/", &free_beta), T0)), 200);
    assert_eq!(status(&admit_at(&c, &s, &view("/", &free_beta), T0)), 429);
    assert_eq!(
        status(&admit_at(
            &c,
            &s,
            &view("/", &[("x-portico-tier", "pro"), ("x-beta", "1")]),
            T0
        )),
        200
    );
    assert_eq!(
        status(&admit_at(
            &c,
            &s,
            &view("/", &[("x-portico-tier", "free"), ("x-beta", "2")]),
            T0
        )),
        200
    );
}

#[test]
fn dry_run_counts_and_reports_but_never_refuses() {
    let c = config(json!({"rules": [{"name": "d", "limit": {"requests": 2, "period_seconds": 60}, "dry_run": true}]}));
    let s = MemoryStore::default();
    let events: Vec<Event> = (0..4)
        .map(|_| {
            let a = admit_at(&c, &s, &view("/", &[]), T0);
            assert_eq!(status(&a), 200);
            a.rule_events[0].1
        })
        .collect();
    assert_eq!(
        events,
        vec![
            Event::Allowed,
            Event::Allowed,
            Event::DryRunLimited,
            Event::DryRunLimited
        ]
    );
    let a = admit_at(&c, &s, &view("/", &[]), T0);
    assert_eq!(header(&a, "ratelimit"), Some("\"d\";r=0;t=60"));
}

#[test]
fn responses_carry_policy_and_state_headers() {
    let c = config(json!({"rules": [{"name": "r", "limit": {"requests": 10, "period_seconds": 60}}]}));
    let s = MemoryStore::default();
    let a = admit_at(&c, &s, &view("/", &[]), T0);
    assert_eq!(header(&a, "ratelimit-policy"), Some("\"r\";q=10;w=60"));
    assert_eq!(header(&a, "ratelimit"), Some("\"r\";r=9;t=6"));
    assert_eq!(header(&a, "x-ratelimit-remaining"), Some("9"));
}

fn quota_config() -> Config {
    config(
        json!({"token_quotas": [{"name": "llm", "key": ["consumer"], "default_max_tokens": 100,
        "budgets": [{"tokens": 1000, "period_seconds": 3600}, {"tokens": 100000, "period_seconds": 86400}]}]}),
    )
}

#[test]
fn reservations_admit_at_most_what_the_budget_fits() {
    let c = quota_config();
    let s = MemoryStore::default();
    // Each request reserves 400/4 + 100 = 200 tokens: 1000 fits 5.
    let admitted: Vec<Admission> = (0..50)
        .map(|_| admit_at(&c, &s, &view("/", &[("x-portico-consumer", "q")]), T0))
        .filter(|a| status(a) == 200)
        .collect();
    assert_eq!(admitted.len(), 5);
    let refused = admit_at(&c, &s, &view("/", &[("x-portico-consumer", "q")]), T0);
    assert_eq!(refused.rejection.as_ref().unwrap().code, "token_quota_exceeded");
    assert_eq!(header(&refused, "x-ratelimit-remaining-tokens"), Some("0"));

    // Settling each to 20 real tokens refunds 180 per request: 900 come back.
    for a in &admitted {
        assert_eq!(settle(&s, &a.reservations, Some(20), T0), 20);
    }
    let a = admit_at(&c, &s, &view("/", &[("x-portico-consumer", "q")]), T0);
    assert_eq!(status(&a), 200);
    assert_eq!(header(&a, "x-ratelimit-remaining-tokens"), Some("700"));
}

#[test]
fn unknown_usage_keeps_the_reservation_and_overuse_is_charged() {
    let c = quota_config();
    let s = MemoryStore::default();
    let h = [("x-portico-consumer", "z")];
    let a = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(settle(&s, &a.reservations, None, T0), 200);
    let b = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(header(&b, "x-ratelimit-remaining-tokens"), Some("600"));
    settle(&s, &b.reservations, Some(800), T0);
    // 200 kept + 800 used = 1000: nothing left.
    assert_eq!(status(&admit_at(&c, &s, &view("/", &h), T0)), 429);
}

#[test]
fn max_tokens_from_the_request_sets_the_estimate() {
    let c = quota_config();
    let s = MemoryStore::default();
    let v = view("/", &[("x-portico-consumer", "m")]);
    let req = Request {
        view: &v,
        client_ip: None,
        body_bytes: Some(40),
        max_tokens: Some(990),
    };
    assert_eq!(admit(&c, &s, &SALT, &req, T0).reservations[0].estimate, 1000);
    assert_eq!(status(&admit(&c, &s, &SALT, &req, T0)), 429);
}

/// A store whose host calls always fail.
struct Broken;
impl Store for Broken {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Err(HostError(10))
    }
    fn set(&self, _: &str, _: &[u8], _: u32) -> Result<SetOutcome, HostError> {
        Err(HostError(10))
    }
}

#[test]
fn store_failures_follow_the_fail_mode() {
    let v = view("/", &[]);
    let req = Request {
        view: &v,
        client_ip: None,
        body_bytes: None,
        max_tokens: None,
    };
    let open = config(json!({"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}]}));
    let a = admit(&open, &Broken, &SALT, &req, T0);
    assert!(a.rejection.is_none());
    assert_eq!(a.rule_events, vec![(0, Event::StoreError)]);
    let closed =
        config(json!({"fail_mode": "closed", "rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}]}));
    let a = admit(&closed, &Broken, &SALT, &req, T0);
    assert_eq!(a.rejection.unwrap().code, "rate_limit_unavailable");
}
