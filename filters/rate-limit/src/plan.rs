//! Admission: every matching rule and token quota, decided together against shared data.
//!
//! A request is admitted only if every enforcing rule admits it. Rules are charged one after
//! another; when one refuses, the charges already taken are refunded, so a refused request
//! consumes nothing. Token quotas then reserve an estimate in every budget (refunded the same
//! way on refusal). What an admitted request took is its [`Hold`]: once the body is seen,
//! [`Hold::top_up`] reserves what a larger prompt needs (or refuses the request, refunding all
//! of it), and [`Hold::settle`] replaces the estimate with the real usage.
//!
//! The estimate: the output budget, `max_tokens` or `max_completion_tokens` from the request
//! (lifted by Envoy's `json_to_metadata`; the larger when both are given) or else the quota's
//! `default_max_tokens`, plus the prompt as [`crate::estimate`] counts it. It errs high on
//! purpose: reserving too much is refunded at settlement, reserving too little lets
//! concurrent requests overshoot the budget.
//!
//! Settlement trusts a backend's usage only up to [`SETTLE_FACTOR`] times the reservation. An
//! honest answer to a text prompt stays within it: the completion is at most the output budget
//! the reservation holds (when the request states its `max_tokens`, or body-transform states it
//! from the reservation), and the prompt is at most one token per body byte, which is four
//! times the smallest estimate of it. Anything above is charged at the bound and counted as an
//! anomaly, so one answer claiming 2^64 tokens cannot lock a consumer out for centuries.

use portico_core::contract::header;
use portico_core::request::RequestSource;
use portico_core::response::{ErrorResponse, ErrorType};
use portico_core::route::matching_path;
use portico_core::shared::{Store, UpdateError};

use crate::config::{Config, KeyPart, When};
use crate::estimate;
use crate::gcra::Rate;
use crate::headers::{self, PolicyState};
use crate::slots::{self, Charge, Outcome};
use crate::usage::Usage;

/// A response is charged at most this many times its reservation (see the module docs).
pub const SETTLE_FACTOR: u64 = 4;

/// The most tokens counted for one response that reserved nothing (no token quota applies):
/// 2^24, more than any model's context window and output together.
pub const UNRESERVED_LIMIT: u64 = 1 << 24;

/// What the shell gathers from the host for a decision.
#[derive(Debug)]
pub struct Request<'a> {
    pub view: &'a dyn RequestSource,
    pub client_ip: Option<&'a str>,
    /// The body's size as far as it is known before the body is seen.
    pub body_bytes: Option<u64>,
    /// The output budget the request states (`max_tokens` or `max_completion_tokens`).
    pub max_tokens: Option<u64>,
}

/// What happened to one rule or quota, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Allowed,
    Limited,
    DryRunLimited,
    StoreError,
}

/// Tokens reserved for one quota, to settle when usage is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub quota: usize,
    /// The prompt estimate and the output budget it reserved.
    pub prompt: u64,
    pub output: u64,
    dry_run: bool,
    /// Its charges, as indices into the ledger's `taken`.
    charges: Vec<usize>,
}

impl Reservation {
    pub fn estimate(&self) -> u64 {
        self.prompt.saturating_add(self.output)
    }

    /// The most a response may be charged against this reservation.
    pub fn limit(&self) -> u64 {
        self.estimate().saturating_mul(SETTLE_FACTOR)
    }
}

/// Why a response's usage looked wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// More than reserved, within the bound: charged as reported.
    OverReservation,
    /// More than the bound: charged the bound.
    Clamped,
    /// Usage that is not a count: the reservation is kept.
    Unparseable,
}

impl Anomaly {
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::OverReservation => "over_reservation",
            Anomaly::Clamped => "clamped",
            Anomaly::Unparseable => "unparseable",
        }
    }
}

/// What an admitted request took, kept until its response settles it.
#[derive(Debug, Default)]
pub struct Hold {
    ledger: Ledger,
    reservations: Vec<Reservation>,
}

