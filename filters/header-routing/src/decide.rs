//! The routing decision: which route, which backend and variant, which flags, and how the
//! request must look upstream. Pure: the shell passes headers and lifted body fields in.

use portico_core::contract::header;
use portico_core::media;
use portico_core::request::{cookie_values, RequestSource};
use portico_core::response::{ErrorResponse, ErrorType};

use crate::config::{Action, Config, HeaderCondition, Route, Split, StickyKey, Target, TierPolicy};

/// What the shell gathered for a decision.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub view: &'a dyn RequestSource,
    /// `model` lifted from the JSON body by `json_to_metadata`.
    pub model: Option<&'a str>,
    /// `json_to_metadata` found a body that is not JSON.
    pub json_error: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub route: usize,
    pub backend: usize,
    /// The new `:path`, when it changes.
    pub path: Option<String>,
    pub variant: Option<String>,
    /// Names of the flags that are on, in configuration order.
    pub flags: Vec<String>,
    /// The model name to write into the body, when it differs from the client's.
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Route(Routed),
    Reject(ErrorResponse),
}

fn reject(status: u32, error_type: ErrorType, code: &'static str, message: impl Into<String>) -> Decision {
    Decision::Reject(ErrorResponse::new(status, error_type, code, message))
}

/// A stable bucket in 0..10000 for `key` under `seed`: the same caller always lands in the
/// same bucket, on every worker and after restarts, and buckets are uniform across callers.
pub fn bucket(seed: &str, key: &str) -> u32 {
    let mut h = hmac_sha256::Hash::new();
    h.update(seed.as_bytes());
    h.update([0x1f]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
    u32::try_from(u64::from_le_bytes(b) % 10_000).unwrap_or(0)
}

fn sticky_value<'a>(key: &StickyKey, view: &'a dyn RequestSource) -> &'a str {
    match key {
        StickyKey::Consumer => view.header_str(header::CONSUMER),
        StickyKey::Header(name) => view.header_str(name),
        StickyKey::Cookie(name) => cookie_values(view.headers_named("cookie").into_iter(), name)
            .first()
            .and_then(|v| std::str::from_utf8(v).ok()),
    }
    .unwrap_or("")
}

/// The flags that are on for this request.
pub fn flags_on(config: &Config, view: &dyn RequestSource) -> Vec<String> {
    let consumer = view.header_str(header::CONSUMER);
    let tier = view.header_str(header::TIER);
    config
        .flags
        .iter()
        .filter(|f| {
            consumer.is_some_and(|c| f.consumers.iter().any(|x| x == c))
                || tier.is_some_and(|t| f.tiers.iter().any(|x| x == t))
                || bucket(&f.name, sticky_value(&f.by, view)) < f.rollout_bp
        })
        .map(|f| f.name.clone())
        .collect()
}

fn conditions_hold(route: &Route, view: &dyn RequestSource, flags: &[String]) -> bool {
    let tier_ok = route.tiers.is_empty()
        || view
            .header_str(header::TIER)
            .is_some_and(|t| route.tiers.iter().any(|x| x == t));
    let flag_ok = route.require_flag.as_ref().is_none_or(|f| flags.contains(f));
    tier_ok
        && flag_ok
        && route.headers.iter().all(|(name, condition)| {
            let value = view.header(name);
            match condition {
                HeaderCondition::Exact(want) => value == Some(want.as_bytes()),
                HeaderCondition::Prefix(p) => value.is_some_and(|v| v.starts_with(p.as_bytes())),
                HeaderCondition::Present => value.is_some(),
                HeaderCondition::Absent => value.is_none(),
            }
        })
}

/// The variant for this request: a tester's override when allowed, else the sticky bucket.
fn choose<'s>(split: &'s Split, seed: &str, view: &dyn RequestSource) -> Option<&'s crate::config::Variant> {
    if let Some(name) = split.override_header.as_ref().and_then(|h| view.header_str(h)) {
        if let Some(v) = split.variants.iter().find(|v| v.name == name) {
            return Some(v);
        }
    }
    let b = bucket(seed, sticky_value(&split.by, view));
    split.variants.iter().find(|v| b < v.upper_bp).or(split.variants.last())
}

