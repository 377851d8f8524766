//! The configuration and demo that ship with Portico work as the README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;

use portico_tests::demo::{check_demo, demo_env};
use portico_tests::envoy::{root, validate, wasm_path, Gateway};
use portico_tests::upstream::Upstream;

#[test]
fn shipped_envoy_configs_pass_envoy_validate() {
    // Validation also loads each wasm filter and runs its configuration check.
    wasm_path("auth");
    wasm_path("rate-limit");
    wasm_path("header-routing");
    wasm_path("body-transform");
    validate(&root().join("envoy/gateway.yaml")).unwrap_or_else(|e| panic!("envoy/gateway.yaml: {e}"));
    let mut examples = 0;
    for entry in fs::read_dir(root().join("envoy/examples")).unwrap() {
        let path = entry.unwrap().path();
        validate(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        examples += 1;
    }
    assert_eq!(examples, 4, "one example per filter");
}

#[test]
fn the_embedded_default_gateway_serves_the_readme_demo() {
    let upstream = Upstream::start_named("127.0.0.1:0", "demo-a").unwrap();
    let upstream_b = Upstream::start_named("127.0.0.1:0", "demo-b").unwrap();
    let model = Upstream::start_with("127.0.0.1:0", "demo-anthropic", portico_tests::upstream::Mode::Model).unwrap();
    // The shipped file with free ports and absolute wasm paths, so it runs beside other tests.
    let config = fs::read_to_string(root().join("envoy/gateway.yaml"))
        .unwrap()
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 8081", &format!("port_value: {}", upstream.addr.port()))
        .replace("port_value: 8082", &format!("port_value: {}", upstream_b.addr.port()))
        .replace("port_value: 8083", &format!("port_value: {}", model.addr.port()))
        .replace("filename: dist/", &format!("filename: {}/dist/", root().display()));
    let gw = Gateway::start_text(&config);
    check_demo(gw.addr);
    gw.assert_no_wasm_panic();
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
