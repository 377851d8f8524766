//! `make bench`: Portico against plain Envoy and Envoy's native filters, side by side.
//!
//! Every configuration runs in interleaved order (so drift hits all of them alike), several
//! repetitions each, with `wrk` driving 32 connections. Two setups: Envoy with one worker pinned
//! to CPU 0 (load and upstream on CPU 1: the cleanest cost per request), and two workers
//! unpinned. It prints one table and writes it, with the machine, to docs/BENCHMARKS.md and the
//! raw numbers to docs/bench.json (scripts/bench-chart.py draws docs/bench.png from them).
//! `BENCH_QUICK=1` runs one short repetition. This is a benchmark: it asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Instant;

use portico_tests::envoy::{json_to_metadata, root, wasm_path, EnvoyConfig, Gateway, Launch, Plugin};
use portico_tests::tokens::{claims, signers, AUDIENCE, ISSUER};
use portico_tests::upstream::{Mode, Upstream};
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    config: EnvoyConfig,
    /// A wrk Lua script (requests that vary or have bodies), else a GET with `headers`.
    script: Option<String>,
    headers: Vec<String>,
    path: &'static str,
}

#[derive(Clone, serde::Serialize)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mb: f64,
}

#[derive(serde::Serialize)]
struct Row {
    case: String,
    concurrency: u32,
    runs: Vec<Run>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(text: &str) -> f64 {
    let (num, unit) = text
        .trim()
        .split_at(text.trim().find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => n,
    }
}

fn wrk(addr: SocketAddr, case: &Case, seconds: u64, dir: &std::path::Path) -> (f64, f64, f64) {
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        "-c32",
        &format!("-d{seconds}s"),
        "--latency",
        "--timeout",
        "5s",
    ]);
    for h in &case.headers {
        cmd.args(["-H", h]);
    }
    if let Some(script) = &case.script {
        let path = dir.join(format!("{}.lua", case.name.replace(' ', "_")));
        std::fs::write(&path, script).unwrap();
        cmd.arg("-s").arg(path);
    }
    cmd.arg(format!("http://{addr}{}", case.path));
    let out = cmd.output().expect("wrk (make bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map_or(0.0, |v| v.trim().parse().unwrap_or(0.0));
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(ms))
            .unwrap_or(f64::NAN)
    };
    let non2xx = text.lines().any(|l| l.contains("Non-2xx"));
    if non2xx || rps == 0.0 {
        eprintln!("warning: {} had errors:\n{text}", case.name);
    }
    (rps, pct("50%"), pct("99%"))
}

fn wasm(name: &'static str, config: Value) -> impl Fn(EnvoyConfig) -> EnvoyConfig {
    move |c: EnvoyConfig| c.wasm(name, &config)
}

fn auth_config(jwks: &Value) -> Value {
    json!({"jwt": {"providers": [{"name": "p", "issuers": [ISSUER], "audiences": [AUDIENCE], "jwks": jwks}]}})
}

fn native_jwt(jwks: &Value, cache: bool) -> Value {
    let mut provider = json!({"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline_string": jwks.to_string()}, "forward": true});
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
    }
    json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"p": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}})
}

fn native_ratelimit() -> Value {
    let all = json!({"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl"});
    json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench",
        "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
        "filter_enabled": all, "filter_enforced": all}})
}

/// Time to first body byte and to the end, for one streamed request.
fn stream_timing(addr: SocketAddr, request: &[u8]) -> (f64, f64) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(request).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut seen = Vec::new();
    let mut first = None;
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if first.is_none() {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                if seen.len() > end + 4 {
                    first = Some(start.elapsed());
                }
            }
        }
        if seen.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    let total = start.elapsed();
    (
        first.unwrap_or(total).as_secs_f64() * 1000.0,
        total.as_secs_f64() * 1000.0,
    )
}

