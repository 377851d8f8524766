//! Strict JSON reading for request bodies that a decision depends on.
//!
//! JSON (RFC 8259) leaves an object with a repeated key open to interpretation, and readers
//! differ: serde_json and Envoy 1.40.0's `json_to_metadata` keep the last value (observed:
//! `{"model":"fast","model":"gpt-4o"}` was routed on `gpt-4o`), while other backends read the
//! first. A body like `{"model":"smart","model":"evil"}` could then pass a check on one value
//! and be served on the other. [`parse`] refuses such a body at any depth, so every reader
//! downstream sees one value per key.
//!
//! It keeps serde_json's limits: nesting of 128 or more arrays or objects, trailing data and
//! invalid UTF-8 are refused as [`Invalid::Malformed`].

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::response::{ErrorResponse, ErrorType};

/// The stable code of the refusal of a body with a repeated key.
pub const DUPLICATE_KEY: &str = "duplicate_json_key";
/// The stable code of the refusal of a body with a number no reader can hold (`1e400`).
pub const NUMBER_OUT_OF_RANGE: &str = "number_out_of_range";

/// Longest key kept when a path is written out: keys come from clients.
const MAX_KEY_CHARS: usize = 32;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not one JSON value (syntax, trailing data, invalid UTF-8, nested too deep).
    Malformed,
    /// An object repeats a key: its JSON path, such as `$.messages[0].role`.
    DuplicateKey(String),
    /// A number beyond what a 64-bit float holds (`1e400`): its JSON path. Valid JSON
    /// grammar, so "not JSON" would mislead the client.
    NumberOutOfRange(String),
}

impl Invalid {
    /// The 400 a filter answers with for a body refused for what it says rather than its
    /// syntax (a repeated key, a number out of range), naming the place; `None` for a
    /// malformed one, which each filter refuses in its own words.
    pub fn content_refusal(&self) -> Option<ErrorResponse> {
        let (code, message) = match self {
            Invalid::Malformed => return None,
            Invalid::DuplicateKey(path) => (
                DUPLICATE_KEY,
                format!("the request body repeats the key {path}: send each key of an object once"),
            ),
            Invalid::NumberOutOfRange(path) => (
                NUMBER_OUT_OF_RANGE,
                format!("the number at {path} is out of range: it is beyond what a 64-bit float holds"),
            ),
        };
        Some(ErrorResponse::new(400, ErrorType::InvalidRequest, code, message))
    }
}

/// The JSON value in `bytes`, refusing repeated object keys at any depth.
pub fn parse(bytes: &[u8]) -> Result<Value, Invalid> {
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Node {
        at: &Segment::Root,
        found: &found,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (value, found.take()) {
        (_, Some(invalid)) => Err(invalid),
        (Ok(value), None) => Ok(value),
        (Err(_), None) => Err(Invalid::Malformed),
    }
}

/// A value read from any serde format (YAML configs, for one) with repeated keys refused: the
/// error names the key's JSON path.
pub fn deserialize<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    let found = Cell::new(None);
    let value = Node {
        at: &Segment::Root,
        found: &found,
    }
    .deserialize(deserializer);
    match (value, found.take()) {
        (Err(_), Some(Invalid::DuplicateKey(path))) => Err(de::Error::custom(format!(
            "the key {path} is repeated: each key of an object may appear once"
        ))),
        (Err(_), Some(Invalid::NumberOutOfRange(path))) => Err(de::Error::custom(format!(
            "the number at {path} is out of range: it is beyond what a 64-bit float holds"
        ))),
        (value, _) => value,
    }
}

/// The reference tokens of an RFC 6901 JSON Pointer such as `/messages/0/content`, unescaped
/// (`~1` is `/`, `~0` is `~`), or why `text` is not one that names a member: it must start
/// with `/`, and a `~` must be followed by `0` or `1` (`~2` or a trailing `~` is no escape, and
/// a reader would have to guess what it names).
pub fn pointer_tokens(text: &str) -> Result<Vec<String>, String> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err("not a JSON Pointer (RFC 6901): it must start with '/'".to_owned());
    };
    let mut tokens = Vec::new();
    for raw in rest.split('/') {
        let mut token = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '~' {
                token.push(c);
                continue;
            }
            match chars.next() {
                Some('0') => token.push('~'),
                Some('1') => token.push('/'),
                other => {
                    let seen = other.map_or_else(|| "~ at the end".to_owned(), |o| format!("~{o}"));
                    return Err(format!(
                        "not a JSON Pointer (RFC 6901): {seen} in {raw:?} is no escape (write ~0 for '~' and ~1 for '/')"
                    ));
                }
            }
        }
        tokens.push(token);
    }
    Ok(tokens)
}

