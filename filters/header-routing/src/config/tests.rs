//! Unit tests of the configuration checks, compiled only under #[cfg(test)] (declared in
//! config.rs). Each refused case names the runtime failure it prevents.

use super::*;
use serde_json::{json, Value};

fn errors_of(v: &Value) -> String {
    match Config::from_value(v) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// A valid configuration to which each case adds one mistake.
fn base() -> Value {
    json!({
        "backends": [{"name": "a", "cluster": "ca"}, {"name": "b", "cluster": "cb"}],
        "routes": [{"name": "r", "match": {"path": "/users/{id}/{*rest}"}, "backend": "a"}]
    })
}

fn with(pointer: &str, value: Value) -> Value {
    let mut v = base();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = v.pointer_mut(parent).unwrap();
    match target {
        Value::Array(items) => items.push(value),
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        _ => panic!("{pointer}"),
    }
    v
}

#[test]
fn the_base_configuration_is_valid() {
    assert_eq!(errors_of(&base()), "");
}

#[test]
fn every_refused_configuration_names_its_path_and_reason() {
    let split = |variants: Value| json!({"name": "s", "split": {"variants": variants}});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "header name with a space (a request the upstream refuses)",
            with("/backends/0/headers", json!({"add": {"x env": "1"}})),
            "$.backends[0].headers.add[\"x env\"]: header name \"x env\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "header value with CR LF (request splitting)",
            with("/backends/0/headers", json!({"add": {"x-env": "a\r\nx-admin: 1"}})),
            "$.backends[0].headers.add[\"x-env\"]: header value contains '\\r', a control character HTTP does not allow in a value (CR and LF would split the message)",
        ),
        (
            "removing :path",
            with("/backends/0/headers", json!({"remove": [":path"]})),
            "$.backends[0].headers.remove[0]: \":path\" is a pseudo-header, which header operations cannot change: change the path with header-routing's `rewrite` or `path_prefix`",
        ),
        (
            "adding host",
            with("/backends/0/headers", json!({"add": {"Host": "evil"}})),
            "$.backends[0].headers.add.Host: \"host\" is the request's authority, which header operations cannot change: use header-routing's `host_rewrite`",
        ),
        (
            "removing transfer-encoding",
            with("/backends/0/headers", json!({"remove": ["transfer-encoding"]})),
            "$.backends[0].headers.remove[0]: \"transfer-encoding\" frames the message or manages the connection, which Envoy owns: header operations cannot change it",
        ),
        (
            "removing the consumer identity later filters key on",
            with("/backends/0/headers", json!({"remove": ["x-portico-consumer"]})),
            "$.backends[0].headers.remove[0]: \"x-portico-consumer\" is Portico's own header (x-portico- headers carry identity and routing between its filters): header operations cannot change it",
        ),
        (
            "credential header name with a space",
            with("/backends/0/credential", json!({"header": "api key", "value": "k"})),
            "$.backends[0].credential.header: header name \"api key\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "credential value with LF",
            with("/backends/0/credential", json!({"header": "x-key", "value": "k\nx"})),
            "$.backends[0].credential.value: header value contains '\\n', a control character HTTP does not allow in a value (CR and LF would split the message)",
        ),
        (
            "bearer token with NUL",
            with("/backends/0/credential", json!({"bearer": "t\u{0}"})),
            "$.backends[0].credential.bearer: header value contains '\\0', a control character HTTP does not allow in a value (CR and LF would split the message)",
        ),
        (
            "credential injected into :authority",
            with("/backends/0/credential", json!({"header": ":authority", "value": "x"})),
            "$.backends[0].credential.header: \":authority\" is the request's authority, which header operations cannot change: use header-routing's `host_rewrite`",
        ),
        (
            "host_rewrite with a space",
            with("/backends/0/host_rewrite", json!("a b")),
            "$.backends[0].host_rewrite: contains ' ': give a host with an optional port, such as api.example.com or 10.0.0.1:8443",
        ),
        (
            "host_rewrite with CR LF",
            with("/backends/0/host_rewrite", json!("a\r\nx: y")),
            "$.backends[0].host_rewrite: contains '\\r': give a host with an optional port, such as api.example.com or 10.0.0.1:8443",
        ),
        (
            "path_prefix with a query",
            with("/backends/0/path_prefix", json!("/v1?x=1")),
            "$.backends[0].path_prefix: contains '?': the client's query string is kept, so a path here cannot carry one",
        ),
        (
            "cluster_header that is a pseudo-header",
            with("/cluster_header", json!(":path")),
            "$.cluster_header: \":path\" is a pseudo-header, which header operations cannot change: change the path with header-routing's `rewrite` or `path_prefix`",
        ),
        (
            "match header name that can never be present",
            with("/routes/0/match/headers", json!([{"name": "x version", "exact": "2"}])),
            "$.routes[0].match.headers[0].name: header name \"x version\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "rewrite naming a parameter the pattern lacks (sent literally upstream)",
            with("/routes/0/rewrite", json!("/v1/people/{user}")),
            "$.routes[0].rewrite: {user} is not a parameter of the path pattern \"/users/{id}/{*rest}\" (it has: {id}, {rest})",
        ),
        (
            "rewrite on a route without a path pattern",
            json!({"backends": [{"name": "a", "cluster": "ca"}], "routes": [{"name": "r", "rewrite": "/v2", "backend": "a"}]}),
            "$.routes[0].rewrite: needs the route's `match.path` pattern: its {param} captures fill the template, and without one every request would go to the same path",
        ),
        (
            "rewrite with an unclosed brace",
            with("/routes/0/rewrite", json!("/v1/{id")),
            "$.routes[0].rewrite: has a '{' without its '}'",
        ),
        (
            "rewrite with a stray closing brace",
            with("/routes/0/rewrite", json!("/v1/id}")),
            "$.routes[0].rewrite: has a '}' without its '{'",
        ),
        (
            "rewrite with a space",
            with("/routes/0/rewrite", json!("/v1/{id} x")),
            "$.routes[0].rewrite: contains ' ', which a request path cannot hold as it is (percent-encode it)",
        ),
        (
            "duplicate route name (shared sticky seed and metric label)",
            with("/routes/1", json!({"name": "r", "backend": "b"})),
            "$.routes[1].name: duplicate route \"r\"",
        ),
        (
            "duplicate variant name",
            with(
                "/routes/1",
                split(json!([{"name": "v", "backend": "a", "weight": 1}, {"name": "v", "backend": "b", "weight": 1}])),
            ),
            "$.routes[1].split.variants[1].name: duplicate variant \"v\"",
        ),
        (
            "duplicate flag name",
            with("/flags", json!([{"name": "f", "percent": 1}, {"name": "f", "percent": 2}])),
            "$.flags[1].name: duplicate flag \"f\"",
        ),
        (
            "percent above 100",
            with("/flags", json!([{"name": "f", "percent": 101}])),
            "$.flags[0].percent: expected a number from 0 to 100",
        ),
        (
            "percent below the rollout's resolution",
            with("/flags", json!([{"name": "f", "percent": 0.001}])),
            "$.flags[0].percent: below the rollout's resolution of 0.01 percent: no caller would get the flag",
        ),
        (
            "weights that overflowed u64 (a panic, then a silently wrong split)",
            with(
                "/routes/1",
                split(json!([{"name": "x", "backend": "a", "weight": 9_007_199_254_740_993_u64}, {"name": "y", "backend": "b", "weight": 5}])),
            ),
            "$.routes[1].split.variants[0].weight: must be between 0 and 1000000",
        ),
        (
            "weight given as a float",
            with("/routes/1", split(json!([{"name": "x", "backend": "a", "weight": 1.5}]))),
            "$.routes[1].split.variants[0].weight: expected a non-negative integer; $.routes[1].split: variant weights must add up to more than 0",
        ),
        (
            "weight too small to get a bucket",
            with(
                "/routes/1",
                split(json!([{"name": "x", "backend": "a", "weight": 1}, {"name": "y", "backend": "b", "weight": 1_000_000}])),
            ),
            "$.routes[1].split.variants[0].weight: 1 of 1000001 is below the split's resolution of 1/10000: no caller would get this variant (weight 0 turns a variant off on purpose)",
        ),
        (
            "split override header that can never be present",
            with(
                "/routes/1",
                json!({"name": "s", "split": {"override_header": "x variant", "variants": [{"name": "x", "backend": "a", "weight": 1}]}}),
            ),
            "$.routes[1].split.override_header: header name \"x variant\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "sticky header that can never be present",
            with(
                "/routes/1",
                json!({"name": "s", "split": {"by": {"header": "x:user"}, "variants": [{"name": "x", "backend": "a", "weight": 1}]}}),
            ),
            "$.routes[1].split.by.header: header name \"x:user\" contains ':', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "max_body_bytes, which Envoy's buffer limit made unreachable",
            with("/max_body_bytes", json!(8_388_608)),
            "$.max_body_bytes: no longer supported: the request body limit is Envoy's buffer limit: raise it with `request_body_buffer_limit` on the Envoy route or virtual host, lower it with the listener's `per_connection_buffer_limit_bytes` (larger bodies get 413 `body_too_large`)",
        ),
        (
            "a refusal log level that does not exist",
            with("/refusal_log", json!({"level": "verbose"})),
            "$.refusal_log.level: unknown value \"verbose\", expected one of: info, debug, off",
        ),
    ];
    for (name, config, want) in cases {
        assert_eq!(errors_of(&config), want, "case: {name}");
    }
}

