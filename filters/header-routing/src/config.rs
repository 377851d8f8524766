//! The header-routing filter's configuration, checked with JSON paths.

use std::collections::HashMap;

use portico_core::config::{read_bytes, read_value, Errors, Node, Object, BODY_LIMIT_MOVED};
use portico_core::contract::{header, metadata, ApiFormat};
use portico_core::header::{cookie_name_problem, value_problem, write_problem, Reserved, Writer};
use portico_core::identity::parse_consumer_id;
use portico_core::refusal::RefusalLog;
use portico_core::route::{Matcher, RouteMatch};
use serde_json::Value;

#[derive(Debug)]
pub struct Config {
    /// The request header Envoy's route reads with `cluster_header`.
    pub cluster_header: String,
    pub metadata_namespace: String,
    /// Request series per consumer as well (one series per consumer: opt-in).
    pub per_consumer_metrics: bool,
    pub backends: Vec<Backend>,
    pub flags: Vec<Flag>,
    pub routes: Vec<Route>,
    pub refusal_log: RefusalLog,
}

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub cluster: String,
    pub host_rewrite: Option<String>,
    /// Prepended to the (possibly rewritten) path.
    pub path_prefix: Option<String>,
    pub add_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    /// Header name and value injected upstream, replacing the client's credential.
    pub credential: Option<(String, String)>,
    pub format: Option<ApiFormat>,
}

/// Who is counted for a sticky choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Consumer,
    Header(String),
    Cookie(String),
}

#[derive(Debug)]
pub struct Flag {
    pub name: String,
    pub tiers: Vec<String>,
    pub consumers: Vec<String>,
    /// Share of callers in the rollout, in basis points (0 to 10000).
    pub rollout_bp: u32,
    pub by: StickyKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCondition {
    Exact(String),
    Prefix(String),
    Present,
    Absent,
}

#[derive(Debug)]
pub struct Variant {
    pub name: String,
    pub backend: usize,
    /// The upstream model name, for model variants.
    pub model: Option<String>,
    /// Cumulative upper bound in basis points: variant i serves buckets below it.
    pub upper_bp: u32,
}

#[derive(Debug)]
pub struct Split {
    pub by: StickyKey,
    pub variants: Vec<Variant>,
    /// A header testers may send to choose a variant by name.
    pub override_header: Option<String>,
}

/// Where a route or model alias sends traffic.
#[derive(Debug)]
pub enum Target {
    Backend { backend: usize, model: Option<String> },
    Split(Split),
}

#[derive(Debug, Default)]
pub struct TierPolicy {
    /// Aliases this tier may use (empty: all).
    pub allow: Vec<String>,
    /// An alias every request of this tier is sent to.
    pub pin: Option<String>,
}

#[derive(Debug)]
pub struct ModelRoute {
    pub models: HashMap<String, Target>,
    pub tiers: HashMap<String, TierPolicy>,
}

#[derive(Debug)]
pub enum Action {
    Target(Target),
    Models(ModelRoute),
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    pub headers: Vec<(String, HeaderCondition)>,
    pub tiers: Vec<String>,
    pub require_flag: Option<String>,
    /// A path template with `{param}` placeholders from the pattern.
    pub rewrite: Option<String>,
    pub action: Action,
}

/// The largest split weight: weights are relative, so a million gives a resolution finer than
/// the 10,000 buckets callers are spread over, and sums stay far from any overflow.
pub const MAX_WEIGHT: u64 = 1_000_000;
/// Callers are spread over this many buckets by splits and percentage flags.
pub const BUCKETS: u64 = 10_000;

impl Config {
    /// Parses and checks the plugin configuration bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, Errors> {
        read_bytes(bytes, read)
    }

    pub fn from_value(value: &Value) -> Result<Config, Errors> {
        read_value(value, read)
    }

    pub fn backend(&self, index: usize) -> Option<&Backend> {
        self.backends.get(index)
    }
}