/// (backend, variant name, upstream model) for a target.
fn resolve(target: &Target, seed: &str, view: &dyn RequestSource) -> Option<(usize, Option<String>, Option<String>)> {
    match target {
        Target::Backend { backend, model } => Some((*backend, None, model.clone())),
        Target::Split(split) => choose(split, seed, view).map(|v| (v.backend, Some(v.name.clone()), v.model.clone())),
    }
}

fn render_path(template: &str, params: &[(String, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in params {
        out = out
            .replace(&format!("{{{name}}}"), value)
            .replace(&format!("{{*{name}}}"), value);
    }
    out
}

fn is_json(view: &dyn RequestSource) -> bool {
    view.header("content-type").is_some_and(media::is_json)
}

/// The route a request falls under (path, methods, hosts, headers, tiers and flags hold),
/// whether or not it could be served: how requests refused before routing, or by it, are
/// labelled in metrics.
pub fn route_of<'c>(config: &'c Config, view: &dyn RequestSource) -> Option<&'c crate::config::Route> {
    let flags = flags_on(config, view);
    config
        .routes
        .iter()
        .find(|r| r.matcher.matches(view) && conditions_hold(r, view, &flags))
}

pub fn decide(config: &Config, inputs: &Inputs<'_>) -> Decision {
    let view = inputs.view;
    let flags = flags_on(config, view);
    for (index, route) in config.routes.iter().enumerate() {
        let Some(params) = route.matcher.capture(view) else {
            continue;
        };
        if !conditions_hold(route, view, &flags) {
            continue;
        }
        let seed = &route.name;
        let (backend, variant, model) = match &route.action {
            Action::Target(target) => match resolve(target, seed, view) {
                Some(t) => t,
                None => continue,
            },
            Action::Models(models) => {
                if inputs.json_error || !is_json(view) {
                    return reject(
                        400,
                        ErrorType::InvalidRequest,
                        "invalid_json",
                        "this route takes a JSON request body",
                    );
                }
                let Some(requested) = inputs.model else {
                    return reject(
                        400,
                        ErrorType::InvalidRequest,
                        "missing_model",
                        "the request body has no `model` field",
                    );
                };
                let policy: Option<&TierPolicy> = view.header_str(header::TIER).and_then(|t| models.tiers.get(t));
                let alias = policy.and_then(|p| p.pin.as_deref()).unwrap_or(requested);
                if let Some(p) = policy.filter(|p| p.pin.is_none() && !p.allow.is_empty()) {
                    if !p.allow.iter().any(|a| a == requested) {
                        return reject(
                            403,
                            ErrorType::Permission,
                            "model_not_allowed",
                            format!("model {requested:?} is not available on your plan"),
                        );
                    }
                }
                let Some(target) = models.models.get(alias) else {
                    return reject(
                        400,
                        ErrorType::InvalidRequest,
                        "unknown_model",
                        format!("model {requested:?} is not available on this route"),
                    );
                };
                let Some((backend, variant, model)) = resolve(target, &format!("{seed}/{alias}"), view) else {
                    continue;
                };
                // A pinned alias without an explicit upstream model goes upstream by its name.
                let model = model.or_else(|| (alias != requested).then(|| alias.to_owned()));
                (backend, variant, model.filter(|m| m != requested))
            }
        };
        let Some(b) = config.backend(backend) else { continue };
        let query = view.query().map(|q| format!("?{q}")).unwrap_or_default();
        let path = match (&route.rewrite, &b.path_prefix) {
            (None, None) => None,
            (rewrite, prefix) => {
                let base = rewrite
                    .as_ref()
                    .map_or_else(|| view.path().to_owned(), |t| render_path(t, &params));
                Some(format!("{}{base}{query}", prefix.as_deref().unwrap_or("")))
            }
        };
        return Decision::Route(Routed {
            route: index,
            backend,
            path,
            variant,
            flags,
            model,
        });
    }
    reject(404, ErrorType::NotFound, "no_route", "no route matches this request")
}

#[cfg(test)]
mod tests;
