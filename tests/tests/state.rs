//! portico-state against a real redis-server (and a real Redis Cluster, and a real Envoy):
//! exact admission under concurrency, reservations settled, released and reclaimed, leases,
//! Envoy's rate limit API, and a Redis that is gone or hung.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use portico_state::keys::Tag;
use portico_state::proto::rls::rate_limit_descriptor::Entry;
use portico_state::proto::rls::rate_limit_response::Code;
use portico_state::proto::rls::{RateLimitDescriptor, RateLimitRequest};
use portico_state::proto::state::state_client::StateClient;
use portico_state::proto::state::{
    BudgetAmount, BudgetDifference, HitRequest, LeaseRequest, Limit, ReleaseRequest, ReserveRequest, ReserveResponse,
    SettleRequest,
};
use portico_tests::envoy::{eventually, EnvoyConfig, Gateway};
use portico_tests::http;
use portico_tests::state::{RedisCluster, RedisServer, StateService};
use portico_tests::upstream::Upstream;
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code as GrpcCode;

/// A window no test run straddles (windows are aligned on the epoch: this one ends once a year).
const YEAR: u64 = 365 * 24 * 3600;
/// Redis's per-call timeout where a test is not about timeouts: long enough for a loaded
/// 2-core machine running tests in parallel.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `amount` per year: nothing refills while a test runs.
fn limit(name: &str, amount: u64) -> Limit {
    Limit {
        name: name.to_owned(),
        amount,
        period_seconds: YEAR,
        burst: 0,
    }
}

fn service(redis: &RedisServer) -> StateService {
    StateService::start(vec![redis.url()], false, TIMEOUT, None)
}

/// The units a GCRA counter in Redis holds: how far its TAT (`t`, µs) is ahead of Redis's
/// clock, in intervals of `period_seconds / amount` (rounded: a test runs for far less than
/// an interval).
fn units_held(cli: impl Fn(&[&str]) -> String, counter: &str, amount: u64, period_seconds: u64) -> i64 {
    let tat: f64 = cli(&["HGET", counter, "t"]).trim().parse().unwrap_or(0.0);
    let time = cli(&["TIME"]);
    let mut parts = time.split_whitespace().map(|p| p.parse::<f64>().unwrap());
    let now = parts.next().unwrap() * 1e6 + parts.next().unwrap();
    let interval = (period_seconds * 1_000_000 / amount) as f64;
    ((tat - now).max(0.0) / interval).round() as i64
}

/// The units a consumer's budget of `amount` a year holds in Redis.
fn usage(redis: &RedisServer, consumer: &str, budget: &str, amount: u64) -> i64 {
    let [counter, _] = Tag::of_consumer(consumer).unwrap().counter_keys(budget);
    units_held(|args| redis.cli(args), &counter, amount, YEAR)
}

/// `n` Hit calls of cost 1 at once on `limit`; how many were admitted.
fn hit_storm(state: &StateService, consumer: &str, limit_: &Limit, n: usize) -> usize {
    let client = state.client();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let mut client = client.clone();
            let request = HitRequest {
                consumer: consumer.to_owned(),
                limits: vec![limit_.clone()],
                cost: 1,
            };
            state.spawn(async move { client.hit(request).await.map(|r| r.into_inner().admitted) })
        })
        .collect();
    state.block_on(async {
        let mut admitted = 0;
        for call in calls {
            if call.await.unwrap().unwrap() {
                admitted += 1;
            }
        }
        admitted
    })
}

fn reserve(
    state: &StateService,
    client: &mut StateClient<Channel>,
    budget: &Limit,
    amount: u64,
    ttl_ms: u64,
) -> ReserveResponse {
    let request = ReserveRequest {
        consumer: "acme:alice".to_owned(),
        budgets: vec![BudgetAmount {
            budget: Some(budget.clone()),
            amount,
        }],
        ttl_ms,
    };
    state.block_on(client.reserve(request)).unwrap().into_inner()
}

fn settle(
    state: &StateService,
    client: &mut StateClient<Channel>,
    id: &str,
    budget: &str,
    difference: i64,
) -> Vec<bool> {
    let request = SettleRequest {
        consumer: "acme:alice".to_owned(),
        reservation_id: id.to_owned(),
        budgets: vec![BudgetDifference {
            budget: budget.to_owned(),
            difference,
        }],
    };
    state.block_on(client.settle(request)).unwrap().into_inner().found
}