fn read(mut root: Object<'_>, errors: &mut Errors) -> Config {
    let cluster_header = root
        .opt("cluster_header")
        .and_then(|n| {
            n.writable_header_name(Writer::Portico, errors).filter(|name| {
                let problem = Reserved::of(name).filter(|_| name != header::CLUSTER).map(|r| {
                    format!(
                        "{}: choose another name (the default is {})",
                        r.problem(name),
                        header::CLUSTER
                    )
                });
                n.report(problem, errors)
            })
        })
        .unwrap_or_else(|| header::CLUSTER.to_owned());
    root.removed("max_body_bytes", errors, BODY_LIMIT_MOVED);
    let refusal_log = RefusalLog::read(&mut root, errors);
    let per_consumer_metrics = root.opt_bool("per_consumer_metrics", errors).unwrap_or(false);
    let metadata_namespace = root.metadata_namespace("metadata_namespace", metadata::NAMESPACE, errors);
    let backends: Vec<Backend> = root
        .array("backends", errors)
        .iter()
        .filter_map(|n| read_backend(n, errors))
        .collect();
    let mut names: Vec<&str> = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        if names.contains(&b.name.as_str()) {
            errors.push(
                &format!("$.backends[{i}].name"),
                format!("duplicate backend {:?}", b.name),
            );
        }
        names.push(&b.name);
    }
    let backend_index = |node: &Node<'_>, errors: &mut Errors| -> Option<usize> {
        let name = node.non_empty_str(errors)?;
        let found = backends.iter().position(|b| b.name == name);
        if found.is_none() {
            node.error(errors, format!("no backend named {name:?}"));
        }
        found
    };
    let flags: Vec<Flag> = root
        .array("flags", errors)
        .iter()
        .filter_map(|n| read_flag(n, errors))
        .collect();
    for (i, f) in flags.iter().enumerate() {
        if flags.iter().take(i).any(|x| x.name == f.name) {
            errors.push(&format!("$.flags[{i}].name"), format!("duplicate flag {:?}", f.name));
        }
    }
    let mut routes = Vec::new();
    let mut route_paths = Vec::new();
    let mut route_names: Vec<String> = Vec::new();
    let route_nodes = root.array("routes", errors);
    if route_nodes.is_empty() {
        root.field_error("routes", errors, "list at least one route");
    }
    for node in route_nodes {
        let Some(mut obj) = node.object(errors) else { continue };
        let name = obj.req_str("name", errors).unwrap_or_default().to_owned();
        if !name.is_empty() {
            // The name seeds the route's sticky choices and labels its metrics: one per route.
            if route_names.contains(&name) {
                obj.field_error("name", errors, format!("duplicate route {name:?}"));
            }
            route_names.push(name.clone());
        }
        let (m, headers, tiers) = match obj.opt("match") {
            Some(n) => read_match(&n, errors),
            None => (Some(RouteMatch::default()), Vec::new(), Vec::new()),
        };
        let pattern = m.as_ref().and_then(|m| m.path.clone());
        let matcher = m.map(|m| Matcher::new(m, obj.path(), errors));
        let require_flag = obj.opt("require_flag").and_then(|n| {
            let f = n.non_empty_str(errors)?;
            if !flags.iter().any(|x| x.name == f) {
                n.error(errors, format!("no flag named {f:?}"));
            }
            Some(f.to_owned())
        });
        let rewrite = obj.opt_str("rewrite", errors).map(str::to_owned);
        if let Some(problem) = rewrite.as_deref().and_then(|r| rewrite_problem(r, pattern.as_deref())) {
            obj.field_error("rewrite", errors, problem);
        }
        let backend = obj.opt("backend");
        let split = obj.opt("split");
        let models = obj.opt("models");
        let action = match (backend, split, models) {
            (Some(b), None, None) => {
                backend_index(&b, errors).map(|backend| Action::Target(Target::Backend { backend, model: None }))
            }
            (None, Some(s), None) => read_split(&s, &backend_index, errors).map(|s| Action::Target(Target::Split(s))),
            (None, None, Some(m)) => read_models(&m, &backend_index, errors).map(Action::Models),
            _ => {
                obj.field_error("backend", errors, "give exactly one of `backend`, `split` or `models`");
                None
            }
        };
        obj.finish(errors);
        if let (Some(matcher), Some(action)) = (matcher, action) {
            route_paths.push(node.path().to_owned());
            routes.push(Route {
                name,
                matcher,
                headers,
                tiers,
                require_flag,
                rewrite,
                action,
            });
        }
    }
    check_shadowed(&routes, &route_paths, errors);
    root.finish(errors);
    Config {
        cluster_header,
        refusal_log,
        metadata_namespace,
        per_consumer_metrics,
        backends,
        flags,
        routes,
    }
}

