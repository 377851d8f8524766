//! Finds the Portico filters in an Envoy config, an Istio `WasmPlugin` manifest, or a bare
//! filter configuration, and checks each configuration with the same code the filter runs at
//! load, so every error is reported with its JSON path before anything is deployed.
//!
//! In an Envoy config it also checks what Envoy cannot, because it sits inside Portico's JSON:
//! every cluster a filter names (header-routing backends, auth's remote JWKS) must be one of
//! the config's static clusters, and body-transform's `allow_on_headers_stop_iteration` must
//! be matched by the plugin field of the same name (without it a held response hangs).

use portico_core::config::Errors;
use serde_json::Value;

/// The Portico filters, by the name used in `dist/<name>.wasm` and `portico-<name>` root ids.
pub const FILTERS: [&str; 5] = ["auth", "rate-limit", "header-routing", "body-transform", "cache"];

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Checks one filter's configuration (JSON text).
pub fn check_filter(filter: &str, configuration: &[u8]) -> Result<(), Errors> {
    read_filter(filter, configuration).map(drop)
}

/// An Envoy cluster that a filter configuration names, at a JSON path in that configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    pub path: String,
    pub cluster: String,
}

/// Checks one filter's configuration; a valid one gives the clusters it names.
fn read_filter(filter: &str, configuration: &[u8]) -> Result<Vec<ClusterRef>, Errors> {
    match filter {
        "auth" => portico_auth::config::Config::from_bytes(configuration).map(|c| {
            c.remote_providers()
                .map(|(i, remote)| ClusterRef {
                    path: format!("$.jwt.providers[{i}].remote_jwks.cluster"),
                    cluster: remote.cluster.clone(),
                })
                .collect()
        }),
        "rate-limit" => portico_rate_limit::config::Config::from_bytes(configuration).map(|_| Vec::new()),
        "header-routing" => portico_header_routing::config::Config::from_bytes(configuration).map(|c| {
            c.backends
                .iter()
                .enumerate()
                .map(|(i, b)| ClusterRef {
                    path: format!("$.backends[{i}].cluster"),
                    cluster: b.cluster.clone(),
                })
                .collect()
        }),
        "body-transform" => portico_body_transform::config::Config::from_bytes(configuration).map(|_| Vec::new()),
        "cache" => portico_cache::config::Config::from_bytes(configuration).map(|_| Vec::new()),
        STAGES => read_stages(configuration),
        other => {
            let mut e = Errors::default();
            e.push(
                "$",
                format!(
                    "unknown Portico filter {other:?} (expected one of: {})",
                    FILTERS.join(", ")
                ),
            );
            Err(e)
        }
    }
}

/// The filter name of `portico-stages` entries: several filters in one plugin entry.
pub const STAGES: &str = "stages";

/// The stages of a `portico-stages` configuration: each checked as its own entry would be, its
/// errors and the clusters it names under `$.stages[i].config`.
fn read_stages(configuration: &[u8]) -> Result<Vec<ClusterRef>, Errors> {
    let value = portico_core::config::parse_json(configuration)?;
    let known: Vec<String> = FILTERS.iter().map(|f| format!("portico-{f}")).collect();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let mut errors = Errors::default();
    let mut refs = Vec::new();
    for doc in portico_host::stages::documents(&value, &known, &mut errors) {
        let filter = doc.filter.strip_prefix("portico-").unwrap_or(&doc.filter);
        match read_filter(filter, doc.config.to_string().as_bytes()) {
            Ok(found) => refs.extend(found.into_iter().map(|r| ClusterRef {
                path: format!("{}{}", doc.path, r.path.strip_prefix('$').unwrap_or(&r.path)),
                cluster: r.cluster,
            })),
            Err(e) => portico_host::stages::within(&e, &doc.path, &mut errors),
        }
    }
    if errors.is_empty() {
        Ok(refs)
    } else {
        Err(errors)
    }
}

/// One Portico filter configuration found in a document, and what checking it gave.
#[derive(Debug)]
pub struct Finding {
    pub filter: String,
    /// Where in the document the configuration sits.
    pub location: String,
    pub result: Result<(), Errors>,
    /// What could not be checked, and why, and what may be a mistake.
    pub notes: Vec<String>,
}

