//! The configuration and demo that ship with Portico work as the README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;

use portico_tests::demo::{check_demo, demo_env, Shipped};
use portico_tests::envoy::{root, validate, wasm_path};

#[test]
fn shipped_envoy_configs_pass_envoy_validate() {
    // Validation also loads each wasm filter and runs its configuration check.
    wasm_path("auth");
    wasm_path("rate-limit");
    wasm_path("header-routing");
    wasm_path("body-transform");
    wasm_path("cache");
    validate(&root().join("envoy/gateway.yaml")).unwrap_or_else(|e| panic!("envoy/gateway.yaml: {e}"));
    let mut examples = 0;
    for entry in fs::read_dir(root().join("envoy/examples")).unwrap() {
        let path = entry.unwrap().path();
        validate(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        examples += 1;
    }
    assert_eq!(examples, 5, "one example per filter");
}

#[test]
fn the_embedded_default_gateway_serves_the_readme_demo() {
    let shipped = Shipped::start(None);
    check_demo(shipped.gw.addr);
    shipped.gw.assert_no_wasm_panic();
}

#[test]
fn the_readme_shows_the_demo_credentials_that_work() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    for key in ["PORTICO_DEMO_KEY", "PORTICO_DEMO_TOKEN"] {
        let value = demo_env(key);
        assert!(readme.contains(&value), "README.md does not show the working {key}");
    }
    for command in ["make run", "make test"] {
        assert!(readme.contains(command), "README.md does not document `{command}`");
    }
}

#[test]
fn the_gateway_turns_every_portico_metric_label_into_a_prometheus_label() {
    let gateway = fs::read_to_string(root().join("envoy/gateway.yaml")).unwrap();
    for label in portico_core::analytics::LABELS {
        let rule = format!(
            "{{ tag_name: {label}, regex: \"{}\" }}",
            portico_core::analytics::tag_regex(label)
        );
        assert!(
            gateway.contains(&rule),
            "envoy/gateway.yaml lacks the stats tag rule {rule}"
        );
    }
}
