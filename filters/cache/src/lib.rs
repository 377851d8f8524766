//! Portico cache: answers repeated, replay-safe inference requests from Envoy shared data.
//!
//! It sits last among the Portico filters, just before the router: it sees the consumer and
//! tier (auth), the chosen cluster and upstream model (header-routing) and the exact body the
//! upstream would get (after body-transform). A hit is answered from the request body
//! callback, the only place the whole body is available to a wasm filter; the response then
//! flows back through body-transform, header-routing, rate-limit and auth exactly as an
//! upstream answer would, with `x-portico-cache: HIT`, which rate-limit reads to release the
//! request's token reservation.
//!
//! This file is the host shell: [`key`], [`policy`], [`answer`] and [`store`] hold the
//! decisions.
// Until issue 14 ports this shell: it still calls the SDK's host wrappers.
#![allow(clippy::disallowed_methods)]
// Off wasm the host shell below is compiled but never entered; the wasm clippy run checks it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod answer;
pub mod config;
pub mod entry;
pub mod flow;
pub mod key;
pub mod policy;
pub mod store;

use std::rc::Rc;

use portico_core::analytics::{state, CACHE_HEADER};
use portico_core::clock::unix_millis;
use portico_core::identity::{CONSUMER_HEADER, TIER_HEADER};
use portico_core::metrics::{bump, counter, gauge, set, Family};
use portico_core::refusal::{RefusalLog, Refusals};
use portico_core::request::RequestView;
use portico_core::shared::HostStore;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::answer::Api;
use crate::config::{Config, Rule, Scope};
use crate::entry::Entry;
use crate::key::{Body, Key, Parts};
use crate::policy::{Directive, Verdict};
use crate::store::Stored;

const NAME: &str = "portico-cache";
/// Distinct label sets per metric before the rest count as `other`.
const MAX_SERIES: usize = 500;

// The entry point exists only in the .wasm: native builds (tests, `portico check`) link
// several filters together and would clash on its exported symbol.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CacheRoot::default()) });
}}

// === Metrics ===

#[derive(Debug)]
struct Metrics {
    /// route, status (hit, miss, bypass).
    requests: Family,
    /// route, reason.
    bypasses: Family,
    /// route, outcome (stored, too_large, not_storable, invalid, no_room, failed).
    stores: Family,
    evictions: Option<u32>,
    bytes: Option<u32>,
    entries: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        Self {
            requests: Family::counter("portico_cache_requests_total", MAX_SERIES),
            bypasses: Family::counter("portico_cache_bypass_total", MAX_SERIES),
            stores: Family::counter("portico_cache_stores_total", MAX_SERIES),
            evictions: counter("portico_cache_evictions_total"),
            bytes: gauge("portico_cache_bytes"),
            entries: gauge("portico_cache_entries"),
        }
    }
}

// === impl CacheRoot ===

#[derive(Default)]
struct CacheRoot {
    config: Option<Rc<Config>>,
    metrics: Option<Rc<Metrics>>,
    /// The per-worker log budget every filter has (the defaults of `refusal_log`): the cache
    /// refuses nothing, but can log once per request.
    log: Option<Rc<Refusals>>,
}

impl Context for CacheRoot {}

