//! The rate-limit filter through a real Envoy at `--concurrency 2`: two workers, one count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use portico_tests::demo::{demo_env, Shipped};
use portico_tests::envoy::{eventually, json_to_metadata, EnvoyConfig, Gateway};
use portico_tests::http::{get, Connection, Request, Response};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

fn gateway(config: &Value) -> (Gateway, Upstream) {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let envoy = EnvoyConfig::new(upstream.addr)
        .native(json_to_metadata(&["model", "max_tokens"]))
        .wasm("rate-limit", config);
    (Gateway::start(&envoy), upstream)
}

/// Rate-limit with nothing in front that buffers the body: a chunked body arrives in pieces
/// after the headers were decided.
fn unbuffered_gateway(config: &Value) -> (Gateway, Upstream) {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let envoy = EnvoyConfig::new(upstream.addr).wasm("rate-limit", config);
    (Gateway::start(&envoy), upstream)
}

fn as_consumer(path: &str, consumer: &str) -> Request {
    get(path).header("x-portico-consumer", consumer)
}

/// Sends `n` copies of `request` at once, each on its own connection and thread.
fn burst(gw: &Gateway, request: &Request, n: usize) -> Vec<Response> {
    let start = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (start, request, addr) = (Arc::clone(&start), request.clone(), gw.addr);
            thread::spawn(move || {
                start.wait();
                request.send(addr)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn count(responses: &[Response], status: u16) -> usize {
    responses.iter().filter(|r| r.status == status).count()
}

/// `portico_ratelimit_requests_total` for one rule and outcome.
fn decisions(gw: &Gateway, rule: &str, outcome: &str) -> u64 {
    gw.metric(
        "portico_ratelimit_requests_total",
        &[("rule", rule), ("outcome", outcome)],
    )
}

#[test]
fn exactly_the_limit_passes_under_concurrency_across_workers() {
    let (gw, _up) = gateway(
        &json!({"rules": [{"name": "per_consumer", "key": ["consumer"], "limit": {"requests": 50, "period_seconds": 3600}}]}),
    );
    // Every request is the first for a brand-new key at the same instant: the creation race.
    let responses = burst(&gw, &as_consumer("/x", "racer"), 200);
    assert_eq!(
        count(&responses, 200),
        50,
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(count(&responses, 429), 150);
    assert_eq!(decisions(&gw, "per_consumer", "allowed"), 50);
    assert_eq!(decisions(&gw, "per_consumer", "limited"), 150);
    gw.assert_no_wasm_panic();
}

#[test]
fn limits_refill_after_the_period() {
    // 2 per 4 s: a unit comes back every 2 s, a margin no scheduling hiccup eats.
    let (gw, _up) = gateway(&json!({"rules": [{"name": "r", "limit": {"requests": 2, "period_seconds": 4}}]}));
    let statuses: Vec<u16> = (0..3).map(|_| get("/").send(gw.addr).status).collect();
    assert_eq!(statuses, vec![200, 200, 429]);
    thread::sleep(Duration::from_millis(4100));
    let statuses: Vec<u16> = (0..3).map(|_| get("/").send(gw.addr).status).collect();
    assert_eq!(statuses, vec![200, 200, 429]);
}

#[test]
fn headers_on_allowed_and_rejected_responses() {
    let (gw, _up) = gateway(
        &json!({"rules": [{"name": "r", "key": ["consumer"], "limit": {"requests": 2, "period_seconds": 60}}]}),
    );
    let r = as_consumer("/x", "h").send(gw.addr);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"r\";q=2;w=60"));
    assert_eq!(r.header("ratelimit"), Some("\"r\";r=1;t=30"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("30"));
    as_consumer("/x", "h").send(gw.addr);
    let r = as_consumer("/x", "h").send(gw.addr);
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "rate_limited");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"r\";q=2;w=60"));
    assert!(r.header("ratelimit").unwrap().starts_with("\"r\";r=0;t="));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}

#[test]
fn a_request_refused_by_one_rule_consumes_nothing_from_the_others() {
    let (gw, _up) = gateway(&json!({"rules": [
        {"name": "wide", "key": ["consumer"], "limit": {"requests": 5, "period_seconds": 3600}},
        {"name": "narrow", "match": {"path": "/narrow"}, "key": ["consumer"], "limit": {"requests": 1, "period_seconds": 3600}}
    ]}));
    let statuses: Vec<u16> = (0..4)
        .map(|_| as_consumer("/narrow", "c").send(gw.addr).status)
        .collect();
    assert_eq!(statuses, vec![200, 429, 429, 429]);
    let r = as_consumer("/narrow", "c").send(gw.addr);
    assert_eq!(
        r.header("ratelimit"),
        Some("\"wide\";r=4;t=720, \"narrow\";r=0;t=3600"),
        "both policies reported"
    );
    let wide: Vec<u16> = (0..5)
        .map(|_| as_consumer("/elsewhere", "c").send(gw.addr).status)
        .collect();
    assert_eq!(
        wide,
        vec![200, 200, 200, 200, 429],
        "the refused requests took nothing from `wide`"
    );
}

