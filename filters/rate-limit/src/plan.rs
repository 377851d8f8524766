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

/// A charge taken during admission, with the index of the policy state it is reported in.
type Taken = (Charge, Rate, usize);

/// Refunds every charge, and reports each policy as it stands after its refund.
fn refund_all<S: Store + ?Sized>(store: &S, taken: &[Taken], policies: &mut [PolicyState], now: u64) {
    for (charge, rate, policy) in taken {
        let delta = i64::try_from(charge.cost).unwrap_or(i64::MAX);
        // A refund that fails leaves the limit stricter, never looser: nothing more to do.
        if let (Ok((remaining, reset_seconds)), Some(state)) = (
            slots::adjust(store, charge, rate, now, -delta),
            policies.get_mut(*policy),
        ) {
            state.remaining = remaining;
            state.reset_seconds = reset_seconds;
        }
    }
}

fn reject(
    status: u32,
    error_type: ErrorType,
    code: &'static str,
    message: &str,
    headers: &[(&'static str, String)],
) -> ErrorResponse {
    headers
        .iter()
        .fold(ErrorResponse::new(status, error_type, code, message), |r, (n, v)| {
            r.with_header(n, v.clone())
        })
}

/// Decides a request at `now` (nanoseconds since the epoch).
pub fn admit<S: Store + ?Sized>(config: &Config, store: &S, salt: &[u8; 32], req: &Request<'_>, now: u64) -> Admission {
    let tier = req.view.header_str(TIER_HEADER);
    let mut admission = Admission::default();
    let mut taken: Vec<Taken> = Vec::new();
    let mut policies: Vec<PolicyState> = Vec::new();
    let mut retry_after: Option<u64> = None;
    let mut store_failed = false;

    for (i, rule) in config.rules.iter().enumerate() {
        if !rule.matcher.matches(req.view) || !applies(&rule.when, req.view, tier) {
            continue;
        }
        let rate = rule.limit.for_tier(tier);
        let placement = slots::place(
            salt,
            &format!("portico/rate-limit/{}", rule.name),
            &key(&rule.key, req, rule.matcher.pattern()),
            config.max_keys,
        );
        let event = match slots::consume(store, &placement, rate, now, 1) {
            Ok(Outcome::Allowed {
                charge,
                remaining,
                reset_seconds,
            }) => {
                taken.push((charge, *rate, policies.len()));
                policies.push(policy(&rule.name, rate, false, remaining, reset_seconds));
                Event::Allowed
            }
            Ok(Outcome::Limited {
                remaining,
                retry_after_seconds,
                reset_seconds,
            }) => {
                policies.push(policy(&rule.name, rate, false, remaining, reset_seconds));
                if rule.dry_run {
                    Event::DryRunLimited
                } else {
                    retry_after = retry_after.max(Some(retry_after_seconds));
                    Event::Limited
                }
            }
            Err(UpdateError::Contention | UpdateError::Host(_)) => {
                store_failed = true;
                Event::StoreError
            }
        };
        admission.rule_events.push((i, event));
    }

    let rejected = |status,
                    error_type,
                    code,
                    message,
                    retry_after: Option<u64>,
                    taken: &[Taken],
                    policies: &mut Vec<PolicyState>| {
        refund_all(store, taken, policies, now);
        let mut headers = headers::render(policies, config.x_ratelimit_headers);
        if let Some(seconds) = retry_after {
            headers.push(("retry-after", seconds.to_string()));
        }
        reject(status, error_type, code, message, &headers)
    };
    const UNAVAILABLE: &str = "rate limits cannot be checked right now";
    if store_failed && !config.fail_open {
        admission.rejection = Some(rejected(
            503,
            ErrorType::Api,
            "rate_limit_unavailable",
            UNAVAILABLE,
            None,
            &taken,
            &mut policies,
        ));
        return admission;
    }
    if retry_after.is_some() {
        let message = "too many requests; retry after the time in Retry-After";
        admission.rejection = Some(rejected(
            429,
            ErrorType::RateLimit,
            "rate_limited",
            message,
            retry_after,
            &taken,
            &mut policies,
        ));
        return admission;
    }

    let prompt_estimate = req.body_bytes.unwrap_or(0).div_ceil(BYTES_PER_TOKEN);
    for (qi, quota) in config.quotas.iter().enumerate() {
        if !quota.matcher.matches(req.view) || !applies(&quota.when, req.view, tier) {
            continue;
        }
        let estimate = prompt_estimate.saturating_add(req.max_tokens.unwrap_or(quota.default_max_tokens));
        let quota_key = key(&quota.key, req, quota.matcher.pattern());
        let mut charges = Vec::new();
        let mut event = Event::Allowed;
        for (bi, rate) in quota.budgets.for_tier(tier).iter().enumerate() {
            let name = format!("{}_{}s", quota.name, rate.period_seconds);
            let placement = slots::place(
                salt,
                &format!("portico/rate-limit/{}/{bi}", quota.name),
                &quota_key,
                config.max_keys,
            );
            match slots::consume(store, &placement, rate, now, estimate) {
                Ok(Outcome::Allowed {
                    charge,
                    remaining,
                    reset_seconds,
                }) => {
                    charges.push((charge, *rate, policies.len()));
                    policies.push(policy(&name, rate, true, remaining, reset_seconds));
                }
                Ok(Outcome::Limited {
                    remaining,
                    retry_after_seconds,
                    reset_seconds,
                }) => {
                    policies.push(policy(&name, rate, true, remaining, reset_seconds));
                    if quota.dry_run {
                        event = Event::DryRunLimited;
                    } else {
                        retry_after = retry_after.max(Some(retry_after_seconds));
                        event = Event::Limited;
                    }
                }
                Err(_) => {
                    store_failed = true;
                    event = Event::StoreError;
                }
            }
        }
        admission.quota_events.push((qi, event));
        admission.reservations.push(Reservation {
            quota: qi,
            estimate,
            charges: charges.iter().map(|(c, r, _)| (c.clone(), *r)).collect(),
        });
        taken.extend(charges);
    }

    if store_failed && !config.fail_open {
        admission.rejection = Some(rejected(
            503,
            ErrorType::Api,
            "rate_limit_unavailable",
            UNAVAILABLE,
            None,
            &taken,
            &mut policies,
        ));
        admission.reservations.clear();
    } else if retry_after.is_some() {
        let message = "the token budget for this period is used up; retry after the time in Retry-After";
        let response = rejected(
            429,
            ErrorType::RateLimit,
            "token_quota_exceeded",
            message,
            retry_after,
            &taken,
            &mut policies,
        );
        admission.rejection = Some(response);
        admission.reservations.clear();
    } else {
        admission.headers = headers::render(&policies, config.x_ratelimit_headers);
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
