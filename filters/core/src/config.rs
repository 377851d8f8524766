//! Reading plugin configuration with JSON paths in every error.
//!
//! Filters parse their JSON configuration into a `serde_json::Value` once, then walk it with
//! [`Object`] and [`Node`], which record every problem (wrong type, missing field, unknown
//! field, bad value) with its JSON path instead of stopping at the first. An operator fixing a
//! config sees all of its errors in one Envoy log, not one per restart.
//!
//! ```
//! use portico_core::config::{parse_root, Errors};
//! let mut errors = Errors::default();
//! let value = serde_json::json!({"limit": "ten", "extra": 1});
//! if let Some(mut root) = parse_root(&value, &mut errors) {
//!     let _limit = root.opt_u64("limit", &mut errors);
//!     root.finish(&mut errors);
//! }
//! assert_eq!(errors.to_string(), "$.limit: expected a non-negative integer; $.extra: unknown field");
//! ```

use std::fmt;
use std::ops::RangeInclusive;

use serde_json::{Map, Value};

// === Bounds ===

/// The largest request or response body any filter may be configured to read: a body is
/// buffered in the Wasm VM's memory, so a limit of gigabytes would never be one.
pub const MAX_BODY_BYTES: u64 = 64 << 20;
/// Why `max_body_bytes` is refused by the filters that used to limit request bodies: a body
/// larger than Envoy's buffer limit (1 MiB unless raised) got Envoy's 413 before any filter saw
/// it, so a larger `max_body_bytes` did nothing. The limit is one setting, Envoy's.
pub const BODY_LIMIT_MOVED: &str = "the request body limit is Envoy's buffer limit: raise it with `request_body_buffer_limit` on the Envoy route or virtual host, lower it with the listener's `per_connection_buffer_limit_bytes` (larger bodies get 413 `body_too_large`)";
/// The longest period, TTL or window any filter accepts: 365 days.
pub const MAX_PERIOD_SECONDS: u64 = 365 * 24 * 3600;
/// The largest completion-token estimate (`default_max_tokens`) a filter accepts.
pub const MAX_TOKENS: u64 = 1_000_000;

/// One problem in a configuration, at a JSON path such as `$.routes[2].match.path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one configuration, in document order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Errors(Vec<ConfigError>);

impl Errors {
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn list(&self) -> &[ConfigError] {
        &self.0
    }

    /// Logs every error, one line each, as Envoy shows them when it refuses a config.
    pub fn log(&self, filter: &str) {
        for e in &self.0 {
            log::error!("{filter}: invalid configuration: {e}");
        }
    }

    /// `Ok(value)` when nothing was recorded, else every recorded error.
    pub fn into_result<T>(self, value: Option<T>) -> Result<T, Errors> {
        match value {
            Some(value) if self.is_empty() => Ok(value),
            Some(_) => Err(self),
            None if self.is_empty() => {
                // A reader returned nothing without saying why: report it rather than panic.
                let mut errors = self;
                errors.push("$", "invalid configuration");
                Err(errors)
            }
            None => Err(self),
        }
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Parses configuration bytes as JSON. An empty configuration reads as `{}`.
///
/// A repeated key is refused with its path ([`crate::json::parse`]): serde_json would keep the
/// last value silently, so a config a person reads one way (`"type": "none"` first) would load
/// another way.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Errors> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let mut errors = Errors::default();
    match crate::json::parse(bytes) {
        Ok(value) => return Ok(value),
        Err(crate::json::Invalid::DuplicateKey(path)) => {
            errors.push(&path, "repeated key: each key of an object may appear once");
        }
        Err(crate::json::Invalid::NumberOutOfRange(path)) => {
            errors.push(&path, "number out of range: it is beyond what a 64-bit float holds");
        }
        // The strict reader drops serde_json's position: read again for it.
        Err(crate::json::Invalid::Malformed) => match serde_json::from_slice::<Value>(bytes) {
            Err(e) => errors.push(
                "$",
                format!(
                    "not valid JSON: {} at line {} column {}",
                    json_error_kind(&e),
                    e.line(),
                    e.column()
                ),
            ),
            Ok(_) => errors.push("$", "not valid JSON"),
        },
    }
    Err(errors)
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "data error",
        serde_json::error::Category::Eof => "unexpected end of input",
    }
}

