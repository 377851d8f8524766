//! The body-transform filter's configuration, checked with JSON paths.

use portico_core::config::{read_bytes, read_value, Errors, Node, Object};
use portico_core::route::{RouteMatch, RouteTable};
use serde_json::Value;

use crate::ops::{BodyOp, HeaderOps, Pointer, Source};

#[derive(Debug)]
pub struct Config {
    pub max_body_bytes: u64,
    /// Anthropic requires `max_tokens`; used when an OpenAI request gives none.
    pub default_max_tokens: u64,
    pub routes: RouteTable<Rule>,
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
    let max_body_bytes = root.opt_u64("max_body_bytes", errors).unwrap_or(1 << 20);
    let default_max_tokens = root.opt_u64("default_max_tokens", errors).unwrap_or(4096);
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
        max_body_bytes,
        default_max_tokens,
        routes: RouteTable::build(rules, |i| format!("$.routes[{i}]"), errors),
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

fn pairs(node: Option<Node<'_>>, errors: &mut Errors) -> Vec<(String, String)> {
    let Some(mut obj) = node.and_then(|n| n.object(errors)) else {
        return Vec::new();
    };
    let out = obj
        .entries()
        .into_iter()
        .filter_map(|(k, v)| v.str(errors).map(|v| (k.to_ascii_lowercase(), v.to_owned())))
        .collect();
    obj.finish(errors);
    out
}

fn read_headers(node: &Node<'_>, errors: &mut Errors) -> HeaderOps {
    let Some(mut obj) = node.object(errors) else {
        return HeaderOps::default();
    };
    let ops = HeaderOps {
        add: pairs(obj.opt("add"), errors),
        set: pairs(obj.opt("set"), errors),
        remove: obj
            .string_list("remove", errors)
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        rename: pairs(obj.opt("rename"), errors)
            .into_iter()
            .map(|(k, v)| (k, v.to_ascii_lowercase()))
            .collect(),
    };
    obj.finish(errors);
    ops
}

fn pointer(node: Option<Node<'_>>, errors: &mut Errors) -> Option<Pointer> {
    let node = node?;
    let text = node.str(errors)?;
    let p = Pointer::parse(text);
    if p.is_none() {
        node.error(errors, "not a JSON Pointer (RFC 6901): it must start with '/'");
    }
    p
}

fn read_op(node: &Node<'_>, errors: &mut Errors) -> Option<BodyOp> {
    let mut obj = node.object(errors)?;
    let op = obj
        .req("op", errors)
        .and_then(|n| n.one_of(&["set", "remove", "rename"], errors));
    let path = obj.req("path", errors);
    let path = pointer(path, errors);
    let value = obj.opt("value").map(|n| n.value().clone());
    let from_header = obj.opt_str("from_header", errors).map(str::to_ascii_lowercase);
    let from = pointer(obj.opt("from"), errors);
    obj.finish(errors);
    match (op?, path?) {
        (0, path) => match (value, from_header) {
            (Some(v), None) => Some(BodyOp::Set(path, Source::Value(v))),
            (None, Some(h)) => Some(BodyOp::Set(path, Source::Header(h))),
            _ => {
                node.error(errors, "`set` takes exactly one of `value` or `from_header`");
                None
            }
        },
        (1, path) => Some(BodyOp::Remove(path)),
        (_, path) => match from {
            Some(from) => Some(BodyOp::Rename(from, path)),
            None => {
                node.error(errors, "`rename` needs `from`");
                None
            }
        },
    }
}
