//! Unit tests of request shaping, compiled only under #[cfg(test)] (declared in shape.rs).

use super::*;
use portico_core::request::RequestView;
use portico_host::{Direction, Effect};
use serde_json::json;

fn config() -> Config {
    Config::from_value(&json!({
        "backends": [
            {"name": "a", "cluster": "ca"},
            {"name": "b", "cluster": "cb", "path_prefix": "/svc", "host_rewrite": "b.internal",
             "headers": {"add": {"x-served-via": "portico"}, "remove": ["x-debug"]}},
            {"name": "oai", "cluster": "openai", "format": "openai", "credential": {"bearer": "sk-up"}},
            {"name": "ant", "cluster": "anthropic", "format": "anthropic", "credential": {"api_key": "ak-up"}}
        ],
        "flags": [{"name": "beta", "tiers": ["pro"]}],
        "routes": [
            {"name": "plain", "match": {"path": "/plain"}, "backend": "b"},
            {"name": "ab", "match": {"path": "/ab"}, "split": {"by": {"cookie": "uid"},
                "variants": [{"name": "control", "backend": "a", "weight": 1}, {"name": "canary", "backend": "b", "weight": 1}]}},
            {"name": "chat", "match": {"path": "/v1/chat/completions"}, "models": {"aliases": {
                "fast": {"backend": "ant", "model": "claude-haiku"},
                "gpt-4o": {"backend": "oai"}
            }}},
            {"name": "messages", "match": {"path": "/v1/messages"}, "rewrite": "/v1/chat/completions", "backend": "oai"}
        ]
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn view(path: &str, headers: &[(&str, &str)]) -> RequestView {
    let mut pairs = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
    ];
    pairs.extend(headers.iter().map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())));
    RequestView::new(pairs)
}

fn set(name: &str, value: &str) -> Effect {
    Effect::SetHeader(Direction::Request, name.to_owned().into(), value.as_bytes().to_vec())
}

fn remove(name: &str) -> Effect {
    Effect::RemoveHeader(Direction::Request, name.to_owned().into())
}

fn state(key: &str, value: &str) -> Effect {
    Effect::SetState(key.to_owned().into(), value.as_bytes().to_vec())
}

fn run(view: &RequestView, lifted: Lifted<'_>) -> (Option<Routing>, Effects) {
    let mut fx = Effects::default();
    let routing = route(&config(), view, lifted, &mut fx);
    (routing, fx)
}

#[test]
fn a_plain_route_shapes_the_request_for_its_backend_in_order() {
    let (routing, fx) = run(&view("/plain?q=1", &[("x-portico-cluster", "evil")]), Lifted::default());
    assert_eq!(
        fx.list(),
        &[
            remove("x-portico-cluster"),
            remove("x-debug"),
            set("x-served-via", "portico"),
            set(":authority", "b.internal"),
            set(":path", "/svc/plain?q=1"),
            set("x-portico-cluster", "cb"),
            state(state::ROUTE, "plain"),
            state(state::BACKEND, "b"),
            Effect::ClearRouteCache,
        ]
    );
    assert!(fx.reply().is_none());
    let routing = routing.unwrap();
    assert_eq!(routing.body, BodyPhase::Pass);
    assert!(routing.echo.is_empty());
    assert_eq!(
        (routing.labels.route.as_str(), routing.labels.backend.as_str()),
        ("plain", "b")
    );
}

#[test]
fn a_backend_credential_replaces_the_clients_and_never_leaves_in_the_echo() {
    let mut fx = Effects::default();
    let config = config();
    let oai = config.backends.iter().find(|b| b.name == "oai").unwrap();
    for_backend(oai, &mut fx);
    assert_eq!(
        fx.list(),
        &[
            remove("authorization"),
            remove("x-api-key"),
            set("authorization", "Bearer sk-up")
        ]
    );
    let mut fx = Effects::default();
    let ant = config.backends.iter().find(|b| b.name == "ant").unwrap();
    for_backend(ant, &mut fx);
    assert_eq!(
        fx.list(),
        &[remove("authorization"), remove("x-api-key"), set("x-api-key", "ak-up")]
    );
    let (routing, _) = run(
        &view("/v1/chat/completions", &[("content-type", "application/json")]),
        Lifted {
            model: Some("gpt-4o"),
            json_error: false,
        },
    );
    assert!(routing.unwrap().echo.iter().all(|(_, v)| !v.contains("sk-up")));
}

#[test]
fn a_sticky_split_sends_the_same_cookie_to_the_same_variant_and_echoes_it() {
    let variant_of = |uid: &str| {
        let cookie = format!("theme=dark; uid={uid}");
        let (routing, fx) = run(&view("/ab", &[("cookie", &cookie)]), Lifted::default());
        let routing = routing.unwrap();
        let variant = routing.labels.variant.clone();
        assert!(fx.list().contains(&set(header::VARIANT, &variant)));
        assert!(fx.list().contains(&state(state::VARIANT, &variant)));
        assert_eq!(routing.echo, vec![(header::VARIANT, variant.clone())]);
        variant
    };
    let seen: Vec<String> = (0..40).map(|i| variant_of(&format!("user-{i}"))).collect();
    assert!(
        seen.iter().any(|v| v == "control") && seen.iter().any(|v| v == "canary"),
        "{seen:?}"
    );
    for i in 0..40 {
        assert_eq!(seen.get(i), Some(&variant_of(&format!("user-{i}"))), "user-{i} moved");
    }
}

#[test]
fn a_model_route_picks_the_backend_from_the_lifted_model_and_rewrites_it() {
    let (routing, fx) = run(
        &view(
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("content-length", "30"),
                ("x-portico-tier", "gold"),
            ],
        ),
        Lifted {
            model: Some("fast"),
            json_error: false,
        },
    );
    let routing = routing.unwrap();
    assert_eq!(routing.body, BodyPhase::Check(Some("claude-haiku".to_owned())));
    assert_eq!(
        fx.list(),
        &[
            remove("authorization"),
            remove("x-api-key"),
            set("x-api-key", "ak-up"),
            set(header::BACKEND_FORMAT, "anthropic"),
            remove("content-length"),
            set("x-portico-cluster", "anthropic"),
            state(state::ROUTE, "chat"),
            state(state::BACKEND, "ant"),
            state(state::MODEL, "claude-haiku"),
            Effect::ClearRouteCache,
        ]
    );
    assert_eq!(routing.labels.tier, "gold");
    // The client's model goes upstream unchanged: the body is still read strictly.
    let (routing, fx) = run(
        &view("/v1/chat/completions", &[("content-type", "application/json")]),
        Lifted {
            model: Some("gpt-4o"),
            json_error: false,
        },
    );
    assert_eq!(routing.unwrap().body, BodyPhase::Check(None));
    assert!(!fx.list().contains(&remove("content-length")));
}

