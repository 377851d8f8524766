//! What a filter implements: [`Filter`] for its configuration and root-level work, and
//! [`HttpFilter`] for one request. The host does the rest (see [`crate::root`] and
//! [`crate::stream`]).

use std::rc::Rc;
use std::time::Duration;

use portico_core::config::Errors;
use portico_core::refusal::RefusalLog;
use serde_json::Value;

use crate::abi::HostError;
use crate::callout::{CallResponse, GrpcAnswer};
use crate::effects::Effects;
use crate::env::Env;
use crate::headers::{Body, Exchange, RequestHeaders, ResponseHeaders};
use crate::host::{GrpcCall, Host, HttpCall};
use crate::stages::StageRoot;

/// What a headers callback wants done with the stream after its effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersFlow {
    Continue,
    /// Keep the headers while the body arrives: the body callbacks then get them (`held`) and
    /// may still change them, and they leave when a body callback continues. Honoured only
    /// when the plugin entry declares `allow_on_headers_stop_iteration` and a body follows;
    /// otherwise the host continues and the body callbacks get `held == None`.
    Hold,
}

/// What a body callback wants done with the stream after its effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFlow {
    /// Pass what arrived so far on (and the held headers with it).
    Continue,
    /// Keep collecting: the next callback sees the whole body so far. At the end of the
    /// stream there is nothing more to wait for and the host continues (a pause there would
    /// hang the request). Envoy answers 413 (request) or 500 (response) past its buffer limit
    /// (1 MiB by default), so a filter that may meet larger bodies continues early.
    Buffer,
}

/// A Portico filter: its configuration, its per-VM state, and its per-request part.
pub trait Filter: Sized + 'static {
    /// The `root_id` of the plugin entries that run this filter, such as `portico-auth`.
    const ROOT_ID: &'static str;
    /// The configuration, checked and ready to use.
    type Config: 'static;
    type Http: HttpFilter + 'static;

    /// Reads the plugin configuration (the JSON document without the host's own fields),
    /// reporting every error with its JSON path. Pure: `portico check` calls it too.
    fn configure(config: &Value) -> Result<Self::Config, Errors>;

    /// Starts the filter in one VM: defines metrics, sets a tick period. An error refuses the
    /// configuration like a configuration error.
    fn new(config: Rc<Self::Config>, root: &mut RootHost<'_>) -> Result<Self, String>;

    /// The per-request part; called for every request, so it should be cheap (`Rc` clones).
    fn http(&self) -> Self::Http;

    /// How this filter's refusals are logged: the `refusal_log` field of its configuration
    /// when it has one, otherwise the default policy.
    fn refusal_log(&self) -> RefusalLog {
        RefusalLog::default()
    }

    /// Called every tick period, once set with [`RootHost::set_tick_period`].
    fn on_tick(&mut self, _root: &mut RootHost<'_>) {}

    /// The answer to a call dispatched with [`RootHost::dispatch_http_call`].
    fn on_http_call_response(&mut self, _root: &mut RootHost<'_>, _token: u32, _response: &CallResponse<'_>) {}

    /// The answer to a call dispatched with [`RootHost::dispatch_grpc_call`].
    fn on_grpc_call_response(&mut self, _root: &mut RootHost<'_>, _token: u32, _answer: &GrpcAnswer<'_>) {}
}

/// One request through a filter. Every callback returns what to do next and records its
/// changes in `fx`; the host applies them after the callback returns.
pub trait HttpFilter {
    fn request_headers(&mut self, _request: &RequestHeaders<'_>, _fx: &mut Effects) -> HeadersFlow {
        HeadersFlow::Continue
    }

    /// `held` is the request headers when this filter held them and they have not left yet.
    fn request_body(&mut self, _body: &Body<'_>, _held: Option<&RequestHeaders<'_>>, _fx: &mut Effects) -> BodyFlow {
        BodyFlow::Continue
    }

    fn response_headers(&mut self, _response: &ResponseHeaders<'_>, _fx: &mut Effects) -> HeadersFlow {
        HeadersFlow::Continue
    }

    /// `held` is the response headers when this filter held them and they have not left yet.
    fn response_body(&mut self, _body: &Body<'_>, _held: Option<&ResponseHeaders<'_>>, _fx: &mut Effects) -> BodyFlow {
        BodyFlow::Continue
    }

    /// The answer to the call a callback asked for with [`Effects::call`], in the phase that
    /// asked (its headers can still change). The stream continues after it unless `fx`
    /// replies or calls again.
    fn call_answer(&mut self, _answer: &GrpcAnswer<'_>, _fx: &mut Effects) {}

    /// After the response has been sent (or the client went away): the place for accounting.
    fn log(&mut self, _env: &Env<'_>) {}

    /// [`HttpFilter::log`] for a filter that also reads the request or response headers
    /// there (a response status, or the request of a stream refused before this filter ran).
    /// The host calls this one; by default it calls [`HttpFilter::log`].
    fn log_exchange(&mut self, exchange: &Exchange<'_>) {
        self.log(&exchange.env());
    }
}

// === impl RootHost ===

/// The host as a filter's root-level code sees it.
pub struct RootHost<'a> {
    host: &'a dyn Host,
    root_id: &'static str,
    /// Set when the filter runs as a stage of one plugin entry ([`crate::stages`]): its tick
    /// period and the calls it sends are kept apart from the other stages'.
    stage: Option<&'a StageRoot>,
}

impl<'a> RootHost<'a> {
    pub(crate) fn new(host: &'a dyn Host, root_id: &'static str) -> Self {
        Self {
            host,
            root_id,
            stage: None,
        }
    }

    pub(crate) fn for_stage(host: &'a dyn Host, root_id: &'static str, stage: &'a StageRoot) -> Self {
        Self {
            host,
            root_id,
            stage: Some(stage),
        }
    }

    pub(crate) fn host(&self) -> &'a dyn Host {
        self.host
    }

    pub fn root_id(&self) -> &'static str {
        self.root_id
    }

    pub fn env(&self) -> Env<'a> {
        Env::new(self.host)
    }

    /// Calls [`Filter::on_tick`] every `period` from now on.
    pub fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        match self.stage {
            Some(stage) => {
                stage.set_tick_period(period);
                Ok(())
            }
            None => self.host.set_tick_period(period),
        }
    }

    /// Sends `call`; the answer comes to [`Filter::on_http_call_response`] with the token.
    pub fn dispatch_http_call(&self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        let token = self.host.dispatch_http_call(call)?;
        if let Some(stage) = self.stage {
            stage.sent(token);
        }
        Ok(token)
    }

    /// Sends `call`; the answer comes to [`Filter::on_grpc_call_response`] with the token.
    /// Calls from the root outlive every request (settlement after the client went away).
    pub fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, HostError> {
        let token = self.host.dispatch_grpc_call(call)?;
        if let Some(stage) = self.stage {
            stage.sent_grpc(token);
        }
        Ok(token)
    }
}
