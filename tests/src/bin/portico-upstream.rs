//! The demo upstream for `make run`: echoes every request as JSON.
//!
//! Usage: portico-upstream [ADDRESS]   (default 127.0.0.1:8081)

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    match portico_tests::upstream::Upstream::start(&addr) {
        Ok(upstream) => {
            println!("demo upstream listening on http://{}", upstream.addr);
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