/// Refuses a route whose match is the same as an earlier one's: routes are tried in order, so
/// the earlier one takes every request the later one could have.
fn check_shadowed(routes: &[Route], paths: &[String], errors: &mut Errors) {
    for (later, route) in routes.iter().enumerate() {
        let key = route.match_key();
        if let Some(earlier) = routes.iter().take(later).position(|r| r.match_key() == key) {
            let at = |i: usize| paths.get(i).map_or("$.routes", String::as_str);
            let earlier = at(earlier);
            errors.push(
                at(later),
                format!(
                    "has the same match as {earlier}, which comes first and so takes every request: it would never \
                     be chosen"
                ),
            );
        }
    }
}

impl Route {
    /// Everything a route matches on, in a form where order within lists does not matter.
    fn match_key(&self) -> impl PartialEq + '_ {
        let sorted = |list: &[String]| {
            let mut list = list.to_vec();
            list.sort();
            list
        };
        let mut headers: Vec<String> = self.headers.iter().map(|(n, c)| format!("{n} {c:?}")).collect();
        headers.sort();
        let m = self.matcher.route_match();
        (
            m.map(|m| (m.path.clone(), sorted(&m.methods), sorted(&m.hosts))),
            headers,
            sorted(&self.tiers),
            self.require_flag.as_deref(),
        )
    }
}

fn read_match(
    node: &Node<'_>,
    errors: &mut Errors,
) -> (Option<RouteMatch>, Vec<(String, HeaderCondition)>, Vec<String>) {
    let Some(mut obj) = node.object(errors) else {
        return (None, Vec::new(), Vec::new());
    };
    let m = RouteMatch::read_fields(&mut obj, errors);
    let tiers = obj.narrowing_list("tiers", errors);
    let mut headers = Vec::new();
    for h in obj.array("headers", errors) {
        let Some(mut ho) = h.object(errors) else { continue };
        let name = ho.req("name", errors).and_then(|n| n.header_name(errors));
        let exact = ho.opt("exact").and_then(|n| n.str(errors)).map(str::to_owned);
        let prefix = ho.opt("prefix").and_then(|n| n.str(errors)).map(str::to_owned);
        let present = ho.opt_bool("present", errors);
        let condition = match (exact, prefix, present) {
            (Some(v), None, None) => Some(HeaderCondition::Exact(v)),
            (None, Some(p), None) => Some(HeaderCondition::Prefix(p)),
            (None, None, Some(true)) => Some(HeaderCondition::Present),
            (None, None, Some(false)) => Some(HeaderCondition::Absent),
            _ => {
                h.error(errors, "give exactly one of `exact`, `prefix` or `present`");
                None
            }
        };
        ho.finish(errors);
        if let (Some(name), Some(condition)) = (name, condition) {
            headers.push((name, condition));
        }
    }
    obj.finish(errors);
    (Some(m), headers, tiers)
}