/// The outcome of [`Hold::top_up`].
#[derive(Debug)]
pub enum TopUp {
    /// Nothing more was needed.
    Unchanged,
    /// More was reserved: the response headers to send now.
    Reserved(Vec<(&'static str, String)>),
    /// Refused: every charge of the request was refunded.
    Refused(ErrorResponse),
}

/// What settlement did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// The usage to count in metrics and the access log: as reported, cut to the largest
    /// limit of the request's reservations (or to [`UNRESERVED_LIMIT`] without one).
    pub counted: Usage,
    /// Each anomaly with its quota (`None`: the request reserved nothing).
    pub anomalies: Vec<(Option<usize>, Anomaly)>,
}

impl Hold {
    pub fn reservations(&self) -> &[Reservation] {
        &self.reservations
    }

    /// The output budget every reservation covers: the smallest of them (`None` without one).
    pub fn output_budget(&self) -> Option<u64> {
        self.reservations.iter().map(|r| r.output).min()
    }

    /// Reserves what a prompt estimate of `prompt` tokens needs beyond what each reservation
    /// holds, in every budget. If a budget cannot fit it, the request is refused as at
    /// admission: everything it took, rule charges included, is refunded. Returns the events
    /// of the quotas that needed more.
    pub fn top_up<S: Store + ?Sized>(
        &mut self,
        config: &Config,
        store: &S,
        prompt: u64,
        now: u64,
    ) -> (TopUp, Vec<(usize, Event)>) {
        self.ledger.retry_after = None;
        self.ledger.store_failed = false;
        self.ledger.oversized = None;
        let mut events = Vec::new();
        for r in &mut self.reservations {
            let extra = prompt.saturating_sub(r.prompt);
            if extra == 0 {
                continue;
            }
            let mut event = Event::Allowed;
            for &index in &r.charges {
                match self.ledger.take_more(store, index, now, extra, r.dry_run) {
                    Event::Allowed => {}
                    other => event = other,
                }
            }
            r.prompt = prompt;
            events.push((r.quota, event));
        }
        if events.is_empty() {
            return (TopUp::Unchanged, events);
        }
        match self.ledger.refusal(config, Refusal::Tokens) {
            Some(refusal) => {
                let response = self.ledger.refuse(config, store, now, refusal);
                *self = Hold::default();
                (TopUp::Refused(response), events)
            }
            None => (
                TopUp::Reserved(headers::render(&self.ledger.policies, config.x_ratelimit_headers)),
                events,
            ),
        }
    }

    /// Replaces each reservation with `reported` usage, charging at most the reservation's
    /// [`Reservation::limit`].
    pub fn settle<S: Store + ?Sized>(&self, store: &S, reported: Usage, now: u64) -> Settled {
        let total = reported.total();
        let mut anomalies = Vec::new();
        for r in &self.reservations {
            let limit = r.limit();
            if total > limit {
                anomalies.push((Some(r.quota), Anomaly::Clamped));
            } else if total > r.estimate() {
                anomalies.push((Some(r.quota), Anomaly::OverReservation));
            }
            let charged = i64::try_from(total.min(limit)).unwrap_or(i64::MAX);
            for &index in &r.charges {
                let Some((charge, rate, _)) = self.ledger.taken.get(index) else {
                    continue;
                };
                let delta = charged.saturating_sub(i64::try_from(charge.cost).unwrap_or(i64::MAX));
                if delta != 0 {
                    // A failed update leaves the reservation in place: an estimate that errs high.
                    let _ = slots::adjust(store, charge, rate, now, delta);
                }
            }
        }
        let limit = self
            .reservations
            .iter()
            .map(Reservation::limit)
            .max()
            .unwrap_or(UNRESERVED_LIMIT);
        if self.reservations.is_empty() && total > limit {
            anomalies.push((None, Anomaly::Clamped));
        }
        Settled {
            counted: reported.clamp(limit),
            anomalies,
        }
    }
}

#[derive(Debug, Default)]
pub struct Admission {
    /// Set when the request must be answered locally.
    pub rejection: Option<ErrorResponse>,
    /// Headers for the response (on a rejection, already inside it).
    pub headers: Vec<(&'static str, String)>,
    /// What an admitted request took (empty on a rejection).
    pub hold: Hold,
    /// (rule index, event) and (quota index, event).
    pub rule_events: Vec<(usize, Event)>,
    pub quota_events: Vec<(usize, Event)>,
}

fn applies(when: &When, view: &dyn RequestSource, tier: Option<&str>) -> bool {
    let tier_ok = when.tiers.is_empty() || tier.is_some_and(|t| when.tiers.iter().any(|x| x == t));
    tier_ok
        && when
            .headers
            .iter()
            .all(|(name, value)| match (view.header(name), value) {
                (Some(have), Some(want)) => have == want.as_bytes(),
                (Some(_), None) => true,
                (None, _) => false,
            })
}

/// The key of one rule for this request; missing parts count as empty.
/// The path part is the path routes match on ([`matching_path`]), so `/x;a=1` or `/%78` cannot
/// open a bucket of its own beside `/x`'s.
fn key(parts: &[KeyPart], req: &Request<'_>, pattern: Option<&str>) -> String {
    let path = matching_path(req.view.path());
    let mut key = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        let value = match part {
            KeyPart::Consumer => req.view.header_str(header::CONSUMER),
            KeyPart::Tier => req.view.header_str(header::TIER),
            KeyPart::ClientIp => req.client_ip,
            KeyPart::Route => pattern,
            KeyPart::Path => Some(path.as_ref()),
            KeyPart::Header(name) => req.view.header_str(name),
        };
        key.push_str(value.unwrap_or(""));
    }
    key
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Shared data failed and the fail mode is closed.
    Unavailable,
    Requests,
    Tokens,
    /// The request alone needs more than a budget's whole limit: no wait would admit it.
    Oversized,
    /// The body is compressed (`content-encoding` other than `identity`): its size says
    /// nothing about its tokens.
    Encoded,
}

/// A reservation larger than a whole budget, and the budget it cannot fit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Oversized {
    budget: String,
    cost: u64,
    limit: u64,
}