/// The clusters a document defines, as far as the checker can know them.
#[derive(Debug)]
enum Clusters {
    Static(Vec<String>),
    /// Defined elsewhere (CDS, Istio): why names cannot be checked.
    Unknown(&'static str),
}

impl Clusters {
    fn of_envoy(doc: &Value) -> Clusters {
        let dynamic = [
            "/dynamic_resources/cds_config",
            "/dynamic_resources/cds_resources_locator",
        ];
        if dynamic.iter().any(|p| doc.pointer(p).is_some()) {
            return Clusters::Unknown("clusters come from CDS: cluster names not checked");
        }
        match doc.pointer("/static_resources/clusters").and_then(Value::as_array) {
            Some(list) => Clusters::Static(
                list.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect(),
            ),
            None => Clusters::Unknown("no static_resources.clusters in this document: cluster names not checked"),
        }
    }

    /// A finding for a configuration read as `read`: every cluster it names must exist.
    fn finding(&self, filter: &str, location: String, read: Result<Vec<ClusterRef>, Errors>) -> Finding {
        let (result, note) = match (read, self) {
            (Err(e), _) => (Err(e), None),
            (Ok(refs), _) if refs.is_empty() => (Ok(()), None),
            (Ok(_), Clusters::Unknown(why)) => (Ok(()), Some((*why).to_owned())),
            (Ok(refs), Clusters::Static(names)) => {
                let mut errors = Errors::default();
                for r in refs.iter().filter(|r| !names.contains(&r.cluster)) {
                    errors.push(
                        &r.path,
                        format!("no cluster {:?} in this config's static_resources.clusters", r.cluster),
                    );
                }
                (if errors.is_empty() { Ok(()) } else { Err(errors) }, None)
            }
        };
        Finding {
            filter: filter.to_owned(),
            location,
            result,
            notes: note.into_iter().collect(),
        }
    }
}

/// Which filter a name, root id, file name or image URL refers to.
fn filter_named(text: &str) -> Option<&'static str> {
    if text.contains("portico-stages") {
        return Some(STAGES);
    }
    // Longest names first: "header-routing" before nothing shorter can shadow it.
    FILTERS.iter().copied().find(|f| {
        text.contains(&format!("portico-{f}"))
            || text.contains(&format!("{f}.wasm"))
            || text.contains(&format!("portico/{f}"))
    })
}

/// Parses YAML or JSON text, which may hold several YAML documents. A repeated key is refused
/// (YAML readers, like serde_json, would keep one of the two silently).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value = portico_core::json::deserialize(doc).map_err(|e| e.to_string())?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Every Portico filter configuration in `doc`, checked.
pub fn check_document(doc: &Value) -> Vec<Finding> {
    let mut findings = Vec::new();
    if doc.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let url = doc.pointer("/spec/url").and_then(Value::as_str).unwrap_or("");
        let filter = filter_named(&format!("portico-{name} {url}")).map(str::to_owned);
        let config = doc
            .pointer("/spec/pluginConfig")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let location = format!("WasmPlugin {name}");
        let text = config.to_string();
        findings.push(match filter {
            Some(filter) => {
                let mut finding = Clusters::Unknown("clusters are Istio's: cluster names not checked").finding(
                    &filter,
                    location,
                    read_filter(&filter, text.as_bytes()),
                );
                if let Some(field) = stops_at_headers(&filter, text.as_bytes()) {
                    finding.add_error(
                        &field,
                        "Istio's WasmPlugin cannot set the plugin field `allow_on_headers_stop_iteration`, so Envoy \
                         would never call the body callback of a held response and it would hang: leave this off \
                         (a backend's bad answer then reaches the client as a 200 with an error body)",
                    );
                }
                finding
            }
            None => unknown(location),
        });
        return findings;
    }
    walk(doc, "$", &Clusters::of_envoy(doc), &mut findings);
    check_chains(doc, "$", &mut findings);
    findings
}

// === Filter order ===

/// An order problem among Istio `WasmPlugin`s: the plugin (its `metadata.name`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderProblem {
    pub filter: &'static str,
    pub plugin: String,
    pub message: String,
}

