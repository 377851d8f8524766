//! The generic root: one per plugin entry. It reads the entry's `root_id` (the
//! `plugin_root_id` property), becomes the filter of that name from the module's registry,
//! and configures it. Every plugin entry of a module can share one `vm_id`: each entry has its
//! own root context and configuration in the VM.
//!
//! The plugin configuration is the filter's JSON document plus the host's own fields, which
//! are taken out before the filter reads it:
//!
//! | field | meaning |
//! | --- | --- |
//! | `allow_on_headers_stop_iteration` | `true` when the plugin entry sets Envoy's field of that name: only then may the filter hold headers while it reads the body ([`crate::HeadersFlow::Hold`]). Envoy does not tell the module, and a hold without Envoy's field hangs the request, so the two must agree. |
//!
//! `create_http_context` always answers a context: when the filter could not start, one that
//! refuses every request with 503 `filter_unavailable` (failing closed: a filter such as auth
//! must never be skipped silently). Envoy does not create streams on a plugin whose
//! `on_configure` failed, so this only keeps the SDK's dispatcher from panicking.

use std::rc::Rc;

use portico_core::config::{parse_json, Errors, Node};
use portico_core::refusal::RefusalLog as RefusalPolicy;
use portico_core::response::{ClientApi, ErrorResponse, ErrorType};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use serde_json::Value;

use crate::callout::{CallResponse, GrpcAnswer};
use crate::effects::Effects;
use crate::filter::{Filter, HeadersFlow, HttpFilter, RootHost};
use crate::headers::RequestHeaders;
use crate::host::{Buffer, Host};
use crate::stream::{Callbacks, RefusalLog, SdkStream, Stream};

/// The host's fields of a plugin configuration (see the module docs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Common {
    pub allow_on_headers_stop_iteration: bool,
}

const ALLOW_HOLD: &str = "allow_on_headers_stop_iteration";

/// Splits plugin configuration bytes into the host's fields and the filter's document,
/// recording every problem with its JSON path.
pub fn split_config(bytes: &[u8], errors: &mut Errors) -> Option<(Common, Value)> {
    let mut value = match parse_json(bytes) {
        Ok(value) => value,
        Err(e) => {
            for error in e.list() {
                errors.push(&error.path, error.message.clone());
            }
            return None;
        }
    };
    let common = take_common(&mut value, "$", errors);
    Some((common, value))
}

/// Takes the host's fields out of the configuration document `value` found at JSON path `at`.
pub(crate) fn take_common(value: &mut Value, at: &str, errors: &mut Errors) -> Common {
    let mut common = Common::default();
    if let Some(raw) = value.as_object_mut().and_then(|map| map.remove(ALLOW_HOLD)) {
        if let Some(allow) = Node::new(format!("{at}.{ALLOW_HOLD}"), &raw).bool(errors) {
            common.allow_on_headers_stop_iteration = allow;
        }
    }
    common
}

// === Registry ===

