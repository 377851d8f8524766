//! Header names and values in configuration, checked once at load by every filter.
//!
//! Envoy puts a header that a filter sets on the wire as it is: a value holding CR LF splits the
//! message (a response header `a\r\nb` becomes two headers, or a second response), and a name
//! with a space makes a message the peer refuses. Neither `envoy --mode validate` nor the Wasm
//! host checks what a filter's configuration will write, so the filters check it here, with the
//! JSON path, before the first request.
//!
//! Three rules of increasing strictness:
//! - [`name_problem`]: a name that can appear on a request at all (an RFC 9110 token, or a
//!   pseudo-header such as `:authority`), for names configuration only reads;
//! - [`write_problem`]: a name a filter may set or remove, which also keeps pseudo-headers,
//!   message framing and connection headers for Envoy, and, for an operator's header operations,
//!   Portico's own `x-portico-` headers for Portico;
//! - [`value_problem`]: a value that cannot split a message.

use crate::config::{Errors, Node};
use crate::contract::header::PREFIX as PORTICO_PREFIX;

/// Who writes a header: the rules differ only for Portico's own headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A header operation an operator configured (add, set, remove, rename, inject).
    Operation,
    /// A header Portico itself sets under a configurable name (such as the cluster header).
    Portico,
}

/// Headers that frame the message or manage the connection: Envoy owns them on both sides.
const FRAMING: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
    "proxy-connection",
];

/// RFC 9110 `tchar`: what a header name may hold.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Why `name` cannot be a header name, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    let token = name.strip_prefix(':').unwrap_or(name);
    if token.is_empty() {
        return Some(format!("{name:?} is not a header name"));
    }
    let bad = token.chars().find(|c| !is_token_char(*c))?;
    Some(format!(
        "header name {name:?} contains {bad:?}, which HTTP does not allow in a name \
         (use letters, digits and !#$%&'*+-.^_`|~)"
    ))
}

/// Why a filter must not set or remove the header `name`, if it must not.
pub fn write_problem(name: &str, writer: Writer) -> Option<String> {
    if let Some(problem) = name_problem(name) {
        return Some(problem);
    }
    let lower = name.to_ascii_lowercase();
    let name = lower.as_str();
    match name {
        ":path" => Some(format!(
            "{name:?} is a pseudo-header, which header operations cannot change: \
             change the path with header-routing's `rewrite` or `path_prefix`"
        )),
        ":authority" | "host" => Some(format!(
            "{name:?} is the request's authority, which header operations cannot change: \
             use header-routing's `host_rewrite`"
        )),
        _ if name.starts_with(':') => Some(format!(
            "{name:?} is a pseudo-header, which header operations cannot change"
        )),
        _ if FRAMING.contains(&name) => Some(format!(
            "{name:?} frames the message or manages the connection, which Envoy owns: \
             header operations cannot change it"
        )),
        _ if writer == Writer::Operation && name.starts_with(PORTICO_PREFIX) => Some(format!(
            "{name:?} is Portico's own header ({PORTICO_PREFIX} headers carry identity and routing \
             between its filters): header operations cannot change it"
        )),
        _ => None,
    }
}

/// What a header Portico must not write for routing or a backend carries: a cluster header or a
/// backend's added header with such a name would overwrite what auth, Envoy or the upstream
/// trusts. Checked on top of [`write_problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// `x-portico-*`: the caller's identity and routing between Portico's filters.
    Identity,
    /// `authorization`, `proxy-authorization`, `x-api-key`, `cookie`.
    Credential,
    /// `x-forwarded-*`, `forwarded`, `x-real-ip`, `via`.
    Forwarding,
    /// `x-envoy-*`.
    Envoy,
}

impl Reserved {
    /// What `name` (any case) carries, if it is reserved.
    pub fn of(name: &str) -> Option<Reserved> {
        let name = name.to_ascii_lowercase();
        if name.starts_with(PORTICO_PREFIX) {
            Some(Reserved::Identity)
        } else if matches!(
            name.as_str(),
            "authorization" | "proxy-authorization" | "x-api-key" | "cookie"
        ) {
            Some(Reserved::Credential)
        } else if name.starts_with("x-forwarded-") || matches!(name.as_str(), "forwarded" | "x-real-ip" | "via") {
            Some(Reserved::Forwarding)
        } else if name.starts_with("x-envoy-") {
            Some(Reserved::Envoy)
        } else {
            None
        }
    }

    /// Why `name`, which is reserved as `self`, cannot be written.
    pub fn problem(self, name: &str) -> String {
        let reason = match self {
            Reserved::Identity => "carries the caller's identity between Portico's filters",
            Reserved::Credential => "carries a credential",
            Reserved::Forwarding => "describes the client connection (forwarding headers)",
            Reserved::Envoy => "steers Envoy (x-envoy- headers)",
        };
        format!("{:?} {reason}", name.to_ascii_lowercase())
    }
}

/// Why `name` cannot be a cookie name (an RFC 9110 token, as RFC 6265 asks), if it cannot.
pub fn cookie_name_problem(name: &str) -> Option<String> {
    let bad = name.chars().find(|c| !is_token_char(*c))?;
    Some(format!(
        "cookie name {name:?} contains {bad:?}: a cookie name is an RFC 6265 token (letters, digits and \
         !#$%&'*+-.^_`|~), so no request could carry it"
    ))
}

/// Why `value` cannot be a header value, if it cannot: any control character but tab (RFC 9110
/// `field-value`), above all CR and LF, which would split the message.
pub fn value_problem(value: &str) -> Option<String> {
    let bad = value.chars().find(|c| c.is_ascii_control() && *c != '\t')?;
    Some(format!(
        "header value contains {bad:?}, a control character HTTP does not allow in a value \
         (CR and LF would split the message)"
    ))
}