/// Checks the order Istio gives the Portico `WasmPlugin`s among `docs` (all the manifests of
/// one deployment, which may come from several files): by `phase` (AUTHN, AUTHZ, STATS, then
/// unspecified, just before the router), then by descending `priority`. Auth must come before
/// every other Portico filter, and cache after header-routing and body-transform; two plugins
/// whose order matters must not share a phase and priority (Istio's order between them is
/// then undefined).
pub fn check_plugin_order(docs: &[&Value]) -> Vec<OrderProblem> {
    let mut plugins: Vec<(&'static str, String, (u8, i64))> = Vec::new();
    for doc in docs {
        if doc.get("kind").and_then(Value::as_str) != Some("WasmPlugin") {
            continue;
        }
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let url = doc.pointer("/spec/url").and_then(Value::as_str).unwrap_or("");
        let Some(filter) = filter_named(&format!("portico-{name} {url}")) else {
            continue;
        };
        let phase = match doc.pointer("/spec/phase").and_then(Value::as_str) {
            Some("AUTHN") => 0,
            Some("AUTHZ") => 1,
            Some("STATS") => 2,
            _ => 3,
        };
        let priority = doc.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(0);
        plugins.push((filter, name.to_owned(), (phase, -priority)));
    }
    let mut problems = Vec::new();
    let must_precede = |first: &str, then: &str| {
        first == "auth" && then != "auth" || matches!(first, "header-routing" | "body-transform") && then == "cache"
    };
    for (filter, name, rank) in &plugins {
        for (other, other_name, other_rank) in &plugins {
            if !must_precede(other, filter) {
                continue;
            }
            let message = if other_rank == rank {
                format!(
                    "has the same phase and priority as {other} (WasmPlugin {other_name}), so Istio may run it \
                     first; {other} must run before {filter}: give {other} an earlier phase or a higher priority"
                )
            } else if other_rank > rank {
                format!(
                    "runs before {other} (WasmPlugin {other_name}) by its phase and priority; {other} must run \
                     before {filter}: give {other} an earlier phase or a higher priority"
                )
            } else {
                continue;
            };
            problems.push(OrderProblem {
                filter,
                plugin: name.clone(),
                message,
            });
        }
    }
    problems
}

/// One entry of an HTTP filter chain, as far as order matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Portico(&'static str),
    JsonToMetadata,
    Other,
}

const JSON_TO_METADATA_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata";

/// Finds every connection manager (an object with `http_filters`) and checks what no single
/// filter's configuration can: that its Portico filters run in an order that works, and that
/// it refuses header names with `_`.
fn check_chains(node: &Value, path: &str, findings: &mut [Finding]) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(filters)) = map.get("http_filters") {
                check_chain(map, filters, path, findings);
            }
            for (k, v) in map {
                check_chains(v, &format!("{path}.{k}"), findings);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_chains(v, &format!("{path}[{i}]"), findings);
            }
        }
        _ => {}
    }
}