#[test]
fn a_path_that_changes_api_records_the_clients_api_for_envoys_own_errors() {
    let (_, fx) = run(&view("/v1/messages", &[]), Lifted::default());
    assert!(fx.list().contains(&set(":path", "/v1/chat/completions")));
    assert!(fx.list().contains(&state(state::CLIENT_API, "anthropic")));
}

#[test]
fn flags_go_upstream_and_back_to_the_client() {
    let (routing, fx) = run(&view("/plain", &[("x-portico-tier", "pro")]), Lifted::default());
    assert!(fx.list().contains(&set(header::FLAGS, "beta")));
    assert_eq!(routing.unwrap().echo, vec![(header::FLAGS, "beta".to_owned())]);
}

#[test]
fn refusals_are_replies_in_the_clients_format_with_the_request_line_as_context() {
    for (path, headers, lifted, want) in [
        ("/nowhere", vec![], Lifted::default(), (404, "no_route")),
        (
            "/v1/chat/completions",
            vec![("content-type", "application/json")],
            Lifted {
                model: None,
                json_error: true,
            },
            (400, "invalid_json"),
        ),
        (
            "/v1/chat/completions",
            vec![("content-type", "application/json")],
            Lifted {
                model: Some("nope"),
                json_error: false,
            },
            (400, "unknown_model"),
        ),
    ] {
        let (routing, fx) = run(&view(path, &headers), lifted);
        assert!(routing.is_none());
        let reply = fx.reply().unwrap();
        assert_eq!((reply.status, reply.code), (want.0, Some(want.1)));
        assert_eq!(reply.context.as_deref(), Some(format!("POST {path}").as_str()));
    }
}

#[test]
fn hostile_owned_headers_are_removed_before_anything_else_even_on_a_refusal() {
    let spoofed = [
        ("x-portico-cluster", "admin"),
        (header::BACKEND_FORMAT, "anthropic"),
        (header::VARIANT, "canary"),
        (header::FLAGS, "beta"),
    ];
    let (routing, fx) = run(&view("/nowhere", &spoofed), Lifted::default());
    assert!(routing.is_none());
    assert_eq!(
        fx.list(),
        &[
            remove("x-portico-cluster"),
            remove(header::BACKEND_FORMAT),
            remove(header::VARIANT),
            remove(header::FLAGS)
        ]
    );
}