// === Readers ===

impl Node<'_> {
    /// A non-empty string that is a header name, lower-cased: for names configuration reads.
    pub fn header_name(&self, errors: &mut Errors) -> Option<String> {
        self.checked_name(errors, name_problem)
    }

    /// A non-empty string that is a header name `writer` may set or remove, lower-cased.
    pub fn writable_header_name(&self, writer: Writer, errors: &mut Errors) -> Option<String> {
        self.checked_name(errors, |name| write_problem(name, writer))
    }

    /// A string that is a header value.
    pub fn header_value(&self, errors: &mut Errors) -> Option<String> {
        let value = self.str(errors)?;
        self.report(value_problem(value), errors).then(|| value.to_owned())
    }

    fn checked_name(&self, errors: &mut Errors, problem: impl Fn(&str) -> Option<String>) -> Option<String> {
        let name = self.non_empty_str(errors)?;
        self.report(problem(name), errors).then(|| name.to_ascii_lowercase())
    }

    /// Records `problem` at this node; `true` when there was none.
    pub fn report(&self, problem: Option<String>, errors: &mut Errors) -> bool {
        match problem {
            Some(message) => {
                self.error(errors, message);
                false
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens_or_pseudo_headers() {
        for ok in ["x-env", "X-Env", "a!#$%&'*+-.^_`|~9", ":authority", ":path"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for (name, want) in [
            (
                "x env",
                "header name \"x env\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "x:y",
                "header name \"x:y\" contains ':', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "x\r\ny",
                "header name \"x\\r\\ny\" contains '\\r', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "é",
                "header name \"é\" contains 'é', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (":", "\":\" is not a header name"),
            ("", "\"\" is not a header name"),
        ] {
            assert_eq!(name_problem(name).as_deref(), Some(want), "{name:?}");
        }
    }

    #[test]
    fn writes_leave_pseudo_framing_and_portico_headers_alone() {
        let cases: [(&str, Writer, Option<&str>); 13] = [
            ("x-env", Writer::Operation, None),
            ("authorization", Writer::Operation, None),
            ("x-portico-cluster", Writer::Portico, None),
            (
                ":path",
                Writer::Operation,
                Some("\":path\" is a pseudo-header, which header operations cannot change: change the path with header-routing's `rewrite` or `path_prefix`"),
            ),
            (
                ":Authority",
                Writer::Portico,
                Some("\":authority\" is the request's authority, which header operations cannot change: use header-routing's `host_rewrite`"),
            ),
            (
                "Host",
                Writer::Operation,
                Some("\"host\" is the request's authority, which header operations cannot change: use header-routing's `host_rewrite`"),
            ),
            (
                ":status",
                Writer::Operation,
                Some("\":status\" is a pseudo-header, which header operations cannot change"),
            ),
            (
                ":method",
                Writer::Operation,
                Some("\":method\" is a pseudo-header, which header operations cannot change"),
            ),
            (
                ":scheme",
                Writer::Portico,
                Some("\":scheme\" is a pseudo-header, which header operations cannot change"),
            ),
            (
                "Content-Length",
                Writer::Operation,
                Some("\"content-length\" frames the message or manages the connection, which Envoy owns: header operations cannot change it"),
            ),
            (
                "transfer-encoding",
                Writer::Portico,
                Some("\"transfer-encoding\" frames the message or manages the connection, which Envoy owns: header operations cannot change it"),
            ),
            (
                "x-portico-consumer",
                Writer::Operation,
                Some("\"x-portico-consumer\" is Portico's own header (x-portico- headers carry identity and routing between its filters): header operations cannot change it"),
            ),
            (
                "x y",
                Writer::Portico,
                Some("header name \"x y\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)"),
            ),
        ];
        for (name, writer, want) in cases {
            assert_eq!(write_problem(name, writer).as_deref(), want, "{name:?} by {writer:?}");
        }
        for framing in ["connection", "upgrade", "te", "keep-alive", "proxy-connection"] {
            assert!(write_problem(framing, Writer::Operation).is_some(), "{framing}");
        }
    }

    #[test]
    fn values_cannot_hold_control_characters() {
        for ok in ["", "a b", "tab\there", "ünïcode", "Bearer sk-1"] {
            assert_eq!(value_problem(ok), None, "{ok:?}");
        }
        for (value, bad) in [
            ("a\r\nb", "'\\r'"),
            ("a\nb", "'\\n'"),
            ("a\0", "'\\0'"),
            ("\u{7f}", "'\\u{7f}'"),
        ] {
            assert_eq!(
                value_problem(value),
                Some(format!(
                    "header value contains {bad}, a control character HTTP does not allow in a value (CR and LF would split the message)"
                )),
                "{value:?}"
            );
        }
    }

    #[test]
    fn readers_lower_case_names_and_report_at_the_node() {
        let v = serde_json::json!(["X-Team", "x y", ":path", "ok\r\n"]);
        let node = Node::new("$.h".to_owned(), &v);
        let mut errors = Errors::default();
        let items = node.array(&mut errors).unwrap_or_default();
        let names: Vec<Option<String>> = items.iter().map(|n| n.header_name(&mut errors)).collect();
        assert_eq!(names, vec![Some("x-team".into()), None, Some(":path".into()), None]);
        let written = items
            .get(2)
            .and_then(|n| n.writable_header_name(Writer::Operation, &mut errors));
        assert_eq!(written, None);
        let value = items.get(3).and_then(|n| n.header_value(&mut errors));
        assert_eq!(value, None);
        let paths: Vec<&str> = errors.list().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["$.h[1]", "$.h[3]", "$.h[2]", "$.h[3]"]);
    }
}
