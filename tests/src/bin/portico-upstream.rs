//! The demo upstream.
//!
//! - `portico-upstream [ADDRESS] [NAME] [--model]` (default `127.0.0.1:8081 demo`): one echo
//!   server whose answers carry `"upstream": NAME`; with `--model`, `/v1/chat/completions` and
//!   `/v1/messages` always answer as the model APIs do.
//! - `portico-upstream demo`: the three backends of `envoy/gateway.yaml` in one process
//!   (demo-a on 8081, demo-b on 8082, the Anthropic-format model on 8083).
//! - `portico-upstream probe URL...`: exits 0 if every URL answers 200 (container health checks
//!   in images with no shell or curl).

use std::process::ExitCode;
use std::time::Duration;

use portico_tests::upstream::{Mode, Upstream};

fn serve(servers: &[(&str, &str, Mode)]) -> ExitCode {
    for (addr, name, mode) in servers {
        match Upstream::start_with(addr, name, *mode) {
            Ok(u) => println!("demo upstream {name:?} listening on http://{}", u.addr),
            Err(e) => {
                eprintln!("portico-upstream: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    loop {
        std::thread::park();
    }
}

fn probe(urls: &[String]) -> ExitCode {
    for url in urls {
        let ok = url
            .strip_prefix("http://")
            .and_then(|rest| {
                let (host, path) = rest
                    .split_once('/')
                    .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
                let addr = host.parse().ok()?;
                let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
                drop(stream);
                portico_tests::http::get(&path).try_send(addr).ok()
            })
            .is_some_and(|r| r.status == 200);
        if !ok {
            eprintln!("probe: {url} is not ready");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("probe") => probe(args.get(1..).unwrap_or_default()),
        Some("demo") => serve(&[
            ("0.0.0.0:8081", "demo-a", Mode::Echo),
            ("0.0.0.0:8082", "demo-b", Mode::Echo),
            ("0.0.0.0:8083", "demo-anthropic", Mode::Model),
        ]),
        _ => {
            let addr = args.first().cloned().unwrap_or_else(|| "127.0.0.1:8081".to_owned());
            let name = args.get(1).cloned().unwrap_or_else(|| "demo".to_owned());
            let mode = if args.iter().any(|a| a == "--model") {
                Mode::Model
            } else {
                Mode::Echo
            };
            serve(&[(&addr, &name, mode)])
        }
    }
}