#[test]
fn two_hundred_concurrent_hits_on_a_limit_of_fifty_admit_exactly_fifty() {
    let redis = RedisServer::start();
    let state = service(&redis);
    assert_eq!(hit_storm(&state, "acme:alice", &limit("requests", 50), 200), 50);
    assert_eq!(usage(&redis, "acme:alice", "requests", 50), 50);
    // Another consumer's limit of the same name is its own.
    assert_eq!(hit_storm(&state, "other:alice", &limit("requests", 50), 60), 50);
}

#[test]
fn a_refused_hit_says_which_limit_and_when_to_retry() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let request = HitRequest {
        consumer: "acme:alice".to_owned(),
        limits: vec![limit("wide", 10), limit("narrow", 1)],
        cost: 1,
    };
    assert!(
        state
            .block_on(client.hit(request.clone()))
            .unwrap()
            .into_inner()
            .admitted
    );
    let refused = state.block_on(client.hit(request)).unwrap().into_inner();
    assert!(!refused.admitted);
    let exceeded: Vec<(&str, bool, u64)> = refused
        .statuses
        .iter()
        .map(|s| (s.name.as_str(), s.exceeded, s.remaining))
        .collect();
    assert_eq!(exceeded, [("wide", false, 9), ("narrow", true, 0)]);
    assert!(refused.retry_after_ms > 0 && refused.retry_after_ms <= YEAR * 1000);
    // All or nothing: the refused call charged neither limit.
    assert_eq!(usage(&redis, "acme:alice", "wide", 10), 1);
}

#[test]
fn fifty_concurrent_reserves_of_a_budget_that_fits_ten_admit_exactly_ten() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let client = state.client();
    let budget = limit("tokens", 1000);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = client.clone();
            let request = ReserveRequest {
                consumer: "acme:alice".to_owned(),
                budgets: vec![BudgetAmount {
                    budget: Some(budget.clone()),
                    amount: 100,
                }],
                ttl_ms: 60_000,
            };
            state.spawn(async move { client.reserve(request).await.map(|r| r.into_inner()) })
        })
        .collect();
    let answers: Vec<ReserveResponse> = state.block_on(async {
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.unwrap().unwrap());
        }
        out
    });
    let admitted: Vec<&ReserveResponse> = answers.iter().filter(|a| a.admitted).collect();
    assert_eq!(admitted.len(), 10);
    let mut ids: Vec<&str> = admitted.iter().map(|a| a.reservation_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "reservation ids are unique");
    assert!(answers
        .iter()
        .filter(|a| !a.admitted)
        .all(|a| a.reservation_id.is_empty() && a.retry_after_ms > 0));
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 1000);
}

#[test]
fn reserving_several_budgets_is_all_or_nothing() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let request = |amount: u64| ReserveRequest {
        consumer: "acme:alice".to_owned(),
        budgets: vec![
            BudgetAmount {
                budget: Some(limit("tokens", 1000)),
                amount,
            },
            BudgetAmount {
                budget: Some(limit("requests", 2)),
                amount: 1,
            },
        ],
        ttl_ms: 60_000,
    };
    assert!(
        state
            .block_on(client.reserve(request(900)))
            .unwrap()
            .into_inner()
            .admitted
    );
    let refused = state.block_on(client.reserve(request(200))).unwrap().into_inner();
    assert!(!refused.admitted);
    assert_eq!(
        refused.statuses.iter().map(|s| s.exceeded).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(usage(&redis, "acme:alice", "requests", 2), 1);
    assert!(
        state
            .block_on(client.reserve(request(100)))
            .unwrap()
            .into_inner()
            .admitted
    );
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 1000);
}

