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
//! | `state` | `{cluster, limit, period_seconds, timeout_ms, settle_on_log}`: each request pauses on a `Hit` to `portico-state` (consumer `echo:<x-echo-consumer>`, limit `echo`), continues with `x-portico-echo-state: admitted remaining=<n>` or answers 429 `echo_limited`, 503 `echo_state_unavailable` (with the gRPC status) or 502 `echo_bad_answer`; with `settle_on_log`, its log callback hands one `Hit` on limit `echo-log` to the root, which sends it from its tick (every 20 ms) so it outlives the stream (tests the host's gRPC calls from streams and roots) |

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use portico_core::config::{read_value, Errors};
use portico_core::response::{ClientApi, ErrorResponse, ErrorType};
use portico_core::state_api::{Admission, HitRequest, Limit, Method, SERVICE};
use portico_host::metrics::Counter;
use portico_host::{
    Body, BodyFlow, Call, Effects, Env, Filter, GrpcAnswer, GrpcCall, HeadersFlow, HttpFilter, RequestHeaders,
    ResponseHeaders, RootHost,
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
    pub state: Option<StateProbe>,
}

/// The `state` field: calls to `portico-state` from the stream and from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateProbe {
    pub cluster: String,
    pub limit: u64,
    pub period_seconds: u64,
    pub timeout: Duration,
    pub settle_on_log: bool,
}

fn read_state(node: portico_core::config::Node<'_>, errors: &mut Errors) -> Option<StateProbe> {
    let mut obj = node.object(errors)?;
    let cluster = obj
        .req("cluster", errors)
        .and_then(|n| n.non_empty_str(errors).map(str::to_owned));
    let limit = obj.req("limit", errors).and_then(|n| n.u64(errors));
    let period_seconds = obj.opt("period_seconds").and_then(|n| n.u64(errors)).unwrap_or(60);
    let timeout_ms = obj.opt("timeout_ms").and_then(|n| n.u64(errors)).unwrap_or(50);
    let settle_on_log = obj.opt_bool("settle_on_log", errors).unwrap_or(false);
    obj.finish(errors);
    Some(StateProbe {
        cluster: cluster?,
        limit: limit?,
        period_seconds,
        timeout: Duration::from_millis(timeout_ms),
        settle_on_log,
    })
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
        let state = root.opt("state").and_then(|n| read_state(n, errors));
        root.finish(errors);
        tag.map(|tag| Config {
            tag,
            refuse_header,
            hold_body,
            panic_header,
            state,
        })
    })
    .and_then(|config| config.ok_or_else(Errors::default))
}

pub struct Echo<N: Name> {
    config: Rc<Config>,
    name: PhantomData<N>,
    /// `Hit` messages the streams' log callbacks handed over, sent on the next tick.
    queue: Rc<RefCell<Vec<Vec<u8>>>>,
    in_flight: Vec<u32>,
    settled: Counter,
}

impl<N: Name> Filter for Echo<N> {
    const ROOT_ID: &'static str = N::ROOT_ID;
    type Config = Config;
    type Http = EchoHttp;

    fn configure(config: &Value) -> Result<Config, Errors> {
        read(config)
    }

    fn new(config: Rc<Config>, root: &mut RootHost<'_>) -> Result<Self, String> {
        if config.state.as_ref().is_some_and(|s| s.settle_on_log) {
            root.set_tick_period(Duration::from_millis(20))
                .map_err(|e| format!("cannot set the tick: host status {}", e.0))?;
        }
        Ok(Self {
            config,
            name: PhantomData,
            queue: Rc::default(),
            in_flight: Vec::new(),
            settled: Counter::define(&root.env(), "portico_echo_settled_total"),
        })
    }

    fn http(&self) -> EchoHttp {
        EchoHttp {
            config: Rc::clone(&self.config),
            root_id: N::ROOT_ID,
            queue: Rc::clone(&self.queue),
            consumer: String::new(),
        }
    }

    fn on_tick(&mut self, root: &mut RootHost<'_>) {
        let Some(state) = &self.config.state else { return };
        let queued = std::mem::take(&mut *self.queue.borrow_mut());
        for message in queued {
            let call = GrpcCall {
                cluster: &state.cluster,
                service: SERVICE,
                method: Method::Hit.name(),
                message: &message,
                timeout: state.timeout,
            };
            match root.dispatch_grpc_call(&call) {
                Ok(token) => self.in_flight.push(token),
                Err(e) => log::warn!("{}: a settlement call not made: host status {}", N::ROOT_ID, e.0),
            }
        }
    }

    fn on_grpc_call_response(&mut self, root: &mut RootHost<'_>, token: u32, answer: &GrpcAnswer<'_>) {
        if let Some(at) = self.in_flight.iter().position(|t| *t == token) {
            self.in_flight.swap_remove(at);
            if answer.is_ok() && Admission::decode_hit(answer.message()).is_ok_and(|a| a.admitted) {
                self.settled.add(&root.env(), 1);
            } else {
                log::warn!("{}: a settlement answered status {}", N::ROOT_ID, answer.status());
            }
        }
    }
}

pub struct EchoHttp {
    config: Rc<Config>,
    root_id: &'static str,
    queue: Rc<RefCell<Vec<Vec<u8>>>>,
    consumer: String,
}

fn hit(consumer: &str, name: &str, amount: u64, period_seconds: u64) -> Vec<u8> {
    HitRequest {
        consumer,
        limits: &[Limit {
            name: name.to_owned(),
            amount,
            period_seconds,
            burst: 0,
        }],
        cost: 1,
    }
    .encode()
}

impl EchoHttp {
    fn header(&self) -> String {
        format!("x-portico-echo-{}", self.config.tag)
    }
}

