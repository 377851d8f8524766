//! The generic HTTP context: runs a filter's [`HttpFilter`] callbacks with views that exist
//! only where Envoy allows them, applies the effects they record in one loop, and turns their
//! flow into what Envoy is told, with the rules that keep a stream from hanging:
//!
//! - [`HeadersFlow::Hold`] pauses only when the plugin entry allows it (Envoy's
//!   `allow_on_headers_stop_iteration`, declared again in the plugin configuration, which the
//!   module cannot read from Envoy) and a body follows. Paused headers without the knob are
//!   never given to the body callbacks and the request hangs; paused headers at the end of the
//!   stream have no body callback to release them.
//! - [`BodyFlow::Buffer`] at the end of the stream continues: nothing else would resume it.
//! - A local reply is sent after the other effects and the callback then pauses.
//! - A gRPC call ([`Effects::call`]) is made after the other effects; the callback then pauses
//!   until the answer, which the filter gets in the same phase ([`HttpFilter::call_answer`]),
//!   and the stream continues after it (`proxy_continue_stream`) unless that callback replies
//!   or calls again. Paused in the request headers, Envoy holds the body back until then
//!   (ENVOY-FACTS 1), so the filter's body callbacks still see all of it. A call the host
//!   refuses is answered at once with UNAVAILABLE. The log callback gets no effects, so it
//!   cannot call: Envoy would cancel the call with the stream.
//! - Header effects apply only to a map Envoy lets the filter change now (its headers phase,
//!   or its body phase while the headers are held); others are dropped and logged as the
//!   filter bug they are, instead of being sent to a host that would refuse them.

use std::rc::Rc;
use std::time::SystemTime;

use portico_core::clock::unix_millis;
use portico_core::refusal::{Level, RefusalLog as RefusalPolicy, Refusals};

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::callout::GrpcAnswer;
use crate::effects::{clean_details, Call, Direction, Effect, Effects, LocalReply};
use crate::env::Env;
use crate::filter::{BodyFlow, HeadersFlow, HttpFilter};
use crate::headers::{Body, Exchange, HeaderCache, HeaderView, RequestHeaders, ResponseHeaders};
use crate::host::{Buffer, GrpcCall, Host, Map};

/// The callback running, for the phase rules and the per-callback host-call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
}

/// Host calls one stream made, by callback (all zero unless the host counts them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallCounts {
    pub request_headers: u64,
    pub request_body: u64,
    pub response_headers: u64,
    pub response_body: u64,
    pub log: u64,
}

impl CallCounts {
    pub(crate) fn slot(&mut self, phase: Phase) -> &mut u64 {
        match phase {
            Phase::RequestHeaders => &mut self.request_headers,
            Phase::RequestBody => &mut self.request_body,
            Phase::ResponseHeaders => &mut self.response_headers,
            Phase::ResponseBody => &mut self.response_body,
            Phase::Log => &mut self.log,
        }
    }

    pub fn total(&self) -> u64 {
        self.request_headers
            .saturating_add(self.request_body)
            .saturating_add(self.response_headers)
            .saturating_add(self.response_body)
            .saturating_add(self.log)
    }
}

impl std::fmt::Display for CallCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request_headers={} request_body={} response_headers={} response_body={} log={} total={}",
            self.request_headers,
            self.request_body,
            self.response_headers,
            self.response_body,
            self.log,
            self.total()
        )
    }
}

// === impl RefusalLog ===

/// The refusal log lines of one plugin entry, by its filter's `refusal_log` policy
/// ([`portico_core::refusal`]): at most `per_second` lines a second per worker at the chosen
/// level, then one line with the number left out, so a client that sends bad requests in a
/// loop cannot flood Envoy's log. A line reads `<root id>: <status> <code> <context>`.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    refusals: Refusals,
    level: Option<log::Level>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new("portico", RefusalPolicy::default())
    }
}

impl RefusalLog {
    pub(crate) fn new(root_id: &'static str, policy: RefusalPolicy) -> Self {
        let level = match policy.level {
            Level::Info => Some(log::Level::Info),
            Level::Debug => Some(log::Level::Debug),
            Level::Off => None,
        };
        Self {
            refusals: Refusals::new(root_id, policy),
            level,
        }
    }

    /// The lines to write for refusing with `reply` at `now`, each with its level.
    pub(crate) fn lines(&self, now: SystemTime, reply: &LocalReply, code: &str) -> Vec<(log::Level, String)> {
        let Some(level) = self.level else {
            return Vec::new();
        };
        self.refusals.lines(unix_millis(now), level, || match &reply.context {
            Some(context) => format!("{} {code} {context}", reply.status),
            None => format!("{} {code}", reply.status),
        })
    }
}

// === impl Apply ===

/// The filter whose callback recorded the effects being applied: it names their log lines and
/// reply details, and says which headers it holds (only then may its body callbacks change
/// them) and where its view of the body starts in the host's buffer.
pub(crate) struct Author<'a> {
    pub(crate) root_id: &'static str,
    pub(crate) refusals: &'a RefusalLog,
    pub(crate) request_held: bool,
    pub(crate) response_held: bool,
    /// Bytes of the host's body buffer before the part this filter saw (0 unless it runs as a
    /// stage behind one that buffers, [`crate::stages`]): a replacement keeps them.
    pub(crate) body_from: usize,
}