#[test]
fn tiers_get_their_own_limits_with_a_default() {
    let (gw, _up) = gateway(&json!({"rules": [{"name": "t", "key": ["consumer"],
        "limit": {"requests": 1, "period_seconds": 3600},
        "tiers": {"pro": {"requests": 3, "period_seconds": 3600}}}]}));
    let passed = |consumer: &str, tier: Option<&str>| {
        (0..6)
            .filter(|_| {
                let mut req = as_consumer("/", consumer);
                if let Some(t) = tier {
                    req = req.header("x-portico-tier", t);
                }
                req.send(gw.addr).status == 200
            })
            .count()
    };
    assert_eq!(passed("pro-user", Some("pro")), 3);
    assert_eq!(passed("free-user", Some("free")), 1);
    assert_eq!(passed("no-tier", None), 1);
}

#[test]
fn keys_by_header_and_by_client_address() {
    let (gw, _up) = gateway(&json!({"rules": [
        {"name": "by_ip", "match": {"path": "/ip"}, "key": ["client_ip"], "limit": {"requests": 2, "period_seconds": 3600}},
        {"name": "by_team", "match": {"path": "/team"}, "key": [{"header": "x-team"}], "limit": {"requests": 2, "period_seconds": 3600}}
    ]}));
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let ip: IpAddr = ip.parse().unwrap();
        let statuses: Vec<u16> = (0..3).map(|_| get("/ip").send_from(ip, gw.addr).status).collect();
        assert_eq!(statuses, vec![200, 200, 429], "from {ip}");
    }
    for team in ["red", "blue"] {
        let statuses: Vec<u16> = (0..3)
            .map(|_| get("/team").header("x-team", team).send(gw.addr).status)
            .collect();
        assert_eq!(statuses, vec![200, 200, 429], "team {team}");
    }
}

