//! Unit tests of the routing decision, compiled only under #[cfg(test)] (declared in decide.rs).

use super::*;
use portico_core::request::RequestView;
use serde_json::{json, Value};

fn config(v: Value) -> Config {
    Config::from_value(&v).unwrap_or_else(|e| panic!("{e}"))
}

fn view(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestView {
    let mut pairs = vec![
        (":method".to_owned(), method.as_bytes().to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), b"gw".to_vec()),
    ];
    pairs.extend(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
    RequestView::new(pairs)
}

fn route(c: &Config, v: &RequestView) -> Decision {
    decide(
        c,
        &Inputs {
            view: v,
            model: None,
            json_error: false,
        },
    )
}

fn routed(d: Decision) -> Routed {
    match d {
        Decision::Route(r) => r,
        Decision::Reject(e) => panic!("rejected: {} {}", e.status, e.code),
    }
}

fn code(d: Decision) -> (u32, &'static str) {
    match d {
        Decision::Reject(e) => (e.status, e.code),
        Decision::Route(r) => panic!("routed: {r:?}"),
    }
}

fn base() -> Value {
    json!({
        "backends": [
            {"name": "a", "cluster": "ca"},
            {"name": "b", "cluster": "cb", "path_prefix": "/svc"},
            {"name": "oai", "cluster": "openai", "format": "openai", "credential": {"bearer": "sk-up"}},
            {"name": "ant", "cluster": "anthropic", "format": "anthropic", "credential": {"api_key": "ak-up"}}
        ],
        "flags": [
            {"name": "beta", "tiers": ["pro"], "consumers": ["apikey:vip"]},
            {"name": "half", "percent": 50}
        ],
        "routes": [
            {"name": "v2", "match": {"path": "/api/{*rest}", "headers": [{"name": "x-version", "exact": "2"}]}, "backend": "b"},
            {"name": "users", "match": {"path": "/users/{id}", "methods": ["GET"]}, "rewrite": "/v1/people/{id}", "backend": "a"},
            {"name": "pro", "match": {"path": "/pro/{*rest}", "tiers": ["pro"]}, "backend": "b"},
            {"name": "beta_only", "match": {"path": "/beta"}, "require_flag": "beta", "backend": "b"},
            {"name": "ab", "match": {"path": "/ab"}, "split": {"by": {"header": "x-user"}, "override_header": "x-variant",
                "variants": [{"name": "control", "backend": "a", "weight": 90}, {"name": "canary", "backend": "b", "weight": 10}]}},
            {"name": "chat", "match": {"path": "/v1/chat/completions"}, "models": {
                "aliases": {
                    "fast": {"backend": "ant", "model": "claude-haiku"},
                    "gpt-4o": {"backend": "oai"},
                    "smart": {"split": {"variants": [{"name": "s1", "backend": "oai", "model": "gpt-5", "weight": 1}, {"name": "s2", "backend": "ant", "model": "claude-opus", "weight": 1}]}}
                },
                "tiers": {"free": {"allow": ["fast"]}, "trial": {"pin": "fast"}}
            }},
            {"name": "fallback", "match": {"path": "/api/{*rest}"}, "backend": "a"}
        ]
    })
}

#[test]
fn first_matching_route_wins_in_config_order() {
    let c = config(base());
    assert_eq!(
        routed(route(&c, &view("GET", "/api/x", &[("x-version", "2")]))).backend,
        1
    );
    assert_eq!(
        routed(route(&c, &view("GET", "/api/x", &[("x-version", "1")]))).backend,
        0
    );
    assert_eq!(code(route(&c, &view("GET", "/nowhere", &[]))), (404, "no_route"));
}

#[test]
fn rewrites_use_captured_parameters_and_backend_prefixes() {
    let c = config(base());
    let r = routed(route(&c, &view("GET", "/users/42?expand=1", &[])));
    assert_eq!(r.path.as_deref(), Some("/v1/people/42?expand=1"));
    let r = routed(route(&c, &view("GET", "/api/items", &[("x-version", "2")])));
    assert_eq!(r.path.as_deref(), Some("/svc/api/items"));
    assert_eq!(code(route(&c, &view("POST", "/users/42", &[]))), (404, "no_route"));
}

#[test]
fn header_conditions_of_every_kind() {
    let c = config(json!({"backends": [{"name": "a", "cluster": "a"}], "routes": [
        {"name": "p", "match": {"headers": [{"name": "x-t", "prefix": "ab"}]}, "backend": "a"},
        {"name": "absent", "match": {"headers": [{"name": "x-t", "present": false}, {"name": "x-k", "present": true}]}, "backend": "a"}
    ]}));
    assert_eq!(routed(route(&c, &view("GET", "/", &[("x-t", "abc")]))).route, 0);
    assert_eq!(routed(route(&c, &view("GET", "/", &[("x-k", "1")]))).route, 1);
    assert_eq!(
        code(route(&c, &view("GET", "/", &[("x-t", "zz"), ("x-k", "1")]))).0,
        404
    );
}

#[test]
fn tier_routes_and_flag_gates() {
    let c = config(base());
    assert_eq!(
        code(route(&c, &view("GET", "/pro/x", &[("x-portico-tier", "free")]))).0,
        404
    );
    assert_eq!(
        routed(route(&c, &view("GET", "/pro/x", &[("x-portico-tier", "pro")]))).backend,
        1
    );
    assert_eq!(code(route(&c, &view("GET", "/beta", &[]))).0, 404);
    let r = routed(route(
        &c,
        &view("GET", "/beta", &[("x-portico-consumer", "apikey:vip")]),
    ));
    assert!(r.flags.contains(&"beta".to_owned()));
}

#[test]
fn variants_are_sticky_and_split_by_weight() {
    let c = config(base());
    let variant = |user: &str| {
        routed(route(&c, &view("GET", "/ab", &[("x-user", user)])))
            .variant
            .unwrap()
    };
    let first = variant("alice");
    assert!((0..100).all(|_| variant("alice") == first));
    let canary = (0..10_000)
        .filter(|i| variant(&format!("user-{i}")) == "canary")
        .count();
    assert!((900..=1100).contains(&canary), "canary share {canary}/10000");
    let forced = routed(route(
        &c,
        &view("GET", "/ab", &[("x-user", "alice"), ("x-variant", "canary")]),
    ));
    assert_eq!(forced.variant.as_deref(), Some("canary"));
    assert_eq!(forced.backend, 1);
}

#[test]
fn percentage_rollouts_are_stable_and_near_their_share() {
    let c = config(base());
    let on = (0..10_000)
        .filter(|i| {
            flags_on(&c, &view("GET", "/", &[("x-portico-consumer", &format!("c{i}"))])).contains(&"half".to_owned())
        })
        .count();
    assert!((4_900..=5_100).contains(&on), "{on}");
}

fn model(c: &Config, name: Option<&str>, headers: &[(&str, &str)]) -> Decision {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let v = view("POST", "/v1/chat/completions", &h);
    decide(
        c,
        &Inputs {
            view: &v,
            model: name,
            json_error: false,
        },
    )
}

#[test]
fn model_aliases_choose_backend_and_upstream_model() {
    let c = config(base());
    let r = routed(model(&c, Some("fast"), &[]));
    assert_eq!((r.backend, r.model.as_deref()), (3, Some("claude-haiku")));
    let r = routed(model(&c, Some("gpt-4o"), &[]));
    assert_eq!((r.backend, r.model), (2, None), "no rewrite when the name stays");
    assert_eq!(code(model(&c, Some("gpt-2"), &[])), (400, "unknown_model"));
    assert_eq!(code(model(&c, None, &[])), (400, "missing_model"));
    let split: Vec<String> = (0..50)
        .map(|i| {
            routed(model(&c, Some("smart"), &[("x-portico-consumer", &format!("u{i}"))]))
                .variant
                .unwrap()
        })
        .collect();
    assert!(split.contains(&"s1".to_owned()) && split.contains(&"s2".to_owned()));
}

#[test]
fn tiers_are_limited_or_pinned_to_models() {
    let c = config(base());
    assert_eq!(
        code(model(&c, Some("gpt-4o"), &[("x-portico-tier", "free")])),
        (403, "model_not_allowed")
    );
    assert_eq!(
        routed(model(&c, Some("fast"), &[("x-portico-tier", "free")])).backend,
        3
    );
    let pinned = routed(model(&c, Some("gpt-4o"), &[("x-portico-tier", "trial")]));
    assert_eq!((pinned.backend, pinned.model.as_deref()), (3, Some("claude-haiku")));
}

#[test]
fn model_routes_need_a_json_body() {
    let c = config(base());
    let decision = |content_type: &str, json_error: bool| {
        let v = view("POST", "/v1/chat/completions", &[("content-type", content_type)]);
        match decide(
            &c,
            &Inputs {
                view: &v,
                model: Some("fast"),
                json_error,
            },
        ) {
            Decision::Reject(e) => (e.status, e.code),
            Decision::Route(_) => (200, "routed"),
        }
    };
    assert_eq!(decision("text/plain", false), (400, "invalid_json"));
    assert_eq!(decision("application/json", true), (400, "invalid_json"));
    // .NET's JsonContent and many Java clients add a charset; case does not matter.
    for json in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.x+json",
    ] {
        assert_eq!(decision(json, false), (200, "routed"), "{json}");
    }
    // The body size is Envoy's to limit (its buffer limit answers 413 first).
    let v = view(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json"), ("content-length", "2000000")],
    );
    assert!(matches!(
        decide(
            &c,
            &Inputs {
                view: &v,
                model: Some("fast"),
                json_error: false
            }
        ),
        Decision::Route(_)
    ));
}

