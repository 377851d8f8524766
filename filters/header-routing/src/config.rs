//! The header-routing filter's configuration, checked with JSON paths.

use std::collections::HashMap;

use portico_core::config::{read_bytes, read_value, Errors, Node, Object};
use portico_core::route::{Matcher, RouteMatch};
use serde_json::Value;

#[derive(Debug)]
pub struct Config {
    /// The request header Envoy's route reads with `cluster_header`.
    pub cluster_header: String,
    pub max_body_bytes: u64,
    pub metadata_namespace: String,
    /// Request series per consumer as well (one series per consumer: opt-in).
    pub per_consumer_metrics: bool,
    pub backends: Vec<Backend>,
    pub flags: Vec<Flag>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::Anthropic => "anthropic",
        }
    }
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
    pub format: Option<Format>,
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

const DEFAULT_MAX_BODY: u64 = 1 << 20;

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
        .opt_str("cluster_header", errors)
        .unwrap_or("x-portico-cluster")
        .to_ascii_lowercase();
    let max_body_bytes = root.opt_u64("max_body_bytes", errors).unwrap_or(DEFAULT_MAX_BODY);
    let per_consumer_metrics = root.opt_bool("per_consumer_metrics", errors).unwrap_or(false);
    let metadata_namespace = root
        .opt_str("metadata_namespace", errors)
        .unwrap_or("portico")
        .to_owned();
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
    let mut routes = Vec::new();
    let route_nodes = root.array("routes", errors);
    if route_nodes.is_empty() {
        root.field_error("routes", errors, "list at least one route");
    }
    for node in route_nodes {
        let Some(mut obj) = node.object(errors) else { continue };
        let name = obj.req_str("name", errors).unwrap_or_default().to_owned();
        let (m, headers, tiers) = match obj.opt("match") {
            Some(n) => read_match(&n, errors),
            None => (Some(RouteMatch::default()), Vec::new(), Vec::new()),
        };
        let matcher = m.map(|m| Matcher::new(m, obj.path(), errors));
        let require_flag = obj.opt("require_flag").and_then(|n| {
            let f = n.non_empty_str(errors)?;
            if !flags.iter().any(|x| x.name == f) {
                n.error(errors, format!("no flag named {f:?}"));
            }
            Some(f.to_owned())
        });
        let rewrite = obj.opt_str("rewrite", errors).map(str::to_owned);
        if rewrite.as_ref().is_some_and(|r| !r.starts_with('/')) {
            obj.field_error("rewrite", errors, "must start with '/'");
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
    root.finish(errors);
    Config {
        cluster_header,
        max_body_bytes,
        metadata_namespace,
        per_consumer_metrics,
        backends,
        flags,
        routes,
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
    let tiers = obj.string_list("tiers", errors);
    let mut headers = Vec::new();
    for h in obj.array("headers", errors) {
        let Some(mut ho) = h.object(errors) else { continue };
        let name = ho.req_str("name", errors).map(str::to_ascii_lowercase);
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
    let path_prefix = obj.opt_str("path_prefix", errors).map(str::to_owned);
    if path_prefix
        .as_ref()
        .is_some_and(|p| !p.starts_with('/') || p.ends_with('/'))
    {
        obj.field_error("path_prefix", errors, "must start with '/' and not end with one");
    }
    let mut add_headers = Vec::new();
    let mut remove_headers = Vec::new();
    if let Some(mut h) = obj.opt("headers").and_then(|n| n.object(errors)) {
        if let Some(mut add) = h.opt("add").and_then(|n| n.object(errors)) {
            for (k, v) in add.entries() {
                if let Some(v) = v.str(errors) {
                    add_headers.push((k.to_ascii_lowercase(), v.to_owned()));
                }
            }
            add.finish(errors);
        }
        remove_headers = h
            .string_list("remove", errors)
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        h.finish(errors);
    }
    let credential = obj.opt("credential").and_then(|n| {
        let mut c = n.object(errors)?;
        let bearer = c
            .opt_str("bearer", errors)
            .map(|t| ("authorization".to_owned(), format!("Bearer {t}")));
        let api_key = c
            .opt_str("api_key", errors)
            .map(|k| ("x-api-key".to_owned(), k.to_owned()));
        let header = c.opt_str("header", errors).map(str::to_ascii_lowercase);
        let value = c.opt_str("value", errors).map(str::to_owned);
        let custom = header.zip(value);
        c.finish(errors);
        let mut given: Vec<(String, String)> = [bearer, api_key, custom].into_iter().flatten().collect();
        if given.len() != 1 {
            n.error(
                errors,
                "give exactly one of `bearer`, `api_key`, or `header` with `value`",
            );
            return None;
        }
        given.pop()
    });
    let format = obj
        .opt("format")
        .and_then(|n| n.one_of(&["openai", "anthropic"], errors))
        .map(|i| if i == 0 { Format::OpenAi } else { Format::Anthropic });
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
            let header = obj
                .opt_str("header", errors)
                .map(|h| StickyKey::Header(h.to_ascii_lowercase()));
            let cookie = obj.opt_str("cookie", errors).map(|c| StickyKey::Cookie(c.to_owned()));
            obj.finish(errors);
            match (header, cookie) {
                (Some(k), None) | (None, Some(k)) => k,
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
    let tiers = obj.string_list("tiers", errors);
    let consumers = obj.string_list("consumers", errors);
    let percent = obj.opt("percent").and_then(|n| {
        let p = n.value().as_f64().filter(|p| (0.0..=100.0).contains(p));
        if p.is_none() {
            n.error(errors, "expected a number from 0 to 100");
        }
        p
    });
    let by = read_sticky(obj.opt("by"), errors);
    obj.finish(errors);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rollout_bp = (percent.unwrap_or(0.0) * 100.0).round() as u32;
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
    let override_header = obj.opt_str("override_header", errors).map(str::to_ascii_lowercase);
    let mut variants = Vec::new();
    let mut total: u64 = 0;
    let items = obj.array("variants", errors);
    if items.is_empty() {
        obj.field_error("variants", errors, "list at least one variant");
    }
    for item in items {
        let Some(mut v) = item.object(errors) else { continue };
        let name = v.req_str("name", errors).map(str::to_owned);
        if name.as_ref().is_some_and(|n| {
            !n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        }) {
            v.field_error(
                "name",
                errors,
                "variant names use letters, digits, '.', '-' and '_' (they travel in a header)",
            );
        }
        let backend = v.req("backend", errors).and_then(|n| backend_index(&n, errors));
        let model = v.opt_str("model", errors).map(str::to_owned);
        let weight = v.req("weight", errors).and_then(|n| n.u64(errors));
        v.finish(errors);
        total += weight.unwrap_or(0);
        if let (Some(name), Some(backend), Some(weight)) = (name, backend, weight) {
            variants.push((name, backend, model, weight));
        }
    }
    obj.finish(errors);
    if total == 0 {
        node.error(errors, "variant weights must add up to more than 0");
        return None;
    }
    // Weights are relative: scale them to 10000 basis points, the last variant taking the rest.
    let mut acc: u64 = 0;
    let count = variants.len();
    let variants = variants
        .into_iter()
        .enumerate()
        .map(|(i, (name, backend, model, weight))| {
            acc += weight;
            let upper = if i + 1 == count { 10_000 } else { acc * 10_000 / total };
            Variant {
                name,
                backend,
                model,
                upper_bp: u32::try_from(upper).unwrap_or(10_000),
            }
        })
        .collect();
    Some(Split {
        by,
        variants,
        override_header,
    })
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
            p.finish(errors);
            tiers.insert(tier.to_owned(), TierPolicy { allow, pin });
        }
        t.finish(errors);
    }
    obj.finish(errors);
    Some(ModelRoute { models, tiers })
}