fn read_backend(node: &Node<'_>, errors: &mut Errors) -> Option<Backend> {
    let mut obj = node.object(errors)?;
    let name = obj.req_str("name", errors).map(str::to_owned);
    let cluster = obj.req_str("cluster", errors).map(str::to_owned);
    let host_rewrite = obj.opt_str("host_rewrite", errors).map(str::to_owned);
    if let Some(problem) = host_rewrite.as_deref().and_then(authority_problem) {
        obj.field_error("host_rewrite", errors, problem);
    }
    let path_prefix = obj.opt_str("path_prefix", errors).map(str::to_owned);
    if let Some(p) = &path_prefix {
        if !p.starts_with('/') || p.ends_with('/') {
            obj.field_error("path_prefix", errors, "must start with '/' and not end with one");
        } else if let Some(problem) = path_problem(p) {
            obj.field_error("path_prefix", errors, problem);
        }
    }
    let mut add_headers = Vec::new();
    let mut remove_headers = Vec::new();
    if let Some(mut h) = obj.opt("headers").and_then(|n| n.object(errors)) {
        if let Some(mut add) = h.opt("add").and_then(|n| n.object(errors)) {
            for (k, v) in add.entries() {
                let problem = write_problem(k, Writer::Operation).or_else(|| {
                    Reserved::of(k).map(|r| match r {
                        Reserved::Credential => {
                            format!("{}: inject a backend's credential with `credential`", r.problem(k))
                        }
                        _ => r.problem(k),
                    })
                });
                let name_ok = v.report(problem, errors);
                if let Some(v) = v.header_value(errors).filter(|_| name_ok) {
                    add_headers.push((k.to_ascii_lowercase(), v));
                }
            }
            add.finish(errors);
        }
        for n in h.array("remove", errors) {
            remove_headers.extend(n.writable_header_name(Writer::Operation, errors));
        }
        h.finish(errors);
    }
    let credential = obj.opt("credential").and_then(|n| {
        let mut c = n.object(errors)?;
        let bearer = secret(&mut c, "bearer", errors).map(|t| ("authorization".to_owned(), format!("Bearer {t}")));
        let api_key = secret(&mut c, "api_key", errors).map(|k| ("x-api-key".to_owned(), k));
        // A credential header may be a credential header; nothing else reserved.
        let header = c.opt("header").and_then(|h| {
            h.writable_header_name(Writer::Operation, errors).filter(|name| {
                let problem = Reserved::of(name)
                    .filter(|r| *r != Reserved::Credential)
                    .map(|r| r.problem(name));
                h.report(problem, errors)
            })
        });
        let value = secret(&mut c, "value", errors);
        c.finish(errors);
        // Which form was given is read from the keys, so a bad value is reported once, by itself.
        let has = |key: &str| n.value().get(key).is_some_and(|v| !v.is_null());
        let forms = [has("bearer"), has("api_key"), has("header") && has("value")];
        let partial = has("header") != has("value");
        if partial || forms.iter().filter(|f| **f).count() != 1 {
            n.error(
                errors,
                "give exactly one of `bearer`, `api_key`, or `header` with `value`",
            );
            return None;
        }
        bearer.or(api_key).or_else(|| header.zip(value))
    });
    let format = obj
        .opt("format")
        .and_then(|n| n.one_of(&ApiFormat::NAMES, errors))
        .and_then(|i| ApiFormat::ALL.get(i).copied());
    obj.finish(errors);
    Some(Backend {
        name: name?,
        cluster: cluster?,
        host_rewrite,
        path_prefix,
        add_headers,
        remove_headers,
        credential,
        format,
    })
}

fn read_sticky(node: Option<Node<'_>>, errors: &mut Errors) -> StickyKey {
    let Some(node) = node else { return StickyKey::Consumer };
    match node.value() {
        Value::String(s) if s == "consumer" => StickyKey::Consumer,
        Value::Object(_) => {
            let Some(mut obj) = node.object(errors) else {
                return StickyKey::Consumer;
            };
            let header = obj.opt("header");
            let cookie = obj.opt("cookie");
            obj.finish(errors);
            match (header, cookie) {
                (Some(h), None) => h.header_name(errors).map_or(StickyKey::Consumer, StickyKey::Header),
                (None, Some(c)) => c
                    .non_empty_str(errors)
                    .filter(|name| c.report(cookie_name_problem(name), errors))
                    .map_or(StickyKey::Consumer, |name| StickyKey::Cookie(name.to_owned())),
                _ => {
                    node.error(errors, "give exactly one of `header` or `cookie`");
                    StickyKey::Consumer
                }
            }
        }
        _ => {
            node.error(
                errors,
                "expected \"consumer\", {\"header\": NAME} or {\"cookie\": NAME}",
            );
            StickyKey::Consumer
        }
    }
}

fn read_flag(node: &Node<'_>, errors: &mut Errors) -> Option<Flag> {
    let mut obj = node.object(errors)?;
    let name = obj.req_str("name", errors).map(str::to_owned);
    if name
        .as_ref()
        .is_some_and(|n| !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        obj.field_error(
            "name",
            errors,
            "flag names use letters, digits, '-' and '_' (they travel in a header)",
        );
    }
    let tiers = obj.narrowing_list("tiers", errors);
    let mut consumers = Vec::new();
    for n in obj.array("consumers", errors) {
        let Some(id) = n.non_empty_str(errors) else { continue };
        match parse_consumer_id(id) {
            Ok(_) => consumers.push(id.to_owned()),
            Err(problem) => n.error(
                errors,
                format!("{problem} (flags compare it with {} as auth sets it)", header::CONSUMER),
            ),
        }
    }
    let percent = obj.opt("percent").and_then(|n| {
        let p = n.value().as_f64().filter(|p| (0.0..=100.0).contains(p));
        if p.is_none() {
            n.error(errors, "expected a number from 0 to 100");
        }
        p
    });
    let by = read_sticky(obj.opt("by"), errors);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rollout_bp = (percent.unwrap_or(0.0) * 100.0).round() as u32;
    if percent.is_some_and(|p| p > 0.0) && rollout_bp == 0 {
        obj.field_error(
            "percent",
            errors,
            "below the rollout's resolution of 0.01 percent: no caller would get the flag",
        );
    }
    obj.finish(errors);
    Some(Flag {
        name: name?,
        tiers,
        consumers,
        rollout_bp,
        by,
    })
}