#[test]
fn dry_run_counts_and_reports_but_never_refuses() {
    let (gw, _up) = gateway(
        &json!({"rules": [{"name": "trial", "limit": {"requests": 2, "period_seconds": 3600}, "dry_run": true}]}),
    );
    let responses: Vec<Response> = (0..5).map(|_| get("/").send(gw.addr)).collect();
    assert!(responses.iter().all(|r| r.status == 200));
    assert_eq!(responses[4].header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(decisions(&gw, "trial", "dry_run_limited"), 3);
    assert_eq!(decisions(&gw, "trial", "allowed"), 2);
}

fn quota_config(tokens: u64, period: u64) -> Value {
    json!({"token_quotas": [{"name": "llm", "match": {"path": "/v1/{*rest}"}, "key": ["consumer"],
        "default_max_tokens": 100, "budgets": [{"tokens": tokens, "period_seconds": period}]}]})
}

fn quota_gateway(tokens: u64, period: u64) -> (Gateway, Upstream) {
    gateway(&quota_config(tokens, period))
}

/// A budget period long enough that refill during a test is below one token.
const YEAR: u64 = 365 * 86400;

fn chat_body() -> String {
    json!({"model": "gpt-test", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

fn chat(path: &str, consumer: &str, usage: Option<(u64, u64)>, stream: bool) -> Request {
    let body = chat_body();
    let mut req = Request::new("POST", path)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-portico-consumer", consumer)
        .header("x-portico-tier", "pro")
        .body(body);
    if let Some((p, c)) = usage {
        req = req.header("x-mock-usage", format!("{p},{c}"));
    }
    if stream {
        req = req.header("x-mock-stream", "1");
    }
    req
}

fn remaining_tokens(r: &Response) -> u64 {
    r.header("x-ratelimit-remaining-tokens")
        .unwrap_or_else(|| panic!("no token headers: {:?}", r.headers))
        .parse()
        .unwrap()
}

#[test]
fn token_usage_is_settled_from_json_and_from_split_streams_of_both_apis() {
    let (gw, _up) = quota_gateway(100_000, YEAR);
    // The estimate is max_tokens (200, lifted by json_to_metadata) plus body bytes / 4.
    let first = chat("/v1/chat/completions", "u", Some((10, 20)), false).send(gw.addr);
    assert_eq!(first.status, 200, "{}", first.text());
    let estimate = 100_000 - remaining_tokens(&first);
    assert!((200..260).contains(&estimate), "estimate {estimate}");

    // Each next response shows the budget after the previous request settled to its usage.
    let cases = [
        ("/v1/messages", Some((7, 5)), true, 30), // after the OpenAI JSON: 30 used
        ("/v1/chat/completions", Some((40, 2)), true, 12), // after the Anthropic stream
        ("/v1/messages", Some((1, 1)), false, 42), // after the OpenAI stream
        ("/v1/chat/completions", None, false, 2), // after the Anthropic JSON
    ];
    let mut used = 0;
    for (path, usage, stream, previous) in cases {
        used += previous;
        let r = chat(path, "u", usage, stream).send(gw.addr);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        if stream {
            assert!(r.text().contains("data: "), "the stream passes through");
        }
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            remaining_tokens(&r),
            100_000 - used - estimate,
            "{path} stream={stream}"
        );
    }
    // The last answer was a success without usage: the backend did work nobody can count, so
    // its reservation stands (issue 13: unknown is not zero).
    thread::sleep(Duration::from_millis(50));
    let r = chat("/v1/chat/completions", "u", None, false).send(gw.addr);
    assert_eq!(remaining_tokens(&r), 100_000 - used - 2 * estimate);
    assert!(gw.metric("portico_ratelimit_responses_without_usage", &[]) >= 1);
    // An error answer without usage charges nothing: after it, the budget is as before it.
    thread::sleep(Duration::from_millis(50));
    let failed = chat("/v1/chat/completions", "u", None, false)
        .header("x-mock-status", "500")
        .send(gw.addr);
    assert_eq!(failed.status, 500);
    thread::sleep(Duration::from_millis(50));
    let r = chat("/v1/chat/completions", "u", Some((1, 1)), false).send(gw.addr);
    assert_eq!(remaining_tokens(&r), 100_000 - used - 3 * estimate);
    assert!(gw.metric("portico_tokens_total", &[("tier", "pro"), ("model", "gpt-test")]) >= used);
    gw.assert_no_wasm_panic();
}

#[test]
fn a_stream_cut_before_its_usage_keeps_the_reservation() {
    let (gw, _up) = quota_gateway(100_000, YEAR);
    let estimate = 200 + (chat_body().len() as u64).div_ceil(4);
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let cut = chat(path, "cut", Some((5, 5)), true).header("x-mock-cut", "1");
        // The client sees a truncated stream; what matters is what was charged.
        let _ = cut.try_send(gw.addr);
    }
    thread::sleep(Duration::from_millis(200));
    let r = chat("/v1/chat/completions", "cut", Some((1, 1)), false).send(gw.addr);
    assert_eq!(
        remaining_tokens(&r),
        100_000 - 3 * estimate,
        "both cut streams kept their reservation"
    );
    assert_eq!(gw.metric("portico_ratelimit_responses_without_usage", &[]), 2);
    gw.assert_no_wasm_panic();
}

#[test]
fn an_anthropic_stream_cut_after_message_start_keeps_the_reservation() {
    let (gw, _up) = quota_gateway(100_000, YEAR);
    let estimate = 200 + (chat_body().len() as u64).div_ceil(4);
    // The body ends cleanly after message_start and some deltas, before message_delta's usage:
    // message_start's placeholder (output_tokens 1) is no final count.
    let cut = chat("/v1/messages", "placeholder", Some((5, 500)), true).header("x-mock-cut", "clean");
    let r = cut.send(gw.addr);
    assert!(r.text().contains("message_start"), "{}", r.text());
    assert!(!r.text().contains("message_delta"), "{}", r.text());
    thread::sleep(Duration::from_millis(100));
    let r = chat("/v1/chat/completions", "placeholder", Some((1, 1)), false).send(gw.addr);
    assert_eq!(
        remaining_tokens(&r),
        100_000 - 2 * estimate,
        "the cut stream kept its reservation"
    );
    gw.assert_no_wasm_panic();
}

#[test]
fn concurrent_requests_never_overshoot_the_token_budget() {
    // The estimate: max_tokens (200) plus a token per 4 bytes of body. The budget fits 10.5.
    let estimate = 200 + (chat_body().len() as u64).div_ceil(4);
    let (gw, _up) = quota_gateway(10 * estimate + estimate / 2, YEAR);
    let request =
        chat("/v1/chat/completions", "busy", Some((20, estimate - 20)), false).header("x-mock-delay-ms", "400");
    let responses = burst(&gw, &request, 50);
    let admitted = count(&responses, 200);
    assert_eq!(admitted, 10);
    let refused: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refused.len(), 50 - admitted);
    assert!(refused.iter().all(|r| r.error_code() == "token_quota_exceeded"));
    assert!(refused[0].header("retry-after").is_some());
}

#[test]
fn an_exhausted_budget_recovers_after_its_period() {
    // 1000 tokens per 8 s refill 125 a second: the second request lacks ~130, over a second of
    // margin for slow machines.
    let (gw, _up) = quota_gateway(1_000, 8);
    let big = || chat("/v1/chat/completions", "e", Some((10, 900)), false);
    assert_eq!(big().send(gw.addr).status, 200);
    thread::sleep(Duration::from_millis(50));
    let r = big().send(gw.addr);
    assert_eq!(
        r.status,
        429,
        "910 of 1000 used: another ~220 does not fit: {}",
        r.text()
    );
    thread::sleep(Duration::from_millis(8100));
    assert_eq!(big().send(gw.addr).status, 200, "the budget refilled");
}

#[test]
fn bad_configuration_is_refused_with_json_paths() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let config = json!({"rules": [{"name": "Bad Name", "limit": {"requests": 0, "period_seconds": 1}, "key": ["ip"]}], "max_keys": 1});
    let failure =
        Gateway::try_start(&EnvoyConfig::new(upstream.addr).wasm("rate-limit", &config)).expect_err("accepted");
    for expected in [
        "$.max_keys: must be between 16 and 10000000",
        "$.rules[0].name: names use a-z, 0-9 and _ only",
        "$.rules[0].limit.requests: must be between 1 and 1000000: at most 1000000 per second of period_seconds",
        "$.rules[0].key[0]: unknown value \"ip\"",
    ] {
        assert!(
            failure.log.contains(expected),
            "missing {expected:?} in:\n{}",
            failure.log
        );
    }
}

