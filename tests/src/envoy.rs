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

use portico_core::contract::{header, metadata, state, ApiFormat, DETAILS_PREFIX};
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
    prefix: String,
    body_limit: Option<u64>,
    access_log: Option<PathBuf>,
}

impl EnvoyConfig {
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            filters: Vec::new(),
            clusters: vec![cluster("upstream", upstream)],
            route: route_action(json!({"cluster": "upstream"})),
            prefix: "/".to_owned(),
            body_limit: None,
            access_log: None,
        }
    }

    /// The one route matches only paths under `prefix` (others get Envoy's 404).
    pub fn route_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// The route's upstream timeout (none by default, as on the shipped model routes).
    pub fn route_timeout(mut self, timeout: &str) -> Self {
        if let Some(route) = self.route.as_object_mut() {
            route.insert("timeout".to_owned(), json!(timeout));
        }
        self
    }

    /// The route's buffer limit for request and response bodies (`request_body_buffer_limit`),
    /// as `envoy/gateway.yaml` raises it on model routes. It only raises the listener's limit
    /// (1 MiB by default), never lowers it.
    pub fn body_limit(mut self, bytes: u64) -> Self {
        self.body_limit = Some(bytes);
        self
    }

    /// Writes an access log line per request to `path`: status, flags and response code
    /// details, as JSON.
    pub fn access_log(mut self, path: &Path) -> Self {
        self.access_log = Some(path.to_owned());
        self
    }

    /// Routes by the cluster named in `header` (what header-routing sets), and removes the
    /// internal backend-format header before the request leaves, as `envoy/gateway.yaml` does.
    pub fn route_by_header(mut self, header: &str) -> Self {
        self.route = route_action(json!({"cluster_header": header}));
        self
    }

    /// Adds the Portico filter `name` with its plugin configuration, as the shipped gateway
    /// runs it: an entry of `dist/portico.wasm` in the VM `portico` shared by every Portico
    /// entry of the chain, its filter chosen by root_id `portico-<name>`.
    pub fn wasm(mut self, name: &str, configuration: &Value) -> Self {
        let plugin = Plugin {
            allow_on_headers_stop_iteration: configuration["allow_on_headers_stop_iteration"] == json!(true),
            ..Plugin::portico(&format!("portico-{name}"), configuration.clone())
        };
        self.filters.push(plugin_filter(&plugin));
        self
    }

    /// Adds the Portico filter `name` from its own module (`dist/<name>.wasm`, the build option
    /// of one filter alone) in a VM of its own.
    pub fn wasm_alone(mut self, name: &str, configuration: &Value) -> Self {
        self.filters.push(wasm_filter(name, &wasm_path(name), configuration));
        self
    }

    /// Adds a native Envoy HTTP filter, given as its JSON config, at this point of the chain.
    pub fn native(mut self, filter: Value) -> Self {
        self.filters.push(filter);
        self
    }

    /// Adds one plugin entry of a module that holds several filters (`dist/portico.wasm`).
    pub fn plugin(mut self, plugin: &Plugin) -> Self {
        self.filters.push(plugin_filter(plugin));
        self
    }

    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push(cluster(name, addr));
        self
    }

    /// Adds a cluster that speaks HTTP/2 to `addr`, as a gRPC service (portico-state, an
    /// external authorization or rate limit service) needs.
    pub fn grpc_cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        let mut c = cluster(name, addr);
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
        self.clusters.push(c);
        self
    }

    /// The route's `rate_limits` (the descriptors Envoy's native `ratelimit` filter sends).
    pub fn route_rate_limits(mut self, rate_limits: Value) -> Self {
        if let Some(route) = self.route.as_object_mut() {
            route.insert("rate_limits".to_owned(), rate_limits);
        }
        self
    }

    pub fn render(&self) -> Value {
        let mut filters = self.filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut route = json!({"match": {"prefix": self.prefix}, "route": self.route,
                               "request_headers_to_remove": [header::CLUSTER, header::BACKEND_FORMAT]});
        if let (Some(bytes), Some(r)) = (self.body_limit, route.as_object_mut()) {
            r.insert("request_body_buffer_limit".to_owned(), json!(bytes));
        }
        let access_log: Vec<Value> = self
            .access_log
            .iter()
            .map(|path| {
                json!({"name": "envoy.access_loggers.file", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": path.display().to_string(),
                    "log_format": {"json_format": {
                        "path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
                        "response_code_details": "%RESPONSE_CODE_DETAILS%", "bytes_sent": "%BYTES_SENT%"}}}})
            })
            .collect();
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
                                "routes": [route]
                            }]},
                            "local_reply_config": local_reply_config(),
                            "access_log": access_log,
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": self.clusters
            }
        })
    }
}

