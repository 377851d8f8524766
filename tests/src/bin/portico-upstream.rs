//! The demo upstream for `make run`: echoes every request as JSON.
//!
//! Usage: portico-upstream [ADDRESS] [NAME] [--model]   (default 127.0.0.1:8081 demo)
//! Every echo carries `"upstream": NAME`, so routing shows which backend answered. With
//! `--model`, `/v1/chat/completions` and `/v1/messages` always answer as the model APIs do.

use portico_tests::upstream::{Mode, Upstream};

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let name = std::env::args().nth(2).unwrap_or_else(|| "demo".to_owned());
    let mode = if std::env::args().any(|a| a == "--model") {
        Mode::Model
    } else {
        Mode::Echo
    };
    match Upstream::start_with(&addr, &name, mode) {
        Ok(upstream) => {
            println!("demo upstream {name:?} listening on http://{}", upstream.addr);
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("portico-upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
}