/// What admission has taken and seen so far: charges (to refund on refusal), the state of
/// every policy (for the headers), and why it would refuse.
#[derive(Debug, Default)]
struct Ledger {
    /// Each charge with the index of the policy state it is reported in.
    taken: Vec<(Charge, Rate, usize)>,
    policies: Vec<PolicyState>,
    retry_after: Option<u64>,
    store_failed: bool,
    /// The first enforcing budget the request can never fit.
    oversized: Option<Oversized>,
    /// An enforcing quota applies to a compressed body.
    encoded: bool,
}

impl Ledger {
    /// Takes `cost` units of `rate` for `placement`; a refusal counts unless `dry_run`.
    #[allow(clippy::too_many_arguments)]
    fn take<S: Store + ?Sized>(
        &mut self,
        store: &S,
        placement: &slots::Placement,
        rate: &Rate,
        now: u64,
        cost: u64,
        policy_name: &str,
        tokens: bool,
        dry_run: bool,
    ) -> Event {
        if tokens && !dry_run && cost > rate.burst {
            self.oversize(policy_name, cost, rate);
            return Event::Limited;
        }
        match slots::consume(store, placement, rate, now, cost) {
            Ok(Outcome::Allowed {
                charge,
                remaining,
                reset_seconds,
            }) => {
                self.taken.push((charge, *rate, self.policies.len()));
                self.policies
                    .push(policy(policy_name, rate, tokens, remaining, reset_seconds));
                Event::Allowed
            }
            Ok(Outcome::Limited {
                remaining,
                retry_after_seconds,
                reset_seconds,
            }) => {
                self.policies
                    .push(policy(policy_name, rate, tokens, remaining, reset_seconds));
                if dry_run {
                    Event::DryRunLimited
                } else {
                    self.retry_after = self.retry_after.max(Some(retry_after_seconds));
                    Event::Limited
                }
            }
            Err(UpdateError::Contention | UpdateError::Host(_)) => {
                self.store_failed = true;
                Event::StoreError
            }
        }
    }

