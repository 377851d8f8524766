//! Envoy for tests: configs rendered in one place, and a process per test on free ports.
//!
//! Every port is 0 (the kernel picks a free one) and hot restart is off, so tests run in
//! parallel without clashes. Envoy runs with `--concurrency 2` so that two workers, each with
//! its own wasm VM, serve the traffic. When a test fails, Envoy's log is printed.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Envoy binary: `$ENVOY_BIN`, else the one `scripts/setup` installs.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN").map_or_else(|| root().join(".venv/envoy"), PathBuf::from);
    assert!(
        path.exists(),
        "no Envoy at {} (run `make build`, or set ENVOY_BIN)",
        path.display()
    );
    path
}

/// A built filter: `dist/<name>.wasm`.
pub fn wasm_path(name: &str) -> PathBuf {
    let path = root().join("dist").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make build`", path.display());
    path
}

// === Config rendering ===

/// An Envoy bootstrap with one listener, a catch-all route to the `upstream` cluster, and the
/// Portico filters added in order.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    filters: Vec<Value>,
    clusters: Vec<Value>,
    route: Value,
}

impl EnvoyConfig {
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            filters: Vec::new(),
            clusters: vec![cluster("upstream", upstream)],
            route: json!({"cluster": "upstream"}),
        }
    }

    /// Routes by the cluster named in `header` (what header-routing sets), and removes the
    /// internal backend-format header before the request leaves, as `envoy/gateway.yaml` does.
    pub fn route_by_header(mut self, header: &str) -> Self {
        self.route = json!({"cluster_header": header});
        self
    }

    /// Adds the Portico filter `name` (from `dist/`) with its plugin configuration.
    pub fn wasm(mut self, name: &str, configuration: &Value) -> Self {
        self.filters.push(wasm_filter(name, &wasm_path(name), configuration));
        self
    }

    /// Adds a native Envoy HTTP filter, given as its JSON config, at this point of the chain.
    pub fn native(mut self, filter: Value) -> Self {
        self.filters.push(filter);
        self
    }

    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push(cluster(name, addr));
        self
    }

    pub fn render(&self) -> Value {
        let mut filters = self.filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let tags: Vec<Value> = portico_core::analytics::LABELS
            .iter()
            .map(|l| json!({"tag_name": l, "regex": portico_core::analytics::tag_regex(l)}))
            .collect();
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            // As envoy/gateway.yaml: labelled Portico metrics; histograms show within a second.
            "stats_config": {"stats_tags": tags},
            "stats_flush_interval": "1s",
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "normalize_path": true,
                            "merge_slashes": true,
                            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                            // As every shipped config: `x_portico_consumer` must not reach a
                            // CGI-style upstream that reads it as `x-portico-consumer`.
                            "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
                            "route_config": {"virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": self.route,
                                            "request_headers_to_remove": ["x-portico-cluster", "x-portico-backend-format"]}]
                            }]},
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": self.clusters
            }
        })
    }
}

/// The sum of the series of `name` in Prometheus text whose labels include all of `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let has_all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            has_all.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .map(|v| v as u64)
        .sum()
}

/// Envoy's `json_to_metadata` filter lifting `fields` of JSON request bodies into the
/// `portico` metadata namespace, as `envoy/gateway.yaml` does. `max_tokens` lifts both names
/// of the output budget, OpenAI's newer `max_completion_tokens` too, as every shipped config does.
pub fn json_to_metadata(fields: &[&str]) -> Value {
    let rules: Vec<Value> = fields
        .iter()
        .flat_map(|f| match *f {
            "max_tokens" => vec!["max_tokens", "max_completion_tokens"],
            other => vec![other],
        })
        .map(|f| {
            json!({"selectors": [{"key": f}],
                   "on_present": {"metadata_namespace": "portico", "key": f, "type": "STRING"},
                   "on_error": {"metadata_namespace": "portico", "key": "json_error", "value": "true"}})
        })
        .collect();
    json!({
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
            "request_rules": {"rules": rules}
        }
    })
}

fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()
            }}}}]}]
        }
    })
}

