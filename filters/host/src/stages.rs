//! `portico-stages`: several filters of a module in one plugin entry, run in turn, where no
//! native filter has to sit between them. Envoy then crosses into the VM once per callback for
//! all of them instead of once per filter, and the stages share one header cache, so a header
//! one stage read or wrote costs the next no host call.
//!
//! Configuration: `{"stages": [{"filter": "<root id>", "config": {...}}, ...]}`, each `config`
//! exactly what that filter's own plugin entry would hold (`allow_on_headers_stop_iteration`
//! included: a stage holds headers only when it declares it, and the entry then needs Envoy's
//! field of that name). Errors carry the path `$.stages[i].config...`.
//!
//! The stream behaves as the same filters as separate entries in that order (Envoy 1.40's
//! filter manager):
//! - each callback runs the stages in order (the response ones in reverse, Envoy's encoder
//!   order), each stage's effects applied before the next runs;
//! - a stage that holds the headers or buffers the body stops the later stages until it lets
//!   them go: they then get the headers (a body follows) and the body it let go, whole; a stage
//!   ahead of one that buffers sees only the bytes that arrived since it last passed them;
//! - a local reply from stage `r` ends the request there; the response callbacks then run only
//!   `r` and the stages before it (Envoy 1.40 passes a filter's local reply through that
//!   filter's own encoder and those before it, measured in tests/tests/stages.rs);
//! - the log callback runs for every stage, as Envoy calls every filter's (a stage after a
//!   refusal still counts the refused request).
//!
//! Root-level work stays each stage's own: the entry ticks at the shortest period a stage asks
//! for and calls each stage when its own period is due, and an HTTP call's answer goes to the
//! stage that sent it.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use portico_core::config::{parse_root, Errors};
use proxy_wasm::types::Action;
use serde_json::Value;

use crate::callout::{CallResponse, GrpcAnswer};
use crate::effects::{Direction, Effect, Effects};
use crate::env::Env;
use crate::filter::{BodyFlow, HeadersFlow, HttpFilter, RootHost};
use crate::headers::{Body, Exchange, HeaderCache, HeaderView, RequestHeaders, ResponseHeaders};
use crate::host::{Buffer, Host, Map};
use crate::root::{take_common, Entry, Plugin, Refusal};
use crate::stream::{Apply, Author, CallCounts, Callbacks, Phase, RefusalLog};

/// The `root_id` of a stages entry.
pub const ROOT_ID: &str = "portico-stages";

/// The module whose filters a stages entry runs (its registry, which holds the stages entry).
pub trait Registry: 'static {
    fn filters() -> &'static [Entry];
}

/// The registry entry `portico-stages` of the module `R`.
pub const fn entry<R: Registry>() -> Entry {
    Entry::custom(ROOT_ID, start::<R>, check::<R>)
}

// === Configuration ===

/// One stage as written: the filter's root id and its configuration document.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDoc {
    pub filter: String,
    pub config: Value,
    /// The JSON path of `config`, `$.stages[i].config`.
    pub path: String,
}

/// Reads the shape of a stages document, recording what is wrong with it in `errors`; `known`
/// are the root ids a stage may name. Gives the stages that name a known filter and have a
/// configuration object.
pub fn documents(value: &Value, known: &[&str], errors: &mut Errors) -> Vec<StageDoc> {
    let Some(mut root) = parse_root(value, errors) else {
        return Vec::new();
    };
    let list = root.req("stages", errors).and_then(|node| {
        let list = node.array(errors)?;
        if list.is_empty() {
            node.error(errors, "expected at least one stage");
        }
        Some(list)
    });
    root.finish(errors);
    let mut docs = Vec::new();
    for node in list.unwrap_or_default() {
        let Some(mut stage) = node.object(errors) else {
            continue;
        };
        let filter = stage.req("filter", errors).and_then(|n| {
            let name = n.str(errors)?;
            if name == ROOT_ID {
                n.error(errors, "a stage cannot be another stages entry");
                None
            } else if known.contains(&name) {
                Some(name.to_owned())
            } else {
                n.error(
                    errors,
                    format!("{name:?} names no filter of this module (known: {})", known.join(", ")),
                );
                None
            }
        });
        let config = stage.req("config", errors).and_then(|n| match n.value() {
            Value::Object(_) => Some((n.value().clone(), n.path().to_owned())),
            _ => {
                n.error(errors, "expected an object");
                None
            }
        });
        stage.finish(errors);
        if let (Some(filter), Some((config, path))) = (filter, config) {
            docs.push(StageDoc { filter, config, path });
        }
    }
    docs
}

/// Records `errors` of a document found at `path` with their full paths.
pub fn within(errors: &Errors, path: &str, into: &mut Errors) {
    for error in errors.list() {
        let rest = error.path.strip_prefix('$').unwrap_or(&error.path);
        into.push(&format!("{path}{rest}"), error.message.clone());
    }
}

