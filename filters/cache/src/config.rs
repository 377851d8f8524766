//! The cache filter's configuration, checked with JSON paths.

use portico_core::config::{read_bytes, read_value, Errors, Object, MAX_BODY_BYTES, MAX_PERIOD_SECONDS};
use portico_core::contract::header;
use portico_core::route::{RouteMatch, RouteTable};
use serde_json::Value;

/// Most slots one cache may use: each is a shared-data key that Envoy keeps for its lifetime.
const MAX_ENTRIES_LIMIT: u64 = 1 << 20;
/// Most bytes one cache may hold: shared data lives in Envoy's memory for its lifetime.
const MAX_BYTES_LIMIT: u64 = 1 << 30;

#[derive(Debug)]
pub struct Config {
    pub limits: Limits,
    /// Largest request body read to compute a key; larger requests are not cached.
    pub max_body_bytes: u64,
    /// The header header-routing names the chosen cluster in: part of every key.
    pub backend_header: String,
    pub routes: RouteTable<Rule>,
}

/// The bounds of the whole cache, shared by every route and worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Slots, and so the most entries held at once.
    pub max_entries: u32,
    /// Total bytes of stored entries (headers, body and bookkeeping).
    pub max_bytes: u64,
    /// An entry larger than this is never stored.
    pub max_entry_bytes: u64,
}

/// Whose requests may share an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Consumer,
    Tier,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Consumer => "consumer",
            Scope::Tier => "tier",
            Scope::Global => "global",
        }
    }
}

/// Which requests are safe to answer with an earlier response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// `temperature` is 0 in the body, or the client opted in.
    Deterministic,
    /// Only when the client opted in.
    OptIn,
    /// Every request (for backends that are deterministic, such as embeddings).
    Always,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub ttl_seconds: u64,
    pub scope: Scope,
    pub replay: Replay,
    /// A request header that, set to `1` or `true`, marks a request as safe to replay.
    pub opt_in_header: String,
    /// Request headers whose values are part of the key (lower-case).
    pub vary: Vec<String>,
}

impl Config {
    /// Parses and checks the plugin configuration bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, Errors> {
        read_bytes(bytes, read)
    }

    pub fn from_value(value: &Value) -> Result<Config, Errors> {
        read_value(value, read)
    }
}