/// Applies one callback's effects to the host and the header caches of the stream.
pub(crate) struct Apply<'a> {
    pub(crate) host: &'a dyn Host,
    pub(crate) author: &'a Author<'a>,
    pub(crate) request: &'a mut HeaderCache,
    pub(crate) response: &'a mut HeaderCache,
}

impl Apply<'_> {
    /// Whether the headers of `direction` may be changed in `phase`.
    fn writable(&self, phase: Phase, direction: Direction) -> bool {
        match (phase, direction) {
            (Phase::RequestHeaders, Direction::Request) | (Phase::ResponseHeaders, Direction::Response) => true,
            (Phase::RequestBody, Direction::Request) => self.author.request_held,
            (Phase::ResponseBody, Direction::Response) => self.author.response_held,
            _ => false,
        }
    }

    fn held(&self, direction: Direction) -> bool {
        match direction {
            Direction::Request => self.author.request_held,
            Direction::Response => self.author.response_held,
        }
    }

    fn cache(&mut self, direction: Direction) -> &mut HeaderCache {
        match direction {
            Direction::Request => &mut *self.request,
            Direction::Response => &mut *self.response,
        }
    }

    /// Applies `fx` in order, the local reply last; returns whether a reply was sent.
    pub(crate) fn effects(mut self, phase: Phase, fx: Effects) -> bool {
        let root_id = self.author.root_id;
        let (list, reply) = fx.into_parts();
        for effect in list {
            let result = match &effect {
                Effect::SetHeader(d, name, value) => self.header_op(phase, *d, &effect, |host, map, cache| {
                    host.set_header(map, name, value)?;
                    cache.set(name, value);
                    Ok(())
                }),
                Effect::AddHeader(d, name, value) => self.header_op(phase, *d, &effect, |host, map, cache| {
                    host.add_header(map, name, value)?;
                    cache.add(name, value);
                    Ok(())
                }),
                Effect::RemoveHeader(d, name) => self.header_op(phase, *d, &effect, |host, map, cache| {
                    host.remove_header(map, name)?;
                    cache.remove(name);
                    Ok(())
                }),
                Effect::ReplaceBody(d, bytes) => self.replace_body(phase, *d, bytes),
                Effect::SetState(key, value) => self.host.set_property(&[key.as_ref()], value),
                Effect::ClearRouteCache => self.host.call_foreign_function("clear_route_cache", &[]).map(drop),
            };
            if let Err(e) = result {
                log::error!("{root_id}: {effect:?} in {phase:?} failed: host status {}", e.0);
            }
        }
        match reply {
            Some(reply) => {
                self.respond(&reply);
                true
            }
            None => false,
        }
    }

    fn header_op(
        &mut self,
        phase: Phase,
        direction: Direction,
        effect: &Effect,
        op: impl FnOnce(&dyn Host, Map, &mut HeaderCache) -> Result<(), crate::abi::HostError>,
    ) -> Result<(), crate::abi::HostError> {
        if !self.writable(phase, direction) {
            log::error!(
                "{}: {effect:?} dropped: the {direction:?} headers cannot change in {phase:?} (a filter bug)",
                self.author.root_id
            );
            return Ok(());
        }
        let map = match direction {
            Direction::Request => Map::RequestHeaders,
            Direction::Response => Map::ResponseHeaders,
        };
        let host = self.host;
        op(host, map, self.cache(direction))
    }

    fn replace_body(&mut self, phase: Phase, direction: Direction, bytes: &[u8]) -> Result<(), crate::abi::HostError> {
        let (body_phase, buffer, map) = match direction {
            Direction::Request => (Phase::RequestBody, Buffer::RequestBody, Map::RequestHeaders),
            Direction::Response => (Phase::ResponseBody, Buffer::ResponseBody, Map::ResponseHeaders),
        };
        if phase != body_phase {
            log::error!(
                "{}: a {direction:?} body replacement dropped in {phase:?}: bodies change in their body callback (a filter bug)",
                self.author.root_id
            );
            return Ok(());
        }
        if self.held(direction) {
            // The held headers still announce the old length: the new body goes chunked.
            self.host.remove_header(map, "content-length")?;
            self.cache(direction).remove("content-length");
        }
        match self.author.body_from {
            0 => self.host.set_buffer(buffer, bytes),
            from => {
                // The filter saw only the end of the buffer: the bytes before it stay.
                let mut whole = self.host.buffer(buffer, 0, from)?.unwrap_or_default();
                whole.extend_from_slice(bytes);
                self.host.set_buffer(buffer, &whole)
            }
        }
    }

    fn respond(&mut self, reply: &LocalReply) {
        let root_id = self.author.root_id;
        if let Some(code) = reply.code {
            for (level, line) in self.author.refusals.lines(Env::new(self.host).now(), reply, code) {
                log::log!(level, "{line}");
            }
        }
        let details = match reply.code {
            Some(code) => std::borrow::Cow::Owned(format!("{root_id}.{code}")),
            None => clean_details(&reply.details),
        };
        let result = if matches!(details, std::borrow::Cow::Borrowed(_)) {
            self.host.send_local_response(reply)
        } else {
            let mut cleaned = reply.clone();
            cleaned.details = details.into_owned().into();
            self.host.send_local_response(&cleaned)
        };
        if let Err(e) = result {
            log::error!(
                "{root_id}: sending a local {} reply failed: host status {}",
                reply.status,
                e.0
            );
        }
    }
}

// === impl Stream ===

/// The state of one direction of the stream.
#[derive(Debug, Default)]
struct Side {
    cache: HeaderCache,
    /// The headers were held and have not left yet.
    held: bool,
}