#[test]
fn configuration_errors_have_paths() {
    let err = Config::from_value(&json!({
        "backends": [{"name": "a", "cluster": "a", "credential": {"bearer": "x", "api_key": "y"}}, {"name": "a"}],
        "routes": [
            {"name": "r", "backend": "missing"},
            {"name": "s", "split": {"variants": [{"name": "v", "backend": "a", "weight": 0}]}},
            {"name": "m", "models": {"aliases": {"x": {"backend": "a"}}, "tiers": {"free": {"allow": ["y"]}}}},
            {"name": "f", "require_flag": "nope", "backend": "a", "match": {"headers": [{"name": "h"}]}}
        ]
    }))
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "$.backends[0].credential: give exactly one of `bearer`, `api_key`, or `header` with `value`; \
         $.backends[1].cluster: required field is missing; \
         $.routes[0].backend: no backend named \"missing\"; \
         $.routes[1].split: variant weights must add up to more than 0; \
         $.routes[2].models.tiers.free: no model alias \"y\"; \
         $.routes[3].match.headers[0]: give exactly one of `exact`, `prefix` or `present`; \
         $.routes[3].require_flag: no flag named \"nope\""
    );
}

#[test]
fn buckets_are_uniform_enough_over_10k_keys() {
    let mut counts = [0u32; 10];
    for i in 0..10_000 {
        counts[(bucket("seed", &format!("k{i}")) / 1000) as usize] += 1;
    }
    assert!(counts.iter().all(|c| (900..=1100).contains(c)), "{counts:?}");
}

#[test]
fn requests_refused_before_routing_are_labelled_with_their_route() {
    let c = config(base());
    let name = |v: &RequestView| route_of(&c, v).map(|r| r.name.as_str());
    assert_eq!(name(&view("GET", "/users/7", &[])), Some("users"));
    assert_eq!(name(&view("GET", "/api/x", &[("x-version", "2")])), Some("v2"));
    // Header and tier conditions count, as in routing.
    assert_ne!(name(&view("GET", "/api/x", &[])), Some("v2"));
    assert_ne!(name(&view("GET", "/pro/x", &[])), Some("pro"));
    assert_eq!(name(&view("GET", "/pro/x", &[("x-portico-tier", "pro")])), Some("pro"));
}
