//! Media types: the one test of "is this JSON" every Portico filter uses, and the same test as
//! the regex Envoy's `json_to_metadata` is configured with, so the filters and Envoy agree on
//! which bodies are JSON.
//!
//! A JSON media type is `application/json` or a structured-syntax `+json` type such as
//! `application/vnd.api+json` (RFC 6839), compared without regard to case (RFC 9110 8.3.1),
//! with optional whitespace and parameters: `Application/JSON; charset=utf-8` is JSON.
//! Clients send all of these: .NET's `JsonContent` and many Java clients add `charset`.

/// The `allow_content_types_regex` for Envoy's `json_to_metadata` that accepts exactly what
/// [`is_json`] accepts (RE2, matched against the whole `content-type` value). Envoy's default
/// is the exact string `application/json`, which sends every other spelling to `on_error`.
pub const JSON_CONTENT_TYPE_REGEX: &str = r"(?i)[ \t]*application/([0-9a-z.!#$&^_-]+\+)?json[ \t]*(;.*)?";

/// Whether a `content-type` value names JSON.
pub fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type.split(|b| *b == b';').next().map_or(&b""[..], trim_ows);
    let Some(slash) = essence.iter().position(|b| *b == b'/') else {
        return false;
    };
    let (kind, subtype) = essence.split_at(slash);
    let subtype = subtype.get(1..).unwrap_or_default();
    if !kind.eq_ignore_ascii_case(b"application") {
        return false;
    }
    if subtype.eq_ignore_ascii_case(b"json") {
        return true;
    }
    let Some(prefix_len) = subtype.len().checked_sub(5) else {
        return false;
    };
    let (prefix, suffix) = subtype.split_at(prefix_len);
    suffix.eq_ignore_ascii_case(b"+json")
        && !prefix.is_empty()
        && prefix
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b".!#$&^_-".contains(b))
}

/// `value` without the optional whitespace (spaces and tabs) HTTP allows around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_spellings_clients_send_are_json() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "Application/JSON",
            "APPLICATION/JSON ; charset=utf-8",
            " application/json",
            "application/vnd.api+json",
            "application/problem+JSON; charset=utf-8",
        ] {
            assert!(is_json(ct.as_bytes()), "{ct:?}");
        }
    }

    #[test]
    fn other_media_types_are_not_json() {
        for ct in [
            "",
            "text/plain",
            "text/json",
            "application/jsonx",
            "application/x-json5",
            "application/+json",
            "application/a+b+json",
            "application/json-seq",
            "multipart/form-data; boundary=application/json",
            "application",
            "\u{ff}application/json",
            "\u{c}application/json",
        ] {
            assert!(!is_json(ct.as_bytes()), "{ct:?}");
        }
        assert!(!is_json(b"application/\xffjson"));
    }
}
