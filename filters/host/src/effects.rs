//! What a filter wants done to the stream, recorded during a callback and applied by the host
//! after it returns, in order, by one loop ([`crate::stream`]). A local reply is applied last.
//!
//! Recording instead of calling the host keeps shells testable natively (a test asserts on
//! the list) and gives the host one place to enforce what each phase allows.

use std::borrow::Cow;
use std::time::Duration;

use portico_core::response::{ClientApi, ErrorResponse};

/// A header name, a filter-state key or a reply detail: usually a constant, sometimes from
/// configuration.
pub type Name = Cow<'static, str>;

/// Which side of the exchange a header or body effect applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// One change to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Sets the header, replacing any value it had.
    SetHeader(Direction, Name, Vec<u8>),
    /// Adds a value, keeping those the header already had.
    AddHeader(Direction, Name, Vec<u8>),
    RemoveHeader(Direction, Name),
    /// Replaces the whole body, in that direction's body callback. When the headers are held
    /// the host also removes `content-length`, which would otherwise announce the old size.
    ReplaceBody(Direction, Vec<u8>),
    /// Filter state (`set_property`), read by later filters and the access log as
    /// `%FILTER_STATE(wasm.<key>:PLAIN)%`.
    SetState(Name, Vec<u8>),
    /// Makes Envoy pick the route again after a header it matches on changed.
    ClearRouteCache,
}

/// A response Envoy sends instead of forwarding the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(Name, Vec<u8>)>,
    pub body: Vec<u8>,
    /// `%RESPONSE_CODE_DETAILS%` in the access log: tells this reply from an upstream one
    /// (`via_upstream`). Whitespace is not allowed there and is replaced by `_`.
    pub details: Name,
    /// The error code, for the refusal log line; `None` for replies that are not refusals.
    pub code: Option<&'static str>,
    /// What the refusal log line says after the status and code, such as the method and path
    /// (never a credential).
    pub context: Option<String>,
}

impl LocalReply {
    /// The shared JSON error shape in the client's API format. The stream sets the details to
    /// `<root id>.<code>` (`portico-auth.token_expired`): Envoy's `local_reply_config` leaves
    /// replies whose details start with `portico-` alone.
    pub fn error(error: &ErrorResponse, api: ClientApi) -> Self {
        Self {
            status: error.status,
            headers: error
                .header_pairs()
                .into_iter()
                .map(|(name, value)| (Name::Owned(name.to_owned()), value.as_bytes().to_vec()))
                .collect(),
            body: error.body_for(api),
            details: Name::Borrowed(error.code),
            code: Some(error.code),
            context: None,
        }
    }
}

/// A unary gRPC call a callback asks for: the stream pauses until its answer, which goes to
/// [`crate::HttpFilter::call_answer`] (see [`Effects::call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub cluster: Name,
    pub service: Name,
    pub method: Name,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// The effects of one callback, in the order the filter asked for them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    list: Vec<Effect>,
    reply: Option<LocalReply>,
    call: Option<Call>,
}

impl Effects {
    pub fn set_request_header(&mut self, name: impl Into<Name>, value: impl AsRef<[u8]>) {
        self.list.push(Effect::SetHeader(
            Direction::Request,
            name.into(),
            value.as_ref().to_vec(),
        ));
    }

    pub fn add_request_header(&mut self, name: impl Into<Name>, value: impl AsRef<[u8]>) {
        self.list.push(Effect::AddHeader(
            Direction::Request,
            name.into(),
            value.as_ref().to_vec(),
        ));
    }

    pub fn remove_request_header(&mut self, name: impl Into<Name>) {
        self.list.push(Effect::RemoveHeader(Direction::Request, name.into()));
    }

    /// Sets `:path` (path and query).
    pub fn set_path(&mut self, path: impl AsRef<[u8]>) {
        self.set_request_header(":path", path);
    }

    pub fn set_response_header(&mut self, name: impl Into<Name>, value: impl AsRef<[u8]>) {
        self.list.push(Effect::SetHeader(
            Direction::Response,
            name.into(),
            value.as_ref().to_vec(),
        ));
    }

    pub fn add_response_header(&mut self, name: impl Into<Name>, value: impl AsRef<[u8]>) {
        self.list.push(Effect::AddHeader(
            Direction::Response,
            name.into(),
            value.as_ref().to_vec(),
        ));
    }

    pub fn remove_response_header(&mut self, name: impl Into<Name>) {
        self.list.push(Effect::RemoveHeader(Direction::Response, name.into()));
    }

    /// Sets the response `:status`.
    pub fn set_status(&mut self, status: u16) {
        self.set_response_header(":status", status.to_string());
    }