/// Parses configuration bytes and reads them with `read`, collecting every error: the whole
/// entry point of a filter's configuration.
pub fn read_bytes<T>(bytes: &[u8], read: impl FnOnce(Object<'_>, &mut Errors) -> T) -> Result<T, Errors> {
    read_value(&parse_json(bytes)?, read)
}

/// Like [`read_bytes`], from an already parsed document.
pub fn read_value<T>(value: &Value, read: impl FnOnce(Object<'_>, &mut Errors) -> T) -> Result<T, Errors> {
    let mut errors = Errors::default();
    let config = parse_root(value, &mut errors).map(|root| read(root, &mut errors));
    errors.into_result(config)
}

/// The top-level object of a configuration.
pub fn parse_root<'a>(value: &'a Value, errors: &mut Errors) -> Option<Object<'a>> {
    Node::new("$".to_owned(), value).object(errors)
}

// === impl Node ===

/// A value at a known JSON path.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    path: String,
    value: &'a Value,
}

impl<'a> Node<'a> {
    pub fn new(path: String, value: &'a Value) -> Self {
        Self { path, value }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn value(&self) -> &'a Value {
        self.value
    }

    /// Records `message` as an error at this node's path.
    pub fn error(&self, errors: &mut Errors, message: impl Into<String>) {
        errors.push(&self.path, message);
    }

    pub fn object(&self, errors: &mut Errors) -> Option<Object<'a>> {
        match self.value {
            Value::Object(map) => Some(Object {
                path: self.path.clone(),
                map,
                used: Vec::with_capacity(map.len()),
            }),
            _ => {
                self.error(errors, "expected an object");
                None
            }
        }
    }

    pub fn str(&self, errors: &mut Errors) -> Option<&'a str> {
        match self.value {
            Value::String(s) => Some(s),
            _ => {
                self.error(errors, "expected a string");
                None
            }
        }
    }

    /// A string that must not be empty.
    pub fn non_empty_str(&self, errors: &mut Errors) -> Option<&'a str> {
        let s = self.str(errors)?;
        if s.is_empty() {
            self.error(errors, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn u64(&self, errors: &mut Errors) -> Option<u64> {
        match self.value.as_u64() {
            Some(n) => Some(n),
            None => {
                self.error(errors, "expected a non-negative integer");
                None
            }
        }
    }

    /// An integer within `range`; outside it, an error naming the bounds.
    pub fn u64_in(&self, range: RangeInclusive<u64>, errors: &mut Errors) -> Option<u64> {
        let n = self.u64(errors)?;
        if range.contains(&n) {
            return Some(n);
        }
        self.error(errors, format!("must be between {} and {}", range.start(), range.end()));
        None
    }

    pub fn bool(&self, errors: &mut Errors) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.error(errors, "expected true or false");
                None
            }
        }
    }

    /// The elements of an array, each with its indexed path.
    pub fn array(&self, errors: &mut Errors) -> Option<Vec<Node<'a>>> {
        match self.value {
            Value::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Node::new(format!("{}[{}]", self.path, i), v))
                    .collect(),
            ),
            _ => {
                self.error(errors, "expected an array");
                None
            }
        }
    }

    /// An array of non-empty strings; bad elements are reported and skipped.
    pub fn string_list(&self, errors: &mut Errors) -> Option<Vec<String>> {
        let items = self.array(errors)?;
        Some(
            items
                .iter()
                .filter_map(|item| item.non_empty_str(errors).map(str::to_owned))
                .collect(),
        )
    }

    /// A string that must be one of `choices`; returns its index in `choices`.
    pub fn one_of(&self, choices: &[&str], errors: &mut Errors) -> Option<usize> {
        let s = self.str(errors)?;
        match choices.iter().position(|c| *c == s) {
            Some(i) => Some(i),
            None => {
                self.error(
                    errors,
                    format!("unknown value {s:?}, expected one of: {}", choices.join(", ")),
                );
                None
            }
        }
    }
}