// === impl Segment ===

/// Where a value sits, as a list from the value up to the root (no allocation per value).
enum Segment<'a> {
    Root,
    Key(&'a str, &'a Segment<'a>),
    Index(usize, &'a Segment<'a>),
}

impl Segment<'_> {
    /// The JSON path: `$`, then `.key` (or `["key"]` when it is not a plain name) or `[i]`.
    fn path(&self) -> String {
        let mut parts = Vec::new();
        let mut at = self;
        loop {
            match at {
                Segment::Root => break,
                Segment::Key(key, up) => {
                    parts.push(key_part(key));
                    at = up;
                }
                Segment::Index(i, up) => {
                    parts.push(format!("[{i}]"));
                    at = up;
                }
            }
        }
        parts.into_iter().rev().fold("$".to_owned(), |mut path, part| {
            path.push_str(&part);
            path
        })
    }
}

fn key_part(key: &str) -> String {
    let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= MAX_KEY_CHARS;
    if plain {
        return format!(".{key}");
    }
    let mut shown: String = key.chars().take(MAX_KEY_CHARS).collect();
    if shown.len() < key.len() {
        shown.push('…');
    }
    // Serialising a string cannot fail; the fallback only keeps this total.
    format!("[{}]", serde_json::to_string(&shown).unwrap_or_default())
}

// === impl Node ===

