//! Tenant isolation through a real Envoy with the whole chain (auth, json_to_metadata,
//! rate-limit, header-routing, cache): two JWT providers that issue the same `sub`, and a
//! token's `alice` beside an API key's `alice`, are different consumers to every filter that
//! keys on the consumer, unless the operator maps them into one namespace on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::thread;
use std::time::Duration;

use portico_tests::envoy::{eventually, json_to_metadata, EnvoyConfig, Gateway};
use portico_tests::http::{get, Request, Response};
use portico_tests::tokens::{hs256_with_secret, now};
use portico_tests::upstream::Upstream;
use serde_json::{json, Value};

const CORP_SECRET: &str = "corp-idp-hmac-secret-of-32-bytes";
const PARTNER_SECRET: &str = "partner-idp-hmac-secret-32-bytes";
const ALICE_KEY: &str = "alice-api-key-0123456789";
const CHAT: &str = "/v1/chat/completions";
/// Requests to /hello per consumer per hour, and tokens per consumer per hour.
const REQUESTS: usize = 2;
const TOKENS: u64 = 1000;

fn sha256_hex(key: &str) -> String {
    hmac_sha256::Hash::hash(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The auth configuration: providers `corp` and `partner`, and API keys. With `shared`, the
/// partner's tokens and the API keys are mapped into corp's namespace.
fn auth_config(shared: bool) -> Value {
    let provider = |name: &str, secret: &str| {
        json!({"name": name, "issuers": [format!("https://{name}.test")], "default_tier": "free",
               "keys": [{"alg": "HS256", "kid": "k", "secret": secret}]})
    };
    let mut partner = provider("partner", PARTNER_SECRET);
    let mut api_keys =
        json!({"consumers": [{"name": "alice", "tier": "free", "keys": [{"sha256": sha256_hex(ALICE_KEY)}]}]});
    if shared {
        partner["consumer_namespace"] = json!("corp");
        api_keys["namespace"] = json!("corp");
    }
    json!({
        "jwt": {"providers": [provider("corp", CORP_SECRET), partner]},
        "api_keys": api_keys,
        "default": {"auth": "any"}
    })
}

fn gateway(shared: bool) -> (Gateway, Upstream, Upstream) {
    let upstream = Upstream::start("127.0.0.1:0").unwrap();
    let other = Upstream::start_named("127.0.0.1:0", "other").unwrap();
    let rate_limit = json!({
        "per_consumer_metrics": true,
        "rules": [{"name": "per_consumer", "match": {"path": "/hello"}, "key": ["consumer"],
                   "limit": {"requests": REQUESTS, "period_seconds": 3600}}],
        "token_quotas": [{"name": "llm", "match": {"path": "/v1/{*rest}"}, "key": ["consumer"], "default_max_tokens": 256,
                          "budgets": [{"tokens": TOKENS, "period_seconds": 3600}]}]
    });
    let header_routing = json!({
        "per_consumer_metrics": true,
        "backends": [
            {"name": "a", "cluster": "upstream"},
            {"name": "b", "cluster": "other"},
            {"name": "openai", "cluster": "upstream", "format": "openai"}
        ],
        "routes": [
            {"name": "ab", "match": {"path": "/ab"}, "split": {"by": "consumer", "variants": [
                {"name": "control", "backend": "a", "weight": 50}, {"name": "treatment", "backend": "b", "weight": 50}]}},
            {"name": "chat", "match": {"path": CHAT, "methods": ["POST"]}, "models": {"aliases": {"gpt-test": {"backend": "openai"}}}},
            {"name": "default", "backend": "a"}
        ]
    });
    let cache = json!({"routes": [{"name": "chat", "match": {"path": CHAT, "methods": ["POST"]},
                                   "ttl_seconds": 300, "scope": "consumer"}]});
    let envoy = EnvoyConfig::new(upstream.addr)
        .route_by_header("x-portico-cluster")
        .cluster("other", other.addr)
        .wasm("auth", &auth_config(shared))
        .native(json_to_metadata(&["model", "max_tokens", "stream"]))
        .wasm("rate-limit", &rate_limit)
        .wasm("header-routing", &header_routing)
        .wasm("cache", &cache);
    (Gateway::start(&envoy), upstream, other)
}

/// One caller: how it authenticates, and the consumer id auth should give it.
#[derive(Debug, Clone)]
struct Caller {
    credential: (&'static str, String),
    id: String,
}

impl Caller {
    fn jwt(provider: &str, sub: &str, namespace: &str) -> Caller {
        let secret = if provider == "corp" {
            CORP_SECRET
        } else {
            PARTNER_SECRET
        };
        let claims = json!({"iss": format!("https://{provider}.test"), "sub": sub, "exp": now() + 3600});
        let token = hs256_with_secret(secret.as_bytes(), "k", &claims);
        Caller {
            credential: ("authorization", format!("Bearer {token}")),
            id: format!("{namespace}:{sub}"),
        }
    }

    fn key(namespace: &str) -> Caller {
        Caller {
            credential: ("x-api-key", ALICE_KEY.to_owned()),
            id: format!("{namespace}:alice"),
        }
    }

    fn on(&self, request: Request) -> Request {
        request.header(self.credential.0, &self.credential.1)
    }

    /// A chat request asking `question`, reserving `max_tokens`, answered with `usage`.
    fn chat(&self, question: &str, max_tokens: u64, usage: &str) -> Request {
        let body = json!({"model": "gpt-test", "temperature": 0, "max_tokens": max_tokens,
                          "messages": [{"role": "user", "content": question}]});
        self.on(Request::new("POST", CHAT))
            .header("content-type", "application/json")
            .header("x-mock-usage", usage)
            .body(body.to_string())
    }
}

fn cache_status(r: &Response) -> &str {
    r.header("x-portico-cache").unwrap_or("(none)")
}

/// Runs every consumer-keyed behaviour for `a` then `b`; `shared`: whether they are one
/// consumer (one namespace) or two. `tag` keeps each pair's questions apart.
fn check_pair(gw: &Gateway, a: &Caller, b: &Caller, shared: bool, tag: &str) {
    let who = format!("{} and {}", a.id, b.id);
    assert_eq!(a.id == b.id, shared, "{who}");
    let hello = |c: &Caller| c.on(get("/hello")).send(gw.addr);

    // Identity as the upstream sees it.
    let r = hello(a);
    assert_eq!(r.status, 200, "{who}: {}", r.text());
    assert_eq!(r.upstream_header("x-portico-consumer").as_deref(), Some(a.id.as_str()));

    // Request limit: `a` spends its limit; `b` has its own, unless they are one consumer.
    for _ in 1..REQUESTS {
        assert_eq!(hello(a).status, 200, "{who}");
    }
    assert_eq!(hello(a).status, 429, "{who}: a's limit is spent");
    let r = hello(b);
    if shared {
        assert_eq!(r.status, 429, "{who}: one consumer, one limit");
    } else {
        assert_eq!(r.status, 200, "{who}: b was refused on a's request count: {}", r.text());
        assert_eq!(r.upstream_header("x-portico-consumer").as_deref(), Some(b.id.as_str()));
    }

    // Cache scope `consumer`: b never gets a's stored answer, unless they are one consumer.
    let question = format!("{tag}: what is 2+2?");
    let miss = a.chat(&question, 10, "5,5").send(gw.addr);
    assert_eq!(miss.status, 200, "{who}: {}", miss.text());
    assert_eq!(cache_status(&miss), "MISS", "{who}");
    let r = b.chat(&question, 10, "5,5").send(gw.addr);
    assert_eq!(r.status, 200, "{who}: {}", r.text());
    assert_eq!(cache_status(&r), if shared { "HIT" } else { "MISS" }, "{who}");
    thread::sleep(Duration::from_millis(200));

    // Token budget: a spends nearly all of it; b has its own, unless they are one consumer.
    let big = a.chat(&format!("{tag}: a long answer"), 900, "10,975").send(gw.addr);
    assert_eq!(big.status, 200, "{who}: {}", big.text());
    thread::sleep(Duration::from_millis(200));
    let r = a.chat(&format!("{tag}: one more"), 50, "1,1").send(gw.addr);
    assert_eq!(r.status, 429, "{who}: a's budget is spent: {}", r.text());
    assert_eq!(r.error_code(), "token_quota_exceeded");
    let r = b.chat(&format!("{tag}: b's turn"), 50, "1,1").send(gw.addr);
    if shared {
        assert_eq!(r.status, 429, "{who}: one consumer, one budget");
    } else {
        assert_eq!(r.status, 200, "{who}: b was refused on a's tokens: {}", r.text());
    }

    // Per-consumer series: one per consumer id.
    let (a_tokens, b_tokens) = if shared { (980, 0) } else { (980, 6) };
    let counted = || {
        let tokens = |id: &str| {
            gw.metric(
                "portico_consumer_tokens_total",
                &[("consumer", id), ("kind", "completion")],
            )
        };
        let requests = |id: &str| gw.metric("portico_consumer_requests_total", &[("consumer", id)]);
        let separate_requests = shared || requests(&b.id) > 0;
        tokens(&a.id) == a_tokens && (shared || tokens(&b.id) == b_tokens) && requests(&a.id) > 0 && separate_requests
    };
    assert!(
        eventually(Duration::from_secs(3), counted),
        "{who}: per-consumer series:\n{}",
        gw.prometheus()
            .lines()
            .filter(|l| l.starts_with("portico_consumer_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Sticky splits by consumer hash the consumer id: the same `sub` from two providers lands
/// in variants independently (with a 50/50 split, 24 subs all agreeing by chance is 1 in
/// 2^24); in one namespace it is one consumer and always agrees.
fn check_split(gw: &Gateway, shared: bool) {
    let partner_namespace = if shared { "corp" } else { "partner" };
    let variant = |c: &Caller| {
        let r = c.on(get("/ab")).send(gw.addr);
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-portico-variant").unwrap().to_owned()
    };
    let differing = (0..24)
        .filter(|i| {
            let sub = format!("split-{i}");
            variant(&Caller::jwt("corp", &sub, "corp")) != variant(&Caller::jwt("partner", &sub, partner_namespace))
        })
        .count();
    if shared {
        assert_eq!(differing, 0, "one consumer, one variant");
    } else {
        assert!(differing > 0, "the partner's users follow corp's users' variants");
    }
}

#[test]
fn the_same_name_from_two_providers_or_a_token_and_a_key_is_two_tenants_in_every_filter() {
    let (gw, _upstream, _other) = gateway(false);
    check_pair(
        &gw,
        &Caller::jwt("corp", "user-1001", "corp"),
        &Caller::jwt("partner", "user-1001", "partner"),
        false,
        "providers",
    );
    check_pair(
        &gw,
        &Caller::jwt("corp", "alice", "corp"),
        &Caller::key("apikey"),
        false,
        "token and key",
    );
    check_split(&gw, false);
    gw.assert_no_wasm_panic();
}

#[test]
fn a_namespace_shared_on_purpose_is_one_tenant_in_every_filter() {
    let (gw, _upstream, _other) = gateway(true);
    check_pair(
        &gw,
        &Caller::jwt("corp", "user-1001", "corp"),
        &Caller::jwt("partner", "user-1001", "corp"),
        true,
        "providers",
    );
    check_pair(
        &gw,
        &Caller::jwt("corp", "alice", "corp"),
        &Caller::key("corp"),
        true,
        "token and key",
    );
    check_split(&gw, true);
    gw.assert_no_wasm_panic();
}