fn read_split(
    node: &Node<'_>,
    backend_index: &dyn Fn(&Node<'_>, &mut Errors) -> Option<usize>,
    errors: &mut Errors,
) -> Option<Split> {
    let mut obj = node.object(errors)?;
    let by = read_sticky(obj.opt("by"), errors);
    let override_header = obj.opt("override_header").and_then(|n| n.header_name(errors));
    let mut variants: Vec<(String, usize, Option<String>, u64, String)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let items = obj.array("variants", errors);
    if items.is_empty() {
        obj.field_error("variants", errors, "list at least one variant");
    }
    for item in items {
        let Some(mut v) = item.object(errors) else { continue };
        let name = v.req_str("name", errors).map(str::to_owned);
        if let Some(n) = &name {
            if !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                v.field_error(
                    "name",
                    errors,
                    "variant names use letters, digits, '.', '-' and '_' (they travel in a header)",
                );
            } else if names.contains(n) {
                v.field_error("name", errors, format!("duplicate variant {n:?}"));
            }
            names.push(n.clone());
        }
        let backend = v.req("backend", errors).and_then(|n| backend_index(&n, errors));
        let model = v.opt_str("model", errors).map(str::to_owned);
        let weight = v.req("weight", errors).and_then(|n| n.u64_in(0..=MAX_WEIGHT, errors));
        v.finish(errors);
        if let (Some(name), Some(backend), Some(weight)) = (name, backend, weight) {
            variants.push((name, backend, model, weight, item.path().to_owned()));
        }
    }
    obj.finish(errors);
    let total = variants
        .iter()
        .try_fold(0u64, |sum, (.., weight, _)| sum.checked_add(*weight));
    let Some(total) = total.filter(|t| *t > 0) else {
        node.error(errors, "variant weights must add up to more than 0");
        return None;
    };
    // Weights are relative: variant i serves the buckets below its cumulative share of BUCKETS,
    // the last one up to BUCKETS. u128 holds every product of bounded weights.
    let mut acc: u64 = 0;
    let mut lower: u32 = 0;
    let count = variants.len();
    let mut out = Vec::with_capacity(count);
    for (i, (name, backend, model, weight, path)) in variants.into_iter().enumerate() {
        acc = acc.saturating_add(weight);
        let upper = if i + 1 == count {
            BUCKETS
        } else {
            u64::try_from(u128::from(acc) * u128::from(BUCKETS) / u128::from(total)).unwrap_or(BUCKETS)
        };
        let upper_bp = u32::try_from(upper.min(BUCKETS)).unwrap_or(0);
        if weight > 0 && upper_bp == lower {
            errors.push(
                &format!("{path}.weight"),
                format!(
                    "{weight} of {total} is below the split's resolution of 1/{BUCKETS}: no caller \
                     would get this variant (weight 0 turns a variant off on purpose)"
                ),
            );
        }
        lower = upper_bp;
        out.push(Variant {
            name,
            backend,
            model,
            upper_bp,
        });
    }
    Some(Split {
        by,
        variants: out,
        override_header,
    })
}

/// A credential secret: a non-empty string that is a header value.
fn secret<'a>(c: &mut Object<'a>, key: &'a str, errors: &mut Errors) -> Option<String> {
    let node = c.opt(key)?;
    let value = node.non_empty_str(errors)?;
    node.report(value_problem(value), errors).then(|| value.to_owned())
}

/// Why `host` cannot be the `:authority` sent upstream, if it cannot.
fn authority_problem(host: &str) -> Option<String> {
    let bad = host
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !"-._~!$&'()*+,;=:[]%".contains(*c))?;
    Some(format!(
        "contains {bad:?}: give a host with an optional port, such as api.example.com or 10.0.0.1:8443"
    ))
}

/// Why `path` cannot be (part of) the `:path` sent upstream, if it cannot.
fn path_problem(path: &str) -> Option<String> {
    let bad = path.chars().find(|c| !c.is_ascii_graphic() || *c == '?' || *c == '#')?;
    Some(if bad == '?' || bad == '#' {
        format!("contains {bad:?}: the client's query string is kept, so a path here cannot carry one")
    } else {
        format!("contains {bad:?}, which a request path cannot hold as it is (percent-encode it)")
    })
}

