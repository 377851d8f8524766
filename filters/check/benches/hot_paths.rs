//! The pure hot paths of every filter, timed natively: token checks, the rate-limit decision,
//! route matching, JSON translation and SSE translation throughput. A benchmark: it prints a
//! table and asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use jwt_simple::prelude::*;
use portico_core::request::RequestView;
use portico_core::shared::MemoryStore;
use serde_json::{json, Value};

/// Runs `f` for about half a second after a warm-up; returns nanoseconds per call.
fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f();
    }
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed().as_millis() < 500 {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn row(name: &str, ns: f64, extra: &str) {
    println!("| {name:<48} | {:>10.0} | {:>12.0} | {extra}", ns, 1e9 / ns);
}

fn view(pairs: &[(&str, &str)]) -> RequestView {
    RequestView::new(
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
    )
}

fn main() {
    println!("| hot path | ns / op | ops / s | |\n| --- | --- | --- | --- |");

    // === auth ===
    let secret = "bench-secret-of-at-least-32-bytes!!";
    let es = ES256KeyPair::generate().with_key_id("es");
    let config = |cache: u64| {
        let v = json!({"jwt": {"token_cache_entries": cache, "providers": [{"name": "p", "required_claims": [], "keys": [
            {"alg": "HS256", "kid": "hs", "secret": secret},
            {"alg": "ES256", "kid": "es", "pem": es.public_key().to_pem().unwrap()}
        ]}]}});
        Rc::new(portico_auth::config::Config::from_value(&v).unwrap())
    };
    let claims = || {
        let mut c = Claims::create(Duration::from_hours(1));
        c.subject = Some("bench".into());
        c
    };
    let hs = HS256Key::from_bytes(secret.as_bytes())
        .with_key_id("hs")
        .authenticate(claims())
        .unwrap();
    let es_token = es.sign(claims()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (name, token, cache) in [
        ("auth: HS256 token, no cache", &hs, 0),
        ("auth: ES256 token, no cache", &es_token, 0),
        ("auth: ES256 token, cached", &es_token, 16),
    ] {
        let mut a = portico_auth::authn::Authenticator::new(config(cache));
        let req = view(&[
            (":method", "GET"),
            (":path", "/x"),
            ("authorization", &format!("Bearer {token}")),
        ]);
        row(name, time(|| drop(black_box(a.decide(&req, now)))), "");
    }

    // === rate-limit ===
    // The largest budget the config accepts (a million per second of the period): the clock
    // below advances a nanosecond a call, so the rule never limits and every call updates.
    let rl = portico_rate_limit::config::Config::from_value(&json!({"rules": [
        {"name": "r", "key": ["consumer"], "limit": {"requests": 1_000_000_000u64, "period_seconds": 1000}}]}))
    .unwrap();
    let store = MemoryStore::default();
    let req = view(&[(":method", "GET"), (":path", "/x"), ("x-portico-consumer", "c")]);
    let mut t = 1_700_000_000_000_000_000u64;
    row(
        "rate-limit: one rule, CAS update (memory store)",
        time(|| {
            t += 1;
            let r = portico_rate_limit::plan::Request {
                view: &req,
                client_ip: None,
                body_bytes: None,
                max_tokens: None,
            };
            black_box(portico_rate_limit::plan::admit(&rl, &store, &[1; 32], &r, t));
        }),
        "",
    );

    // === header-routing ===
    let mut routes: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("r{i}"), "match": {"path": format!("/svc{i}/{{*rest}}")}, "backend": "a"}))
        .collect();
    routes.push(json!({"name": "ab", "match": {"path": "/ab/{id}", "headers": [{"name": "x-v", "present": true}]},
        "split": {"by": "consumer", "variants": [{"name": "a", "backend": "a", "weight": 1}, {"name": "b", "backend": "a", "weight": 1}]}}));
    let hr = portico_header_routing::config::Config::from_value(
        &json!({"backends": [{"name": "a", "cluster": "a"}], "routes": routes}),
    )
    .unwrap();
    let req = view(&[
        (":method", "GET"),
        (":path", "/ab/7"),
        ("x-v", "1"),
        ("x-portico-consumer", "c"),
    ]);
    row(
        "header-routing: 21 routes, sticky split",
        time(|| {
            drop(black_box(portico_header_routing::decide::decide(
                &hr,
                &portico_header_routing::decide::Inputs {
                    view: &req,
                    model: None,
                    json_error: false,
                },
            )))
        }),
        "",
    );

    // === body-transform ===
    let openai = json!({"model": "m", "max_tokens": 256, "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, how are you today? ".repeat(20)}]});
    let request_bytes = openai.to_string().len();
    let ns = time(|| {
        let v: Value = serde_json::from_slice(openai.to_string().as_bytes()).unwrap();
        black_box(portico_body_transform::translate::request::openai_to_anthropic(&v, 1024).unwrap());
    });
    row(
        "body-transform: OpenAI request -> Anthropic",
        ns,
        &format!("{:.0} MB/s", request_bytes as f64 / ns * 1e3),
    );
    let msg = json!({"id": "m", "model": "c", "content": [{"type": "text", "text": "word ".repeat(100)}], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 100}});
    row(
        "body-transform: Anthropic response -> OpenAI",
        time(|| {
            drop(black_box(
                portico_body_transform::translate::response::anthropic_to_openai(&msg, 1),
            ))
        }),
        "",
    );

    let mut stream = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":5}}}\n\n");
    for i in 0..5000 {
        stream.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token{i} \"}}}}\n\n"));
    }
    stream.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let bytes = stream.as_bytes();
    let ns = time(|| {
        let mut t = portico_body_transform::translate::stream::AnthropicToOpenAi::new(1, true);
        for chunk in bytes.chunks(4096) {
            black_box(t.push(chunk));
        }
    });
    row(
        "body-transform: SSE stream, 5000 events",
        ns,
        &format!("{:.0} MB/s", bytes.len() as f64 / ns * 1e3),
    );
}
