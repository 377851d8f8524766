//! The filters' hand-written encoding of portico.state.v1 (`portico_core::state_api`) against
//! the service's generated types: what a filter sends is what the service reads, and what the
//! service answers is what a filter reads, field by field.

use portico_core::state_api as api;
use portico_state::proto::state as pb;
use prost::Message;

fn limit(name: &str, amount: u64, period_seconds: u64, burst: u64) -> api::Limit {
    api::Limit {
        name: name.into(),
        amount,
        period_seconds,
        burst,
    }
}

fn pb_limit(l: &api::Limit) -> pb::Limit {
    pb::Limit {
        name: l.name.clone(),
        amount: l.amount,
        period_seconds: l.period_seconds,
        burst: l.burst,
    }
}

#[test]
fn requests_the_filters_write_are_what_the_service_reads() {
    let daily = limit("tokens:daily", 5_000_000, 86_400, 0);
    let minute = limit("tokens:minute", 1 << 52, 60, 1 << 40);
    let budgets = [(daily.clone(), 4096), (minute.clone(), 0)];
    let reserve = api::ReserveRequest {
        consumer: "jwt:idp:alice",
        budgets: &budgets,
        ttl_ms: 300_000,
    };
    let got = pb::ReserveRequest::decode(reserve.encode().as_slice()).unwrap();
    assert_eq!(
        got,
        pb::ReserveRequest {
            consumer: "jwt:idp:alice".into(),
            budgets: vec![
                pb::BudgetAmount {
                    budget: Some(pb_limit(&daily)),
                    amount: 4096
                },
                pb::BudgetAmount {
                    budget: Some(pb_limit(&minute)),
                    amount: 0
                },
            ],
            ttl_ms: 300_000,
        }
    );

    let diffs = [
        ("tokens:daily", -4000),
        ("tokens:minute", i64::MAX),
        ("x", i64::MIN),
        ("", 0),
    ];
    let settle = api::SettleRequest {
        consumer: "key:bob",
        reservation_id: "r-42",
        budgets: &diffs,
    };
    let got = pb::SettleRequest::decode(settle.encode().as_slice()).unwrap();
    assert_eq!(got.consumer, "key:bob");
    assert_eq!(got.reservation_id, "r-42");
    let read: Vec<(&str, i64)> = got.budgets.iter().map(|b| (b.budget.as_str(), b.difference)).collect();
    assert_eq!(read, diffs);

    let names = ["tokens:daily", "", "tokens:minute"];
    let release = api::ReleaseRequest {
        consumer: "key:bob",
        reservation_id: "r-42",
        budgets: &names,
    };
    let got = pb::ReleaseRequest::decode(release.encode().as_slice()).unwrap();
    assert_eq!(got.budgets, names);

    let lease = api::LeaseRequest {
        consumer: "global:all",
        budget: &daily,
        wanted: 250,
    };
    let got = pb::LeaseRequest::decode(lease.encode().as_slice()).unwrap();
    assert_eq!(
        got,
        pb::LeaseRequest {
            consumer: "global:all".into(),
            budget: Some(pb_limit(&daily)),
            wanted: 250,
        }
    );

    let limits = [limit("rpm", 50, 60, 0), limit("rps", 1, 1, 5)];
    let hit = api::HitRequest {
        consumer: "ip:10.0.0.1",
        limits: &limits,
        cost: 2,
    };
    let got = pb::HitRequest::decode(hit.encode().as_slice()).unwrap();
    assert_eq!(got.limits, limits.iter().map(pb_limit).collect::<Vec<_>>());
    assert_eq!(got.cost, 2);
}

#[test]
fn answers_the_service_writes_are_what_the_filters_read() {
    let status = pb::LimitStatus {
        name: "rpm".into(),
        amount: 50,
        remaining: 0,
        reset_after_ms: 60_000,
        exceeded: true,
        retry_after_ms: 1_200,
    };
    let want_status = api::LimitStatus {
        name: "rpm".into(),
        amount: 50,
        remaining: 0,
        reset_after_ms: 60_000,
        exceeded: true,
        retry_after_ms: 1_200,
    };
    let reserve = pb::ReserveResponse {
        admitted: true,
        reservation_id: "r-7".into(),
        statuses: vec![status.clone(), pb::LimitStatus::default()],
        retry_after_ms: u64::MAX,
    };
    let got = api::Admission::decode_reserve(&reserve.encode_to_vec()).unwrap();
    assert_eq!(
        got,
        api::Admission {
            admitted: true,
            reservation_id: "r-7".into(),
            statuses: vec![want_status.clone(), api::LimitStatus::default()],
            retry_after_ms: u64::MAX,
        }
    );

    let hit = pb::HitResponse {
        admitted: false,
        statuses: vec![status.clone()],
        retry_after_ms: 1_200,
    };
    let got = api::Admission::decode_hit(&hit.encode_to_vec()).unwrap();
    assert!(!got.admitted);
    assert_eq!(got.statuses, vec![want_status.clone()]);
    assert_eq!(got.retry_after_ms, 1_200);

    let settle = pb::SettleResponse {
        found: vec![true, false, true],
    };
    assert_eq!(
        api::decode_settle(&settle.encode_to_vec()).unwrap(),
        vec![true, false, true]
    );

    let lease = pb::LeaseResponse {
        granted: 12,
        status: Some(status),
    };
    let got = api::Lease::decode(&lease.encode_to_vec()).unwrap();
    assert_eq!(got.granted, 12);
    assert_eq!(got.status, Some(want_status));
    assert_eq!(
        api::Lease::decode(&pb::LeaseResponse::default().encode_to_vec()).unwrap(),
        api::Lease::default()
    );
}