fn check_chain(hcm: &serde_json::Map<String, Value>, filters: &[Value], path: &str, findings: &mut [Finding]) {
    let at = |i: usize| format!("{path}.http_filters[{i}]");
    let links: Vec<Link> = filters
        .iter()
        .map(|f| {
            let typed = f.get("typed_config");
            match typed.and_then(|t| t.get("@type")).and_then(Value::as_str) {
                Some(WASM_TYPE) => typed
                    .and_then(|t| t.get("config"))
                    .and_then(|c| filter_named(&wasm_hint(c)))
                    .map_or(Link::Other, Link::Portico),
                Some(JSON_TO_METADATA_TYPE) => Link::JsonToMetadata,
                _ => Link::Other,
            }
        })
        .collect();
    let first = |link: Link| links.iter().position(|l| *l == link);
    let auth = first(Link::Portico("auth"));
    let json_to_metadata = first(Link::JsonToMetadata);
    // An error, or with `field` None a note (what may be fine in a fragment of a config).
    let mut add = |i: usize, field: Option<&str>, message: String| {
        let location = format!("{}.typed_config", at(i));
        if let Some(f) = findings.iter_mut().find(|f| f.location == location) {
            match field {
                Some(field) => f.add_error(field, message),
                None => f.notes.push(message),
            }
        }
    };
    for (i, link) in links.iter().enumerate() {
        let Link::Portico(filter) = *link else { continue };
        if let Some(a) = auth.filter(|a| filter != "auth" && *a > i) {
            add(
                i,
                Some("$"),
                format!(
                    "{filter} ({}) runs before auth ({}): auth must be the first Portico filter, since the others \
                     trust the identity headers it sets and removes",
                    at(i),
                    at(a)
                ),
            );
        }
        for later in ["header-routing", "body-transform"] {
            let after = links.iter().skip(i + 1).position(|l| *l == Link::Portico(later));
            if let Some(j) = after.filter(|_| filter == "cache").map(|n| i + 1 + n) {
                add(
                    i,
                    Some("$"),
                    format!(
                        "cache ({}) runs before {later} ({}): it must come after it, so that it keys on the request as \
                         it leaves for the upstream (backend, path and body)",
                        at(i),
                        at(j)
                    ),
                );
            }
        }
        if filter == "rate-limit" {
            let configuration = filters
                .get(i)
                .and_then(|f| f.pointer("/typed_config/config/configuration/value"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let Ok(config) = portico_rate_limit::config::Config::from_bytes(configuration.as_bytes()) else {
                continue;
            };
            let selectors = config
                .rules
                .iter()
                .enumerate()
                .map(|(n, r)| (format!("$.rules[{n}]"), &r.select))
                .chain(
                    config
                        .quotas
                        .iter()
                        .enumerate()
                        .map(|(n, q)| (format!("$.token_quotas[{n}]"), &q.select)),
                );
            for (rule, select) in selectors {
                use portico_rate_limit::config::KeyPart;
                let identity = select.key.iter().find_map(|k| match k {
                    KeyPart::Consumer => Some("consumer"),
                    KeyPart::Tier => Some("tier"),
                    _ => None,
                });
                let Some(part) = identity else { continue };
                match auth {
                    Some(a) if a < i => {}
                    Some(a) => add(
                        i,
                        Some(&format!("{rule}.key")),
                        format!(
                            "counts per {part}, but this rate-limit ({}) runs before auth ({}), which sets the \
                             {part}: every caller would share the anonymous bucket; put auth first",
                            at(i),
                            at(a)
                        ),
                    ),
                    // Perhaps another chain or an Istio plugin authenticates: say it, do not fail.
                    None => add(
                        i,
                        None,
                        format!(
                            "{rule}.key counts per {part}, but no Portico auth runs before this rate-limit in this \
                             chain: unless something else sets (and strips client copies of) {}{part}, every \
                             caller shares one bucket",
                            portico_core::contract::header::PREFIX
                        ),
                    ),
                }
            }
            if !config.quotas.is_empty() && json_to_metadata.is_none_or(|j| j > i) {
                add(
                    i,
                    Some("$.token_quotas[0]"),
                    format!(
                        "a token quota reads the request's `max_tokens` from the metadata json_to_metadata writes, but no \
                         envoy.filters.http.json_to_metadata runs before this rate-limit ({}): every request would be \
                         reserved the default estimate, whatever it asks for",
                        at(i)
                    ),
                );
            }
        }
    }
    let rejects = hcm
        .get("common_http_protocol_options")
        .and_then(|o| o.get("headers_with_underscores_action"))
        .and_then(Value::as_str)
        == Some("REJECT_REQUEST");
    if !rejects {
        if let Some(i) = links.iter().position(|l| matches!(l, Link::Portico(_))) {
            add(
                i,
                Some("$"),
                format!(
                    "the connection manager does not set `common_http_protocol_options.headers_with_underscores_action: \
                     REJECT_REQUEST` ({path}): CGI-style upstreams read `x_portico_consumer` as `x-portico-consumer`, \
                     an identity auth never set"
                ),
            );
        }
    }
}

/// The text that names a Wasm filter: its root id, plugin name and module file.
fn wasm_hint(config: &Value) -> String {
    let text = |p: &str| config.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{} {} {}",
        text("/root_id"),
        text("/name"),
        text("/vm_config/code/local/filename")
    )
}

fn unknown(location: String) -> Finding {
    let mut e = Errors::default();
    e.push(
        "$",
        "cannot tell which Portico filter this is (name it portico-<filter> or load dist/<filter>.wasm)",
    );
    Finding {
        filter: "?".to_owned(),
        location,
        result: Err(e),
        notes: Vec::new(),
    }
}

fn walk(node: &Value, path: &str, clusters: &Clusters, findings: &mut Vec<Finding>) {
    match node {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(WASM_TYPE) {
                if let Some(config) = map.get("config") {
                    findings.push(wasm_finding(config, path, clusters));
                }
                return;
            }
            for (k, v) in map {
                walk(v, &format!("{path}.{k}"), clusters, findings);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), clusters, findings);
            }
        }
        _ => {}
    }
}

