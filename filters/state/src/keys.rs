//! Redis key names. Every key of one consumer carries the hash tag `{<namespace>:<name>}`, so
//! all the keys one call touches sit on one Redis Cluster slot and one Lua script can update
//! them atomically.
//!
//! Names come from requests, so every part is escaped (`%`, `#`, `{`, `}`, `:`, `=` and bytes
//! outside printable ASCII become `%XX`): the tag then always ends where it should, and two
//! different (consumer, budget) pairs can never produce the same key. A part longer than 512
//! bytes once escaped is replaced by its SHA-256, so no request can make Redis keep huge keys.

use std::fmt::Write;

use portico_core::identity::valid_namespace;

/// Every key starts with this, so an operator can tell Portico's keys apart in a shared Redis.
const PREFIX: &str = "portico";
/// The longest consumer id accepted.
pub const MAX_CONSUMER: usize = 512;
/// Names longer than this once escaped (rate limit descriptors built from request headers)
/// are keyed by their SHA-256, so a client cannot make Redis store huge keys.
const MAX_KEY_PART: usize = 512;

/// The hash tag of one consumer, `{<namespace>:<escaped name>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

impl Tag {
    /// The tag of a consumer id `<namespace>:<name>`, or why it is not one.
    pub fn of_consumer(id: &str) -> Result<Tag, String> {
        let Some((namespace, name)) = id.split_once(':') else {
            return Err("consumer must be `<namespace>:<name>`".to_owned());
        };
        if !valid_namespace(namespace) {
            return Err(format!(
                "consumer namespace {namespace:?} is not `[a-z0-9][a-z0-9_.-]*` of at most 64 bytes"
            ));
        }
        if name.is_empty() {
            return Err("consumer name is empty".to_owned());
        }
        if id.len() > MAX_CONSUMER {
            return Err(format!("consumer id is longer than {MAX_CONSUMER} bytes"));
        }
        Ok(Tag(format!("{{{namespace}:{}}}", escape(name))))
    }

    /// The tag of a rate limit service descriptor: its domain and first entry, so that every
    /// counter under one first entry (often the client or the consumer) shares a slot.
    pub fn of_descriptor(domain: &str, key: &str, value: &str) -> Tag {
        let entry = bounded(format!("{}={}", escape(key), escape(value)));
        Tag(format!("{{rls:{}:{entry}}}", bounded(escape(domain))))
    }

    /// The counter (a hash: window start `w`, window length `n`, usage `u`, held reservations
    /// `r:<id>`) and the sorted set of reservation expiries of the budget or limit `name`.
    pub fn counter_keys(&self, name: &str) -> [String; 2] {
        let counter = format!("{PREFIX}:{}:c:{}", self.0, bounded(escape(name)));
        let expiries = format!("{counter}:x");
        [counter, expiries]
    }
}

/// An escaped part as it is, or `#` and its SHA-256 in hex when it is too long: [`escape`]
/// never leaves a `#`, so the two forms cannot meet.
fn bounded(escaped: String) -> String {
    if escaped.len() <= MAX_KEY_PART {
        return escaped;
    }
    let digest = hmac_sha256::Hash::hash(escaped.as_bytes());
    let mut out = String::with_capacity(65);
    out.push('#');
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `s` with `%`, `#`, `{`, `}`, `:`, `=` and every byte outside printable ASCII as `%XX`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'#' | b'{' | b'}' | b':' | b'=') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_key_carries_its_hash_tag() {
        let tag = Tag::of_consumer("acme:alice").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            tag.counter_keys("tokens/day"),
            [
                "portico:{acme:alice}:c:tokens/day",
                "portico:{acme:alice}:c:tokens/day:x"
            ]
        );
    }

    #[test]
    fn braces_in_a_name_cannot_end_or_move_the_tag() {
        let tag = Tag::of_consumer("acme:}x{y").unwrap_or_else(|e| panic!("{e}"));
        let [counter, _] = tag.counter_keys("b{c}");
        assert_eq!(counter, "portico:{acme:%7Dx%7By}:c:b%7Bc%7D");
        assert_eq!(counter.matches('{').count(), 1);
    }

    #[test]
    fn different_consumers_and_budgets_never_share_a_key() {
        let pairs = [
            ("a:b", "c"),
            ("a:b:c", ""),
            ("a:b%3Ac", "x"),
            ("a:b", "c:x"),
            ("a:b:c", "x"),
        ];
        let mut keys: Vec<String> = pairs
            .iter()
            .filter_map(|(c, b)| Tag::of_consumer(c).ok().map(|t| t.counter_keys(b)[0].clone()))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn two_issuers_of_the_same_subject_get_different_slots() {
        assert_ne!(
            Tag::of_consumer("issuer-a:alice").ok(),
            Tag::of_consumer("issuer-b:alice").ok()
        );
    }

    #[test]
    fn a_consumer_id_without_a_valid_namespace_is_refused() {
        for bad in ["alice", "Acme:alice", ":alice", "acme:", "a{b:c"] {
            assert!(Tag::of_consumer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_names_are_keyed_by_their_digest() {
        let tag = Tag::of_descriptor("d", "k", &"v".repeat(10_000));
        assert!(tag.0.len() < 100, "{}", tag.0);
        assert_ne!(tag, Tag::of_descriptor("d", "k", &"v".repeat(10_001)));
        let [counter, _] = tag.counter_keys(&"b".repeat(600));
        assert!(counter.len() < 200, "{counter}");
        assert!(Tag::of_consumer(&format!("acme:{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn a_descriptor_tag_escapes_its_parts() {
        assert_eq!(Tag::of_descriptor("d", "k=1", "v:}").0, "{rls:d:k%3D1=v%3A%7D}");
    }
}
