//! The configuration and demo that ship with Portico work as the README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::fs;

use portico_tests::demo::{check_demo, demo_env, Shipped};
use portico_tests::envoy::{local_reply_config, root, validate, wasm_path};
use portico_tests::http::get;
use serde_json::Value;

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

/// Every shipped Envoy config (the gateway and each example), parsed.
fn shipped_envoy_configs() -> Vec<(String, Value)> {
    let mut paths = vec![root().join("envoy/gateway.yaml")];
    for entry in fs::read_dir(root().join("envoy/examples")).unwrap() {
        paths.push(entry.unwrap().path());
    }
    paths
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).unwrap();
            let value: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), value)
        })
        .collect()
}

/// Every object in `v` whose `key` is set, depth first.
fn find_all<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            if let Some(found) = map.get(key) {
                out.push(found);
            }
            map.values().for_each(|c| find_all(c, key, out));
        }
        Value::Array(items) => items.iter().for_each(|c| find_all(c, key, out)),
        _ => {}
    }
}

#[test]
fn every_shipped_config_answers_envoy_errors_as_the_tests_prove() {
    let want = local_reply_config();
    for (path, config) in shipped_envoy_configs() {
        let mut found = Vec::new();
        find_all(&config, "local_reply_config", &mut found);
        assert_eq!(
            found.len(),
            1,
            "{path}: one HTTP connection manager, one local_reply_config"
        );
        assert_eq!(
            found[0], &want,
            "{path}: local_reply_config differs from the one tests/src/envoy.rs renders"
        );
    }
}

#[test]
fn every_shipped_json_to_metadata_accepts_what_the_filters_call_json() {
    let mut filters = 0;
    for (path, config) in shipped_envoy_configs() {
        let mut rules = Vec::new();
        find_all(&config, "request_rules", &mut rules);
        for r in rules {
            filters += 1;
            assert_eq!(
                r["allow_content_types_regex"]["regex"],
                portico_core::media::JSON_CONTENT_TYPE_REGEX,
                "{path}"
            );
        }
    }
    assert_eq!(filters, 3, "the gateway, header-routing and rate-limit examples");
}

/// Every Istio `WasmPlugin` shipped in `envoy/istio`, parsed.
fn shipped_istio_plugins() -> Vec<(String, Value)> {
    fs::read_dir(root().join("envoy/istio"))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let text = fs::read_to_string(&path).unwrap();
            let value: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), value)
        })
        .collect()
}

/// Every Portico plugin configuration shipped: the JSON `configuration` of each wasm entry of
/// the Envoy configs and the `pluginConfig` of each Istio plugin.
fn shipped_plugin_configs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (path, config) in shipped_envoy_configs() {
        let mut found = Vec::new();
        find_all(&config, "configuration", &mut found);
        for c in found {
            if let Some(text) = c["value"].as_str() {
                let value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{path}: {e}"));
                out.push((path.clone(), value));
            }
        }
    }
    for (path, plugin) in shipped_istio_plugins() {
        out.push((path, plugin["spec"]["pluginConfig"].clone()));
    }
    out
}

#[test]
fn every_shipped_json_to_metadata_writes_exactly_the_metadata_the_filters_read() {
    use portico_core::contract::metadata;
    let read: BTreeSet<&str> = metadata::READ.iter().copied().collect();
    let mut filters = 0;
    for (path, config) in shipped_envoy_configs() {
        let mut found = Vec::new();
        find_all(&config, "request_rules", &mut found);
        for request_rules in found {
            filters += 1;
            let mut written = BTreeSet::new();
            for rule in request_rules["rules"].as_array().unwrap() {
                for action in ["on_present", "on_missing", "on_error"] {
                    if let Some(write) = rule.get(action) {
                        assert_eq!(write["metadata_namespace"], metadata::NAMESPACE, "{path}: {rule}");
                        written.insert(write["key"].as_str().unwrap());
                    }
                }
            }
            assert_eq!(
                written, read,
                "{path}: json_to_metadata must lift exactly what rate-limit and header-routing read"
            );
        }
    }
    assert_eq!(filters, 3, "the gateway, header-routing and rate-limit examples");
    for (path, config) in shipped_plugin_configs() {
        if let Some(namespace) = config.get("metadata_namespace") {
            assert_eq!(
                namespace,
                metadata::NAMESPACE,
                "{path}: the filters read another namespace"
            );
        }
    }
}

