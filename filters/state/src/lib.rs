//! portico-state: a native gRPC service (tokio, tonic, redis-rs), **not a wasm filter**. It is
//! the only part of Portico that talks to Redis, and holds no state itself, so it runs as many
//! replicas as needed beside the gateways.
//!
//! It serves two APIs on one port:
//! - `portico.state.v1.State` (`proto/portico/state/v1/state.proto`): token budgets reserved
//!   before a call and settled from the reported usage (refunds included), leases for
//!   replicas that spend locally, and exact request limits;
//! - Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, so Envoy's native
//!   `ratelimit` filter can use the same Redis, with limits from a file ([`limits`]);
//!
//! plus the standard `grpc.health.v1.Health`. All counting is atomic in Redis ([`scripts`]).
#![forbid(unsafe_code)]

pub mod keys;
pub mod limits;
pub mod scripts;
pub mod service;
pub mod settings;
pub mod store;

/// The generated gRPC code (`build.rs`).
#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod proto {
    pub mod rls {
        tonic::include_proto!("envoy.service.ratelimit.v3");
    }
    pub mod state {
        tonic::include_proto!("portico.state.v1");
    }
}

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::limits::Limits;
use crate::proto::rls::rate_limit_service_server::RateLimitServiceServer;
use crate::proto::state::state_server::StateServer;
use crate::service::Service;
use crate::settings::Settings;
use crate::store::Store;

/// Reads the limits file named in `settings`, if any.
pub fn load_limits(settings: &Settings) -> Result<Limits, String> {
    match &settings.limits {
        None => Ok(Limits::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Limits::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

/// Serves on `listener` until `shutdown` completes, then finishes the calls in flight.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let limits = load_limits(settings)?;
    let store = Store::connect(&settings.redis).await?;
    let service = Service::new(store, limits);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StateServer<Service>>().await;
    health.set_serving::<RateLimitServiceServer<Service>>().await;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    log::info!(
        "portico-state serving on {local}, redis {} ({}), timeout {} ms",
        settings.redis.urls.join(","),
        if settings.redis.cluster { "cluster" } else { "single" },
        settings.redis.timeout.as_millis()
    );
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(StateServer::new(service.clone()))
        .add_service(RateLimitServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            shutdown.await;
            log::info!("portico-state shutting down: finishing the calls in flight");
            // "" is the whole server's status in the gRPC health protocol.
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health.set_not_serving::<StateServer<Service>>().await;
            health.set_not_serving::<RateLimitServiceServer<Service>>().await;
        })
        .await;
    result.map_err(|e| format!("gRPC server: {e}"))
}
