//! `portico-echo` (and its twin `portico-echo-twin`): a test filter that exercises the host
//! layer through a real Envoy. It marks what it sees in headers, and does nothing unless a
//! test configures it; it is not part of a gateway configuration.
//!
//! Configuration:
//!
//! | field | meaning |
//! | --- | --- |
//! | `tag` (required) | names the header `x-portico-echo-<tag>` the filter sends upstream and to the client, with its `root_id` as the value |
//! | `refuse_header` | a request carrying this header is refused: 403 `echo_refused` |
//! | `hold_body` | hold the request headers and, at the end of the body, send its length upstream as `x-portico-echo-body` |
//! | `panic_header` | a request carrying this header makes the filter panic (tests the panic hook) |

use std::marker::PhantomData;
use std::rc::Rc;

use portico_core::config::{read_value, Errors};
use portico_core::response::{ClientApi, ErrorResponse, ErrorType};
use portico_host::{
    Body, BodyFlow, Effects, Filter, HeadersFlow, HttpFilter, RequestHeaders, ResponseHeaders, RootHost,
};
use serde_json::Value;

/// The `root_id` an echo filter answers to: two, so tests can run two filters in one VM.
pub trait Name: 'static {
    const ROOT_ID: &'static str;
}

pub struct One;
pub struct Twin;

impl Name for One {
    const ROOT_ID: &'static str = "portico-echo";
}

impl Name for Twin {
    const ROOT_ID: &'static str = "portico-echo-twin";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub tag: String,
    pub refuse_header: Option<String>,
    pub hold_body: bool,
    pub panic_header: Option<String>,
}

pub fn read(value: &Value) -> Result<Config, Errors> {
    read_value(value, |mut root, errors| {
        let tag = root.req("tag", errors).and_then(|node| {
            let tag = node.non_empty_str(errors)?;
            if tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                Some(tag.to_owned())
            } else {
                node.error(errors, "only letters, digits, '-' and '_'");
                None
            }
        });
        let refuse_header = root.opt("refuse_header").and_then(|n| n.header_name(errors));
        let hold_body = root.opt_bool("hold_body", errors).unwrap_or(false);
        let panic_header = root.opt("panic_header").and_then(|n| n.header_name(errors));
        root.finish(errors);
        tag.map(|tag| Config {
            tag,
            refuse_header,
            hold_body,
            panic_header,
        })
    })
    .and_then(|config| config.ok_or_else(Errors::default))
}

pub struct Echo<N: Name> {
    config: Rc<Config>,
    name: PhantomData<N>,
}

impl<N: Name> Filter for Echo<N> {
    const ROOT_ID: &'static str = N::ROOT_ID;
    type Config = Config;
    type Http = EchoHttp;

    fn configure(config: &Value) -> Result<Config, Errors> {
        read(config)
    }

    fn new(config: Rc<Config>, _root: &mut RootHost<'_>) -> Result<Self, String> {
        Ok(Self {
            config,
            name: PhantomData,
        })
    }

    fn http(&self) -> EchoHttp {
        EchoHttp {
            config: Rc::clone(&self.config),
            root_id: N::ROOT_ID,
        }
    }
}

pub struct EchoHttp {
    config: Rc<Config>,
    root_id: &'static str,
}

impl EchoHttp {
    fn header(&self) -> String {
        format!("x-portico-echo-{}", self.config.tag)
    }
}

impl HttpFilter for EchoHttp {
    fn request_headers(&mut self, request: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        if let Some(name) = &self.config.panic_header {
            #[allow(clippy::panic)]
            if request.get(name).is_some() {
                // allow-panic: the host layer's panic-hook test (tests/tests/host.rs) and nothing
                // else. Only the test filter portico-echo has it, only when its plugin config names
                // `panic_header` (off by default; no shipped config loads portico-echo at all).
                panic!("portico-echo: {name} asked for a panic");
            }
        }
        if let Some(name) = &self.config.refuse_header {
            if request.get(name).is_some() {
                fx.refuse(
                    &ErrorResponse::new(
                        403,
                        ErrorType::Permission,
                        "echo_refused",
                        format!("the request carries {name}"),
                    ),
                    ClientApi::of_path(request.path()),
                );
                return HeadersFlow::Continue;
            }
        }
        fx.set_request_header(self.header(), self.root_id);
        if self.config.hold_body {
            HeadersFlow::Hold
        } else {
            HeadersFlow::Continue
        }
    }

    fn request_body(&mut self, body: &Body<'_>, held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        if held.is_none() {
            return BodyFlow::Continue;
        }
        if !body.end_of_stream() {
            return BodyFlow::Buffer;
        }
        fx.set_request_header("x-portico-echo-body", body.bytes().len().to_string());
        BodyFlow::Continue
    }

    fn response_headers(&mut self, _response: &ResponseHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        fx.set_response_header(self.header(), self.root_id);
        HeadersFlow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FILTERS;
    use portico_host::host::Map;
    use portico_host::mock::{Action, MockEnvoy, Mutation};

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errors = read(&serde_json::json!({"tag": "a b", "hold_body": 1, "extra": true})).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "$.tag: only letters, digits, '-' and '_'; $.hold_body: expected true or false; $.extra: unknown field"
        );
    }

    #[test]
    fn tags_go_upstream_and_back() {
        let envoy = MockEnvoy::start(FILTERS, "portico-echo", r#"{"tag": "a"}"#, false).unwrap();
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(&[(":path", "/")], true), Action::Continue);
        assert_eq!(s.response_headers(&[(":status", "200")], false), Action::Continue);
        assert_eq!(
            envoy.host().mutations(),
            vec![
                Mutation::SetHeader(Map::RequestHeaders, "x-portico-echo-a".into(), b"portico-echo".to_vec()),
                Mutation::SetHeader(
                    Map::ResponseHeaders,
                    "x-portico-echo-a".into(),
                    b"portico-echo".to_vec()
                ),
            ]
        );
    }
}
