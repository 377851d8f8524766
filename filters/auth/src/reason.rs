//! Every way a request can be refused, with its stable code, status and RFC 6750 details.

use portico_core::response::{ErrorResponse, ErrorType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingCredentials,
    MultipleCredentials,
    MalformedToken,
    UnsupportedTokenType,
    TokenTooLarge,
    AlgorithmNotAllowed,
    UnknownKeyId,
    InvalidSignature,
    TokenExpired,
    TokenNotYetValid,
    InvalidIssuer,
    InvalidAudience,
    MissingClaim,
    InvalidConsumerClaim,
    BlankConsumerClaim,
    InvalidTierClaim,
    InvalidApiKey,
    RevokedApiKey,
    InsufficientScope,
    ConsumerNotAllowed,
    TierNotAllowed,
    KeysUnavailable,
    Internal,
}

impl Reason {
    /// Every reason, for defining one metric each at start-up.
    pub const ALL: [Reason; 23] = [
        Reason::MissingCredentials,
        Reason::MultipleCredentials,
        Reason::MalformedToken,
        Reason::UnsupportedTokenType,
        Reason::TokenTooLarge,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownKeyId,
        Reason::InvalidSignature,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::InvalidIssuer,
        Reason::InvalidAudience,
        Reason::MissingClaim,
        Reason::InvalidConsumerClaim,
        Reason::BlankConsumerClaim,
        Reason::InvalidTierClaim,
        Reason::InvalidApiKey,
        Reason::RevokedApiKey,
        Reason::InsufficientScope,
        Reason::ConsumerNotAllowed,
        Reason::TierNotAllowed,
        Reason::KeysUnavailable,
        Reason::Internal,
    ];

    /// The stable `error.code`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingCredentials => "missing_credentials",
            Reason::MultipleCredentials => "multiple_credentials",
            Reason::MalformedToken => "malformed_token",
            Reason::UnsupportedTokenType => "unsupported_token_type",
            Reason::TokenTooLarge => "token_too_large",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKeyId => "unknown_key_id",
            Reason::InvalidSignature => "invalid_signature",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::InvalidIssuer => "invalid_issuer",
            Reason::InvalidAudience => "invalid_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::InvalidConsumerClaim => "invalid_consumer_claim",
            Reason::BlankConsumerClaim => "blank_consumer_claim",
            Reason::InvalidTierClaim => "invalid_tier_claim",
            Reason::InvalidApiKey => "invalid_api_key",
            Reason::RevokedApiKey => "revoked_api_key",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ConsumerNotAllowed => "consumer_not_allowed",
            Reason::TierNotAllowed => "tier_not_allowed",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::Internal => "internal_error",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Reason::MissingCredentials => "this route requires credentials",
            Reason::MultipleCredentials => "the request carries more than one different credential; send exactly one",
            Reason::MalformedToken => "the token is not a well-formed JWT",
            Reason::UnsupportedTokenType => "the token's typ header names a kind of token this gateway does not accept",
            Reason::TokenTooLarge => "the token is larger than this gateway accepts",
            Reason::AlgorithmNotAllowed => "the token's signature algorithm is not accepted for its key",
            Reason::UnknownKeyId => "the token names a signing key (kid) that is not known",
            Reason::InvalidSignature => "the token's signature is not valid",
            Reason::TokenExpired => "the token has expired",
            Reason::TokenNotYetValid => "the token is not valid yet",
            Reason::InvalidIssuer => "the token's issuer is not accepted",
            Reason::InvalidAudience => "the token is not meant for this audience",
            Reason::MissingClaim => "the token lacks a required claim",
            Reason::InvalidConsumerClaim => {
                "the token's consumer claim is not a string (without surrounding whitespace) or an integer"
            }
            Reason::BlankConsumerClaim => "the token's consumer claim is empty or only whitespace",
            Reason::InvalidTierClaim => "the token's tier claim is not a non-empty string",
            Reason::InvalidApiKey => "the API key is not valid",
            Reason::RevokedApiKey => "the API key has been revoked",
            Reason::InsufficientScope => "the credential lacks a scope this route requires",
            Reason::ConsumerNotAllowed => "this consumer may not use this route",
            Reason::TierNotAllowed => "this consumer's tier may not use this route",
            Reason::KeysUnavailable => "the token signing keys are not available yet; retry shortly",
            Reason::Internal => "internal error in the authentication filter",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            Reason::MultipleCredentials => 400,
            Reason::InsufficientScope | Reason::ConsumerNotAllowed | Reason::TierNotAllowed => 403,
            Reason::KeysUnavailable => 503,
            Reason::Internal => 500,
            _ => 401,
        }
    }

    /// The RFC 6750 `error` parameter; none when the request had no credential at all
    /// (RFC 6750 section 3.1 asks for no error code then).
    fn rfc6750_error(self) -> Option<&'static str> {
        match self {
            Reason::MissingCredentials | Reason::KeysUnavailable | Reason::Internal => None,
            Reason::MultipleCredentials => Some("invalid_request"),
            Reason::InsufficientScope | Reason::ConsumerNotAllowed | Reason::TierNotAllowed => {
                Some("insufficient_scope")
            }
            _ => Some("invalid_token"),
        }
    }

    fn error_type(self) -> ErrorType {
        match self.status() {
            400 => ErrorType::InvalidRequest,
            403 => ErrorType::Permission,
            401 => ErrorType::Authentication,
            _ => ErrorType::Api,
        }
    }

    /// The complete local reply. `scopes` are the route's required scopes (not secret).
    pub fn response(self, realm: &str, scopes: &[String]) -> ErrorResponse {
        let mut challenge = format!("Bearer realm=\"{realm}\"");
        if let Some(error) = self.rfc6750_error() {
            challenge.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                self.message()
            ));
        }
        if self == Reason::InsufficientScope && !scopes.is_empty() {
            challenge.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
        }
        let response = ErrorResponse::new(self.status(), self.error_type(), self.code(), self.message());
        match self {
            Reason::KeysUnavailable => response.with_header("retry-after", "1"),
            Reason::Internal => response,
            _ => response.with_header("www-authenticate", challenge),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_credentials_get_a_bare_challenge() {
        let r = Reason::MissingCredentials.response("portico", &[]);
        assert_eq!(r.status, 401);
        assert_eq!(
            r.headers,
            vec![("www-authenticate", "Bearer realm=\"portico\"".to_owned())]
        );
    }

    #[test]
    fn invalid_tokens_carry_the_rfc6750_error() {
        let r = Reason::TokenExpired.response("portico", &[]);
        assert_eq!(r.code, "token_expired");
        assert_eq!(
            r.headers,
            vec![(
                "www-authenticate",
                "Bearer realm=\"portico\", error=\"invalid_token\", error_description=\"the token has expired\""
                    .to_owned()
            )]
        );
    }

    #[test]
    fn scope_failures_are_403_and_name_the_scope() {
        let r = Reason::InsufficientScope.response("p", &["read".into(), "write".into()]);
        assert_eq!(r.status, 403);
        assert!(r.headers[0].1.ends_with("error=\"insufficient_scope\", error_description=\"the credential lacks a scope this route requires\", scope=\"read write\""));
    }

    #[test]
    fn every_code_is_distinct_snake_case() {
        let codes: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert!(codes
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}
