//! The cache on the host layer: the plugin entry `portico-cache` of `portico.wasm` (and
//! `cache.wasm`).
//!
//! The shell walks one request through the phase machine of [`crate::flow`]: it reads the
//! request headers once (route match and key parts), judges the whole body, looks the key up
//! in shared data and answers a hit with a local reply, marks the upstream's answer with its
//! verdict, records it, and stores it in the log phase when the client got it as sent.

use std::rc::Rc;

use portico_core::clock::unix_millis;
use portico_core::config::Errors;
use portico_core::contract::{header, root_id, state};
use portico_core::refusal::{RefusalLog, Refusals};
use portico_core::request::RequestSource;
use portico_host::effects::Name;
use portico_host::metrics::{Counter, Family, Gauge};
use portico_host::{
    Body, BodyFlow, Effects, Env, Filter, HeadersFlow, HttpFilter, LocalReply, RequestHeaders, ResponseHeaders,
    RootHost,
};
use serde_json::Value;

use crate::config::Config;
use crate::flow::{self, Fill, Label, NotStored, Pending, Phase, Record, Step};
use crate::store::{self, Stored};

const NAME: &str = root_id::CACHE;
/// Distinct label sets per metric before the rest count as `other`.
const MAX_SERIES: usize = 500;

// === Metrics ===

#[derive(Debug)]
struct Metrics {
    /// route, status (hit, miss, bypass).
    requests: Family,
    /// route, reason.
    bypasses: Family,
    /// route, outcome (stored, too_large, not_storable, invalid, no_room, failed).
    stores: Family,
    evictions: Counter,
    bytes: Gauge,
    entries: Gauge,
}

impl Metrics {
    fn define(env: &Env<'_>) -> Self {
        Self {
            requests: Family::counter("portico_cache_requests_total", MAX_SERIES),
            bypasses: Family::counter("portico_cache_bypass_total", MAX_SERIES),
            stores: Family::counter("portico_cache_stores_total", MAX_SERIES),
            evictions: Counter::define(env, "portico_cache_evictions_total"),
            bytes: Gauge::define(env, "portico_cache_bytes"),
            entries: Gauge::define(env, "portico_cache_entries"),
        }
    }
}

// === impl Cache ===

/// The cache in one VM: its configuration, metrics and log budget, shared by its requests.
pub struct Cache {
    shared: Rc<State>,
}

/// What every request of one plugin entry uses.
struct State {
    config: Rc<Config>,
    metrics: Metrics,
    /// The per-worker log budget every filter has (the defaults of `refusal_log`): the cache
    /// refuses nothing, but can log once per request.
    log: Refusals,
}

impl Filter for Cache {
    const ROOT_ID: &'static str = NAME;
    type Config = Config;
    type Http = CacheHttp;

    fn configure(config: &Value) -> Result<Config, Errors> {
        Config::from_value(config)
    }

    fn new(config: Rc<Config>, root: &mut RootHost<'_>) -> Result<Self, String> {
        Ok(Self {
            shared: Rc::new(State {
                config,
                metrics: Metrics::define(&root.env()),
                log: Refusals::new(NAME, RefusalLog::default()),
            }),
        })
    }

    fn http(&self) -> CacheHttp {
        CacheHttp {
            shared: Rc::clone(&self.shared),
            phase: Phase::Off,
        }
    }
}

// === impl CacheHttp ===

/// One request through the cache.
pub struct CacheHttp {
    shared: Rc<State>,
    phase: Phase,
}

impl State {
    fn rule_name(&self, index: usize) -> &str {
        self.config.routes.get(index).map_or("unknown", |r| r.name.as_str())
    }

    /// Counts a request's verdict and leaves it in filter state for the access log.
    fn count(&self, env: &Env<'_>, fx: &mut Effects, rule: usize, label: Label) {
        self.metrics
            .requests
            .add(env, &[("route", self.rule_name(rule)), ("status", label.status())], 1);
        fx.set_state(state::CACHE, label.as_str());
    }

    /// Counts an upstream answer that is not stored, and says why in the log (within budget).
    fn not_stored(&self, env: &Env<'_>, rule: usize, why: NotStored) {
        let route = self.rule_name(rule);
        if let Some(reason) = why.reason() {
            self.log.note(
                env.now(),
                log::Level::Info,
                format_args!("not storing the answer for route {route}: {reason}"),
            );
        }
        self.metrics
            .stores
            .add(env, &[("route", route), ("outcome", why.outcome())], 1);
    }
}

