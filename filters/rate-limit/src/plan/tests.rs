//! Unit tests of admission, compiled only under #[cfg(test)] (declared in plan.rs).

use super::*;
use portico_core::request::RequestView;
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
fn a_path_key_counts_the_path_rules_match_on_not_its_spelling() {
    let c =
        config(json!({"rules": [{"name": "p", "key": ["path"], "limit": {"requests": 2, "period_seconds": 3600}}]}));
    let s = MemoryStore::default();
    // Three spellings of one path, as routes match it: parameters and unreserved escapes do not
    // make a new bucket.
    let statuses: Vec<u32> = ["/x;a=1", "/%78", "/x"]
        .iter()
        .map(|p| status(&admit_at(&c, &s, &view(p, &[]), T0)))
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    // Another path still has its own.
    assert_eq!(status(&admit_at(&c, &s, &view("/y", &[]), T0)), 200);
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
fn a_request_is_selected_exactly_when_a_rule_or_quota_would_take_from_it() {
    let c = config(json!({
        "rules": [{"name": "beta", "match": {"path": "/beta"}, "when": {"tiers": ["free"]},
                   "limit": {"requests": 1, "period_seconds": 3600}}],
        "token_quotas": [{"name": "chat", "match": {"path": "/v1/{*rest}"},
                    "budgets": [{"tokens": 100000, "period_seconds": 60}]}]}));
    let free = [("x-portico-tier", "free")];
    for (path, headers, selected) in [
        ("/beta", &free[..], true),
        ("/beta", &[("x-portico-tier", "pro")][..], false),
        ("/v1/chat", &[][..], true),
        ("/other", &free[..], false),
    ] {
        let v = view(path, headers);
        assert_eq!(selects_any(&c, &v), selected, "{path} {headers:?}");
        let s = MemoryStore::default();
        let a = admit_at(&c, &s, &v, T0);
        let took = !a.rule_events.is_empty() || !a.quota_events.is_empty();
        assert_eq!(took, selected, "{path} {headers:?}");
    }
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

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage { prompt, completion }
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
        let settled = a.hold.settle(&s, usage(5, 15), T0);
        assert_eq!(settled.counted, usage(5, 15));
        assert!(settled.anomalies.is_empty());
    }
    let a = admit_at(&c, &s, &view("/", &[("x-portico-consumer", "q")]), T0);
    assert_eq!(status(&a), 200);
    assert_eq!(header(&a, "x-ratelimit-remaining-tokens"), Some("700"));
}

#[test]
fn overuse_within_the_bound_is_charged_and_counted() {
    let c = quota_config();
    let s = MemoryStore::default();
    let h = [("x-portico-consumer", "z")];
    let a = admit_at(&c, &s, &view("/", &h), T0);
    let b = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(header(&b, "x-ratelimit-remaining-tokens"), Some("600"));
    // `a` keeps its 200 (usage unknown: never settled); `b` used 600, three times its 200.
    let settled = b.hold.settle(&s, usage(100, 500), T0);
    assert_eq!(settled.counted, usage(100, 500));
    assert_eq!(settled.anomalies, vec![(Some(0), Anomaly::OverReservation)]);
    // 200 kept + 600 used = 800: a third reservation of 200 fits, a fourth does not.
    assert_eq!(status(&admit_at(&c, &s, &view("/", &h), T0)), 200);
    assert_eq!(status(&admit_at(&c, &s, &view("/", &h), T0)), 429);
    drop(a);
}

#[test]
fn a_lying_backend_is_charged_at_most_four_times_the_reservation() {
    let c = config(
        json!({"token_quotas": [{"name": "llm", "key": ["consumer"], "default_max_tokens": 100,
        "budgets": [{"tokens": 10_000, "period_seconds": 3600}]}]}),
    );
    let s = MemoryStore::default();
    let h = [("x-portico-consumer", "victim")];
    let a = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(a.hold.reservations()[0].estimate(), 200);
    let settled = a.hold.settle(&s, usage(3, u64::MAX), T0);
    assert_eq!(settled.counted, usage(3, 797), "cut to 4 x 200, prompt first");
    assert_eq!(settled.anomalies, vec![(Some(0), Anomaly::Clamped)]);
    // 800 charged of 10,000: the consumer goes on, with sane headers.
    let next = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(status(&next), 200);
    assert_eq!(header(&next, "x-ratelimit-remaining-tokens"), Some("9000"));
    assert_eq!(header(&next, "x-ratelimit-reset-tokens"), Some("360s"));
}

#[test]
fn without_a_reservation_counted_usage_is_cut_to_the_unreserved_limit() {
    let settled = Hold::default().settle(&MemoryStore::default(), usage(u64::MAX, u64::MAX), T0);
    assert_eq!(settled.counted, usage(UNRESERVED_LIMIT, 0));
    assert_eq!(settled.anomalies, vec![(None, Anomaly::Clamped)]);
    let fine = Hold::default().settle(&MemoryStore::default(), usage(10, 20), T0);
    assert_eq!(
        fine,
        Settled {
            counted: usage(10, 20),
            anomalies: vec![]
        }
    );
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
    let a = admit(&c, &s, &SALT, &req, T0);
    assert_eq!(a.hold.reservations()[0].estimate(), 1000);
    assert_eq!(a.hold.output_budget(), Some(990));
    assert_eq!(status(&admit(&c, &s, &SALT, &req, T0)), 429);
}

