//! The two gRPC services: `portico.state.v1.State` and Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService`. Each call checks its request, turns it into
//! one script call per hash tag, and reads the script's answer; nothing here panics on what a
//! client or Redis sends.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::keys::Tag;
use crate::limits::{Limits, Unit};
use crate::proto::rls::rate_limit_response::{rate_limit::Unit as RlsUnit, Code, DescriptorStatus, RateLimit};
use crate::proto::rls::rate_limit_service_server::RateLimitService;
use crate::proto::rls::{Duration as RlsDuration, RateLimitRequest, RateLimitResponse};
use crate::proto::state::state_server::State;
use crate::proto::state::{
    HitRequest, HitResponse, LeaseRequest, LeaseResponse, Limit, LimitStatus, ReleaseRequest, ReserveRequest,
    ReserveResponse, SettleRequest, SettleResponse,
};
use crate::store::{Store, Which};

/// Amounts and limits stay below 2^53: the scripts count in Lua numbers (doubles).
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;
/// The most budgets or limits one call may name.
pub const MAX_LIMITS: usize = 16;
/// The longest budget name.
pub const MAX_NAME: usize = 256;
/// The longest period, burst horizon or reservation TTL: 365 days.
const MAX_SECONDS: u64 = portico_core::config::MAX_PERIOD_SECONDS;
/// The fastest rate: one unit per microsecond, the scripts' clock tick (the rate-limit
/// filter's bound too).
const MAX_PER_SECOND: u64 = 1_000_000;

/// Both services share the store (and the limits file, which only the rate limit service reads).
#[derive(Clone)]
pub struct Service {
    store: Arc<Store>,
    limits: Arc<Limits>,
}

impl Service {
    pub fn new(store: Store, limits: Limits) -> Self {
        Service {
            store: Arc::new(store),
            limits: Arc::new(limits),
        }
    }
}

fn invalid(code: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{code}: {message}"))
}

fn consumer_tag(consumer: &str) -> Result<Tag, Status> {
    Tag::of_consumer(consumer).map_err(|e| invalid("bad_consumer", e))
}

/// A budget or limit checked: its name, amount, and GCRA interval and capacity in µs.
struct Checked<'a> {
    name: &'a str,
    amount: u64,
    interval_us: u64,
    capacity_us: u64,
}

impl<'a> Checked<'a> {
    /// `amount` per `period_seconds` holding `burst` (0: `amount`), or why not.
    fn new(name: &'a str, amount: u64, period_seconds: u64, burst: u64) -> Result<Checked<'a>, String> {
        if !(1..=MAX_SECONDS).contains(&period_seconds) {
            return Err(format!("period of {name:?} must be 1..={MAX_SECONDS} seconds"));
        }
        let max_amount = period_seconds.saturating_mul(MAX_PER_SECOND);
        if !(1..=max_amount).contains(&amount) {
            return Err(format!(
                "amount of {name:?} must be 1..={max_amount}: at most {MAX_PER_SECOND} per second of the period"
            ));
        }
        let interval_us = (period_seconds.saturating_mul(1_000_000) / amount).max(1);
        let burst = if burst == 0 { amount } else { burst };
        let max_burst = MAX_SECONDS.saturating_mul(1_000_000) / interval_us;
        if burst > max_burst {
            return Err(format!(
                "burst of {name:?} must be at most {max_burst}: what refills in 365 days"
            ));
        }
        Ok(Checked {
            name,
            amount,
            interval_us,
            capacity_us: interval_us.saturating_mul(burst),
        })
    }
}

fn check_limit(limit: Option<&Limit>) -> Result<Checked<'_>, Status> {
    let limit = limit.ok_or_else(|| invalid("bad_limit", "a budget or limit is missing"))?;
    check_name(&limit.name)?;
    Checked::new(&limit.name, limit.amount, limit.period_seconds, limit.burst).map_err(|e| invalid("bad_limit", e))
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(invalid("bad_limit", format!("a name must be 1..={MAX_NAME} bytes")));
    }
    Ok(())
}

fn check_count(n: usize) -> Result<(), Status> {
    if !(1..=MAX_LIMITS).contains(&n) {
        return Err(invalid(
            "bad_request",
            format!("name 1..={MAX_LIMITS} budgets or limits"),
        ));
    }
    Ok(())
}

