//! An in-memory host for native tests, and [`MockEnvoy`], which drives a module's registry
//! through it the way Envoy 1.40 does.
//!
//! [`MockHost`] keeps header maps as ordered pairs, bodies, properties, a fake clock, shared data
//! with Envoy's CAS rules (`portico_core::shared::MemoryStore`), metrics, and the list of every
//! change made through it in order ([`Mutation`]). Like Envoy, it refuses (BadArgument) header
//! calls on a map that is not open in the current callback; [`MockEnvoy`] opens and closes them
//! per callback, including Envoy's hold rule: request headers stay open in the body callbacks
//! only after a pause with `allow_on_headers_stop_iteration` set on the plugin entry.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portico_core::shared::{HostError, MemoryStore, SetOutcome, Store};
use proxy_wasm::traits::{Context, RootContext};

use crate::abi::{BAD_ARGUMENT, NOT_FOUND};
use crate::effects::{Direction, LocalReply};
use crate::host::{Buffer, GrpcCall, Host, HttpCall, Map, MetricKind};
use crate::root::{Entry, Root};
use crate::stream::{CallCounts, Callbacks};

/// What a callback tells Envoy: continue, or pause the stream.
pub use proxy_wasm::types::Action;

/// A change made through the mock host, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    SetHeader(Map, String, Vec<u8>),
    AddHeader(Map, String, Vec<u8>),
    RemoveHeader(Map, String),
    SetBuffer(Buffer, Vec<u8>),
    SetProperty(Vec<String>, Vec<u8>),
    LocalReply(LocalReply),
    ForeignFunction(String),
    HttpCall {
        cluster: String,
        headers: Vec<(String, String)>,
    },
    TickPeriod(Duration),
    GrpcCall {
        token: u32,
        cluster: String,
        service: String,
        method: String,
        message: Vec<u8>,
        timeout: Duration,
    },
    /// `proxy_continue_stream`: a paused stream resumed.
    Continue(Direction),
}

#[derive(Debug, Default)]
struct State {
    maps: HashMap<Map, Vec<(String, Vec<u8>)>>,
    open: HashSet<Map>,
    buffers: HashMap<Buffer, Vec<u8>>,
    properties: HashMap<Vec<String>, Vec<u8>>,
    now: Option<SystemTime>,
    metrics: Vec<(MetricKind, String, u64)>,
    mutations: Vec<Mutation>,
    next_token: u32,
    calls: u64,
    /// The status `dispatch_grpc_call` answers instead of a token (a missing cluster).
    refuse_grpc: Option<u32>,
}

/// The in-memory host. Clones share one state, so a test keeps one to look at what a filter
/// did through another.
#[derive(Debug, Clone, Default)]
pub struct MockHost {
    state: Rc<RefCell<State>>,
    shared: Rc<MemoryStore>,
}