/// One stage, checked.
struct StageConfig {
    entry: &'static Entry,
    config: Value,
    path: String,
    allow_hold: bool,
}

fn read(value: &Value, registry: &'static [Entry]) -> Result<Vec<StageConfig>, Errors> {
    let known: Vec<&str> = registry
        .iter()
        .map(Entry::root_id)
        .filter(|id| *id != ROOT_ID)
        .collect();
    let mut errors = Errors::default();
    let mut stages = Vec::new();
    for doc in documents(value, &known, &mut errors) {
        let Some(entry) = registry.iter().find(|e| e.root_id() == doc.filter) else {
            continue;
        };
        let mut config = doc.config;
        let common = take_common(&mut config, &doc.path, &mut errors);
        if let Err(e) = entry.check_value(&config) {
            within(&e, &doc.path, &mut errors);
        }
        stages.push(StageConfig {
            entry,
            config,
            path: doc.path,
            allow_hold: common.allow_on_headers_stop_iteration,
        });
    }
    if errors.is_empty() {
        Ok(stages)
    } else {
        Err(errors)
    }
}

fn check<R: Registry>(value: &Value) -> Result<(), Errors> {
    read(value, R::filters()).map(drop)
}

// === Root level ===

/// What a stage's root-level code asked of the host that the entry shares: its tick period
/// and the tokens of the calls it sent.
#[derive(Default)]
pub(crate) struct StageRoot {
    tick: Cell<Option<Duration>>,
    calls: Cell<Vec<u32>>,
    /// gRPC tokens are counted apart from HTTP ones by the host, so they are kept apart.
    grpc_calls: Cell<Vec<u32>>,
}

impl StageRoot {
    pub(crate) fn set_tick_period(&self, period: Duration) {
        self.tick.set((!period.is_zero()).then_some(period));
    }

    pub(crate) fn sent(&self, token: u32) {
        let mut calls = self.calls.take();
        calls.push(token);
        self.calls.set(calls);
    }

    pub(crate) fn sent_grpc(&self, token: u32) {
        let mut calls = self.grpc_calls.take();
        calls.push(token);
        self.grpc_calls.set(calls);
    }

    /// Whether `token` is one of this stage's calls (forgetting it).
    fn answers(&self, token: u32) -> bool {
        forget(&self.calls, token)
    }

    /// Whether `token` is one of this stage's gRPC calls (forgetting it).
    fn answers_grpc(&self, token: u32) -> bool {
        forget(&self.grpc_calls, token)
    }
}

fn forget(calls: &Cell<Vec<u32>>, token: u32) -> bool {
    let mut list = calls.take();
    let found = list.iter().position(|t| *t == token).map(|i| list.swap_remove(i));
    calls.set(list);
    found.is_some()
}

/// A started stage.
struct Started {
    root_id: &'static str,
    plugin: Box<dyn Plugin>,
    allow_hold: bool,
    refusals: Rc<RefusalLog>,
    root: StageRoot,
    /// When its next tick is due.
    due: Option<SystemTime>,
}

/// A started stages entry.
struct Stages {
    stages: Vec<Started>,
    /// The period the entry ticks at: the shortest a stage asked for.
    tick: Option<Duration>,
}

fn start<R: Registry>(value: &Value, root: &mut RootHost<'_>) -> Result<Box<dyn Plugin>, Refusal> {
    let configs = read(value, R::filters()).map_err(Refusal::Config)?;
    let host = root.host();
    let mut stages = Vec::with_capacity(configs.len());
    for (i, stage) in configs.into_iter().enumerate() {
        let root_id = stage.entry.root_id();
        let stage_root = StageRoot::default();
        let started = stage
            .entry
            .start(&stage.config, &mut RootHost::for_stage(host, root_id, &stage_root));
        let plugin = match started {
            Ok(plugin) => plugin,
            Err(Refusal::Config(e)) => {
                let mut errors = Errors::default();
                within(&e, &stage.path, &mut errors);
                return Err(Refusal::Config(errors));
            }
            Err(Refusal::Start(message)) => return Err(Refusal::Start(format!("stage {i} ({root_id}): {message}"))),
        };
        stages.push(Started {
            root_id,
            refusals: Rc::new(RefusalLog::new(root_id, plugin.refusal_log())),
            plugin,
            allow_hold: stage.allow_hold,
            root: stage_root,
            due: None,
        });
    }
    let mut stages = Stages { stages, tick: None };
    stages
        .follow_ticks(host)
        .map_err(|e| Refusal::Start(format!("cannot set the tick period: host status {}", e.0)))?;
    Ok(Box::new(stages))
}