#[test]
fn settling_charges_the_reported_usage_with_refunds_and_overruns() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let budget = limit("tokens", 1000);
    let ids: Vec<String> = (0..3)
        .map(|_| reserve(&state, &mut client, &budget, 100, 60_000).reservation_id)
        .collect();
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 300);
    assert_eq!(settle(&state, &mut client, &ids[0], "tokens", -40), [true]);
    assert_eq!(settle(&state, &mut client, &ids[1], "tokens", 25), [true]);
    assert_eq!(settle(&state, &mut client, &ids[2], "tokens", 0), [true]);
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 60 + 125 + 100);
    // A settled reservation is gone: settling it again changes nothing.
    assert_eq!(settle(&state, &mut client, &ids[1], "tokens", 500), [false]);
    // A refund is at most what was reserved: usage never goes below zero.
    let id = reserve(&state, &mut client, &budget, 100, 60_000).reservation_id;
    assert_eq!(settle(&state, &mut client, &id, "tokens", -1000), [true]);
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 285);
    // An overrun is charged even past the limit, and then nothing more fits.
    let id = reserve(&state, &mut client, &budget, 700, 60_000).reservation_id;
    assert_eq!(settle(&state, &mut client, &id, "tokens", 100), [true]);
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 1085);
    let refused = reserve(&state, &mut client, &budget, 1, 60_000);
    assert!(!refused.admitted);
    assert_eq!(refused.statuses[0].remaining, 0);
}

#[test]
fn releasing_a_reservation_refunds_all_of_it() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let budget = limit("tokens", 1000);
    let id = reserve(&state, &mut client, &budget, 600, 60_000).reservation_id;
    assert!(!reserve(&state, &mut client, &budget, 600, 60_000).admitted);
    let release = ReleaseRequest {
        consumer: "acme:alice".to_owned(),
        reservation_id: id,
        budgets: vec!["tokens".to_owned()],
    };
    assert_eq!(
        state
            .block_on(client.release(release.clone()))
            .unwrap()
            .into_inner()
            .found,
        [true]
    );
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 0);
    assert_eq!(
        state.block_on(client.release(release)).unwrap().into_inner().found,
        [false]
    );
    assert!(reserve(&state, &mut client, &budget, 1000, 60_000).admitted);
}

#[test]
fn an_unsettled_reservation_is_reclaimed_after_its_ttl() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let budget = limit("tokens", 1000);
    let id = reserve(&state, &mut client, &budget, 1000, 1500).reservation_id;
    assert!(
        !reserve(&state, &mut client, &budget, 1, 60_000).admitted,
        "held while its TTL runs"
    );
    // The gateway that held it never comes back; after the TTL the next call gets it back.
    let reclaimed = eventually(Duration::from_secs(10), || {
        reserve(&state, &mut client, &budget, 1000, 60_000).admitted
    });
    assert!(reclaimed, "the reservation was never reclaimed");
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 1000);
    // Settling it late finds nothing and charges nothing.
    assert_eq!(settle(&state, &mut client, &id, "tokens", 0), [false]);
    assert_eq!(usage(&redis, "acme:alice", "tokens", 1000), 1000);
}

#[test]
fn leases_shrink_as_the_budget_runs_out_and_never_exceed_it() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let lease = |client: &mut StateClient<Channel>, wanted: u64| {
        let request = LeaseRequest {
            consumer: "acme:alice".to_owned(),
            budget: Some(limit("tokens", 100)),
            wanted,
        };
        state.block_on(client.lease(request)).unwrap().into_inner()
    };
    // Less than a quarter of what is left is granted in full.
    assert_eq!(lease(&mut client, 5).granted, 5);
    let mut grants = Vec::new();
    let mut left = 95;
    loop {
        let answer = lease(&mut client, 50);
        assert!(answer.granted <= left, "granted {} of {left}", answer.granted);
        left -= answer.granted;
        assert_eq!(answer.status.map(|s| s.remaining), Some(left));
        if answer.granted == 0 {
            break;
        }
        grants.push(answer.granted);
    }
    assert_eq!(grants, [23, 18, 13, 10, 7, 6, 4, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(usage(&redis, "acme:alice", "tokens", 100), 100);
}

#[test]
fn bad_requests_are_refused_with_a_code() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let hit = |consumer: &str, limits: Vec<Limit>| HitRequest {
        consumer: consumer.to_owned(),
        limits,
        cost: 1,
    };
    let cases = [
        (hit("alice", vec![limit("a", 1)]), "bad_consumer"),
        (hit("acme:alice", vec![]), "bad_request"),
        (hit("acme:alice", vec![limit("a", 1), limit("a", 2)]), "bad_request"),
        (hit("acme:alice", vec![limit("a", 0)]), "bad_limit"),
        (
            hit(
                "acme:alice",
                vec![Limit {
                    period_seconds: 0,
                    ..limit("a", 1)
                }],
            ),
            "bad_limit",
        ),
        (
            hit(
                "acme:alice",
                vec![Limit {
                    amount: 2_000_001,
                    period_seconds: 2,
                    ..limit("a", 1)
                }],
            ),
            "bad_limit",
        ),
        (
            hit(
                "acme:alice",
                vec![Limit {
                    burst: 2,
                    period_seconds: YEAR,
                    ..limit("a", 1)
                }],
            ),
            "bad_limit",
        ),
    ];
    for (request, code) in cases {
        let status = state.block_on(client.hit(request)).unwrap_err();
        assert_eq!(status.code(), GrpcCode::InvalidArgument);
        assert!(status.message().starts_with(code), "{}", status.message());
    }
}