#[test]
fn the_output_budget_is_the_smallest_default_of_the_quotas_that_reserved() {
    let c = config(json!({"token_quotas": [
        {"name": "a", "default_max_tokens": 300, "budgets": [{"tokens": 10_000, "period_seconds": 60}]},
        {"name": "b", "default_max_tokens": 200, "budgets": [{"tokens": 10_000, "period_seconds": 60}]},
        {"name": "c", "match": {"path": "/elsewhere"}, "default_max_tokens": 10, "budgets": [{"tokens": 10_000, "period_seconds": 60}]}
    ]}));
    let a = admit_at(&c, &MemoryStore::default(), &view("/", &[]), T0);
    assert_eq!(a.hold.output_budget(), Some(200));
    let rules_only = config(json!({"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}]}));
    let a = admit_at(&rules_only, &MemoryStore::default(), &view("/", &[]), T0);
    assert_eq!(a.hold.output_budget(), None);
}

#[test]
fn a_larger_prompt_seen_in_the_body_reserves_the_difference() {
    let c = quota_config();
    let s = MemoryStore::default();
    let h = [("x-portico-consumer", "b")];
    // Reserved 100 + 100 at admission.
    let mut a = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(header(&a, "x-ratelimit-remaining-tokens"), Some("800"));
    let (top_up, events) = a.hold.top_up(&c, &s, 100, T0);
    assert!(matches!(top_up, TopUp::Unchanged), "{top_up:?}");
    assert!(events.is_empty());
    // The body holds 500 tokens of prompt: 400 more.
    let (top_up, events) = a.hold.top_up(&c, &s, 500, T0);
    let TopUp::Reserved(headers) = top_up else {
        panic!("{top_up:?}")
    };
    assert_eq!(events, vec![(0, Event::Allowed)]);
    assert!(headers.contains(&("x-ratelimit-remaining-tokens", "400".to_owned())));
    assert_eq!(a.hold.reservations()[0].estimate(), 600);
    // Settling to 50 refunds all 550 of the extra and the estimate.
    a.hold.settle(&s, usage(40, 10), T0);
    let next = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(header(&next, "x-ratelimit-remaining-tokens"), Some("750"));
}

#[test]
fn a_prompt_too_large_for_the_budget_is_refused_and_refunds_everything() {
    let c = config(json!({
        "rules": [{"name": "calls", "key": ["consumer"], "limit": {"requests": 10, "period_seconds": 3600}}],
        "token_quotas": [{"name": "llm", "key": ["consumer"], "default_max_tokens": 100,
            "budgets": [{"tokens": 1000, "period_seconds": 3600}, {"tokens": 100000, "period_seconds": 86400}]}]
    }));
    let s = MemoryStore::default();
    let h = [("x-portico-consumer", "big")];
    // Another request holds 200 of the 1000; this one's 100 + 800 would fit the budget's
    // limit, but not what is left of it.
    let other = admit_at(&c, &s, &view("/", &h), T0);
    let mut a = admit_at(&c, &s, &view("/", &h), T0);
    assert_eq!(status(&a), 200);
    let (top_up, events) = a.hold.top_up(&c, &s, 800, T0);
    let TopUp::Refused(response) = top_up else {
        panic!("{top_up:?}")
    };
    assert_eq!(events, vec![(0, Event::Limited)]);
    assert_eq!(response.status, 429);
    assert_eq!(response.code, "token_quota_exceeded");
    let retry: u64 = response
        .headers
        .iter()
        .find(|(n, _)| *n == "retry-after")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!(retry > 0 && retry <= 86_400 * 2, "retry-after {retry}");
    assert!(a.hold.reservations().is_empty());
    // Nothing of it stayed charged: only `other` and the next request hold anything.
    let next = admit_at(&c, &s, &view("/", &h), T0);
    let state = header(&next, "ratelimit").unwrap();
    for part in ["\"calls\";r=8;", "\"llm_3600s\";r=600;", "\"llm_86400s\";r=99600;"] {
        assert!(state.contains(part), "{part} in {state}");
    }
    drop(other);
}

#[test]
fn a_dry_run_quota_counts_a_top_up_it_cannot_fit_but_admits() {
    let c = config(
        json!({"token_quotas": [{"name": "trial", "dry_run": true, "default_max_tokens": 100,
        "budgets": [{"tokens": 1000, "period_seconds": 3600}]}]}),
    );
    let s = MemoryStore::default();
    let mut a = admit_at(&c, &s, &view("/", &[]), T0);
    let (top_up, events) = a.hold.top_up(&c, &s, 5000, T0);
    assert!(matches!(top_up, TopUp::Reserved(_)), "{top_up:?}");
    assert_eq!(events, vec![(0, Event::DryRunLimited)]);
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

#[test]
fn a_request_larger_than_a_whole_budget_is_a_400_naming_it_not_a_429() {
    let c = config(json!({
        "rules": [{"name": "r", "key": ["consumer"], "limit": {"requests": 100, "period_seconds": 60}}],
        "token_quotas": [{"name": "llm", "key": ["consumer"], "default_max_tokens": 100,
            "budgets": [{"tokens": 100000, "period_seconds": 86400}, {"tokens": 1000, "period_seconds": 3600}]}]
    }));
    let s = MemoryStore::default();
    let v = view("/", &[("x-portico-consumer", "big")]);
    let asking = |max_tokens: u64| Request {
        view: &v,
        client_ip: None,
        body_bytes: Some(40),
        max_tokens: Some(max_tokens),
    };
    // 5000 + 10 can never fit 1000, whatever the wait: no Retry-After would be true.
    let a = admit(&c, &s, &SALT, &asking(5000), T0);
    let refusal = a.rejection.as_ref().unwrap();
    assert_eq!((refusal.status, refusal.code), (400, "exceeds_token_budget"));
    assert!(refusal.message.contains("\"llm_3600s\""), "{}", refusal.message);
    assert!(
        refusal.message.contains("5010") && refusal.message.contains("1000"),
        "{}",
        refusal.message
    );
    assert_eq!(header(&a, "retry-after"), None);
    // Nothing was consumed, the request rule included: 1000 - 10 - 990 fits exactly.
    let fits = admit(&c, &s, &SALT, &asking(990), T0);
    assert_eq!(status(&fits), 200);
    assert_eq!(header(&fits, "x-ratelimit-remaining"), Some("99"));
    // Exhausted but within its limit: a 429 with Retry-After, as before.
    let later = admit(&c, &s, &SALT, &asking(10), T0);
    assert_eq!(later.rejection.as_ref().unwrap().code, "token_quota_exceeded");
    assert!(header(&later, "retry-after").is_some());

    // A prompt that turns out too large for the whole budget once the body is read.
    let s = MemoryStore::default();
    let mut a = admit(&c, &s, &SALT, &asking(500), T0);
    assert_eq!(status(&a), 200);
    let (top_up, _) = a.hold.top_up(&c, &s, 600, T0);
    let TopUp::Refused(refusal) = top_up else {
        panic!("{top_up:?}")
    };
    assert_eq!((refusal.status, refusal.code), (400, "exceeds_token_budget"));
    assert_eq!(status(&admit(&c, &s, &SALT, &asking(990), T0)), 200, "all refunded");

    // A dry-run quota never refuses.
    let dry = config(
        json!({"token_quotas": [{"name": "t", "dry_run": true, "default_max_tokens": 5,
        "budgets": [{"tokens": 10, "period_seconds": 60}]}]}),
    );
    assert_eq!(
        status(&admit(&dry, &MemoryStore::default(), &SALT, &asking(5000), T0)),
        200
    );
}

#[test]
fn a_compressed_body_on_a_quota_route_is_refused_with_415_and_takes_nothing() {
    let c = config(json!({
        "rules": [{"name": "r", "key": ["consumer"], "limit": {"requests": 100, "period_seconds": 60}}],
        "token_quotas": [{"name": "llm", "match": {"path": "/v1/{*rest}"}, "key": ["consumer"],
            "budgets": [{"tokens": 100000, "period_seconds": 3600}]}]
    }));
    let s = MemoryStore::default();
    for encoding in ["gzip", "deflate", "br", "gzip, identity"] {
        let v = view(
            "/v1/chat/completions",
            &[("x-portico-consumer", "z"), ("content-encoding", encoding)],
        );
        let a = admit_at(&c, &s, &v, T0);
        let refusal = a.rejection.as_ref().unwrap();
        assert_eq!(
            (refusal.status, refusal.code),
            (415, "unsupported_content_encoding"),
            "{encoding}"
        );
        assert_eq!(header(&a, "accept-encoding"), Some("identity"));
        assert_eq!(header(&a, "retry-after"), None);
    }
    // Nothing was taken: the request rule still has all 100.
    let plain = admit_at(
        &c,
        &s,
        &view("/v1/chat/completions", &[("x-portico-consumer", "z")]),
        T0,
    );
    assert_eq!(header(&plain, "x-ratelimit-remaining"), Some("99"));
    // `identity`, and routes without a token quota, pass.
    let identity = view(
        "/v1/chat/completions",
        &[("x-portico-consumer", "z"), ("content-encoding", "Identity")],
    );
    assert_eq!(status(&admit_at(&c, &s, &identity, T0)), 200);
    let elsewhere = view("/upload", &[("x-portico-consumer", "z"), ("content-encoding", "gzip")]);
    assert_eq!(status(&admit_at(&c, &s, &elsewhere, T0)), 200);
}