#[test]
fn the_shipped_configs_read_only_filter_state_the_filters_write() {
    use portico_core::contract::state;
    let mut read = BTreeSet::new();
    for entry in fs::read_dir(root().join("envoy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain([root().join("envoy/gateway.yaml")])
    {
        let text = fs::read_to_string(&entry).unwrap();
        for (at, _) in text.match_indices("wasm.") {
            let key: String = text[at + 5..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if key.starts_with("portico_") {
                assert!(state::ALL.contains(&key.as_str()), "{}: wasm.{key}", entry.display());
                read.insert(key);
            }
        }
    }
    // The gateway's access log and local_reply_config read these.
    for key in [
        state::CONSUMER,
        state::MODEL,
        state::PROMPT_TOKENS,
        state::CACHE,
        state::CLIENT_API,
    ] {
        assert!(read.contains(key), "{key} is read by no shipped config");
    }
}

#[test]
fn routes_by_header_routing_remove_its_internal_headers() {
    use portico_core::contract::header;
    for (path, config) in shipped_envoy_configs() {
        let mut clusters = Vec::new();
        find_all(&config, "cluster_header", &mut clusters);
        let mut removed = Vec::new();
        find_all(&config, "request_headers_to_remove", &mut removed);
        assert_eq!(
            removed.len(),
            clusters.len(),
            "{path}: every header-routed route removes them"
        );
        for (cluster, removed) in clusters.iter().zip(&removed) {
            assert_eq!(*cluster, header::CLUSTER, "{path}");
            assert_eq!(
                *removed,
                &serde_json::json!([header::CLUSTER, header::BACKEND_FORMAT]),
                "{path}"
            );
        }
    }
}

#[test]
fn the_embedded_default_gateway_serves_the_readme_demo() {
    let shipped = Shipped::start(None);
    check_demo(shipped.gw.addr);
    shipped.gw.assert_no_wasm_panic();
}

#[test]
fn the_embedded_gateway_runs_its_five_filters_in_one_vm_per_worker() {
    let shipped = Shipped::start(None);
    let r = get("/hello").send(shipped.gw.addr);
    assert_eq!(r.status, 401, "{}", r.text());
    let one = shipped
        .gw
        .stat("wasm.wasm_vm_count")
        .expect("Envoy counts its wasm VMs");
    drop(shipped);
    // The same gateway with each filter from its own module, in a VM of its own.
    let apart = Shipped::start_edited(None, |config| {
        // Each entry's vm_id line comes before its module's file name.
        let mut filters = ["auth", "rate-limit", "header-routing", "body-transform", "cache"].iter();
        let mut current = None;
        let mut out = String::new();
        for line in config.split_inclusive('\n') {
            if line.trim_start().starts_with("vm_id: portico") {
                current = filters.next();
                let f = current.expect("five Portico entries");
                out.push_str(&line.replace("vm_id: portico", &format!("vm_id: portico-{f}")));
            } else if line.contains("/dist/portico.wasm") {
                let f = current.take().expect("a vm_id before each module");
                out.push_str(&line.replace("/dist/portico.wasm", &format!("/dist/{f}.wasm")));
            } else {
                out.push_str(line);
            }
        }
        assert_eq!(filters.next(), None, "every Portico entry rewritten");
        out
    });
    check_demo(apart.gw.addr);
    apart.gw.assert_no_wasm_panic();
    let five = apart.gw.stat("wasm.wasm_vm_count").expect("Envoy counts its wasm VMs");
    assert!(one > 0);
    assert_eq!(one * 5, five, "one module and one vm_id: a fifth of the VMs");
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

/// Metric names the filters define: every `"portico_…"` string literal in the top-level
/// sources of their crates (the host shell is `lib.rs`, or `filter.rs` once ported to the host
/// layer).
fn defined_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for filter in ["auth", "rate-limit", "header-routing", "body-transform", "cache"] {
        let source: String = ["lib.rs", "filter.rs"]
            .iter()
            .filter_map(|file| fs::read_to_string(root().join(format!("filters/{filter}/src/{file}"))).ok())
            .collect();
        for piece in source.split("\"portico_").skip(1) {
            let name: String = piece.chars().take_while(|c| *c != '"').collect();
            if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                names.insert(format!("portico_{name}"));
            }
        }
    }
    names
}

/// Every `portico_…` metric a PromQL text names, without histogram suffixes.
fn referenced_metrics(promql: &str) -> BTreeSet<String> {
    promql
        .split("portico_")
        .skip(1)
        .map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .map_or(name.clone(), str::to_owned);
            format!("portico_{name}")
        })
        .collect()
}

#[test]
fn the_dashboard_and_the_readme_query_only_metrics_the_filters_define() {
    let defined = defined_metrics();
    for expected in [
        "portico_requests_total",
        "portico_tokens_total",
        "portico_cache_requests_total",
    ] {
        assert!(defined.contains(expected), "{defined:?}");
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root().join("envoy/grafana-dashboard.json")).unwrap()).unwrap();
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let promql: String = readme
        .split("```promql")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .collect();
    for (what, text) in [("envoy/grafana-dashboard.json", &exprs), ("README.md", &promql)] {
        let used = referenced_metrics(text);
        assert!(used.len() >= 5, "{what} queries too little: {used:?}");
        let unknown: Vec<&String> = used.difference(&defined).collect();
        assert!(
            unknown.is_empty(),
            "{what} queries metrics no filter defines: {unknown:?}"
        );
    }
}

#[test]
fn anonymous_callers_are_limited_per_client_ip_not_in_one_shared_bucket() {
    let shipped = Shipped::start(None);
    let addr = shipped.gw.addr;
    let a: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let b: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    // Before: the per-consumer rule counted every anonymous caller under one empty key, so
    // five requests from one client a minute used up /public for everyone.
    let statuses: Vec<u16> = (0..11)
        .map(|_| get("/public/status").send_from(a, addr).status)
        .collect();
    assert_eq!(statuses[..10], [200; 10], "{statuses:?}");
    assert_eq!(statuses[10], 429, "{statuses:?}");
    assert_eq!(
        get("/public/status").send_from(b, addr).status,
        200,
        "another client's own bucket"
    );
    let key = demo_env("PORTICO_DEMO_KEY");
    let r = get("/hello").header("x-api-key", &key).send_from(a, addr);
    assert_eq!(r.status, 200, "a consumer is counted as itself, wherever it calls from");
    shipped.gw.assert_no_wasm_panic();
}
