//! The `portico-state` binary: settings from flags and environment, then [`portico_state::serve`]
//! until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use portico_state::settings::{self, Command};

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = match settings::parse(&args, |k| std::env::var(k).ok()) {
        Ok(Command::Run(s)) => s,
        Ok(Command::Help) => {
            println!("{}", settings::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(errors) => {
            for e in errors {
                log::error!("invalid setting: {e}");
            }
            eprintln!("{}", settings::USAGE);
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", settings.listen);
            return ExitCode::FAILURE;
        }
    };
    match portico_state::serve(&settings, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what Kubernetes and Docker send) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
