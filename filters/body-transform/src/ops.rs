//! Generic rewrites: header operations, and JSON body operations addressed by JSON Pointer.

use serde_json::Value;

/// Header changes, applied in the order remove, rename, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Appended (a header may then have several values).
    pub add: Vec<(String, String)>,
    /// Replaces any value.
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
    /// Old name to new name, value kept.
    pub rename: Vec<(String, String)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty() && self.rename.is_empty()
    }
}

/// An RFC 6901 JSON Pointer, split into unescaped tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// The pointer `text` names, or why it names none (core's RFC 6901 reader: no `~2`, no
    /// trailing `~`).
    pub fn parse(text: &str) -> Result<Pointer, String> {
        portico_core::json::pointer_tokens(text).map(Pointer)
    }

    fn parent_mut<'v>(&self, root: &'v mut Value, create: bool) -> Option<(&'v mut Value, &str)> {
        let (last, parents) = self.0.split_last()?;
        let mut node = root;
        for token in parents {
            node = match node {
                Value::Object(map) => {
                    if create && !map.contains_key(token) {
                        map.insert(token.clone(), Value::Object(serde_json::Map::new()));
                    }
                    map.get_mut(token)?
                }
                Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some((node, last))
    }

    /// Sets the value; missing objects on the way are created. `false` if the path cannot hold it.
    pub fn set(&self, root: &mut Value, value: Value) -> bool {
        let Some((parent, last)) = self.parent_mut(root, true) else {
            return false;
        };
        match parent {
            Value::Object(map) => {
                map.insert(last.to_owned(), value);
                true
            }
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    if let Some(slot) = items.get_mut(i) {
                        *slot = value;
                    }
                    true
                }
                _ if last == "-" => {
                    items.push(value);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Removes and returns the value, if present.
    pub fn take(&self, root: &mut Value) -> Option<Value> {
        let (parent, last) = self.parent_mut(root, false)?;
        match parent {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let i = last.parse::<usize>().ok().filter(|i| *i < items.len())?;
                Some(items.remove(i))
            }
            _ => None,
        }
    }
}

/// Where a `set` value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Value(Value),
    /// A request header, read in the header phase (as a JSON string).
    Header(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum BodyOp {
    Set(Pointer, Source),
    Remove(Pointer),
    /// Moves the value at the first pointer to the second.
    Rename(Pointer, Pointer),
}

/// Applies `ops` in order; `header` looks up request headers captured for `from_header`.
pub fn apply(ops: &[BodyOp], body: &mut Value, header: impl Fn(&str) -> Option<String>) {
    for op in ops {
        match op {
            BodyOp::Set(path, Source::Value(v)) => {
                path.set(body, v.clone());
            }
            BodyOp::Set(path, Source::Header(name)) => {
                if let Some(v) = header(name) {
                    path.set(body, Value::String(v));
                }
            }
            BodyOp::Remove(path) => {
                path.take(body);
            }
            BodyOp::Rename(from, to) => {
                if let Some(v) = from.take(body) {
                    to.set(body, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Pointer {
        Pointer::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn pointers_unescape_tokens() {
        assert_eq!(p("/a~1b/c~0d").0, vec!["a/b", "c~d"]);
        for bad in ["a", "/a~2b", "/a~"] {
            assert!(Pointer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_remove_and_rename_follow_pointers() {
        let mut body = json!({"a": {"b": 1}, "list": [1, 2], "old": "x"});
        let ops = vec![
            BodyOp::Set(p("/a/c"), Source::Value(json!(true))),
            BodyOp::Set(p("/new/deep/key"), Source::Header("x-user".into())),
            BodyOp::Set(p("/list/-"), Source::Value(json!(3))),
            BodyOp::Remove(p("/a/b")),
            BodyOp::Rename(p("/old"), p("/renamed")),
            BodyOp::Remove(p("/missing/path")),
            BodyOp::Set(p("/list/9"), Source::Value(json!(0))),
        ];
        apply(&ops, &mut body, |h| (h == "x-user").then(|| "alice".to_owned()));
        assert_eq!(
            body,
            json!({"a": {"c": true}, "list": [1, 2, 3], "renamed": "x", "new": {"deep": {"key": "alice"}}})
        );
    }

    #[test]
    fn a_missing_header_sets_nothing() {
        let mut body = json!({});
        apply(
            &[BodyOp::Set(p("/u"), Source::Header("x-none".into()))],
            &mut body,
            |_| None,
        );
        assert_eq!(body, json!({}));
    }
}