impl CacheHttp {
    /// Goes upstream without a lookup; `store` keeps the fresh answer (client `no-cache`).
    fn bypass(&mut self, env: &Env<'_>, fx: &mut Effects, rule: usize, reason: &'static str, store: Option<Fill>) {
        self.shared.count(env, fx, rule, Label::Bypass);
        self.shared
            .metrics
            .bypasses
            .add(env, &[("route", self.shared.rule_name(rule)), ("reason", reason)], 1);
        self.phase = Phase::upstream(Label::Bypass, store);
    }

    /// Decides on the complete request body: a hit is answered with a local reply in `fx`.
    fn decide(&mut self, env: &Env<'_>, fx: &mut Effects, pending: &Pending, body: &[u8]) {
        let shared = Rc::clone(&self.shared);
        let fill = match flow::judge(&shared.config, pending, body) {
            None => {
                self.phase = Phase::Off;
                return;
            }
            Some(Step::Bypass { reason, store }) => return self.bypass(env, fx, pending.rule, reason, store),
            Some(Step::Lookup(fill)) => fill,
        };
        let now = unix_millis(env.now());
        match store::lookup(&env.shared(), &shared.config.limits, &fill.key, now) {
            Some(entry) => {
                shared.count(env, fx, pending.rule, Label::Hit);
                fx.respond(LocalReply {
                    status: 200,
                    headers: flow::hit_headers(&entry, now)
                        .into_iter()
                        .map(|(n, v)| (Name::Owned(n), v))
                        .collect(),
                    body: entry.body,
                    // No details, as the SDK shell's reply had: a hit is logged like an
                    // upstream answer's replay, not as a refusal.
                    details: Name::Borrowed(""),
                    code: None,
                    context: None,
                });
                self.phase = Phase::Hit;
            }
            None => {
                shared.count(env, fx, pending.rule, Label::Miss);
                self.phase = Phase::upstream(Label::Miss, Some(fill));
            }
        }
    }

    /// The end of a recorded answer: ready to store when the request ends, or not stored.
    fn finish_record(&mut self, env: &Env<'_>, record: Record) {
        let rule = record.fill.rule;
        let (phase, why) = Phase::on_answer_end(record);
        self.phase = phase;
        if let Some(why) = why {
            self.shared.not_stored(env, rule, why);
        }
    }
}

impl HttpFilter for CacheHttp {
    fn request_headers(&mut self, headers: &RequestHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        // Route matching reads `:path`, and `:method` or `:authority` only for rules that name
        // them: a request on a route this filter does not cache costs nothing more.
        let request: &dyn RequestSource = headers;
        let config = &self.shared.config;
        let Some(matched) = config.routes.find(request) else {
            return HeadersFlow::Continue;
        };
        // The key and the policy read about eight headers: one read of the whole map.
        let _ = headers.all();
        let pending = Pending::for_rule(config, matched.index, matched.rule, request);
        if flow::strips_accept_encoding(request) {
            fx.remove_request_header("accept-encoding");
        }
        if headers.end_of_stream() {
            self.decide(&headers.env(), fx, &pending, b"");
        } else {
            self.phase = Phase::Collect(Box::new(pending));
        }
        HeadersFlow::Continue
    }

    fn request_body(&mut self, body: &Body<'_>, _held: Option<&RequestHeaders<'_>>, fx: &mut Effects) -> BodyFlow {
        let Phase::Collect(pending) = &self.phase else {
            return BodyFlow::Continue;
        };
        let env = body.env();
        if flow::body_too_large(&self.shared.config, body.len()) {
            let rule = pending.rule;
            self.bypass(&env, fx, rule, "body_too_large", None);
            return BodyFlow::Continue;
        }
        if !body.end_of_stream() {
            // Hold the body until it is complete (json_to_metadata in front already buffered it).
            return BodyFlow::Buffer;
        }
        let Phase::Collect(pending) = std::mem::take(&mut self.phase) else {
            return BodyFlow::Continue;
        };
        // A hit's reply pauses the stream: the upstream never receives the rest of the request.
        self.decide(&env, fx, &pending, body.bytes());
        BodyFlow::Continue
    }

