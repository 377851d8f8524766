//! The service's settings, from flags or environment variables (a flag wins). Every bad
//! setting is reported in one run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::RedisSettings;

pub const USAGE: &str = "\
portico-state: Portico's cluster-wide state service (gRPC), the only client of Redis.

Flags (environment variable in brackets; a flag wins):
  --listen ADDR            gRPC address [PORTICO_STATE_LISTEN] (default 0.0.0.0:8081)
  --redis URL[,URL...]     Redis URL, or a cluster's seed nodes [PORTICO_STATE_REDIS]
                           (default redis://127.0.0.1:6379)
  --cluster                Redis Cluster mode [PORTICO_STATE_CLUSTER=true]
  --redis-timeout-ms N     longest wait for Redis per call, 1..=10000 [PORTICO_STATE_REDIS_TIMEOUT_MS]
                           (default 50)
  --limits PATH            limits of the rate limit service API (YAML or JSON) [PORTICO_STATE_LIMITS]
Logging: RUST_LOG (default info).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub redis: RedisSettings,
    pub limits: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Settings),
    Help,
}

/// Reads flags (`args`, without the program name) over environment variables (`env`).
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command, Vec<String>> {
    let mut errors = Vec::new();
    let mut listen = env("PORTICO_STATE_LISTEN");
    let mut redis = env("PORTICO_STATE_REDIS");
    let mut cluster = env("PORTICO_STATE_CLUSTER");
    let mut timeout = env("PORTICO_STATE_REDIS_TIMEOUT_MS");
    let mut limits = env("PORTICO_STATE_LIMITS");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let slot = match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--cluster" => {
                cluster = Some("true".to_owned());
                continue;
            }
            "--listen" => &mut listen,
            "--redis" => &mut redis,
            "--redis-timeout-ms" => &mut timeout,
            "--limits" => &mut limits,
            other => {
                errors.push(format!("unknown argument {other:?}"));
                continue;
            }
        };
        match iter.next() {
            Some(value) => *slot = Some(value.clone()),
            None => errors.push(format!("{arg} needs a value")),
        }
    }
    let listen = listen.as_deref().unwrap_or("0.0.0.0:8081");
    let listen = listen
        .parse::<SocketAddr>()
        .map_err(|_| errors.push(format!("listen address {listen:?} is not IP:port")))
        .ok();
    let urls: Vec<String> = redis
        .as_deref()
        .unwrap_or("redis://127.0.0.1:6379")
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    for url in &urls {
        if url.starts_with("rediss://") {
            errors.push(format!("redis URL {url:?}: TLS to Redis is not built in yet"));
        } else if !url.starts_with("redis://") || redis::parse_redis_url(url).is_none() {
            errors.push(format!("redis URL {url:?} is not a redis:// URL"));
        }
    }
    if urls.is_empty() {
        errors.push("no redis URL".to_owned());
    }
    let cluster = match cluster.as_deref() {
        None | Some("false" | "0" | "") => false,
        Some("true" | "1") => true,
        Some(other) => {
            errors.push(format!("PORTICO_STATE_CLUSTER {other:?} is not true or false"));
            false
        }
    };
    if !cluster && urls.len() > 1 {
        errors.push("several redis URLs need --cluster".to_owned());
    }
    let timeout = match timeout.as_deref().map(str::parse::<u64>) {
        None => Some(50),
        Some(Ok(ms @ 1..=10_000)) => Some(ms),
        Some(_) => {
            errors.push("redis timeout must be a whole number of milliseconds in 1..=10000".to_owned());
            None
        }
    };
    match (listen, timeout) {
        (Some(listen), Some(ms)) if errors.is_empty() => Ok(Command::Run(Settings {
            listen,
            redis: RedisSettings {
                urls,
                cluster,
                timeout: Duration::from_millis(ms),
            },
            limits: limits.filter(|l| !l.is_empty()).map(PathBuf::from),
        })),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let Ok(Command::Run(s)) = parse(&[], |_| None) else {
            panic!("defaults refused")
        };
        assert_eq!(s.listen, SocketAddr::from(([0, 0, 0, 0], 8081)));
        assert_eq!(s.redis.urls, ["redis://127.0.0.1:6379"]);
        assert!(!s.redis.cluster);
        assert_eq!(s.redis.timeout, Duration::from_millis(50));
        assert_eq!(s.limits, None);
    }

    #[test]
    fn a_flag_wins_over_the_environment() {
        let env = |k: &str| (k == "PORTICO_STATE_REDIS_TIMEOUT_MS").then(|| "80".to_owned());
        let Ok(Command::Run(s)) = parse(&args(&["--redis-timeout-ms", "20"]), env) else {
            panic!()
        };
        assert_eq!(s.redis.timeout, Duration::from_millis(20));
        let Ok(Command::Run(s)) = parse(&[], env) else { panic!() };
        assert_eq!(s.redis.timeout, Duration::from_millis(80));
    }

    #[test]
    fn a_cluster_takes_several_seed_nodes() {
        let a = args(&["--cluster", "--redis", "redis://a:1,redis://b:2"]);
        let Ok(Command::Run(s)) = parse(&a, |_| None) else {
            panic!()
        };
        assert!(s.redis.cluster);
        assert_eq!(s.redis.urls, ["redis://a:1", "redis://b:2"]);
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let a = args(&[
            "--listen",
            "nowhere",
            "--redis",
            "http://x,rediss://y",
            "--redis-timeout-ms",
            "0",
            "--what",
        ]);
        assert_eq!(
            parse(&a, |_| None),
            Err(vec![
                "unknown argument \"--what\"".to_owned(),
                "listen address \"nowhere\" is not IP:port".to_owned(),
                "redis URL \"http://x\" is not a redis:// URL".to_owned(),
                "redis URL \"rediss://y\": TLS to Redis is not built in yet".to_owned(),
                "several redis URLs need --cluster".to_owned(),
                "redis timeout must be a whole number of milliseconds in 1..=10000".to_owned(),
            ])
        );
    }
}