impl MockHost {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.borrow_mut();
        state.calls += 1;
        f(&mut state)
    }

    fn peek<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.borrow())
    }

    fn setup<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.borrow_mut())
    }

    // === Setting the scene (not counted as host calls) ===

    /// Replaces `map` with `pairs` (names lower-cased, as Envoy keeps them).
    pub fn set_headers(&self, map: Map, pairs: &[(&str, &str)]) {
        let pairs = pairs
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        self.setup(|s| s.maps.insert(map, pairs));
    }

    /// Lets the next calls read and change `map`.
    pub fn open(&self, map: Map) {
        self.setup(|s| s.open.insert(map));
    }

    pub fn close(&self, map: Map) {
        self.setup(|s| s.open.remove(&map));
    }

    pub fn set_body(&self, buffer: Buffer, bytes: &[u8]) {
        self.setup(|s| s.buffers.insert(buffer, bytes.to_vec()));
    }

    pub fn put_property(&self, path: &[&str], value: &[u8]) {
        let path = path.iter().map(|p| (*p).to_owned()).collect();
        self.setup(|s| s.properties.insert(path, value.to_vec()));
    }

    /// Makes every gRPC dispatch fail with host status `status` (`None`: dispatch again).
    pub fn refuse_grpc_calls(&self, status: Option<u32>) {
        self.setup(|s| s.refuse_grpc = status);
    }

    /// The gRPC calls dispatched so far: token, method and message.
    pub fn grpc_calls(&self) -> Vec<(u32, String, Vec<u8>)> {
        self.peek(|s| {
            s.mutations
                .iter()
                .filter_map(|m| match m {
                    Mutation::GrpcCall {
                        token, method, message, ..
                    } => Some((*token, method.clone(), message.clone())),
                    _ => None,
                })
                .collect()
        })
    }

    pub fn set_now(&self, now: SystemTime) {
        self.setup(|s| s.now = Some(now));
    }

    pub fn advance(&self, by: Duration) {
        self.setup(|s| s.now = Some(s.now.unwrap_or(UNIX_EPOCH) + by));
    }

    // === Looking at the outcome ===

    /// `map` as it is now (values lossily as text).
    pub fn headers(&self, map: Map) -> Vec<(String, String)> {
        self.peek(|s| {
            s.maps
                .get(&map)
                .map(|pairs| {
                    pairs
                        .iter()
                        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    pub fn body(&self, buffer: Buffer) -> Vec<u8> {
        self.peek(|s| s.buffers.get(&buffer).cloned().unwrap_or_default())
    }

    /// Every change made so far, in order.
    pub fn mutations(&self) -> Vec<Mutation> {
        self.peek(|s| s.mutations.clone())
    }

    /// The changes made so far, forgetting them.
    pub fn take_mutations(&self) -> Vec<Mutation> {
        self.setup(|s| std::mem::take(&mut s.mutations))
    }

    /// The local reply sent, if any.
    pub fn reply(&self) -> Option<LocalReply> {
        self.peek(|s| {
            s.mutations.iter().find_map(|m| match m {
                Mutation::LocalReply(r) => Some(r.clone()),
                _ => None,
            })
        })
    }

    /// A metric's value: counters sum, gauges keep the last value, histograms sum.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.peek(|s| s.metrics.iter().find(|(_, n, _)| n == name).map(|(_, _, v)| *v))
    }

    /// The shared data, to look at or to prepare.
    pub fn shared(&self) -> &MemoryStore {
        &self.shared
    }

    fn header_map(state: &mut State, map: Map) -> Result<&mut Vec<(String, Vec<u8>)>, HostError> {
        if !state.open.contains(&map) {
            return Err(HostError(BAD_ARGUMENT));
        }
        Ok(state.maps.entry(map).or_default())
    }

    fn metric_id(state: &State, id: u32) -> Result<usize, HostError> {
        usize::try_from(id)
            .ok()
            .filter(|i| *i < state.metrics.len())
            .ok_or(HostError(NOT_FOUND))
    }
}

impl Host for MockHost {
    fn header(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.with(|s| {
            let pairs = Self::header_map(s, map)?;
            Ok(pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone()))
        })
    }

    fn header_pairs(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        self.with(|s| Self::header_map(s, map).map(|pairs| pairs.clone()))
    }

    fn set_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.with(|s| {
            let pairs = Self::header_map(s, map)?;
            let name = name.to_ascii_lowercase();
            match pairs.iter().position(|(n, _)| *n == name) {
                Some(first) => {
                    if let Some(pair) = pairs.get_mut(first) {
                        pair.1 = value.to_vec();
                    }
                    let mut i = 0;
                    pairs.retain(|(n, _)| {
                        i += 1;
                        i - 1 == first || *n != name
                    });
                }
                None => pairs.push((name.clone(), value.to_vec())),
            }
            s.mutations.push(Mutation::SetHeader(map, name, value.to_vec()));
            Ok(())
        })
    }

    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.with(|s| {
            let name = name.to_ascii_lowercase();
            Self::header_map(s, map)?.push((name.clone(), value.to_vec()));
            s.mutations.push(Mutation::AddHeader(map, name, value.to_vec()));
            Ok(())
        })
    }

    fn remove_header(&self, map: Map, name: &str) -> Result<(), HostError> {
        self.with(|s| {
            let name = name.to_ascii_lowercase();
            Self::header_map(s, map)?.retain(|(n, _)| *n != name);
            s.mutations.push(Mutation::RemoveHeader(map, name));
            Ok(())
        })
    }

    fn buffer(&self, buffer: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError> {
        self.with(|s| {
            Ok(s.buffers.get(&buffer).map(|bytes| {
                let end = start.saturating_add(max).min(bytes.len());
                bytes.get(start.min(end)..end).unwrap_or_default().to_vec()
            }))
        })
    }

    fn set_buffer(&self, buffer: Buffer, bytes: &[u8]) -> Result<(), HostError> {
        self.with(|s| {
            s.buffers.insert(buffer, bytes.to_vec());
            s.mutations.push(Mutation::SetBuffer(buffer, bytes.to_vec()));
            Ok(())
        })
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        let path: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
        self.with(|s| Ok(s.properties.get(&path).cloned()))
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), HostError> {
        let path: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
        self.with(|s| {
            s.properties.insert(path.clone(), value.to_vec());
            s.mutations.push(Mutation::SetProperty(path, value.to_vec()));
            Ok(())
        })
    }

    fn send_local_response(&self, reply: &LocalReply) -> Result<(), HostError> {
        self.with(|s| {
            s.mutations.push(Mutation::LocalReply(reply.clone()));
            Ok(())
        })
    }

    fn call_foreign_function(&self, name: &str, _arguments: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.with(|s| {
            s.mutations.push(Mutation::ForeignFunction(name.to_owned()));
            Ok(None)
        })
    }

    fn now(&self) -> Result<SystemTime, HostError> {
        self.with(|s| Ok(s.now.unwrap_or(UNIX_EPOCH)))
    }

    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        self.with(|_| ());
        self.shared.get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError> {
        self.with(|_| ());
        self.shared.set(key, value, cas)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.with(|s| {
            if let Some(i) = s.metrics.iter().position(|(_, n, _)| n == name) {
                return u32::try_from(i).map_err(|_| HostError(BAD_ARGUMENT));
            }
            s.metrics.push((kind, name.to_owned(), 0));
            u32::try_from(s.metrics.len() - 1).map_err(|_| HostError(BAD_ARGUMENT))
        })
    }

    fn increment_metric(&self, id: u32, by: i64) -> Result<(), HostError> {
        self.with(|s| {
            let i = Self::metric_id(s, id)?;
            if let Some((_, _, value)) = s.metrics.get_mut(i) {
                *value = value.saturating_add_signed(by);
            }
            Ok(())
        })
    }

    fn record_metric(&self, id: u32, recorded: u64) -> Result<(), HostError> {
        self.with(|s| {
            let i = Self::metric_id(s, id)?;
            if let Some((kind, _, value)) = s.metrics.get_mut(i) {
                *value = match kind {
                    MetricKind::Gauge => recorded,
                    MetricKind::Counter | MetricKind::Histogram => value.saturating_add(recorded),
                };
            }
            Ok(())
        })
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.with(|s| {
            s.mutations.push(Mutation::TickPeriod(period));
            Ok(())
        })
    }

    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        self.with(|s| {
            s.next_token = s.next_token.wrapping_add(1);
            s.mutations.push(Mutation::HttpCall {
                cluster: call.cluster.to_owned(),
                headers: call
                    .headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
            });
            Ok(s.next_token)
        })
    }

    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, HostError> {
        self.with(|s| {
            if let Some(status) = s.refuse_grpc {
                return Err(HostError(status));
            }
            s.next_token = s.next_token.wrapping_add(1);
            s.mutations.push(Mutation::GrpcCall {
                token: s.next_token,
                cluster: call.cluster.to_owned(),
                service: call.service.to_owned(),
                method: call.method.to_owned(),
                message: call.message.to_vec(),
                timeout: call.timeout,
            });
            Ok(s.next_token)
        })
    }

    fn continue_stream(&self, direction: Direction) -> Result<(), HostError> {
        self.with(|s| {
            s.mutations.push(Mutation::Continue(direction));
            Ok(())
        })
    }

    fn calls(&self) -> u64 {
        self.peek(|s| s.calls)
    }
}