    /// Takes `extra` more units for the charge at `index` (its policy state follows).
    fn take_more<S: Store + ?Sized>(&mut self, store: &S, index: usize, now: u64, extra: u64, dry_run: bool) -> Event {
        let Some((charge, rate, policy)) = self.taken.get_mut(index) else {
            return Event::Allowed;
        };
        let cost = charge.cost.saturating_add(extra);
        if !dry_run && cost > rate.burst {
            let (rate, name) = (*rate, self.policies.get(*policy).map(|p| p.name.clone()));
            self.oversize(name.as_deref().unwrap_or("unknown"), cost, &rate);
            return Event::Limited;
        }
        let (event, remaining, reset_seconds) = match slots::consume_more(store, charge, rate, now, extra) {
            Ok(Outcome::Allowed {
                charge: more,
                remaining,
                reset_seconds,
            }) => {
                if more.owner == charge.owner {
                    charge.cost = charge.cost.saturating_add(extra);
                } else {
                    *charge = more;
                }
                (Event::Allowed, remaining, reset_seconds)
            }
            Ok(Outcome::Limited {
                remaining,
                retry_after_seconds,
                reset_seconds,
            }) => {
                if dry_run {
                    (Event::DryRunLimited, remaining, reset_seconds)
                } else {
                    self.retry_after = self.retry_after.max(Some(retry_after_seconds));
                    (Event::Limited, remaining, reset_seconds)
                }
            }
            Err(UpdateError::Contention | UpdateError::Host(_)) => {
                self.store_failed = true;
                return Event::StoreError;
            }
        };
        if let Some(state) = self.policies.get_mut(*policy) {
            state.remaining = remaining;
            state.reset_seconds = reset_seconds;
        }
        event
    }

    fn oversize(&mut self, budget: &str, cost: u64, rate: &Rate) {
        if self.oversized.is_none() {
            self.oversized = Some(Oversized {
                budget: budget.to_owned(),
                cost,
                limit: rate.burst,
            });
        }
    }

    /// Why the request must be refused so far, if it must.
    fn refusal(&self, config: &Config, over: Refusal) -> Option<Refusal> {
        if self.encoded {
            Some(Refusal::Encoded)
        } else if self.store_failed && !config.fail_open {
            Some(Refusal::Unavailable)
        } else if self.oversized.is_some() {
            Some(Refusal::Oversized)
        } else {
            self.retry_after.map(|_| over)
        }
    }

    /// Refunds every charge and builds the answer, with the policies as they stand after it.
    fn refuse<S: Store + ?Sized>(&mut self, config: &Config, store: &S, now: u64, refusal: Refusal) -> ErrorResponse {
        for (charge, rate, index) in &self.taken {
            let delta = i64::try_from(charge.cost).unwrap_or(i64::MAX);
            // A refund that fails leaves the limit stricter, never looser: nothing more to do.
            if let (Ok((remaining, reset_seconds)), Some(state)) = (
                slots::adjust(store, charge, rate, now, delta.saturating_neg()),
                self.policies.get_mut(*index),
            ) {
                state.remaining = remaining;
                state.reset_seconds = reset_seconds;
            }
        }
        let (status, error_type, code, message) = match refusal {
            Refusal::Unavailable => (
                503,
                ErrorType::Api,
                "rate_limit_unavailable",
                "rate limits cannot be checked right now",
            ),
            Refusal::Requests => (
                429,
                ErrorType::RateLimit,
                "rate_limited",
                "too many requests; retry after the time in Retry-After",
            ),
            Refusal::Tokens => (
                429,
                ErrorType::RateLimit,
                "token_quota_exceeded",
                "the token budget for this period is used up; retry after the time in Retry-After",
            ),
            Refusal::Oversized => (400, ErrorType::InvalidRequest, "exceeds_token_budget", ""),
            Refusal::Encoded => (
                415,
                ErrorType::InvalidRequest,
                "unsupported_content_encoding",
                "a token quota applies here and counts the request body's tokens, which a compressed \
                 body hides: send it without content-encoding",
            ),
        };
        let message = match (&self.oversized, refusal) {
            (Some(o), Refusal::Oversized) => format!(
                "the request reserves about {} tokens (its prompt and max_tokens), more than the whole \
                 {}-token budget {:?}: no wait would admit it; lower max_tokens or shorten the prompt",
                o.cost, o.limit, o.budget
            ),
            _ => message.to_owned(),
        };
        let mut response = ErrorResponse::new(status, error_type, code, message);
        for (name, value) in headers::render(&self.policies, config.x_ratelimit_headers) {
            response = response.with_header(name, value);
        }
        if refusal == Refusal::Encoded {
            // RFC 7694: the codings the server accepts for request bodies.
            response = response.with_header("accept-encoding", "identity");
        }
        match self
            .retry_after
            .filter(|_| !matches!(refusal, Refusal::Unavailable | Refusal::Oversized | Refusal::Encoded))
        {
            Some(seconds) => response.with_header("retry-after", seconds.to_string()),
            None => response,
        }
    }
}

