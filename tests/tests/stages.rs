//! `portico-stages` through a real Envoy: filters run as the stages of one plugin entry answer
//! as the same filters do as separate entries of the chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portico_tests::envoy::{EnvoyConfig, Gateway, Plugin};
use portico_tests::http::{get, Response};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

/// sha256("k-acme").
const KEY_DIGEST: &str = "0b131655124822cb1cf254042086d2bf26a4f1c6cd82727aab583e915346aca3";

/// Auth by API key, two requests an hour per consumer, routing by a header.
fn filters() -> Vec<(&'static str, Value)> {
    vec![
        (
            "auth",
            json!({"api_keys": {
                "sources": [{"type": "header", "name": "x-api-key"}],
                "consumers": [{"name": "acme", "tier": "pro", "keys": [{"sha256": KEY_DIGEST}]}]
            }}),
        ),
        (
            "rate-limit",
            json!({"rules": [{"name": "per_consumer", "key": ["consumer"],
                              "limit": {"requests": 2, "period_seconds": 3600}}]}),
        ),
        (
            "header-routing",
            json!({
                "backends": [{"name": "a", "cluster": "a"}, {"name": "b", "cluster": "b"}],
                "routes": [
                    {"name": "beta", "match": {"path": "/{*rest}", "headers": [{"name": "x-beta", "exact": "1"}]}, "backend": "b"},
                    {"name": "all", "match": {"path": "/{*rest}"}, "backend": "a"}
                ]
            }),
        ),
    ]
}

/// The stages entry of `filters`, in order.
fn stages(filters: &[(&str, Value)]) -> Plugin {
    let stages: Vec<Value> = filters
        .iter()
        .map(|(name, config)| json!({"filter": format!("portico-{name}"), "config": config}))
        .collect();
    Plugin::portico("portico-stages", json!({ "stages": stages }))
}

fn gateway(as_stages: bool, upstreams: &[Upstream; 2]) -> Gateway {
    let [a, b] = upstreams;
    let config = EnvoyConfig::new(a.addr)
        .cluster("a", a.addr)
        .cluster("b", b.addr)
        .route_by_header("x-portico-cluster");
    let config = if as_stages {
        config.plugin(&stages(&filters()))
    } else {
        filters().iter().fold(config, |c, (name, config)| c.wasm(name, config))
    };
    Gateway::start(&config)
}

/// What a client and the upstream saw of one request.
fn seen(r: &Response) -> Value {
    let served_by = if r.status == 200 {
        r.json()["upstream"].clone()
    } else {
        Value::Null
    };
    let portico_headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-portico") || n.starts_with("x-ratelimit") || n == "retry-after")
        .cloned()
        .collect();
    json!({
        "status": r.status,
        "code": if r.status == 200 { String::new() } else { r.error_code() },
        "served_by": served_by,
        "consumer": r.upstream_header("x-portico-consumer"),
        "headers": portico_headers,
    })
}

#[test]
fn auth_rate_limit_and_routing_as_stages_answer_as_separate_entries() {
    let mut outcomes = Vec::new();
    for as_stages in [false, true] {
        let upstreams = [
            Upstream::start_named("127.0.0.1:0", "a").unwrap(),
            Upstream::start_named("127.0.0.1:0", "b").unwrap(),
        ];
        let gw = gateway(as_stages, &upstreams);
        let keyed = |path: &str| get(path).header("x-api-key", "k-acme");
        let answers = [
            get("/x").send(gw.addr),
            keyed("/x").send(gw.addr),
            keyed("/x").header("x-beta", "1").send(gw.addr),
            keyed("/x").send(gw.addr),
        ];
        let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [401, 200, 200, 429], "stages: {as_stages}");
        assert_eq!(answers[0].error_code(), "missing_credentials");
        assert_eq!(answers[1].json()["upstream"], "a");
        assert_eq!(answers[2].json()["upstream"], "b", "routed by the header");
        assert_eq!(answers[3].error_code(), "rate_limited", "the consumer's own bucket");
        assert_eq!(upstreams[0].requests() + upstreams[1].requests(), 2);
        gw.assert_no_wasm_panic();
        outcomes.push(answers.iter().map(seen).collect::<Vec<_>>());
    }
    assert_eq!(outcomes[1], outcomes[0], "stages, then separate entries");
}

/// A local reply goes back through the filter that sent it and those before it, and only
/// those, whether they are entries or stages.
#[test]
fn a_local_reply_passes_the_same_filters_as_with_separate_entries() {
    let echo = [
        ("echo", json!({"tag": "a"})),
        ("echo-twin", json!({"tag": "b", "refuse_header": "x-no"})),
        ("echo", json!({"tag": "c"})),
    ];
    let mut outcomes = Vec::new();
    for as_stages in [false, true] {
        let upstream = Upstream::start("127.0.0.1:0").unwrap();
        let config = EnvoyConfig::new(upstream.addr);
        let config = if as_stages {
            config.plugin(&stages(&echo))
        } else {
            echo.iter().enumerate().fold(config, |c, (i, (name, config))| {
                c.plugin(&Plugin {
                    name: format!("echo-{i}"),
                    ..Plugin::portico(&format!("portico-{name}"), config.clone())
                })
            })
        };
        let gw = Gateway::start(&config);
        let refused = get("/").header("x-no", "1").send(gw.addr);
        assert_eq!(refused.status, 403, "{}", refused.text());
        let passed = get("/").send(gw.addr);
        assert_eq!(passed.status, 200, "{}", passed.text());
        gw.assert_no_wasm_panic();
        let tags = |r: &Response| -> Vec<String> {
            ["a", "b", "c"]
                .iter()
                .filter(|t| r.header(&format!("x-portico-echo-{t}")).is_some())
                .map(|t| (*t).to_owned())
                .collect()
        };
        outcomes.push((tags(&refused), tags(&passed)));
    }
    assert_eq!(
        outcomes[0],
        (
            vec!["a".to_owned(), "b".to_owned()],
            vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]
        )
    );
    assert_eq!(outcomes[1], outcomes[0], "stages, then separate entries");
}
