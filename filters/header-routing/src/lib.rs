//! Portico header-routing: picks the backend (an Envoy cluster) for each request and shapes the
//! request for it. Envoy stays unmodified: the filter sets the header the route configuration
//! reads with `cluster_header` and asks Envoy to re-evaluate the route.
//!
//! The decision is the pure [`decide::decide`]; [`shape`] turns it into the request's changes,
//! [`analytics`] labels the request series, and [`filter`] is the thin shell on the host layer
//! (`portico-host`). On model routes the body callback reads the whole body strictly
//! ([`check_body`]): it refuses repeated keys, which readers resolve differently, and rewrites
//! `model` when the alias names another upstream model.

pub mod analytics;
pub mod config;
pub mod decide;
pub mod filter;
pub mod shape;

use portico_core::json;
use portico_core::response::{ErrorResponse, ErrorType};

pub use filter::HeaderRouting;

/// A model route's whole body, read strictly: refused with 400 `duplicate_json_key` when an
/// object repeats a key (json_to_metadata lifted the last `model`, a backend may read the
/// first) and 400 `invalid_json` when it is not a JSON object; otherwise `Some` new body with
/// its top-level `model` set to `model`, or `None` to send it unchanged.
pub fn check_body(body: &[u8], model: Option<&str>) -> Result<Option<Vec<u8>>, ErrorResponse> {
    let invalid = || {
        ErrorResponse::new(
            400,
            ErrorType::InvalidRequest,
            "invalid_json",
            "the request body is not a JSON object",
        )
    };
    let mut value = match json::parse(body) {
        Ok(value) => value,
        Err(refusal) => return Err(refusal.content_refusal().unwrap_or_else(invalid)),
    };
    let object = value.as_object_mut().ok_or_else(invalid)?;
    let Some(model) = model else {
        return Ok(None);
    };
    object.insert("model".to_owned(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&value).map(Some).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &[u8], model: Option<&str>) -> (u32, &'static str, String) {
        let e = check_body(body, model).unwrap_err();
        (e.status, e.code, e.message)
    }

    #[test]
    fn the_model_field_is_replaced_and_the_rest_kept() {
        let out = check_body(
            br#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            Some("claude-haiku"),
        )
        .unwrap()
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "claude-haiku");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["max_tokens"], 5);
    }

    #[test]
    fn numbers_reach_the_backend_as_the_client_sent_them_when_the_model_is_rewritten() {
        // Found by the model_body fuzz target: serde_json's default float reader rounds some
        // long decimals to a neighbouring double, so rewriting `model` changed other fields.
        let sent = [
            "0.1519875916755563195",
            "99999999999999999999999999999999999999999999999999999999999999990e5",
        ];
        let body = format!(r#"{{"model":"fast","top_p":{},"n":{}}}"#, sent[0], sent[1]);
        let out = check_body(body.as_bytes(), Some("claude-haiku")).unwrap().unwrap();
        let text = String::from_utf8(out).unwrap();
        for (field, sent) in ["top_p", "n"].into_iter().zip(sent) {
            // The number as written upstream, read by Rust's exact parser.
            let written = text
                .split_once(&format!("\"{field}\":"))
                .and_then(|(_, rest)| rest.split([',', '}']).next())
                .unwrap();
            let want: f64 = sent.parse().unwrap();
            assert_eq!(written.parse::<f64>(), Ok(want), "{field}: sent {sent}, got {text}");
        }
    }

    #[test]
    fn a_body_without_a_new_model_passes_unchanged() {
        assert_eq!(check_body(br#"{"model":"gpt-4o","messages":[]}"#, None), Ok(None));
    }

    #[test]
    fn repeated_keys_are_refused_with_their_path_whether_or_not_the_model_changes() {
        for model in [None, Some("claude-haiku")] {
            let (status, code, message) = refusal(br#"{"model":"fast","model":"smart","messages":[]}"#, model);
            assert_eq!((status, code), (400, "duplicate_json_key"));
            assert!(message.contains("$.model"), "{message}");
            assert!(!message.contains("fast") && !message.contains("smart"), "{message}");
            let nested = br#"{"model":"fast","messages":[{"role":"user","content":"a","content":"b"}]}"#;
            let (status, code, message) = refusal(nested, model);
            assert_eq!((status, code), (400, "duplicate_json_key"));
            assert!(message.contains("$.messages[0].content"), "{message}");
        }
    }

    #[test]
    fn hostile_bodies_are_refused_not_panicked_on() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for model in [None, Some("m")] {
            for body in [&b"{\"model\": "[..], b"[1,2]", b"\xff\xfe", b"", deep.as_bytes()] {
                assert_eq!(
                    refusal(body, model).1,
                    "invalid_json",
                    "{:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
}