impl Stages {
    /// Sets the entry's tick period to the shortest a stage asks for now.
    fn follow_ticks(&mut self, host: &dyn Host) -> Result<(), crate::abi::HostError> {
        let shortest = self.stages.iter().filter_map(|s| s.root.tick.get()).min();
        if shortest != self.tick {
            host.set_tick_period(shortest.unwrap_or(Duration::ZERO))?;
            self.tick = shortest;
        }
        Ok(())
    }
}

impl Plugin for Stages {
    fn stream(&self, host: Rc<dyn Host>, _allow_hold: bool, _refusals: Rc<RefusalLog>) -> Box<dyn Callbacks> {
        let stages = self
            .stages
            .iter()
            .map(|s| Stage {
                filter: s.plugin.http(),
                root_id: s.root_id,
                refusals: Rc::clone(&s.refusals),
                allow_hold: s.allow_hold,
                request: Progress::default(),
                response: Progress::default(),
            })
            .collect();
        Box::new(StagesStream {
            host,
            stages,
            request: HeaderCache::default(),
            response: HeaderCache::default(),
            replied: None,
            counts: CallCounts::default(),
        })
    }

    fn http(&self) -> Box<dyn HttpFilter> {
        // `documents` refuses a stages entry as a stage, so this is never asked for.
        Box::new(Nothing)
    }

    fn refusal_log(&self) -> portico_core::refusal::RefusalLog {
        portico_core::refusal::RefusalLog::default()
    }

    fn tick(&mut self, root: &mut RootHost<'_>) {
        let host = root.host();
        let now = Env::new(host).now();
        // Ticks come about every `self.tick`: a stage is due when its time is less than half
        // a tick away.
        let slack = self.tick.unwrap_or_default() / 2;
        for stage in &mut self.stages {
            let Some(period) = stage.root.tick.get() else {
                continue;
            };
            if stage.due.is_some_and(|due| due > now + slack) {
                continue;
            }
            stage.due = Some(now + period);
            let mut stage_root = RootHost::for_stage(host, stage.root_id, &stage.root);
            stage.plugin.tick(&mut stage_root);
        }
        if let Err(e) = self.follow_ticks(host) {
            log::error!("{ROOT_ID}: cannot change the tick period: host status {}", e.0);
        }
    }

    fn http_call_response(&mut self, root: &mut RootHost<'_>, token: u32, response: &CallResponse<'_>) {
        let host = root.host();
        if let Some(stage) = self.stages.iter_mut().find(|s| s.root.answers(token)) {
            let mut stage_root = RootHost::for_stage(host, stage.root_id, &stage.root);
            stage.plugin.http_call_response(&mut stage_root, token, response);
        }
    }

    fn grpc_call_response(&mut self, root: &mut RootHost<'_>, token: u32, answer: &GrpcAnswer<'_>) {
        let host = root.host();
        if let Some(stage) = self.stages.iter_mut().find(|s| s.root.answers_grpc(token)) {
            let mut stage_root = RootHost::for_stage(host, stage.root_id, &stage.root);
            stage.plugin.grpc_call_response(&mut stage_root, token, answer);
        }
    }
}

/// The per-request part of a stages entry as a stage: there is none.
struct Nothing;

impl HttpFilter for Nothing {}

// === Stream ===

/// How far one direction of the stream got through a stage.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// The headers reached the stage.
    entered: bool,
    /// The stage holds them and has not let them go.
    held: bool,
    /// Where the part of the host's body buffer the stage has not passed on starts.
    from: usize,
}

/// One stage of one request.
struct Stage {
    filter: Box<dyn HttpFilter>,
    root_id: &'static str,
    refusals: Rc<RefusalLog>,
    allow_hold: bool,
    request: Progress,
    response: Progress,
}

impl Stage {
    fn progress(&mut self, direction: Direction) -> &mut Progress {
        match direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }
}

/// What a stage's callback left the stream to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// On to the next stage.
    Next,
    /// The stage holds or buffers: the later stages wait.
    Wait,
    /// The stage answered the request.
    Replied,
}

/// One request through the stages of an entry.
pub(crate) struct StagesStream {
    host: Rc<dyn Host>,
    stages: Vec<Stage>,
    request: HeaderCache,
    response: HeaderCache,
    /// The stage whose local reply ended the request.
    replied: Option<usize>,
    counts: CallCounts,
}

