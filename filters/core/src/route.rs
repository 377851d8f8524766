//! Request matching shared by every filter: a `matchit` path pattern, methods and hosts.
//!
//! Semantics, the same in every filter:
//! - the most specific path pattern that matches wins (matchit's rule: static segments beat
//!   `{param}`, which beats `{*catch_all}`);
//! - among the rules with that pattern, and then among rules with no `path`, the one whose
//!   methods and hosts match wins; two rules with the same pattern (or both without one) must
//!   not overlap in methods and hosts, so there is never more than one, whatever the order;
//! - a pattern ending in `/{*name}` also matches the bare prefix (`/public/{*rest}` matches
//!   `/public` and `/public/`), which is what "everything under /public" means to people; a
//!   rule written with that exact prefix still wins there.

use std::collections::BTreeMap;

use matchit::Router;

use crate::config::{Errors, Node, Object};
use crate::request::RequestView;

/// The conditions of one rule, as configured under `match`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// A matchit pattern such as `/v1/users/{id}`; `None` matches every path.
    pub path: Option<String>,
    /// Upper-case methods; empty matches every method.
    pub methods: Vec<String>,
    /// Lower-case hosts without port; empty matches every host.
    pub hosts: Vec<String>,
}

impl RouteMatch {
    /// Reads `{"path": "...", "methods": [...], "hosts": [...]}`.
    pub fn parse(node: &Node<'_>, errors: &mut Errors) -> Option<Self> {
        let mut obj = node.object(errors)?;
        let m = Self::read_fields(&mut obj, errors);
        obj.finish(errors);
        Some(m)
    }

    /// Reads an optional `match`: absent, it matches every request.
    pub fn parse_or_any(node: Option<Node<'_>>, errors: &mut Errors) -> Option<Self> {
        match node {
            Some(n) => Self::parse(&n, errors),
            None => Some(Self::default()),
        }
    }

    /// Reads `path`, `methods` and `hosts` from a `match` object that may hold more fields
    /// (a filter's own conditions); the caller finishes the object.
    pub fn read_fields(obj: &mut Object<'_>, errors: &mut Errors) -> Self {
        let path = obj.opt_str("path", errors).map(str::to_owned);
        if let Some(p) = &path {
            if !p.starts_with('/') {
                obj.field_error("path", errors, "must start with '/'");
            }
        }
        let methods = obj
            .string_list("methods", errors)
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let hosts = obj
            .string_list("hosts", errors)
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Self { path, methods, hosts }
    }

    /// Whether some request could meet both `self` and `other` as far as methods and hosts go
    /// (an empty list means every method or host).
    fn overlaps(&self, other: &RouteMatch) -> bool {
        let meet = |a: &[String], b: &[String]| a.is_empty() || b.is_empty() || a.iter().any(|x| b.contains(x));
        meet(&self.methods, &other.methods) && meet(&self.hosts, &other.hosts)
    }

    /// `host` is computed only for rules that list hosts: most do not, and it allocates.
    fn accepts(&self, method: &str, host: &mut Option<String>, request: &RequestView) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if self.hosts.is_empty() {
            return true;
        }
        let host = host.get_or_insert_with(|| request.host());
        self.hosts.iter().any(|h| h == host)
    }
}

/// The most `{` a path pattern may hold, and so the most parameters. matchit names a pattern's
/// parameters `a` to `z` internally and panics on the 26th, and with escaped braces (`{{`) it
/// can count more parameters than a reading of the pattern finds: every parameter starts at a
/// `{`, so bounding the braces bounds them whatever matchit counts. No API path needs more than
/// a few, and a URL path carries no literal brace.
pub const MAX_PATH_PARAMS: usize = 16;

/// Rules compiled for lookup. `T` is the filter's own per-rule configuration.
#[derive(Debug)]
pub struct RouteTable<T> {
    rules: Vec<(RouteMatch, T)>,
    /// Pattern to the indexes of the rules that use it, in configuration order.
    router: Router<Vec<usize>>,
    /// Indexes of the rules without a path, in configuration order.
    any_path: Vec<usize>,
}