/// The parameter names of a matchit pattern: `id` for `{id}`, `rest` for `{*rest}` (`{{` and
/// `}}` are literal braces).
fn pattern_params(pattern: &str) -> Vec<&str> {
    let mut params = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let after = rest.get(open + 1..).unwrap_or("");
        if let Some(escaped) = after.strip_prefix('{') {
            rest = escaped;
            continue;
        }
        let Some(close) = after.find('}') else { break };
        params.push(after.get(..close).unwrap_or("").trim_start_matches('*'));
        rest = after.get(close + 1..).unwrap_or("");
    }
    params
}

/// Why `template` cannot rewrite the path of a route with path pattern `pattern`, if it cannot.
/// Every placeholder must name a parameter the pattern captures: one it does not is sent
/// upstream literally.
fn rewrite_problem(template: &str, pattern: Option<&str>) -> Option<String> {
    if !template.starts_with('/') {
        return Some("must start with '/'".to_owned());
    }
    if let Some(problem) = path_problem(template) {
        return Some(problem);
    }
    let Some(pattern) = pattern else {
        return Some(
            "needs the route's `match.path` pattern: its {param} captures fill the template, and without one every request would go to the same path".to_owned(),
        );
    };
    let known = pattern_params(pattern);
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        let after = rest.get(open + 1..).unwrap_or("");
        if rest.get(open..=open) == Some("}") {
            return Some("has a '}' without its '{'".to_owned());
        }
        let Some(close) = after.find('}') else {
            return Some("has a '{' without its '}'".to_owned());
        };
        let name = after.get(..close).unwrap_or("");
        let param = name.strip_prefix('*').unwrap_or(name);
        if !known.contains(&param) {
            let have = if known.is_empty() {
                "none".to_owned()
            } else {
                known.iter().map(|k| format!("{{{k}}}")).collect::<Vec<_>>().join(", ")
            };
            return Some(format!(
                "{{{name}}} is not a parameter of the path pattern {pattern:?} (it has: {have})"
            ));
        }
        rest = after.get(close + 1..).unwrap_or("");
    }
    None
}

fn read_models(
    node: &Node<'_>,
    backend_index: &dyn Fn(&Node<'_>, &mut Errors) -> Option<usize>,
    errors: &mut Errors,
) -> Option<ModelRoute> {
    let mut obj = node.object(errors)?;
    let mut models = HashMap::new();
    if let Some(mut aliases) = obj.req("aliases", errors).and_then(|n| n.object(errors)) {
        for (alias, target) in aliases.entries() {
            let Some(mut t) = target.object(errors) else { continue };
            let backend = t.opt("backend");
            let split = t.opt("split");
            let model = t.opt_str("model", errors).map(str::to_owned);
            let resolved = match (backend, split) {
                (Some(b), None) => backend_index(&b, errors).map(|backend| Target::Backend { backend, model }),
                (None, Some(s)) => read_split(&s, backend_index, errors).map(Target::Split),
                _ => {
                    target.error(errors, "give exactly one of `backend` or `split`");
                    None
                }
            };
            t.finish(errors);
            if let Some(resolved) = resolved {
                models.insert(alias.to_owned(), resolved);
            }
        }
        aliases.finish(errors);
    }
    let mut tiers = HashMap::new();
    if let Some(mut t) = obj.opt("tiers").and_then(|n| n.object(errors)) {
        for (tier, policy) in t.entries() {
            let Some(mut p) = policy.object(errors) else { continue };
            let allow = p.string_list("allow", errors);
            let pin = p.opt_str("pin", errors).map(str::to_owned);
            for name in allow.iter().chain(pin.iter()) {
                if !models.contains_key(name) {
                    policy.error(errors, format!("no model alias {name:?}"));
                }
            }
            if let Some(pin) = pin.as_ref().filter(|pin| !allow.is_empty() && !allow.contains(pin)) {
                policy.error(
                    errors,
                    format!("pins {pin:?}, which its `allow` list does not hold: give one or the other"),
                );
            }
            p.finish(errors);
            tiers.insert(tier.to_owned(), TierPolicy { allow, pin });
        }
        t.finish(errors);
    }
    obj.finish(errors);
    Some(ModelRoute { models, tiers })
}

#[cfg(test)]
mod tests;