#[test]
fn memory_stays_flat_across_100k_distinct_keys() {
    let (gw, _up) = gateway(
        &json!({"max_keys": 1000, "rules": [{"name": "flood", "key": [{"header": "x-client"}], "limit": {"requests": 5, "period_seconds": 60}}]}),
    );
    let send = |from: usize, to: usize| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let addr = gw.addr;
                thread::spawn(move || {
                    let mut conn = Connection::open(addr).unwrap();
                    for i in (from + t..to).step_by(8) {
                        let r = conn.send(&get("/").header("x-client", format!("client-{i}"))).unwrap();
                        assert!(r.status == 200 || r.status == 429);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    };
    send(0, 10_000);
    let after_10k = gw.rss_kib();
    send(10_000, 100_000);
    let after_100k = gw.rss_kib();
    eprintln!("Envoy RSS: {after_10k} KiB after 10k keys, {after_100k} KiB after 100k keys");
    // Stated bound: within 10% (slots are all in use after the first 10k keys).
    assert!(
        after_100k * 10 <= after_10k * 11,
        "RSS grew from {after_10k} to {after_100k} KiB"
    );
    gw.assert_no_wasm_panic();
}

/// What the next request of `consumer` shows left of a budget (one that refills too slowly to
/// move during a test), once the earlier answers have settled.
fn remaining_after(gw: &Gateway, consumer: &str) -> u64 {
    thread::sleep(Duration::from_millis(100));
    let r = chat("/v1/chat/completions", consumer, Some((1, 1)), false).send(gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    remaining_tokens(&r)
}

fn chat_estimate() -> u64 {
    200 + (chat_body().len() as u64).div_ceil(4)
}

#[test]
fn a_backend_claiming_2_to_the_64_tokens_cannot_lock_a_consumer_out() {
    let (gw, _up) = quota_gateway(100_000, YEAR);
    let estimate = chat_estimate();
    let lie = (3, u64::MAX);
    let cases = [
        ("/v1/chat/completions", false),
        ("/v1/messages", false),
        ("/v1/chat/completions", true),
        ("/v1/messages", true),
    ];
    for (i, (path, stream)) in cases.into_iter().enumerate() {
        let consumer = format!("victim-{i}");
        let r = chat(path, &consumer, Some(lie), stream).send(gw.addr);
        assert_eq!(r.status, 200, "{path} stream={stream}: {}", r.text());
        // Charged four times the reservation at most: the next request is admitted, with the
        // reservation of the lie's settlement and its own in the headers, and sane times.
        thread::sleep(Duration::from_millis(100));
        let next = chat(path, &consumer, Some((1, 1)), false).send(gw.addr);
        assert_eq!(next.status, 200, "{path} stream={stream}: {}", next.text());
        assert_eq!(next.header("retry-after"), None);
        assert_eq!(
            remaining_tokens(&next),
            100_000 - 4 * estimate - estimate,
            "{path} stream={stream}"
        );
        let reset: u64 = next
            .header("x-ratelimit-reset-tokens")
            .and_then(|v| v.strip_suffix('s'))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(reset <= YEAR, "reset in {reset} s");
    }
    let clamped = gw.metric(
        "portico_ratelimit_usage_anomalies_total",
        &[("rule", "llm"), ("reason", "clamped")],
    );
    assert_eq!(clamped, 4);
    // Counted as charged: four lies at 4 x the estimate, and four honest answers of 2 tokens.
    let counted = gw.metric("portico_tokens_total", &[("tier", "pro"), ("model", "gpt-test")]);
    assert_eq!(counted, 4 * 4 * estimate + 4 * 2);
    gw.assert_no_wasm_panic();
}

#[test]
fn after_a_lying_backend_retry_after_stays_within_the_budget_period() {
    // 1,000 tokens a minute; the lie is charged 4 x ~230, so the next reservation waits a few
    // seconds, not 292 years.
    let (gw, _up) = quota_gateway(1_000, 60);
    let r = chat("/v1/messages", "liar", Some((3, u64::MAX)), true).send(gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    thread::sleep(Duration::from_millis(100));
    let next = chat("/v1/messages", "liar", Some((1, 1)), false).send(gw.addr);
    assert_eq!(next.status, 429, "{}", next.text());
    let retry: u64 = next.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    gw.assert_no_wasm_panic();
}

#[test]
fn answers_over_the_reservation_are_charged_in_full_and_counted() {
    let (gw, _up) = quota_gateway(100_000, YEAR);
    let estimate = chat_estimate();
    // Twice the reservation: within the bound, so charged as reported.
    let r = chat("/v1/chat/completions", "big", Some((estimate, estimate)), false).send(gw.addr);
    assert_eq!(r.status, 200);
    assert_eq!(remaining_after(&gw, "big"), 100_000 - 2 * estimate - estimate);
    assert_eq!(
        gw.metric(
            "portico_ratelimit_usage_anomalies_total",
            &[("rule", "llm"), ("reason", "over_reservation")]
        ),
        1
    );
}

#[test]
fn max_completion_tokens_is_reserved_like_max_tokens() {
    let (gw, _up) = quota_gateway(100_000, YEAR);
    let send = |consumer: &str, fields: Value| {
        let mut body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let text = body.to_string();
        let prompt = (text.len() as u64).div_ceil(4);
        let r = Request::new("POST", "/v1/chat/completions")
            .header("content-type", "application/json")
            .header("x-portico-consumer", consumer)
            .body(text)
            .send(gw.addr);
        assert_eq!(r.status, 200, "{}", r.text());
        100_000 - remaining_tokens(&r) - prompt
    };
    assert_eq!(send("a", json!({"max_completion_tokens": 3000})), 3000);
    // Both given: the larger, which no backend exceeds.
    assert_eq!(
        send("b", json!({"max_tokens": 50, "max_completion_tokens": 3000})),
        3000
    );
    assert_eq!(
        send("c", json!({"max_tokens": 3000, "max_completion_tokens": 50})),
        3000
    );
    assert_eq!(send("d", json!({})), 100, "the quota's default");
}

type StartQuota = fn(u64) -> (Gateway, Upstream);

/// Gateways with a yearly token quota of the given size: behind `json_to_metadata`, and with
/// nothing in front that buffers the body. Without json_to_metadata nothing lifts the
/// request's `max_tokens` (200 below), so the quota's default (100) is reserved for output.
const GATEWAYS: [(&str, StartQuota, u64); 2] = [
    ("behind json_to_metadata", |tokens| quota_gateway(tokens, YEAR), 200),
    (
        "unbuffered",
        |tokens| unbuffered_gateway(&quota_config(tokens, YEAR)),
        100,
    ),
];

/// A JSON chat body whose prompt is `text`.
fn prompt_body(text: &str) -> String {
    json!({"model": "gpt-test", "max_tokens": 200, "messages": [{"role": "user", "content": text}]}).to_string()
}

fn post(consumer: &str, body: &str) -> Request {
    Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-portico-consumer", consumer)
        .header("x-mock-usage", "5,5")
        .body(body.to_owned())
}

#[test]
fn a_chunked_prompt_is_reserved_for_its_real_size() {
    let body = prompt_body(&"lorem ipsum ".repeat(3400));
    assert!(body.len() > 40_000);
    let prompt = (body.len() as u64).div_ceil(4);
    for (name, (gw, _up), output) in GATEWAYS.map(|(name, start, output)| (name, start(100_000), output)) {
        let r = post("chunked", &body).chunked(4096).send(gw.addr);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(remaining_tokens(&r), 100_000 - prompt - output, "{name}");
        gw.assert_no_wasm_panic();
    }
}

#[test]
fn a_cjk_prompt_is_reserved_at_a_token_per_byte() {
    let text = "请用中文总结这篇文章。".repeat(1000);
    let body = prompt_body(&text);
    let non_ascii = text.len() as u64;
    let prompt = non_ascii + (body.len() as u64 - non_ascii).div_ceil(4);
    for (name, (gw, _up), output) in GATEWAYS.map(|(name, start, output)| (name, start(100_000), output)) {
        let estimate = prompt + output;
        let r = post("cjk", &body).send(gw.addr);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(
            remaining_tokens(&r),
            100_000 - estimate,
            "{name}: 33,000 bytes, not 8,250 tokens"
        );
        // The same text as JSON escapes (`json.dumps` by default) is reserved as much.
        let escaped = serde_json::to_string(&text)
            .unwrap()
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    format!("\\u{:04x}", c as u32)
                }
            })
            .collect::<String>();
        let body = prompt_body("").replace("\"\"", &escaped);
        let r = post("cjk-escaped", &body).send(gw.addr);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert!(100_000 - remaining_tokens(&r) >= estimate, "{name}");
    }
}

#[test]
fn a_max_tokens_larger_than_the_whole_budget_is_a_400_naming_it() {
    let (gw, up) = quota_gateway(1_000, YEAR);
    let body = json!({"model": "m", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]});
    let r = post("huge", &body.to_string()).send(gw.addr);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "exceeds_token_budget");
    assert!(
        r.json()["error"]["message"].as_str().unwrap().contains("\"llm_"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(up.requests(), 0);
    gw.assert_no_wasm_panic();
}

#[test]
fn a_prompt_larger_than_the_whole_budget_is_refused_once_the_body_shows_it() {
    let big = prompt_body(&"lorem ipsum ".repeat(3400));
    let cjk = prompt_body(&"请用中文总结这篇文章。".repeat(300));
    for (name, (gw, up), body, chunked) in [
        // Nothing buffers the chunked body: admitted on its headers, refused at its end.
        (
            "unbuffered chunked",
            unbuffered_gateway(&quota_config(5_000, YEAR)),
            &big,
            true,
        ),
        // Its size read as ASCII (about 2,500 tokens) fits; its 9,900 bytes of CJK do not.
        ("CJK behind json_to_metadata", quota_gateway(5_000, YEAR), &cjk, false),
    ] {
        let mut request = post("heavy", body);
        if chunked {
            request = request.chunked(4096);
        }
        let r = request.send(gw.addr);
        // More than the whole 5,000-token budget: no wait would admit it, so no 429 and no
        // Retry-After, but a 400 naming the budget.
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert_eq!(r.error_code(), "exceeds_token_budget", "{name}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        assert!(
            r.json()["error"]["message"].as_str().unwrap().contains("\"llm_"),
            "{}",
            r.text()
        );
        assert_eq!(r.header("retry-after"), None, "{name}");
        assert!(r.header("ratelimit").is_some(), "{name}");
        assert_eq!(up.requests(), 0, "{name}: the upstream never got a complete request");
        // The refusal took nothing: a small request sees the whole budget.
        let small = post("heavy", &prompt_body("hi")).send(gw.addr);
        assert_eq!(small.status, 200, "{name}: {}", small.text());
        let output = if chunked { 100 } else { 200 };
        let small_estimate = output + (prompt_body("hi").len() as u64).div_ceil(4);
        assert_eq!(remaining_tokens(&small), 5_000 - small_estimate, "{name}");
        assert_eq!(
            gw.metric(
                "portico_ratelimit_requests_total",
                &[("rule", "llm"), ("outcome", "limited")]
            ),
            1,
            "{name}: one decision per request"
        );
        assert_eq!(
            gw.metric(
                "portico_ratelimit_requests_total",
                &[("rule", "llm"), ("outcome", "allowed")]
            ),
            1,
            "{name}"
        );
        gw.assert_no_wasm_panic();
    }
}

/// rate-limit, header-routing and body-transform as shipped, with an OpenAI client routed to
/// an Anthropic backend (which requires `max_tokens`). body-transform's own default (4096)
/// is far above the quota's (100).
fn translating_gateway(budget: u64) -> (Gateway, Upstream) {
    translating_gateway_holding(budget, false)
}

/// The same, with body-transform holding the headers of answers it translates whole (as
/// shipped), so a bad answer becomes a 502.
fn translating_gateway_holding(budget: u64, hold: bool) -> (Gateway, Upstream) {
    let anthropic = Upstream::start_named("127.0.0.1:0", "anthropic").unwrap();
    let routing = json!({
        "backends": [{"name": "anthropic", "cluster": "anthropic", "format": "anthropic", "credential": {"api_key": "k"}}],
        "routes": [{"name": "chat", "match": {"path": "/v1/chat/completions"},
                    "models": {"aliases": {"claude-test": {"backend": "anthropic"}}}}]
    });
    let transform = json!({"default_max_tokens": 4096, "allow_on_headers_stop_iteration": hold,
        "routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]});
    let limits = json!({"token_quotas": [{"name": "llm", "key": ["consumer"], "default_max_tokens": 100,
        "budgets": [{"tokens": budget, "period_seconds": YEAR}]}]});
    let envoy = EnvoyConfig::new(anthropic.addr)
        .route_by_header("x-portico-cluster")
        .cluster("anthropic", anthropic.addr)
        .native(json_to_metadata(&["model", "max_tokens", "stream"]))
        .wasm("rate-limit", &limits)
        .wasm("header-routing", &routing)
        .wasm("body-transform", &transform);
    (Gateway::start(&envoy), anthropic)
}

#[test]
fn an_answer_the_translator_refuses_is_still_charged() {
    for hold in [true, false] {
        let body = json!({"model": "claude-test", "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
        let estimate = 300 + (body.len() as u64).div_ceil(4);
        let (gw, _up) = translating_gateway_holding(100_000, hold);
        let paused = |consumer: &str, usage: Option<&str>| {
            let mut r = Request::new("POST", "/v1/chat/completions")
                .header("content-type", "application/json")
                .header("x-portico-consumer", consumer)
                .header("x-mock-stop", "pause_turn")
                .body(body.clone());
            if let Some(usage) = usage {
                r = r.header("x-mock-usage", usage);
            }
            r
        };
        // `pause_turn` has no OpenAI word: the client gets bad_upstream_response.
        let r = paused("read", Some("40,90")).send(gw.addr);
        assert_eq!(r.status, if hold { 502 } else { 200 }, "{}", r.text());
        assert_eq!(r.error_code(), "bad_upstream_response", "{}", r.text());
        // Without usage the reservation stands; a stream refused midway is the same.
        let r = paused("unread", None).send(gw.addr);
        assert_eq!(r.error_code(), "bad_upstream_response", "{}", r.text());
        thread::sleep(Duration::from_millis(100));
        let next = |consumer: &str| {
            Request::new("POST", "/v1/chat/completions")
                .header("content-type", "application/json")
                .header("x-portico-consumer", consumer)
                .header("x-mock-usage", "1,1")
                .body(body.clone())
                .send(gw.addr)
        };
        assert_eq!(
            remaining_tokens(&next("read")),
            100_000 - 130 - estimate,
            "hold={hold}: the backend's usage was charged"
        );
        assert_eq!(
            remaining_tokens(&next("unread")),
            100_000 - 2 * estimate,
            "hold={hold}: unknown usage keeps the reservation"
        );
        gw.assert_no_wasm_panic();
    }
}

#[test]
fn a_backend_that_requires_max_tokens_is_asked_for_what_the_quota_reserved() {
    let body = json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let estimate = 100 + (body.len() as u64).div_ceil(4);
    // Room for ten and a half reservations, as in the issue's report (10,430 for ten).
    let budget = 10 * estimate + estimate / 2;
    let (gw, _up) = translating_gateway(budget);
    let request = Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-portico-consumer", "ten")
        // The mock uses every output token it was allowed: what it was asked for shows.
        .header("x-mock-usage", "10,max")
        .body(body);
    for i in 0..10 {
        let r = request.send(gw.addr);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(
            r.json()["usage"]["completion_tokens"],
            100,
            "the backend was asked for 100"
        );
    }
    // Ten answers of 110 tokens: 1,100 charged, within the budget, never 40,000.
    thread::sleep(Duration::from_millis(100));
    let r = request.send(gw.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(remaining_tokens(&r), budget - 10 * 110 - estimate);
    // With max_tokens given, the client's value is what the backend gets.
    let own = Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-portico-consumer", "own")
        .header("x-mock-usage", "10,max")
        .body(
            json!({"model": "claude-test", "max_tokens": 42, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send(gw.addr);
    assert_eq!(own.json()["usage"]["completion_tokens"], 42);
    gw.assert_no_wasm_panic();
}

#[test]
fn the_shipped_access_log_and_metrics_count_a_lying_backend_within_the_bound() {
    let dir = std::env::temp_dir().join(format!("portico-ratelimit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("access.log");
    let _ = std::fs::remove_file(&log_path);
    let shipped = Shipped::start(Some(&log_path));
    let token = demo_env("PORTICO_DEMO_TOKEN");
    // A different prompt each time, so that the cache answers none of them.
    let body =
        |n: u32| json!({"model": "smart", "messages": [{"role": "user", "content": format!("hi {n}")}]}).to_string();
    let send = |n: u32, usage: &str| {
        Request::new("POST", "/v1/chat/completions")
            .bearer(&token)
            .header("content-type", "application/json")
            .header("x-mock-usage", usage)
            .body(body(n))
            .send(shipped.gw.addr)
    };
    // No max_tokens: the demo backend is asked for the quota's default, 1024.
    let honest = send(1, "3,max");
    assert_eq!(honest.status, 200, "{}", honest.text());
    assert_eq!(honest.json()["usage"]["completion_tokens"], 1024);
    let estimate = 1024 + (body(2).len() as u64).div_ceil(4);
    let lie = send(2, &format!("3,{}", u64::MAX));
    assert_eq!(lie.status, 200, "{}", lie.text());
    let next = send(3, "3,4");
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("retry-after"), None);
    // Envoy flushes access log files every 10 s by default: wait past one flush.
    let mut lines: Vec<Value> = Vec::new();
    let logged = eventually(Duration::from_secs(15), || {
        lines = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        lines.len() >= 3
    });
    assert!(logged, "access log lines: {lines:?}");
    let tokens = |line: &Value, field: &str| -> u64 { line[field].as_str().unwrap().parse().unwrap() };
    assert_eq!(tokens(&lines[0], "completion_tokens"), 1024);
    assert_eq!(tokens(&lines[1], "prompt_tokens"), 3);
    assert_eq!(
        tokens(&lines[1], "completion_tokens"),
        4 * estimate - 3,
        "cut to the bound"
    );
    let completion = shipped.gw.metric(
        "portico_tokens_total",
        &[("model", "claude-sonnet-demo"), ("kind", "completion")],
    );
    assert_eq!(completion, 1024 + 4 * estimate - 3 + 4);
    shipped.gw.assert_no_wasm_panic();
    let _ = std::fs::remove_dir_all(&dir);
}

/// rate-limit, header-routing and body-transform with an OpenAI-format backend (`gpt-test`)
/// and an Anthropic-format one (`claude-test`); the quota reserves 100 output tokens when a
/// request names none.
fn two_backend_gateway() -> (Gateway, Upstream, Upstream) {
    let openai = Upstream::start_named("127.0.0.1:0", "openai").unwrap();
    let anthropic = Upstream::start_named("127.0.0.1:0", "anthropic").unwrap();
    let aliases = json!({"claude-test": {"backend": "anthropic"}, "gpt-test": {"backend": "openai"}});
    let routing = json!({
        "backends": [
            {"name": "openai", "cluster": "openai", "format": "openai", "credential": {"bearer": "k"}},
            {"name": "anthropic", "cluster": "anthropic", "format": "anthropic", "credential": {"api_key": "k"}}
        ],
        "routes": [
            {"name": "chat", "match": {"path": "/v1/chat/completions"}, "models": {"aliases": aliases}},
            {"name": "messages", "match": {"path": "/v1/messages"}, "models": {"aliases": aliases}}
        ]
    });
    let transform = json!({"routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]});
    let limits = json!({"token_quotas": [{"name": "llm", "key": ["consumer"], "default_max_tokens": 100,
        "budgets": [{"tokens": 1_000_000, "period_seconds": YEAR}]}]});
    let envoy = EnvoyConfig::new(openai.addr)
        .route_by_header("x-portico-cluster")
        .cluster("openai", openai.addr)
        .cluster("anthropic", anthropic.addr)
        .native(json_to_metadata(&[
            "model",
            "max_tokens",
            "max_completion_tokens",
            "stream",
        ]))
        .wasm("rate-limit", &limits)
        .wasm("header-routing", &routing)
        .wasm("body-transform", &transform);
    (Gateway::start(&envoy), openai, anthropic)
}

#[test]
fn every_backend_is_asked_for_no_more_output_than_the_quota_reserved() {
    let (gw, _openai, _anthropic) = two_backend_gateway();
    // The mock uses every output token it was allowed (`max`): what it was asked for shows in
    // the usage the client gets.
    let send = |path: &str, body: Value| {
        Request::new("POST", path)
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("x-portico-consumer", "capped")
            .header("x-mock-usage", "10,max")
            .body(body.to_string())
            .send(gw.addr)
    };
    let hi = json!([{"role": "user", "content": "hi"}]);
    // An OpenAI client of an OpenAI backend, untranslated, without a max: capped at 100.
    let r = send("/v1/chat/completions", json!({"model": "gpt-test", "messages": hi}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 100, "{}", r.text());
    // An Anthropic client of an OpenAI backend without max_tokens: the same cap, translated.
    let r = send("/v1/messages", json!({"model": "gpt-test", "messages": hi}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["output_tokens"], 100, "{}", r.text());
    // An OpenAI client of an Anthropic backend: as before, max_tokens is the reservation.
    let r = send("/v1/chat/completions", json!({"model": "claude-test", "messages": hi}));
    assert_eq!(r.json()["usage"]["completion_tokens"], 100, "{}", r.text());
    // A client's own max is what the backend gets, either field.
    for (field, path, usage) in [
        ("max_tokens", "/v1/chat/completions", "completion_tokens"),
        ("max_completion_tokens", "/v1/chat/completions", "completion_tokens"),
        ("max_tokens", "/v1/messages", "output_tokens"),
    ] {
        let mut body = json!({"model": "gpt-test", "messages": hi});
        body[field] = json!(42);
        let r = send(path, body);
        assert_eq!(r.json()["usage"][usage], 42, "{field} on {path}: {}", r.text());
    }
    gw.assert_no_wasm_panic();
}

#[test]
fn float_max_tokens_are_reserved_as_the_integers_they_mean_and_fractions_refused() {
    let (gw, up) = quota_gateway(1_000_000, YEAR);
    for (i, written) in ["1024.0", "5e4", "5.0e4"].into_iter().enumerate() {
        let body = format!(r#"{{"model":"m","max_tokens":{written},"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let consumer = format!("float{i}");
        // The strict mock may refuse the float; the reservation shows in the headers anyway.
        let r = post(&consumer, &body).send(gw.addr);
        let want: f64 = written.parse().unwrap();
        let reserved = 1_000_000 - remaining_tokens(&r);
        assert_eq!(
            reserved,
            want as u64 + (body.len() as u64).div_ceil(4),
            "{written}: reserved {reserved}, not the default 100"
        );
    }
    let before = up.requests();
    for (written, says) in [("2.5", "must be an integer"), ("-5", "must be a non-negative integer")] {
        let body = format!(r#"{{"model":"m","max_tokens":{written},"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let r = post("fraction", &body).send(gw.addr);
        assert_eq!(r.status, 400, "{written}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_field", "{written}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("`max_tokens` ") && message.contains(says),
            "{message}"
        );
    }
    assert_eq!(up.requests(), before, "refused before the upstream");
    gw.assert_no_wasm_panic();
}

#[test]
fn a_compressed_body_on_a_quota_route_is_a_415() {
    let (gw, up) = quota_gateway(100_000, YEAR);
    // The bytes do not matter: a compressed body's size says nothing about its tokens.
    let r = Request::new("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("x-portico-consumer", "zipped")
        .body("\u{1f}\u{8b} not really gzip")
        .send(gw.addr);
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(r.error_code(), "unsupported_content_encoding");
    assert_eq!(r.header("accept-encoding"), Some("identity"));
    assert_eq!(up.requests(), 0);
    gw.assert_no_wasm_panic();
}

#[test]
fn usage_warnings_cannot_flood_the_log() {
    let (gw, _up) = quota_gateway(10_000_000, YEAR);
    let started = std::time::Instant::now();
    let mut conn = Connection::open(gw.addr).unwrap();
    let sent = 300;
    for _ in 0..sent {
        // Each answer claims 2^64-1 completion tokens: charged at the bound, warned about.
        let request = chat("/v1/chat/completions", "liar", Some((3, u64::MAX)), false);
        let r = conn.send(&request).unwrap_or_else(|_| {
            conn = Connection::open(gw.addr).unwrap();
            conn.send(&request).unwrap()
        });
        assert_eq!(r.status, 200);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let log = gw.log();
    let lines = log.lines().filter(|l| l.contains("beyond belief")).count() as u64;
    // Ten lines per second per worker (two workers), plus the window the run ended in.
    assert!(lines <= 2 * 10 * (seconds + 1), "{lines} lines in {seconds} s");
    assert!(lines >= 1, "still logged");
    gw.assert_no_wasm_panic();
}