/// Runs one stage callback and applies its effects; `body_from` is where the stage's view of
/// the body starts. Gives what the callback answered, whether it replied, and the length of
/// the body it wrote in `phase`, if it replaced it.
fn run_stage<R>(
    host: &dyn Host,
    stage: &mut Stage,
    request: &mut HeaderCache,
    response: &mut HeaderCache,
    phase: Phase,
    body_from: usize,
    call: impl FnOnce(&mut dyn HttpFilter, &HeaderCache, &HeaderCache, &mut Effects) -> R,
) -> (R, bool, Option<usize>) {
    let mut fx = Effects::default();
    let answer = call(stage.filter.as_mut(), request, response, &mut fx);
    let body = match phase {
        Phase::RequestBody => Some(Direction::Request),
        Phase::ResponseBody => Some(Direction::Response),
        _ => None,
    };
    let replaced = fx.list().iter().rev().find_map(|effect| match effect {
        Effect::ReplaceBody(d, bytes) if Some(*d) == body => Some(bytes.len()),
        _ => None,
    });
    if let Some(asked) = fx.pending_call() {
        // Not yet: a stage's call would pause every later stage until its answer.
        log::error!(
            "{}: gRPC call {}/{} dropped: calls from a stage are not supported; run {} as its own plugin entry",
            stage.root_id,
            asked.service,
            asked.method,
            stage.root_id
        );
    }
    let author = Author {
        root_id: stage.root_id,
        refusals: &stage.refusals,
        request_held: stage.request.held,
        response_held: stage.response.held,
        body_from,
    };
    let replied = Apply {
        host,
        author: &author,
        request,
        response,
    }
    .effects(phase, fx);
    (answer, replied, replaced)
}

impl StagesStream {
    /// The index of the `k`th stage a callback of `direction` runs: in order for the request,
    /// in reverse for the response.
    fn at(&self, direction: Direction, k: usize) -> usize {
        match direction {
            Direction::Request => k,
            Direction::Response => self.stages.len().saturating_sub(k.saturating_add(1)),
        }
    }

    /// Whether stage `i` takes part in the callbacks of `direction`: every stage in the
    /// request; in the response those the request reached, up to any stage that replied.
    fn takes(&self, direction: Direction, i: usize) -> bool {
        match direction {
            Direction::Request => self.replied.is_none(),
            Direction::Response => {
                self.stages.get(i).is_some_and(|s| s.request.entered) && self.replied.is_none_or(|r| i <= r)
            }
        }
    }

    fn headers_at(&mut self, direction: Direction, i: usize, end_of_stream: bool) -> Step {
        let Self {
            host,
            stages,
            request,
            response,
            ..
        } = self;
        let Some(stage) = stages.get_mut(i) else {
            return Step::Next;
        };
        stage.progress(direction).entered = true;
        let host = &**host;
        let (phase, map) = match direction {
            Direction::Request => (Phase::RequestHeaders, Map::RequestHeaders),
            Direction::Response => (Phase::ResponseHeaders, Map::ResponseHeaders),
        };
        let (flow, replied, _) =
            run_stage(
                host,
                stage,
                request,
                response,
                phase,
                0,
                |filter, req, res, fx| match direction {
                    Direction::Request => {
                        let view = RequestHeaders::new(HeaderView::new(host, map, req, end_of_stream));
                        filter.request_headers(&view, fx)
                    }
                    Direction::Response => {
                        let view = ResponseHeaders::new(HeaderView::new(host, map, res, end_of_stream));
                        filter.response_headers(&view, fx)
                    }
                },
            );
        if replied {
            self.replied = Some(i);
            return Step::Replied;
        }
        if flow == HeadersFlow::Hold && stage.allow_hold && !end_of_stream {
            stage.progress(direction).held = true;
            return Step::Wait;
        }
        Step::Next
    }

    fn body_at(&mut self, direction: Direction, i: usize, size: &mut usize, end_of_stream: bool) -> Step {
        let Self {
            host,
            stages,
            request,
            response,
            ..
        } = self;
        let Some(stage) = stages.get_mut(i) else {
            return Step::Next;
        };
        let host = &**host;
        let progress = *stage.progress(direction);
        let from = progress.from.min(*size);
        let seen = size.saturating_sub(from);
        let (phase, buffer) = match direction {
            Direction::Request => (Phase::RequestBody, Buffer::RequestBody),
            Direction::Response => (Phase::ResponseBody, Buffer::ResponseBody),
        };
        let (flow, replied, replaced) =
            run_stage(host, stage, request, response, phase, from, |filter, req, res, fx| {
                let body = Body::range(host, buffer, from, seen, end_of_stream);
                match direction {
                    Direction::Request => {
                        let view = RequestHeaders::new(HeaderView::new(host, Map::RequestHeaders, req, false));
                        filter.request_body(&body, progress.held.then_some(&view), fx)
                    }
                    Direction::Response => {
                        let view = ResponseHeaders::new(HeaderView::new(host, Map::ResponseHeaders, res, false));
                        filter.response_body(&body, progress.held.then_some(&view), fx)
                    }
                }
            });
        if replied {
            self.replied = Some(i);
            return Step::Replied;
        }
        if let Some(len) = replaced {
            *size = from.saturating_add(len);
        }
        if flow == BodyFlow::Buffer && !end_of_stream {
            return Step::Wait;
        }
        let progress = stage.progress(direction);
        progress.held = false;
        progress.from = *size;
        Step::Next
    }