/// One request through one filter.
pub struct Stream<H: HttpFilter> {
    filter: H,
    host: Rc<dyn Host>,
    root_id: &'static str,
    allow_hold: bool,
    refusals: Rc<RefusalLog>,
    request: Side,
    response: Side,
    /// A local reply was sent: nothing is held any more.
    replied: bool,
    /// The gRPC call the stream is paused for.
    waiting: Option<Waiting>,
    counts: CallCounts,
}

/// A call in flight: its token and the phase that asked for it.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    token: u32,
    phase: Phase,
}

/// Calls refused by the host and answered at once, in a row, before the stream gives up
/// asking (a filter that calls again on every failure would loop forever).
const MAX_UNDELIVERED: u32 = 4;

impl<H: HttpFilter> Stream<H> {
    pub(crate) fn new(
        filter: H,
        host: Rc<dyn Host>,
        root_id: &'static str,
        allow_hold: bool,
        refusals: Rc<RefusalLog>,
    ) -> Self {
        Self {
            filter,
            host,
            root_id,
            allow_hold,
            refusals,
            request: Side::default(),
            response: Side::default(),
            replied: false,
            waiting: None,
            counts: CallCounts::default(),
        }
    }

    /// Runs one callback: `run` gets the filter and this stream's parts, its effects are
    /// applied, a call it asked for is made, and the host calls it made are counted.
    fn callback(
        &mut self,
        phase: Phase,
        run: impl FnOnce(&mut H, &dyn Host, &Side, &Side, &mut Effects) -> Next,
    ) -> Action {
        let before = self.host.calls();
        let mut fx = Effects::default();
        let next = run(&mut self.filter, &*self.host, &self.request, &self.response, &mut fx);
        let action = match self.finish(phase, fx) {
            Some(action) => action,
            None => match next {
                Next::Continue => Action::Continue,
                Next::Pause => Action::Pause,
            },
        };
        self.count(phase, before);
        action
    }

    /// Applies `fx` (the shared effects loop, [`Apply`]); returns whether a reply was sent.
    fn apply(&mut self, phase: Phase, fx: Effects) -> bool {
        let author = Author {
            root_id: self.root_id,
            refusals: &self.refusals,
            request_held: self.request.held,
            response_held: self.response.held,
            body_from: 0,
        };
        Apply {
            host: &*self.host,
            author: &author,
            request: &mut self.request.cache,
            response: &mut self.response.cache,
        }
        .effects(phase, fx)
    }

    fn count(&mut self, phase: Phase, before: u64) {
        let spent = self.host.calls().saturating_sub(before);
        let slot = self.counts.slot(phase);
        *slot = slot.saturating_add(spent);
    }

    /// Applies a callback's effects and makes its call: `Some(Pause)` when the stream now
    /// waits (a reply was sent, or a call is in flight), `None` when the callback's own flow
    /// decides.
    fn finish(&mut self, phase: Phase, mut fx: Effects) -> Option<Action> {
        let mut call = fx.take_call();
        if self.apply(phase, fx) {
            return Some(self.replied());
        }
        let mut undelivered = 0;
        while let Some(asked) = call.take() {
            match self.dispatch(&asked) {
                Ok(token) => {
                    self.waiting = Some(Waiting { token, phase });
                    return Some(Action::Pause);
                }
                Err(status) => {
                    log::warn!(
                        "{}: gRPC call {}/{} to cluster {} not made: host status {status}",
                        self.root_id,
                        asked.service,
                        asked.method,
                        asked.cluster
                    );
                    undelivered += 1;
                    let mut fx = Effects::default();
                    self.filter.call_answer(&GrpcAnswer::undelivered(), &mut fx);
                    call = fx.take_call().filter(|_| undelivered < MAX_UNDELIVERED);
                    if self.apply(phase, fx) {
                        return Some(self.replied());
                    }
                }
            }
        }
        None
    }

    /// A local reply was sent: nothing is held any more, and the callback pauses.
    fn replied(&mut self) -> Action {
        self.replied = true;
        self.request.held = false;
        self.response.held = false;
        Action::Pause
    }

    fn dispatch(&self, call: &Call) -> Result<u32, u32> {
        self.host
            .dispatch_grpc_call(&GrpcCall {
                cluster: &call.cluster,
                service: &call.service,
                method: &call.method,
                message: &call.message,
                timeout: call.timeout,
            })
            .map_err(|e| e.0)
    }

    /// The answer to the call the stream waits for: the filter's callback, then the stream
    /// continues unless it replied or called again.
    fn on_call_answer(&mut self, token: u32, status: u32, size: usize) {
        let Some(waiting) = self.waiting.filter(|w| w.token == token) else {
            log::debug!(
                "{}: an answer to gRPC call {token}, which this stream does not wait for",
                self.root_id
            );
            return;
        };
        self.waiting = None;
        let before = self.host.calls();
        let mut fx = Effects::default();
        {
            let host = Rc::clone(&self.host);
            let answer = GrpcAnswer::new(&*host, status, size);
            self.filter.call_answer(&answer, &mut fx);
        }
        let paused = self.finish(waiting.phase, fx).is_some();
        if !paused {
            let direction = match waiting.phase {
                Phase::RequestHeaders | Phase::RequestBody => Direction::Request,
                Phase::ResponseHeaders | Phase::ResponseBody | Phase::Log => Direction::Response,
            };
            if let Err(e) = self.host.continue_stream(direction) {
                log::error!(
                    "{}: resuming the {direction:?} after a gRPC answer failed: host status {}",
                    self.root_id,
                    e.0
                );
            }
        }
        self.count(waiting.phase, before);
    }

    fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let allow_hold = self.allow_hold;
        let mut hold = false;
        let action = self.callback(Phase::RequestHeaders, |filter, host, request, _, fx| {
            let view = RequestHeaders::new(HeaderView::new(
                host,
                Map::RequestHeaders,
                &request.cache,
                end_of_stream,
            ));
            hold = filter.request_headers(&view, fx) == HeadersFlow::Hold && allow_hold && !end_of_stream;
            if hold {
                Next::Pause
            } else {
                Next::Continue
            }
        });
        self.request.held = hold && !self.replied && self.waiting.is_none();
        action
    }

    fn on_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let action = self.callback(Phase::RequestBody, |filter, host, request, _, fx| {
            let body = Body::new(host, Buffer::RequestBody, size, end_of_stream);
            let view = RequestHeaders::new(HeaderView::new(host, Map::RequestHeaders, &request.cache, false));
            let held = request.held.then_some(&view);
            body_next(filter.request_body(&body, held, fx), end_of_stream)
        });
        if action == Action::Continue {
            self.request.held = false;
        }
        action
    }

    fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        let allow_hold = self.allow_hold;
        let mut hold = false;
        let action = self.callback(Phase::ResponseHeaders, |filter, host, _, response, fx| {
            let view = ResponseHeaders::new(HeaderView::new(
                host,
                Map::ResponseHeaders,
                &response.cache,
                end_of_stream,
            ));
            hold = filter.response_headers(&view, fx) == HeadersFlow::Hold && allow_hold && !end_of_stream;
            if hold {
                Next::Pause
            } else {
                Next::Continue
            }
        });
        self.response.held = hold && !self.replied && self.waiting.is_none();
        action
    }

    fn on_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let action = self.callback(Phase::ResponseBody, |filter, host, _, response, fx| {
            let body = Body::new(host, Buffer::ResponseBody, size, end_of_stream);
            let view = ResponseHeaders::new(HeaderView::new(host, Map::ResponseHeaders, &response.cache, false));
            let held = response.held.then_some(&view);
            body_next(filter.response_body(&body, held, fx), end_of_stream)
        });
        if action == Action::Continue {
            self.response.held = false;
        }
        action
    }

    fn on_log(&mut self) {
        self.callback(Phase::Log, |filter, host, request, response, _| {
            let exchange = Exchange::new(
                RequestHeaders::new(HeaderView::new(host, Map::RequestHeaders, &request.cache, true)),
                ResponseHeaders::new(HeaderView::new(host, Map::ResponseHeaders, &response.cache, true)),
            );
            filter.log_exchange(&exchange);
            Next::Continue
        });
        #[cfg(feature = "count-host-calls")]
        log::info!("{}: host calls: {}", self.root_id, self.counts);
    }
}

/// What the callback itself asked for, before the reply rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Pause,
}

fn body_next(flow: BodyFlow, end_of_stream: bool) -> Next {
    match flow {
        BodyFlow::Buffer if !end_of_stream => Next::Pause,
        BodyFlow::Buffer | BodyFlow::Continue => Next::Continue,
    }
}

// === Entry points ===

/// The callbacks of one stream, as the root hands them out: [`Stream`] for every filter type,
/// behind one object type.
pub trait Callbacks {
    fn request_headers(&mut self, end_of_stream: bool) -> Action;
    fn request_body(&mut self, size: usize, end_of_stream: bool) -> Action;
    fn response_headers(&mut self, end_of_stream: bool) -> Action;
    fn response_body(&mut self, size: usize, end_of_stream: bool) -> Action;
    fn log(&mut self);
    /// The answer to gRPC call `token` (status 0 with a message of `size` bytes, or the status
    /// the call closed with).
    fn call_answer(&mut self, token: u32, status: u32, size: usize);
    fn counts(&self) -> CallCounts;
}

impl<H: HttpFilter> Callbacks for Stream<H> {
    fn request_headers(&mut self, end_of_stream: bool) -> Action {
        self.on_request_headers(end_of_stream)
    }

    fn request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.on_request_body(size, end_of_stream)
    }

    fn response_headers(&mut self, end_of_stream: bool) -> Action {
        self.on_response_headers(end_of_stream)
    }

    fn response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.on_response_body(size, end_of_stream)
    }

    fn log(&mut self) {
        self.on_log();
    }

    fn call_answer(&mut self, token: u32, status: u32, size: usize) {
        self.on_call_answer(token, status, size);
    }

    fn counts(&self) -> CallCounts {
        self.counts
    }
}

/// A stream as the SDK's dispatcher calls it. A separate, non-generic type: the SDK's
/// `HttpContext` has default methods that call its host functions, which do not exist off
/// wasm, so native code must never build its vtable for a filter's stream.
pub(crate) struct SdkStream(pub(crate) Box<dyn Callbacks>);

impl Context for SdkStream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.0.call_answer(token_id, status_code, response_size);
    }
}

