//! The output budget a request states, as Envoy's `json_to_metadata` lifts it.
//!
//! The lifted value comes as text (the rule's `type: STRING`; a number as its decimal or
//! exponent form, `1024`, `50000`, `5e+04`) or, from a rule of `type: NUMBER`, as an 8-byte
//! little-endian double. JSON has one number type, so `1024.0` and `5e4` are the integers their
//! clients mean: they are read, not ignored (ignoring them reserved the default instead). A
//! number that is not a count (a fraction, negative, or past 2^64) is refused by name: no
//! reservation could honour it.

use portico_core::response::{ErrorResponse, ErrorType};

/// 2^64, the first integer a `u64` cannot hold, exactly representable as a double.
const LIMIT: f64 = 18_446_744_073_709_551_616.0;

/// The count in `raw`, lifted from the body field `field`: `Ok(None)` when it is no number at
/// all (a string of words: the backend or body-transform refuses its type), an error response
/// naming the field when it is a number but not a count.
pub fn max_tokens(field: &'static str, raw: &[u8]) -> Result<Option<u64>, ErrorResponse> {
    let number = match std::str::from_utf8(raw) {
        Ok(text) => {
            let text = text.trim();
            if let Ok(n) = text.parse::<u64>() {
                return Ok(Some(n));
            }
            match text.parse::<f64>() {
                Ok(f) => f,
                Err(_) => return Ok(None),
            }
        }
        Err(_) => match <[u8; 8]>::try_from(raw) {
            Ok(bytes) => f64::from_le_bytes(bytes),
            Err(_) => return Ok(None),
        },
    };
    count(number).map(Some).map_err(|reason| {
        ErrorResponse::new(
            400,
            ErrorType::InvalidRequest,
            "invalid_field",
            format!("`{field}` {reason}"),
        )
    })
}

/// A double that is a whole, non-negative number below 2^64, as that integer.
fn count(f: f64) -> Result<u64, &'static str> {
    if f.is_nan() || f < 0.0 {
        return Err("must be a non-negative integer");
    }
    if f >= LIMIT {
        return Err("is out of range: a token count is at most 18446744073709551615");
    }
    if f.fract() != 0.0 {
        return Err("must be an integer");
    }
    // Whole, non-negative and below 2^64: the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(f as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &str) -> Result<Option<u64>, String> {
        max_tokens("max_tokens", raw.as_bytes()).map_err(|e| format!("{} {} {}", e.status, e.code, e.message))
    }

    #[test]
    fn integral_floats_are_the_integers_they_mean() {
        for (raw, want) in [
            ("1024", 1024),
            (" 1024 ", 1024),
            ("1024.0", 1024),
            ("5e4", 50_000),
            ("5.0e4", 50_000),
            ("5e+04", 50_000),
            ("1.23457e+06", 1_234_570),
            ("0", 0),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(read(raw), Ok(Some(want)), "{raw}");
        }
        // A NUMBER rule's double.
        assert_eq!(max_tokens("max_tokens", &1024.0f64.to_le_bytes()), Ok(Some(1024)));
    }

    #[test]
    fn numbers_that_are_not_counts_are_refused_naming_the_field() {
        for (raw, says) in [
            ("2.5", "must be an integer"),
            ("-5", "must be a non-negative integer"),
            ("-0.5", "must be a non-negative integer"),
            ("1e400", "is out of range"),
            ("inf", "is out of range"),
            ("NaN", "must be a non-negative integer"),
            ("99999999999999999999999", "is out of range"),
            ("1.8446744073709552e19", "is out of range"),
        ] {
            let err = read(raw).unwrap_err();
            assert!(err.starts_with("400 invalid_field `max_tokens` "), "{raw}: {err}");
            assert!(err.contains(says), "{raw}: {err}");
        }
        assert!(max_tokens("max_completion_tokens", b"2.5")
            .unwrap_err()
            .message
            .starts_with("`max_completion_tokens`"));
    }

    #[test]
    fn values_that_are_no_number_are_left_to_others() {
        for raw in ["", "lots", "[1]", "true"] {
            assert_eq!(read(raw), Ok(None), "{raw}");
        }
        assert_eq!(max_tokens("max_tokens", &[0xff, 0xfe]), Ok(None));
    }
}
