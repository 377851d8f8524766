//! The cache key, and what a request body says about being safe to replay.
//!
//! The key is SHA-256 over length-prefixed fields: the scope (kind and value), the method and
//! path, the backend, the upstream model, the configured `vary` headers, and the whole body as
//! canonical JSON (object keys sorted, no insignificant whitespace). Every field of the body
//! is in it, so two requests that differ in a system prompt, a parameter or the model never
//! share an entry, and two requests that differ only in key order or spacing do.
//!
//! The body is read strictly ([`portico_core::json`]): canonical JSON keeps one value per key,
//! so a body that repeats a key would share an entry with one that does not, although a
//! backend reading the first value answers it differently. Such a body is not cached.

use portico_core::json;
use serde_json::Value;

/// What the key is made of, gathered by the host shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts<'a> {
    pub scope_kind: &'a str,
    pub scope: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub backend: &'a str,
    /// `(name, value)` of each `vary` header, in configuration order; absent ones are empty.
    pub vary: Vec<(&'a str, &'a [u8])>,
}

pub type Key = [u8; 32];

/// A parsed request body and the fields that decide replay. Its canonical form is written
/// only when a key is needed (a bypassed request never pays for it).
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// `None` for an empty body.
    value: Option<Value>,
    pub model: String,
    pub streaming: bool,
    /// `temperature` is the number 0. Absent or null is not enough: the OpenAI and Anthropic
    /// APIs both default it to 1, so such a request asks for a sampled answer.
    pub deterministic: bool,
}

/// Why a body cannot be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unkeyable {
    NotJson,
    /// An object repeats a key.
    DuplicateKey,
}

impl Unkeyable {
    /// The `reason` label of the bypass.
    pub fn reason(self) -> &'static str {
        match self {
            Unkeyable::NotJson => "not_json",
            Unkeyable::DuplicateKey => "duplicate_key",
        }
    }
}

impl Body {
    /// An empty body (a GET, say) is cacheable (not deterministic: it has no `temperature`);
    /// anything else must be JSON without repeated keys.
    pub fn parse(bytes: &[u8]) -> Result<Body, Unkeyable> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body {
                value: None,
                model: String::new(),
                streaming: false,
                deterministic: false,
            });
        }
        let value = json::parse(bytes).map_err(|e| match e {
            json::Invalid::Malformed | json::Invalid::NumberOutOfRange(_) => Unkeyable::NotJson,
            json::Invalid::DuplicateKey(_) => Unkeyable::DuplicateKey,
        })?;
        let field = |name: &str| value.as_object().and_then(|o| o.get(name));
        let temperature_zero = field("temperature").and_then(Value::as_f64).is_some_and(|t| t == 0.0);
        Ok(Body {
            model: field("model").and_then(Value::as_str).unwrap_or_default().to_owned(),
            streaming: field("stream") == Some(&Value::Bool(true)),
            deterministic: temperature_zero,
            value: Some(value),
        })
    }

    /// The body as canonical JSON; empty for an empty body.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(value) = &self.value {
            write_canonical(value, &mut out);
        }
        out
    }
}

/// JSON with object keys in byte order and no whitespace. Numbers and strings are written as
/// serde_json writes them, so `1` and `1.0` stay different (a backend may treat them so).
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a string cannot fail; the fallback only keeps this total.
    match serde_json::to_vec(s) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.extend_from_slice(s.as_bytes()),
    }
}

