//! The cache's phase machine, without the host: what one request goes through from its
//! headers to the access log, as values the shell reads from and writes to the host.
//!
//! ```text
//! request headers ─► no rule ─────────────────────────────────► Off
//!        │ rule: Pending (what the key needs; request headers are gone after this phase)
//! request body (whole) ─► judge ─► Bypass{reason, store?} ─► Upstream(BYPASS, store?)
//!                                └► Lookup(fill) ─► entry fresh ─► Hit (answered here)
//!                                                 └► none ──────► Upstream(MISS, fill)
//! response headers ─► Upstream with a fill: storable and readable? ─► Record
//! response body ─► Record keeps chunks up to max_entry_bytes; at its end a shaped body ─► Ready
//! log ─► Ready and the client got it as sent (same status, no filter refused it) ─► stored
//! ```
//!
//! An answer is stored only in the log phase: a later filter may still refuse it on its way
//! out (body-transform turns an answer it cannot translate into a 502, or marks it with the
//! `portico_bad_upstream` state), and only what the client got may be replayed.

use portico_core::contract::{cache, header};
use portico_core::request::RequestSource;

use crate::answer::{self, Api, Unfit};
use crate::config::{Config, Rule, Scope};
use crate::entry::Entry;
use crate::key::{self, Body, Key, Parts};
use crate::policy::{self, Directive, Verdict};

/// The cache's word on a response, in `x-portico-cache` and the `portico_cache` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Hit,
    Miss,
    Bypass,
}

impl Label {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Hit => cache::HIT,
            Label::Miss => cache::MISS,
            Label::Bypass => cache::BYPASS,
        }
    }

    /// The `status` label of `portico_cache_requests_total`.
    pub fn status(self) -> &'static str {
        match self {
            Label::Hit => "hit",
            Label::Miss => "miss",
            Label::Bypass => "bypass",
        }
    }
}

/// What the request headers carried that the key needs, kept past the headers phase (after
/// which Envoy no longer gives the request headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub rule: usize,
    pub scope: String,
    pub method: String,
    pub path: String,
    pub api: Api,
    pub backend: String,
    pub vary: Vec<(String, Vec<u8>)>,
    pub directive: Directive,
    pub opted_in: bool,
}

impl Pending {
    /// What a request on a cached route needs kept; `None` when no rule matches it.
    pub fn read(config: &Config, request: &dyn RequestSource) -> Option<Pending> {
        let matched = config.routes.find(request)?;
        Some(Self::for_rule(config, matched.index, matched.rule, request))
    }

    /// What a request that matched rule `index` needs kept.
    pub fn for_rule(config: &Config, index: usize, rule: &Rule, request: &dyn RequestSource) -> Pending {
        Pending {
            rule: index,
            scope: scope_value(rule.scope, request).to_owned(),
            method: request.method().to_owned(),
            path: request.path_and_query().to_owned(),
            api: Api::of_path(request.path()),
            backend: request.header_str(&config.backend_header).unwrap_or("").to_owned(),
            vary: rule
                .vary
                .iter()
                .map(|name| (name.clone(), request.header(name).unwrap_or_default().to_vec()))
                .collect(),
            directive: policy::directive(request.header_str("cache-control"), request.header_str("pragma")),
            opted_in: policy::opted_in(request.header(&rule.opt_in_header)),
        }
    }
}

/// The scope value of a request; requests without an identity share the anonymous scope.
fn scope_value(scope: Scope, request: &dyn RequestSource) -> &str {
    let header = match scope {
        Scope::Consumer => header::CONSUMER,
        Scope::Tier => header::TIER,
        Scope::Global => return "",
    };
    request.header_str(header).unwrap_or("")
}

/// A stored answer must be read to be checked, and replayed to clients that may not accept
/// the encoding the first one did: a cached route asks the upstream for an uncompressed
/// answer by dropping the client's `accept-encoding`.
pub fn strips_accept_encoding(request: &dyn RequestSource) -> bool {
    request.header("accept-encoding").is_some()
}

/// Whether a request body of `size` bytes is too large to key (it then goes upstream).
pub fn body_too_large(config: &Config, size: usize) -> bool {
    u64::try_from(size).map_or(true, |n| n > config.max_body_bytes)
}

/// Where an upstream answer is stored, and what it must look like to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub key: Key,
    pub rule: usize,
    pub api: Api,
}