// === impl Object ===

/// A JSON object whose fields are read one by one; [`Object::finish`] then reports every
/// field that no reader asked for, so a misspelt key is an error, never a silent default.
#[derive(Debug)]
pub struct Object<'a> {
    path: String,
    map: &'a Map<String, Value>,
    used: Vec<&'a str>,
}

impl<'a> Object<'a> {
    pub fn path(&self) -> &str {
        &self.path
    }

    fn child_path(&self, key: &str) -> String {
        let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain {
            format!("{}.{}", self.path, key)
        } else {
            format!("{}[{:?}]", self.path, key)
        }
    }

    /// The field `key` if present (and not `null`), marking it as known.
    pub fn opt(&mut self, key: &'a str) -> Option<Node<'a>> {
        self.used.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(Node::new(self.child_path(key), value)),
        }
    }

    /// The field `key`, recording an error when it is absent.
    pub fn req(&mut self, key: &'a str, errors: &mut Errors) -> Option<Node<'a>> {
        let node = self.opt(key);
        if node.is_none() {
            errors.push(&self.child_path(key), "required field is missing");
        }
        node
    }

    pub fn opt_str(&mut self, key: &'a str, errors: &mut Errors) -> Option<&'a str> {
        self.opt(key)?.non_empty_str(errors)
    }

    pub fn req_str(&mut self, key: &'a str, errors: &mut Errors) -> Option<&'a str> {
        self.req(key, errors)?.non_empty_str(errors)
    }

    pub fn opt_u64(&mut self, key: &'a str, errors: &mut Errors) -> Option<u64> {
        self.opt(key)?.u64(errors)
    }

    /// An optional integer field within `range` (see [`Node::u64_in`]).
    pub fn opt_u64_in(&mut self, key: &'a str, range: RangeInclusive<u64>, errors: &mut Errors) -> Option<u64> {
        self.opt(key)?.u64_in(range, errors)
    }

    pub fn opt_bool(&mut self, key: &'a str, errors: &mut Errors) -> Option<bool> {
        self.opt(key)?.bool(errors)
    }

    /// A list of non-empty strings, empty when the field is absent.
    pub fn string_list(&mut self, key: &'a str, errors: &mut Errors) -> Vec<String> {
        self.opt(key)
            .and_then(|node| node.string_list(errors))
            .unwrap_or_default()
    }

    /// A list that narrows a rule (tiers, methods, hosts): absent, it leaves the rule to every
    /// value. An explicitly empty one reads as "none" to a person but would mean "all", so it
    /// is refused.
    pub fn narrowing_list(&mut self, key: &'a str, errors: &mut Errors) -> Vec<String> {
        let Some(node) = self.opt(key) else { return Vec::new() };
        if node.value().as_array().is_some_and(Vec::is_empty) {
            node.error(
                errors,
                "an empty list would leave the rule to every value: omit the field, or list at least one",
            );
        }
        node.string_list(errors).unwrap_or_default()
    }

    /// A `metadata_namespace` field: the Envoy dynamic-metadata namespace a filter reads.
    pub fn metadata_namespace(&mut self, key: &'a str, default: &str, errors: &mut Errors) -> String {
        let Some(node) = self.opt(key) else {
            return default.to_owned();
        };
        let Some(namespace) = node.non_empty_str(errors) else {
            return default.to_owned();
        };
        if !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            node.error(
                errors,
                format!(
                    "{namespace:?} is not a metadata namespace: use letters, digits, '.', '-' and '_' \
                     (as json_to_metadata's `metadata_namespace`)"
                ),
            );
        }
        namespace.to_owned()
    }

    /// The elements of an array field, empty when the field is absent.
    pub fn array(&mut self, key: &'a str, errors: &mut Errors) -> Vec<Node<'a>> {
        self.opt(key).and_then(|node| node.array(errors)).unwrap_or_default()
    }

    /// Every field, for objects used as maps (such as claim name to header name); all of them
    /// count as known.
    pub fn entries(&mut self) -> Vec<(&'a str, Node<'a>)> {
        let map = self.map;
        map.iter()
            .map(|(k, v)| {
                self.used.push(k.as_str());
                (k.as_str(), Node::new(self.child_path(k), v))
            })
            .collect()
    }

    /// A field that no longer exists, known by name only to say what replaced it: an error
    /// when present.
    pub fn removed(&mut self, key: &'a str, errors: &mut Errors, instead: &str) {
        if self.opt(key).is_some() {
            errors.push(&self.child_path(key), format!("no longer supported: {instead}"));
        }
    }

    /// Records `message` at the path of field `key`.
    pub fn field_error(&self, key: &str, errors: &mut Errors, message: impl Into<String>) {
        errors.push(&self.child_path(key), message);
    }

    /// Reports every field that was never read as unknown.
    pub fn finish(self, errors: &mut Errors) {
        for key in self.map.keys() {
            if !self.used.contains(&key.as_str()) {
                errors.push(&self.child_path(key), "unknown field");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: Value) -> Errors {
        let mut errors = Errors::default();
        if let Some(mut root) = parse_root(&value, &mut errors) {
            let _ = root.req_str("name", &mut errors);
            for item in root.array("items", &mut errors) {
                if let Some(mut obj) = item.object(&mut errors) {
                    let _ = obj.opt_u64_in("n", 1..=9, &mut errors);
                    let _ = obj.opt("mode").and_then(|m| m.one_of(&["a", "b"], &mut errors));
                    obj.finish(&mut errors);
                }
            }
            root.finish(&mut errors);
        }
        errors
    }

    #[test]
    fn a_valid_document_has_no_errors() {
        let errors = read(json!({"name": "x", "items": [{"n": 1, "mode": "a"}]}));
        assert!(errors.is_empty(), "{errors}");
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errors = read(json!({
            "items": [{"n": -1}, {"mode": "c", "typo": true}, 3, {"n": 10}],
            "nmae": "x"
        }));
        assert_eq!(
            errors.to_string(),
            "$.name: required field is missing; \
             $.items[0].n: expected a non-negative integer; \
             $.items[1].mode: unknown value \"c\", expected one of: a, b; \
             $.items[1].typo: unknown field; \
             $.items[2]: expected an object; \
             $.items[3].n: must be between 1 and 9; \
             $.nmae: unknown field"
        );
    }

    #[test]
    fn keys_that_are_not_identifiers_are_quoted_in_paths() {
        let value = json!({"a-b": 1});
        let mut errors = Errors::default();
        if let Some(root) = parse_root(&value, &mut errors) {
            root.finish(&mut errors);
        }
        assert_eq!(errors.to_string(), "$[\"a-b\"]: unknown field");
    }

    #[test]
    fn removed_fields_say_what_replaced_them() {
        let value = json!({"old": 1});
        let mut errors = Errors::default();
        if let Some(mut root) = parse_root(&value, &mut errors) {
            root.removed("old", &mut errors, "use `new`");
            root.removed("gone", &mut errors, "use `other`");
            root.finish(&mut errors);
        }
        assert_eq!(errors.to_string(), "$.old: no longer supported: use `new`");
    }

    #[test]
    fn empty_strings_are_rejected() {
        let errors = read(json!({"name": ""}));
        assert_eq!(errors.to_string(), "$.name: must not be empty");
    }

    #[test]
    fn malformed_json_names_the_position() {
        let errors = parse_json(b"{\"a\": }").unwrap_err();
        assert_eq!(errors.to_string(), "$: not valid JSON: syntax error at line 1 column 7");
    }

    #[test]
    fn a_repeated_key_is_refused_with_its_path() {
        // serde_json keeps the last of two `name`s, so a config read as one thing by a person
        // (the first) loaded as another.
        let errors = parse_json(br#"{"routes": [{"name": "a", "name": "b"}]}"#).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "$.routes[0].name: repeated key: each key of an object may appear once"
        );
    }

    #[test]
    fn blank_configuration_is_an_empty_object() {
        assert_eq!(parse_json(b"  \n").unwrap(), json!({}));
    }

    #[test]
    fn a_root_that_is_not_an_object_is_an_error() {
        let errors = read(json!([1]));
        assert_eq!(errors.to_string(), "$: expected an object");
    }
}