/// The rule that matched a request.
#[derive(Debug)]
pub struct Matched<'t, T> {
    pub index: usize,
    pub rule: &'t T,
    /// The configured pattern, usable as a low-cardinality label (`None`: rule without path).
    pub pattern: Option<&'t str>,
}

impl<T> RouteTable<T> {
    /// Compiles `rules`. A pattern matchit rejects is reported at `<path_of(i)>.match.path`; two
    /// rules that compete for the same requests (see [`check_competing`]) at
    /// `<path_of(i)>` of the later one.
    pub fn build(rules: Vec<(RouteMatch, T)>, path_of: impl Fn(usize) -> String, errors: &mut Errors) -> Self {
        check_competing(&rules, &path_of, errors);
        // Per pattern: the rules written with it, then the catch-alls that also match it as
        // their bare prefix, so `/public` beats `/public/{*rest}` on `/public` in any order.
        let mut by_pattern: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        let mut any_path = Vec::new();
        for (i, (m, _)) in rules.iter().enumerate() {
            let Some(pattern) = &m.path else {
                any_path.push(i);
                continue;
            };
            // Its bare prefix, if it has one, holds fewer: checking the pattern is enough.
            if pattern.matches('{').count() > MAX_PATH_PARAMS {
                errors.push(
                    &format!("{}.match.path", path_of(i)),
                    format!(
                        "invalid path pattern {pattern:?}: more than {MAX_PATH_PARAMS} `{{` (a pattern holds at \
                         most {MAX_PATH_PARAMS} parameters)"
                    ),
                );
                continue;
            }
            by_pattern.entry(pattern.clone()).or_default().0.push(i);
            if let Some(prefix) = catch_all_prefix(pattern) {
                by_pattern.entry(format!("{prefix}/")).or_default().1.push(i);
                if !prefix.is_empty() {
                    by_pattern.entry(prefix.to_owned()).or_default().1.push(i);
                }
            }
        }
        let mut router = Router::new();
        for (pattern, (written, implied)) in by_pattern {
            let mut indexes = written;
            for i in implied {
                if !indexes.contains(&i) {
                    indexes.push(i);
                }
            }
            let first = indexes.first().copied().unwrap_or_default();
            if let Err(e) = router.insert(pattern.clone(), indexes) {
                errors.push(
                    &format!("{}.match.path", path_of(first)),
                    format!("invalid path pattern {pattern:?}: {e}"),
                );
            }
        }
        Self {
            rules,
            router,
            any_path,
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rule at `index` (as in [`Matched::index`]).
    pub fn get(&self, index: usize) -> Option<&T> {
        self.rules.get(index).map(|(_, rule)| rule)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that matches the request, per the module's semantics.
    pub fn find(&self, request: &RequestView) -> Option<Matched<'_, T>> {
        let method = request.method();
        let mut host = None;
        let by_path = self.router.at(request.path()).ok().map(|m| m.value.as_slice());
        by_path
            .unwrap_or_default()
            .iter()
            .chain(self.any_path.iter())
            .find_map(|&index| {
                let (m, rule) = self.rules.get(index)?;
                m.accepts(method, &mut host, request).then_some(Matched {
                    index,
                    rule,
                    pattern: m.path.as_deref(),
                })
            })
    }
}

/// One rule's conditions, compiled: for filters where every matching rule applies.
#[derive(Debug)]
pub struct Matcher(RouteTable<()>);

impl Matcher {
    /// Compiles `m`; a bad pattern is reported at `<path>.match.path`.
    pub fn new(m: RouteMatch, path: &str, errors: &mut Errors) -> Self {
        Matcher(RouteTable::build(vec![(m, ())], |_| path.to_owned(), errors))
    }

    pub fn matches(&self, request: &RequestView) -> bool {
        self.0.find(request).is_some()
    }

    /// The captured path parameters (`{id}`, `{*rest}`) when the request matches.
    pub fn capture(&self, request: &RequestView) -> Option<Vec<(String, String)>> {
        let (m, _) = self.0.rules.first()?;
        if !m.accepts(request.method(), &mut None, request) {
            return None;
        }
        if m.path.is_none() {
            return Some(Vec::new());
        }
        let found = self.0.router.at(request.path()).ok()?;
        Some(found.params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    /// The configured path pattern, if any.
    pub fn pattern(&self) -> Option<&str> {
        self.0.rules.first().and_then(|(m, _)| m.path.as_deref())
    }
}

/// Refuses two rules with the same path pattern (or both without one) whose methods and hosts
/// overlap: on the overlap the earlier always wins, so the later one is partly or wholly dead,
/// which is how a public rule silently shadows a protected one written after it. With this
/// check, at most one rule per pattern matches any request, whatever the configuration order.
fn check_competing<T>(rules: &[(RouteMatch, T)], path_of: &impl Fn(usize) -> String, errors: &mut Errors) {
    for (later, (m, _)) in rules.iter().enumerate() {
        let earlier = rules
            .iter()
            .take(later)
            .position(|(e, _)| e.path == m.path && e.overlaps(m));
        if let Some(earlier) = earlier {
            let pattern = m
                .path
                .as_deref()
                .map_or_else(|| "no path".to_owned(), |p| format!("path {p:?}"));
            errors.push(
                &path_of(later),
                format!(
                    "competes with {} ({pattern}, overlapping methods and hosts): the earlier rule \
                     would always win; give them disjoint methods or hosts, or merge them",
                    path_of(earlier)
                ),
            );
        }
    }
}

/// `/a/b` for `/a/b/{*rest}`.
fn catch_all_prefix(pattern: &str) -> Option<&str> {
    let (prefix, last) = pattern.rsplit_once('/')?;
    (last.starts_with("{*") && last.ends_with('}')).then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(method: &str, path: &str, host: &str) -> RequestView {
        RequestView::new(vec![
            (":method".into(), method.as_bytes().to_vec()),
            (":path".into(), path.as_bytes().to_vec()),
            (":authority".into(), host.as_bytes().to_vec()),
        ])
    }

    fn table(rules: serde_json::Value) -> RouteTable<&'static str> {
        let names = ["r0", "r1", "r2", "r3", "r4"];
        let mut errors = Errors::default();
        let parsed: Vec<_> = rules
            .as_array()
            .unwrap()
            .iter()
            .zip(names)
            .map(|(v, name)| (RouteMatch::parse(&Node::new("$".into(), v), &mut errors).unwrap(), name))
            .collect();
        let t = RouteTable::build(parsed, |i| format!("$.routes[{i}]"), &mut errors);
        assert!(errors.is_empty(), "{errors}");
        t
    }

    fn found(t: &RouteTable<&'static str>, method: &str, path: &str, host: &str) -> Option<&'static str> {
        t.find(&req(method, path, host)).map(|m| *m.rule)
    }

    #[test]
    fn most_specific_pattern_wins() {
        let t = table(json!([{"path": "/{*rest}"}, {"path": "/public/{*rest}"}, {"path": "/users/{id}"}]));
        assert_eq!(found(&t, "GET", "/public/x", "h"), Some("r1"));
        assert_eq!(found(&t, "GET", "/users/7", "h"), Some("r2"));
        assert_eq!(found(&t, "GET", "/users/7/x", "h"), Some("r0"));
    }

    #[test]
    fn catch_all_also_matches_its_bare_prefix() {
        let t = table(json!([{"path": "/public/{*rest}"}]));
        assert_eq!(found(&t, "GET", "/public", "h"), Some("r0"));
        assert_eq!(found(&t, "GET", "/public/", "h"), Some("r0"));
        assert_eq!(found(&t, "GET", "/publicity", "h"), None);
    }

    #[test]
    fn methods_and_hosts_choose_among_rules_of_one_pattern() {
        let t = table(json!([
            {"path": "/a", "methods": ["post"]},
            {"path": "/a", "methods": ["GET"], "hosts": ["API.test"]},
            {"methods": ["GET"]}
        ]));
        assert_eq!(found(&t, "POST", "/a", "x"), Some("r0"));
        assert_eq!(found(&t, "GET", "/a", "api.test:80"), Some("r1"));
        assert_eq!(found(&t, "GET", "/a", "other"), Some("r2"));
        assert_eq!(found(&t, "DELETE", "/a", "other"), None);
    }

    fn build_errors(rules: serde_json::Value) -> String {
        let mut errors = Errors::default();
        let parsed: Vec<_> = rules
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (RouteMatch::parse(&Node::new("$".into(), v), &mut errors).unwrap(), ()))
            .collect();
        let _ = RouteTable::build(parsed, |i| format!("$.routes[{i}]"), &mut errors);
        errors.to_string()
    }

    #[test]
    fn rules_that_compete_for_the_same_requests_are_refused_with_both_paths() {
        let cases = [
            ("same pattern, no methods", json!([{"path": "/a"}, {"path": "/b"}, {"path": "/a"}]), "$.routes[2]: competes with $.routes[0] (path \"/a\", overlapping methods and hosts): the earlier rule would always win; give them disjoint methods or hosts, or merge them"),
            ("all methods shadow POST", json!([{"path": "/a"}, {"path": "/a", "methods": ["POST"]}]), "$.routes[1]: competes with $.routes[0]"),
            ("shared method", json!([{"path": "/a", "methods": ["GET", "POST"]}, {"path": "/a", "methods": ["post", "PUT"]}]), "$.routes[1]: competes with $.routes[0]"),
            ("host lists overlap", json!([{"path": "/a", "hosts": ["x", "y"]}, {"path": "/a", "hosts": ["Y"]}]), "$.routes[1]: competes with $.routes[0]"),
            ("two rules without a path", json!([{"methods": ["GET"]}, {}]), "$.routes[1]: competes with $.routes[0] (no path,"),
        ];
        for (name, rules, want) in cases {
            let got = build_errors(rules);
            assert!(got.starts_with(want), "{name}: {got}");
        }
    }

    #[test]
    fn rules_of_one_pattern_with_disjoint_methods_or_hosts_are_fine() {
        for rules in [
            json!([{"path": "/a", "methods": ["GET"]}, {"path": "/a", "methods": ["POST"]}]),
            json!([{"path": "/a", "hosts": ["x"]}, {"path": "/a", "hosts": ["y"]}]),
            json!([{"path": "/a/{*rest}"}, {"path": "/a"}, {}]),
        ] {
            assert_eq!(build_errors(rules.clone()), "", "{rules}");
        }
    }

    #[test]
    fn a_written_prefix_beats_a_catch_all_on_its_bare_prefix_in_any_order() {
        let t = table(json!([{"path": "/public/{*rest}"}, {"path": "/public"}]));
        assert_eq!(found(&t, "GET", "/public", "h"), Some("r1"));
        assert_eq!(found(&t, "GET", "/public/x", "h"), Some("r0"));
        let t = table(json!([{"path": "/public"}, {"path": "/public/{*rest}"}]));
        assert_eq!(found(&t, "GET", "/public", "h"), Some("r0"));
    }

    #[test]
    fn matchers_capture_parameters() {
        let mut errors = Errors::default();
        let m = RouteMatch {
            path: Some("/users/{id}/{*rest}".into()),
            methods: vec!["GET".into()],
            hosts: vec![],
        };
        let matcher = Matcher::new(m, "$.routes[0]", &mut errors);
        assert!(errors.is_empty());
        assert_eq!(
            matcher.capture(&req("GET", "/users/7/a/b?q=1", "h")),
            Some(vec![
                ("id".to_owned(), "7".to_owned()),
                ("rest".to_owned(), "a/b".to_owned())
            ])
        );
        assert_eq!(matcher.capture(&req("POST", "/users/7/a", "h")), None);
        assert_eq!(matcher.capture(&req("GET", "/other", "h")), None);
    }

    #[test]
    fn query_string_is_ignored_for_matching() {
        let t = table(json!([{"path": "/a"}]));
        assert_eq!(found(&t, "GET", "/a?x=1", "h"), Some("r0"));
    }

    #[test]
    fn bad_patterns_and_fields_are_reported_with_paths() {
        let mut errors = Errors::default();
        let v = json!({"path": "no-slash", "method": ["GET"]});
        let m = RouteMatch::parse(&Node::new("$.routes[0].match".into(), &v), &mut errors);
        assert!(m.is_some());
        assert_eq!(
            errors.to_string(),
            "$.routes[0].match.path: must start with '/'; $.routes[0].match.method: unknown field"
        );
        let mut errors = Errors::default();
        let rules = vec![(
            RouteMatch {
                path: Some("/a/{x}{y}".into()),
                ..Default::default()
            },
            (),
        )];
        let _ = RouteTable::build(rules, |i| format!("$.routes[{i}]"), &mut errors);
        assert!(
            errors
                .to_string()
                .starts_with("$.routes[0].match.path: invalid path pattern"),
            "{errors}"
        );
    }

    #[test]
    fn a_pattern_with_too_many_parameters_is_refused_not_panicked_on() {
        // Found by the config_body_transform fuzz target: matchit panics ("Too many route
        // parameters") on the 26th parameter of a pattern, which trapped the VM at load. The
        // config_cache target then found a pattern of 16 parameters, as `{{` escapes read, on
        // which matchit still panics (the second case).
        let escaped = r"{{{{{{{{{m}}}{{{}{{{m}{_}}}{m}}}{{{}{{{m}{_}}}{{{{{}{{{{{}{{{}}}{{{{{}{{{}{_}}}{{{{{}{{{{{{{{{{{{{{{{}{{{{{{{{{{{{{{{{}{{_}}}{{{{{{{{{{{{{{{{}{{{{{{{{{{{{{{{{{{{{}{{{{{{{{{{{{{{{{{{{{}}}{{{{{{{{{+{{{{{{{{}{{{{{{m{{{{{{{{{{}{{_}}}{{{{{{{{{{{{{{{{}{{{{{{{{{{{{{{{{{{{{}{{{{{{{{{{{{{{{{{{{{{{{{";
        let mut patterns = vec![escaped.to_owned()];
        for n in [MAX_PATH_PARAMS + 1, 26, 40] {
            let pattern: String = (0..n).map(|i| format!("/{{p{i}}}")).collect();
            patterns.push(format!("{pattern}/{{*rest}}"));
            patterns.push(pattern);
        }
        for path in patterns {
            let mut errors = Errors::default();
            let rules = vec![(
                RouteMatch {
                    path: Some(path.clone()),
                    ..Default::default()
                },
                (),
            )];
            let t = RouteTable::build(rules, |i| format!("$.routes[{i}]"), &mut errors);
            assert_eq!(
                errors.to_string(),
                format!(
                    "$.routes[0].match.path: invalid path pattern {path:?}: more than 16 `{{` (a pattern holds at most 16 parameters)"
                )
            );
            assert!(t.find(&req("GET", "/a", "h")).is_none());
        }
        let sixteen: String = (0..MAX_PATH_PARAMS).map(|i| format!("/{{p{i}}}")).collect();
        let t = table(json!([{ "path": sixteen }]));
        assert_eq!(found(&t, "GET", &"/x".repeat(MAX_PATH_PARAMS), "h"), Some("r0"));
    }
}
