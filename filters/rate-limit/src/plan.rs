//! Admission: every matching rule and token quota, decided together against shared data.
//!
//! A request is admitted only if every enforcing rule admits it. Rules are charged one after
//! another; when one refuses, the charges already taken are refunded, so a refused request
//! consumes nothing. Token quotas then reserve an estimate in every budget (refunded the same
//! way on refusal), and [`settle`] replaces the estimate with the real usage later.
//!
//! The estimate: `max_tokens` from the request (lifted by Envoy's `json_to_metadata`), or the
//! quota's `default_max_tokens`, plus the prompt's size taken as one token per 4 bytes of
//! request body, the usual rule of thumb for English text with BPE tokenizers. It errs high on
//! purpose: reserving too much is refunded at settlement, reserving too little lets concurrent
//! requests overshoot the budget.

use portico_core::identity::{CONSUMER_HEADER, TIER_HEADER};
use portico_core::request::RequestView;
use portico_core::response::{ErrorResponse, ErrorType};
use portico_core::shared::{Store, UpdateError};

use crate::config::{Config, KeyPart, When};
use crate::gcra::Rate;
use crate::headers::{self, PolicyState};
use crate::slots::{self, Charge, Outcome};

/// Bytes of request body counted as one prompt token in the estimate.
pub const BYTES_PER_TOKEN: u64 = 4;

/// What the shell gathers from the host for a decision.
#[derive(Debug)]
pub struct Request<'a> {
    pub view: &'a RequestView,
    pub client_ip: Option<&'a str>,
    pub body_bytes: Option<u64>,
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
    pub estimate: u64,
    pub charges: Vec<(Charge, Rate)>,
}

#[derive(Debug, Default)]
pub struct Admission {
    /// Set when the request must be answered locally.
    pub rejection: Option<ErrorResponse>,
    /// Headers for the response (on a rejection, already inside it).
    pub headers: Vec<(&'static str, String)>,
    pub reservations: Vec<Reservation>,
    /// (rule index, event) and (quota index, event).
    pub rule_events: Vec<(usize, Event)>,
    pub quota_events: Vec<(usize, Event)>,
}

fn applies(when: &When, view: &RequestView, tier: Option<&str>) -> bool {
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
fn key(parts: &[KeyPart], req: &Request<'_>, pattern: Option<&str>) -> String {
    let mut key = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        let value = match part {
            KeyPart::Consumer => req.view.header_str(CONSUMER_HEADER),
            KeyPart::Tier => req.view.header_str(TIER_HEADER),
            KeyPart::ClientIp => req.client_ip,
            KeyPart::Route => pattern,
            KeyPart::Path => Some(req.view.path()),
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

    /// Why the request must be refused so far, if it must.
    fn refusal(&self, config: &Config, over: Refusal) -> Option<Refusal> {
        if self.store_failed && !config.fail_open {
            Some(Refusal::Unavailable)
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
                slots::adjust(store, charge, rate, now, -delta),
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
        };
        let mut response = ErrorResponse::new(status, error_type, code, message);
        for (name, value) in headers::render(&self.policies, config.x_ratelimit_headers) {
            response = response.with_header(name, value);
        }
        match self.retry_after.filter(|_| refusal != Refusal::Unavailable) {
            Some(seconds) => response.with_header("retry-after", seconds.to_string()),
            None => response,
        }
    }
}

/// Decides a request at `now` (nanoseconds since the epoch).
pub fn admit<S: Store + ?Sized>(config: &Config, store: &S, salt: &[u8; 32], req: &Request<'_>, now: u64) -> Admission {
    let tier = req.view.header_str(TIER_HEADER);
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

    let prompt_estimate = req.body_bytes.unwrap_or(0).div_ceil(BYTES_PER_TOKEN);
    for (qi, quota) in config.quotas.iter().enumerate() {
        let s = &quota.select;
        if !selected(s) {
            continue;
        }
        let estimate = prompt_estimate.saturating_add(req.max_tokens.unwrap_or(quota.default_max_tokens));
        let quota_key = key(&s.key, req, s.matcher.pattern());
        let first_charge = ledger.taken.len();
        let mut event = Event::Allowed;
        for (bi, rate) in quota.budgets.for_tier(tier).iter().enumerate() {
            let placement = slots::place(salt, &format!("{}/{bi}", s.prefix), &quota_key, config.max_keys);
            let name = format!("{}_{}s", s.name, rate.period_seconds);
            match ledger.take(store, &placement, rate, now, estimate, &name, true, s.dry_run) {
                Event::Allowed => {}
                other => event = other,
            }
        }
        admission.quota_events.push((qi, event));
        let charges = ledger.taken.get(first_charge..).unwrap_or_default();
        admission.reservations.push(Reservation {
            quota: qi,
            estimate,
            charges: charges.iter().map(|(c, r, _)| (c.clone(), *r)).collect(),
        });
    }
    match ledger.refusal(config, Refusal::Tokens) {
        Some(refusal) => {
            admission.rejection = Some(ledger.refuse(config, store, now, refusal));
            admission.reservations.clear();
        }
        None => admission.headers = headers::render(&ledger.policies, config.x_ratelimit_headers),
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

/// Replaces each reservation's estimate with `used` tokens (`None`: keep the reservation, for
/// streams that ended without usage and clients that went away). Returns the tokens charged.
pub fn settle<S: Store + ?Sized>(store: &S, reservations: &[Reservation], used: Option<u64>, now: u64) -> u64 {
    let Some(used) = used else {
        return reservations.iter().map(|r| r.estimate).max().unwrap_or(0);
    };
    for r in reservations {
        let delta = i64::try_from(used)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(r.estimate).unwrap_or(i64::MAX));
        if delta != 0 {
            for (charge, rate) in &r.charges {
                let _ = slots::adjust(store, charge, rate, now, delta);
            }
        }
    }
    used
}

#[cfg(test)]
mod tests;