/// Reads a filter's configuration and starts it.
pub(crate) type Start = fn(&Value, &mut RootHost<'_>) -> Result<Box<dyn Plugin>, Refusal>;

/// One filter a module holds, found by its `root_id`.
pub struct Entry {
    root_id: &'static str,
    start: Start,
    check: fn(&Value) -> Result<(), Errors>,
}

/// The registry entry of filter `F`.
pub const fn entry<F: Filter>() -> Entry {
    Entry {
        root_id: F::ROOT_ID,
        start: start::<F>,
        check: check::<F>,
    }
}

impl Entry {
    /// An entry that is not one [`Filter`] ([`crate::stages`]).
    pub(crate) const fn custom(root_id: &'static str, start: Start, check: fn(&Value) -> Result<(), Errors>) -> Self {
        Self { root_id, start, check }
    }

    /// Reads the filter's document (host fields taken out) and starts it.
    pub(crate) fn start(&self, value: &Value, root: &mut RootHost<'_>) -> Result<Box<dyn Plugin>, Refusal> {
        (self.start)(value, root)
    }

    /// Checks the filter's document (host fields taken out).
    pub(crate) fn check_value(&self, value: &Value) -> Result<(), Errors> {
        (self.check)(value)
    }

    pub fn root_id(&self) -> &'static str {
        self.root_id
    }

    /// Checks plugin configuration bytes as the filter's `on_configure` would, without a host
    /// (`portico check`).
    pub fn check(&self, bytes: &[u8]) -> Result<(), Errors> {
        let mut errors = Errors::default();
        if let Some((_, value)) = split_config(bytes, &mut errors) {
            if let Err(e) = (self.check)(&value) {
                for error in e.list() {
                    errors.push(&error.path, error.message.clone());
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("root_id", &self.root_id).finish()
    }
}

fn check<F: Filter>(value: &Value) -> Result<(), Errors> {
    F::configure(value).map(drop)
}

/// Why a filter did not start.
pub(crate) enum Refusal {
    Config(Errors),
    Start(String),
}

fn start<F: Filter>(value: &Value, root: &mut RootHost<'_>) -> Result<Box<dyn Plugin>, Refusal> {
    let config = F::configure(value).map_err(Refusal::Config)?;
    let filter = F::new(Rc::new(config), root).map_err(Refusal::Start)?;
    Ok(Box::new(filter))
}

/// A started filter, as the root drives it.
pub(crate) trait Plugin {
    fn stream(&self, host: Rc<dyn Host>, allow_hold: bool, refusals: Rc<RefusalLog>) -> Box<dyn Callbacks>;
    /// The per-request part alone, for a stage ([`crate::stages`]).
    fn http(&self) -> Box<dyn HttpFilter>;
    fn refusal_log(&self) -> RefusalPolicy;
    fn tick(&mut self, root: &mut RootHost<'_>);
    fn http_call_response(&mut self, root: &mut RootHost<'_>, token: u32, response: &CallResponse<'_>);
    fn grpc_call_response(&mut self, root: &mut RootHost<'_>, token: u32, answer: &GrpcAnswer<'_>);
}

impl<F: Filter> Plugin for F {
    fn stream(&self, host: Rc<dyn Host>, allow_hold: bool, refusals: Rc<RefusalLog>) -> Box<dyn Callbacks> {
        Box::new(Stream::new(self.http(), host, F::ROOT_ID, allow_hold, refusals))
    }

    fn http(&self) -> Box<dyn HttpFilter> {
        Box::new(Filter::http(self))
    }

    fn refusal_log(&self) -> RefusalPolicy {
        Filter::refusal_log(self)
    }

    fn tick(&mut self, root: &mut RootHost<'_>) {
        self.on_tick(root);
    }

    fn http_call_response(&mut self, root: &mut RootHost<'_>, token: u32, response: &CallResponse<'_>) {
        self.on_http_call_response(root, token, response);
    }

    fn grpc_call_response(&mut self, root: &mut RootHost<'_>, token: u32, answer: &GrpcAnswer<'_>) {
        self.on_grpc_call_response(root, token, answer);
    }
}

/// The entry a plugin's `root_id` names. A module built with one filter alone (`auth.wasm`)
/// also runs it for an empty `root_id`, so it stays a drop-in for a config or an Istio
/// `WasmPlugin` that names no `pluginName`; a module of several filters needs the name.
fn pick<'r>(registry: &'r [Entry], root_id: &str) -> Result<&'r Entry, String> {
    if let Some(entry) = registry.iter().find(|e| e.root_id == root_id) {
        return Ok(entry);
    }
    let known: Vec<&str> = registry.iter().map(|e| e.root_id).collect();
    match (root_id, registry) {
        ("", [only]) => Ok(only),
        ("", _) => Err(format!(
            "no root_id: this module holds several filters, so each plugin entry names one with \
             root_id (an Istio WasmPlugin with pluginName): {}",
            known.join(", ")
        )),
        _ => Err(format!(
            "root_id {root_id:?} names no filter of this module (known: {})",
            known.join(", ")
        )),
    }
}

// === impl Root ===

enum State {
    /// Before `on_configure`, or after it failed.
    Stopped,
    Running {
        root_id: &'static str,
        plugin: Box<dyn Plugin>,
        allow_hold: bool,
    },
}

/// The root context of one plugin entry.
pub struct Root {
    registry: &'static [Entry],
    host: Rc<dyn Host>,
    state: State,
    refusals: Rc<RefusalLog>,
}

impl Root {
    pub fn new(registry: &'static [Entry], host: Rc<dyn Host>) -> Self {
        Self {
            registry,
            host,
            state: State::Stopped,
            refusals: Rc::default(),
        }
    }

    /// Becomes the filter named by `plugin_root_id` with the plugin configuration; on failure,
    /// the lines to log (each configuration error with its JSON path).
    pub(crate) fn configure(&mut self, size: usize) -> Result<(), Vec<String>> {
        self.state = State::Stopped;
        self.refusals = Rc::default();
        let root_id = match self.host.property(&["plugin_root_id"]) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => String::new(),
            Err(e) => return Err(vec![format!("cannot read plugin_root_id: host status {}", e.0)]),
        };
        let entry = pick(self.registry, &root_id).map_err(|line| vec![line])?;
        let name = entry.root_id;
        let bytes = match self.host.buffer(Buffer::PluginConfiguration, 0, size) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(e) => {
                return Err(vec![format!(
                    "{name}: cannot read the plugin configuration: host status {}",
                    e.0
                )])
            }
        };
        let invalid = |errors: &Errors| -> Vec<String> {
            errors
                .list()
                .iter()
                .map(|e| format!("{name}: invalid configuration: {e}"))
                .collect()
        };
        let mut errors = Errors::default();
        let Some((common, value)) = split_config(&bytes, &mut errors) else {
            return Err(invalid(&errors));
        };
        if !errors.is_empty() {
            // Report the filter's own errors in the same pass, without starting it.
            if let Err(e) = (entry.check)(&value) {
                for error in e.list() {
                    errors.push(&error.path, error.message.clone());
                }
            }
            return Err(invalid(&errors));
        }
        let mut root = RootHost::new(&*self.host, name);
        match (entry.start)(&value, &mut root) {
            Ok(plugin) => {
                self.refusals = Rc::new(RefusalLog::new(name, plugin.refusal_log()));
                self.state = State::Running {
                    root_id: name,
                    plugin,
                    allow_hold: common.allow_on_headers_stop_iteration,
                };
                Ok(())
            }
            Err(Refusal::Config(errors)) => Err(invalid(&errors)),
            Err(Refusal::Start(message)) => Err(vec![format!("{name}: cannot start: {message}")]),
        }
    }

    /// A new request: the filter's stream, or one that refuses when the filter did not start.
    pub(crate) fn stream(&self) -> Box<dyn Callbacks> {
        let host = Rc::clone(&self.host);
        let refusals = Rc::clone(&self.refusals);
        match &self.state {
            State::Running { plugin, allow_hold, .. } => plugin.stream(host, *allow_hold, refusals),
            State::Stopped => Box::new(Stream::new(Unavailable, host, "portico", false, refusals)),
        }
    }

    fn with_plugin(&mut self, run: impl FnOnce(&mut dyn Plugin, &mut RootHost<'_>)) {
        if let State::Running { root_id, plugin, .. } = &mut self.state {
            let mut root = RootHost::new(&*self.host, root_id);
            run(plugin.as_mut(), &mut root);
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let host = Rc::clone(&self.host);
        self.with_plugin(|plugin, root| {
            let response = CallResponse::new(&*host, body_size);
            plugin.http_call_response(root, token, &response);
        });
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let host = Rc::clone(&self.host);
        self.with_plugin(|plugin, root| {
            let answer = GrpcAnswer::new(&*host, status, size);
            plugin.grpc_call_response(root, token, &answer);
        });
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        crate::log::follow_host_level();
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        match self.configure(size) {
            Ok(()) => true,
            Err(lines) => {
                for line in lines {
                    log::error!("{line}");
                }
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.with_plugin(|plugin, root| plugin.tick(root));
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SdkStream(self.stream())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The context of a filter that did not start: refuses every request.
struct Unavailable;

impl HttpFilter for Unavailable {
    fn request_headers(&mut self, request: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        fx.refuse(
            &ErrorResponse::new(
                503,
                ErrorType::Api,
                "filter_unavailable",
                "a gateway filter is not configured",
            ),
            ClientApi::of_path(request.path()),
        );
        HeadersFlow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use portico_core::config::read_value;

    use crate::host::HttpCall;
    use crate::metrics::Counter;
    use crate::mock::{Action, MockEnvoy, Mutation};

    /// A filter with a configuration to get wrong, a start that can fail, and root-level work.
    struct Probe {
        jwks: Counter,
        pending: Option<u32>,
    }

    struct ProbeHttp;

    impl HttpFilter for ProbeHttp {}

    impl Filter for Probe {
        const ROOT_ID: &'static str = "portico-probe";
        type Config = u64;
        type Http = ProbeHttp;

        fn configure(config: &Value) -> Result<u64, Errors> {
            read_value(config, |mut root, errors| {
                let n = root.req("n", errors).and_then(|n| n.u64(errors));
                root.finish(errors);
                n
            })
            .and_then(|n| n.ok_or_else(Errors::default))
        }

        fn new(config: Rc<u64>, root: &mut RootHost<'_>) -> Result<Self, String> {
            if *config == 0 {
                return Err("n must not be zero at start".to_owned());
            }
            root.set_tick_period(Duration::from_secs(1))
                .map_err(|e| e.0.to_string())?;
            Ok(Self {
                jwks: Counter::define(&root.env(), "probe_answers"),
                pending: None,
            })
        }

        fn http(&self) -> ProbeHttp {
            ProbeHttp
        }

        fn on_tick(&mut self, root: &mut RootHost<'_>) {
            let call = HttpCall {
                cluster: "jwks",
                headers: &[(":method", "GET"), (":path", "/keys"), (":authority", "jwks")],
                body: None,
                timeout: Duration::from_secs(1),
            };
            self.pending = root.dispatch_http_call(&call).ok();
        }

        fn on_http_call_response(&mut self, root: &mut RootHost<'_>, token: u32, response: &CallResponse<'_>) {
            if self.pending == Some(token) && response.status() == Some(200) && response.body() == b"keys" {
                self.jwks.add(&root.env(), 1);
            }
        }
    }

    static REGISTRY: &[Entry] = &[entry::<Probe>()];

    #[test]
    fn every_configuration_error_is_reported_with_its_path_in_one_pass() {
        let lines = MockEnvoy::start(
            REGISTRY,
            "portico-probe",
            r#"{"allow_on_headers_stop_iteration": "yes", "n": -1, "extra": 1}"#,
            true,
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            lines,
            vec![
                "portico-probe: invalid configuration: $.allow_on_headers_stop_iteration: expected true or false",
                "portico-probe: invalid configuration: $.n: expected a non-negative integer",
                "portico-probe: invalid configuration: $.extra: unknown field",
            ]
        );
    }

    #[test]
    fn unknown_root_ids_bad_json_and_failed_starts_are_refused() {
        let refused = |root_id: &str, config: &str| MockEnvoy::start(REGISTRY, root_id, config, false).err();
        assert_eq!(
            refused("portico-nope", "{}"),
            Some(vec![
                r#"root_id "portico-nope" names no filter of this module (known: portico-probe)"#.to_owned()
            ])
        );
        // One filter alone runs without a root_id; several need it named.
        assert_eq!(refused("", r#"{"n": 1}"#), None);
        let two: &[Entry] = &[entry::<Probe>(), entry::<Probe>()];
        assert_eq!(
            pick(two, "").err().as_deref(),
            Some(
                "no root_id: this module holds several filters, so each plugin entry names one with \
                 root_id (an Istio WasmPlugin with pluginName): portico-probe, portico-probe"
            )
        );
        assert_eq!(pick(two, "portico-probe").map(Entry::root_id), Ok("portico-probe"));
        let syntax = refused("portico-probe", "{").unwrap_or_default();
        assert!(
            syntax
                .first()
                .is_some_and(|l| l.starts_with("portico-probe: invalid configuration: $: not valid JSON")),
            "{syntax:?}"
        );
        assert_eq!(
            refused("portico-probe", r#"{"n": 0}"#),
            Some(vec![
                "portico-probe: cannot start: n must not be zero at start".to_owned()
            ])
        );
    }

    #[test]
    fn check_reads_configurations_like_the_root_without_a_host() {
        let probe = REGISTRY.first().unwrap();
        assert_eq!(
            probe.check(br#"{"n": 3, "allow_on_headers_stop_iteration": true}"#),
            Ok(())
        );
        assert_eq!(
            probe
                .check(br#"{"allow_on_headers_stop_iteration": 1}"#)
                .map_err(|e| e.to_string()),
            Err("$.allow_on_headers_stop_iteration: expected true or false; $.n: required field is missing".to_owned())
        );
    }

    #[test]
    fn a_root_that_did_not_start_refuses_requests_instead_of_skipping_the_filter() {
        let host = crate::mock::MockHost::new();
        let root = Root::new(REGISTRY, Rc::new(host.clone()));
        let mut s = crate::mock::MockStream::new(host.clone(), root.stream(), false);
        assert_eq!(s.request_headers(&[(":path", "/")], true), Action::Pause);
        let reply = host.reply().unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.details, "portico.filter_unavailable");
    }

    #[test]
    fn ticks_dispatch_calls_and_answers_reach_the_filter() {
        let mut envoy = MockEnvoy::start(REGISTRY, "portico-probe", r#"{"n": 1}"#, false).unwrap();
        assert_eq!(
            envoy.host().take_mutations(),
            vec![Mutation::TickPeriod(Duration::from_secs(1))]
        );
        envoy.tick();
        assert!(matches!(
            envoy.host().mutations().as_slice(),
            [Mutation::HttpCall { cluster, .. }] if cluster == "jwks"
        ));
        envoy.http_call_response(7, Some((200, b"keys")));
        assert_eq!(
            envoy.host().metric("probe_answers"),
            Some(0),
            "an unknown token is ignored"
        );
        envoy.http_call_response(1, None);
        assert_eq!(envoy.host().metric("probe_answers"), Some(0), "no answer: no status");
        envoy.http_call_response(1, Some((200, b"keys")));
        assert_eq!(envoy.host().metric("probe_answers"), Some(1));
    }

    /// Settles from its tick, as rate-limit settles a reservation after the stream is gone.
    struct Settler {
        settled: Counter,
        failed: Counter,
        pending: Vec<u32>,
    }

    impl Filter for Settler {
        const ROOT_ID: &'static str = "portico-settler";
        type Config = ();
        type Http = ProbeHttp;

        fn configure(_: &Value) -> Result<(), Errors> {
            Ok(())
        }

        fn new(_: Rc<()>, root: &mut RootHost<'_>) -> Result<Self, String> {
            Ok(Self {
                settled: Counter::define(&root.env(), "settled"),
                failed: Counter::define(&root.env(), "settle_failed"),
                pending: Vec::new(),
            })
        }

        fn http(&self) -> ProbeHttp {
            ProbeHttp
        }

        fn on_tick(&mut self, root: &mut RootHost<'_>) {
            let call = crate::host::GrpcCall {
                cluster: "state",
                service: "portico.state.v1.State",
                method: "Settle",
                message: b"r1",
                timeout: Duration::from_millis(50),
            };
            if let Ok(token) = root.dispatch_grpc_call(&call) {
                self.pending.push(token);
            }
        }

        fn on_grpc_call_response(&mut self, root: &mut RootHost<'_>, token: u32, answer: &GrpcAnswer<'_>) {
            if !self.pending.contains(&token) {
                return;
            }
            self.pending.retain(|t| *t != token);
            if answer.is_ok() && answer.message() == b"done" {
                self.settled.add(&root.env(), 1);
            } else {
                self.failed.add(&root.env(), 1);
            }
        }
    }

    static SETTLERS: &[Entry] = &[entry::<Settler>()];

    #[test]
    fn roots_dispatch_grpc_calls_and_get_their_answers_and_failures() {
        let mut envoy = MockEnvoy::start(SETTLERS, "portico-settler", "{}", false).unwrap();
        envoy.tick();
        envoy.tick();
        let calls = envoy.host().grpc_calls();
        assert_eq!(
            calls
                .iter()
                .map(|(_, m, msg)| (m.as_str(), msg.as_slice()))
                .collect::<Vec<_>>(),
            vec![("Settle", b"r1".as_slice()), ("Settle", b"r1".as_slice())]
        );
        let (first, second) = (calls.first().map_or(0, |c| c.0), calls.get(1).map_or(0, |c| c.0));
        envoy.grpc_call_response(99, 0, b"done");
        assert_eq!(envoy.host().metric("settled"), Some(0), "an unknown token is ignored");
        envoy.grpc_call_response(first, 0, b"done");
        envoy.grpc_call_response(second, crate::grpc_status::UNAVAILABLE, b"");
        assert_eq!(envoy.host().metric("settled"), Some(1));
        assert_eq!(envoy.host().metric("settle_failed"), Some(1));
        envoy.host().refuse_grpc_calls(Some(crate::abi::BAD_ARGUMENT));
        envoy.tick();
        assert_eq!(
            envoy.host().grpc_calls().len(),
            2,
            "a refused dispatch makes no call and does not panic"
        );
    }
}
