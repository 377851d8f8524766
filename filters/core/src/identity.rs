//! The form of the consumer id auth hands later filters and upstreams in
//! [`crate::contract::header::CONSUMER`] (the headers themselves are in [`crate::contract`]).
//!
//! The consumer id is `<namespace>:<name>`: the namespace says where the name comes from (a
//! JWT provider's, `apikey` for API keys, or one an operator chose to share), so that two
//! issuers' `user-1001`, or a token's `alice` and an API key's `alice`, are different
//! consumers to every filter that keys on the id (rate limits, token budgets, cache scope,
//! metrics, sticky splits). The namespace never holds `:`, so the first `:` splits the id.

/// Longest namespace accepted.
pub const MAX_NAMESPACE: usize = 64;

/// The consumer id of `name` in `namespace`.
pub fn consumer_id(namespace: &str, name: &str) -> String {
    format!("{namespace}:{name}")
}

/// A namespace: `[a-z0-9][a-z0-9_.-]*`, at most [`MAX_NAMESPACE`] bytes. Lower case only, so
/// that `Acme` and `acme` can never be two tenants that look alike in a dashboard.
pub fn valid_namespace(namespace: &str) -> bool {
    let mut bytes = namespace.bytes();
    namespace.len() <= MAX_NAMESPACE
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

/// The namespace and name of a consumer id written in configuration, or why it is not one.
pub fn parse_consumer_id(id: &str) -> Result<(&str, &str), String> {
    let Some((namespace, name)) = id.split_once(':') else {
        return Err(format!(
            "{id:?} is not a consumer id: write `<namespace>:<name>`, such as `apikey:{id}`"
        ));
    };
    if !valid_namespace(namespace) {
        return Err(format!(
            "{id:?}: the namespace {namespace:?} must match [a-z0-9][a-z0-9_.-]* (at most {MAX_NAMESPACE} bytes)"
        ));
    }
    if name.is_empty() {
        return Err(format!("{id:?}: the name after the namespace is empty"));
    }
    Ok((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_lower_case_names() {
        for ok in ["apikey", "idp-1", "a.b_c", "0"] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", "Acme", "-a", "a:b", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn consumer_ids_split_at_the_first_colon() {
        assert_eq!(consumer_id("idp", "urn:user:7"), "idp:urn:user:7");
        assert_eq!(parse_consumer_id("idp:urn:user:7"), Ok(("idp", "urn:user:7")));
        assert_eq!(
            parse_consumer_id("alice").unwrap_err(),
            "\"alice\" is not a consumer id: write `<namespace>:<name>`, such as `apikey:alice`"
        );
        assert!(parse_consumer_id("Idp:x").is_err());
        assert!(parse_consumer_id("idp:").is_err());
    }
}