    fn response_headers(&mut self, response: &ResponseHeaders<'_>, fx: &mut Effects) -> HeadersFlow {
        match std::mem::take(&mut self.phase) {
            Phase::Upstream { label, store } => {
                let rule = store.map(|fill| fill.rule);
                // The whole map only when the answer may be stored (its headers are kept).
                let headers: &[(String, Vec<u8>)] = if store.is_some() { response.all() } else { &[] };
                let (phase, why) = Phase::on_upstream_headers(store, headers);
                self.phase = phase;
                if let (Some(rule), Some(why)) = (rule, why) {
                    self.shared.not_stored(&response.env(), rule, why);
                }
                fx.set_response_header(header::CACHE, label.as_str());
                if response.end_of_stream() {
                    if let Phase::Record(record) = std::mem::take(&mut self.phase) {
                        self.finish_record(&response.env(), *record);
                    }
                }
            }
            Phase::Hit => self.phase = Phase::Hit,
            // Only this filter says whether an answer came from the cache: an upstream that
            // claims a hit could otherwise dodge the token charge. Removing an absent header
            // costs one host call, as reading it would.
            _ => fx.remove_response_header(header::CACHE),
        }
        HeadersFlow::Continue
    }

    fn response_body(&mut self, body: &Body<'_>, _held: Option<&ResponseHeaders<'_>>, _fx: &mut Effects) -> BodyFlow {
        let Phase::Record(record) = &mut self.phase else {
            return BodyFlow::Continue;
        };
        if record.wants(body.len(), self.shared.config.limits.max_entry_bytes) {
            record.push(body.bytes());
        }
        if body.end_of_stream() {
            if let Phase::Record(record) = std::mem::take(&mut self.phase) {
                self.finish_record(&body.env(), *record);
            }
        }
        BodyFlow::Continue
    }

    fn log(&mut self, env: &Env<'_>) {
        let Phase::Ready(ready) = std::mem::take(&mut self.phase) else {
            return;
        };
        let shared = &self.shared;
        let rule = ready.fill.rule;
        let key = ready.fill.key;
        let sent = property(env, &["response", "code"]);
        let refused = property(env, &[state::BAD_UPSTREAM]).is_some();
        let now = unix_millis(env.now());
        let ttl = shared.config.routes.get(rule).map_or(0, |r| r.ttl_seconds);
        let entry = match ready.settle(sent.as_deref(), refused, now, ttl) {
            Ok(entry) => entry,
            Err(why) => return shared.not_stored(env, rule, why),
        };
        let route = shared.rule_name(rule);
        let store = env.shared();
        let outcome = match store::insert(&store, &shared.config.limits, &key, &entry.encode(), now) {
            Stored::Stored { evicted } => {
                if evicted > 0 {
                    shared.metrics.evictions.add(env, u64::from(evicted));
                }
                "stored"
            }
            Stored::TooLarge => "too_large",
            Stored::NoRoom => "no_room",
            Stored::Failed => {
                shared.log.warn(
                    env.now(),
                    format_args!("shared data refused a cache entry for route {route}"),
                );
                "failed"
            }
        };
        shared
            .metrics
            .stores
            .add(env, &[("route", route), ("outcome", outcome)], 1);
        let usage = store::usage(&store);
        shared.metrics.bytes.set(env, usage.bytes);
        shared.metrics.entries.set(env, usage.entries);
    }
}