/// The HTTP filter entry for one Portico wasm filter, in its own VM per worker (its own
/// `vm_id`: the modules differ), recovering from a crash by reloading (`FAIL_RELOAD`).
pub fn wasm_filter(name: &str, wasm: &Path, configuration: &Value) -> Value {
    json!({
        "name": format!("portico.{name}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("portico-{name}"),
                "root_id": format!("portico-{name}"),
                "failure_policy": "FAIL_RELOAD",
                "vm_config": {
                    "vm_id": format!("portico-{name}"),
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration.to_string()
                }
            }
        }
    })
}

// === The process ===

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running Envoy. Killed on drop; its log is printed if the test is failing.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

/// How to run Envoy: worker threads, and the CPUs to pin it to (`taskset -c`).
#[derive(Debug, Clone)]
pub struct Launch {
    pub concurrency: u32,
    pub cpus: Option<String>,
}

impl Default for Launch {
    /// Two workers, so cross-worker behaviour is exercised; no pinning.
    fn default() -> Self {
        Launch {
            concurrency: 2,
            cpus: None,
        }
    }
}

/// Envoy refused to start.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub log: String,
}

fn scratch_dir() -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("portico-test-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

impl Gateway {
    /// Starts Envoy on `config` and waits until it is ready; panics with its log otherwise.
    pub fn start(config: &EnvoyConfig) -> Gateway {
        Self::try_start(config).unwrap_or_else(|f| panic!("Envoy did not start ({:?}):\n{}", f.status, f.log))
    }

    pub fn try_start(config: &EnvoyConfig) -> Result<Gateway, StartFailure> {
        let text = serde_json::to_string_pretty(&config.render()).expect("render");
        Self::try_start_text(&text)
    }

    /// Starts Envoy on a config given as YAML (or JSON) text.
    pub fn start_text(config: &str) -> Gateway {
        Self::try_start_text(config).unwrap_or_else(|f| panic!("Envoy did not start ({:?}):\n{}", f.status, f.log))
    }

    pub fn try_start_text(config: &str) -> Result<Gateway, StartFailure> {
        Self::try_start_with(config, &Launch::default())
    }

    /// Starts Envoy on config text with `launch`'s worker count and CPU pinning.
    pub fn try_start_with(config: &str, launch: &Launch) -> Result<Gateway, StartFailure> {
        let dir = scratch_dir();
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, config).expect("write config");
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin.txt");
        let mut command = match &launch.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(envoy_bin());
                c
            }
            None => Command::new(envoy_bin()),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                &launch.concurrency.to_string(),
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])
            .args(["--component-log-level", "wasm:info"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("spawn envoy");
        let mut gateway = Gateway {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                return Err(StartFailure {
                    status: Some(status),
                    log: gateway.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(StartFailure {
                    status: None,
                    log: gateway.log(),
                });
            }
            if let Some(admin) = fs::read_to_string(&admin_path).ok().and_then(|s| s.trim().parse().ok()) {
                gateway.admin = admin;
                let ready = http::get("/ready").try_send(admin).is_ok_and(|r| r.status == 200);
                if ready {
                    if let Some(addr) = gateway.listener_addr() {
                        gateway.addr = addr;
                        return Ok(gateway);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn listener_addr(&self) -> Option<SocketAddr> {
        let r = http::get("/listeners?format=json").try_send(self.admin).ok()?;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
        let port = u16::try_from(sa["port_value"].as_u64()?).ok()?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Envoy's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Envoy's stats in Prometheus text format.
    pub fn prometheus(&self) -> String {
        http::get("/stats/prometheus").send(self.admin).text()
    }

    /// The sum of every series of metric `name` whose labels include all of `labels`
    /// (histograms: ask for `<name>_count` or `<name>_sum`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        sum_metric(&self.prometheus(), name, labels)
    }

    /// Asserts that no wasm VM crashed while serving.
    pub fn assert_no_wasm_panic(&self) {
        let log = self.log();
        for marker in ["panicked at", "Uncaught RuntimeError", "wasm_vm_reload"] {
            assert!(
                !log.contains(marker),
                "Envoy's log shows a wasm failure ({marker}):\n{log}"
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- Envoy log ({}) -----\n{}\n----- end of Envoy log -----",
                self.dir.display(),
                self.log()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `envoy --mode validate` on `config` from the repository root; returns Envoy's output
/// on failure.
pub fn validate(config: &Path) -> Result<(), String> {
    let out = Command::new(envoy_bin())
        .current_dir(root())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(config)
        .output()
        .expect("run envoy --mode validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it succeeded.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
