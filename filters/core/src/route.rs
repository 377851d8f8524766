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
//!   rule written with that exact prefix still wins there;
//! - when no rule of the most specific matching pattern applies (its methods or hosts differ),
//!   the next less specific matching pattern is tried, and so on, then the rules without a
//!   path: a `POST`-only rule on `/users/{id}` does not hide `/users/{*rest}` from a `GET`;
//! - hosts are compared as [`normalize_host`] gives them (case, port and one trailing dot do
//!   not matter);
//! - paths are compared as [`matching_path`] gives them: each segment's `;` parameters (also
//!   written `%3B`) are removed and escaped unreserved characters decoded, so `/admin;x=1` and
//!   `/%61dmin` meet the `/admin` rule, as the many upstreams that read them as `/admin` do.
//!   Matching is case-sensitive (`/Admin` is not `/admin`), like Envoy's own routes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use matchit::Router;

use crate::config::{Errors, Node, Object};
#[cfg(test)]
use crate::request::RequestView;
use crate::request::{normalize_host, RequestSource};

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
            } else if let Some(problem) = pattern_problem(p) {
                obj.field_error("path", errors, problem);
            }
        }
        let methods = obj
            .narrowing_list("methods", errors)
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let mut hosts = Vec::new();
        let host_nodes = obj.array("hosts", errors);
        if host_nodes.is_empty() && obj.opt("hosts").is_some() {
            obj.field_error(
                "hosts",
                errors,
                "an empty list would leave the rule to every value: omit the field, or list at least one",
            );
        }
        for node in host_nodes {
            let Some(host) = node.non_empty_str(errors) else {
                continue;
            };
            match host_problem(host) {
                Some(problem) => node.error(errors, problem),
                None => hosts.push(normalize_host(host)),
            }
        }
        Self { path, methods, hosts }
    }

    /// Whether some request could meet both `self` and `other` as far as methods and hosts go
    /// (an empty list means every method or host).
    fn overlaps(&self, other: &RouteMatch) -> bool {
        let meet = |a: &[String], b: &[String]| a.is_empty() || b.is_empty() || a.iter().any(|x| b.contains(x));
        meet(&self.methods, &other.methods) && meet(&self.hosts, &other.hosts)
    }

    /// `method` is read only for rules that list methods and `host` only for rules that list
    /// hosts: each is one host call when the request is the host's lazy view, and the host
    /// allocates. Both are kept for the next rule.
    fn accepts<'r>(
        &self,
        method: &mut Option<&'r str>,
        host: &mut Option<String>,
        request: &'r dyn RequestSource,
    ) -> bool {
        if !self.methods.is_empty() {
            let method = *method.get_or_insert_with(|| request.method());
            if !self.methods.iter().any(|m| m == method) {
                return false;
            }
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

/// Why a host in a rule would never match a request's host, if it would not.
fn host_problem(host: &str) -> Option<String> {
    if host.contains('*') {
        return Some(format!(
            "{host:?} is a wildcard, which host rules do not support: list each host"
        ));
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return None;
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() {
            return Some(format!(
                "{host:?} has a port: hosts match without their port (every port); write {name:?}"
            ));
        }
    }
    let bad = host
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !matches!(c, '-' | '.' | '_'))?;
    Some(format!(
        "{host:?} contains {bad:?}, which a host name cannot hold (give a DNS name or an IP address)"
    ))
}

/// Why a path pattern would never match a request's path as [`matching_path`] gives it, if
/// it would not.
fn pattern_problem(pattern: &str) -> Option<String> {
    if pattern.contains('?') {
        return Some(
            "contains '?': a pattern matches the path without its query string (rules cannot match on it)".to_owned(),
        );
    }
    if pattern.contains(';') {
        return Some(
            "contains ';': path parameters are removed before matching, so no request path holds one".to_owned(),
        );
    }
    if let Some(at) = pattern.find('%') {
        let escape: String = pattern.get(at..).unwrap_or("").chars().take(3).collect();
        return Some(format!(
            "contains {escape:?}: requests are matched on their path with unreserved characters decoded and \
             `;` parameters removed, so write the pattern decoded, without escapes"
        ));
    }
    // The first segment is the empty one before the leading '/'; an empty last one is a
    // trailing slash, which is a path of its own.
    let segments: Vec<&str> = pattern.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let bad = segments
        .iter()
        .enumerate()
        .find(|(i, seg)| matches!(**seg, "." | "..") || (seg.is_empty() && *i != last))?;
    Some(format!(
        "has the segment {:?}: Envoy normalises dot segments and repeated slashes away (normalize_path, \
         merge_slashes), so a request never has them",
        bad.1
    ))
}

/// The path rules are matched on: in each segment, everything from the first `;` (or `%3B`)
/// is removed, and escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986) are
/// decoded. Reserved escapes such as `%2F` stay as they are. Borrowed when nothing changes,
/// which is almost always.
pub fn matching_path(path: &str) -> Cow<'_, str> {
    if !path.contains([';', '%']) {
        return Cow::Borrowed(path);
    }
    // Bytes: only ASCII is removed or decoded, so what remains is still UTF-8.
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        let bytes = segment.as_bytes();
        let mut at = 0;
        while let Some(&b) = bytes.get(at) {
            if b == b';' {
                break;
            }
            if b == b'%' {
                let escaped = bytes
                    .get(at + 1..at + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match escaped {
                    Some(b';') => break,
                    Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c);
                        at += 3;
                        continue;
                    }
                    _ => {}
                }
            }
            out.push(b);
            at += 1;
        }
    }
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Rules compiled for lookup. `T` is the filter's own per-rule configuration.
#[derive(Debug)]
pub struct RouteTable<T> {
    rules: Vec<(RouteMatch, T)>,
    /// Pattern to its index in `patterns`.
    router: Router<usize>,
    /// Every pattern, with the rules that use it.
    patterns: Vec<Pattern>,
    /// Indexes of the rules without a path, in configuration order.
    any_path: Vec<usize>,
}

