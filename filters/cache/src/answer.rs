//! Which upstream answers are complete enough to replay.
//!
//! A `200` says nothing about its body: a backend that fails halfway through writing it, a
//! proxy that answers with an HTML page, or an empty body all arrive as `200`.
//! Replaying one of those for a whole TTL turns one bad answer into many, so an answer is
//! stored only when its body parses as the answer of the API its path names. The cache sits
//! last in the chain, so the path is the one sent upstream, after any translation.

use serde_json::Value;

/// The API an upstream path speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`: OpenAI Chat Completions.
    ChatCompletions,
    /// `/v1/messages`: Anthropic Messages.
    Messages,
    /// `/v1/embeddings`: OpenAI embeddings.
    Embeddings,
    /// Any other path: a JSON object or array.
    Other,
}

impl Api {
    /// The API of an upstream path (without its query).
    /// Read on the path routes match on (`;` parameters removed, escaped letters decoded), so
    /// `/v1/messages;x=1` is checked as the Messages answer it is.
    pub fn of_path(path: &str) -> Api {
        match portico_core::route::matching_path(path).as_ref() {
            "/v1/chat/completions" => Api::ChatCompletions,
            "/v1/messages" => Api::Messages,
            "/v1/embeddings" => Api::Embeddings,
            _ => Api::Other,
        }
    }
}

/// Why an answer is not stored; each is also the word in the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// `content-type` is not JSON (`application/json` or a `+json` type).
    ContentType,
    /// `content-encoding` other than `identity`: the body cannot be read here.
    Encoded,
    /// The body is not JSON (empty, truncated, garbage).
    NotJson,
    /// JSON, but not the shape of the API's answer.
    Shape,
    /// The client did not get it as the upstream sent it: a later filter replaced it (with a
    /// 502 `bad_upstream_response` when body-transform could not translate it) or the
    /// exchange failed.
    NotServed,
}

impl Unfit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unfit::ContentType => "content_type",
            Unfit::Encoded => "content_encoding",
            Unfit::NotJson => "not_json",
            Unfit::Shape => "shape",
            Unfit::NotServed => "not_served",
        }
    }
}

/// A `content-type` value names JSON: `application/json` or `application/<x>+json`, any
/// parameters, any case.
fn is_json_type(value: &[u8]) -> bool {
    let media = value.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    let Some(sub) = media
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case(b"application/"))
        .and_then(|_| media.get(12..))
    else {
        return false;
    };
    sub.eq_ignore_ascii_case(b"json")
        || sub.len() > 5
            && sub
                .get(sub.len() - 5..)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"+json"))
}

/// Whether an answer with these headers can be read at all: uncompressed JSON.
pub fn check_headers(content_type: Option<&[u8]>, content_encoding: Option<&[u8]>) -> Result<(), Unfit> {
    if content_encoding.is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity")) {
        return Err(Unfit::Encoded);
    }
    if !content_type.is_some_and(is_json_type) {
        return Err(Unfit::ContentType);
    }
    Ok(())
}

/// Whether a whole answer body is an answer of `api`.
pub fn check_body(api: Api, body: &[u8]) -> Result<(), Unfit> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Unfit::NotJson)?;
    if shaped(api, &value) {
        Ok(())
    } else {
        Err(Unfit::Shape)
    }
}

/// Whether an answer the upstream sent with `status` reached the client as it is, so that a
/// replay serves what a live request would: the client got the same status (`sent`, Envoy's
/// `response.code`; `None` when the exchange never completed), and no filter refused the
/// answer on its way (`refused`: body-transform's mark of an answer it could not translate,
/// which in its degraded mode travels as an error body under the upstream's 200).
pub fn check_served(status: u64, sent: Option<u64>, refused: bool) -> Result<(), Unfit> {
    if refused || sent != Some(status) {
        return Err(Unfit::NotServed);
    }
    Ok(())
}