fn wasm_finding(config: &Value, path: &str, clusters: &Clusters) -> Finding {
    let Some(filter) = filter_named(&wasm_hint(config)) else {
        return unknown(path.to_owned());
    };
    let configuration = match config.pointer("/configuration/value") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let mut finding = clusters.finding(filter, path.to_owned(), read_filter(filter, configuration.as_bytes()));
    let plugin_allows = matches!(config.get("allow_on_headers_stop_iteration"), Some(Value::Bool(true)))
        || config.pointer("/allow_on_headers_stop_iteration/value") == Some(&Value::Bool(true));
    if let Some(field) = stops_at_headers(filter, configuration.as_bytes()).filter(|_| !plugin_allows) {
        finding.add_error(
            &field,
            format!(
                "is true, but the plugin entry ({path}.config) does not set `allow_on_headers_stop_iteration: true` \
                 (Envoy >= 1.35): Envoy would never call the body callback of a held response and it would hang; \
                 set both or neither"
            ),
        );
    }
    finding
}

/// Where a valid configuration makes body-transform hold response headers (its own, or that of
/// a body-transform stage), which needs the plugin field `allow_on_headers_stop_iteration` as
/// well: the JSON path of the field that asks for it.
fn stops_at_headers(filter: &str, configuration: &[u8]) -> Option<String> {
    let holds = |configuration: &[u8]| {
        portico_body_transform::config::Config::from_bytes(configuration)
            .is_ok_and(|c| c.allow_on_headers_stop_iteration)
    };
    let field = "allow_on_headers_stop_iteration";
    match filter {
        "body-transform" => holds(configuration).then(|| format!("$.{field}")),
        STAGES => {
            let value = portico_core::config::parse_json(configuration).ok()?;
            let mut ignored = Errors::default();
            portico_host::stages::documents(&value, &["portico-body-transform"], &mut ignored)
                .into_iter()
                .find(|doc| holds(doc.config.to_string().as_bytes()))
                .map(|doc| format!("{}.{field}", doc.path))
        }
        _ => None,
    }
}