impl HttpFilter for EchoHttp {
    fn request_headers(&mut self, request: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        if let Some(name) = &self.config.panic_header {
            // Only the test filter portico-echo has this, only when its plugin config names
            // `panic_header` (off by default; no shipped config loads portico-echo at all).
            #[allow(clippy::panic)]
            if request.get(name).is_some() {
                // allow-panic: reached only by the host layer's panic-hook test (tests/tests/host.rs)
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
        if let Some(state) = &self.config.state {
            let who = request.get_str("x-echo-consumer").unwrap_or("anon");
            self.consumer = format!("echo:{who}");
            fx.call(Call {
                cluster: state.cluster.clone().into(),
                service: SERVICE.into(),
                method: Method::Hit.name().into(),
                message: hit(&self.consumer, "echo", state.limit, state.period_seconds),
                timeout: state.timeout,
            });
        }
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

    fn call_answer(&mut self, answer: &GrpcAnswer<'_>, fx: &mut Effects) {
        if !answer.is_ok() {
            fx.refuse(
                &ErrorResponse::new(
                    503,
                    ErrorType::Api,
                    "echo_state_unavailable",
                    format!("portico-state answered gRPC status {}", answer.status()),
                ),
                ClientApi::OpenAi,
            );
            return;
        }
        match Admission::decode_hit(answer.message()) {
            Ok(admission) if admission.admitted => {
                let remaining = admission.statuses.first().map_or(0, |s| s.remaining);
                fx.set_request_header("x-portico-echo-state", format!("admitted remaining={remaining}"));
            }
            Ok(_) => fx.refuse(
                &ErrorResponse::new(429, ErrorType::RateLimit, "echo_limited", "the echo limit is spent"),
                ClientApi::OpenAi,
            ),
            Err(e) => fx.refuse(
                &ErrorResponse::new(502, ErrorType::Api, "echo_bad_answer", e.0),
                ClientApi::OpenAi,
            ),
        }
    }

    fn log(&mut self, _env: &Env<'_>) {
        if let Some(state) = self.config.state.as_ref().filter(|s| s.settle_on_log) {
            if !self.consumer.is_empty() {
                let message = hit(&self.consumer, "echo-log", 1_000_000, state.period_seconds);
                self.queue.borrow_mut().push(message);
            }
        }
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

    const STATE: &str = r#"{"tag": "s", "state": {"cluster": "portico_state", "limit": 2, "settle_on_log": true}}"#;

    fn hit_answer(admitted: bool, remaining: u64) -> Vec<u8> {
        // HitResponse: admitted (1), statuses (2: remaining is field 3).
        let mut status = vec![0x18];
        status.push(u8::try_from(remaining).unwrap_or(0));
        let mut out = vec![0x08, u8::from(admitted), 0x12, u8::try_from(status.len()).unwrap_or(0)];
        out.extend_from_slice(&status);
        out
    }

    #[test]
    fn state_calls_pause_the_request_until_portico_state_answers() {
        let envoy = MockEnvoy::start(FILTERS, "portico-echo", STATE, false).unwrap();
        let mut s = envoy.stream();
        assert_eq!(
            s.request_headers(&[(":path", "/"), ("x-echo-consumer", "ann")], true),
            Action::Pause
        );
        let calls = envoy.host().grpc_calls();
        let (token, method, message) = calls.first().cloned().unwrap_or_default();
        assert_eq!(method, "Hit");
        assert_eq!(
            message,
            hit("echo:ann", "echo", 2, 60),
            "consumer, limit and cost as configured"
        );
        s.grpc_answer(token, 0, &hit_answer(true, 1));
        let mutations = envoy.host().mutations();
        assert!(mutations.contains(&Mutation::SetHeader(
            Map::RequestHeaders,
            "x-portico-echo-state".into(),
            b"admitted remaining=1".to_vec()
        )));
        assert_eq!(
            mutations.last(),
            Some(&Mutation::Continue(portico_host::Direction::Request))
        );

        envoy.host().take_mutations();
        let mut limited = envoy.stream();
        limited.request_headers(&[(":path", "/")], true);
        let token = envoy.host().grpc_calls().first().map_or(0, |c| c.0);
        limited.grpc_answer(token, 0, &hit_answer(false, 0));
        assert_eq!(envoy.host().reply().map(|r| r.status), Some(429));

        envoy.host().take_mutations();
        let mut down = envoy.stream();
        down.request_headers(&[(":path", "/")], true);
        let token = envoy.host().grpc_calls().first().map_or(0, |c| c.0);
        down.grpc_answer(token, portico_host::grpc_status::UNAVAILABLE, b"");
        let reply = envoy.host().reply().unwrap();
        assert_eq!(reply.status, 503);
        assert!(String::from_utf8_lossy(&reply.body).contains("gRPC status 14"));
    }

    #[test]
    fn log_hands_the_settlement_to_the_root_which_sends_it_on_its_tick() {
        let mut envoy = MockEnvoy::start(FILTERS, "portico-echo", STATE, false).unwrap();
        let mut s = envoy.stream();
        s.request_headers(&[(":path", "/"), ("x-echo-consumer", "bo")], true);
        s.log();
        assert_eq!(
            envoy.host().grpc_calls().len(),
            1,
            "nothing sent from the log callback itself"
        );
        envoy.tick();
        let calls = envoy.host().grpc_calls();
        let (token, _, message) = calls.get(1).cloned().unwrap_or_default();
        assert_eq!(message, hit("echo:bo", "echo-log", 1_000_000, 60));
        envoy.tick();
        assert_eq!(envoy.host().grpc_calls().len(), 2, "sent once");
        envoy.grpc_call_response(token, 0, &hit_answer(true, 5));
        assert_eq!(envoy.host().metric("portico_echo_settled_total"), Some(1));
    }
}