const RLS_LIMITS: &str = "
domains:
  - domain: portico
    descriptors:
      - key: generic_key
        value: chat
        rate_limit: {unit: minute, requests_per_unit: 5, name: chat}
";

#[test]
fn the_rate_limit_service_api_counts_descriptors_in_redis() {
    let redis = RedisServer::start();
    let state = StateService::start(vec![redis.url()], false, TIMEOUT, Some(RLS_LIMITS));
    let mut rls = state.rls_client();
    let request = |key: &str, value: &str| RateLimitRequest {
        domain: "portico".to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: key.to_owned(),
                value: value.to_owned(),
            }],
            hits_addend: None,
        }],
        hits_addend: 0,
    };
    for n in 1..=5u32 {
        let answer = state
            .block_on(rls.should_rate_limit(request("generic_key", "chat")))
            .unwrap()
            .into_inner();
        assert_eq!(answer.overall_code, Code::Ok as i32, "call {n}");
        assert_eq!(answer.statuses[0].limit_remaining, 5 - n);
        let limit = answer.statuses[0].current_limit.clone().unwrap();
        assert_eq!((limit.name.as_str(), limit.requests_per_unit), ("chat", 5));
        let reset = answer.statuses[0].duration_until_reset.unwrap();
        assert!(reset.seconds <= 60);
    }
    let answer = state
        .block_on(rls.should_rate_limit(request("generic_key", "chat")))
        .unwrap()
        .into_inner();
    assert_eq!(answer.overall_code, Code::OverLimit as i32);
    assert_eq!(answer.statuses[0].code, Code::OverLimit as i32);
    // A descriptor no limit matches is not limited.
    let answer = state
        .block_on(rls.should_rate_limit(request("generic_key", "other")))
        .unwrap()
        .into_inner();
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(answer.statuses[0].current_limit, None);
}

#[test]
fn envoy_native_ratelimit_filter_gets_429_on_the_sixth_request_counted_in_redis() {
    let redis = RedisServer::start();
    let state = StateService::start(vec![redis.url()], false, TIMEOUT, Some(RLS_LIMITS));
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let config = EnvoyConfig::new(upstream.addr)
        .grpc_cluster("portico_state", state.addr)
        .route_rate_limits(json!([{"actions": [{"generic_key": {"descriptor_value": "chat"}}]}]))
        .native(json!({
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "portico",
                "failure_mode_deny": true,
                "timeout": "1s",
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limit_service": {
                    "grpc_service": {"envoy_grpc": {"cluster_name": "portico_state"}},
                    "transport_api_version": "V3"
                }
            }
        }));
    let gateway = Gateway::start(&config);
    for n in 1..=5 {
        let response = http::get("/v1/chat").send(gateway.addr);
        assert_eq!(response.status, 200, "request {n}: {}", response.text());
        assert_eq!(
            response.header("x-ratelimit-remaining"),
            Some((5 - n).to_string().as_str())
        );
    }
    let response = http::get("/v1/chat").send(gateway.addr);
    assert_eq!(response.status, 429, "{}", response.text());
    assert_eq!(response.header("x-envoy-ratelimited"), Some("true"));
    let [counter, _] = Tag::of_descriptor("portico", "generic_key", "chat").counter_keys("generic_key=chat");
    assert_eq!(units_held(|args| redis.cli(args), &counter, 5, 60), 5);
}