/// The least an answer of `api` holds.
fn shaped(api: Api, value: &Value) -> bool {
    let field = |name: &str| value.as_object().and_then(|o| o.get(name));
    let nonempty_array = |name: &str| field(name).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    match api {
        // Every choice carries its message (a streamed chunk carries `delta` instead).
        Api::ChatCompletions => {
            nonempty_array("choices")
                && field("choices")
                    .and_then(Value::as_array)
                    .is_some_and(|choices| choices.iter().all(|c| c.get("message").is_some_and(Value::is_object)))
        }
        // A complete message says why it stopped; one without `stop_reason` is cut short.
        Api::Messages => {
            field("type").and_then(Value::as_str) == Some("message")
                && field("content").is_some_and(Value::is_array)
                && field("stop_reason").is_some_and(Value::is_string)
        }
        Api::Embeddings => nonempty_array("data"),
        Api::Other => value.is_object() || value.is_array(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&[u8]> = Some(b"application/json");

    fn check(api: Api, content_type: Option<&[u8]>, encoding: Option<&[u8]>, body: &[u8]) -> Result<(), Unfit> {
        check_headers(content_type, encoding)?;
        check_body(api, body)
    }
    const CHAT: &str = r#"{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
    const MESSAGE: &str = r#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn"}"#;
    const EMBEDDING: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}]}"#;

    #[test]
    fn the_path_sent_upstream_names_the_api() {
        assert_eq!(Api::of_path("/v1/chat/completions"), Api::ChatCompletions);
        assert_eq!(Api::of_path("/v1/messages"), Api::Messages);
        assert_eq!(Api::of_path("/v1/embeddings"), Api::Embeddings);
        assert_eq!(Api::of_path("/v1/messages;x=1"), Api::Messages);
        assert_eq!(Api::of_path("/v1/chat/%63ompletions"), Api::ChatCompletions);
        for other in [
            "/v1/chat/completions/x",
            "/v1/messages/count_tokens",
            "/v2/messages",
            "/",
            "",
        ] {
            assert_eq!(Api::of_path(other), Api::Other, "{other}");
        }
    }

    #[test]
    fn complete_answers_of_each_api_are_stored() {
        assert_eq!(check(Api::ChatCompletions, JSON, None, CHAT.as_bytes()), Ok(()));
        assert_eq!(check(Api::Messages, JSON, None, MESSAGE.as_bytes()), Ok(()));
        assert_eq!(check(Api::Embeddings, JSON, None, EMBEDDING.as_bytes()), Ok(()));
        for body in [CHAT, MESSAGE, EMBEDDING, "[]", "{}", "[1,2]"] {
            assert_eq!(check(Api::Other, JSON, None, body.as_bytes()), Ok(()), "{body}");
        }
        let tool_call = r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[]}}]}"#;
        assert_eq!(check(Api::ChatCompletions, JSON, None, tool_call.as_bytes()), Ok(()));
        let empty_content = r#"{"type":"message","content":[],"stop_reason":"end_turn"}"#;
        assert_eq!(check(Api::Messages, JSON, None, empty_content.as_bytes()), Ok(()));
    }

    #[test]
    fn broken_answers_are_not_stored() {
        let truncated = CHAT.get(..CHAT.len() - 10).unwrap();
        for api in [Api::ChatCompletions, Api::Messages, Api::Embeddings, Api::Other] {
            for body in ["", "   ", "garbage", "<html>502</html>", truncated, "\u{0}\u{1}"] {
                assert_eq!(
                    check(api, JSON, None, body.as_bytes()),
                    Err(Unfit::NotJson),
                    "{api:?} {body:?}"
                );
            }
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(check(Api::Other, JSON, None, deep.as_bytes()), Err(Unfit::NotJson));
    }

    #[test]
    fn only_an_answer_the_client_got_as_it_was_is_stored() {
        assert_eq!(check_served(200, Some(200), false), Ok(()));
        // body-transform's 502 in place of an answer it could not translate.
        assert_eq!(check_served(200, Some(502), false), Err(Unfit::NotServed));
        // Its degraded mode: the 200 left, the body is an error.
        assert_eq!(check_served(200, Some(200), true), Err(Unfit::NotServed));
        // The exchange never completed.
        assert_eq!(check_served(200, None, false), Err(Unfit::NotServed));
    }

    #[test]
    fn json_of_the_wrong_shape_is_not_stored() {
        let cases: &[(Api, &str)] = &[
            (Api::ChatCompletions, "{}"),
            (Api::ChatCompletions, r#"{"choices":[]}"#),
            (Api::ChatCompletions, r#"{"choices":{}}"#),
            (Api::ChatCompletions, r#"{"choices":[{"delta":{"content":"hi"}}]}"#),
            (Api::ChatCompletions, r#"{"choices":[{"message":"hi"}]}"#),
            (Api::ChatCompletions, r#"{"error":{"message":"overloaded"}}"#),
            (Api::ChatCompletions, MESSAGE),
            (Api::ChatCompletions, "[1]"),
            (Api::Messages, r#"{"type":"error","error":{"type":"overloaded_error"}}"#),
            (Api::Messages, r#"{"type":"message","content":"hi"}"#),
            (Api::Messages, r#"{"content":[]}"#),
            (Api::Messages, r#"{"type":"message","content":[]}"#),
            (Api::Messages, r#"{"type":"message","content":[],"stop_reason":null}"#),
            (Api::Messages, CHAT),
            (Api::Embeddings, r#"{"data":[]}"#),
            (Api::Embeddings, r#"{"object":"list"}"#),
            (Api::Other, "\"a string\""),
            (Api::Other, "42"),
            (Api::Other, "null"),
        ];
        for (api, body) in cases {
            assert_eq!(
                check(*api, JSON, None, body.as_bytes()),
                Err(Unfit::Shape),
                "{api:?} {body}"
            );
        }
    }

    #[test]
    fn only_uncompressed_json_by_content_type_is_read() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            " application/problem+json ",
            "application/vnd.api+json;v=1",
        ] {
            assert_eq!(check(Api::Other, Some(ct.as_bytes()), None, b"{}"), Ok(()), "{ct}");
        }
        for ct in [
            "text/plain",
            "text/html",
            "application/jsonp",
            "application/+json",
            "json",
            "",
            "\u{ff}",
        ] {
            assert_eq!(
                check(Api::Other, Some(ct.as_bytes()), None, b"{}"),
                Err(Unfit::ContentType),
                "{ct}"
            );
        }
        assert_eq!(check(Api::Other, None, None, b"{}"), Err(Unfit::ContentType));
        assert_eq!(check(Api::Other, JSON, Some(b"gzip"), b"{}"), Err(Unfit::Encoded));
        assert_eq!(check(Api::Other, JSON, Some(b"br"), b"{}"), Err(Unfit::Encoded));
        assert_eq!(check(Api::Other, JSON, Some(b" Identity"), b"{}"), Ok(()));
    }
}
