//! Redis and portico-state for tests: a real `redis-server` per test on a free port (or three
//! as a Redis Cluster), and the service running in-process on its own tokio runtime.
//!
//! `scripts/setup` installs `redis-server` and `redis-cli` (Debian's `redis-server` and
//! `redis-tools`).

use std::fs;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portico_state::proto::rls::rate_limit_service_client::RateLimitServiceClient;
use portico_state::proto::state::state_client::StateClient;
use portico_state::settings::Settings;
use portico_state::store::RedisSettings;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::transport::Channel;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn scratch_dir(kind: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("portico-{kind}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A port nobody listens on right now (the kernel's pick, released for the child to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// A cluster node's bus port, chosen like `port`: Redis's default (port + 10000) fails for
    /// the kernel's ports above 55535.
    bus_port: Option<u16>,
    dir: PathBuf,
}

impl RedisServer {
    /// A plain server with no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A server with `cluster-enabled yes`, not yet part of a cluster.
    pub fn start_cluster_node() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            bus_port: None,
            dir: scratch_dir("redis"),
        };
        // A port found free can be taken by a parallel test before redis-server binds it:
        // try other ports then.
        for _ in 0..5 {
            server.port = free_port();
            server.bus_port = cluster.then(free_port);
            if server.try_spawn() {
                return server;
            }
        }
        panic!("redis-server did not start:\n{}", server.log());
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "redis-server did not start:\n{}", self.log());
    }

    /// Starts redis-server on `port`; false (and nothing left running) if it did not answer.
    fn try_spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(bus) = self.bus_port {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            command.args(["--cluster-port", &bus.to_string()]);
        }
        let log = fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server (run `make setup`)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let ready = crate::envoy::eventually(Duration::from_secs(10), || {
            let exited = self.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            exited || (TcpStream::connect(addr).is_ok() && self.cli(&["PING"]).trim() == "PONG")
        });
        let running = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !(ready && running) {
            self.stop();
            return false;
        }
        true
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p <port> args...` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (connections are refused from now on).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes or thaws the server (SIGSTOP / SIGCONT): connections stay open, nothing answers,
    /// as a hung Redis behaves.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let ok = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {signal} redis-server");
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.pause(false);
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Three masters made into a Redis Cluster by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ok = crate::envoy::eventually(Duration::from_secs(20), || {
            nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        assert!(ok, "the cluster never reached cluster_state:ok");
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Runs `redis-cli -c` (following redirections) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.nodes.first().map(|n| n.port).unwrap_or_default();
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// portico-state serving on a free port, on a runtime of its own; shut down on drop.
pub struct StateService {
    runtime: Runtime,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl StateService {
    /// The service on one Redis, with `timeout` per Redis call and optional RLS limits (a file
    /// with this text).
    pub fn start(urls: Vec<String>, cluster: bool, timeout: Duration, limits: Option<&str>) -> StateService {
        let limits = limits.map(|text| {
            let path = scratch_dir("state").join("limits.yaml");
            fs::write(&path, text).expect("write limits");
            path
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let settings = Settings {
            listen: addr,
            redis: RedisSettings { urls, cluster, timeout },
            limits,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        runtime.spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let result = portico_state::serve(&settings, listener, shutdown).await;
            let _ = ready_tx.send(result);
        });
        let service = StateService {
            runtime,
            addr,
            stop: Some(stop),
        };
        // Ready when it answers a health check (or failed to start).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(result) = ready_rx.try_recv() {
                panic!("portico-state stopped at start: {result:?}");
            }
            let healthy = service.block_on(async {
                let channel = Channel::from_shared(format!("http://{addr}"))
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let r = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "portico.state.v1.State".to_owned(),
                    })
                    .await
                    .ok()?;
                Some(r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
            });
            if healthy == Some(true) {
                return service;
            }
            assert!(Instant::now() < deadline, "portico-state did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    fn channel(&self) -> Channel {
        let addr = self.addr;
        self.block_on(async move {
            Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect to portico-state")
        })
    }

    /// A client of `portico.state.v1.State` (clone it per concurrent call).
    pub fn client(&self) -> StateClient<Channel> {
        StateClient::new(self.channel())
    }

    /// A client of Envoy's rate limit service API.
    pub fn rls_client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel())
    }
}

impl Drop for StateService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