impl HttpContext for SdkStream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.0.request_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.0.request_body(size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.0.response_headers(end_of_stream)
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.0.response_body(size, end_of_stream)
    }

    fn on_log(&mut self) {
        self.0.log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::Name;
    use crate::mock::{MockHost, MockStream, Mutation};
    use portico_core::response::{ClientApi, ErrorResponse, ErrorType};

    type OnHeaders = fn(&RequestHeaders<'_>, &mut Effects) -> HeadersFlow;
    type OnBody = fn(&Body<'_>, Option<&RequestHeaders<'_>>, &mut Effects) -> BodyFlow;
    type OnResponse = fn(&ResponseHeaders<'_>, &mut Effects) -> HeadersFlow;

    /// A filter that does what the test says in each callback.
    struct Script {
        headers: OnHeaders,
        body: OnBody,
        response: OnResponse,
    }

    impl HttpFilter for Script {
        fn request_headers(&mut self, request: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
            (self.headers)(request, fx)
        }
        fn request_body(&mut self, body: &Body<'_>, held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
            (self.body)(body, held, fx)
        }
        fn response_headers(&mut self, response: &ResponseHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
            (self.response)(response, fx)
        }
    }

    fn script(headers: OnHeaders, body: OnBody) -> Script {
        Script {
            headers,
            body,
            response: |_, _| HeadersFlow::Continue,
        }
    }

    /// A stream of `filter`, with the plugin's hold field and Envoy's knob both `allow_hold`.
    fn stream(filter: Script, allow_hold: bool) -> MockStream {
        stream_with(filter, allow_hold, allow_hold)
    }

    fn stream_with(filter: Script, declared: bool, envoy_knob: bool) -> MockStream {
        let host = MockHost::new();
        let s = Stream::new(filter, Rc::new(host.clone()), "test", declared, Rc::default());
        MockStream::new(host, Box::new(s), envoy_knob)
    }

    const POST: &[(&str, &str)] = &[
        (":method", "POST"),
        (":path", "/p"),
        ("content-length", "5"),
        ("x-a", "1"),
    ];

    fn set(name: &str, value: &str) -> Mutation {
        Mutation::SetHeader(Map::RequestHeaders, name.to_owned(), value.as_bytes().to_vec())
    }

    #[test]
    fn effects_apply_in_order_and_the_reply_last() {
        let mut s = stream(
            script(
                |_, fx| {
                    fx.set_request_header("x-a", "2");
                    fx.refuse(
                        &ErrorResponse::new(403, ErrorType::Permission, "nope", "no"),
                        ClientApi::OpenAi,
                    );
                    fx.set_state("k", "v");
                    fx.remove_request_header("x-b");
                    fx.clear_route_cache();
                    HeadersFlow::Continue
                },
                |_, _, _| BodyFlow::Continue,
            ),
            false,
        );
        assert_eq!(
            s.request_headers(POST, true),
            Action::Pause,
            "a reply pauses the stream"
        );
        let mutations = s.host().mutations();
        assert_eq!(
            mutations.get(..4).map(<[_]>::to_vec),
            Some(vec![
                set("x-a", "2"),
                Mutation::SetProperty(vec!["k".to_owned()], b"v".to_vec()),
                Mutation::RemoveHeader(Map::RequestHeaders, "x-b".to_owned()),
                Mutation::ForeignFunction("clear_route_cache".to_owned()),
            ])
        );
        match mutations.get(4) {
            Some(Mutation::LocalReply(reply)) => {
                assert_eq!(reply.status, 403);
                assert_eq!(reply.details, "test.nope");
            }
            other => panic!("expected the reply last, got {other:?}"),
        }
        assert_eq!(mutations.len(), 5);
    }

    #[test]
    fn a_hold_gives_the_body_callbacks_the_headers_and_their_changes_reach_the_request() {
        let mut s = stream(
            script(
                |_, fx| {
                    fx.set_request_header("x-a", "from-headers");
                    HeadersFlow::Hold
                },
                |body, held, fx| {
                    let Some(held) = held else { return BodyFlow::Continue };
                    if !body.end_of_stream() {
                        return BodyFlow::Buffer;
                    }
                    // The write of the headers callback, read through the cache.
                    if held.get("x-a") == Some(&b"from-headers"[..]) {
                        fx.set_request_header("x-body", body.bytes().len().to_string());
                    }
                    BodyFlow::Continue
                },
            ),
            true,
        );
        assert_eq!(s.request_headers(POST, false), Action::Pause);
        assert_eq!(s.request_body(b"ab", false), Action::Pause, "buffering");
        assert_eq!(s.request_body(b"abcde", true), Action::Continue);
        assert_eq!(
            s.host().headers(Map::RequestHeaders),
            vec![
                (":method".to_owned(), "POST".to_owned()),
                (":path".to_owned(), "/p".to_owned()),
                ("content-length".to_owned(), "5".to_owned()),
                ("x-a".to_owned(), "from-headers".to_owned()),
                ("x-body".to_owned(), "5".to_owned()),
            ]
        );
        let counts = s.counts();
        assert_eq!(counts.request_headers, 1, "one write, no read");
        // Two body reads (the buffer once per callback that asks) and one write; x-a came from
        // the cache.
        assert_eq!(counts.request_body, 2);
    }

    fn hold_and_report(_: &RequestHeaders<'_>, _: &mut Effects) -> HeadersFlow {
        HeadersFlow::Hold
    }

    fn report_held(_: &Body<'_>, held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        fx.set_state("held", if held.is_some() { "yes" } else { "no" });
        fx.set_request_header("x-late", "1");
        BodyFlow::Continue
    }

    #[test]
    fn a_hold_without_a_body_continues() {
        let mut s = stream(script(hold_and_report, report_held), true);
        assert_eq!(s.request_headers(&[(":method", "GET")], true), Action::Continue);
    }

    #[test]
    fn a_hold_the_plugin_entry_does_not_allow_continues_and_the_body_gets_no_headers() {
        let mut s = stream_with(script(hold_and_report, report_held), false, true);
        assert_eq!(s.request_headers(POST, false), Action::Continue);
        assert_eq!(s.request_body(b"abcde", true), Action::Continue);
        assert_eq!(
            s.host().mutations(),
            vec![Mutation::SetProperty(vec!["held".to_owned()], b"no".to_vec())],
            "the header write outside the headers phase is dropped, not sent"
        );
    }

    #[test]
    fn buffering_ends_at_the_end_of_the_stream() {
        let mut s = stream(script(|_, _| HeadersFlow::Continue, |_, _, _| BodyFlow::Buffer), false);
        assert_eq!(s.request_headers(POST, false), Action::Continue);
        assert_eq!(s.request_body(b"ab", false), Action::Pause);
        assert_eq!(s.request_body(b"abcde", true), Action::Continue);
    }

    #[test]
    fn headers_leave_with_the_first_continued_chunk_and_are_not_offered_again() {
        let mut s = stream(script(hold_and_report, report_held), true);
        assert_eq!(s.request_headers(POST, false), Action::Pause);
        assert_eq!(s.request_body(b"ab", false), Action::Continue);
        assert_eq!(s.request_body(b"cde", true), Action::Continue);
        assert_eq!(
            s.host().mutations(),
            vec![
                Mutation::SetProperty(vec!["held".to_owned()], b"yes".to_vec()),
                set("x-late", "1"),
                Mutation::SetProperty(vec!["held".to_owned()], b"no".to_vec()),
            ]
        );
    }

    #[test]
    fn a_reply_with_a_hold_holds_nothing() {
        let mut s = stream(
            script(
                |_, fx| {
                    fx.refuse(
                        &ErrorResponse::new(401, ErrorType::Authentication, "no", "no"),
                        ClientApi::OpenAi,
                    );
                    HeadersFlow::Hold
                },
                report_held,
            ),
            true,
        );
        assert_eq!(s.request_headers(POST, false), Action::Pause);
        let _ = s.request_body(b"abcde", true);
        assert!(s
            .host()
            .mutations()
            .contains(&Mutation::SetProperty(vec!["held".to_owned()], b"no".to_vec())));
    }

    #[test]
    fn header_effects_apply_only_to_the_map_of_the_phase() {
        let mut s = stream(
            Script {
                headers: |_, _| HeadersFlow::Continue,
                body: |_, _, _| BodyFlow::Continue,
                response: |_, fx| {
                    fx.set_request_header("x-req", "1");
                    fx.replace_request_body("x");
                    fx.set_response_header("x-res", "1");
                    HeadersFlow::Continue
                },
            },
            false,
        );
        let _ = s.request_headers(POST, true);
        assert_eq!(s.response_headers(&[(":status", "200")], true), Action::Continue);
        assert_eq!(
            s.host().mutations(),
            vec![Mutation::SetHeader(
                Map::ResponseHeaders,
                "x-res".to_owned(),
                b"1".to_vec()
            )]
        );
    }

    #[test]
    fn replacing_a_held_body_drops_the_stale_content_length() {
        let mut s = stream(
            script(hold_and_report, |_, _, fx| {
                fx.replace_request_body("new body");
                BodyFlow::Continue
            }),
            true,
        );
        let _ = s.request_headers(POST, false);
        assert_eq!(s.request_body(b"abcde", true), Action::Continue);
        assert_eq!(
            s.host().mutations(),
            vec![
                Mutation::RemoveHeader(Map::RequestHeaders, "content-length".to_owned()),
                Mutation::SetBuffer(Buffer::RequestBody, b"new body".to_vec()),
            ]
        );
    }

    /// Reads in the log callback what a request analytics series needs.
    #[derive(Default)]
    struct Accountant {
        seen: Rc<std::cell::RefCell<Vec<String>>>,
    }

    impl HttpFilter for Accountant {
        fn request_headers(&mut self, request: &RequestHeaders<'_>, _: &mut Effects) -> HeadersFlow {
            let _ = request.get("x-a");
            HeadersFlow::Continue
        }

        fn log_exchange(&mut self, exchange: &Exchange<'_>) {
            let status = exchange
                .response()
                .status()
                .map_or("none".to_owned(), |s| s.to_string());
            let a = exchange.request().get_str("x-a").unwrap_or("none").to_owned();
            let path = exchange.request().path().to_owned();
            self.seen.borrow_mut().extend([status, a, path]);
        }
    }

    #[test]
    fn the_log_callback_reads_both_header_maps_and_reuses_what_was_read_before() {
        let seen = Rc::default();
        let host = MockHost::new();
        let filter = Accountant { seen: Rc::clone(&seen) };
        let stream = Stream::new(filter, Rc::new(host.clone()), "test", false, Rc::default());
        let mut s = MockStream::new(host, Box::new(stream), false);
        let _ = s.request_headers(POST, true);
        let _ = s.response_headers(&[(":status", "503")], true);
        s.log();
        assert_eq!(*seen.borrow(), vec!["503", "1", "/p"]);
        // `:status` and `:path` read from the host; `x-a` came from the request callback's read.
        assert_eq!(s.counts().log, 2, "{}", s.counts());
    }

    #[test]
    fn a_filter_that_only_logs_is_still_called() {
        struct Logs(Rc<std::cell::Cell<bool>>);
        impl HttpFilter for Logs {
            fn log(&mut self, _: &Env<'_>) {
                self.0.set(true);
            }
        }
        let called = Rc::new(std::cell::Cell::new(false));
        let host = MockHost::new();
        let stream = Stream::new(
            Logs(Rc::clone(&called)),
            Rc::new(host.clone()),
            "test",
            false,
            Rc::default(),
        );
        let mut s = MockStream::new(host, Box::new(stream), false);
        s.log();
        assert!(called.get());
    }

    #[test]
    fn reply_details_never_carry_whitespace() {
        let mut s = stream(
            script(
                |_, fx| {
                    fx.respond(LocalReply {
                        status: 400,
                        headers: vec![(Name::from("x"), b"1".to_vec())],
                        body: Vec::new(),
                        details: "bad request".into(),
                        code: None,
                        context: None,
                    });
                    HeadersFlow::Continue
                },
                |_, _, _| BodyFlow::Continue,
            ),
            false,
        );
        let _ = s.request_headers(POST, true);
        assert_eq!(s.host().reply().map(|r| r.details), Some(Name::from("bad_request")));
    }

    #[test]
    fn refusal_lines_follow_the_filters_policy_and_carry_the_context() {
        use portico_core::refusal::RefusalLog as Policy;
        use std::time::{Duration, UNIX_EPOCH};

        let error = ErrorResponse::new(401, ErrorType::Authentication, "missing_credentials", "no");
        let mut reply = LocalReply::error(&error, ClientApi::OpenAi);
        reply.context = Some("GET /flood".to_owned());
        let log = RefusalLog::new(
            "portico-x",
            Policy {
                level: Level::Debug,
                per_second: 2,
            },
        );
        let t = UNIX_EPOCH + Duration::from_secs(100);
        let code = "missing_credentials";
        let line = (
            log::Level::Debug,
            "portico-x: 401 missing_credentials GET /flood".to_owned(),
        );
        assert_eq!(log.lines(t, &reply, code), vec![line.clone()]);
        assert_eq!(log.lines(t, &reply, code), vec![line.clone()]);
        assert_eq!(log.lines(t, &reply, code), vec![]);
        assert_eq!(
            log.lines(t + Duration::from_secs(1), &reply, code),
            vec![
                (
                    log::Level::Debug,
                    "portico-x: 1 more lines were not logged (refusal_log.per_second is 2 per worker)".to_owned()
                ),
                line
            ],
            "the next window says how many were left out"
        );
        let off = RefusalLog::new(
            "portico-x",
            Policy {
                level: Level::Off,
                per_second: 2,
            },
        );
        assert!(off.lines(t, &reply, code).is_empty());
        reply.context = None;
        assert_eq!(
            RefusalLog::default().lines(t, &reply, code),
            vec![(log::Level::Info, "portico: 401 missing_credentials".to_owned())]
        );
    }

    // === gRPC calls ===

    /// Asks for a call in the phase the test names; on the answer, records the status and
    /// message in a header (request headers phase) and refuses when the status says so.
    struct Caller {
        call_in: Phase,
        reply_too: bool,
        again: u32,
    }

    fn call() -> Call {
        Call {
            cluster: "state".into(),
            service: "portico.state.v1.State".into(),
            method: "Hit".into(),
            message: b"\x0a\x01k".to_vec(),
            timeout: std::time::Duration::from_millis(50),
        }
    }

    impl HttpFilter for Caller {
        fn request_headers(&mut self, _: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
            if self.call_in == Phase::RequestHeaders {
                fx.set_request_header("x-before", "1");
                fx.call(call());
                if self.reply_too {
                    fx.refuse(
                        &ErrorResponse::new(429, ErrorType::RateLimit, "limited", "no"),
                        ClientApi::OpenAi,
                    );
                }
            }
            HeadersFlow::Continue
        }

        fn request_body(&mut self, _: &Body<'_>, _: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
            if self.call_in == Phase::RequestBody {
                fx.call(call());
            }
            BodyFlow::Continue
        }

        fn call_answer(&mut self, answer: &GrpcAnswer<'_>, fx: &mut Effects) {
            let message = String::from_utf8_lossy(answer.message()).into_owned();
            fx.set_request_header("x-answer", format!("{} {message}", answer.status()));
            if self.again > 0 {
                self.again -= 1;
                fx.call(call());
            } else if message == "deny" {
                fx.refuse(
                    &ErrorResponse::new(429, ErrorType::RateLimit, "limited", "no"),
                    ClientApi::OpenAi,
                );
            }
        }
    }

    fn caller(call_in: Phase) -> (MockHost, MockStream) {
        let host = MockHost::new();
        let filter = Caller {
            call_in,
            reply_too: false,
            again: 0,
        };
        let s = Stream::new(filter, Rc::new(host.clone()), "test", false, Rc::default());
        (host.clone(), MockStream::new(host, Box::new(s), false))
    }

    const GET: &[(&str, &str)] = &[(":method", "GET"), (":path", "/p")];

    #[test]
    fn a_call_pauses_the_stream_and_its_answer_changes_the_headers_then_continues() {
        let (host, mut s) = caller(Phase::RequestHeaders);
        assert_eq!(s.request_headers(GET, true), Action::Pause);
        let calls = host.grpc_calls();
        assert_eq!(calls.len(), 1);
        let (token, method, message) = calls.first().cloned().unwrap_or_default();
        assert_eq!((method.as_str(), message.as_slice()), ("Hit", b"\x0a\x01k".as_slice()));
        assert!(
            host.mutations().iter().position(|m| *m == set("x-before", "1"))
                < host
                    .mutations()
                    .iter()
                    .position(|m| matches!(m, Mutation::GrpcCall { .. })),
            "the call is made after the callback's other effects"
        );
        s.grpc_answer(token, 0, b"ok");
        let after = host.mutations();
        assert!(after.contains(&set("x-answer", "0 ok")), "{after:?}");
        assert_eq!(after.last(), Some(&Mutation::Continue(Direction::Request)));
        assert!(host.reply().is_none());
    }

    #[test]
    fn an_answer_that_refuses_replies_and_does_not_continue() {
        let (host, mut s) = caller(Phase::RequestHeaders);
        s.request_headers(GET, true);
        let token = host.grpc_calls().first().map_or(0, |c| c.0);
        s.grpc_answer(token, 0, b"deny");
        assert_eq!(host.reply().map(|r| r.status), Some(429));
        assert!(!host.mutations().contains(&Mutation::Continue(Direction::Request)));
    }

    #[test]
    fn a_failed_call_reaches_the_filter_with_its_status_and_the_stream_continues() {
        let (host, mut s) = caller(Phase::RequestHeaders);
        s.request_headers(GET, true);
        let token = host.grpc_calls().first().map_or(0, |c| c.0);
        s.grpc_answer(token, crate::grpc_status::DEADLINE_EXCEEDED, b"ignored");
        assert!(
            host.mutations().contains(&set("x-answer", "4 ")),
            "no message with a closing status"
        );
        assert_eq!(host.mutations().last(), Some(&Mutation::Continue(Direction::Request)));
    }

    #[test]
    fn a_call_the_host_refuses_is_answered_at_once_as_unavailable() {
        let (host, mut s) = caller(Phase::RequestHeaders);
        host.refuse_grpc_calls(Some(crate::abi::BAD_ARGUMENT));
        assert_eq!(s.request_headers(GET, true), Action::Continue, "nothing to wait for");
        assert!(host.mutations().contains(&set("x-answer", "14 ")));
        assert!(!host.mutations().iter().any(|m| matches!(m, Mutation::Continue(_))));
    }

    #[test]
    fn a_filter_that_calls_again_on_every_refusal_gives_up_after_a_few() {
        let host = MockHost::new();
        host.refuse_grpc_calls(Some(crate::abi::BAD_ARGUMENT));
        let filter = Caller {
            call_in: Phase::RequestHeaders,
            reply_too: false,
            again: 100,
        };
        let stream = Stream::new(filter, Rc::new(host.clone()), "test", false, Rc::default());
        let mut s = MockStream::new(host.clone(), Box::new(stream), false);
        assert_eq!(s.request_headers(GET, true), Action::Continue);
        let answers = host
            .mutations()
            .iter()
            .filter(|m| **m == set("x-answer", "14 "))
            .count();
        assert_eq!(answers, MAX_UNDELIVERED as usize);
    }

    #[test]
    fn an_answer_may_call_again_and_the_stream_waits_for_the_second() {
        let host = MockHost::new();
        let filter = Caller {
            call_in: Phase::RequestHeaders,
            reply_too: false,
            again: 1,
        };
        let stream = Stream::new(filter, Rc::new(host.clone()), "test", false, Rc::default());
        let mut s = MockStream::new(host.clone(), Box::new(stream), false);
        s.request_headers(GET, true);
        let first = host.grpc_calls().first().map_or(0, |c| c.0);
        s.grpc_answer(first, 0, b"a");
        assert!(!host.mutations().iter().any(|m| matches!(m, Mutation::Continue(_))));
        let second = host.grpc_calls().get(1).map_or(0, |c| c.0);
        assert_ne!(first, second);
        s.grpc_answer(first, 0, b"stale");
        assert!(
            !host.mutations().contains(&set("x-answer", "0 stale")),
            "an answer it no longer waits for"
        );
        s.grpc_answer(second, 0, b"b");
        assert_eq!(host.mutations().last(), Some(&Mutation::Continue(Direction::Request)));
    }

    #[test]
    fn a_reply_in_the_same_callback_wins_over_the_call() {
        let host = MockHost::new();
        let filter = Caller {
            call_in: Phase::RequestHeaders,
            reply_too: true,
            again: 0,
        };
        let stream = Stream::new(filter, Rc::new(host.clone()), "test", false, Rc::default());
        let mut s = MockStream::new(host.clone(), Box::new(stream), false);
        assert_eq!(s.request_headers(GET, true), Action::Pause);
        assert!(host.grpc_calls().is_empty());
        assert_eq!(host.reply().map(|r| r.status), Some(429));
    }

    #[test]
    fn a_call_from_a_body_callback_resumes_the_request_after_its_answer() {
        let (host, mut s) = caller(Phase::RequestBody);
        assert_eq!(s.request_headers(POST, false), Action::Continue);
        assert_eq!(s.request_body(b"hello", true), Action::Pause);
        let token = host.grpc_calls().first().map_or(0, |c| c.0);
        s.grpc_answer(token, 0, b"ok");
        assert_eq!(host.mutations().last(), Some(&Mutation::Continue(Direction::Request)));
        assert!(
            !host.mutations().contains(&set("x-answer", "0 ok")),
            "the request headers left with the headers callback: the change is dropped, not sent"
        );
    }
}