// === impl MockEnvoy ===

/// One plugin entry of a module, started on a [`MockHost`] the way Envoy starts it.
pub struct MockEnvoy {
    host: MockHost,
    root: Root,
    allow_on_headers_stop_iteration: bool,
}

impl MockEnvoy {
    /// Starts the filter `root_id` of `registry` with plugin configuration `config`;
    /// `allow_on_headers_stop_iteration` is Envoy's field on the entry. On refusal, the lines
    /// the root logs.
    pub fn start(
        registry: &'static [Entry],
        root_id: &str,
        config: &str,
        allow_on_headers_stop_iteration: bool,
    ) -> Result<Self, Vec<String>> {
        Self::start_on(
            MockHost::new(),
            registry,
            root_id,
            config,
            allow_on_headers_stop_iteration,
        )
    }

    /// [`MockEnvoy::start`] on `host`, which other entries may share: the entries of one
    /// filter chain see each request through one host ([`MockChain`]).
    pub fn start_on(
        host: MockHost,
        registry: &'static [Entry],
        root_id: &str,
        config: &str,
        allow_on_headers_stop_iteration: bool,
    ) -> Result<Self, Vec<String>> {
        host.put_property(&["plugin_root_id"], root_id.as_bytes());
        host.set_body(Buffer::PluginConfiguration, config.as_bytes());
        let mut root = Root::new(registry, Rc::new(host.clone()));
        root.configure(config.len())?;
        Ok(Self {
            host,
            root,
            allow_on_headers_stop_iteration,
        })
    }