/// What to do with a request once its whole body is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go upstream without a lookup, counted as a bypass for `reason`; `store` keeps the fresh
    /// answer (client `no-cache`).
    Bypass { reason: &'static str, store: Option<Fill> },
    /// Look the key up: a fresh entry answers, otherwise the upstream's answer fills it.
    Lookup(Fill),
}

/// Judges a request on its complete body; `None` when its rule no longer exists (the shell
/// then leaves the request alone).
pub fn judge(config: &Config, pending: &Pending, body: &[u8]) -> Option<Step> {
    let rule = config.routes.get(pending.rule)?;
    let body = match Body::parse(body) {
        Ok(body) => body,
        Err(unkeyable) => {
            return Some(Step::Bypass {
                reason: unkeyable.reason(),
                store: None,
            })
        }
    };
    let verdict = policy::judge(rule, pending.directive, pending.opted_in, &body);
    if let Verdict::Bypass(reason) = verdict {
        return Some(Step::Bypass { reason, store: None });
    }
    let parts = Parts {
        scope_kind: rule.scope.as_str(),
        scope: &pending.scope,
        method: &pending.method,
        path: &pending.path,
        backend: &pending.backend,
        vary: pending.vary.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect(),
    };
    let fill = Fill {
        key: key::compute(&parts, &body),
        rule: pending.rule,
        api: pending.api,
    };
    Some(match verdict {
        Verdict::Refresh => Step::Bypass {
            reason: "client_no_cache",
            store: Some(fill),
        },
        Verdict::Lookup | Verdict::Bypass(_) => Step::Lookup(fill),
    })
}

/// The headers of a hit: the stored ones, the cache's `HIT` and the entry's `age` in seconds.
pub fn hit_headers(entry: &Entry, now_ms: u64) -> Vec<(String, Vec<u8>)> {
    let age = now_ms.saturating_sub(entry.stored_at_ms) / 1000;
    let mut headers: Vec<(String, Vec<u8>)> = entry
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
        .collect();
    headers.push((header::CACHE.to_owned(), cache::HIT.as_bytes().to_vec()));
    headers.push(("age".to_owned(), age.to_string().into_bytes()));
    headers
}

/// Why an upstream answer is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Larger than `max_entry_bytes` (counted, not logged: an operator's limit, not a fault).
    TooLarge,
    /// The upstream said not to, or it is not a plain answer (`policy::storable`'s reason).
    NotStorable(&'static str),
    /// Not a complete, readable answer of its API, or not what the client got.
    Invalid(Unfit),
}

impl NotStored {
    /// The `outcome` label of `portico_cache_stores_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            NotStored::TooLarge => "too_large",
            NotStored::NotStorable(_) => "not_storable",
            NotStored::Invalid(_) => "invalid",
        }
    }

    /// The reason in the log line, or `None` when it is not logged.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            NotStored::TooLarge => None,
            NotStored::NotStorable(reason) => Some(reason),
            NotStored::Invalid(unfit) => Some(unfit.as_str()),
        }
    }
}

/// An upstream answer being kept to be stored at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub fill: Fill,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub too_large: bool,
    /// The upstream's status, read with its headers (the body callbacks cannot).
    pub status: u64,
}

impl Record {
    /// Starts recording the answer with `headers` (the whole response map), or says why it is
    /// not stored.
    pub fn start(fill: Fill, headers: &[(String, Vec<u8>)]) -> Result<Record, NotStored> {
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        let status = header(":status");
        let kept = policy::storable(status, headers).map_err(NotStored::NotStorable)?;
        answer::check_headers(header("content-type"), header("content-encoding")).map_err(NotStored::Invalid)?;
        Ok(Record {
            fill,
            headers: kept,
            body: Vec::new(),
            too_large: false,
            status: status
                .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                .unwrap_or(0),
        })
    }

    /// Whether a chunk of `size` bytes is wanted: it is read only when the whole answer still
    /// fits in `limit` bytes. An answer that outgrows it is dropped (and stays dropped).
    pub fn wants(&mut self, size: usize, limit: u64) -> bool {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if self.too_large || self.body.len().saturating_add(size) > limit {
            self.too_large = true;
            self.body = Vec::new();
            return false;
        }
        size > 0
    }

    /// Appends a chunk [`Record::wants`] asked for.
    pub fn push(&mut self, chunk: &[u8]) {
        if !self.too_large {
            self.body.extend_from_slice(chunk);
        }
    }