/// A route action with the timeouts of `envoy/gateway.yaml`'s model routes: none for the
/// whole exchange (a stream lasts as long as the model writes), 300 s of silence at most.
fn route_action(mut action: Value) -> Value {
    if let Some(a) = action.as_object_mut() {
        a.insert("timeout".to_owned(), json!("0s"));
        a.insert("idle_timeout".to_owned(), json!("300s"));
    }
    action
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

/// The expression that tells Envoy's `local_reply_config` whether the client speaks Anthropic's
/// API: the client's API recorded by a filter that changed the path, else the path itself
/// (`portico_core::contract::ApiFormat::of_path` in RE2).
fn anthropic_client() -> String {
    let key = state::CLIENT_API;
    let anthropic = ApiFormat::Anthropic.as_str();
    format!(
        "('wasm.{key}' in filter_state ? filter_state['wasm.{key}'] == b'{anthropic}' : \
         request.url_path.matches('^(.*/)?v1/messages(/.*)?$'))"
    )
}

/// An error Envoy itself answered: not a Portico filter's reply (whose details start with
/// [`DETAILS_PREFIX`]), not another wasm filter's (no details), not a redirect.
fn envoy_error() -> String {
    format!(
        "response.code >= 400 && response.code_details != '' && \
         !response.code_details.startsWith('{DETAILS_PREFIX}')"
    )
}

/// The HTTP connection manager's `local_reply_config` every shipped Envoy config carries (a
/// test compares them): Envoy's own errors get Portico's JSON error shape, with a stable code
/// per case, in the client's API format. A response too large to buffer becomes 502
/// `response_too_large` instead of Envoy's bare 500.
pub fn local_reply_config() -> Value {
    let cel = |expression: String| {
        json!({"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": expression}}})
    };
    let too_large = "response.code_details == 'response_payload_too_large'";
    let code = "%CEL(response.code_details == 'response_payload_too_large' ? 'response_too_large' : response.code == 400 ? 'bad_request' : response.code == 404 ? 'no_route' : response.code == 408 ? 'request_timeout' : response.code == 413 ? 'body_too_large' : response.code == 426 ? 'upgrade_required' : response.code == 431 ? 'headers_too_large' : response.code == 502 ? 'bad_gateway' : response.code == 503 ? 'upstream_unavailable' : response.code == 504 ? 'upstream_timeout' : 'gateway_error')%";
    let message = "%CEL(response.code_details == 'response_payload_too_large' ? 'the upstream response is larger than this route can buffer' : response.code == 400 ? 'the request is not valid HTTP' : response.code == 404 ? 'no route matches this request' : response.code == 408 ? 'the request took too long to arrive' : response.code == 413 ? 'the request body is larger than this route accepts' : response.code == 426 ? 'HTTP/1.1 or newer is required' : response.code == 431 ? 'the request headers are too large' : response.code == 502 ? 'the upstream sent an invalid response' : response.code == 503 ? 'the upstream is unavailable' : response.code == 504 ? 'the upstream did not answer in time' : 'the gateway could not handle this request')%";
    let anthropic = json!({"json_format": {"type": "error", "error": {
        "type": "%CEL(response.code == 404 ? 'not_found_error' : response.code == 413 ? 'request_too_large' : response.code < 500 ? 'invalid_request_error' : 'api_error')%",
        "code": code, "message": message}}});
    let openai = json!({"json_format": {"error": {
        "type": "%CEL(response.code == 404 ? 'not_found_error' : response.code < 500 ? 'invalid_request_error' : 'api_error')%",
        "code": code, "message": message}}});
    json!({"mappers": [
        {"filter": cel(format!("{too_large} && {}", anthropic_client())), "status_code": 502, "body_format_override": anthropic},
        {"filter": cel(too_large.to_owned()), "status_code": 502, "body_format_override": openai},
        {"filter": cel(format!("{} && {}", envoy_error(), anthropic_client())), "body_format_override": anthropic},
        {"filter": cel(envoy_error()), "body_format_override": openai},
    ]})
}

