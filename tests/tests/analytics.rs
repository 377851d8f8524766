//! Analytics of the shipped gateway (envoy/gateway.yaml): after a scripted mix of traffic,
//! `/stats/prometheus` has the labelled series with the expected counts, and every access log
//! line is JSON with the Portico fields and no credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;
use std::time::Duration;

use portico_tests::demo::{demo_env, Shipped};
use portico_tests::envoy::{eventually, sum_metric};
use portico_tests::http::{get, Request, Response};
use serde_json::{json, Value};

fn chat(credential: (&str, &str), model: &str, stream: bool) -> Request {
    let mut body = json!({"model": model, "max_tokens": 50, "temperature": 0,
                          "messages": [{"role": "user", "content": "Count to three."}]});
    if stream {
        body["stream"] = json!(true);
    }
    Request::new("POST", "/v1/chat/completions?trace=1")
        .header("content-type", "application/json")
        .header(credential.0, credential.1)
        .body(body.to_string())
}

#[test]
fn a_scripted_mix_of_traffic_shows_in_prometheus_and_the_json_access_log() {
    let dir = std::env::temp_dir().join(format!("portico-analytics-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("access.log");
    let _ = fs::remove_file(&log_path);
    let shipped = Shipped::start(Some(&log_path));
    let addr = shipped.gw.addr;
    let key = demo_env("PORTICO_DEMO_KEY");
    let token = demo_env("PORTICO_DEMO_TOKEN");
    let bearer = format!("Bearer {token}");
    let free = ("x-api-key", key.as_str());
    let pro = ("authorization", bearer.as_str());

    let expect = |r: Response, status: u16, what: &str| -> Response {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        r
    };
    // 1 public request, 2 refused by auth.
    expect(get("/public/hello").send(addr), 200, "public");
    for _ in 0..2 {
        expect(get("/ab").send(addr), 401, "no credential");
    }
    // The free consumer (5 requests a minute): a chat miss, its hit, a model its plan does
    // not allow, two A/B requests, and one over the limit.
    let miss = expect(chat(free, "fast", false).send(addr), 200, "first chat");
    assert_eq!(miss.header("x-portico-cache"), Some("MISS"));
    let hit = expect(chat(free, "fast", false).send(addr), 200, "repeated chat");
    assert_eq!(hit.header("x-portico-cache"), Some("HIT"));
    // The stored Anthropic answer is translated for this OpenAI client as a live one was.
    assert_eq!(hit.json()["object"], "chat.completion", "{}", hit.text());
    assert_eq!(hit.json()["choices"], miss.json()["choices"]);
    assert_eq!(hit.json()["usage"], miss.json()["usage"]);
    expect(chat(free, "smart", false).send(addr), 403, "model not on the free plan");
    let variant = expect(get("/ab").header(free.0, free.1).send(addr), 200, "ab")
        .header("x-portico-variant")
        .unwrap()
        .to_owned();
    expect(get("/ab").header(free.0, free.1).send(addr), 200, "ab again");
    expect(get("/ab").header(free.0, free.1).send(addr), 429, "over the limit");
    // The pro consumer streams.
    let stream = expect(chat(pro, "smart", true).send(addr), 200, "stream");
    assert!(stream.text().contains("data: "), "{}", stream.text());
    let total = 10;

    // Prometheus, after the histograms' stats flush (5 s by default).
    let mut stats = String::new();
    let flushed = eventually(Duration::from_secs(15), || {
        stats = shipped.gw.prometheus();
        sum_metric(&stats, "portico_request_duration_ms_count", &[]) == total
            && sum_metric(&stats, "portico_time_to_first_token_ms_count", &[]) == 1
    });
    assert!(flushed, "histograms never showed every request:\n{stats}");
    let requests = |labels: &[(&str, &str)]| sum_metric(&stats, "portico_requests_total", labels);
    assert_eq!(requests(&[]), total, "{stats}");
    let haiku = [
        ("route", "chat"),
        ("tier", "free"),
        ("model", "claude-haiku-demo"),
        ("backend", "anthropic"),
        ("variant", "none"),
        ("outcome", "success"),
    ];
    assert_eq!(requests(&haiku), 2, "{stats}");
    assert_eq!(
        requests(&[("route", "chat"), ("tier", "free"), ("outcome", "denied")]),
        1
    );
    assert_eq!(
        requests(&[("route", "default"), ("tier", "none"), ("outcome", "success")]),
        1
    );
    assert_eq!(requests(&[("route", "ab"), ("tier", "none"), ("outcome", "denied")]), 2);
    assert_eq!(
        requests(&[
            ("route", "ab"),
            ("tier", "free"),
            ("variant", &variant),
            ("outcome", "success")
        ]),
        2
    );
    assert_eq!(
        requests(&[("route", "ab"), ("tier", "free"), ("outcome", "rate_limited")]),
        1
    );
    assert_eq!(
        requests(&[
            ("route", "chat"),
            ("tier", "pro"),
            ("model", "claude-sonnet-demo"),
            ("outcome", "success")
        ]),
        1
    );
    let metric = |name: &str, labels: &[(&str, &str)]| sum_metric(&stats, name, labels);
    // Tokens: the free chat reached the model once (its hit spent nothing); prompt and
    // completion are separate series.
    let free_tokens = [("tier", "free"), ("model", "claude-haiku-demo")];
    assert_eq!(
        metric(
            "portico_tokens_total",
            &[free_tokens[0], free_tokens[1], ("kind", "completion")]
        ),
        2
    );
    assert!(
        metric(
            "portico_tokens_total",
            &[free_tokens[0], free_tokens[1], ("kind", "prompt")]
        ) > 0
    );
    assert_eq!(
        metric(
            "portico_tokens_total",
            &[("tier", "pro"), ("model", "claude-sonnet-demo"), ("kind", "completion")]
        ),
        2
    );
    assert_eq!(
        metric(
            "portico_cache_requests_total",
            &[("route", "models"), ("status", "hit")]
        ),
        1
    );
    assert_eq!(
        metric(
            "portico_cache_requests_total",
            &[("route", "models"), ("status", "miss")]
        ),
        1
    );
    assert_eq!(
        metric(
            "portico_cache_requests_total",
            &[("route", "models"), ("status", "bypass")]
        ),
        1
    );
    assert_eq!(
        metric(
            "portico_auth_requests_total",
            &[("outcome", "denied"), ("reason", "missing_credentials")]
        ),
        2
    );
    assert_eq!(
        metric(
            "portico_auth_requests_total",
            &[("outcome", "allowed"), ("tier", "free")]
        ),
        6
    );
    assert_eq!(
        metric(
            "portico_ratelimit_requests_total",
            &[("rule", "per_consumer"), ("outcome", "limited")]
        ),
        1
    );
    assert_eq!(
        metric(
            "portico_transform_requests_total",
            &[("kind", "openai_to_anthropic"), ("outcome", "ok")]
        ),
        3
    );
    assert_eq!(
        metric(
            "portico_time_to_first_token_ms_count",
            &[("route", "chat"), ("model", "claude-sonnet-demo")]
        ),
        1
    );
    // Per-consumer series are off unless configured.
    assert!(!stats.contains("portico_consumer_"), "{stats}");

    // The access log: a JSON line per request, with what the filters set. Envoy flushes access
    // log files every 10 s by default (`--file-flush-interval-msec`), so wait past one flush.
    let mut lines: Vec<Value> = Vec::new();
    let logged = eventually(Duration::from_secs(15), || {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        lines.len() == usize::try_from(total).unwrap()
    });
    assert!(logged, "{} access log lines: {lines:?}", lines.len());
    let text = fs::read_to_string(&log_path).unwrap();
    for secret in [key.as_str(), token.as_str(), "Bearer", "demo-provider-key", "trace=1"] {
        assert!(!text.contains(secret), "the access log holds {secret:?}:\n{text}");
    }
    let chat_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["route"] == "chat" && l["status"] == 200 && l["tier"] == "free")
        .collect();
    assert_eq!(chat_lines.len(), 2, "{lines:?}");
    for l in &chat_lines {
        assert_eq!(l["consumer"], "apikey:demo");
        assert_eq!(l["backend"], "anthropic");
        assert_eq!(l["model"], "claude-haiku-demo");
        assert_eq!(l["variant"], Value::Null);
        // The path sent upstream (translated for the Anthropic backend), without the query.
        assert_eq!(l["path"], "/v1/messages");
        assert_eq!(l["method"], "POST");
    }
    let miss_line = chat_lines.iter().find(|l| l["cache"] == "MISS").expect("a MISS line");
    assert_eq!(miss_line["completion_tokens"], "2");
    assert!(miss_line["prompt_tokens"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    let hit_line = chat_lines.iter().find(|l| l["cache"] == "HIT").expect("a HIT line");
    assert_eq!(hit_line["completion_tokens"], Value::Null, "a hit spent no tokens");
    let ab = lines
        .iter()
        .find(|l| l["route"] == "ab" && l["status"] == 200)
        .expect("an ab line");
    assert_eq!(ab["variant"], variant.as_str());
    let refused: Vec<&Value> = lines.iter().filter(|l| l["status"] == 401).collect();
    assert_eq!(refused.len(), 2);
    for l in refused {
        assert_eq!(l["consumer"], Value::Null);
        assert_eq!(l["path"], "/ab");
    }
    let stream_line = lines.iter().find(|l| l["tier"] == "pro").expect("the stream's line");
    assert_eq!(stream_line["consumer"], "demo:demo-user");
    assert_eq!(stream_line["model"], "claude-sonnet-demo");
    assert_eq!(stream_line["cache"], "BYPASS");
    assert_eq!(stream_line["completion_tokens"], "2");
    shipped.gw.assert_no_wasm_panic();
    drop(shipped);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn per_consumer_series_appear_only_when_configured() {
    let shipped = Shipped::start_edited(None, |config| {
        config
            .replacen(r#""backends": ["#, r#""per_consumer_metrics": true, "backends": ["#, 1)
            .replacen(r#""rules": ["#, r#""per_consumer_metrics": true, "rules": ["#, 1)
    });
    let addr = shipped.gw.addr;
    let key = demo_env("PORTICO_DEMO_KEY");
    let token = demo_env("PORTICO_DEMO_TOKEN");
    for _ in 0..2 {
        assert_eq!(get("/hello").header("x-api-key", &key).send(addr).status, 200);
    }
    let r = chat(("authorization", &format!("Bearer {token}")), "smart", false).send(addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get("/hello").send(addr).status, 401);
    let gw = &shipped.gw;
    assert!(eventually(Duration::from_secs(3), || {
        gw.metric(
            "portico_consumer_requests_total",
            &[("consumer", "apikey:demo"), ("outcome", "success")],
        ) == 2
            && gw.metric("portico_consumer_requests_total", &[("consumer", "demo:demo-user")]) == 1
            && gw.metric(
                "portico_consumer_requests_total",
                &[("consumer", "anonymous"), ("outcome", "denied")],
            ) == 1
            && gw.metric(
                "portico_consumer_tokens_total",
                &[("consumer", "demo:demo-user"), ("kind", "completion")],
            ) == 2
    }));
}
