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

// === Clusters named inside Portico's JSON ===

/// Writes `text` to a fresh file under the target directory and returns its path.
fn scratch(name: &str, text: &[u8]) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// An Envoy config with one static cluster `a`, header-routing naming `a` and `b`, and auth
/// fetching keys from `idp`; `extra` is appended at the top level.
fn envoy_naming_clusters(extra: &str) -> String {
    let routing = r#"{"backends": [{"name": "a", "cluster": "a"}, {"name": "b", "cluster": "b"}], "routes": [{"name": "r", "backend": "a"}]}"#;
    let auth = r#"{"jwt": {"providers": [{"name": "idp", "issuers": ["https://idp"], "remote_jwks": {"cluster": "idp", "path": "/jwks"}}]}, "routes": [{"match": {"path": "/{*rest}"}, "auth": "jwt"}]}"#;
    format!(
        r#"
static_resources:
  clusters:
    - name: a
  listeners:
    - filter_chains:
        - filters:
            - typed_config:
                common_http_protocol_options: {{headers_with_underscores_action: REJECT_REQUEST}}
                http_filters:
                  - typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        root_id: portico-auth
                        configuration: {{value: '{auth}'}}
                  - typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        root_id: portico-header-routing
                        configuration: {{value: '{routing}'}}
{extra}
"#
    )
}

#[test]
fn clusters_named_in_portico_json_must_be_static_clusters_of_the_config() {
    let file = scratch("clusters.yaml", envoy_naming_clusters("").as_bytes());
    let (ok, out) = run(&["check", &file]);
    assert!(!ok, "{out}");
    let at = "$.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters";
    assert_eq!(
        out,
        format!(
            "{file}: auth at {at}[0].typed_config: $.jwt.providers[0].remote_jwks.cluster: no cluster \"idp\" in this config's static_resources.clusters\n\
             {file}: header-routing at {at}[1].typed_config: $.backends[1].cluster: no cluster \"b\" in this config's static_resources.clusters\n"
        )
    );

    // With CDS the clusters are not in the file: skipped, and said so.
    let cds = "dynamic_resources:\n  cds_config: {ads: {}}\n";
    let file = scratch("cds.yaml", envoy_naming_clusters(cds).as_bytes());
    let (ok, out) = run(&["check", &file]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        format!(
            "{file}: auth at {at}[0].typed_config: ok\n\
             {file}: auth at {at}[0].typed_config: note: clusters come from CDS: cluster names not checked\n\
             {file}: header-routing at {at}[1].typed_config: ok\n\
             {file}: header-routing at {at}[1].typed_config: note: clusters come from CDS: cluster names not checked\n"
        )
    );
}

// === Hostile input ===

/// Runs the checker and asserts it refused the input the way it should: exit status 1, every
/// line a message about the input, no panic.
fn assert_refused_cleanly(args: &[&str], what: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stdout}{stderr}");
    assert!(stderr.is_empty(), "{what}: {stderr}");
    assert!(!stdout.trim().is_empty(), "{what}: no message");
}

#[test]
fn hostile_configurations_exit_1_with_messages_never_a_crash() {
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_yaml: String = (0..5000).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
    let laughs = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
                  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        (
            "weights that overflow u64",
            br#"{"backends": [{"name": "a", "cluster": "a"}], "routes": [{"name": "r", "split": {"variants": [
                {"name": "x", "backend": "a", "weight": 9007199254740993}, {"name": "y", "backend": "a", "weight": 5}]}}]}"#
                .to_vec(),
        ),
        (
            "numbers at and past every limit",
            br#"{"max_body_bytes": 18446744073709551615, "max_keys": 18446744073709551616, "max_entries": -1,
                 "max_bytes": 1e308, "default_max_tokens": 1.5, "routes": [{"ttl_seconds": 18446744073709551615}],
                 "rules": [{"name": "r", "limit": {"requests": 18446744073709551615, "period_seconds": 18446744073709551615,
                 "burst": 18446744073709551615}}]}"#
                .to_vec(),
        ),
        ("a number JSON cannot hold", br#"{"max_body_bytes": 1e400}"#.to_vec()),
        ("a root of the wrong type", b"[1, 2, 3]".to_vec()),
        (
            "every field of the wrong type",
            br#"{"routes": [null, 1, "a", [], {"match": 5, "backend": [], "split": "x", "models": 1, "rewrite": 7}],
                 "backends": {"a": 1}, "flags": "x", "rules": 1, "token_quotas": {}, "jwt": [], "api_keys": 1}"#
                .to_vec(),
        ),
        ("JSON nested past any limit", deep_json.clone().into_bytes()),
        ("bytes that are not UTF-8", b"{\"routes\": [\xff\xfe]}".to_vec()),
        ("truncated JSON", br#"{"routes": [{"name": "#.to_vec()),
    ];
    for (what, body) in &bodies {
        let file = scratch("hostile.json", body);
        for filter in ["auth", "rate-limit", "header-routing", "body-transform", "cache"] {
            assert_refused_cleanly(&["check", "--filter", filter, &file], &format!("{what} ({filter})"));
        }
    }

    let documents: Vec<(&str, Vec<u8>)> = vec![
        ("YAML nested past any limit", deep_yaml.into_bytes()),
        ("JSON nested past any limit", deep_json.into_bytes()),
        ("an alias bomb", laughs.as_bytes().to_vec()),
        ("bytes that are not UTF-8", b"static_resources: \xff\xfe\n".to_vec()),
        (
            "a Wasm filter whose configuration is hostile",
            br#"{"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                 "config": {"root_id": "portico-header-routing", "configuration": {"value": "{\"max_body_bytes\": 1e400}"}}}"#
                .to_vec(),
        ),
        (
            "a WasmPlugin of the wrong shape",
            b"kind: WasmPlugin\nmetadata: {name: portico-cache}\nspec: {pluginConfig: [1, 2]}\n".to_vec(),
        ),
    ];
    for (what, body) in &documents {
        let file = scratch("hostile.yaml", body);
        assert_refused_cleanly(&["check", &file], what);
    }
}

/// Every value of every shipped filter configuration, replaced in turn by each hostile value:
/// the checker answers each, in-process, without a panic (a panic fails this test).
#[test]
fn every_shipped_value_replaced_by_a_hostile_one_is_checked_without_panicking() {
    use serde_json::{json, Value};

    fn paths(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => map.iter().for_each(|(k, c)| paths(c, format!("{at}/{k}"), out)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, c)| paths(c, format!("{at}/{i}"), out)),
            _ => {}
        }
        out.push(at);
    }

    let hostile = [
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(9_007_199_254_740_993_u64),
        json!(1.5),
        json!(1e308),
        json!(""),
        json!("a\r\nb: c"),
        json!(":path"),
        json!(null),
        json!([]),
        json!({}),
    ];
    let mut checked = 0;
    for filter in ["auth", "rate-limit", "header-routing", "body-transform", "cache"] {
        let text = std::fs::read_to_string(root().join(format!("envoy/istio/{filter}.yaml"))).unwrap();
        let docs = portico_check::parse_documents(&text).unwrap();
        let config = docs[0].pointer("/spec/pluginConfig").unwrap().clone();
        assert!(portico_check::check_filter(filter, config.to_string().as_bytes()).is_ok());
        let mut all = Vec::new();
        paths(&config, String::new(), &mut all);
        for path in all.iter().filter(|p| !p.is_empty()) {
            for value in &hostile {
                let mut mutated = config.clone();
                *mutated.pointer_mut(path).unwrap() = value.clone();
                let _ = portico_check::check_filter(filter, mutated.to_string().as_bytes());
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "only {checked} mutations");
}
