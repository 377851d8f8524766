//! The cache filter's configuration, checked with JSON paths.

use portico_core::config::{read_bytes, read_value, Errors, Object};
use portico_core::route::{RouteMatch, RouteTable};
use serde_json::Value;

/// Most slots one cache may use: each is a shared-data key that Envoy keeps for its lifetime.
const MAX_ENTRIES_LIMIT: u64 = 1 << 20;

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
    /// `temperature` absent or 0, or the client opted in.
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
    let max_bytes = root.opt_u64("max_bytes", errors).unwrap_or(64 << 20);
    let max_entry_bytes = root.opt_u64("max_entry_bytes", errors).unwrap_or(1 << 20);
    if max_entry_bytes == 0 || max_entry_bytes > max_bytes {
        root.field_error("max_entry_bytes", errors, "must be at least 1 and at most max_bytes");
    }
    let max_body_bytes = root.opt_u64("max_body_bytes", errors).unwrap_or(1 << 20);
    let backend_header = root
        .opt_str("backend_header", errors)
        .unwrap_or("x-portico-cluster")
        .to_ascii_lowercase();
    let mut rules = Vec::new();
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
        let ttl_seconds = obj.opt_u64("ttl_seconds", errors).unwrap_or(300);
        if ttl_seconds == 0 {
            obj.field_error("ttl_seconds", errors, "must be at least 1");
        }
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
            .opt_str("opt_in_header", errors)
            .unwrap_or("x-portico-cache-replay")
            .to_ascii_lowercase();
        let vary = match obj.opt("vary") {
            Some(n) => n
                .string_list(errors)
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
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
        routes: RouteTable::build(rules, |i| format!("$.routes[{i}]"), errors),
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
            "$.max_entry_bytes: must be at least 1 and at most max_bytes",
            "$.routes[0].scope",
            "$.routes[0].replay",
            "$.routes[0].ttl_seconds: must be at least 1",
            "$.routes[0].ttl",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        assert!(errors_of(json!({})).iter().any(|e| e.starts_with("$.routes")));
    }
}