impl Finding {
    fn add_error(&mut self, path: &str, message: impl Into<String>) {
        match &mut self.result {
            Err(errors) => errors.push(path, message),
            Ok(()) => {
                let mut errors = Errors::default();
                errors.push(path, message);
                self.result = Err(errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVOY: &str = r#"
static_resources:
  listeners:
    - filter_chains:
        - filters:
            - typed_config:
                common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}
                http_filters:
                  - name: portico.auth
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        root_id: portico-auth
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: '{"api_keys": {"consumers": []}}'
                  - name: portico.rate_limit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        vm_config: {code: {local: {filename: dist/rate-limit.wasm}}}
                        configuration:
                          value: '{"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}]}'
"#;

    #[test]
    fn filters_are_found_in_envoy_configs_and_checked() {
        let docs = parse_documents(ENVOY).unwrap();
        let findings = check_document(&docs[0]);
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0].filter, "auth");
        assert_eq!(
            findings[0].result.as_ref().unwrap_err().to_string(),
            "$.api_keys.consumers: must list at least one consumer"
        );
        assert!(
            findings[0].location.ends_with(".http_filters[0].typed_config"),
            "{}",
            findings[0].location
        );
        assert_eq!(findings[1].filter, "rate-limit");
        assert!(findings[1].result.is_ok());
    }

    /// A `portico-stages` entry with `stages` as its configuration, in a config whose only
    /// cluster is `upstream`.
    fn stages_entry(stages: &serde_json::Value, plugin_field: &str) -> String {
        let value = serde_json::json!({ "stages": stages }).to_string();
        format!(
            r#"
static_resources:
  clusters: [{{name: upstream}}]
  listeners:
    - filter_chains:
        - filters:
            - typed_config:
                common_http_protocol_options: {{headers_with_underscores_action: REJECT_REQUEST}}
                http_filters:
                  - name: portico.stages
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        root_id: portico-stages
                        {plugin_field}
                        configuration:
                          value: '{value}'
"#
        )
    }

    #[test]
    fn a_stages_entry_checks_each_stage_as_its_own_entry_with_the_stage_path() {
        let stages = serde_json::json!([
            {"filter": "portico-auth", "config": {"api_keys": {"consumers": []}}},
            {"filter": "portico-rate-limit", "config": {"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}]}},
            {"filter": "portico-header-routing", "config": {"backends": [{"name": "a", "cluster": "nowhere"}],
                                                           "routes": [{"name": "all", "match": {"path": "/"}, "backend": "a"}]}},
            {"filter": "portico-nope", "config": {}}
        ]);
        let bare = check_filter(STAGES, serde_json::json!({ "stages": stages }).to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(
            bare,
            "$.stages[3].filter: \"portico-nope\" names no filter of this module (known: portico-auth, \
             portico-rate-limit, portico-header-routing, portico-body-transform, portico-cache); \
             $.stages[0].config.api_keys.consumers: must list at least one consumer"
        );
        let docs = parse_documents(&stages_entry(&stages, "")).unwrap();
        let findings = check_document(&docs[0]);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].filter, STAGES);
        assert_eq!(
            findings[0].result.as_ref().unwrap_err().to_string(),
            bare,
            "a stage's own errors first: the clusters are checked once every stage reads"
        );

        let valid = serde_json::json!([
            {"filter": "portico-auth", "config": {"api_keys": {"consumers": [{"name": "c", "keys": [{"sha256": "0".repeat(64)}]}]}}},
            {"filter": "portico-header-routing", "config": {"backends": [{"name": "a", "cluster": "nowhere"}],
                                                           "routes": [{"name": "all", "match": {"path": "/"}, "backend": "a"}]}},
            {"filter": "portico-body-transform", "config": {"allow_on_headers_stop_iteration": true, "routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]}}
        ]);
        let docs = parse_documents(&stages_entry(&valid, "")).unwrap();
        let err = check_document(&docs[0])[0].result.as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "$.stages[1].config.backends[0].cluster: no cluster \"nowhere\" in this config's static_resources.clusters; \
                 $.stages[2].config.allow_on_headers_stop_iteration: is true, but the plugin entry"
            ),
            "{err}"
        );
        let docs = parse_documents(&stages_entry(&valid, "allow_on_headers_stop_iteration: true")).unwrap();
        assert_eq!(
            check_document(&docs[0])[0].result.as_ref().unwrap_err().to_string(),
            "$.stages[1].config.backends[0].cluster: no cluster \"nowhere\" in this config's static_resources.clusters"
        );
    }

    #[test]
    fn wasm_plugin_manifests_are_checked_from_plugin_config() {
        let docs = parse_documents(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: header-routing}\nspec:\n  url: oci://r/portico/header-routing:1\n  pluginConfig: {routes: []}\n---\n",
        )
        .unwrap();
        let f = &check_document(&docs[0])[0];
        assert_eq!(f.filter, "header-routing");
        assert_eq!(
            f.result.as_ref().unwrap_err().to_string(),
            "$.routes: list at least one route"
        );
    }

    fn body_transform_entry(plugin_field: &str) -> String {
        format!(
            r#"
common_http_protocol_options: {{headers_with_underscores_action: REJECT_REQUEST}}
http_filters:
  - name: portico.body_transform
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
      config:
        root_id: portico-body-transform
        {plugin_field}
        configuration:
          value: '{{"allow_on_headers_stop_iteration": true, "routes": [{{"translate": "auto"}}]}}'
"#
        )
    }

    #[test]
    fn holding_response_headers_needs_the_plugin_field_too() {
        for agreeing in [
            "allow_on_headers_stop_iteration: true",
            "allow_on_headers_stop_iteration: {value: true}",
        ] {
            let docs = parse_documents(&body_transform_entry(agreeing)).unwrap();
            let f = &check_document(&docs[0])[0];
            assert!(f.result.is_ok(), "{agreeing}: {:?}", f.result);
        }
        for missing in ["", "allow_on_headers_stop_iteration: false"] {
            let docs = parse_documents(&body_transform_entry(missing)).unwrap();
            let f = &check_document(&docs[0])[0];
            let err = f.result.as_ref().unwrap_err().to_string();
            assert!(
                err.starts_with(
                    "$.allow_on_headers_stop_iteration: is true, but the plugin entry ($.http_filters[0].typed_config.config) \
                     does not set `allow_on_headers_stop_iteration: true`"
                ),
                "{missing:?}: {err}"
            );
        }
        let docs = parse_documents(
            "kind: WasmPlugin\nmetadata: {name: body-transform}\nspec:\n  url: oci://r/portico/body-transform:1\n  \
             pluginConfig: {allow_on_headers_stop_iteration: true, routes: [{translate: auto}]}\n",
        )
        .unwrap();
        let err = check_document(&docs[0])[0].result.as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("$.allow_on_headers_stop_iteration: Istio's WasmPlugin cannot set"),
            "{err}"
        );
    }