/// Decides a request at `now` (nanoseconds since the epoch).
/// Whether some rule or token quota selects the request. When none does, admission takes
/// nothing, so the shell need not gather anything else (the client address, lifted fields,
/// the body's size). Reads what matching needs; the tier only once a rule's route matches.
pub fn selects_any(config: &Config, view: &dyn RequestSource) -> bool {
    let tier = std::cell::OnceCell::new();
    let selectors = config.rules.iter().map(|r| &r.select);
    let mut selectors = selectors.chain(config.quotas.iter().map(|q| &q.select));
    selectors.any(|s| {
        s.matcher.matches(view)
            && (s.when.tiers.is_empty() && s.when.headers.is_empty()
                || applies(&s.when, view, *tier.get_or_init(|| view.header_str(header::TIER))))
    })
}

pub fn admit<S: Store + ?Sized>(config: &Config, store: &S, salt: &[u8; 32], req: &Request<'_>, now: u64) -> Admission {
    let tier = req.view.header_str(header::TIER);
    let mut admission = Admission::default();
    let mut ledger = Ledger::default();
    let selected = |s: &crate::config::Selector| s.matcher.matches(req.view) && applies(&s.when, req.view, tier);

    for (i, rule) in config.rules.iter().enumerate() {
        let s = &rule.select;
        if !selected(s) {
            continue;
        }
        let rate = rule.limit.for_tier(tier);
        let placement = slots::place(salt, &s.prefix, &key(&s.key, req, s.matcher.pattern()), config.max_keys);
        let event = ledger.take(store, &placement, rate, now, 1, &s.name, false, s.dry_run);
        admission.rule_events.push((i, event));
    }
    if let Some(refusal) = ledger.refusal(config, Refusal::Requests) {
        admission.rejection = Some(ledger.refuse(config, store, now, refusal));
        return admission;
    }

    let prompt = estimate::from_size(req.body_bytes.unwrap_or(0));
    // Read only once a quota selects the request.
    let encoded = std::cell::OnceCell::new();
    let encoded = || {
        *encoded.get_or_init(|| {
            req.view
                .header_str("content-encoding")
                .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"))
        })
    };
    let mut reservations = Vec::new();
    for (qi, quota) in config.quotas.iter().enumerate() {
        let s = &quota.select;
        if !selected(s) {
            continue;
        }
        if encoded() && !s.dry_run {
            ledger.encoded = true;
            continue;
        }
        let output = req.max_tokens.unwrap_or(quota.default_max_tokens);
        let cost = prompt.saturating_add(output);
        let quota_key = key(&s.key, req, s.matcher.pattern());
        let first_charge = ledger.taken.len();
        let mut event = Event::Allowed;
        for (bi, rate) in quota.budgets.for_tier(tier).iter().enumerate() {
            let placement = slots::place(salt, &format!("{}/{bi}", s.prefix), &quota_key, config.max_keys);
            let name = format!("{}_{}s", s.name, rate.period_seconds);
            match ledger.take(store, &placement, rate, now, cost, &name, true, s.dry_run) {
                Event::Allowed => {}
                other => event = other,
            }
        }
        admission.quota_events.push((qi, event));
        reservations.push(Reservation {
            quota: qi,
            prompt,
            output,
            dry_run: s.dry_run,
            charges: (first_charge..ledger.taken.len()).collect(),
        });
    }
    match ledger.refusal(config, Refusal::Tokens) {
        Some(refusal) => admission.rejection = Some(ledger.refuse(config, store, now, refusal)),
        None => {
            admission.headers = headers::render(&ledger.policies, config.x_ratelimit_headers);
            admission.hold = Hold { ledger, reservations };
        }
    }
    admission
}

fn policy(name: &str, rate: &Rate, tokens: bool, remaining: u64, reset_seconds: u64) -> PolicyState {
    PolicyState {
        name: name.to_owned(),
        quota: rate.burst,
        window_seconds: rate.period_seconds,
        tokens,
        remaining,
        reset_seconds,
    }
}

#[cfg(test)]
mod tests;