#[test]
fn every_error_of_one_configuration_is_reported_in_one_pass() {
    let err = errors_of(&json!({
        "max_body_bytes": 0,
        "backends": [{"name": "a", "cluster": "ca", "headers": {"add": {"x y": "1", "x-ok": "a\nb"}, "remove": [":status"]}}],
        "flags": [{"name": "f", "consumers": ["demo"]}, {"name": "f"}],
        "routes": [
            {"name": "r", "match": {"path": "/u/{id}"}, "rewrite": "/v/{uid}", "backend": "a"},
            {"name": "r", "split": {"variants": [{"name": "v", "backend": "a", "weight": 2_000_000}]}}
        ]
    }));
    let paths: Vec<&str> = err
        .split("; ")
        .filter_map(|e| e.split_once(": ").map(|(p, _)| p))
        .collect();
    assert_eq!(
        paths,
        vec![
            "$.max_body_bytes",
            "$.backends[0].headers.add[\"x y\"]",
            "$.backends[0].headers.add[\"x-ok\"]",
            "$.backends[0].headers.remove[0]",
            "$.flags[0].consumers[0]",
            "$.flags[1].name",
            "$.routes[0].rewrite",
            "$.routes[1].name",
            "$.routes[1].split.variants[0].weight",
            "$.routes[1].split",
        ],
        "{err}"
    );
}