/// One pattern of a [`RouteTable`].
#[derive(Debug)]
struct Pattern {
    pattern: String,
    /// The pattern alone: whether it matches a path, for the fallback to less specific ones.
    alone: Router<()>,
    /// The indexes of the rules that use it, in configuration order.
    rules: Vec<usize>,
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
        let mut patterns = Vec::with_capacity(by_pattern.len());
        for (pattern, (written, implied)) in by_pattern {
            let mut indexes = written;
            for i in implied {
                if !indexes.contains(&i) {
                    indexes.push(i);
                }
            }
            let first = indexes.first().copied().unwrap_or_default();
            let mut alone = Router::new();
            let inserted = router
                .insert(pattern.clone(), patterns.len())
                .and_then(|()| alone.insert(pattern.clone(), ()));
            match inserted {
                Ok(()) => patterns.push(Pattern {
                    pattern,
                    alone,
                    rules: indexes,
                }),
                Err(e) => errors.push(
                    &format!("{}.match.path", path_of(first)),
                    format!("invalid path pattern {pattern:?}: {e}"),
                ),
            }
        }
        Self {
            rules,
            router,
            patterns,
            any_path,
        }
    }

    /// Compiles `rules`, each with the JSON path of its entry in the configuration, which
    /// errors name. Prefer this to [`RouteTable::build`] with a closure over the rule's index:
    /// once a bad entry was skipped, the index of a rule is no longer that of its entry, and
    /// errors would name the wrong rule.
    pub fn build_at(rules: Vec<(String, RouteMatch, T)>, errors: &mut Errors) -> Self {
        let (paths, rules): (Vec<String>, Vec<(RouteMatch, T)>) =
            rules.into_iter().map(|(path, m, rule)| (path, (m, rule))).unzip();
        let path_of = |i: usize| paths.get(i).cloned().unwrap_or_else(|| format!("rule {i}"));
        Self::build(rules, path_of, errors)
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
    /// Reads `:path`, then `:method` and `:authority` only if a rule that could match needs them.
    pub fn find(&self, request: &dyn RequestSource) -> Option<Matched<'_, T>> {
        let mut method = None;
        let mut host = None;
        let path = matching_path(request.path());
        let mut first = |indexes: &[usize]| {
            indexes.iter().find_map(|&index| {
                let (m, rule) = self.rules.get(index)?;
                m.accepts(&mut method, &mut host, request).then_some(Matched {
                    index,
                    rule,
                    pattern: m.path.as_deref(),
                })
            })
        };
        let best = self.router.at(&path).ok().map(|m| *m.value);
        if let Some(found) = best.and_then(|p| self.patterns.get(p)).and_then(|p| first(&p.rules)) {
            return Some(found);
        }
        // Rare: the most specific pattern's rules do not apply. Try the other patterns that
        // match, most specific first, as matchit itself ranks them.
        let mut candidates: Vec<usize> = (0..self.patterns.len())
            .filter(|&i| Some(i) != best && self.patterns.get(i).is_some_and(|p| p.alone.at(&path).is_ok()))
            .collect();
        while !candidates.is_empty() {
            let mut ranking = Router::new();
            for &i in &candidates {
                if let Some(p) = self.patterns.get(i) {
                    // A subset of patterns that went into one router together goes in again.
                    let _ = ranking.insert(p.pattern.as_str(), i);
                }
            }
            let Some(next) = ranking.at(&path).ok().map(|m| *m.value) else {
                break;
            };
            if let Some(found) = self.patterns.get(next).and_then(|p| first(&p.rules)) {
                return Some(found);
            }
            candidates.retain(|&i| i != next);
        }
        first(&self.any_path)
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

    pub fn matches(&self, request: &dyn RequestSource) -> bool {
        self.0.find(request).is_some()
    }

    /// The captured path parameters (`{id}`, `{*rest}`) when the request matches.
    pub fn capture(&self, request: &dyn RequestSource) -> Option<Vec<(String, String)>> {
        let (m, _) = self.0.rules.first()?;
        if !m.accepts(&mut None, &mut None, request) {
            return None;
        }
        if m.path.is_none() {
            return Some(Vec::new());
        }
        let path = matching_path(request.path());
        let found = self.0.router.at(&path).ok()?;
        Some(found.params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    /// The conditions this matcher was built from.
    pub fn route_match(&self) -> Option<&RouteMatch> {
        self.0.rules.first().map(|(m, _)| m)
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

    /// A request that records the header names a lookup reads.
    struct Recording {
        view: RequestView,
        read: std::cell::RefCell<Vec<String>>,
    }

    impl RequestSource for Recording {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.read.borrow_mut().push(name.to_owned());
            self.view.header(name)
        }

        fn headers_named(&self, name: &str) -> Vec<&[u8]> {
            self.read.borrow_mut().push(name.to_owned());
            self.view.headers_named(name)
        }
    }

    #[test]
    fn a_lookup_reads_the_method_and_host_only_for_rules_that_name_them() {
        let t = table(json!([
            {"path": "/a", "methods": ["GET"]},
            {"path": "/b/{*rest}"},
            {"path": "/c", "hosts": ["x.test"]},
        ]));
        let read = |method: &str, path: &str| {
            let request = Recording {
                view: req(method, path, "x.test"),
                read: Default::default(),
            };
            let found = t.find(&request).map(|m| *m.rule);
            (found, request.read.into_inner())
        };
        assert_eq!(read("GET", "/b/1"), (Some("r1"), vec![":path".to_owned()]));
        assert_eq!(read("GET", "/nowhere"), (None, vec![":path".to_owned()]));
        assert_eq!(
            read("POST", "/a"),
            (None, vec![":path".to_owned(), ":method".to_owned()])
        );
        assert_eq!(
            read("GET", "/c"),
            (Some("r2"), vec![":path".to_owned(), ":authority".to_owned()])
        );
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

    #[test]
    fn a_trailing_dot_or_a_port_does_not_skip_a_host_rule() {
        let t =
            table(json!([{"path": "/admin", "hosts": ["api.example.com"]}, {"path": "/admin", "hosts": ["other"]}]));
        for host in [
            "api.example.com",
            "api.example.com.",
            "API.Example.Com.:8443",
            "api.example.com:80",
        ] {
            assert_eq!(found(&t, "GET", "/admin", host), Some("r0"), "{host}");
        }
    }

    #[test]
    fn a_rule_that_does_not_apply_falls_back_to_the_next_less_specific_pattern() {
        let t = table(json!([
            {"path": "/{*rest}"},
            {"path": "/users/{id}", "methods": ["GET"]},
            {"path": "/users/me", "hosts": ["a.test"]},
            {"path": "/users/me", "hosts": ["c.test"], "methods": ["PUT"]}
        ]));
        assert_eq!(found(&t, "GET", "/users/me", "a.test"), Some("r2"));
        // /users/me is most specific but not for b.test; {id} is GET only; then {*rest}.
        assert_eq!(found(&t, "GET", "/users/me", "b.test"), Some("r1"));
        assert_eq!(found(&t, "POST", "/users/me", "c.test"), Some("r0"));
        assert_eq!(found(&t, "DELETE", "/users/7", "b.test"), Some("r0"));
        let t = table(json!([{"path": "/a", "methods": ["POST"]}, {"methods": ["GET"]}]));
        assert_eq!(
            found(&t, "GET", "/a", "h"),
            Some("r1"),
            "rules without a path come last"
        );
        assert_eq!(found(&t, "PUT", "/a", "h"), None);
    }

    #[test]
    fn path_parameters_and_escaped_letters_do_not_skip_a_rule() {
        let t = table(
            json!([{"path": "/admin/{*rest}", "methods": ["GET"]}, {"path": "/users/{id}"}, {"path": "/{*rest}", "methods": ["PUT"]}]),
        );
        for path in [
            "/admin",
            "/admin;x=1",
            "/admin;x=1/",
            "/%61dmin",
            "/%61DMIN".replace("DMIN", "dmin").as_str(),
            "/admin%3Bx=1",
            "/admin%3bx=1/y",
            "/ad%6Din;/z?q=1",
            "/admin/a;b=c/d",
        ] {
            assert_eq!(found(&t, "GET", path, "h"), Some("r0"), "{path}");
        }
        assert_eq!(found(&t, "GET", "/users/7;v=2", "h"), Some("r1"));
        // Reserved characters stay escaped: %2F is not a segment separator here.
        assert_eq!(found(&t, "GET", "/admin%2Fx", "h"), None);
        assert_eq!(found(&t, "GET", "/Admin", "h"), None, "matching is case-sensitive");
        assert_eq!(matching_path("/a;b/c%7E%2f;d"), "/a/c~%2f");
        assert_eq!(
            matching_path("/café;x=1/ü%41"),
            "/café/üA",
            "non-ASCII text is kept as it is"
        );
        assert!(matches!(matching_path("/plain/path"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn hosts_and_paths_that_never_match_are_refused_with_their_paths() {
        let cases = [
            (json!({"hosts": ["api.test:8080"]}), "$.routes[0].match.hosts[0]: \"api.test:8080\" has a port: hosts match without their port (every port); write \"api.test\""),
            (json!({"hosts": ["*.example.com"]}), "$.routes[0].match.hosts[0]: \"*.example.com\" is a wildcard, which host rules do not support: list each host"),
            (json!({"hosts": []}), "$.routes[0].match.hosts: an empty list would leave the rule to every value"),
            (json!({"methods": []}), "$.routes[0].match.methods: an empty list would leave the rule to every value"),
            (json!({"hosts": [""]}), "$.routes[0].match.hosts[0]: must not be empty"),
            (json!({"hosts": ["a b"]}), "$.routes[0].match.hosts[0]: \"a b\" contains ' ', which a host name cannot hold"),
            (json!({"path": "/a?x=1"}), "$.routes[0].match.path: contains '?': a pattern matches the path without its query string"),
            (json!({"path": "/a%2Fb"}), "$.routes[0].match.path: contains \"%2F\": requests are matched on their path with unreserved characters decoded and `;` parameters removed, so write the pattern decoded, without escapes"),
            (json!({"path": "/a/../b"}), "$.routes[0].match.path: has the segment \"..\": Envoy normalises dot segments and repeated slashes away (normalize_path, merge_slashes), so a request never has them"),
            (json!({"path": "/a/./b"}), "$.routes[0].match.path: has the segment \".\""),
            (json!({"path": "/a//b"}), "$.routes[0].match.path: has the segment \"\""),
            (json!({"path": "/a;v=1"}), "$.routes[0].match.path: contains ';': path parameters are removed before matching"),
        ];
        for (m, want) in cases {
            let mut errors = Errors::default();
            let _ = RouteMatch::parse(&Node::new("$.routes[0].match".into(), &m), &mut errors);
            assert!(errors.to_string().starts_with(want), "{m}: {errors}");
        }
        let mut errors = Errors::default();
        let m = RouteMatch::parse(
            &Node::new("$".into(), &json!({"hosts": ["API.test."], "path": "/a/{*rest}"})),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(m.unwrap().hosts, vec!["api.test".to_owned()]);
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
    fn errors_name_each_rule_by_its_own_path_when_earlier_entries_were_skipped() {
        let mut errors = Errors::default();
        let a = |pattern: &str| RouteMatch {
            path: Some(pattern.to_owned()),
            ..Default::default()
        };
        let rules = vec![
            ("$.routes[1]".to_owned(), a("/a"), ()),
            ("$.routes[3]".to_owned(), a("/a"), ()),
            ("$.routes[4]".to_owned(), a("/b/{x}{y}"), ()),
        ];
        let _ = RouteTable::build_at(rules, &mut errors);
        let got = errors.to_string();
        assert!(
            got.starts_with("$.routes[3]: competes with $.routes[1] (path \"/a\""),
            "{got}"
        );
        assert!(got.contains("; $.routes[4].match.path: invalid path pattern"), "{got}");
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