    /// Counts the host calls `run` makes as `phase`'s.
    fn counted(&mut self, phase: Phase, run: impl FnOnce(&mut Self) -> Action) -> Action {
        let before = self.host.calls();
        let action = run(self);
        let spent = self.host.calls().saturating_sub(before);
        let slot = self.counts.slot(phase);
        *slot = slot.saturating_add(spent);
        action
    }

    fn headers(&mut self, direction: Direction, end_of_stream: bool) -> Action {
        for k in 0..self.stages.len() {
            let i = self.at(direction, k);
            if !self.takes(direction, i) {
                continue;
            }
            match self.headers_at(direction, i, end_of_stream) {
                Step::Next => {}
                Step::Wait | Step::Replied => return Action::Pause,
            }
        }
        Action::Continue
    }

    fn body(&mut self, direction: Direction, size: usize, end_of_stream: bool) -> Action {
        let mut size = size;
        for k in 0..self.stages.len() {
            let i = self.at(direction, k);
            if !self.takes(direction, i) {
                continue;
            }
            let entered = self.stages.get_mut(i).is_some_and(|s| s.progress(direction).entered);
            // The stage ahead held the headers and has just let them go, with this body.
            if !entered && self.headers_at(direction, i, false) == Step::Replied {
                return Action::Pause;
            }
            match self.body_at(direction, i, &mut size, end_of_stream) {
                Step::Next => {}
                Step::Wait | Step::Replied => return Action::Pause,
            }
        }
        // Everything so far leaves: the next callback's buffer starts after it.
        for stage in &mut self.stages {
            stage.progress(direction).from = 0;
        }
        Action::Continue
    }

    fn log(&mut self) {
        let Self {
            host,
            stages,
            request,
            response,
            ..
        } = self;
        let host = &**host;
        for stage in stages {
            let exchange = Exchange::new(
                RequestHeaders::new(HeaderView::new(host, Map::RequestHeaders, request, true)),
                ResponseHeaders::new(HeaderView::new(host, Map::ResponseHeaders, response, true)),
            );
            stage.filter.log_exchange(&exchange);
        }
    }
}

impl Callbacks for StagesStream {
    fn request_headers(&mut self, end_of_stream: bool) -> Action {
        self.counted(Phase::RequestHeaders, |s| s.headers(Direction::Request, end_of_stream))
    }