impl RootContext for CacheRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                self.metrics = Some(Rc::new(Metrics::define()));
                self.log = Some(Rc::new(Refusals::new(NAME, RefusalLog::default())));
                true
            }
            Err(errors) => {
                errors.log(NAME);
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CacheHttp {
            config: self.config.clone()?,
            metrics: self.metrics.clone()?,
            log: self.log.clone()?,
            phase: Phase::Off,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// === impl CacheHttp ===

/// What the request carried that the key needs, kept past the headers callback (after which
/// Envoy no longer gives the request headers).
#[derive(Debug)]
struct Pending {
    rule: usize,
    scope: String,
    method: String,
    path: String,
    api: Api,
    backend: String,
    vary: Vec<(String, Vec<u8>)>,
    directive: Directive,
    opted_in: bool,
}

enum Phase {
    /// Nothing (more) to do: no cache rule, or the answer is stored.
    Off,
    /// Waiting for the whole request body.
    Collect(Box<Pending>),
    /// Going upstream; `store` says where the answer goes when it may be stored.
    Upstream { label: &'static str, store: Option<Fill> },
    /// Keeping the upstream answer to store it at its end.
    Record {
        fill: Fill,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        too_large: bool,
        /// The upstream's status, read with its headers (the body callbacks cannot).
        status: u64,
    },
    /// A complete answer fit to store, held until the request ends: a later filter may still
    /// refuse it (body-transform turns an answer it cannot translate into a 502), and only an
    /// answer the client got as it is may be replayed.
    Ready {
        fill: Fill,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// The upstream's status, which the client must get too.
        status: u64,
    },
    /// Answered from the cache.
    Hit,
}

/// Where an upstream answer is stored, and what it must look like to be.
#[derive(Debug, Clone, Copy)]
struct Fill {
    key: Key,
    rule: usize,
    api: Api,
}

struct CacheHttp {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    log: Rc<Refusals>,
    phase: Phase,
}

impl Context for CacheHttp {}

impl CacheHttp {
    fn rule(&self, index: usize) -> Option<&Rule> {
        self.config.routes.get(index)
    }

    fn rule_name(&self, index: usize) -> &str {
        self.rule(index).map_or("unknown", |r| r.name.as_str())
    }

    fn count(&self, rule: usize, status: &'static str) {
        self.metrics
            .requests
            .add(&[("route", self.rule_name(rule)), ("status", status)], 1);
        let label = match status {
            "hit" => "HIT",
            "miss" => "MISS",
            _ => "BYPASS",
        };
        self.set_property(vec![state::CACHE], Some(label.as_bytes()));
    }

    /// Goes upstream without a lookup; `store` keeps the fresh answer (client `no-cache`).
    fn bypass(&mut self, rule: usize, reason: &'static str, store: Option<Fill>) {
        self.count(rule, "bypass");
        self.metrics
            .bypasses
            .add(&[("route", self.rule_name(rule)), ("reason", reason)], 1);
        self.phase = Phase::Upstream { label: "BYPASS", store };
    }

    /// Decides on the complete request body; `true` if the request was answered from cache.
    fn decide(&mut self, pending: &Pending, body: &[u8]) -> bool {
        let Some(rule) = self.rule(pending.rule) else {
            self.phase = Phase::Off;
            return false;
        };
        let body = match Body::parse(body) {
            Ok(body) => body,
            Err(unkeyable) => {
                self.bypass(pending.rule, unkeyable.reason(), None);
                return false;
            }
        };
        let verdict = policy::judge(rule, pending.directive, pending.opted_in, &body);
        if let Verdict::Bypass(reason) = verdict {
            self.bypass(pending.rule, reason, None);
            return false;
        }
        let parts = Parts {
            scope_kind: rule.scope.as_str(),
            scope: &pending.scope,
            method: &pending.method,
            path: &pending.path,
            backend: &pending.backend,
            vary: pending.vary.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect(),
        };
        let key = key::compute(&parts, &body);
        let fill = Fill {
            key,
            rule: pending.rule,
            api: pending.api,
        };
        if verdict == Verdict::Refresh {
            self.bypass(pending.rule, "client_no_cache", Some(fill));
            return false;
        }
        let now = unix_millis(self.get_current_time());
        match store::lookup(&HostStore, &self.config.limits, &key, now) {
            Some(entry) => {
                self.count(pending.rule, "hit");
                self.answer(&entry, now);
                self.phase = Phase::Hit;
                true
            }
            None => {
                self.count(pending.rule, "miss");
                self.phase = Phase::Upstream {
                    label: "MISS",
                    store: Some(fill),
                };
                false
            }
        }
    }

    fn answer(&self, entry: &Entry, now_ms: u64) {
        let age = (now_ms.saturating_sub(entry.stored_at_ms) / 1000).to_string();
        let mut headers: Vec<(&str, &str)> = entry.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        headers.push((CACHE_HEADER, "HIT"));
        headers.push(("age", &age));
        self.send_http_response(200, headers, Some(&entry.body));
    }

    /// Counts an upstream answer that is not stored, and says why in the log.
    fn not_stored(&self, rule: usize, outcome: &'static str, reason: &str) {
        let route = self.rule_name(rule);
        self.log.note(
            self.get_current_time(),
            log::Level::Info,
            format_args!("not storing the answer for route {route}: {reason}"),
        );
        self.metrics.stores.add(&[("route", route), ("outcome", outcome)], 1);
    }

    fn finish_record(&mut self) {
        let Phase::Record {
            fill,
            headers,
            body,
            too_large,
            status,
        } = std::mem::replace(&mut self.phase, Phase::Off)
        else {
            return;
        };
        if too_large {
            self.metrics
                .stores
                .add(&[("route", self.rule_name(fill.rule)), ("outcome", "too_large")], 1);
            return;
        }
        if let Err(unfit) = answer::check_body(fill.api, &body) {
            self.not_stored(fill.rule, "invalid", unfit.as_str());
            return;
        }
        self.phase = Phase::Ready {
            fill,
            headers,
            body,
            status,
        };
    }

    /// Stores a ready answer once the request is over, if the client got it as it was.
    fn store_ready(&mut self) {
        let Phase::Ready {
            fill: Fill { key, rule, .. },
            headers,
            body,
            status,
        } = std::mem::replace(&mut self.phase, Phase::Off)
        else {
            return;
        };
        let sent = self
            .get_property(vec!["response", "code"])
            .and_then(|raw| <[u8; 8]>::try_from(raw.as_slice()).ok())
            .map(u64::from_le_bytes);
        let refused = self.get_property(vec![state::BAD_UPSTREAM]).is_some();
        if let Err(unfit) = answer::check_served(status, sent, refused) {
            self.not_stored(rule, "invalid", unfit.as_str());
            return;
        }
        let now = unix_millis(self.get_current_time());
        let ttl_ms = self.rule(rule).map_or(0, |r| r.ttl_seconds.saturating_mul(1000));
        let entry = Entry {
            key,
            stored_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            headers,
            body,
        };
        let route = self.rule_name(rule).to_owned();
        let outcome = match store::insert(&HostStore, &self.config.limits, &key, &entry.encode(), now) {
            Stored::Stored { evicted } => {
                bump(self.metrics.evictions, u64::from(evicted));
                "stored"
            }
            Stored::TooLarge => "too_large",
            Stored::NoRoom => "no_room",
            Stored::Failed => {
                self.log.warn(
                    self.get_current_time(),
                    format_args!("shared data refused a cache entry for route {route}"),
                );
                "failed"
            }
        };
        self.metrics.stores.add(&[("route", &route), ("outcome", outcome)], 1);
        let usage = store::usage(&HostStore);
        set(self.metrics.bytes, usage.bytes);
        set(self.metrics.entries, usage.entries);
    }
}

fn scope_value(scope: Scope, view: &RequestView) -> String {
    let header = match scope {
        Scope::Consumer => CONSUMER_HEADER,
        Scope::Tier => TIER_HEADER,
        Scope::Global => return String::new(),
    };
    // Requests without an identity share the anonymous scope.
    view.header_str(header).unwrap_or("").to_owned()
}

impl HttpContext for CacheHttp {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let view = RequestView::new(self.get_http_request_headers_bytes());
        let Some(matched) = self.config.routes.find(&view) else {
            return Action::Continue;
        };
        let rule = matched.rule;
        // A stored answer must be read to be checked, and replayed to clients that may not
        // accept the encoding the first one did: ask the upstream for an uncompressed answer.
        if view.header("accept-encoding").is_some() {
            self.set_http_request_header("accept-encoding", None);
        }
        let pending = Pending {
            rule: matched.index,
            scope: scope_value(rule.scope, &view),
            method: view.method().to_owned(),
            path: view.path_and_query().to_owned(),
            api: Api::of_path(view.path()),
            backend: view.header_str(&self.config.backend_header).unwrap_or("").to_owned(),
            vary: rule
                .vary
                .iter()
                .map(|name| (name.clone(), view.header(name).unwrap_or_default().to_vec()))
                .collect(),
            directive: policy::directive(view.header_str("cache-control"), view.header_str("pragma")),
            opted_in: policy::opted_in(view.header(&rule.opt_in_header)),
        };
        if end_of_stream {
            if self.decide(&pending, b"") {
                return Action::Pause;
            }
            return Action::Continue;
        }
        self.phase = Phase::Collect(Box::new(pending));
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::Collect(pending) = &self.phase else {
            return Action::Continue;
        };
        let rule = pending.rule;
        if u64::try_from(body_size).map_or(true, |n| n > self.config.max_body_bytes) {
            self.bypass(rule, "body_too_large", None);
            return Action::Continue;
        }
        if !end_of_stream {
            // Hold the body until it is complete (json_to_metadata in front already buffered it).
            return Action::Pause;
        }
        let Phase::Collect(pending) = std::mem::replace(&mut self.phase, Phase::Off) else {
            return Action::Continue;
        };
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if self.decide(&pending, &body) {
            // Answered: the upstream never receives the rest of the request.
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        match std::mem::replace(&mut self.phase, Phase::Off) {
            Phase::Upstream { label, store } => {
                let headers = self.get_http_response_headers_bytes();
                if let Some(fill) = store {
                    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
                    let readable = answer::check_headers(header("content-type"), header("content-encoding"));
                    match (policy::storable(header(":status"), &headers), readable) {
                        (Err(reason), _) => self.not_stored(fill.rule, "not_storable", reason),
                        (Ok(_), Err(unfit)) => self.not_stored(fill.rule, "invalid", unfit.as_str()),
                        (Ok(kept), Ok(())) => {
                            let status = header(":status")
                                .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                                .unwrap_or(0);
                            self.phase = Phase::Record {
                                fill,
                                headers: kept,
                                body: Vec::new(),
                                too_large: false,
                                status,
                            };
                        }
                    }
                }
                self.set_http_response_header(CACHE_HEADER, Some(label));
                if end_of_stream {
                    self.finish_record();
                }
            }
            Phase::Hit => self.phase = Phase::Hit,
            // Only this filter says whether an answer came from the cache: an upstream that
            // claims a hit could otherwise dodge the token charge.
            _ => {
                if self.get_http_response_header_bytes(CACHE_HEADER).is_some() {
                    self.set_http_response_header(CACHE_HEADER, None);
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Phase::Record { body, too_large, .. } = &self.phase else {
            return Action::Continue;
        };
        let limit = usize::try_from(self.config.limits.max_entry_bytes).unwrap_or(usize::MAX);
        let fits = !*too_large && body.len().saturating_add(body_size) <= limit;
        let chunk = if fits && body_size > 0 {
            self.get_http_response_body(0, body_size)
        } else {
            None
        };
        if let Phase::Record { body, too_large, .. } = &mut self.phase {
            if fits {
                body.extend_from_slice(&chunk.unwrap_or_default());
            } else {
                *too_large = true;
                *body = Vec::new();
            }
        }
        if end_of_stream {
            self.finish_record();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.store_ready();
    }
}