    #[test]
    fn a_repeated_key_in_any_filter_configuration_is_refused_with_its_path() {
        let config = r#"{"routes": [{"match": {"path": "/a"}, "type": "none", "type": "jwt"}]}"#;
        let docs = parse_documents(&ENVOY.replace(r#"{"api_keys": {"consumers": []}}"#, config)).unwrap();
        let err = check_document(&docs[0])[0].result.as_ref().unwrap_err().to_string();
        assert_eq!(
            err,
            "$.routes[0].type: repeated key: each key of an object may appear once"
        );
        for filter in FILTERS {
            let err = check_filter(filter, br#"{"a": 1, "a": 2}"#).unwrap_err().to_string();
            assert_eq!(
                err, "$.a: repeated key: each key of an object may appear once",
                "{filter}"
            );
        }
        let yaml = "kind: WasmPlugin\nmetadata: {name: auth}\nspec:\n  url: oci://r/portico/auth:1\n  pluginConfig: {routes: [], routes: []}\n";
        let err = parse_documents(yaml).unwrap_err();
        assert!(err.contains("the key $.spec.pluginConfig.routes is repeated"), "{err}");
    }

    /// An Envoy listener whose chain holds `filters` (names: auth, rate-limit, header-routing,
    /// body-transform, cache, json_to_metadata), with `hcm_extra` in its connection manager.
    fn chain(filters: &[&str], rate_limit: &str, hcm_extra: &str) -> String {
        let mut entries = String::new();
        for f in filters {
            let entry = match *f {
                "json_to_metadata" => "- name: envoy.filters.http.json_to_metadata\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata\n    request_rules: {rules: []}\n".to_owned(),
                filter => {
                    let config = match filter {
                        "auth" => r#"{"api_keys": {"consumers": [{"name": "a", "keys": [{"sha256": "507636717dd889c4aca6e55fac6880c0e096f0160c1c940da0564f39301c6537"}]}]}}"#,
                        "rate-limit" => rate_limit,
                        "header-routing" => r#"{"backends": [{"name": "a", "cluster": "a"}], "routes": [{"name": "r", "backend": "a"}]}"#,
                        "body-transform" => r#"{"routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]}"#,
                        _ => r#"{"routes": [{"name": "m", "match": {"path": "/v1/{*rest}"}, "ttl_seconds": 60, "scope": "consumer"}]}"#,
                    };
                    format!(
                        "- name: portico.{filter}\n  typed_config:\n    \"@type\": {WASM_TYPE}\n    config:\n      root_id: portico-{filter}\n      configuration:\n        value: '{config}'\n"
                    )
                }
            };
            for line in entry.lines() {
                entries.push_str(&format!("                  {line}\n"));
            }
        }
        format!(
            "static_resources:\n  listeners:\n    - filter_chains:\n        - filters:\n            - typed_config:\n                {hcm_extra}\n                http_filters:\n{entries}"
        )
    }

    const REJECT: &str = "common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}";
    const PER_CONSUMER: &str =
        r#"{"rules": [{"name": "r", "key": ["consumer"], "limit": {"requests": 1, "period_seconds": 1}}]}"#;
    const TOKENS: &str = r#"{"token_quotas": [{"name": "q", "key": ["consumer"], "budgets": [{"tokens": 100000, "period_seconds": 60}]}]}"#;

    fn chain_errors(filters: &[&str], rate_limit: &str, hcm_extra: &str) -> Vec<String> {
        let docs = parse_documents(&chain(filters, rate_limit, hcm_extra)).unwrap();
        check_document(&docs[0])
            .iter()
            .filter_map(|f| f.result.as_ref().err())
            .flat_map(|e| e.list().iter().map(ToString::to_string).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn a_chain_in_the_order_the_filters_need_passes() {
        let order = [
            "auth",
            "json_to_metadata",
            "rate-limit",
            "header-routing",
            "body-transform",
            "cache",
        ];
        assert_eq!(chain_errors(&order, TOKENS, REJECT), Vec::<String>::new());
        assert_eq!(chain_errors(&order, PER_CONSUMER, REJECT), Vec::<String>::new());
    }

    #[test]
    fn a_consumer_key_without_auth_in_the_chain_is_noted() {
        let docs = parse_documents(&chain(&["rate-limit"], PER_CONSUMER, REJECT)).unwrap();
        let f = &check_document(&docs[0])[0];
        assert!(f.result.is_ok(), "{:?}", f.result);
        assert!(
            f.notes[0]
                .starts_with("$.rules[0].key counts per consumer, but no Portico auth runs before this rate-limit"),
            "{:?}",
            f.notes
        );
    }

    #[test]
    fn filters_in_an_order_that_breaks_them_are_refused() {
        let hf = "$.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters";
        let cases: Vec<(Vec<&str>, &str, &str, String)> = vec![
            (
                vec!["rate-limit", "auth"],
                PER_CONSUMER,
                REJECT,
                format!("$.rules[0].key: counts per consumer, but this rate-limit ({hf}[0]) runs before auth ({hf}[1]), which sets the consumer: every caller would share the anonymous bucket; put auth first"),
            ),
            (
                vec!["auth", "rate-limit"],
                TOKENS,
                REJECT,
                format!("$.token_quotas[0]: a token quota reads the request's `max_tokens` from the metadata json_to_metadata writes, but no envoy.filters.http.json_to_metadata runs before this rate-limit ({hf}[1])"),
            ),
            (
                vec!["auth", "json_to_metadata", "cache", "header-routing"],
                PER_CONSUMER,
                REJECT,
                format!("$: cache ({hf}[2]) runs before header-routing ({hf}[3]): it must come after it, so that it keys on the request as it leaves for the upstream"),
            ),
            (
                vec!["auth", "cache", "body-transform"],
                PER_CONSUMER,
                REJECT,
                format!("$: cache ({hf}[1]) runs before body-transform ({hf}[2]): it must come after it"),
            ),
            (
                vec!["header-routing", "auth"],
                PER_CONSUMER,
                REJECT,
                format!("$: header-routing ({hf}[0]) runs before auth ({hf}[1]): auth must be the first Portico filter"),
            ),
            (
                vec!["auth"],
                PER_CONSUMER,
                "stat_prefix: x",
                "$: the connection manager does not set `common_http_protocol_options.headers_with_underscores_action: REJECT_REQUEST`".to_owned(),
            ),
        ];
        for (filters, rate_limit, hcm, want) in cases {
            let got = chain_errors(&filters, rate_limit, hcm);
            assert!(
                got.iter().any(|e| e.starts_with(&want)),
                "{filters:?}: want {want}\n got {got:#?}"
            );
        }
    }

    fn plugin(name: &str, phase: &str, priority: i64) -> Value {
        serde_json::json!({"kind": "WasmPlugin", "metadata": {"name": format!("portico-{name}")},
                           "spec": {"url": format!("oci://r/portico/{name}:1"), "phase": phase, "priority": priority}})
    }

    #[test]
    fn istio_plugins_must_run_in_the_order_the_filters_need() {
        let shipped = [
            plugin("auth", "AUTHN", 100),
            plugin("rate-limit", "AUTHZ", 300),
            plugin("header-routing", "AUTHZ", 200),
            plugin("body-transform", "AUTHZ", 100),
            plugin("cache", "AUTHZ", 10),
        ];
        assert_eq!(check_plugin_order(&shipped.iter().collect::<Vec<_>>()), Vec::new());
        let bad = [
            plugin("auth", "AUTHZ", 100),
            plugin("rate-limit", "AUTHZ", 300),
            plugin("header-routing", "AUTHZ", 5),
            plugin("cache", "AUTHZ", 5),
        ];
        let got: Vec<String> = check_plugin_order(&bad.iter().collect::<Vec<_>>())
            .into_iter()
            .map(|p| format!("{} {}: {}", p.filter, p.plugin, p.message))
            .collect();
        assert_eq!(
            got,
            vec![
                "rate-limit portico-rate-limit: runs before auth (WasmPlugin portico-auth) by its phase and priority; auth must run before rate-limit: give auth an earlier phase or a higher priority".to_owned(),
                "cache portico-cache: has the same phase and priority as header-routing (WasmPlugin portico-header-routing), so Istio may run it first; header-routing must run before cache: give header-routing an earlier phase or a higher priority".to_owned(),
            ]
        );
    }

    #[test]
    fn bare_configurations_need_the_filter_named() {
        assert!(check_filter("body-transform", br#"{"routes": [{"translate": "auto"}]}"#).is_ok());
        assert!(check_filter("nope", b"{}").is_err());
    }
}
