//! Translation between the OpenAI Chat Completions API and the Anthropic Messages API.

pub mod request;
pub mod response;
pub mod stream;

/// Sets `key` on `target` when it is an object (it always is where this is used: the values are
/// built here); never panics, unlike `value[key] = ..`.
pub(crate) fn put(target: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(map) = target.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

/// A request field one API has and the other cannot express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Untranslatable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

#[cfg(test)]
mod tests;
