//! Configurations that `envoy --mode validate` and the old checks accepted and that broke at
//! runtime: the real Envoy now refuses each at start (exit status 1), and its log names every
//! mistake by JSON path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portico_tests::envoy::{EnvoyConfig, Gateway};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

/// Starts Envoy with `filter` configured as `config`, asserts it exits with status 1, and
/// that its log holds `invalid configuration: <each expected line>`.
fn assert_refused(filter: &str, config: &Value, expected: &[&str]) {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let failure = Gateway::try_start(&EnvoyConfig::new(upstream.addr).wasm(filter, config))
        .expect_err("Envoy started with a configuration that breaks at runtime");
    assert_eq!(
        failure.status.and_then(|s| s.code()),
        Some(1),
        "Envoy should exit with status 1:\n{}",
        failure.log
    );
    for line in expected {
        let want = format!("invalid configuration: {line}");
        assert!(failure.log.contains(&want), "missing {want:?} in:\n{}", failure.log);
    }
}

#[test]
fn a_response_header_value_that_would_split_the_response_is_refused_at_start() {
    // Before: Envoy started and wrote `x-a: a` CR LF `b` raw to every client on the route.
    assert_refused(
        "body-transform",
        &json!({"routes": [{"response": {"headers": {"set": {"x-a": "a\r\nb"}}}},
                           {"match": {"path": "/x"}, "request": {"headers": {"remove": [":path"], "add": {"x y": "1"}}}}]}),
        &[
            r#"$.routes[0].response.headers.set["x-a"]: header value contains '\r', a control character HTTP does not allow in a value (CR and LF would split the message)"#,
            r#"$.routes[1].request.headers.remove[0]: ":path" is a pseudo-header, which header operations cannot change: change the path with header-routing's `rewrite` or `path_prefix`"#,
            r#"$.routes[1].request.headers.add["x y"]: header name "x y" contains ' ', which HTTP does not allow in a name"#,
        ],
    );
}

#[test]
fn header_routing_configs_that_broke_at_runtime_are_refused_at_start() {
    assert_refused(
        "header-routing",
        &json!({
            "backends": [{"name": "a", "cluster": "a", "host_rewrite": "a b",
                          "headers": {"add": {"x-env": "a\r\nx-admin: 1"}, "remove": ["x-portico-consumer"]}}],
            "flags": [{"name": "f", "consumers": ["demo"]}],
            "routes": [
                {"name": "users", "match": {"path": "/users/{id}"}, "rewrite": "/v1/people/{user}", "backend": "a"},
                {"name": "users", "match": {"path": "/ab"}, "split": {"variants": [
                    {"name": "x", "backend": "a", "weight": 9_007_199_254_740_993_u64}, {"name": "y", "backend": "a", "weight": 5}]}}
            ]
        }),
        &[
            "$.backends[0].host_rewrite: contains ' ': give a host with an optional port",
            r#"$.backends[0].headers.add["x-env"]: header value contains '\r'"#,
            r#"$.backends[0].headers.remove[0]: "x-portico-consumer" is Portico's own header"#,
            r#"$.flags[0].consumers[0]: "demo" is not a consumer id: write `<namespace>:<name>`, such as `apikey:demo` (flags compare it with x-portico-consumer as auth sets it)"#,
            r#"$.routes[0].rewrite: {user} is not a parameter of the path pattern "/users/{id}" (it has: {id})"#,
            r#"$.routes[1].name: duplicate route "users""#,
            "$.routes[1].split.variants[0].weight: must be between 0 and 1000000",
        ],
    );
}

#[test]
fn absurd_limits_and_cache_settings_are_refused_at_start() {
    assert_refused(
        "rate-limit",
        &json!({"rules": [{"name": "r", "limit": {"requests": 10, "period_seconds": 31_536_001, "burst": 0}}],
                "token_quotas": [{"name": "q", "default_max_tokens": 0, "budgets": [{"tokens": 0, "period_seconds": 60}]}]}),
        &[
            "$.rules[0].limit.period_seconds: must be between 1 and 31536000",
            "$.token_quotas[0].budgets[0].tokens: must be between 1 and 60000000",
            "$.token_quotas[0].default_max_tokens: must be between 1 and 1000000",
        ],
    );
    assert_refused(
        "cache",
        &json!({"max_bytes": 0, "max_body_bytes": 0,
                "routes": [{"name": "chat", "ttl_seconds": 31_536_001}, {"name": "chat", "vary": ["openai beta"]}]}),
        &[
            "$.max_bytes: must be between 1 and 1073741824",
            "$.max_body_bytes: must be between 1 and 67108864",
            "$.routes[0].ttl_seconds: must be between 1 and 31536000",
            r#"$.routes[1].name: duplicate route name "chat""#,
            r#"$.routes[1].vary[0]: header name "openai beta" contains ' '"#,
        ],
    );
}