/// Reads one value at `at`; on a repeated key or a number out of range it records why and
/// where in `found` (the innermost place) and fails.
struct Node<'a> {
    at: &'a Segment<'a>,
    found: &'a Cell<Option<Invalid>>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        let (at, found) = (self.at, self.found);
        deserializer.deserialize_any(self).inspect_err(|e| {
            let earlier = found.take();
            // serde_json's own words for a number past f64 (it has no error kind to match).
            let out_of_range = earlier.is_none() && e.to_string().starts_with("number out of range");
            found.set(if out_of_range {
                Some(Invalid::NumberOutOfRange(at.path()))
            } else {
                earlier
            });
        })
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let at = Segment::Index(items.len(), self.at);
            let node = Node {
                at: &at,
                found: self.found,
            };
            match seq.next_element_seed(node)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = Segment::Key(&key, self.at);
            if object.contains_key(&key) {
                self.found.set(Some(Invalid::DuplicateKey(at.path())));
                return Err(de::Error::custom("repeated key"));
            }
            let value = map.next_value_seed(Node {
                at: &at,
                found: self.found,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn duplicate(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(Invalid::DuplicateKey(path)) => path,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn json_pointers_unescape_and_refuse_what_is_no_escape() {
        assert_eq!(
            pointer_tokens("/a~1b/c~0d/~01"),
            Ok(vec!["a/b".to_owned(), "c~d".to_owned(), "~1".to_owned()])
        );
        assert_eq!(pointer_tokens("/"), Ok(vec![String::new()]));
        assert_eq!(
            pointer_tokens("/a~2b").unwrap_err(),
            "not a JSON Pointer (RFC 6901): ~2 in \"a~2b\" is no escape (write ~0 for '~' and ~1 for '/')"
        );
        assert!(pointer_tokens("/a~").unwrap_err().contains("~ at the end"));
        assert!(pointer_tokens("a").unwrap_err().contains("must start with '/'"));
    }

    #[test]
    fn a_number_past_f64_is_out_of_range_at_its_path_not_malformed() {
        for (body, path) in [
            (r#"{"model":"m","max_tokens":1e400}"#, "$.max_tokens"),
            (r#"{"a":[1,{"b":-1e999}]}"#, "$.a[1].b"),
            ("1e400", "$"),
        ] {
            let invalid = parse(body.as_bytes()).unwrap_err();
            assert_eq!(invalid, Invalid::NumberOutOfRange(path.to_owned()), "{body}");
            let response = invalid.content_refusal().unwrap();
            assert_eq!((response.status, response.code), (400, NUMBER_OUT_OF_RANGE));
            assert!(response.message.contains(path), "{}", response.message);
        }
        // A huge integer still fits a float (serde_json reads it as one): that is for the
        // field's reader to judge.
        assert!(parse(br#"{"max_tokens":99999999999999999999999}"#).is_ok());
        assert_eq!(parse(br#"{"a":1e400"#), Err(Invalid::NumberOutOfRange("$.a".into())));
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth_with_its_path() {
        let cases = [
            (r#"{"model":"fast","model":"smart"}"#, "$.model"),
            (r#"{"model":"smart","messages":[],"model":"evil-oa"}"#, "$.model"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"user","role":"system"}]}"#,
                "$.messages[1].role",
            ),
            (r#"{"a":{"b":[1,{"c":1,"c":2}]}}"#, "$.a.b[1].c"),
            (r#"[{"x":1},{"y":1,"y":1}]"#, "$[1].y"),
            (r#"{"tool choice":1,"tool choice":2}"#, r#"$["tool choice"]"#),
            // Equal after unescaping: the same key to every reader.
            (r#"{"model":"a","mod\u0065l":"b"}"#, "$.model"),
        ];
        for (body, path) in cases {
            assert_eq!(duplicate(body), path, "{body}");
        }
    }

    #[test]
    fn paths_never_carry_values_and_long_keys_are_cut() {
        let key = "k".repeat(500);
        let body = format!(r#"{{"{key}":"secret-value","{key}":"other-secret"}}"#);
        let path = duplicate(&body);
        assert!(!path.contains("secret"), "{path}");
        assert_eq!(path, format!("$[\"{}…\"]", "k".repeat(MAX_KEY_CHARS)));
        let response = Invalid::DuplicateKey(path).content_refusal().unwrap();
        assert_eq!((response.status, response.code), (400, DUPLICATE_KEY));
        assert!(response.message.contains("$[\"kkk"));
        assert_eq!(Invalid::Malformed.content_refusal(), None);
    }

    #[test]
    fn bodies_without_repeats_read_as_serde_json_reads_them() {
        let bodies = [
            r#"{"model":"m","messages":[{"role":"user","content":"hé \"q\" \u00e9"}],"temperature":0,"n":-3,"top_p":0.5}"#,
            r#"[1, 2.5e3, -0.0, null, true, "x", {}, []]"#,
            r#"  {"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}  "#,
            "18446744073709551615",
            "\"only a string\"",
        ];
        for body in bodies {
            let want: Value = serde_json::from_str(body).unwrap();
            assert_eq!(parse(body.as_bytes()), Ok(want), "{body}");
        }
        assert_eq!(parse(br#"{"a":1}"#), Ok(json!({"a": 1})));
    }

    #[test]
    fn malformed_bodies_are_refused_not_panicked_on() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        for body in [
            &b""[..],
            b"   ",
            b"{\"model\": ",
            b"{\"a\":1} trailing",
            b"{\"a\":1}{\"a\":1}",
            b"\xff\xfe",
            b"{\"\xff\":1}",
            b"[1,]",
            deep.as_bytes(),
            deep_objects.as_bytes(),
        ] {
            assert_eq!(
                parse(body),
                Err(Invalid::Malformed),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // serde_json's own nesting limit, exactly (127 levels pass, 128 do not).
        for n in 120..136 {
            let body = format!("{}{}", "[".repeat(n), r#"{"a":1}"#.to_owned() + &"]".repeat(n));
            let serde_reads = serde_json::from_str::<Value>(&body).is_ok();
            assert_eq!(parse(body.as_bytes()).is_ok(), serde_reads, "{n} levels");
            assert_eq!(serde_reads, n < 127, "{n} levels");
        }
    }

    #[test]
    fn a_repeat_after_malformed_text_is_not_reached() {
        // The reader stops at the first problem: what it reports is what it saw first.
        assert_eq!(parse(br#"{"a":1,"a":2,"#), Err(Invalid::DuplicateKey("$.a".into())));
        assert_eq!(parse(br#"{"a":,"a":2}"#), Err(Invalid::Malformed));
    }
}