    fn request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.counted(Phase::RequestBody, |s| s.body(Direction::Request, size, end_of_stream))
    }

    fn response_headers(&mut self, end_of_stream: bool) -> Action {
        self.counted(Phase::ResponseHeaders, |s| {
            s.headers(Direction::Response, end_of_stream)
        })
    }

    fn response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.counted(Phase::ResponseBody, |s| {
            s.body(Direction::Response, size, end_of_stream)
        })
    }

    fn log(&mut self) {
        self.counted(Phase::Log, |s| {
            s.log();
            Action::Continue
        });
        #[cfg(feature = "count-host-calls")]
        log::info!("{ROOT_ID}: host calls: {}", self.counts);
    }

    fn call_answer(&mut self, token: u32, _status: u32, _size: usize) {
        // Stages make no calls from streams (see `run`), so nothing waits for an answer.
        log::debug!("{ROOT_ID}: an answer to gRPC call {token}, which no stage waits for");
    }

    fn counts(&self) -> CallCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::marker::PhantomData;

    use portico_core::response::{ClientApi, ErrorResponse, ErrorType};

    use portico_core::config::read_value;

    use crate::filter::Filter;
    use crate::host::HttpCall;
    use crate::metrics::Counter;
    use crate::mock::{MockEnvoy, MockStream, Mutation};
    use crate::root::entry as filter_entry;

    /// What a probe does, from its configuration.
    #[derive(Debug, Default)]
    struct Script {
        /// Sets `x-<name>` to this header's value (or `none`) in the request headers callback.
        copy: Option<String>,
        refuse: bool,
        hold: bool,
        buffer: bool,
        /// Replaces each body part it sees by it in upper case.
        upper: bool,
        tick_ms: Option<u64>,
    }

    trait Name: 'static {
        const ROOT_ID: &'static str;
        const NAME: &'static str;
    }
    struct A;
    struct B;
    struct C;
    impl Name for A {
        const ROOT_ID: &'static str = "portico-a";
        const NAME: &'static str = "a";
    }
    impl Name for B {
        const ROOT_ID: &'static str = "portico-b";
        const NAME: &'static str = "b";
    }
    impl Name for C {
        const ROOT_ID: &'static str = "portico-c";
        const NAME: &'static str = "c";
    }

    /// A filter that writes every callback it gets to the filter state `trace`, in order.
    struct Probe<N> {
        script: Rc<Script>,
        answers: Counter,
        name: PhantomData<N>,
    }

    struct ProbeHttp {
        script: Rc<Script>,
        name: &'static str,
    }

    impl<N: Name> Filter for Probe<N> {
        const ROOT_ID: &'static str = N::ROOT_ID;
        type Config = Script;
        type Http = ProbeHttp;

        fn configure(config: &Value) -> Result<Script, Errors> {
            read_value(config, |mut root, errors| {
                let script = Script {
                    copy: root.opt_str("copy", errors).map(str::to_owned),
                    refuse: root.opt_bool("refuse", errors).unwrap_or(false),
                    hold: root.opt_bool("hold", errors).unwrap_or(false),
                    buffer: root.opt_bool("buffer", errors).unwrap_or(false),
                    upper: root.opt_bool("upper", errors).unwrap_or(false),
                    tick_ms: root.opt_u64("tick_ms", errors),
                };
                root.finish(errors);
                script
            })
        }

        fn new(script: Rc<Script>, root: &mut RootHost<'_>) -> Result<Self, String> {
            if let Some(ms) = script.tick_ms {
                root.set_tick_period(Duration::from_millis(ms))
                    .map_err(|e| e.0.to_string())?;
            }
            Ok(Self {
                script,
                answers: Counter::define(&root.env(), &format!("{}_answers", N::NAME)),
                name: PhantomData,
            })
        }

        fn http(&self) -> ProbeHttp {
            ProbeHttp {
                script: Rc::clone(&self.script),
                name: N::NAME,
            }
        }

        fn on_tick(&mut self, root: &mut RootHost<'_>) {
            let call = HttpCall {
                cluster: N::NAME,
                headers: &[(":method", "GET"), (":path", "/"), (":authority", "x")],
                body: None,
                timeout: Duration::from_secs(1),
            };
            let _ = root.dispatch_http_call(&call);
        }

        fn on_http_call_response(&mut self, root: &mut RootHost<'_>, _token: u32, _response: &CallResponse<'_>) {
            self.answers.add(&root.env(), 1);
        }
    }

    impl ProbeHttp {
        fn trace(&self, fx: &mut Effects, what: &str) {
            fx.set_state("trace", format!("{}.{what}", self.name));
        }
    }

    impl HttpFilter for ProbeHttp {
        fn request_headers(&mut self, request: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
            self.trace(fx, "request_headers");
            if self.script.refuse {
                fx.refuse(
                    &ErrorResponse::new(403, ErrorType::Permission, "probe_refused", "no"),
                    ClientApi::OpenAi,
                );
            }
            if let Some(copy) = &self.script.copy {
                let value = request.get(copy).unwrap_or(b"none").to_vec();
                fx.set_request_header(format!("x-{}", self.name), value);
            }
            if self.script.hold {
                HeadersFlow::Hold
            } else {
                HeadersFlow::Continue
            }
        }

        fn request_body(&mut self, body: &Body<'_>, held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
            let bytes = String::from_utf8_lossy(body.bytes()).into_owned();
            let held = if held.is_some() { " held" } else { "" };
            self.trace(fx, &format!("request_body {bytes}{held}"));
            if self.script.upper {
                fx.replace_request_body(bytes.to_ascii_uppercase());
            }
            if self.script.buffer {
                BodyFlow::Buffer
            } else {
                BodyFlow::Continue
            }
        }

        fn response_headers(&mut self, _response: &ResponseHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
            self.trace(fx, "response_headers");
            HeadersFlow::Continue
        }

        fn response_body(
            &mut self,
            body: &Body<'_>,
            _held: Option<&ResponseHeaders<'_>>,
            fx: &mut Effects,
        ) -> BodyFlow {
            let bytes = String::from_utf8_lossy(body.bytes()).into_owned();
            self.trace(fx, &format!("response_body {bytes}"));
            BodyFlow::Continue
        }

        fn log(&mut self, env: &Env<'_>) {
            let _ = env.set_state("trace", format!("{}.log", self.name).as_bytes());
        }
    }

    struct Module;

    impl Registry for Module {
        fn filters() -> &'static [Entry] {
            FILTERS
        }
    }

    static FILTERS: &[Entry] = &[
        filter_entry::<Probe<A>>(),
        filter_entry::<Probe<B>>(),
        filter_entry::<Probe<C>>(),
        entry::<Module>(),
    ];

    fn stages(stages: Value, allow_hold: bool) -> MockEnvoy {
        let config = serde_json::json!({ "stages": stages }).to_string();
        match MockEnvoy::start(FILTERS, ROOT_ID, &config, allow_hold) {
            Ok(envoy) => envoy,
            Err(lines) => panic!("refused: {lines:?}"),
        }
    }

    /// The callbacks the probes got, in order, forgetting them.
    fn trace(s: &MockStream) -> Vec<String> {
        s.host()
            .take_mutations()
            .into_iter()
            .filter_map(|m| match m {
                Mutation::SetProperty(path, value) if path == ["trace"] => {
                    Some(String::from_utf8_lossy(&value).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    const POST: &[(&str, &str)] = &[(":method", "POST"), (":path", "/p"), ("x-in", "1")];

    #[test]
    fn each_stage_sees_the_header_writes_of_the_stages_before_it_without_a_host_call() {
        let envoy = stages(
            serde_json::json!([
                {"filter": "portico-a", "config": {"copy": "x-in"}},
                {"filter": "portico-b", "config": {"copy": "x-a"}},
                {"filter": "portico-c", "config": {"copy": "x-b"}},
            ]),
            false,
        );
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(POST, true), Action::Continue);
        assert_eq!(
            s.host()
                .headers(Map::RequestHeaders)
                .into_iter()
                .filter(|(n, _)| n.starts_with("x-"))
                .collect::<Vec<_>>(),
            vec![
                ("x-in".to_owned(), "1".to_owned()),
                ("x-a".to_owned(), "1".to_owned()),
                ("x-b".to_owned(), "1".to_owned()),
                ("x-c".to_owned(), "1".to_owned()),
            ]
        );
        // One read (x-in), three writes, three trace states: x-a and x-b came from the cache.
        assert_eq!(s.counts().request_headers, 7, "{}", s.counts());
    }

    #[test]
    fn a_reply_stops_the_later_stages_and_the_response_runs_only_the_replier_and_those_before() {
        let envoy = stages(
            serde_json::json!([
                {"filter": "portico-a", "config": {}},
                {"filter": "portico-b", "config": {"refuse": true}},
                {"filter": "portico-c", "config": {}},
            ]),
            false,
        );
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(POST, true), Action::Pause);
        let reply = s.host().reply();
        assert_eq!(reply.as_ref().map(|r| r.status), Some(403));
        assert_eq!(
            reply.map(|r| r.details),
            Some("portico-b.probe_refused".into()),
            "the details name the stage's own filter, as its own entry would"
        );
        assert_eq!(trace(&s), vec!["a.request_headers", "b.request_headers"]);
        assert_eq!(s.response_headers(&[(":status", "403")], false), Action::Continue);
        assert_eq!(s.response_body(b"{}", true), Action::Continue);
        assert_eq!(
            trace(&s),
            vec![
                "b.response_headers",
                "a.response_headers",
                "b.response_body {}",
                "a.response_body {}",
            ]
        );
        s.log();
        assert_eq!(trace(&s), vec!["a.log", "b.log", "c.log"], "every stage logs");
    }

    #[test]
    fn the_response_runs_the_stages_in_reverse() {
        let envoy = stages(
            serde_json::json!([
                {"filter": "portico-a", "config": {}},
                {"filter": "portico-b", "config": {}},
                {"filter": "portico-c", "config": {}},
            ]),
            false,
        );
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(POST, false), Action::Continue);
        assert_eq!(s.request_body(b"hi", true), Action::Continue);
        assert_eq!(s.response_headers(&[(":status", "200")], false), Action::Continue);
        assert_eq!(s.response_body(b"ok", true), Action::Continue);
        assert_eq!(
            trace(&s),
            vec![
                "a.request_headers",
                "b.request_headers",
                "c.request_headers",
                "a.request_body hi",
                "b.request_body hi",
                "c.request_body hi",
                "c.response_headers",
                "b.response_headers",
                "a.response_headers",
                "c.response_body ok",
                "b.response_body ok",
                "a.response_body ok",
            ]
        );
    }

    #[test]
    fn a_hold_keeps_the_headers_from_the_later_stages_until_the_body_lets_them_go() {
        let envoy = stages(
            serde_json::json!([
                {"filter": "portico-a", "config": {"hold": true, "buffer": true, "allow_on_headers_stop_iteration": true}},
                {"filter": "portico-b", "config": {"copy": "x-in"}},
            ]),
            true,
        );
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(POST, false), Action::Pause);
        assert_eq!(trace(&s), vec!["a.request_headers"]);
        assert_eq!(s.request_body(b"ab", false), Action::Pause, "a buffers");
        assert_eq!(trace(&s), vec!["a.request_body ab held"]);
        assert_eq!(s.request_body(b"abcd", true), Action::Continue);
        assert_eq!(
            trace(&s),
            vec!["a.request_body abcd held", "b.request_headers", "b.request_body abcd",],
            "b gets the headers, then the whole body a let go"
        );
        assert!(s
            .host()
            .headers(Map::RequestHeaders)
            .contains(&("x-b".to_owned(), "1".to_owned())));
    }

    #[test]
    fn a_hold_the_stage_does_not_declare_continues() {
        let envoy = stages(
            serde_json::json!([
                {"filter": "portico-a", "config": {"hold": true}},
                {"filter": "portico-b", "config": {}},
            ]),
            true,
        );
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(POST, false), Action::Continue);
        assert_eq!(trace(&s), vec!["a.request_headers", "b.request_headers"]);
    }

    #[test]
    fn a_stage_ahead_of_one_that_buffers_sees_each_part_once_and_its_rewrites_stay() {
        let envoy = stages(
            serde_json::json!([
                {"filter": "portico-a", "config": {"upper": true}},
                {"filter": "portico-b", "config": {"buffer": true}},
                {"filter": "portico-c", "config": {}},
            ]),
            false,
        );
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(POST, false), Action::Continue);
        assert_eq!(s.request_body(b"ab", false), Action::Pause);
        // Envoy gives the entry everything it buffered so far.
        let so_far = s.host().body(Buffer::RequestBody);
        assert_eq!(so_far, b"AB");
        assert_eq!(s.request_body(b"ABcd", true), Action::Continue);
        assert_eq!(s.host().body(Buffer::RequestBody), b"ABCD");
        assert_eq!(
            trace(&s),
            vec![
                "a.request_headers",
                "b.request_headers",
                "c.request_headers",
                "a.request_body ab",
                "b.request_body AB",
                "a.request_body cd",
                "b.request_body ABCD",
                "c.request_body ABCD",
            ]
        );
    }

    #[test]
    fn configuration_errors_carry_the_stage_path() {
        let refused = |config: Value| {
            MockEnvoy::start(FILTERS, ROOT_ID, &config.to_string(), false)
                .err()
                .unwrap_or_default()
        };
        assert_eq!(
            refused(serde_json::json!({"stages": [
                {"filter": "portico-a", "config": {"refuse": "yes"}},
                {"filter": "portico-b", "config": {"allow_on_headers_stop_iteration": 1, "extra": 1}},
                {"filter": "portico-nope", "config": {}},
                {"filter": "portico-stages", "config": {}},
                {"filter": "portico-c"},
                {"filter": "portico-c", "config": [], "more": 1},
            ], "other": 1})),
            vec![
                "portico-stages: invalid configuration: $.other: unknown field",
                r#"portico-stages: invalid configuration: $.stages[2].filter: "portico-nope" names no filter of this module (known: portico-a, portico-b, portico-c)"#,
                "portico-stages: invalid configuration: $.stages[3].filter: a stage cannot be another stages entry",
                "portico-stages: invalid configuration: $.stages[4].config: required field is missing",
                "portico-stages: invalid configuration: $.stages[5].config: expected an object",
                "portico-stages: invalid configuration: $.stages[5].more: unknown field",
                "portico-stages: invalid configuration: $.stages[0].config.refuse: expected true or false",
                "portico-stages: invalid configuration: $.stages[1].config.allow_on_headers_stop_iteration: expected true or false",
                "portico-stages: invalid configuration: $.stages[1].config.extra: unknown field",
            ]
        );
        assert_eq!(
            refused(serde_json::json!({"stages": []})),
            vec!["portico-stages: invalid configuration: $.stages: expected at least one stage"]
        );
        let stages = FILTERS
            .last()
            .map(|e| e.check(br#"{"stages": [{"filter": "portico-a", "config": {"x": 1}}]}"#));
        assert_eq!(
            stages.map(|r| r.map_err(|e| e.to_string())),
            Some(Err("$.stages[0].config.x: unknown field".to_owned()))
        );
    }

    #[test]
    fn each_stage_ticks_at_its_own_period_and_gets_the_answers_to_its_own_calls() {
        let mut envoy = stages(
            serde_json::json!([
                {"filter": "portico-a", "config": {"tick_ms": 1000}},
                {"filter": "portico-b", "config": {}},
                {"filter": "portico-c", "config": {"tick_ms": 3000}},
            ]),
            false,
        );
        assert_eq!(
            envoy.host().take_mutations(),
            vec![Mutation::TickPeriod(Duration::from_secs(1))],
            "the entry ticks at the shortest period"
        );
        let calls = |envoy: &MockEnvoy| -> Vec<String> {
            envoy
                .host()
                .take_mutations()
                .into_iter()
                .filter_map(|m| match m {
                    Mutation::HttpCall { cluster, .. } => Some(cluster),
                    _ => None,
                })
                .collect()
        };
        let mut seen = Vec::new();
        for _ in 0..4 {
            envoy.tick();
            seen.push(calls(&envoy));
            envoy.host().advance(Duration::from_secs(1));
        }
        assert_eq!(seen, vec![vec!["a", "c"], vec!["a"], vec!["a"], vec!["a", "c"]]);
        // Tokens 1 (a) and 2 (c) came first; 6 was c's last.
        envoy.http_call_response(2, Some((200, b"")));
        envoy.http_call_response(6, Some((200, b"")));
        envoy.http_call_response(6, Some((200, b"")));
        envoy.http_call_response(1, None);
        assert_eq!(envoy.host().metric("c_answers"), Some(2), "each answer once");
        assert_eq!(envoy.host().metric("a_answers"), Some(1));
        assert_eq!(envoy.host().metric("b_answers"), Some(0));
    }
}