#[test]
fn a_path_pattern_with_too_many_parameters_is_refused_at_start_not_trapped_on() {
    // Before: matchit panicked on the 26th parameter while the filter read its configuration,
    // so the VM trapped at load instead of naming the bad field (found by fuzzing).
    let pattern: String = (0..26).map(|i| format!("/{{p{i}}}")).collect();
    for (filter, rule) in [("auth", json!({"auth": "none"})), ("body-transform", json!({}))] {
        let mut rule = rule;
        rule["match"] = json!({"path": pattern});
        assert_refused(
            filter,
            &json!({"routes": [rule]}),
            &[&format!(
                "$.routes[0].match.path: invalid path pattern {pattern:?}: more than 16 `{{` (a pattern holds at most 16 parameters)"
            )],
        );
    }
}

#[test]
fn a_repeated_key_is_refused_at_start_with_its_path() {
    // Before: serde_json kept the second `auth`, so this public-looking rule required a JWT
    // (or, written the other way round, a protected-looking one was public).
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let text = r#"{"api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": "507636717dd889c4aca6e55fac6880c0e096f0160c1c940da0564f39301c6537"}]}]},
                   "routes": [{"match": {"path": "/a"}, "auth": "none", "auth": "api_key"}]}"#;
    let mut config = EnvoyConfig::new(upstream.addr).wasm("auth", &json!({})).render();
    let filter = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0];
    filter["typed_config"]["config"]["configuration"]["value"] = json!(text);
    let failure = Gateway::try_start_text(&config.to_string()).expect_err("Envoy started");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1), "{}", failure.log);
    let want = "invalid configuration: $.routes[0].auth: repeated key: each key of an object may appear once";
    assert!(failure.log.contains(want), "missing {want:?} in:\n{}", failure.log);
}

#[test]
fn identity_headers_never_match_rules_and_shadowed_routes_are_refused_at_start() {
    assert_refused(
        "header-routing",
        &json!({
            "cluster_header": "x-portico-consumer",
            "backends": [{"name": "a", "cluster": "a", "headers": {"add": {"x-forwarded-for": "10.0.0.1"}}}],
            "routes": [
                {"name": "a", "match": {"path": "/a", "hosts": ["api.test:8443"]}, "split": {"by": {"cookie": "a b"},
                 "variants": [{"name": "x", "backend": "a", "weight": 1}]}},
                {"name": "b", "match": {"path": "/a", "hosts": ["api.test:8443"]}, "backend": "a"},
                {"name": "c", "match": {"path": "/admin;x=1"}, "backend": "a"}
            ]
        }),
        &[
            r#"$.cluster_header: "x-portico-consumer" carries the caller's identity between Portico's filters: choose another name"#,
            r#"$.backends[0].headers.add["x-forwarded-for"]: "x-forwarded-for" describes the client connection"#,
            r#"$.routes[0].match.hosts[0]: "api.test:8443" has a port"#,
            r#"$.routes[0].split.by.cookie: cookie name "a b" contains ' '"#,
            "$.routes[2].match.path: contains ';'",
        ],
    );
    assert_refused(
        "auth",
        &json!({
            "api_keys": {"sources": [{"type": "header", "name": "x-portico-tier"}],
                         "consumers": [{"name": "a", "keys": [{"sha256": "507636717dd889c4aca6e55fac6880c0e096f0160c1c940da0564f39301c6537"}]}]},
            "routes": [{"match": {"path": "/a", "hosts": ["*.example.com"]}, "auth": "none"}]
        }),
        &[
            r#"$.api_keys.sources[0].name: "x-portico-tier" is Portico's own header"#,
            r#"$.routes[0].match.hosts[0]: "*.example.com" is a wildcard, which host rules do not support"#,
        ],
    );
}