fn read(mut root: Object<'_>, errors: &mut Errors) -> Config {
    let max_entries = root.opt_u64("max_entries", errors).unwrap_or(1000);
    if max_entries == 0 || max_entries > MAX_ENTRIES_LIMIT {
        root.field_error(
            "max_entries",
            errors,
            format!("must be between 1 and {MAX_ENTRIES_LIMIT}"),
        );
    }
    let max_bytes = root
        .opt_u64_in("max_bytes", 1..=MAX_BYTES_LIMIT, errors)
        .unwrap_or(64 << 20);
    // An entry is read whole into the VM's memory, like a body.
    let max_entry_bytes = root
        .opt_u64_in("max_entry_bytes", 1..=MAX_BODY_BYTES, errors)
        .unwrap_or(1 << 20);
    if max_entry_bytes > max_bytes {
        root.field_error(
            "max_entry_bytes",
            errors,
            format!("{max_entry_bytes} is more than max_bytes ({max_bytes}): no entry could be stored"),
        );
    }
    let max_body_bytes = root
        .opt_u64_in("max_body_bytes", 1..=MAX_BODY_BYTES, errors)
        .unwrap_or(1 << 20);
    let backend_header = root
        .opt("backend_header")
        .and_then(|n| n.header_name(errors))
        .unwrap_or_else(|| header::CLUSTER.to_owned());
    let mut rules = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let nodes = root.array("routes", errors);
    if nodes.is_empty() {
        root.field_error("routes", errors, "list at least one route");
    }
    for (i, node) in nodes.into_iter().enumerate() {
        let Some(mut obj) = node.object(errors) else { continue };
        let m = RouteMatch::parse_or_any(obj.opt("match"), errors);
        let name = obj
            .opt_str("name", errors)
            .map_or_else(|| format!("route{i}"), str::to_owned);
        // The name labels the route's metrics: two routes under one name would mix their counts.
        if names.contains(&name) {
            let at = if obj.opt("name").is_some() {
                format!("{}.name", obj.path())
            } else {
                obj.path().to_owned()
            };
            errors.push(
                &at,
                format!("duplicate route name {name:?} (a route without `name` is called route<index>)"),
            );
        }
        names.push(name.clone());
        let ttl_seconds = obj
            .opt_u64_in("ttl_seconds", 1..=MAX_PERIOD_SECONDS, errors)
            .unwrap_or(300);
        let scope = obj
            .opt("scope")
            .and_then(|n| n.one_of(&["consumer", "tier", "global"], errors))
            .map_or(Scope::Consumer, |i| match i {
                1 => Scope::Tier,
                2 => Scope::Global,
                _ => Scope::Consumer,
            });
        let replay = obj
            .opt("replay")
            .and_then(|n| n.one_of(&["deterministic", "opt_in", "always"], errors))
            .map_or(Replay::Deterministic, |i| match i {
                1 => Replay::OptIn,
                2 => Replay::Always,
                _ => Replay::Deterministic,
            });
        let opt_in_header = obj
            .opt("opt_in_header")
            .and_then(|n| n.header_name(errors))
            .unwrap_or_else(|| "x-portico-cache-replay".to_owned());
        let vary = match obj.opt("vary") {
            Some(n) => n
                .array(errors)
                .unwrap_or_default()
                .iter()
                .filter_map(|h| h.header_name(errors))
                .collect(),
            None => [
                "anthropic-version",
                "anthropic-beta",
                "openai-beta",
                "openai-organization",
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        obj.finish(errors);
        if let Some(m) = m {
            rules.push((
                node.path().to_owned(),
                m,
                Rule {
                    name,
                    ttl_seconds,
                    scope,
                    replay,
                    opt_in_header,
                    vary,
                },
            ));
        }
    }
    root.finish(errors);
    Config {
        limits: Limits {
            max_entries: u32::try_from(max_entries.clamp(1, MAX_ENTRIES_LIMIT)).unwrap_or(1),
            max_bytes,
            max_entry_bytes,
        },
        max_body_bytes,
        backend_header,
        routes: RouteTable::build_at(rules, errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(v: Value) -> Vec<String> {
        match Config::from_value(&v) {
            Ok(_) => Vec::new(),
            Err(e) => e.list().iter().map(|e| format!("{}: {}", e.path, e.message)).collect(),
        }
    }

    #[test]
    fn defaults_are_deterministic_consumer_scoped_five_minutes() {
        let c = Config::from_value(&json!({"routes": [{"match": {"path": "/v1/chat/completions"}}]})).unwrap();
        let rule = c.routes.get(0).unwrap();
        assert_eq!(rule.scope, Scope::Consumer);
        assert_eq!(rule.replay, Replay::Deterministic);
        assert_eq!(rule.ttl_seconds, 300);
        assert_eq!(rule.name, "route0");
        assert!(rule.vary.contains(&"anthropic-version".to_owned()));
        assert_eq!(
            c.limits,
            Limits {
                max_entries: 1000,
                max_bytes: 64 << 20,
                max_entry_bytes: 1 << 20
            }
        );
        assert_eq!(c.backend_header, "x-portico-cluster");
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let errors = errors_of(json!({
            "max_entries": 0,
            "max_bytes": 100,
            "max_entry_bytes": 1000,
            "routes": [{"scope": "team", "replay": "sometimes", "ttl_seconds": 0, "ttl": 5}]
        }));
        let joined = errors.join("\n");
        for want in [
            "$.max_entries: must be between 1",
            "$.max_entry_bytes: 1000 is more than max_bytes (100): no entry could be stored",
            "$.routes[0].scope",
            "$.routes[0].replay",
            "$.routes[0].ttl_seconds: must be between 1 and 31536000",
            "$.routes[0].ttl",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        assert!(errors_of(json!({})).iter().any(|e| e.starts_with("$.routes")));
    }

    #[test]
    fn zero_absurd_and_duplicate_settings_are_refused_with_their_paths() {
        let route = json!({"match": {"path": "/v1/chat/completions"}});
        let cases: Vec<(&str, Value, &str)> = vec![
            ("max_bytes 0", json!({"max_bytes": 0, "routes": [route]}), "$.max_bytes: must be between 1 and 1073741824"),
            (
                "max_bytes beyond 1 GiB",
                json!({"max_bytes": 1_u64 << 31, "routes": [route]}),
                "$.max_bytes: must be between 1 and 1073741824",
            ),
            (
                "max_entry_bytes 0",
                json!({"max_entry_bytes": 0, "routes": [route]}),
                "$.max_entry_bytes: must be between 1 and 67108864",
            ),
            (
                "max_entry_bytes above max_bytes",
                json!({"max_bytes": 1000, "max_entry_bytes": 1001, "routes": [route]}),
                "$.max_entry_bytes: 1001 is more than max_bytes (1000): no entry could be stored",
            ),
            (
                "max_body_bytes 0",
                json!({"max_body_bytes": 0, "routes": [route]}),
                "$.max_body_bytes: must be between 1 and 67108864",
            ),
            (
                "max_body_bytes beyond 64 MiB",
                json!({"max_body_bytes": u64::MAX, "routes": [route]}),
                "$.max_body_bytes: must be between 1 and 67108864",
            ),
            (
                "max_entries beyond the slots shared data can hold",
                json!({"max_entries": (1_u64 << 20) + 1, "routes": [route]}),
                "$.max_entries: must be between 1 and 1048576",
            ),
            (
                "ttl beyond 365 days",
                json!({"routes": [{"ttl_seconds": 31_536_001}]}),
                "$.routes[0].ttl_seconds: must be between 1 and 31536000",
            ),
            (
                "duplicate route names",
                json!({"routes": [{"name": "chat", "match": {"path": "/a"}}, {"name": "chat", "match": {"path": "/b"}}]}),
                "$.routes[1].name: duplicate route name \"chat\" (a route without `name` is called route<index>)",
            ),
            (
                "a name that an unnamed route already has",
                json!({"routes": [{"name": "route1", "match": {"path": "/a"}}, {"match": {"path": "/b"}}]}),
                "$.routes[1]: duplicate route name \"route1\" (a route without `name` is called route<index>)",
            ),
            (
                "vary header that can never be present",
                json!({"routes": [{"vary": ["openai beta"]}]}),
                "$.routes[0].vary[0]: header name \"openai beta\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "opt-in header that can never be present",
                json!({"routes": [{"opt_in_header": "x replay"}]}),
                "$.routes[0].opt_in_header: header name \"x replay\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "backend header that can never be present",
                json!({"backend_header": "x:cluster", "routes": [{}]}),
                "$.backend_header: header name \"x:cluster\" contains ':', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
        ];
        for (name, config, want) in cases {
            assert_eq!(errors_of(config).join("; "), want, "case: {name}");
        }
    }
}

#[cfg(test)]
mod route_path_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_competing_route_after_a_bad_entry_is_named_by_its_own_index() {
        let v = json!({"routes": [3, {"match": {"path": "/a"}}, {"match": {"path": "/a"}}]});
        let errors = Config::from_value(&v).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            errors.contains("$.routes[2]: competes with $.routes[1]"),
            "wrong paths in:\n{errors}"
        );
    }
}