/// `BENCH_PROFILE=<part of a case name>`: each matching case on one pinned worker under wrk,
/// with `perf record -g` attached to Envoy for the run, and `perf report` by DSO and symbol
/// written beside the recording. Measures nothing; for finding where the time goes.
fn profile(cases: &[Case], wanted: &str, dir: &std::path::Path) {
    let seconds: u64 = std::env::var("BENCH_PROFILE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let launch = Launch {
        concurrency: 1,
        cpus: Some("0".into()),
    };
    for case in cases.iter().filter(|c| c.name.contains(wanted)) {
        let text = serde_json::to_string(&case.config.render()).unwrap();
        let gw = Gateway::try_start_with(&text, &launch).unwrap_or_else(|f| panic!("{}: {}", case.name, f.log));
        let _ = wrk(gw.addr, case, 2, dir);
        let data = dir.join(format!("{}.perf.data", case.name.replace([' ', ',', '+', '>'], "_")));
        let mut perf = Command::new("perf")
            .args(["record", "-g", "-q", "-o"])
            .arg(&data)
            .args(["-p", &gw.pid().to_string(), "--", "sleep", &seconds.to_string()])
            .spawn()
            .expect("perf");
        let (rps, p50, _) = wrk(gw.addr, case, seconds, dir);
        let _ = perf.wait();
        let report = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--sort",
                "dso,sym",
                "--stdio",
                "-g",
                "none",
                "-i",
            ])
            .arg(&data)
            .output()
            .expect("perf report");
        let path = data.with_extension("txt");
        std::fs::write(&path, &report.stdout).unwrap();
        eprintln!(
            "{}: {rps:.0} rps, p50 {p50:.2} ms; report in {}",
            case.name,
            path.display()
        );
    }
}

/// The size of `module` after `wasm-opt -Oz` with the flags `scripts/build` uses, and whether
/// wasm-opt ran (without it, the size as built).
fn optimised_size(module: &std::path::Path, dir: &std::path::Path) -> (u64, bool) {
    let out = dir.join("portico.opt.wasm");
    let ran = Command::new("wasm-opt")
        .args([
            "-Oz",
            "--enable-bulk-memory",
            "--enable-sign-ext",
            "--enable-nontrapping-float-to-int",
            "--enable-mutable-globals",
        ])
        .arg(module)
        .arg("-o")
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    let measured = if ran { out.as_path() } else { module };
    (std::fs::metadata(measured).map_or(0, |m| m.len()), ran)
}

fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let (reps, seconds) = if quick { (1, 2) } else { (3, 5) };
    let dir = std::env::temp_dir().join(format!("portico-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let upstream = Upstream::start_with("127.0.0.1:0", "bench", Mode::Model).unwrap();
    let s = signers();
    let mut es_jwk: Value = serde_json::from_str(&s.es256.public_key().to_jwk()).unwrap();
    es_jwk["kid"] = json!("es256");
    let es_jwks = json!({"keys": [es_jwk]});
    let es_token = s.sign("ES256", &claims("bench", json!({"exp": 4_102_444_800u64})));
    let hs_token = s.sign("HS256", &claims("bench", json!({"exp": 4_102_444_800u64})));
    let bearer = |t: &str| vec![format!("authorization: Bearer {t}")];
    let pool: Vec<String> = (0..2000)
        .map(|i| s.sign("ES256", &claims(&format!("u{i}"), json!({"exp": 4_102_444_800u64}))))
        .collect();
    let pool_script = format!(
        "tokens = {{{}}}\ni = 0\nrequest = function()\n  i = i % #tokens + 1\n  return wrk.format(\"GET\", \"/hello\", {{[\"authorization\"] = \"Bearer \" .. tokens[i]}})\nend\n",
        pool.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(",")
    );
    let chat_body =
        json!({"model": "fast", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello there"}]})
            .to_string();
    let chat_script = format!(
        "wrk.method = \"POST\"\nwrk.body = '{chat_body}'\nwrk.headers[\"content-type\"] = \"application/json\"\nwrk.headers[\"authorization\"] = \"Bearer {es_token}\"\n"
    );

    let base = || EnvoyConfig::new(upstream.addr);
    let rate_limit_config = json!({"rules": [{"name": "per_consumer", "key": ["consumer"], "limit": {"requests": 1_000_000u64, "period_seconds": 1}}]});
    let rate_limit = wasm("rate-limit", rate_limit_config.clone());
    let auth_es = wasm("auth", auth_config(&es_jwks));
    let routing = json!({"backends": [{"name": "up", "cluster": "upstream"}, {"name": "model", "cluster": "upstream", "format": "anthropic"}],
        "routes": [{"name": "chat", "match": {"path": "/v1/chat/completions"}, "models": {"aliases": {"fast": {"backend": "model", "model": "claude-bench"}}}},
                   {"name": "all", "backend": "up"}]});
    let translate = json!({"routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]});
    let chain = |c: EnvoyConfig| {
        rate_limit(auth_es(c).native(json_to_metadata(&["model", "max_tokens", "stream"])))
            .wasm("header-routing", &routing)
            .wasm("body-transform", &translate)
            .route_by_header("x-portico-cluster")
    };
    // The same four filters as the stages of one plugin entry (issue 14's alternative): the
    // native json_to_metadata cannot sit between them, so it goes first.
    let stages = Plugin::portico(
        "portico-stages",
        json!({"stages": [
            {"filter": "portico-auth", "config": auth_config(&es_jwks)},
            {"filter": "portico-rate-limit", "config": rate_limit_config},
            {"filter": "portico-header-routing", "config": routing},
            {"filter": "portico-body-transform", "config": translate},
        ]}),
    );
    let stages_chain = |c: EnvoyConfig| {
        c.native(json_to_metadata(&["model", "max_tokens", "stream"]))
            .plugin(&stages)
            .route_by_header("x-portico-cluster")
    };
    let cases = vec![
        Case {
            name: "plain Envoy",
            config: base(),
            script: None,
            headers: vec![],
            path: "/hello",
        },
        Case {
            name: "native jwt_authn ES256 + local_ratelimit",
            config: base().native(native_jwt(&es_jwks, false)).native(native_ratelimit()),
            script: None,
            headers: bearer(&es_token),
            path: "/hello",
        },
        Case {
            name: "native jwt_authn ES256 (cache) + local_ratelimit",
            config: base().native(native_jwt(&es_jwks, true)).native(native_ratelimit()),
            script: None,
            headers: bearer(&es_token),
            path: "/hello",
        },
        Case {
            name: "Portico auth HS256",
            config: wasm("auth", auth_config(&s.jwks()))(base()),
            script: None,
            headers: bearer(&hs_token),
            path: "/hello",
        },
        Case {
            name: "Portico auth ES256, reused token",
            config: auth_es(base()),
            script: None,
            headers: bearer(&es_token),
            path: "/hello",
        },
        Case {
            name: "Portico auth ES256, fresh tokens",
            config: auth_es(base()),
            script: Some(pool_script),
            headers: vec![],
            path: "/hello",
        },
        Case {
            name: "Portico rate-limit alone",
            config: rate_limit(base()),
            script: None,
            headers: vec![],
            path: "/hello",
        },
        Case {
            name: "Portico header-routing alone",
            config: base()
                .wasm("header-routing", &routing)
                .route_by_header("x-portico-cluster"),
            script: None,
            headers: vec![],
            path: "/hello",
        },
        Case {
            name: "Portico body-transform alone",
            config: base().wasm(
                "body-transform",
                &json!({"routes": [{"match": {"path": "/v1/{*rest}"}, "translate": "auto"}]}),
            ),
            script: None,
            headers: vec![],
            path: "/hello",
        },
        Case {
            name: "Portico auth + rate-limit",
            config: rate_limit(auth_es(base())),
            script: None,
            headers: bearer(&es_token),
            path: "/hello",
        },
        Case {
            name: "Portico full chain, plain route",
            config: chain(base()),
            script: None,
            headers: bearer(&es_token),
            path: "/hello",
        },
        Case {
            name: "Portico full chain as stages in one entry, plain route",
            config: stages_chain(base()),
            script: None,
            headers: bearer(&es_token),
            path: "/hello",
        },
        Case {
            name: "Portico model route, OpenAI->Anthropic",
            config: chain(base()),
            script: Some(chat_script.clone()),
            headers: vec![],
            path: "/v1/chat/completions",
        },
        Case {
            name: "Portico model route, cache hits",
            config: chain(base()).wasm(
                "cache",
                &json!({"routes": [{"name": "models", "match": {"path": "/v1/{*rest}", "methods": ["POST"]}, "ttl_seconds": 3600}]}),
            ),
            script: Some(chat_script),
            headers: vec![],
            path: "/v1/chat/completions",
        },
    ];

    if let Ok(wanted) = std::env::var("BENCH_PROFILE") {
        profile(&cases, &wanted, &dir);
        return;
    }

    let setups = [
        Launch {
            concurrency: 1,
            cpus: Some("0".into()),
        },
        Launch {
            concurrency: 2,
            cpus: None,
        },
    ];
    let mut rows: Vec<Row> = Vec::new();
    for launch in &setups {
        for case in &cases {
            rows.push(Row {
                case: case.name.to_owned(),
                concurrency: launch.concurrency,
                runs: Vec::new(),
            });
        }
    }
    for rep in 0..reps {
        for (si, launch) in setups.iter().enumerate() {
            for (ci, case) in cases.iter().enumerate() {
                let text = serde_json::to_string(&case.config.render()).unwrap();
                let gw = Gateway::try_start_with(&text, launch).unwrap_or_else(|f| panic!("{}: {}", case.name, f.log));
                // Warm up (JIT, pools, caches), then measure.
                let _ = wrk(
                    gw.addr,
                    &Case {
                        name: "warmup",
                        config: base(),
                        script: case.script.clone(),
                        headers: case.headers.clone(),
                        path: case.path,
                    },
                    1,
                    &dir,
                );
                let (rps, p50, p99) = wrk(gw.addr, case, seconds, &dir);
                let rss = gw.rss_kib() as f64 / 1024.0;
                eprintln!(
                    "rep {} c{} {:<52} {:>9.0} rps  p50 {:>6.2} ms  p99 {:>6.2} ms  rss {:>5.1} MB",
                    rep + 1,
                    launch.concurrency,
                    case.name,
                    rps,
                    p50,
                    p99,
                    rss
                );
                rows[si * cases.len() + ci].runs.push(Run {
                    rps,
                    p50_ms: p50,
                    p99_ms: p99,
                    rss_mb: rss,
                });
            }
        }
    }

    // Streaming: time to first byte and total for a 50-event stream, translated or not.
    let stream_req = |path: &str, body: &Value| {
        let body = body.to_string();
        format!(
            "POST {path} HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\nauthorization: Bearer {es_token}\r\nx-mock-events: 50\r\nx-mock-gap-ms: 2\r\nx-mock-usage: 10,50\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let translated = stream_req(
        "/v1/chat/completions",
        &json!({"model": "fast", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let native = stream_req(
        "/v1/messages",
        &json!({"model": "fast", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let mut routing_anthropic = routing.clone();
    routing_anthropic["routes"].as_array_mut().unwrap().insert(0, json!({"name": "messages", "match": {"path": "/v1/messages"}, "models": {"aliases": {"fast": {"backend": "model", "model": "claude-bench"}}}}));
    let stream_cfg = rate_limit(auth_es(base()).native(json_to_metadata(&["model", "max_tokens", "stream"])))
        .wasm("header-routing", &routing_anthropic)
        .wasm("body-transform", &translate)
        .route_by_header("x-portico-cluster");
    let gw = Gateway::try_start_with(&serde_json::to_string(&stream_cfg.render()).unwrap(), &setups[0])
        .unwrap_or_else(|f| panic!("{}", f.log));
    let samples = if quick { 20 } else { 100 };
    let timing = |req: &[u8]| {
        let _ = stream_timing(gw.addr, req);
        let runs: Vec<(f64, f64)> = (0..samples).map(|_| stream_timing(gw.addr, req)).collect();
        (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        )
    };
    let (ttfb_translated, total_translated) = timing(&translated);
    let (ttfb_native, total_native) = timing(&native);
    drop(gw);

    // The table.
    let baseline = |conc: u32| {
        rows.iter()
            .find(|r| r.concurrency == conc && r.case == "plain Envoy")
            .map_or(1.0, |r| median(r.runs.iter().map(|x| x.rps).collect()))
    };
    let mut table = String::new();
    writeln!(
        table,
        "| configuration | workers | req/s median [min – max] | p50 ms | p99 ms | vs plain | RSS MB |"
    )
    .unwrap();
    writeln!(table, "| --- | --- | --- | --- | --- | --- | --- |").unwrap();
    for r in &rows {
        let rps: Vec<f64> = r.runs.iter().map(|x| x.rps).collect();
        let (lo, hi) = (
            rps.iter().cloned().fold(f64::MAX, f64::min),
            rps.iter().cloned().fold(0.0, f64::max),
        );
        let m = median(rps);
        writeln!(
            table,
            "| {} | {}{} | {:.0} [{:.0} – {:.0}] | {:.2} | {:.2} | {:.2} | {:.1} |",
            r.case,
            r.concurrency,
            if r.concurrency == 1 { " (pinned)" } else { "" },
            m,
            lo,
            hi,
            median(r.runs.iter().map(|x| x.p50_ms).collect()),
            median(r.runs.iter().map(|x| x.p99_ms).collect()),
            m / baseline(r.concurrency),
            median(r.runs.iter().map(|x| x.rss_mb).collect()),
        )
        .unwrap();
    }
    let mut sizes = String::new();
    for f in [
        "portico",
        "auth",
        "rate-limit",
        "header-routing",
        "body-transform",
        "cache",
    ] {
        let bytes = std::fs::metadata(wasm_path(f)).map(|m| m.len()).unwrap_or(0);
        writeln!(sizes, "| {f}.wasm | {} KB |", bytes / 1024).unwrap();
    }
    let (portico_size, optimised) = optimised_size(&wasm_path("portico"), &dir);
    let stream = format!(
        "| 50-event stream | time to first byte ms | total ms |\n| --- | --- | --- |\n| Anthropic client, Anthropic backend (no translation) | {ttfb_native:.2} | {total_native:.1} |\n| OpenAI client, Anthropic backend (translated) | {ttfb_translated:.2} | {total_translated:.1} |\n| added by translation | {:.2} | {:.1} |\n",
        ttfb_translated - ttfb_native,
        total_translated - total_native
    );
    // The targets of the benchmark issue, each met or missed.
    let rps_of = |case: &str, conc: u32| {
        rows.iter()
            .find(|r| r.case == case && r.concurrency == conc)
            .map_or(0.0, |r| median(r.runs.iter().map(|x| x.rps).collect()))
    };
    let rss_of = |case: &str, conc: u32| {
        rows.iter()
            .find(|r| r.case == case && r.concurrency == conc)
            .map_or(0.0, |r| median(r.runs.iter().map(|x| x.rss_mb).collect()))
    };
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut targets = String::from("| target (issue 14) | measured | |\n| --- | --- | --- |\n");
    let native = "native jwt_authn ES256 (cache) + local_ratelimit";
    for conc in [1, 2] {
        let workers = if conc == 1 { "1 pinned worker" } else { "2 workers" };
        for full in [
            "Portico full chain, plain route",
            "Portico full chain as stages in one entry, plain route",
        ] {
            let (ours, theirs) = (rps_of(full, conc), rps_of(native, conc));
            writeln!(
                targets,
                "| {full} (reused ES256) >= {native}, {workers} | {ours:.0} vs {theirs:.0} req/s | {} |",
                verdict(ours >= theirs)
            )
            .unwrap();
        }
        for alone in [
            "Portico auth ES256, reused token",
            "Portico rate-limit alone",
            "Portico header-routing alone",
            "Portico body-transform alone",
        ] {
            let ratio = rps_of(alone, conc) / baseline(conc);
            writeln!(
                targets,
                "| {alone} >= 0.90 of plain, {workers} | {ratio:.2} | {} |",
                verdict(ratio >= 0.90)
            )
            .unwrap();
        }
        let model = rps_of("Portico model route, OpenAI->Anthropic", conc) / baseline(conc);
        writeln!(
            targets,
            "| model route OpenAI->Anthropic >= 0.5 of plain, {workers} | {model:.2} | {} |",
            verdict(model >= 0.5)
        )
        .unwrap();
    }
    let ttfb = ttfb_translated - ttfb_native;
    writeln!(
        targets,
        "| streaming translation adds < 0.5 ms to time to first byte | +{ttfb:.2} ms | {} |",
        verdict(ttfb < 0.5)
    )
    .unwrap();
    writeln!(
        targets,
        "| streams are never buffered whole | first byte {ttfb_translated:.1} ms of {total_translated:.0} ms | {} |",
        verdict(ttfb_translated * 10.0 < total_translated)
    )
    .unwrap();
    for full in [
        "Portico full chain, plain route",
        "Portico full chain as stages in one entry, plain route",
    ] {
        let added = rss_of(full, 2) - rss_of("plain Envoy", 2);
        writeln!(
            targets,
            "| {full}: the suite adds <= 30 MB RSS over plain Envoy at 2 workers | +{added:.1} MB | {} |",
            verdict(added <= 30.0)
        )
        .unwrap();
    }
    writeln!(
        targets,
        "| portico.wasm <= 1 MB after wasm-opt -Oz | {} KB{} | {} |",
        portico_size / 1024,
        if optimised {
            ""
        } else {
            " (wasm-opt not installed: as built)"
        },
        verdict(optimised && portico_size <= 1024 * 1024)
    )
    .unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let envoy = String::from_utf8_lossy(
        &Command::new(portico_tests::envoy::envoy_bin())
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    let machine = format!(
        "{cores} cores, {model}; {envoy}; wrk 32 connections, {seconds} s per run, {reps} repetition(s), interleaved"
    );
    println!("\n{machine}\n\n{table}\n{stream}\n| module | size |\n| --- | --- |\n{sizes}\n{targets}");

    let doc = format!(
        "# Benchmarks\n\nProduced by `make bench` (`BENCH_QUICK={}`); numbers from one machine, comparable only with each other.\n\nMachine: {machine}.\n\n\
Workers `1 (pinned)`: Envoy with one worker pinned to CPU 0, load and upstream on CPU 1: the cleanest cost per request. Workers `2`: two workers, unpinned, sharing both CPUs with the load.\n\n\
![requests per second and p99 per configuration](bench.png)\n\n## Throughput and latency\n\n{table}\n## Streaming translation\n\n{stream}\n## Module sizes\n\nAs `scripts/build` left them in dist/ (after `wasm-opt -Oz` when it was installed).\n\n| module | size |\n| --- | --- |\n{sizes}\n## Targets\n\n{targets}",
        u8::from(quick)
    );
    let docs = root().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("BENCHMARKS.md"), doc).unwrap();
    let raw = json!({"rows": rows, "stream": {"ttfb_native_ms": ttfb_native, "ttfb_translated_ms": ttfb_translated, "total_native_ms": total_native, "total_translated_ms": total_translated}});
    std::fs::write(docs.join("bench.json"), serde_json::to_vec_pretty(&raw).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