/// The key of a request.
pub fn compute(parts: &Parts<'_>, body: &Body) -> Key {
    let mut h = hmac_sha256::Hash::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"portico-cache-v1");
    field(parts.scope_kind.as_bytes());
    field(parts.scope.as_bytes());
    field(parts.method.as_bytes());
    field(parts.path.as_bytes());
    field(parts.backend.as_bytes());
    field(body.model.as_bytes());
    for (name, value) in &parts.vary {
        field(name.as_bytes());
        field(value);
    }
    field(&body.canonical());
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts<'static> {
        Parts {
            scope_kind: "consumer",
            scope: "alice",
            method: "POST",
            path: "/v1/chat/completions",
            backend: "openai",
            vary: vec![("anthropic-version", b"")],
        }
    }

    fn key(parts: &Parts<'_>, body: &str) -> Key {
        compute(parts, &Body::parse(body.as_bytes()).unwrap())
    }

    const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"temperature":0}"#;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let reordered = r#"{ "temperature": 0,
            "messages": [{"content": "Be brief.", "role": "system"}, {"role": "user", "content": "hi"}],
            "model": "gpt-4o" }"#;
        assert_eq!(key(&parts(), BODY), key(&parts(), reordered));
    }

    #[test]
    fn every_part_of_the_request_separates_entries() {
        let base = key(&parts(), BODY);
        let bodies = [
            BODY.replace("gpt-4o", "gpt-4o-mini"),
            BODY.replace("Be brief.", "Be verbose."),
            BODY.replace("\"hi\"", "\"hello\""),
            BODY.replace("\"temperature\":0", "\"temperature\":0,\"max_tokens\":5"),
            BODY.replace("\"temperature\":0", "\"temperature\":0.0"),
        ];
        for body in &bodies {
            assert_ne!(key(&parts(), body), base, "{body}");
        }
        let changes: [fn(&mut Parts<'static>); 6] = [
            |p| p.scope = "bob",
            |p| p.scope_kind = "tier",
            |p| p.method = "PUT",
            |p| p.path = "/v1/chat/completions?x=1",
            |p| p.backend = "anthropic",
            |p| p.vary = vec![("anthropic-version", b"2023-06-01")],
        ];
        for change in changes {
            let mut p = parts();
            change(&mut p);
            assert_ne!(key(&p, BODY), base, "{p:?}");
        }
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let mut a = parts();
        a.scope = "ab";
        a.method = "c";
        let mut b = parts();
        b.scope = "a";
        b.method = "bc";
        assert_ne!(key(&a, BODY), key(&b, BODY));
    }

    #[test]
    fn replay_fields_are_read() {
        let b = Body::parse(BODY.as_bytes()).unwrap();
        assert!(b.deterministic && !b.streaming);
        assert_eq!(b.model, "gpt-4o");
        for zero in ["0", "0.0", "-0.0", "0e5"] {
            let body = format!(r#"{{"model":"m","temperature":{zero}}}"#);
            assert!(Body::parse(body.as_bytes()).unwrap().deterministic, "{body}");
        }
        // Both APIs default `temperature` to 1: absent or null asks for a sampled answer.
        // `top_p`, `top_k` and `seed` do not make a request deterministic on their own.
        for sampled in [
            r#"{"model":"m"}"#,
            r#"{"temperature":null}"#,
            r#"{"temperature":0.7}"#,
            r#"{"temperature":"0"}"#,
            r#"{"temperature":false}"#,
            r#"{"top_k":1}"#,
            r#"{"top_p":0}"#,
            r#"{"seed":42}"#,
            r#"{"messages":[{"temperature":0}]}"#,
            "[0]",
        ] {
            assert!(!Body::parse(sampled.as_bytes()).unwrap().deterministic, "{sampled}");
        }
        assert!(!Body::parse(b"").unwrap().deterministic);
        assert!(Body::parse(br#"{"stream":true}"#).unwrap().streaming);
        assert!(!Body::parse(br#"{"stream":"true"}"#).unwrap().streaming);
        assert!(Body::parse(b"  ").unwrap().canonical().is_empty());
    }

    #[test]
    fn hostile_bodies_are_refused_not_panicked_on() {
        assert_eq!(Body::parse(b"{\"a\": "), Err(Unkeyable::NotJson));
        assert_eq!(Body::parse(b"\xff\xfe"), Err(Unkeyable::NotJson));
        assert_eq!(
            Body::parse(br#"{"model":"a","temperature":0,"model":"b"}"#),
            Err(Unkeyable::DuplicateKey)
        );
        assert_eq!(
            Body::parse(br#"{"messages":[{"role":"user","content":"a","content":"b"}]}"#),
            Err(Unkeyable::DuplicateKey)
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(Body::parse(deep.as_bytes()), Err(Unkeyable::NotJson));
        // Arrays and scalars are JSON too; they key like anything else.
        assert!(Body::parse(b"[1,2]").is_ok());
    }

    #[test]
    fn canonical_form_is_compact_and_escaped() {
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.5, null, true], "a": "q\"\n", "é": {}}"#).unwrap();
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"q\"\n","b":[1,2.5,null,true],"é":{}}"#
        );
    }
}