    pub fn replace_request_body(&mut self, body: impl Into<Vec<u8>>) {
        self.list.push(Effect::ReplaceBody(Direction::Request, body.into()));
    }

    pub fn replace_response_body(&mut self, body: impl Into<Vec<u8>>) {
        self.list.push(Effect::ReplaceBody(Direction::Response, body.into()));
    }

    pub fn set_state(&mut self, key: impl Into<Name>, value: impl AsRef<[u8]>) {
        self.list.push(Effect::SetState(key.into(), value.as_ref().to_vec()));
    }

    pub fn clear_route_cache(&mut self) {
        self.list.push(Effect::ClearRouteCache);
    }

    /// Answers the client with `reply` after the other effects; the stream goes no further.
    /// The first reply asked for in a callback is the one sent.
    pub fn respond(&mut self, reply: LocalReply) {
        if self.reply.is_none() {
            self.reply = Some(reply);
        }
    }

    /// Refuses the request with the shared JSON error shape (the host logs the refusal).
    pub fn refuse(&mut self, error: &ErrorResponse, api: ClientApi) {
        self.respond(LocalReply::error(error, api));
    }

    /// [`Effects::refuse`], with `context` at the end of the refusal log line (written only
    /// within the filter's `refusal_log` budget).
    pub fn refuse_with(&mut self, error: &ErrorResponse, api: ClientApi, context: String) {
        let mut reply = LocalReply::error(error, api);
        reply.context = Some(context);
        self.respond(reply);
    }

    /// Makes `call` after the other effects and pauses the stream until its answer, which
    /// [`crate::HttpFilter::call_answer`] gets in the same phase (the headers of that phase
    /// can still change there); the stream then continues unless the answer's callback
    /// replies or calls again. A call the host refuses is answered at once with status
    /// UNAVAILABLE. A reply in the same callback wins: the call is not made. One call per
    /// callback (the last asked for). The log callback has no effects, so it cannot call:
    /// Envoy would cancel the call with the stream (hand it to the root instead).
    pub fn call(&mut self, call: Call) {
        self.call = Some(call);
    }

    /// The call asked for, if any.
    pub fn pending_call(&self) -> Option<&Call> {
        self.call.as_ref()
    }

    pub(crate) fn take_call(&mut self) -> Option<Call> {
        self.call.take()
    }

    pub fn list(&self) -> &[Effect] {
        &self.list
    }

    pub fn reply(&self) -> Option<&LocalReply> {
        self.reply.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.reply.is_none() && self.call.is_none()
    }

    pub(crate) fn into_parts(self) -> (Vec<Effect>, Option<LocalReply>) {
        (self.list, self.reply)
    }
}

/// `details` with whitespace replaced, as Envoy's response code details require.
pub(crate) fn clean_details(details: &str) -> Cow<'_, str> {
    if details.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(
            details
                .chars()
                .map(|c| if c.is_ascii_whitespace() { '_' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::response::ErrorType;

    #[test]
    fn effects_keep_their_order_and_the_first_reply_wins() {
        let mut fx = Effects::default();
        fx.set_request_header("x-a", "1");
        fx.set_state("k", "v");
        fx.respond(LocalReply::error(
            &ErrorResponse::new(403, ErrorType::Permission, "first", "no"),
            ClientApi::OpenAi,
        ));
        fx.respond(LocalReply::error(
            &ErrorResponse::new(429, ErrorType::RateLimit, "second", "no"),
            ClientApi::OpenAi,
        ));
        fx.remove_request_header("x-b");
        assert_eq!(
            fx.list(),
            &[
                Effect::SetHeader(Direction::Request, "x-a".into(), b"1".to_vec()),
                Effect::SetState("k".into(), b"v".to_vec()),
                Effect::RemoveHeader(Direction::Request, "x-b".into()),
            ]
        );
        assert_eq!(fx.reply().map(|r| r.status), Some(403));
    }

    #[test]
    fn an_error_reply_carries_the_clients_shape_and_its_code() {
        let error =
            ErrorResponse::new(429, ErrorType::RateLimit, "rate_limited", "slow down").with_header("retry-after", "3");
        let reply = LocalReply::error(&error, ClientApi::Anthropic);
        assert_eq!(reply.status, 429);
        assert_eq!(reply.details, "rate_limited");
        assert_eq!(reply.body, error.body_for(ClientApi::Anthropic));
        assert_eq!(
            reply.headers,
            vec![
                (Name::from("content-type"), b"application/json".to_vec()),
                (Name::from("retry-after"), b"3".to_vec())
            ]
        );
    }

    #[test]
    fn details_never_carry_whitespace() {
        assert_eq!(clean_details("a b\tc"), "a_b_c");
        assert!(matches!(clean_details("portico_x"), Cow::Borrowed(_)));
    }
}
