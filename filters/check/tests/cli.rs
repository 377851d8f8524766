//! `portico check` on every shipped configuration, and on broken ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn shipped() -> Vec<String> {
    let mut files = vec!["envoy/gateway.yaml".to_owned()];
    for dir in ["envoy/examples", "envoy/istio"] {
        let mut found: Vec<String> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|f| f.ends_with(".yaml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

#[test]
fn every_shipped_configuration_passes() {
    let files = shipped();
    assert!(files.len() >= 9, "{files:?}");
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(String::as_str))
        .collect();
    let (ok, out) = run(&args);
    assert!(ok, "{out}");
    for filter in ["auth", "rate-limit", "header-routing", "body-transform", "cache"] {
        assert!(
            out.contains(&format!("envoy/gateway.yaml: {filter} at ")),
            "{filter} not found in gateway.yaml:\n{out}"
        );
    }
    assert_eq!(out.lines().filter(|l| l.ends_with(": ok")).count(), 15, "{out}");
}

#[test]
fn broken_configurations_fail_with_every_error_and_its_path() {
    let (ok, out) = run(&["check", "filters/check/tests/broken/gateway.yaml"]);
    assert!(!ok);
    for expected in [
        "auth at $.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: $.jwt.providers[0].clock_skew_seconds: expected a non-negative integer",
        "auth at $.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: $.routes[0].match.path: must start with '/'",
        "rate-limit at $.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[2].typed_config: $.rules[0].name: names use a-z, 0-9 and _ only (they become metric names)",
        "header-routing at $.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[3].typed_config: ok",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }

    let (ok, out) = run(&["check", "filters/check/tests/broken/wasmplugin.yaml"]);
    assert!(!ok);
    assert!(
        out.contains("header-routing at WasmPlugin portico-header-routing: $.max_body_byte: unknown field"),
        "{out}"
    );

    let (ok, out) = run(&[
        "check",
        "--filter",
        "rate-limit",
        "filters/check/tests/broken/rate-limit.json",
    ]);
    assert!(!ok);
    assert_eq!(
        out,
        "filters/check/tests/broken/rate-limit.json: rate-limit: $.fail_mode: unknown value \"maybe\", expected one of: open, closed\n\
         filters/check/tests/broken/rate-limit.json: rate-limit: $.rules[0].limit.period_seconds: required field is missing\n"
    );
}

#[test]
fn files_without_portico_filters_and_bad_usage_fail() {
    let (ok, out) = run(&["check", "tests/sdk/requirements.txt"]);
    assert!(!ok, "{out}");
    let (ok, _) = run(&["frobnicate"]);
    assert!(!ok);
}