#[test]
fn a_redis_cluster_admits_exactly_the_limit_under_a_storm() {
    let cluster = RedisCluster::start();
    let state = StateService::start(cluster.urls(), true, TIMEOUT, None);
    // Several consumers, so the storm spreads over slots on different masters.
    let consumers = ["acme:alice", "acme:bob", "acme:carol", "other:alice"];
    for consumer in consumers {
        assert_eq!(
            hit_storm(&state, consumer, &limit("requests", 50), 200),
            50,
            "{consumer}"
        );
    }
    let masters: Vec<String> = consumers
        .iter()
        .map(|c| {
            let [counter, _] = Tag::of_consumer(c).unwrap().counter_keys("requests");
            assert_eq!(units_held(|args| cluster.cli(args), &counter, 50, YEAR), 50, "{c}");
            cluster.cli(&["CLUSTER", "KEYSLOT", &counter]).trim().to_owned()
        })
        .collect();
    let mut distinct = masters.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 1, "all consumers on one slot: {masters:?}");
}

#[test]
fn a_stopped_or_hung_redis_fails_calls_within_the_timeout_and_counting_resumes() {
    let mut redis = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let state = StateService::start(vec![redis.url()], false, timeout, None);
    let mut client = state.client();
    let hit = HitRequest {
        consumer: "acme:alice".to_owned(),
        limits: vec![limit("requests", 100)],
        cost: 1,
    };
    assert!(state.block_on(client.hit(hit.clone())).unwrap().into_inner().admitted);

    // Hung: connections stay open and nothing answers. Redis's own timeouts are seconds long.
    redis.pause(true);
    for _ in 0..3 {
        let started = Instant::now();
        let status = state.block_on(client.hit(hit.clone())).unwrap_err();
        let waited = started.elapsed();
        assert_eq!(status.code(), GrpcCode::Unavailable, "{status:?}");
        // Our timeout fired, not one of Redis's own (redis-rs waits 500 ms by default).
        assert_eq!(status.message(), "redis_timeout: redis did not answer within 100 ms");
        assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    }
    redis.pause(false);
    assert!(eventually(Duration::from_secs(10), || state
        .block_on(client.hit(hit.clone()))
        .is_ok()));
    // A call that timed out may still have reached Redis and counted (the hung Redis runs what
    // was queued when it wakes): a timeout is "unknown", never "not counted". The counter stays
    // exact about what Redis ran: the first hit, the timed-out ones it ran, the last one.
    let counted = usage(&redis, "acme:alice", "requests", 100);
    assert!((2..=5).contains(&counted), "{counted}");

    // Stopped: refused connections.
    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let status = state.block_on(client.hit(hit.clone())).unwrap_err();
        assert_eq!(status.code(), GrpcCode::Unavailable, "{status:?}");
        assert!(status.message().starts_with("redis_"), "{}", status.message());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?}",
            started.elapsed()
        );
    }
    // Back (empty, as a restarted Redis without persistence): counting resumes from zero.
    redis.restart();
    assert!(eventually(Duration::from_secs(10), || state
        .block_on(client.hit(hit.clone()))
        .is_ok()));
    assert_eq!(usage(&redis, "acme:alice", "requests", 100), 1);
}

#[test]
fn expired_reservations_are_reclaimed_at_most_256_per_call_and_all_in_the_end() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let mut client = state.client();
    let budget = limit("tokens", 300);
    for _ in 0..300 {
        assert!(reserve(&state, &mut client, &budget, 1, 1000).admitted);
    }
    // Wait, without calling the service (its calls sweep), until Redis's clock has passed the
    // last reservation's expiry.
    let [_, expiries] = Tag::of_consumer("acme:alice").unwrap().counter_keys("tokens");
    let all_expired = || {
        let last = redis.cli(&["ZRANGE", &expiries, "-1", "-1", "WITHSCORES"]);
        let last: f64 = last.split_whitespace().nth(1).unwrap().parse().unwrap();
        let time = redis.cli(&["TIME"]);
        let mut parts = time.split_whitespace().map(|p| p.parse::<f64>().unwrap());
        parts.next().unwrap() * 1e6 + parts.next().unwrap() > last
    };
    assert!(eventually(Duration::from_secs(10), all_expired));
    assert_eq!(usage(&redis, "acme:alice", "tokens", 300), 300);
    // One call gives back 256 of them (one script never runs long): not yet room for 300.
    assert!(!reserve(&state, &mut client, &budget, 300, 60_000).admitted);
    assert_eq!(usage(&redis, "acme:alice", "tokens", 300), 300 - 256);
    // The next call returns the rest.
    assert!(reserve(&state, &mut client, &budget, 300, 60_000).admitted);
    assert_eq!(usage(&redis, "acme:alice", "tokens", 300), 300);
}