fn check_unique<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), Status> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(invalid("bad_request", format!("{name:?} is named twice")));
        }
    }
    Ok(())
}

fn check_amount(amount: u64) -> Result<u64, Status> {
    if amount > MAX_AMOUNT {
        return Err(invalid("bad_amount", "an amount is 2^53 or more"));
    }
    Ok(amount)
}

/// What the charge script said about one counter.
struct Outcome {
    remaining: u64,
    reset_after_ms: u64,
    exceeded: bool,
    charged: u64,
    retry_after_ms: u64,
}

/// Charges `amount`s to counters of one tag (one script call): admitted, and per counter what
/// the script reported.
async fn charge(
    store: &Store,
    tag: &Tag,
    mode: &str,
    id: &str,
    ttl_ms: u64,
    items: &[(&Checked<'_>, u64)],
) -> Result<(bool, Vec<Outcome>), Status> {
    let mut keys = Vec::with_capacity(items.len() * 2);
    let mut args = vec![mode.to_owned(), id.to_owned(), ttl_ms.to_string()];
    for (limit, amount) in items {
        keys.extend(tag.counter_keys(limit.name));
        args.extend([
            limit.interval_us.to_string(),
            limit.capacity_us.to_string(),
            amount.to_string(),
        ]);
    }
    let values = store.run(Which::Charge, &keys, &args).await?;
    let bad = || Status::internal("state_error: unexpected answer from the charge script");
    let (admitted, rest) = values.split_first().ok_or_else(bad)?;
    let outcomes: Vec<Outcome> = rest
        .chunks_exact(5)
        .map(|c| {
            let at = |i: usize| c.get(i).map_or(0, |v| u64::try_from(*v).unwrap_or(0));
            Outcome {
                remaining: at(0),
                reset_after_ms: at(1),
                exceeded: at(2) == 1,
                charged: at(3),
                retry_after_ms: at(4),
            }
        })
        .collect();
    if outcomes.len() != items.len() {
        return Err(bad());
    }
    Ok((*admitted == 1, outcomes))
}

fn statuses(items: &[(&Checked<'_>, u64)], outcomes: &[Outcome]) -> (Vec<LimitStatus>, u64) {
    let mut retry_after_ms = 0;
    let statuses = items
        .iter()
        .zip(outcomes)
        .map(|((limit, _), o)| {
            retry_after_ms = retry_after_ms.max(o.retry_after_ms);
            LimitStatus {
                name: limit.name.to_owned(),
                amount: limit.amount,
                remaining: o.remaining,
                reset_after_ms: o.reset_after_ms,
                exceeded: o.exceeded,
                retry_after_ms: o.retry_after_ms,
            }
        })
        .collect();
    (statuses, retry_after_ms)
}

/// A fresh reservation id: 128 random bits (std's per-process random hasher keys, a counter and
/// the time), unique in practice across every replica.
fn reservation_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u64(salt);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

fn check_reservation_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid("bad_reservation", "not a reservation id"));
    }
    Ok(())
}

// === impl State ===

#[tonic::async_trait]
impl State for Service {
    async fn reserve(&self, request: Request<ReserveRequest>) -> Result<Response<ReserveResponse>, Status> {
        let r = request.into_inner();
        let tag = consumer_tag(&r.consumer)?;
        check_count(r.budgets.len())?;
        if !(1..=MAX_SECONDS * 1000).contains(&r.ttl_ms) {
            return Err(invalid("bad_ttl", format!("ttl_ms must be 1..={}", MAX_SECONDS * 1000)));
        }
        let checked = r
            .budgets
            .iter()
            .map(|b| Ok((check_limit(b.budget.as_ref())?, check_amount(b.amount)?)))
            .collect::<Result<Vec<_>, Status>>()?;
        check_unique(checked.iter().map(|(c, _)| c.name))?;
        let items: Vec<(&Checked<'_>, u64)> = checked.iter().map(|(c, a)| (c, *a)).collect();
        let id = reservation_id();
        let (admitted, outcomes) = charge(&self.store, &tag, "reserve", &id, r.ttl_ms, &items).await?;
        let (statuses, retry_after_ms) = statuses(&items, &outcomes);
        Ok(Response::new(ReserveResponse {
            admitted,
            reservation_id: if admitted { id } else { String::new() },
            statuses,
            retry_after_ms,
        }))
    }

    async fn settle(&self, request: Request<SettleRequest>) -> Result<Response<SettleResponse>, Status> {
        let r = request.into_inner();
        let tag = consumer_tag(&r.consumer)?;
        check_reservation_id(&r.reservation_id)?;
        check_count(r.budgets.len())?;
        for b in &r.budgets {
            check_name(&b.budget)?;
            if b.difference.unsigned_abs() > MAX_AMOUNT {
                return Err(invalid("bad_amount", "a difference is 2^53 or more"));
            }
        }
        check_unique(r.budgets.iter().map(|b| b.budget.as_str()))?;
        let names: Vec<&str> = r.budgets.iter().map(|b| b.budget.as_str()).collect();
        let differences = r.budgets.iter().map(|b| b.difference.to_string());
        end_reservation(&self.store, &tag, &r.reservation_id, "settle", &names, differences).await
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<SettleResponse>, Status> {
        let r = request.into_inner();
        let tag = consumer_tag(&r.consumer)?;
        check_reservation_id(&r.reservation_id)?;
        check_count(r.budgets.len())?;
        for name in &r.budgets {
            check_name(name)?;
        }
        check_unique(r.budgets.iter().map(String::as_str))?;
        let names: Vec<&str> = r.budgets.iter().map(String::as_str).collect();
        end_reservation(
            &self.store,
            &tag,
            &r.reservation_id,
            "release",
            &names,
            std::iter::empty(),
        )
        .await
    }

    async fn lease(&self, request: Request<LeaseRequest>) -> Result<Response<LeaseResponse>, Status> {
        let r = request.into_inner();
        let tag = consumer_tag(&r.consumer)?;
        let budget = check_limit(r.budget.as_ref())?;
        let items = [(&budget, check_amount(r.wanted)?)];
        let (_, outcomes) = charge(&self.store, &tag, "lease", "", 0, &items).await?;
        let granted = outcomes.first().map_or(0, |o| o.charged);
        let (statuses, _) = statuses(&items, &outcomes);
        Ok(Response::new(LeaseResponse {
            granted,
            status: statuses.into_iter().next(),
        }))
    }

    async fn hit(&self, request: Request<HitRequest>) -> Result<Response<HitResponse>, Status> {
        let r = request.into_inner();
        let tag = consumer_tag(&r.consumer)?;
        check_count(r.limits.len())?;
        let cost = check_amount(r.cost.max(1))?;
        let checked = r
            .limits
            .iter()
            .map(|l| check_limit(Some(l)))
            .collect::<Result<Vec<_>, Status>>()?;
        check_unique(checked.iter().map(|c| c.name))?;
        let items: Vec<(&Checked<'_>, u64)> = checked.iter().map(|c| (c, cost)).collect();
        let (admitted, outcomes) = charge(&self.store, &tag, "hit", "", 0, &items).await?;
        let (statuses, retry_after_ms) = statuses(&items, &outcomes);
        Ok(Response::new(HitResponse {
            admitted,
            statuses,
            retry_after_ms,
        }))
    }
}

async fn end_reservation(
    store: &Store,
    tag: &Tag,
    id: &str,
    mode: &str,
    names: &[&str],
    differences: impl Iterator<Item = String>,
) -> Result<Response<SettleResponse>, Status> {
    let keys: Vec<String> = names.iter().flat_map(|n| tag.counter_keys(n)).collect();
    let mut args = vec![id.to_owned(), mode.to_owned()];
    args.extend(differences);
    let values = store.run(Which::Settle, &keys, &args).await?;
    if values.len() != names.len() {
        return Err(Status::internal(
            "state_error: unexpected answer from the settle script",
        ));
    }
    Ok(Response::new(SettleResponse {
        found: values.iter().map(|v| *v == 1).collect(),
    }))
}

// === impl RateLimitService ===

fn rls_unit(unit: Unit) -> RlsUnit {
    match unit {
        Unit::Second => RlsUnit::Second,
        Unit::Minute => RlsUnit::Minute,
        Unit::Hour => RlsUnit::Hour,
        Unit::Day => RlsUnit::Day,
        Unit::Week => RlsUnit::Week,
    }
}

/// Envoy's rate limit API on the same counters. Descriptors that share a domain and first entry
/// share a hash tag and are charged together, all or none; groups with different first
/// entries are charged one after the other, each on its own (as Envoy's reference service
/// counts every descriptor). A descriptor without a configured limit is `OK`.
#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let r = request.into_inner();
        let request_hits = u64::from(r.hits_addend.max(1));
        let mut statuses: Vec<DescriptorStatus> = r
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok.into(),
                ..DescriptorStatus::default()
            })
            .collect();
        // Per tag: (descriptor index, counter name, requests per unit, unit in seconds, hits).
        let mut groups: Vec<(Tag, Vec<(usize, String, u64, u64, u64)>)> = Vec::new();
        for (i, descriptor) in r.descriptors.iter().enumerate() {
            let entries = || descriptor.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
            let Some(rate) = self.limits.find(&r.domain, entries()) else {
                continue;
            };
            let Some(first) = descriptor.entries.first() else {
                continue;
            };
            let hits = check_amount(descriptor.hits_addend.as_ref().map_or(request_hits, |h| h.value))?;
            let name: Vec<String> = entries()
                .map(|(k, v)| format!("{}={}", crate::keys::escape(k), crate::keys::escape(v)))
                .collect();
            let tag = Tag::of_descriptor(&r.domain, &first.key, &first.value);
            if let Some(status) = statuses.get_mut(i) {
                status.current_limit = Some(RateLimit {
                    name: rate.name.clone().unwrap_or_default(),
                    requests_per_unit: rate.requests_per_unit,
                    unit: rls_unit(rate.unit).into(),
                });
            }
            let item = (
                i,
                name.join(":"),
                u64::from(rate.requests_per_unit),
                rate.unit.seconds(),
                hits,
            );
            match groups.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, items)) => items.push(item),
                None => groups.push((tag, vec![item])),
            }
        }
        let mut over = false;
        for (tag, items) in &groups {
            // The limits file was checked at load, so each rate is valid.
            let named: Vec<Checked<'_>> = items
                .iter()
                .map(|(_, name, amount, seconds, _)| Checked::new(name, *amount, *seconds, 0))
                .collect::<Result<_, String>>()
                .map_err(|e| Status::internal(format!("state_error: {e}")))?;
            let with_hits: Vec<(&Checked<'_>, u64)> = named.iter().zip(items).map(|(c, item)| (c, item.4)).collect();
            let (_, outcomes) = charge(&self.store, tag, "hit", "", 0, &with_hits).await?;
            for ((i, ..), o) in items.iter().zip(&outcomes) {
                if let Some(status) = statuses.get_mut(*i) {
                    status.code = if o.exceeded { Code::OverLimit } else { Code::Ok }.into();
                    status.limit_remaining = u32::try_from(o.remaining).unwrap_or(u32::MAX);
                    status.duration_until_reset = Some(RlsDuration {
                        seconds: i64::try_from(o.reset_after_ms / 1000).unwrap_or(i64::MAX),
                        nanos: i32::try_from((o.reset_after_ms % 1000) * 1_000_000).unwrap_or(0),
                    });
                }
                over |= o.exceeded;
            }
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok }.into(),
            statuses,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_becomes_the_filters_gcra_interval_and_capacity() {
        let c = Checked::new("b", 5, 60, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.interval_us, c.capacity_us), (12_000_000, 60_000_000));
        let c = Checked::new("b", 100, 1, 10).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.interval_us, c.capacity_us), (10_000, 100_000));
    }

    #[test]
    fn rates_outside_the_bounds_are_refused() {
        let refused = |amount, period, burst| Checked::new("b", amount, period, burst).err();
        assert_eq!(
            refused(0, 60, 0).as_deref(),
            Some("amount of \"b\" must be 1..=60000000: at most 1000000 per second of the period")
        );
        assert!(refused(1_000_001, 1, 0).is_some());
        assert!(refused(1, 0, 0).is_some());
        assert!(refused(1, MAX_SECONDS + 1, 0).is_some());
        assert_eq!(
            refused(1, MAX_SECONDS, 2).as_deref(),
            Some("burst of \"b\" must be at most 1: what refills in 365 days")
        );
        assert!(refused(1_000_000, 1, 0).is_none());
    }

    #[test]
    fn reservation_ids_are_distinct_and_plain() {
        let ids: HashSet<String> = (0..1000).map(|_| reservation_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| check_reservation_id(id).is_ok()));
    }
}