    pub fn host(&self) -> &MockHost {
        &self.host
    }

    /// A new request through the filter.
    pub fn stream(&self) -> MockStream {
        MockStream::new(
            self.host.clone(),
            self.root.stream(),
            self.allow_on_headers_stop_iteration,
        )
    }

    pub fn tick(&mut self) {
        self.root.on_tick();
    }

    /// Delivers the answer to HTTP call `token`: `None` for a call that failed without one.
    pub fn http_call_response(&mut self, token: u32, answer: Option<(u16, &[u8])>) {
        let body_size = answer.map_or(0, |(_, body)| body.len());
        match answer {
            Some((status, body)) => {
                let status = status.to_string();
                self.host
                    .set_headers(Map::HttpCallResponseHeaders, &[(":status", status.as_str())]);
                self.host.set_body(Buffer::HttpCallResponseBody, body);
            }
            None => {
                self.host.set_headers(Map::HttpCallResponseHeaders, &[]);
                self.host.set_body(Buffer::HttpCallResponseBody, &[]);
            }
        }
        self.host.open(Map::HttpCallResponseHeaders);
        self.root.on_http_call_response(token, 1, body_size, 0);
        self.host.close(Map::HttpCallResponseHeaders);
    }

    /// Delivers the answer to the root's gRPC call `token`: status 0 with `message`, or the
    /// status the call closed with.
    pub fn grpc_call_response(&mut self, token: u32, status: u32, message: &[u8]) {
        self.host.set_body(Buffer::GrpcReceiveBuffer, message);
        let size = if status == 0 { message.len() } else { 0 };
        self.root.on_grpc_call_response(token, status, size);
    }
}

/// One request, driven callback by callback.
pub struct MockStream {
    host: MockHost,
    context: Box<dyn Callbacks>,
    allow_on_headers_stop_iteration: bool,
    request_held: bool,
    response_held: bool,
    crossings: u64,
    /// The map the last callback ran with and whether it was open, while it is paused: a
    /// call's answer runs with the same access.
    paused: Option<(Map, bool)>,
}

impl MockStream {
    pub(crate) fn new(host: MockHost, context: Box<dyn Callbacks>, allow_on_headers_stop_iteration: bool) -> Self {
        Self {
            host,
            context,
            allow_on_headers_stop_iteration,
            request_held: false,
            response_held: false,
            crossings: 1,
            paused: None,
        }
    }

    /// Times Envoy called into the VM for this request so far: the context's creation and
    /// each callback.
    pub fn crossings(&self) -> u64 {
        self.crossings
    }

    pub fn host(&self) -> &MockHost {
        &self.host
    }

    /// Host calls this request made so far, by callback.
    pub fn counts(&self) -> CallCounts {
        self.context.counts()
    }

    fn run(&mut self, map: Map, open: bool, call: impl FnOnce(&mut dyn Callbacks) -> Action) -> Action {
        self.crossings += 1;
        if open {
            self.host.open(map);
        }
        let action = call(self.context.as_mut());
        self.host.close(map);
        self.paused = (action == Action::Pause).then_some((map, open));
        action
    }

    /// Delivers the answer to the stream's gRPC call `token` (status 0 with `message`, or the
    /// status the call closed with), with the access the paused callback had, as Envoy does.
    pub fn grpc_answer(&mut self, token: u32, status: u32, message: &[u8]) {
        self.host.set_body(Buffer::GrpcReceiveBuffer, message);
        let size = if status == 0 { message.len() } else { 0 };
        let (map, open) = self.paused.unwrap_or((Map::RequestHeaders, false));
        if open {
            self.host.open(map);
        }
        self.context.call_answer(token, status, size);
        self.host.close(map);
    }