// === gRPC calls from a filter (the host layer's dispatch, through portico-echo) ===

use portico_tests::envoy::Plugin;

/// The test filter `portico-echo` calling portico-state: `Hit` on limit `echo` from the
/// stream, and from the root for `settle_on_log`.
fn echo_state(cluster: &str, limit: u64, settle_on_log: bool) -> Plugin {
    Plugin::portico(
        "portico-echo",
        json!({"tag": "a", "state": {
            "cluster": cluster, "limit": limit, "period_seconds": YEAR,
            "timeout_ms": 1000, "settle_on_log": settle_on_log
        }}),
    )
}

#[test]
fn a_filter_pauses_on_portico_state_and_continues_or_refuses_from_its_answer() {
    let redis = RedisServer::start();
    let state = service(&redis);
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let config = EnvoyConfig::new(upstream.addr)
        .grpc_cluster("portico_state", state.addr)
        .plugin(&echo_state("portico_state", 3, false));
    let gateway = Gateway::start(&config);
    for remaining in [2, 1, 0] {
        let r = http::get("/").header("x-echo-consumer", "ann").send(gateway.addr);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.upstream_header("x-portico-echo-state").as_deref(),
            Some(format!("admitted remaining={remaining}").as_str()),
            "the answer's header change reaches the upstream"
        );
    }
    let r = http::get("/").header("x-echo-consumer", "ann").send(gateway.addr);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error_code(), "echo_limited");
    let r = http::get("/").header("x-echo-consumer", "bob").send(gateway.addr);
    assert_eq!(r.status, 200, "another consumer has its own count: {}", r.text());
    assert_eq!(usage(&redis, "echo:ann", "echo", 3), 3, "counted in Redis");
    assert_eq!(upstream.requests(), 4);
    gateway.assert_no_wasm_panic();
}

#[test]
fn a_filter_whose_state_service_is_down_answers_503_with_the_grpc_status() {
    // A port nothing listens on: Envoy fails the call (UNAVAILABLE) without waiting for the
    // timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let config = EnvoyConfig::new(upstream.addr)
        .grpc_cluster("portico_state", dead)
        .plugin(&echo_state("portico_state", 3, false));
    let gateway = Gateway::start(&config);
    let r = http::get("/").send(gateway.addr);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "echo_state_unavailable");
    assert!(r.text().contains("gRPC status 14"), "{}", r.text());
    // A cluster Envoy does not know: the dispatch itself is refused, answered at once.
    let config = EnvoyConfig::new(upstream.addr).plugin(&echo_state("no_such_cluster", 3, false));
    let gateway = Gateway::start(&config);
    let r = http::get("/").send(gateway.addr);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "echo_state_unavailable");
    assert_eq!(upstream.requests(), 0);
    gateway.assert_no_wasm_panic();
}

#[test]
fn a_settlement_handed_to_the_root_lands_even_when_the_client_went_away() {
    use std::io::Write;
    let redis = RedisServer::start();
    let state = service(&redis);
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let config = EnvoyConfig::new(upstream.addr)
        .grpc_cluster("portico_state", state.addr)
        .plugin(&echo_state("portico_state", 100, true));
    let gateway = Gateway::start(&config);
    let r = http::get("/").header("x-echo-consumer", "cy").send(gateway.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    // Two clients that hang up while the upstream is still answering: their streams end with
    // a reset, and Envoy destroys their contexts (with any call they made) right after log.
    for _ in 0..2 {
        let mut socket = std::net::TcpStream::connect(gateway.addr).unwrap();
        socket
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-echo-consumer: cy\r\nx-mock-delay-ms: 300\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(socket);
    }
    let landed = eventually(Duration::from_secs(10), || {
        usage(&redis, "echo:cy", "echo-log", 1_000_000) == 3
    });
    assert!(
        landed,
        "{} of 3 settlements in Redis",
        usage(&redis, "echo:cy", "echo-log", 1_000_000)
    );
    assert_eq!(
        gateway.metric("portico_echo_settled_total", &[]),
        3,
        "every answer reached the root"
    );
    gateway.assert_no_wasm_panic();
}
