//! The demo upstream for `make run`: echoes every request as JSON.
//!
//! Usage: portico-upstream [ADDRESS] [NAME]   (default 127.0.0.1:8081 demo)
//! Every echo carries `"upstream": NAME`, so routing shows which backend answered.

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let name = std::env::args().nth(2).unwrap_or_else(|| "demo".to_owned());
    match portico_tests::upstream::Upstream::start_named(&addr, &name) {
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