    /// The whole answer arrived: ready to store when the request ends, or why it is not.
    pub fn finish(self) -> Result<Ready, NotStored> {
        if self.too_large {
            return Err(NotStored::TooLarge);
        }
        answer::check_body(self.fill.api, &self.body).map_err(NotStored::Invalid)?;
        Ok(Ready {
            fill: self.fill,
            headers: self.headers,
            body: self.body,
            status: self.status,
        })
    }
}

/// A complete answer fit to store, held until the request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub fill: Fill,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The upstream's status, which the client must get too.
    pub status: u64,
}

impl Ready {
    /// The entry to store at `now_ms` for `ttl_seconds`, if the client got the answer as it
    /// was: `sent` is Envoy's `response.code` property as the host gives it (8 bytes, little
    /// endian; `None` when the exchange never completed), `refused` whether the
    /// `portico_bad_upstream` state is set.
    pub fn settle(self, sent: Option<&[u8]>, refused: bool, now_ms: u64, ttl_seconds: u64) -> Result<Entry, NotStored> {
        let sent = sent
            .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
            .map(u64::from_le_bytes);
        answer::check_served(self.status, sent, refused).map_err(NotStored::Invalid)?;
        Ok(Entry {
            key: self.fill.key,
            stored_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_seconds.saturating_mul(1000)),
            headers: self.headers,
            body: self.body,
        })
    }
}

/// Where a request is in the machine.
#[derive(Debug, Default)]
pub enum Phase {
    /// Nothing (more) to do: no cache rule, the answer is not stored, or it is settled.
    #[default]
    Off,
    /// Waiting for the whole request body.
    Collect(Box<Pending>),
    /// Going upstream; `store` says where the answer goes when it may be stored.
    Upstream { label: Label, store: Option<Fill> },
    /// Keeping the upstream answer to store it at its end.
    Record(Box<Record>),
    /// A complete answer, stored in the log phase if the client got it as it was.
    Ready(Box<Ready>),
    /// Answered from the cache.
    Hit,
}

impl Phase {
    /// The phase after a [`Step`]'s bypass or a lookup's miss.
    pub fn upstream(label: Label, store: Option<Fill>) -> Phase {
        Phase::Upstream { label, store }
    }

    /// The phase after the upstream's response headers, for a request going upstream with
    /// `store`: recording the answer, or not storing it (and why).
    pub fn on_upstream_headers(store: Option<Fill>, headers: &[(String, Vec<u8>)]) -> (Phase, Option<NotStored>) {
        match store.map(|fill| Record::start(fill, headers)) {
            None => (Phase::Off, None),
            Some(Ok(record)) => (Phase::Record(Box::new(record)), None),
            Some(Err(why)) => (Phase::Off, Some(why)),
        }
    }

    /// The phase after the last of the answer arrived while recording.
    pub fn on_answer_end(record: Record) -> (Phase, Option<NotStored>) {
        match record.finish() {
            Ok(ready) => (Phase::Ready(Box::new(ready)), None),
            Err(why) => (Phase::Off, Some(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::request::RequestView;
    use serde_json::json;

    const CHAT: &str = r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"4"}}]}"#;

    fn config() -> Config {
        Config::from_value(&json!({
            "max_entry_bytes": 100,
            "max_body_bytes": 64,
            "routes": [
                {"name": "chat", "match": {"path": "/v1/chat/completions"}, "scope": "tier", "vary": ["x-v"]},
                {"name": "any", "replay": "always"}
            ]
        }))
        .unwrap()
    }