    /// The request headers arrive; `end_of_stream` when no body follows.
    pub fn request_headers(&mut self, pairs: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.host.set_headers(Map::RequestHeaders, pairs);
        self.headers_in_place(Map::RequestHeaders, end_of_stream)
    }

    /// A body callback; `body` is what the host holds now (everything so far while the filter
    /// buffers).
    pub fn request_body(&mut self, body: &[u8], end_of_stream: bool) -> Action {
        self.host.set_body(Buffer::RequestBody, body);
        self.body_in_place(Map::RequestHeaders, body.len(), end_of_stream)
    }

    pub fn response_headers(&mut self, pairs: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.host.set_headers(Map::ResponseHeaders, pairs);
        self.headers_in_place(Map::ResponseHeaders, end_of_stream)
    }

    pub fn response_body(&mut self, body: &[u8], end_of_stream: bool) -> Action {
        self.host.set_body(Buffer::ResponseBody, body);
        self.body_in_place(Map::ResponseHeaders, body.len(), end_of_stream)
    }

    /// The headers callback of `map`'s direction on the map as the host holds it.
    fn headers_in_place(&mut self, map: Map, end_of_stream: bool) -> Action {
        if map == Map::RequestHeaders {
            let action = self.run(map, true, |c| c.request_headers(end_of_stream));
            self.request_held =
                action == Action::Pause && self.allow_on_headers_stop_iteration && self.host.reply().is_none();
            action
        } else {
            let action = self.run(map, true, |c| c.response_headers(end_of_stream));
            self.response_held = action == Action::Pause && self.allow_on_headers_stop_iteration;
            action
        }
    }

    /// The body callback of `map`'s direction on the body the host holds, of `size` bytes.
    fn body_in_place(&mut self, map: Map, size: usize, end_of_stream: bool) -> Action {
        if map == Map::RequestHeaders {
            let held = self.request_held;
            let action = self.run(map, held, |c| c.request_body(size, end_of_stream));
            if action == Action::Continue {
                self.request_held = false;
            }
            action
        } else {
            let held = self.response_held;
            let action = self.run(map, held, |c| c.response_body(size, end_of_stream));
            if action == Action::Continue {
                self.response_held = false;
            }
            action
        }
    }

    /// The log callback, where Envoy lets a filter read the request and response headers.
    pub fn log(&mut self) {
        self.crossings += 1;
        self.host.open(Map::RequestHeaders);
        self.host.open(Map::ResponseHeaders);
        self.context.log();
        self.host.close(Map::RequestHeaders);
        self.host.close(Map::ResponseHeaders);
    }
}

// === impl MockChain ===

/// Several plugin entries of one module on one [`MockHost`], in HTTP filter-chain order: a
/// request runs through them as Envoy runs it through its chain, so what one filter writes
/// (headers, filter state, a replaced body) is what the next reads.
pub struct MockChain {
    host: MockHost,
    entries: Vec<MockEnvoy>,
}

impl MockChain {
    /// Starts each `(root_id, config, allow_on_headers_stop_iteration)` of `registry` on one
    /// host, in chain order. On refusal, the lines the refusing root logs.
    pub fn start(registry: &'static [Entry], entries: &[(&str, &str, bool)]) -> Result<Self, Vec<String>> {
        let host = MockHost::new();
        let entries = entries
            .iter()
            .map(|(root_id, config, allow)| MockEnvoy::start_on(host.clone(), registry, root_id, config, *allow))
            .collect::<Result<_, _>>()?;
        Ok(Self { host, entries })
    }

    pub fn host(&self) -> &MockHost {
        &self.host
    }

    /// A new request through every entry.
    pub fn stream(&self) -> MockChainStream {
        let streams = self.entries.iter().map(MockEnvoy::stream).collect();
        MockChainStream {
            host: self.host.clone(),
            streams,
            request: Pass::default(),
            response: Pass::default(),
            replied_at: None,
        }
    }
}

/// How far one direction of a request got through the chain. Positions count entries in
/// the direction's order.
#[derive(Debug, Default)]
struct Pass {
    /// The first position that runs: a local reply travels back only through the entries
    /// before the one that sent it.
    from: usize,
    /// Positions before this have had the headers.
    headers: usize,
    end_of_stream: bool,
    /// The position that buffers the body, and what it holds.
    buffered: Option<(usize, Vec<u8>)>,
    /// Local replies sent before this pass began: one more ends it.
    replies: usize,
}

