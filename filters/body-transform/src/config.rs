//! The body-transform filter's configuration, checked with JSON paths.

use portico_core::config::{read_bytes, read_value, Errors, Node, Object, BODY_LIMIT_MOVED, MAX_TOKENS};
use portico_core::header::{write_problem, Reserved, Writer};
use portico_core::refusal::RefusalLog;
use portico_core::route::{RouteMatch, RouteTable};
use serde_json::Value;

use crate::ops::{BodyOp, HeaderOps, Pointer, Source};

#[derive(Debug)]
pub struct Config {
    /// Hold the response headers of an answer that is rewritten whole until its body is read,
    /// so an answer that cannot be translated becomes a 502 instead of a 200 with an error
    /// body. Needs the plugin field of the same name (Envoy >= 1.35): without it Envoy would
    /// never call the body callback and the response would hang (`portico check` compares).
    pub allow_on_headers_stop_iteration: bool,
    /// Anthropic requires `max_tokens`; used when an OpenAI request gives none.
    pub default_max_tokens: u64,
    pub routes: RouteTable<Rule>,
    pub refusal_log: RefusalLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translate {
    None,
    OpenAiToAnthropic,
    AnthropicToOpenAi,
    /// From the client's path and header-routing's backend-format header.
    Auto,
}

#[derive(Debug, Default)]
pub struct Side {
    pub headers: HeaderOps,
    pub body: Vec<BodyOp>,
}

#[derive(Debug)]
pub struct Rule {
    pub translate: Translate,
    pub require_json: bool,
    pub request: Side,
    pub response: Side,
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
    root.removed("max_body_bytes", errors, BODY_LIMIT_MOVED);
    let allow_on_headers_stop_iteration = root
        .opt_bool("allow_on_headers_stop_iteration", errors)
        .unwrap_or(false);
    let refusal_log = RefusalLog::read(&mut root, errors);
    let default_max_tokens = root
        .opt_u64_in("default_max_tokens", 1..=MAX_TOKENS, errors)
        .unwrap_or(4096);
    let mut rules = Vec::new();
    let nodes = root.array("routes", errors);
    if nodes.is_empty() {
        root.field_error("routes", errors, "list at least one route");
    }
    for node in nodes {
        let Some(mut obj) = node.object(errors) else { continue };
        let m = RouteMatch::parse_or_any(obj.opt("match"), errors);
        let translate = obj
            .opt("translate")
            .and_then(|n| n.one_of(&["none", "openai_to_anthropic", "anthropic_to_openai", "auto"], errors))
            .map_or(Translate::None, |i| match i {
                1 => Translate::OpenAiToAnthropic,
                2 => Translate::AnthropicToOpenAi,
                3 => Translate::Auto,
                _ => Translate::None,
            });
        let require_json = obj.opt_bool("require_json", errors).unwrap_or(false);
        let request = obj.opt("request").map(|n| read_side(&n, errors)).unwrap_or_default();
        let response = obj.opt("response").map(|n| read_side(&n, errors)).unwrap_or_default();
        obj.finish(errors);
        if let Some(m) = m {
            rules.push((
                node.path().to_owned(),
                m,
                Rule {
                    translate,
                    require_json,
                    request,
                    response,
                },
            ));
        }
    }
    root.finish(errors);
    Config {
        allow_on_headers_stop_iteration,
        default_max_tokens,
        routes: RouteTable::build_at(rules, errors),
        refusal_log,
    }
}

fn read_side(node: &Node<'_>, errors: &mut Errors) -> Side {
    let Some(mut obj) = node.object(errors) else {
        return Side::default();
    };
    let headers = obj.opt("headers").map(|n| read_headers(&n, errors)).unwrap_or_default();
    let body = obj
        .array("body", errors)
        .iter()
        .filter_map(|n| read_op(n, errors))
        .collect();
    obj.finish(errors);
    Side { headers, body }
}

/// Why a header operation must not write `name` (add, set, or rename into it), if it must not:
/// what any header operation may not change, and, as in header-routing, a reserved header
/// (identity, credential, forwarding, `x-envoy-`), on requests and responses alike. Removing a
/// reserved header stays allowed (only [`write_problem`] applies): stripping a client's
/// credential or forwarding headers before a backend is what an operator may need.
fn written_problem(name: &str) -> Option<String> {
    write_problem(name, Writer::Operation).or_else(|| {
        Reserved::of(name).map(|r| match r {
            Reserved::Credential => format!(
                "{}: inject a backend's credential with header-routing's `credential`",
                r.problem(name)
            ),
            _ => r.problem(name),
        })
    })
}

/// Header name to value (`add`, `set`), or old name to new name (`rename`: `renames`). Every
/// name written is one a header operation may write ([`written_problem`]), every value one that
/// cannot split the message; a renamed header may be any a header operation may remove.
fn pairs(node: Option<Node<'_>>, renames: bool, errors: &mut Errors) -> Vec<(String, String)> {
    let Some(mut obj) = node.and_then(|n| n.object(errors)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in obj.entries() {
        let value = if renames {
            let name_ok = v.report(write_problem(k, Writer::Operation), errors);
            v.non_empty_str(errors)
                .filter(|to| v.report(written_problem(to), errors))
                .map(str::to_ascii_lowercase)
                .filter(|_| name_ok)
        } else {
            let name_ok = v.report(written_problem(k), errors);
            v.header_value(errors).filter(|_| name_ok)
        };
        if let Some(value) = value {
            out.push((k.to_ascii_lowercase(), value));
        }
    }
    obj.finish(errors);
    out
}

fn read_headers(node: &Node<'_>, errors: &mut Errors) -> HeaderOps {
    let Some(mut obj) = node.object(errors) else {
        return HeaderOps::default();
    };
    let ops = HeaderOps {
        add: pairs(obj.opt("add"), false, errors),
        set: pairs(obj.opt("set"), false, errors),
        remove: obj
            .array("remove", errors)
            .iter()
            .filter_map(|n| n.writable_header_name(Writer::Operation, errors))
            .collect(),
        rename: pairs(obj.opt("rename"), true, errors),
    };
    obj.finish(errors);
    ops
}

fn pointer(node: Option<Node<'_>>, errors: &mut Errors) -> Option<Pointer> {
    let node = node?;
    let text = node.str(errors)?;
    Pointer::parse(text).map_err(|why| node.error(errors, why)).ok()
}

fn read_op(node: &Node<'_>, errors: &mut Errors) -> Option<BodyOp> {
    let mut obj = node.object(errors)?;
    let op = obj
        .req("op", errors)
        .and_then(|n| n.one_of(&["set", "remove", "rename"], errors));
    let path = obj.req("path", errors);
    let path = pointer(path, errors);
    let value = obj.opt("value").map(|n| n.value().clone());
    // Present (outer) and valid (inner) apart, so a bad name is reported once, by itself.
    let from_header = obj.opt("from_header").map(|n| n.header_name(errors));
    // Present (outer) and valid (inner) apart, so a bad `from` is not also reported missing.
    let from = obj.opt("from").map(|n| pointer(Some(n), errors));
    obj.finish(errors);
    match (op?, path?) {
        (0, path) => match (value, from_header) {
            (Some(v), None) => Some(BodyOp::Set(path, Source::Value(v))),
            (None, Some(h)) => h.map(|h| BodyOp::Set(path, Source::Header(h))),
            _ => {
                node.error(errors, "`set` takes exactly one of `value` or `from_header`");
                None
            }
        },
        (1, path) => Some(BodyOp::Remove(path)),
        (_, path) => match from {
            Some(from) => from.map(|from| BodyOp::Rename(from, path)),
            None => {
                node.error(errors, "`rename` needs `from`");
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(v: &Value) -> String {
        Config::from_value(v).err().map(|e| e.to_string()).unwrap_or_default()
    }

    fn route(side: &str, headers: Value) -> Value {
        json!({"routes": [{side: {"headers": headers}}]})
    }

    #[test]
    fn every_refused_configuration_names_its_path_and_reason() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "adding a forwarding header to a request",
                route("request", json!({"add": {"X-Forwarded-For": "10.0.0.1"}})),
                "$.routes[0].request.headers.add[\"X-Forwarded-For\"]: \"x-forwarded-for\" describes the client connection (forwarding headers)",
            ),
            (
                "setting a credential on a request",
                route("request", json!({"set": {"authorization": "Bearer x"}})),
                "$.routes[0].request.headers.set.authorization: \"authorization\" carries a credential: inject a backend's credential with header-routing's `credential`",
            ),
            (
                "setting an x-envoy- header on a response",
                route("response", json!({"set": {"x-envoy-ratelimited": "true"}})),
                "$.routes[0].response.headers.set[\"x-envoy-ratelimited\"]: \"x-envoy-ratelimited\" steers Envoy (x-envoy- headers)",
            ),
            (
                "renaming a header into x-real-ip",
                route("request", json!({"rename": {"x-client": "x-real-ip"}})),
                "$.routes[0].request.headers.rename[\"x-client\"]: \"x-real-ip\" describes the client connection (forwarding headers)",
            ),
            (
                "adding via to a response",
                route("response", json!({"add": {"via": "1.1 portico"}})),
                "$.routes[0].response.headers.add.via: \"via\" describes the client connection (forwarding headers)",
            ),
            (
                "a body pointer with ~2, which is no escape",
                json!({"routes": [{"request": {"body": [{"op": "remove", "path": "/a~2b"}]}}]}),
                "$.routes[0].request.body[0].path: not a JSON Pointer (RFC 6901): ~2 in \"a~2b\" is no escape (write ~0 for '~' and ~1 for '/')",
            ),
            (
                "a rename source ending in ~",
                json!({"routes": [{"response": {"body": [{"op": "rename", "path": "/b", "from": "/a~"}]}}]}),
                "$.routes[0].response.body[0].from: not a JSON Pointer (RFC 6901): ~ at the end in \"a~\" is no escape (write ~0 for '~' and ~1 for '/')",
            ),
            (
                "response header value with CR LF (response splitting)",
                route("response", json!({"set": {"x-a": "a\r\nb"}})),
                "$.routes[0].response.headers.set[\"x-a\"]: header value contains '\\r', a control character HTTP does not allow in a value (CR and LF would split the message)",
            ),
            (
                "request header value with NUL",
                route("request", json!({"add": {"x-a": "a\u{0}"}})),
                "$.routes[0].request.headers.add[\"x-a\"]: header value contains '\\0', a control character HTTP does not allow in a value (CR and LF would split the message)",
            ),
            (
                "header name with a space",
                route("request", json!({"add": {"x a": "1"}})),
                "$.routes[0].request.headers.add[\"x a\"]: header name \"x a\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "removing :path",
                route("request", json!({"remove": [":path"]})),
                "$.routes[0].request.headers.remove[0]: \":path\" is a pseudo-header, which header operations cannot change: change the path with header-routing's `rewrite` or `path_prefix`",
            ),
            (
                "removing :status",
                route("response", json!({"remove": [":status"]})),
                "$.routes[0].response.headers.remove[0]: \":status\" is a pseudo-header, which header operations cannot change",
            ),
            (
                "setting :method",
                route("request", json!({"set": {":method": "DELETE"}})),
                "$.routes[0].request.headers.set[\":method\"]: \":method\" is a pseudo-header, which header operations cannot change",
            ),
            (
                "renaming :authority",
                route("request", json!({"rename": {":authority": "x-host"}})),
                "$.routes[0].request.headers.rename[\":authority\"]: \":authority\" is the request's authority, which header operations cannot change: use header-routing's `host_rewrite`",
            ),
            (
                "renaming into :scheme",
                route("request", json!({"rename": {"x-scheme": ":scheme"}})),
                "$.routes[0].request.headers.rename[\"x-scheme\"]: \":scheme\" is a pseudo-header, which header operations cannot change",
            ),
            (
                "renaming into a name with a space",
                route("response", json!({"rename": {"x-old": "x new"}})),
                "$.routes[0].response.headers.rename[\"x-old\"]: header name \"x new\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "setting content-length",
                route("response", json!({"set": {"content-length": "5"}})),
                "$.routes[0].response.headers.set[\"content-length\"]: \"content-length\" frames the message or manages the connection, which Envoy owns: header operations cannot change it",
            ),
            (
                "adding connection",
                route("request", json!({"add": {"Connection": "close"}})),
                "$.routes[0].request.headers.add.Connection: \"connection\" frames the message or manages the connection, which Envoy owns: header operations cannot change it",
            ),
            (
                "setting the tier auth set",
                route("request", json!({"set": {"x-portico-tier": "pro"}})),
                "$.routes[0].request.headers.set[\"x-portico-tier\"]: \"x-portico-tier\" is Portico's own header (x-portico- headers carry identity and routing between its filters): header operations cannot change it",
            ),
            (
                "removing the cache status rate-limit reads",
                route("response", json!({"remove": ["x-portico-cache"]})),
                "$.routes[0].response.headers.remove[0]: \"x-portico-cache\" is Portico's own header (x-portico- headers carry identity and routing between its filters): header operations cannot change it",
            ),
            (
                "from_header that can never be present",
                json!({"routes": [{"request": {"body": [{"op": "set", "path": "/u", "from_header": "x user"}]}}]}),
                "$.routes[0].request.body[0].from_header: header name \"x user\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "max_body_bytes, which Envoy's buffer limit made unreachable",
                json!({"max_body_bytes": 8_388_608, "routes": [{}]}),
                "$.max_body_bytes: no longer supported: the request body limit is Envoy's buffer limit: raise it with `request_body_buffer_limit` on the Envoy route or virtual host, lower it with the listener's `per_connection_buffer_limit_bytes` (larger bodies get 413 `body_too_large`)",
            ),
            (
                "allow_on_headers_stop_iteration that is not a boolean",
                json!({"allow_on_headers_stop_iteration": "yes", "routes": [{}]}),
                "$.allow_on_headers_stop_iteration: expected true or false",
            ),
            (
                "default_max_tokens of 0 (Anthropic refuses max_tokens 0)",
                json!({"default_max_tokens": 0, "routes": [{}]}),
                "$.default_max_tokens: must be between 1 and 1000000",
            ),
            (
                "absurd default_max_tokens",
                json!({"default_max_tokens": u64::MAX, "routes": [{}]}),
                "$.default_max_tokens: must be between 1 and 1000000",
            ),
        ];
        for (name, config, want) in cases {
            assert_eq!(errors_of(&config), want, "case: {name}");
        }
    }

    #[test]
    fn valid_header_operations_are_kept_lower_cased() {
        let c = Config::from_value(&json!({"routes": [{"request": {"headers": {
            "add": {"X-A": "1"}, "set": {"x-b": "tab\tok"}, "remove": ["X-Debug"], "rename": {"X-Old": "X-New"}
        }}, "response": {"headers": {"set": {"cache-control": "no-store"}}}}]}))
        .unwrap_or_else(|e| panic!("{e}"));
        let rule = c.routes.get(0).unwrap_or_else(|| panic!("no rule"));
        assert_eq!(
            rule.request.headers,
            HeaderOps {
                add: vec![("x-a".into(), "1".into())],
                set: vec![("x-b".into(), "tab\tok".into())],
                remove: vec!["x-debug".into()],
                rename: vec![("x-old".into(), "x-new".into())],
            }
        );
        assert_eq!(
            rule.response.headers.set,
            vec![("cache-control".into(), "no-store".into())]
        );
    }
}

#[cfg(test)]
mod route_path_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn removing_or_renaming_away_a_reserved_header_stays_allowed() {
        let v = json!({"routes": [{"request": {"headers": {
            "remove": ["authorization", "x-forwarded-for", "x-envoy-original-path"],
            "rename": {"cookie": "x-client-cookie"}
        }}}]});
        let config = Config::from_value(&v).map_err(|e| e.to_string());
        let headers = config
            .as_ref()
            .ok()
            .and_then(|c| c.routes.get(0))
            .map(|r| r.request.headers.clone());
        assert_eq!(
            headers.map(|h| (h.remove, h.rename)),
            Some((
                vec![
                    "authorization".to_owned(),
                    "x-forwarded-for".to_owned(),
                    "x-envoy-original-path".to_owned()
                ],
                vec![("cookie".to_owned(), "x-client-cookie".to_owned())]
            )),
            "{config:?}"
        );
    }

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