/// A property's value; a host error reads as absent (logged).
fn property(env: &Env<'_>, path: &[&str]) -> Option<Vec<u8>> {
    env.property(path).unwrap_or_else(|e| {
        log::warn!("{NAME}: reading property {path:?} failed: host status {}", e.0);
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use portico_host::host::Map;
    use portico_host::mock::{Action, MockEnvoy, MockStream, Mutation};
    use portico_host::{entry, Entry};
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    static REGISTRY: &[Entry] = &[entry::<Cache>()];

    const NOW: u64 = 1_700_000_000;
    const BODY: &str = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"2+2?"}]}"#;
    const ANSWER: &str = r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"4"}}]}"#;

    fn start(config: serde_json::Value) -> MockEnvoy {
        let envoy = MockEnvoy::start(REGISTRY, NAME, &config.to_string(), false).unwrap_or_else(|e| panic!("{e:?}"));
        envoy.host().set_now(UNIX_EPOCH + Duration::from_secs(NOW));
        envoy
    }

    fn chat_cache() -> MockEnvoy {
        start(json!({
            "max_entries": 8,
            "max_entry_bytes": 1024,
            "max_body_bytes": 512,
            "routes": [{"name": "chat", "match": {"path": "/v1/chat/completions"}, "ttl_seconds": 60}]
        }))
    }

    const REQUEST: &[(&str, &str)] = &[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
        ("x-portico-consumer", "alice"),
        ("accept-encoding", "gzip"),
    ];

    const UPSTREAM_OK: &[(&str, &str)] = &[
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", "80"),
        ("x-upstream", "1"),
    ];

    /// The request up to its body; what the body callback answered.
    fn ask(envoy: &MockEnvoy, body: &str) -> (MockStream, Action) {
        let mut s = envoy.stream();
        assert_eq!(s.request_headers(REQUEST, false), Action::Continue);
        let action = s.request_body(body.as_bytes(), true);
        (s, action)
    }

    /// The upstream answers `headers` and `body`; the client gets `sent`; the log phase runs.
    fn answer(envoy: &MockEnvoy, s: &mut MockStream, headers: &[(&str, &str)], body: &str, sent: u64) {
        assert_eq!(s.response_headers(headers, false), Action::Continue);
        assert_eq!(s.response_body(body.as_bytes(), true), Action::Continue);
        envoy.host().put_property(&["response", "code"], &sent.to_le_bytes());
        s.log();
    }

    fn metric(envoy: &MockEnvoy, name: &str) -> Option<u64> {
        envoy.host().metric(name)
    }

    fn state_set(envoy: &MockEnvoy, value: &str) -> bool {
        envoy.host().mutations().contains(&Mutation::SetProperty(
            vec![state::CACHE.to_owned()],
            value.as_bytes().to_vec(),
        ))
    }

    #[test]
    fn a_miss_goes_upstream_and_its_answer_is_stored_then_replayed() {
        let envoy = chat_cache();
        let (mut s, action) = ask(&envoy, BODY);
        assert_eq!(action, Action::Continue, "a miss goes upstream");
        assert!(
            !envoy
                .host()
                .headers(Map::RequestHeaders)
                .iter()
                .any(|(n, _)| n == "accept-encoding"),
            "the upstream is asked for an uncompressed answer"
        );
        assert!(state_set(&envoy, "MISS"));
        answer(&envoy, &mut s, UPSTREAM_OK, ANSWER, 200);
        assert!(envoy
            .host()
            .headers(Map::ResponseHeaders)
            .contains(&("x-portico-cache".to_owned(), "MISS".to_owned())));
        assert_eq!(
            metric(&envoy, "portico_cache_requests_total;route=chat;status=miss"),
            Some(1)
        );
        assert_eq!(
            metric(&envoy, "portico_cache_stores_total;route=chat;outcome=stored"),
            Some(1)
        );
        assert_eq!(metric(&envoy, "portico_cache_entries"), Some(1));

        envoy.host().take_mutations();
        envoy.host().advance(Duration::from_secs(3));
        let (mut hit, action) = ask(
            &envoy,
            r#"{ "temperature": 0, "messages": [{"content": "2+2?", "role": "user"}], "model": "m" }"#,
        );
        assert_eq!(
            action,
            Action::Pause,
            "answered here: the upstream never gets the request"
        );
        let Some(reply) = envoy.host().reply() else {
            panic!("no reply: {:?}", envoy.host().mutations())
        };
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, ANSWER.as_bytes());
        assert_eq!(reply.details, "", "no details, as the SDK shell's reply had");
        assert_eq!(
            reply.headers,
            vec![
                (Name::from("content-type"), b"application/json".to_vec()),
                (Name::from("x-upstream"), b"1".to_vec()),
                (Name::from("x-portico-cache"), b"HIT".to_vec()),
                (Name::from("age"), b"3".to_vec()),
            ],
            "the stored headers without per-response ones, the verdict and the age"
        );
        assert!(state_set(&envoy, "HIT"));
        // The reply comes back through the filter: left alone, and nothing is stored again.
        assert_eq!(hit.response_headers(&[(":status", "200")], false), Action::Continue);
        hit.log();
        assert_eq!(
            metric(&envoy, "portico_cache_requests_total;route=chat;status=hit"),
            Some(1)
        );
        assert_eq!(
            metric(&envoy, "portico_cache_stores_total;route=chat;outcome=stored"),
            Some(1)
        );
    }

    #[test]
    fn an_answer_a_later_filter_refused_or_changed_is_never_stored() {
        let envoy = chat_cache();
        // body-transform marked the answer it could not translate.
        let (mut s, _) = ask(&envoy, BODY);
        envoy.host().put_property(&[state::BAD_UPSTREAM], b"1");
        answer(&envoy, &mut s, UPSTREAM_OK, ANSWER, 200);
        // A later filter turned it into a 502.
        let other = chat_cache();
        let (mut s, _) = ask(&other, BODY);
        answer(&other, &mut s, UPSTREAM_OK, ANSWER, 502);
        for envoy in [&envoy, &other] {
            assert_eq!(
                metric(envoy, "portico_cache_stores_total;route=chat;outcome=invalid"),
                Some(1)
            );
            assert_eq!(
                metric(envoy, "portico_cache_stores_total;route=chat;outcome=stored"),
                None
            );
            envoy.host().take_mutations();
            let (_, action) = ask(envoy, BODY);
            assert_eq!(action, Action::Continue, "still a miss");
            assert!(state_set(envoy, "MISS"));
        }
    }

    #[test]
    fn answers_that_are_not_plain_complete_json_are_not_stored() {
        let envoy = chat_cache();
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Headers<'_>, &str, &str); 4] = [
            (
                &[(":status", "500"), ("content-type", "application/json")],
                ANSWER,
                "not_storable",
            ),
            (
                &[
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("set-cookie", "a=b"),
                ],
                ANSWER,
                "not_storable",
            ),
            (UPSTREAM_OK, r#"{"choices":[{"index":0,"mess"#, "invalid"),
            (UPSTREAM_OK, &ANSWER.repeat(20), "too_large"),
        ];
        for (headers, body, outcome) in cases {
            let (mut s, _) = ask(&envoy, BODY);
            let status = headers.first().map_or("", |(_, v)| *v).parse().unwrap_or(0);
            answer(&envoy, &mut s, headers, body, status);
            let name = format!("portico_cache_stores_total;route=chat;outcome={outcome}");
            assert!(metric(&envoy, &name).is_some(), "{name}: {headers:?}");
        }
        assert_eq!(
            metric(&envoy, "portico_cache_stores_total;route=chat;outcome=stored"),
            None
        );
    }

    #[test]
    fn requests_that_cannot_be_replayed_bypass_the_cache() {
        let envoy = chat_cache();
        let cases = [
            (r#"{"model":"m","temperature":0.7}"#, "not_replayable"),
            (r#"{"model":"m","temperature":0,"stream":true}"#, "stream"),
            (r#"{"temperature":0,"temperature":1}"#, "duplicate_key"),
            ("not json", "not_json"),
        ];
        for (body, reason) in cases {
            let (mut s, action) = ask(&envoy, body);
            assert_eq!(action, Action::Continue);
            answer(&envoy, &mut s, UPSTREAM_OK, ANSWER, 200);
            let name = format!("portico_cache_bypass_total;route=chat;reason={reason}");
            assert_eq!(metric(&envoy, &name), Some(1), "{name}");
        }
        assert_eq!(
            metric(&envoy, "portico_cache_requests_total;route=chat;status=bypass"),
            Some(4)
        );
        assert_eq!(
            metric(&envoy, "portico_cache_stores_total;route=chat;outcome=stored"),
            None
        );
        assert!(envoy
            .host()
            .headers(Map::ResponseHeaders)
            .contains(&("x-portico-cache".to_owned(), "BYPASS".to_owned())));
    }

    #[test]
    fn hostile_upstreams_bodies_and_shared_data_are_handled_without_a_panic() {
        let envoy = chat_cache();
        // An upstream claiming a hit on a route the cache does not serve loses the header.
        let mut s = envoy.stream();
        assert_eq!(
            s.request_headers(&[(":method", "GET"), (":path", "/other")], true),
            Action::Continue
        );
        s.response_headers(&[(":status", "200"), ("x-portico-cache", "HIT")], false);
        assert!(!envoy
            .host()
            .headers(Map::ResponseHeaders)
            .iter()
            .any(|(n, _)| n == "x-portico-cache"));
        // A body larger than max_body_bytes is passed on without a key.
        let big = format!(r#"{{"temperature":0,"pad":"{}"}}"#, "x".repeat(600));
        let (mut s, action) = ask(&envoy, &big);
        assert_eq!(action, Action::Continue);
        assert_eq!(
            metric(&envoy, "portico_cache_bypass_total;route=chat;reason=body_too_large"),
            Some(1)
        );
        answer(&envoy, &mut s, UPSTREAM_OK, ANSWER, 200);
        // Damaged shared data in every slot: a lookup misses and the answer still goes through.
        for slot in 0..8 {
            let _ = portico_core::shared::Store::set(
                envoy.host().shared(),
                &format!("portico/cache/slot/{slot}"),
                b"PC1\xff\xff garbage",
                0,
            );
        }
        envoy.host().take_mutations();
        let (mut s, action) = ask(&envoy, BODY);
        assert_eq!(action, Action::Continue);
        assert!(state_set(&envoy, "MISS"));
        answer(&envoy, &mut s, UPSTREAM_OK, ANSWER, 200);
        // The upstream's own x-portico-cache is replaced by the verdict.
        let (mut s, _) = ask(&envoy, r#"{"temperature":0,"n":2}"#);
        s.response_headers(&[(":status", "200"), ("x-portico-cache", "HIT")], false);
        let verdicts: Vec<_> = envoy
            .host()
            .headers(Map::ResponseHeaders)
            .into_iter()
            .filter(|(n, _)| n == "x-portico-cache")
            .collect();
        assert_eq!(verdicts, vec![("x-portico-cache".to_owned(), "MISS".to_owned())]);
    }

    /// Host calls of a miss that is stored and of a hit (reported by the port of issue 14).
    #[test]
    fn host_calls_per_request_are_bounded() {
        let envoy = chat_cache();
        // A first miss and a first hit define the metric series the counts below use.
        let (mut warm, _) = ask(&envoy, r#"{"temperature":0,"warm":1}"#);
        answer(&envoy, &mut warm, UPSTREAM_OK, ANSWER, 200);
        let _ = ask(&envoy, r#"{"temperature":0,"warm":1}"#);

        let (mut miss, _) = ask(&envoy, BODY);
        answer(&envoy, &mut miss, UPSTREAM_OK, ANSWER, 200);
        let (hit, action) = ask(&envoy, BODY);
        assert_eq!(action, Action::Pause);
        let (miss, hit) = (miss.counts(), hit.counts());
        println!("cache host calls: miss+store {miss}; hit {hit}");
        // :path for the lookup, then the map once (the key reads about eight names),
        // accept-encoding removed.
        assert_eq!(miss.request_headers, 3, "{miss}");
        // The body, the clock, both candidate slots read, the metric, the state.
        assert_eq!(miss.request_body, 6, "{miss}");
        // The whole map (the answer's headers are kept), the verdict header.
        assert_eq!(miss.response_headers, 2, "{miss}");
        // The chunk.
        assert_eq!(miss.response_body, 1, "{miss}");
        // Response code and bad-upstream properties, the clock, the shared-data insert here
        // (two candidate slots read, the usage read and reserved with CAS, the slot written),
        // the metric, the usage read, two gauges. No eviction: no eviction count.
        assert_eq!(miss.log, 13, "{miss}");
        assert_eq!(hit.request_headers, 3, "{hit}");
        // The body, the clock, the candidate slot that holds it, the metric, the state, the reply.
        assert_eq!(hit.request_body, 6, "{hit}");
        assert_eq!(hit.total(), 9, "{hit}");
    }

    /// A request no rule matches costs its `:path` and, on the response, the removal of an
    /// upstream's claim to be a cache hit (rate-limit trusts the header).
    #[test]
    fn an_unmatched_route_reads_only_its_path() {
        let envoy = chat_cache();
        let mut s = envoy.stream();
        assert_eq!(
            s.request_headers(&[(":method", "POST"), (":path", "/v1/embeddings")], false),
            Action::Continue
        );
        assert_eq!(s.request_body(BODY.as_bytes(), true), Action::Continue);
        assert_eq!(s.response_headers(UPSTREAM_OK, false), Action::Continue);
        assert_eq!(s.response_body(ANSWER.as_bytes(), true), Action::Continue);
        s.log();
        let counts = s.counts();
        println!("cache host calls: unmatched route {counts}");
        assert_eq!(counts.request_headers, 1, "{counts}");
        assert_eq!(counts.response_headers, 1, "{counts}");
        assert_eq!(counts.total(), 2, "{counts}");
    }
}
