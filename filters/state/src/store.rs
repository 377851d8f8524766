//! The Redis connection: one server (or a managed Redis/Valkey endpoint) or a Redis Cluster,
//! and the one way the service talks to it, [`Store::run`]: a Lua script by `EVALSHA`, sent
//! again with its source when Redis answers `NOSCRIPT` (redis-rs's `Script` does both), bounded
//! by the per-call timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use tonic::Status;

use crate::scripts;

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// One URL, or for a cluster the seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// The longest any call waits for Redis, connecting included. Short (tens of ms): the
    /// gateway that asked has its own, shorter patience and a fail mode for when we are slow.
    pub timeout: Duration,
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The scripts, hashed once.
struct Scripts {
    charge: Script,
    settle: Script,
}

/// Which script to run.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    Charge,
    Settle,
}

pub struct Store {
    connection: Connection,
    scripts: Scripts,
    timeout: Duration,
    errors: LogLimiter,
}

impl Store {
    /// Connects. A single server is connected lazily (the service starts, and answers
    /// `UNAVAILABLE`, while Redis is still coming up) and reconnected after failures; a cluster
    /// is asked for its slot map now, so the seed nodes must answer at start.
    pub async fn connect(settings: &RedisSettings) -> Result<Store, String> {
        let t = settings.timeout;
        let connection = if settings.cluster {
            let client = ClusterClientBuilder::new(settings.urls.clone())
                .connection_timeout(t)
                .response_timeout(t)
                .retries(1)
                .build()
                .map_err(|e| format!("redis cluster settings: {e}"))?;
            let connection = client
                .get_async_connection()
                .await
                .map_err(|e| format!("redis cluster {}: {e}", settings.urls.join(",")))?;
            Connection::Cluster(connection)
        } else {
            let url = settings.urls.first().ok_or("no redis URL")?;
            let client = redis::Client::open(url.as_str()).map_err(|e| format!("redis URL {url:?}: {e}"))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t))
                .set_number_of_retries(1)
                .set_max_delay(t);
            let manager =
                ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("redis {url:?}: {e}"))?;
            Connection::Single(manager)
        };
        Ok(Store {
            connection,
            scripts: Scripts {
                charge: Script::new(scripts::CHARGE),
                settle: Script::new(scripts::SETTLE),
            },
            timeout: t,
            errors: LogLimiter::default(),
        })
    }

    /// Runs a script and returns its integers, or `UNAVAILABLE` when Redis failed or did not
    /// answer within the timeout.
    pub async fn run(&self, which: Which, keys: &[String], args: &[String]) -> Result<Vec<i64>, Status> {
        let script = match which {
            Which::Charge => &self.scripts.charge,
            Which::Settle => &self.scripts.settle,
        };
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let call = async {
            match self.connection.clone() {
                Connection::Single(mut c) => invocation.invoke_async::<Vec<i64>>(&mut c).await,
                Connection::Cluster(mut c) => invocation.invoke_async::<Vec<i64>>(&mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(values)) => Ok(values),
            // redis-rs's own response timeout (set to ours) usually fires first.
            Ok(Err(e)) if !e.is_timeout() => {
                self.errors.log(&format!("redis call failed: {e}"));
                Err(Status::unavailable(format!("redis_unavailable: {e}")))
            }
            Ok(Err(_)) | Err(_) => {
                let ms = self.timeout.as_millis();
                self.errors.log(&format!("redis did not answer within {ms} ms"));
                Err(Status::unavailable(format!(
                    "redis_timeout: redis did not answer within {ms} ms"
                )))
            }
        }
    }
}

/// At most one log line per second for a failing Redis, saying how many were left out: an
/// outage must not flood the log at the request rate.
#[derive(Default)]
struct LogLimiter {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    fn log(&self, message: &str) {
        let second = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        if last != second
            && self
                .last_second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            if suppressed > 0 {
                log::warn!("{message} ({suppressed} more failures in the last second not logged)");
            } else {
                log::warn!("{message}");
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