#[test]
fn valid_header_operations_and_rewrites_are_kept_lower_cased() {
    let c = Config::from_value(&json!({
        "cluster_header": "X-Portico-Cluster",
        "backends": [{"name": "a", "cluster": "ca", "host_rewrite": "[::1]:8443", "path_prefix": "/api%20v1",
                      "headers": {"add": {"X-Env": "prod\tblue"}, "remove": ["X-Debug", "authorization"]},
                      "credential": {"header": "X-Key", "value": "k"}}],
        "flags": [{"name": "f", "consumers": ["apikey:demo", "idp:a:b"], "percent": 0.01}],
        "routes": [{"name": "r", "match": {"path": "/u/{id}/{*rest}"}, "rewrite": "/v/{id}/{*rest}/{rest}", "backend": "a"}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let b = &c.backends[0];
    assert_eq!(c.cluster_header, "x-portico-cluster");
    assert_eq!(b.add_headers, vec![("x-env".to_owned(), "prod\tblue".to_owned())]);
    assert_eq!(b.remove_headers, vec!["x-debug".to_owned(), "authorization".to_owned()]);
    assert_eq!(b.credential, Some(("x-key".to_owned(), "k".to_owned())));
    assert_eq!(
        c.flags[0].consumers,
        vec!["apikey:demo".to_owned(), "idp:a:b".to_owned()]
    );
    assert_eq!(c.flags[0].rollout_bp, 1);
}

#[test]
fn pattern_parameters_skip_escaped_braces() {
    assert_eq!(pattern_params("/a/{id}/{{x}}/{*rest}"), vec!["id", "rest"]);
    assert_eq!(pattern_params("/plain"), Vec::<&str>::new());
    assert_eq!(
        rewrite_problem("/{x}", Some("/a/{{x}}")).as_deref(),
        Some("{x} is not a parameter of the path pattern \"/a/{{x}}\" (it has: none)")
    );
}

// === Split bucket math ===

fn uppers(weights: &[u64]) -> Vec<u32> {
    let variants: Vec<Value> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"name": format!("v{i}"), "backend": "a", "weight": w}))
        .collect();
    let c = Config::from_value(&json!({
        "backends": [{"name": "a", "cluster": "ca"}],
        "routes": [{"name": "r", "split": {"variants": variants}}]
    }))
    .unwrap_or_else(|e| panic!("{weights:?}: {e}"));
    match &c.routes[0].action {
        Action::Target(Target::Split(s)) => s.variants.iter().map(|v| v.upper_bp).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn split_buckets_are_exact_at_the_weight_bounds() {
    assert_eq!(uppers(&[90, 10]), vec![9000, 10_000]);
    assert_eq!(uppers(&[1]), vec![10_000]);
    assert_eq!(uppers(&[MAX_WEIGHT]), vec![10_000]);
    // Both at the bound: an even split.
    assert_eq!(uppers(&[MAX_WEIGHT, MAX_WEIGHT]), vec![5000, 10_000]);
    // The smallest share that still gets a bucket: the last variant gets exactly one.
    assert_eq!(uppers(&[MAX_WEIGHT, 1]), vec![9999, 10_000]);
    assert_eq!(uppers(&[9999, 1]), vec![9999, 10_000]);
    // A variant turned off with weight 0 gets no bucket, wherever it sits.
    assert_eq!(uppers(&[0, 1, 0]), vec![0, 10_000, 10_000]);
    assert_eq!(uppers(&[1, 0]), vec![10_000, 10_000]);
    // Thirds: 3333, 3333, 3334 buckets.
    assert_eq!(uppers(&[1, 1, 1]), vec![3333, 6666, 10_000]);
    // Many variants at the bound: no overflow, every one served.
    let many = vec![MAX_WEIGHT; 100];
    let u = uppers(&many);
    assert_eq!(u.len(), 100);
    assert!(u.windows(2).all(|w| w[1] - w[0] == 100), "{u:?}");
}

#[test]
fn identity_credential_and_forwarding_headers_cannot_be_written_or_steer_routing() {
    let cases: Vec<(Value, &str)> = vec![
        (with("/cluster_header", json!("x-portico-consumer")), "$.cluster_header: \"x-portico-consumer\" carries the caller's identity between Portico's filters: choose another name (the default is x-portico-cluster)"),
        (with("/cluster_header", json!("authorization")), "$.cluster_header: \"authorization\" carries a credential: choose another name (the default is x-portico-cluster)"),
        (with("/cluster_header", json!("Cookie")), "$.cluster_header: \"cookie\" carries a credential"),
        (with("/cluster_header", json!("x-api-key")), "$.cluster_header: \"x-api-key\" carries a credential"),
        (with("/cluster_header", json!("host")), "$.cluster_header: \"host\" is the request's authority"),
        (with("/cluster_header", json!("x-forwarded-for")), "$.cluster_header: \"x-forwarded-for\" describes the client connection (forwarding headers)"),
        (with("/cluster_header", json!("forwarded")), "$.cluster_header: \"forwarded\" describes the client connection (forwarding headers)"),
        (with("/cluster_header", json!("x-envoy-original-path")), "$.cluster_header: \"x-envoy-original-path\" steers Envoy (x-envoy- headers)"),
        (with("/backends/0/headers", json!({"add": {"x-forwarded-for": "1.2.3.4"}})), "$.backends[0].headers.add[\"x-forwarded-for\"]: \"x-forwarded-for\" describes the client connection (forwarding headers)"),
        (with("/backends/0/headers", json!({"add": {"authorization": "Bearer x"}})), "$.backends[0].headers.add.authorization: \"authorization\" carries a credential: inject a backend's credential with `credential`"),
        (with("/backends/0/headers", json!({"add": {"x-envoy-retry-on": "5xx"}})), "$.backends[0].headers.add[\"x-envoy-retry-on\"]: \"x-envoy-retry-on\" steers Envoy (x-envoy- headers)"),
        (with("/backends/0/credential", json!({"header": "x-forwarded-host", "value": "k"})), "$.backends[0].credential.header: \"x-forwarded-host\" describes the client connection (forwarding headers)"),
    ];
    for (config, want) in cases {
        let got = errors_of(&config);
        assert!(got.starts_with(want), "want {want}\n got {got}");
    }
    for ok in [
        with("/cluster_header", json!("x-portico-cluster")),
        with("/cluster_header", json!("x-upstream-cluster")),
        with(
            "/backends/0/credential",
            json!({"header": "authorization", "value": "Basic x"}),
        ),
        with("/backends/0/credential", json!({"header": "x-api-key", "value": "k"})),
    ] {
        assert_eq!(errors_of(&ok), "", "{ok}");
    }
}

#[test]
fn flag_consumers_are_checked_as_consumer_ids_and_cookie_names_as_tokens() {
    let cases: Vec<(Value, &str)> = vec![
        (
            with("/flags", json!([{"name": "f", "consumers": ["apikey:demo", "demo", "Idp:x", "idp:"]}])),
            "$.flags[0].consumers[1]: \"demo\" is not a consumer id: write `<namespace>:<name>`, such as `apikey:demo` (flags compare it with x-portico-consumer as auth sets it); \
             $.flags[0].consumers[2]: \"Idp:x\": the namespace \"Idp\" must match [a-z0-9][a-z0-9_.-]* (at most 64 bytes) (flags compare it with x-portico-consumer as auth sets it); \
             $.flags[0].consumers[3]: \"idp:\": the name after the namespace is empty (flags compare it with x-portico-consumer as auth sets it)",
        ),
        (
            with("/routes/1", json!({"name": "s", "split": {"by": {"cookie": "a b"}, "variants": [{"name": "x", "backend": "a", "weight": 1}]}})),
            "$.routes[1].split.by.cookie: cookie name \"a b\" contains ' ': a cookie name is an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), so no request could carry it",
        ),
        (
            with("/flags", json!([{"name": "f", "percent": 5, "by": {"cookie": "sid=1"}}])),
            "$.flags[0].by.cookie: cookie name \"sid=1\" contains '='",
        ),
    ];
    for (config, want) in cases {
        let got = errors_of(&config);
        assert!(got.starts_with(want), "want {want}\n got {got}");
    }
}

#[test]
fn routes_that_can_never_be_chosen_and_contradictory_settings_are_refused() {
    let models = |tiers: Value| {
        json!({"name": "m", "match": {"path": "/v1/chat"}, "models": {
            "aliases": {"fast": {"backend": "a"}, "smart": {"backend": "b"}}, "tiers": tiers}})
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with("/routes/1", json!({"name": "r2", "match": {"path": "/users/{id}/{*rest}"}, "backend": "b"})),
            "$.routes[1]: has the same match as $.routes[0], which comes first and so takes every request: it would never be chosen",
        ),
        (
            json!({"backends": [{"name": "a", "cluster": "ca"}], "routes": [
                {"name": "x", "match": {"path": "/a", "methods": ["GET", "POST"], "headers": [{"name": "x-v", "exact": "1"}], "tiers": ["pro", "free"]}, "backend": "a"},
                {"name": "y", "match": {"path": "/a", "methods": ["post", "GET"], "headers": [{"name": "X-V", "exact": "1"}], "tiers": ["free", "pro"]}, "backend": "a"}]}),
            "$.routes[1]: has the same match as $.routes[0]",
        ),
        (
            json!({"backends": [{"name": "a", "cluster": "ca"}], "routes": [
                {"name": "x", "backend": "a"}, {"name": "y", "match": {}, "backend": "a"}]}),
            "$.routes[1]: has the same match as $.routes[0]",
        ),
        (
            with("/routes/1", models(json!({"free": {"allow": ["fast"], "pin": "smart"}}))),
            "$.routes[1].models.tiers.free: pins \"smart\", which its `allow` list does not hold: give one or the other",
        ),
        (
            with("/routes/0/match/tiers", json!([])),
            "$.routes[0].match.tiers: an empty list would leave the rule to every value: omit the field, or list at least one",
        ),
        (
            with("/flags", json!([{"name": "f", "tiers": []}])),
            "$.flags[0].tiers: an empty list would leave the rule to every value",
        ),
        (
            with("/routes/0/match/methods", json!([])),
            "$.routes[0].match.methods: an empty list would leave the rule to every value",
        ),
        (
            with("/metadata_namespace", json!("")),
            "$.metadata_namespace: must not be empty",
        ),
        (
            with("/metadata_namespace", json!("por tico")),
            "$.metadata_namespace: \"por tico\" is not a metadata namespace: use letters, digits, '.', '-' and '_' (as json_to_metadata's `metadata_namespace`)",
        ),
    ];
    for (config, want) in cases {
        let got = errors_of(&config);
        assert!(got.starts_with(want), "want {want}\n got {got}");
    }
    let distinct = json!({"backends": [{"name": "a", "cluster": "ca"}], "routes": [
        {"name": "x", "match": {"path": "/a", "headers": [{"name": "x-v", "exact": "1"}]}, "backend": "a"},
        {"name": "y", "match": {"path": "/a"}, "backend": "a"}]});
    assert_eq!(errors_of(&distinct), "");
    assert_eq!(
        errors_of(&with(
            "/routes/1",
            models(json!({"free": {"allow": ["fast", "smart"], "pin": "smart"}}))
        )),
        ""
    );
    assert_eq!(errors_of(&with("/metadata_namespace", json!("envoy.lb_x-1"))), "");
}