    fn view(pairs: &[(&str, &str)]) -> RequestView {
        RequestView::new(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn chat_request(extra: &[(&str, &str)]) -> RequestView {
        let mut pairs = vec![
            (":method", "POST"),
            (":path", "/v1/chat/completions?x=1"),
            ("x-portico-tier", "gold"),
            ("x-portico-cluster", "openai"),
        ];
        pairs.extend_from_slice(extra);
        view(&pairs)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn fill() -> Fill {
        Fill {
            key: [7; 32],
            rule: 0,
            api: Api::ChatCompletions,
        }
    }

    #[test]
    fn pending_keeps_what_the_key_needs_from_the_headers() {
        let config = config();
        let pending = Pending::read(
            &config,
            &chat_request(&[
                ("x-v", "1"),
                ("cache-control", "no-cache"),
                ("x-portico-cache-replay", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            pending,
            Pending {
                rule: 0,
                scope: "gold".into(),
                method: "POST".into(),
                path: "/v1/chat/completions?x=1".into(),
                api: Api::ChatCompletions,
                backend: "openai".into(),
                vary: vec![("x-v".into(), b"1".to_vec())],
                directive: Directive::Refresh,
                opted_in: true,
            }
        );
        // The catch-all route keys on the consumer, and a request without one is anonymous.
        let other = Pending::read(&config, &view(&[(":method", "GET"), (":path", "/models")])).unwrap();
        assert_eq!((other.rule, other.scope.as_str(), other.api), (1, "", Api::Other));
    }

    #[test]
    fn no_rule_no_pending() {
        let config = Config::from_value(&json!({"routes": [{"match": {"path": "/v1/embeddings"}}]})).unwrap();
        assert_eq!(Pending::read(&config, &chat_request(&[])), None);
    }

    #[test]
    fn accept_encoding_is_dropped_only_when_sent() {
        assert!(strips_accept_encoding(&chat_request(&[("accept-encoding", "gzip")])));
        assert!(!strips_accept_encoding(&chat_request(&[])));
    }

    #[test]
    fn body_size_bound() {
        let config = config();
        assert!(!body_too_large(&config, 64));
        assert!(body_too_large(&config, 65));
    }

    #[test]
    fn the_body_decides_lookup_refresh_or_bypass() {
        let config = config();
        let normal = Pending::read(&config, &chat_request(&[])).unwrap();
        let zero = br#"{"model":"m","temperature":0}"#;
        let Some(Step::Lookup(fill)) = judge(&config, &normal, zero) else {
            panic!("a deterministic request is looked up")
        };
        assert_eq!((fill.rule, fill.api), (0, Api::ChatCompletions));
        // Key order and spacing do not change the key; the scope value does.
        let reordered = br#"{ "temperature": 0, "model": "m" }"#;
        assert_eq!(judge(&config, &normal, reordered), Some(Step::Lookup(fill)));
        let mut other_tier = normal.clone();
        other_tier.scope = "silver".into();
        assert_ne!(judge(&config, &other_tier, zero), Some(Step::Lookup(fill)));

        let cases: [(&[u8], &str); 4] = [
            (b"{", "not_json"),
            (br#"{"a":1,"a":2}"#, "duplicate_key"),
            (br#"{"temperature":0,"stream":true}"#, "stream"),
            (br#"{"temperature":0.7}"#, "not_replayable"),
        ];
        for (body, reason) in cases {
            assert_eq!(
                judge(&config, &normal, body),
                Some(Step::Bypass { reason, store: None }),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut refresh = normal.clone();
        refresh.directive = Directive::Refresh;
        assert_eq!(
            judge(&config, &refresh, zero),
            Some(Step::Bypass {
                reason: "client_no_cache",
                store: Some(fill)
            }),
            "no-cache skips the lookup but refreshes the entry"
        );
        let mut missing_rule = normal;
        missing_rule.rule = 9;
        assert_eq!(judge(&config, &missing_rule, zero), None);
    }

    #[test]
    fn a_hit_carries_the_stored_headers_the_verdict_and_its_age() {
        let entry = Entry {
            key: [1; 32],
            stored_at_ms: 10_000,
            expires_at_ms: 70_000,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        };
        assert_eq!(
            hit_headers(&entry, 12_999),
            pairs(&[
                ("content-type", "application/json"),
                ("x-portico-cache", "HIT"),
                ("age", "2")
            ])
        );
        assert_eq!(
            hit_headers(&entry, 0).last(),
            Some(&("age".to_owned(), b"0".to_vec())),
            "a clock behind the entry never underflows"
        );
    }

    #[test]
    fn only_readable_storable_answers_are_recorded() {
        let ok = pairs(&[(":status", "200"), ("content-type", "application/json"), ("date", "x")]);
        let record = Record::start(fill(), &ok).unwrap();
        assert_eq!(record.status, 200);
        assert_eq!(
            record.headers,
            vec![("content-type".to_owned(), "application/json".to_owned())]
        );
        let cases = [
            (
                pairs(&[(":status", "500"), ("content-type", "application/json")]),
                NotStored::NotStorable("status"),
            ),
            (
                pairs(&[
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("set-cookie", "a=b"),
                ]),
                NotStored::NotStorable("set_cookie"),
            ),
            (
                pairs(&[(":status", "200"), ("content-type", "text/html")]),
                NotStored::Invalid(Unfit::ContentType),
            ),
            (
                pairs(&[
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ]),
                NotStored::Invalid(Unfit::Encoded),
            ),
        ];
        for (headers, why) in cases {
            assert_eq!(Record::start(fill(), &headers), Err(why), "{headers:?}");
        }
    }

    #[test]
    fn a_recorded_answer_is_bounded_and_checked_at_its_end() {
        let headers = pairs(&[(":status", "200"), ("content-type", "application/json")]);
        let mut record = Record::start(fill(), &headers).unwrap();
        let (a, b) = CHAT.as_bytes().split_at(20);
        assert!(record.wants(a.len(), 100));
        record.push(a);
        assert!(!record.wants(0, 100), "an empty chunk is not read");
        assert!(record.wants(b.len(), 100));
        record.push(b);
        let ready = record.finish().unwrap();
        assert_eq!(ready.body, CHAT.as_bytes());

        let mut big = Record::start(fill(), &headers).unwrap();
        assert!(big.wants(60, 100));
        big.push(&[b' '; 60]);
        assert!(!big.wants(41, 100), "past the limit");
        assert!(!big.wants(1, 100), "and stays dropped");
        big.push(b"x");
        assert!(big.body.is_empty());
        assert_eq!(big.finish(), Err(NotStored::TooLarge));

        let mut cut = Record::start(fill(), &headers).unwrap();
        cut.push(a);
        assert_eq!(cut.finish(), Err(NotStored::Invalid(Unfit::NotJson)));
        let mut wrong = Record::start(fill(), &headers).unwrap();
        wrong.push(b"{}");
        assert_eq!(wrong.finish(), Err(NotStored::Invalid(Unfit::Shape)));
    }

    fn ready() -> Ready {
        Ready {
            fill: fill(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: CHAT.as_bytes().to_vec(),
            status: 200,
        }
    }

    #[test]
    fn only_an_answer_the_client_got_as_sent_is_stored() {
        let code = 200u64.to_le_bytes();
        let entry = ready().settle(Some(&code), false, 5_000, 60).unwrap();
        assert_eq!(
            (entry.key, entry.stored_at_ms, entry.expires_at_ms),
            ([7; 32], 5_000, 65_000)
        );
        assert_eq!(entry.body, CHAT.as_bytes());
        let not_served = Err(NotStored::Invalid(Unfit::NotServed));
        let bad_gateway = 502u64.to_le_bytes();
        assert_eq!(
            ready().settle(Some(&code), true, 0, 60),
            not_served,
            "portico_bad_upstream set"
        );
        assert_eq!(
            ready().settle(Some(&bad_gateway), false, 0, 60),
            not_served,
            "a later filter changed the status"
        );
        assert_eq!(ready().settle(None, false, 0, 60), not_served, "no response code");
        assert_eq!(
            ready().settle(Some(b"200"), false, 0, 60),
            not_served,
            "a damaged property"
        );
        let far = ready().settle(Some(&code), false, u64::MAX - 1, u64::MAX).unwrap();
        assert_eq!(far.expires_at_ms, u64::MAX, "saturates");
    }

    #[test]
    fn the_phases_after_the_upstream_answer() {
        let ok = pairs(&[(":status", "200"), ("content-type", "application/json")]);
        assert!(matches!(Phase::on_upstream_headers(None, &ok), (Phase::Off, None)));
        let (phase, why) = Phase::on_upstream_headers(Some(fill()), &ok);
        assert_eq!(why, None);
        let Phase::Record(mut record) = phase else {
            panic!("recording")
        };
        let (phase, why) = Phase::on_upstream_headers(Some(fill()), &pairs(&[(":status", "404")]));
        assert!(matches!(phase, Phase::Off));
        assert_eq!(why.map(NotStored::outcome), Some("not_storable"));
        record.push(CHAT.as_bytes());
        assert!(matches!(Phase::on_answer_end(*record), (Phase::Ready(_), None)));
        let empty = Record::start(fill(), &ok).unwrap();
        let (phase, why) = Phase::on_answer_end(empty);
        assert!(matches!(phase, Phase::Off));
        assert_eq!(why.and_then(NotStored::reason), Some("not_json"));
        assert_eq!(NotStored::TooLarge.reason(), None);
        assert_eq!(
            [Label::Hit, Label::Miss, Label::Bypass].map(|l| (l.as_str(), l.status())),
            [("HIT", "hit"), ("MISS", "miss"), ("BYPASS", "bypass")]
        );
    }
}