/// One request through a [`MockChain`]: request callbacks run in chain order, response
/// callbacks in reverse, each on the maps and body the previous entry left. An entry that
/// pauses stops the callback there, as in Envoy: paused headers go on to the next entries
/// once its body callback continues, and a buffered body is handed back to it with the next
/// chunk appended (the entries before it see only the new chunk). A local reply stops the
/// request; [`MockChainStream::reply_back`] runs it through the response callbacks of the
/// entries before the one that sent it.
pub struct MockChainStream {
    host: MockHost,
    streams: Vec<MockStream>,
    request: Pass,
    response: Pass,
    /// The request-order position of the entry that sent a local reply.
    replied_at: Option<usize>,
}

impl MockChainStream {
    pub fn host(&self) -> &MockHost {
        &self.host
    }

    /// The request headers arrive; `end_of_stream` when no body follows. `Continue` once they
    /// have passed every entry.
    pub fn request_headers(&mut self, pairs: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.host.set_headers(Map::RequestHeaders, pairs);
        self.request = self.new_pass(0, end_of_stream);
        self.headers(Map::RequestHeaders)
    }

    /// A chunk of the request body; `Continue` once it has passed every entry.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        self.body(Map::RequestHeaders, chunk, end_of_stream)
    }

    pub fn response_headers(&mut self, pairs: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.host.set_headers(Map::ResponseHeaders, pairs);
        self.response = self.new_pass(0, end_of_stream);
        self.headers(Map::ResponseHeaders)
    }

    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        self.body(Map::ResponseHeaders, chunk, end_of_stream)
    }

    /// The local reply an entry sent on the request path, run through the response callbacks
    /// of the entries before it as Envoy encodes it (status, its headers, its body); `None`
    /// when no entry replied.
    pub fn reply_back(&mut self) -> Option<LocalReply> {
        let (at, reply) = self.replied_at.zip(self.host.reply())?;
        let status = reply.status.to_string();
        let headers: Vec<(String, String)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let mut pairs = vec![(":status", status.as_str())];
        pairs.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        self.host.set_headers(Map::ResponseHeaders, &pairs);
        self.response = self.new_pass(self.streams.len().saturating_sub(at), reply.body.is_empty());
        self.headers(Map::ResponseHeaders);
        let ended = self.replies() > self.response.replies;
        if !ended && !reply.body.is_empty() {
            self.body(Map::ResponseHeaders, &reply.body, true);
        }
        Some(reply)
    }

    /// Every entry's log callback, in chain order.
    pub fn log(&mut self) {
        for stream in &mut self.streams {
            stream.log();
        }
    }

    fn replies(&self) -> usize {
        self.host
            .mutations()
            .iter()
            .filter(|m| matches!(m, Mutation::LocalReply(_)))
            .count()
    }

    fn new_pass(&self, from: usize, end_of_stream: bool) -> Pass {
        Pass {
            from,
            headers: from,
            end_of_stream,
            buffered: None,
            replies: self.replies(),
        }
    }

    /// Entry indices in the order `map`'s direction runs them.
    fn order(&self, map: Map) -> Vec<usize> {
        let all = 0..self.streams.len();
        if map == Map::RequestHeaders {
            all.collect()
        } else {
            all.rev().collect()
        }
    }

    fn pass(&mut self, map: Map) -> &mut Pass {
        if map == Map::RequestHeaders {
            &mut self.request
        } else {
            &mut self.response
        }
    }

    /// Whether an entry at request-order position `at` (in `map`'s direction) ended the pass
    /// with a local reply; a request-path reply is remembered for [`Self::reply_back`].
    fn ended(&mut self, map: Map, at: usize) -> bool {
        let ended = self.replies() > self.pass(map).replies;
        if ended && map == Map::RequestHeaders && self.replied_at.is_none() {
            self.replied_at = Some(at);
        }
        ended
    }

    /// Runs the headers through the entries that have not had them, until one pauses.
    fn headers(&mut self, map: Map) -> Action {
        let order = self.order(map);
        let end_of_stream = self.pass(map).end_of_stream;
        while let Some(&i) = order.get(self.pass(map).headers) {
            let at = self.pass(map).headers;
            self.pass(map).headers += 1;
            let Some(stream) = self.streams.get_mut(i) else {
                return Action::Pause;
            };
            let action = stream.headers_in_place(map, end_of_stream);
            if self.ended(map, at) || action == Action::Pause {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn body(&mut self, map: Map, chunk: &[u8], end_of_stream: bool) -> Action {
        let buffer = if map == Map::RequestHeaders {
            Buffer::RequestBody
        } else {
            Buffer::ResponseBody
        };
        self.host.set_body(buffer, chunk);
        let order = self.order(map);
        let from = self.pass(map).from;
        for (at, &i) in order.iter().enumerate().skip(from) {
            if at >= self.pass(map).headers {
                // Paused headers go on once the body passed the entry that held them.
                self.headers(map);
                if self.ended(map, at) {
                    return Action::Pause;
                }
            }
            if self
                .pass(map)
                .buffered
                .as_ref()
                .is_some_and(|(held_at, _)| *held_at == at)
            {
                if let Some((_, mut whole)) = self.pass(map).buffered.take() {
                    whole.extend_from_slice(&self.host.body(buffer));
                    self.host.set_body(buffer, &whole);
                }
            }
            let size = self.host.body(buffer).len();
            let Some(stream) = self.streams.get_mut(i) else {
                return Action::Pause;
            };
            let action = stream.body_in_place(map, size, end_of_stream);
            if self.ended(map, at) {
                return Action::Pause;
            }
            if action == Action::Pause {
                let held = self.host.body(buffer);
                self.pass(map).buffered = Some((at, held));
                return Action::Pause;
            }
        }
        Action::Continue
    }
}

// === impl MockEntries ===

/// One request through several plugin entries sharing one host, in chain order, as Envoy runs
/// entries that continue or reply (none holds here): the request callbacks in order up to the
/// first entry that pauses, the response callbacks in reverse through the entries the request
/// reached (up to the one that replied, if one did), the log callback for every entry.
pub struct MockEntries {
    host: MockHost,
    streams: Vec<MockStream>,
    /// Entries whose request headers callback ran.
    reached: usize,
    replied: Option<usize>,
}

impl MockEntries {
    /// A new request through `entries`, which must share one host ([`MockEnvoy::start_on`]).
    pub fn new(entries: &[&MockEnvoy]) -> Self {
        let host = entries.first().map(|e| e.host.clone()).unwrap_or_default();
        Self {
            host,
            streams: entries.iter().map(|e| e.stream()).collect(),
            reached: 0,
            replied: None,
        }
    }

    pub fn host(&self) -> &MockHost {
        &self.host
    }

    /// The request headers arrive (no body follows).
    pub fn request_headers(&mut self, pairs: &[(&str, &str)]) -> Action {
        self.host.set_headers(Map::RequestHeaders, pairs);
        for (i, stream) in self.streams.iter_mut().enumerate() {
            self.reached = i + 1;
            let action = stream.run(Map::RequestHeaders, true, |c| c.request_headers(true));
            if action == Action::Pause {
                if self.host.reply().is_some() {
                    self.replied = Some(i);
                }
                return action;
            }
        }
        Action::Continue
    }

    /// The response headers arrive (no body follows).
    pub fn response_headers(&mut self, pairs: &[(&str, &str)]) -> Action {
        self.host.set_headers(Map::ResponseHeaders, pairs);
        let through = self.replied.map_or(self.reached, |r| r + 1);
        for stream in self.streams.iter_mut().take(through).rev() {
            let action = stream.run(Map::ResponseHeaders, true, |c| c.response_headers(true));
            if action == Action::Pause {
                return action;
            }
        }
        Action::Continue
    }

    pub fn log(&mut self) {
        for stream in &mut self.streams {
            stream.log();
        }
    }

    /// Host calls of every entry, summed by callback.
    pub fn counts(&self) -> CallCounts {
        self.streams
            .iter()
            .map(MockStream::counts)
            .fold(CallCounts::default(), |a, b| CallCounts {
                request_headers: a.request_headers + b.request_headers,
                request_body: a.request_body + b.request_body,
                response_headers: a.response_headers + b.response_headers,
                response_body: a.response_body + b.response_body,
                log: a.log + b.log,
            })
    }

    /// Times Envoy called into the VM for this request, every entry's together.
    pub fn crossings(&self) -> u64 {
        self.streams.iter().map(MockStream::crossings).sum()
    }
}