/// Envoy's `json_to_metadata` filter lifting `fields` of JSON request bodies into the
/// `portico` metadata namespace, as `envoy/gateway.yaml` does: any JSON media type
/// (`portico_core::media`), not only the exact `application/json`. `max_tokens` lifts both
/// names of the output budget, OpenAI's newer `max_completion_tokens` too, as every shipped
/// config does.
pub fn json_to_metadata(fields: &[&str]) -> Value {
    let rules: Vec<Value> = fields
        .iter()
        .flat_map(|f| match *f {
            metadata::MAX_TOKENS => vec![metadata::MAX_TOKENS, metadata::MAX_COMPLETION_TOKENS],
            other => vec![other],
        })
        .map(|f| {
            json!({"selectors": [{"key": f}],
                   "on_present": {"metadata_namespace": metadata::NAMESPACE, "key": f, "type": "STRING"},
                   "on_error": {"metadata_namespace": metadata::NAMESPACE, "key": metadata::JSON_ERROR, "value": "true"}})
        })
        .collect();
    json!({
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
            "request_rules": {"rules": rules,
                              "allow_content_types_regex": {"regex": portico_core::media::JSON_CONTENT_TYPE_REGEX}}
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
/// `vm_id`: the modules differ), recovering from a crash by reloading (`FAIL_RELOAD`). A
/// configuration with `"allow_on_headers_stop_iteration": true` (body-transform's) gets the
/// plugin field of the same name, as an operator must set both.
pub fn wasm_filter(name: &str, wasm: &Path, configuration: &Value) -> Value {
    let root_id = format!("portico-{name}");
    plugin_filter(&Plugin {
        name: root_id.clone(),
        wasm: wasm.to_path_buf(),
        root_id: root_id.clone(),
        vm_id: root_id,
        configuration: configuration.clone(),
        allow_on_headers_stop_iteration: configuration["allow_on_headers_stop_iteration"] == json!(true),
    })
}

/// One plugin entry: which module, which filter in it (`root_id`), which VM it shares
/// (`vm_id`), and Envoy's `allow_on_headers_stop_iteration`.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The plugin's name, unique in the chain (Envoy's log lines and stats carry it).
    pub name: String,
    pub wasm: PathBuf,
    pub root_id: String,
    pub vm_id: String,
    pub configuration: Value,
    pub allow_on_headers_stop_iteration: bool,
}

impl Plugin {
    /// An entry of `dist/portico.wasm` in the VM `portico`, named after its `root_id`.
    pub fn portico(root_id: &str, configuration: Value) -> Self {
        Self {
            name: root_id.to_owned(),
            wasm: wasm_path("portico"),
            root_id: root_id.to_owned(),
            vm_id: "portico".to_owned(),
            configuration,
            allow_on_headers_stop_iteration: false,
        }
    }
}

fn plugin_filter(plugin: &Plugin) -> Value {
    let mut config = json!({
        "name": plugin.name,
        "root_id": plugin.root_id,
        "failure_policy": "FAIL_RELOAD",
        "vm_config": {
            "vm_id": plugin.vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": plugin.wasm.display().to_string()}}
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": plugin.configuration.to_string()
        }
    });
    if plugin.allow_on_headers_stop_iteration {
        config["allow_on_headers_stop_iteration"] = json!(true);
    }
    json!({
        "name": format!("portico.{}", plugin.name),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config
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
        // Generous: V8 compiles every module on the main thread and each worker before Envoy is
        // ready, which took over 30 s on a 2-core machine also compiling Rust (CI shares cores).
        let deadline = Instant::now() + Duration::from_secs(120);
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

    /// Envoy's process id (for a profiler to attach to).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// Envoy's counter or gauge `name` (`/stats`), if it exists.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = http::get("/stats").send(self.admin).text();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
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
