//! The host layer through a real Envoy: `dist/portico.wasm` with its test filter
//! (`portico-echo`, `portico-echo-twin`), several plugin entries in one VM, refusals at start,
//! the panic hook, local replies and holding headers while the body arrives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use portico_tests::envoy::{EnvoyConfig, Gateway, Plugin};
use portico_tests::http::{self, Request};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

fn echo(root_id: &str, configuration: Value) -> Plugin {
    Plugin::portico(root_id, configuration)
}

/// Envoy's count of live wasm VMs for a chain of `plugins`, after one request through it.
fn vm_count(upstream: &Upstream, plugins: &[Plugin]) -> u64 {
    let config = plugins.iter().fold(EnvoyConfig::new(upstream.addr), |c, p| c.plugin(p));
    let gateway = Gateway::start(&config);
    let r = http::get("/").send(gateway.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-portico-echo-a"), Some("portico-echo"));
    assert_eq!(r.header("x-portico-echo-b"), Some("portico-echo-twin"));
    assert_eq!(r.upstream_header("x-portico-echo-a").as_deref(), Some("portico-echo"));
    assert_eq!(
        r.upstream_header("x-portico-echo-b").as_deref(),
        Some("portico-echo-twin")
    );
    gateway.assert_no_wasm_panic();
    gateway.stat("wasm.wasm_vm_count").expect("Envoy counts its wasm VMs")
}

#[test]
fn two_filters_of_one_module_share_one_vm_per_worker() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let a = echo("portico-echo", json!({"tag": "a"}));
    let b = echo("portico-echo-twin", json!({"tag": "b"}));
    let shared = vm_count(&upstream, &[a.clone(), b.clone()]);
    let apart = vm_count(
        &upstream,
        &[
            a,
            Plugin {
                vm_id: "other".to_owned(),
                ..b
            },
        ],
    );
    assert!(shared > 0);
    assert_eq!(shared * 2, apart, "one vm_id for both entries halves the VMs");
}

#[test]
fn configuration_errors_refuse_startup_with_every_json_path() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let bad = echo(
        "portico-echo",
        json!({"tag": "a b", "hold_body": 1, "allow_on_headers_stop_iteration": "yes"}),
    );
    let failure = Gateway::try_start(&EnvoyConfig::new(upstream.addr).plugin(&bad)).expect_err("Envoy started");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1), "{}", failure.log);
    for line in [
        "portico-echo: invalid configuration: $.allow_on_headers_stop_iteration: expected true or false",
        "portico-echo: invalid configuration: $.hold_body: expected true or false",
        "portico-echo: invalid configuration: $.tag: only letters, digits, '-' and '_'",
    ] {
        assert!(failure.log.contains(line), "missing {line:?} in:\n{}", failure.log);
    }

    let unknown = echo("portico-nope", json!({}));
    let failure = Gateway::try_start(&EnvoyConfig::new(upstream.addr).plugin(&unknown)).expect_err("Envoy started");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1), "{}", failure.log);
    assert!(
        failure.log.contains(
            r#"root_id "portico-nope" names no filter of this module (known: portico-auth, portico-rate-limit, portico-cache, portico-body-transform, portico-echo, portico-echo-twin, portico-header-routing, portico-stages)"#
        ),
        "{}",
        failure.log
    );
}

#[test]
fn a_panic_is_logged_with_its_message_and_location() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let gateway = Gateway::start(
        &EnvoyConfig::new(upstream.addr).plugin(&echo("portico-echo", json!({"tag": "a", "panic_header": "x-boom"}))),
    );
    let r = http::get("/").header("x-boom", "1").send(gateway.addr);
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    let log = gateway.log();
    let line = log
        .lines()
        .find(|l| l.contains("panicked at"))
        .unwrap_or_else(|| panic!("no panic line in:\n{log}"));
    assert!(line.contains("[critical]"), "{line}");
    assert!(line.contains("filters/portico/src/echo.rs:"), "{line}");
    assert!(line.contains("portico-echo: x-boom asked for a panic"), "{line}");
}

#[test]
fn a_refusal_is_a_local_json_reply_that_never_reaches_the_upstream() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let gateway = Gateway::start(
        &EnvoyConfig::new(upstream.addr).plugin(&echo("portico-echo", json!({"tag": "a", "refuse_header": "x-no"}))),
    );
    let r = http::get("/").header("x-no", "1").send(gateway.addr);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error_code(), "echo_refused");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    assert_eq!(upstream.requests(), 0);
    assert!(
        gateway.log().contains("portico-echo: 403 echo_refused"),
        "{}",
        gateway.log()
    );
    gateway.assert_no_wasm_panic();
}

fn holding(declared: bool) -> Plugin {
    let mut config = json!({"tag": "a", "hold_body": true});
    if declared {
        config["allow_on_headers_stop_iteration"] = json!(true);
    }
    Plugin {
        allow_on_headers_stop_iteration: true,
        ..echo("portico-echo", config)
    }
}

#[test]
fn a_held_request_reads_its_body_and_changes_a_header_before_the_upstream_sees_it() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let gateway = Gateway::start(&EnvoyConfig::new(upstream.addr).plugin(&holding(true)));
    let body = "x".repeat(100_000);
    let r = Request::new("POST", "/v1/things").body(body).send(gateway.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-portico-echo-body").as_deref(), Some("100000"));
    assert_eq!(r.upstream_header("x-portico-echo-a").as_deref(), Some("portico-echo"));
    assert_eq!(r.json()["body"].as_str().map(str::len), Some(100_000));
    gateway.assert_no_wasm_panic();
}

#[test]
fn a_hold_continues_when_no_body_follows_or_the_entry_does_not_declare_it() {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let gateway = Gateway::start(&EnvoyConfig::new(upstream.addr).plugin(&holding(true)));
    let started = Instant::now();
    let r = http::get("/").send(gateway.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.upstream_header("x-portico-echo-a").as_deref(), Some("portico-echo"));
    assert_eq!(r.upstream_header("x-portico-echo-body"), None);
    drop(gateway);

    // Envoy allows the hold but the configuration does not declare it: the host continues and
    // the body callback gets no headers to change.
    let gateway = Gateway::start(&EnvoyConfig::new(upstream.addr).plugin(&holding(false)));
    let r = Request::new("POST", "/").body("hello").send(gateway.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-portico-echo-body"), None);
    assert_eq!(r.json()["body"], "hello");
    gateway.assert_no_wasm_panic();
}
