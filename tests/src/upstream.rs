//! The demo and mock upstream: a small HTTP/1.1 server on std only.
//!
//! Every request is answered with a JSON echo of what arrived (method, path, headers, body), so
//! tests can assert on exactly what Envoy forwarded. `GET /.well-known/jwks.json` serves a JWKS
//! document whose status and body the owner of the [`Upstream`] can change at any time.
//!
//! `POST /v1/chat/completions` and `POST /v1/messages` answer like OpenAI and Anthropic model
//! backends when a request carries `x-mock-*` headers (else they echo too). They check the
//! request as the real API would (required fields, no foreign fields, `anthropic-version`) and
//! answer 400 in that API's error shape otherwise; they call the first offered tool unless the
//! last turn is a tool result. Steered by headers: `x-mock-usage: PROMPT,COMPLETION` puts usage in the
//! answer (none without it; COMPLETION `max` is the request's own `max_tokens`), `x-mock-delay-ms: N` waits before answering, `x-mock-stream: 1` streams with `x-mock-events: N` text deltas and `x-mock-gap-ms: N` between writes (default 15) (and `x-mock-cut: 1` drops the connection halfway, `x-mock-cut: clean` ends the body there), SSE in several flushed chunks with the
//! usage event split across two of them, `x-mock-status: N` answers an error without usage,
//! `x-mock-pad: N` lengthens the answer text by N bytes, `x-mock-cache-control: V` sends that
//! `cache-control`, `x-mock-header: NAME=VALUE` sends that header, `x-mock-answer: KIND` spoils an
//! answer (echo and `x-mock-status` errors included) the way broken backends do: `garbage`, `truncated` (cut halfway,
//! with a matching content-length), `empty`, `wrong_shape` (a JSON object that is no answer),
//! `wrong_types` (an answer's fields with the wrong JSON types),
//! `text` (the answer as `text/plain`). Every non-streamed answer carries `x-upstream-request: N`, its number.
//! Model answers can also be steered to what real backends sometimes say: `x-mock-cache: READ,WRITE`
//! reports prompt-cache reads and writes the way each API does (OpenAI inside `prompt_tokens`,
//! Anthropic on top of `input_tokens`), `x-mock-refusal: TEXT` refuses with that text (OpenAI
//! `refusal`, Anthropic `stop_reason: "refusal"`), `x-mock-stop: REASON` ends with that stop or
//! finish reason, `x-mock-tool-args: RAW` makes an OpenAI tool call carry those arguments.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::json;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";

#[derive(Debug, Clone)]
struct JwksState {
    status: u16,
    body: String,
    hits: usize,
}

/// A running upstream; it serves until the process exits.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    jwks: Arc<Mutex<JwksState>>,
    served: Arc<AtomicUsize>,
}

/// How the server answers model endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Echo, unless a request carries `x-mock-*` headers (tests steer it that way).
    Echo,
    /// Always play the model API on its endpoints (the `make run` demo backend).
    Model,
}

/// What every echo says about the server that answered, so routing tests can tell them apart,
/// and how it answers model endpoints.
#[derive(Debug, Clone)]
struct Identity(Arc<str>, Mode);

impl Upstream {
    /// Binds `addr` (port 0 for any free port) and serves on background threads.
    pub fn start(addr: &str) -> std::io::Result<Upstream> {
        Self::start_named(addr, "upstream")
    }

    /// Like [`Upstream::start`]; every echo carries `"upstream": name`.
    pub fn start_named(addr: &str, name: &str) -> std::io::Result<Upstream> {
        Self::start_with(addr, name, Mode::Echo)
    }

    pub fn start_with(addr: &str, name: &str, mode: Mode) -> std::io::Result<Upstream> {
        let identity = Identity(Arc::from(name), mode);
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let jwks = Arc::new(Mutex::new(JwksState {
            status: 404,
            body: String::new(),
            hits: 0,
        }));
        let shared = Arc::clone(&jwks);
        let served = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&served);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let jwks = Arc::clone(&shared);
                let identity = identity.clone();
                let served = Arc::clone(&counter);
                thread::spawn(move || {
                    let _ = serve_connection(stream, &jwks, &identity, &served);
                });
            }
        });
        Ok(Upstream { addr, jwks, served })
    }

    /// Sets what the JWKS endpoint answers.
    pub fn set_jwks(&self, status: u16, body: impl Into<String>) {
        if let Ok(mut state) = self.jwks.lock() {
            state.status = status;
            state.body = body.into();
        }
    }

    /// How many complete requests arrived (a request whose body never completed is not one).
    pub fn requests(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// How many times the JWKS endpoint was fetched.
    pub fn jwks_hits(&self) -> usize {
        self.jwks.lock().map(|s| s.hits).unwrap_or(0)
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn serve_connection(
    stream: TcpStream,
    jwks: &Mutex<JwksState>,
    identity: &Identity,
    served: &AtomicUsize,
) -> std::io::Result<()> {
    // Without this, Nagle holds each small write until Envoy's delayed ACK: 40 ms a request.
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader)? {
        let number = served.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(ms) = request_header(&request, "x-mock-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            thread::sleep(std::time::Duration::from_millis(ms.min(10_000)));
        }
        if let Some(parts) = model_stream(&request, identity.1) {
            writer.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            )?;
            // x-mock-cut: 1 drops the connection halfway through the stream; `clean` ends the
            // HTTP body properly there, before the API's own end-of-stream event.
            let gap_ms = request_header(&request, "x-mock-gap-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(15u64)
                .min(1000);
            let cut_mode = request_header(&request, "x-mock-cut");
            let cut = cut_mode.is_some();
            let keep = if cut { parts.len() / 2 } else { parts.len() };
            for part in parts.into_iter().take(keep) {
                writer.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
                writer.write_all(&part)?;
                writer.write_all(b"\r\n")?;
                writer.flush()?;
                // Separate writes reach the filter as separate body chunks.
                thread::sleep(std::time::Duration::from_millis(gap_ms));
            }
            if cut_mode == Some("1") {
                return Ok(());
            }
            writer.write_all(b"0\r\n\r\n")?;
            writer.flush()?;
            continue;
        }
        let (status, content_type, body) = respond(&request, jwks, identity);
        let (content_type, body) = match request_header(&request, "x-mock-answer") {
            Some(kind) => spoil(kind, content_type, body),
            _ => (content_type, body),
        };
        // Which request this answers (a replayed answer shows an earlier number), and a
        // cache-control header when a test asks for one.
        let mut extra = format!("x-upstream-request: {number}\r\n");
        if let Some(cc) = request_header(&request, "x-mock-cache-control") {
            extra.push_str(&format!("cache-control: {cc}\r\n"));
        }
        if let Some((name, value)) = request_header(&request, "x-mock-header").and_then(|h| h.split_once('=')) {
            extra.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}\r\n",
            reason_phrase(status),
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        writer.write_all(&response)?;
        writer.flush()?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// A model endpoint to play: always in [`Mode::Model`], else when the test asked (any
/// `x-mock-*` header); otherwise the request is echoed.
fn model_api(request: &Request, mode: Mode) -> Option<Api> {
    if mode == Mode::Echo && !request.headers.iter().any(|(n, _)| n.starts_with("x-mock-")) {
        return None;
    }
    match request.path.split('?').next() {
        Some("/v1/chat/completions") => Some(Api::OpenAi),
        Some("/v1/messages") => Some(Api::Anthropic),
        _ => None,
    }
}

fn request_header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Prompt-cache reads and writes to report (`x-mock-cache: READ,WRITE`).
fn mock_cache(request: &Request) -> Option<(u64, u64)> {
    let (r, w) = request_header(request, "x-mock-cache")?.split_once(',')?;
    Some((r.trim().parse().ok()?, w.trim().parse().ok()?))
}

/// The usage object an API reports for `usage` (its own prompt count) and `cache`.
fn usage_json(api: Api, (p, c): (u64, u64), cache: Option<(u64, u64)>) -> serde_json::Value {
    match api {
        Api::OpenAi => {
            let mut u = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p.saturating_add(c)});
            if let Some((read, write)) = cache {
                u["prompt_tokens_details"] =
                    json!({"cached_tokens": read, "cache_write_tokens": write, "audio_tokens": 0});
            }
            u
        }
        Api::Anthropic => {
            let mut u = json!({"input_tokens": p, "output_tokens": c});
            if let Some((read, write)) = cache {
                u["cache_read_input_tokens"] = json!(read);
                u["cache_creation_input_tokens"] = json!(write);
            }
            u
        }
    }
}

fn mock_usage(request: &Request) -> Option<(u64, u64)> {
    let Some(given) = request_header(request, "x-mock-usage") else {
        // Unsteered (the demo backend): a plausible count, a token per 4 bytes of request.
        let steered = request.headers.iter().any(|(n, _)| n.starts_with("x-mock-"));
        return (!steered).then_some((request.body.len() as u64 / 4, 2));
    };
    let (p, c) = given.split_once(',')?;
    // `max`: the answer used every output token the request allowed.
    let completion = match c.trim() {
        "max" => {
            let body: serde_json::Value = serde_json::from_slice(&request.body).ok()?;
            body.get("max_completion_tokens")
                .or_else(|| body.get("max_tokens"))
                .and_then(serde_json::Value::as_u64)?
        }
        c => c.parse().ok()?,
    };
    Some((p.trim().parse().ok()?, completion))
}

const OPENAI_KEYS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
    "response_format",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "metadata",
    "store",
];
const ANTHROPIC_KEYS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

/// Checks a request body the way the real API would: required fields, no foreign ones.
fn validate(api: Api, request: &Request, body: &serde_json::Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("the body is not a JSON object")?;
    let (allowed, required): (&[&str], &[&str]) = match api {
        Api::OpenAi => (OPENAI_KEYS, &["model", "messages"]),
        Api::Anthropic => (ANTHROPIC_KEYS, &["model", "messages", "max_tokens"]),
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("{k}: Extra inputs are not permitted"));
    }
    if let Some(k) = required.iter().find(|k| !obj.contains_key(**k)) {
        return Err(format!("{k}: Field required"));
    }
    let messages = obj
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or("messages: must be an array")?;
    let roles: &[&str] = match api {
        Api::OpenAi => &["system", "developer", "user", "assistant", "tool"],
        Api::Anthropic => &["user", "assistant"],
    };
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("");
        if !roles.contains(&role) {
            return Err(format!("messages.{i}.role: unexpected role {role:?}"));
        }
    }
    if api == Api::Anthropic && request_header(request, "anthropic-version").is_none() {
        return Err("anthropic-version: header is required".to_owned());
    }
    match api {
        Api::OpenAi => validate_openai(obj, messages),
        Api::Anthropic => validate_anthropic(obj, messages),
    }
}

type Obj = serde_json::Map<String, serde_json::Value>;

/// The first key of `obj` (at `path`) outside `allowed`, as the APIs word it.
fn extra_key(obj: &Obj, allowed: &[&str], path: &str) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{path}.{k}: Extra inputs are not permitted")),
        None => Ok(()),
    }
}

fn positive(obj: &Obj, key: &str) -> Result<(), String> {
    match obj.get(key) {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => Ok(()),
        Some(_) => Err(format!("{key}: Input should be greater than or equal to 1")),
    }
}

fn strings(obj: &Obj, key: &str) -> Result<(), String> {
    match obj.get(key) {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::String(_)) => Ok(()),
        Some(serde_json::Value::Array(items)) if items.iter().all(|i| i.is_string()) => Ok(()),
        Some(_) => Err(format!("{key}: Input should be a valid list of strings")),
    }
}

fn objects<'a>(v: Option<&'a serde_json::Value>, path: &str) -> Result<Vec<&'a Obj>, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| item.as_object().ok_or(format!("{path}.{i}: Input should be an object")))
            .collect(),
        Some(_) => Err(format!("{path}: Input should be a valid list")),
    }
}

fn validate_openai(obj: &Obj, messages: &[serde_json::Value]) -> Result<(), String> {
    positive(obj, "max_tokens")?;
    positive(obj, "max_completion_tokens")?;
    strings(obj, "stop")?;
    for (i, tool) in objects(obj.get("tools"), "tools")?.into_iter().enumerate() {
        if tool.get("type").and_then(|t| t.as_str()) != Some("function") {
            return Err(format!("tools.{i}.type: Input should be 'function' or 'custom'"));
        }
        let f = tool
            .get("function")
            .and_then(|f| f.as_object())
            .ok_or(format!("tools.{i}.function: Field required"))?;
        extra_key(
            f,
            &["name", "description", "parameters", "strict"],
            &format!("tools.{i}.function"),
        )?;
        if !f.get("name").is_some_and(|n| n.is_string()) {
            return Err(format!("tools.{i}.function.name: Field required"));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        let m = m
            .as_object()
            .ok_or(format!("messages.{i}: Input should be an object"))?;
        let allowed: &[&str] = match m.get("role").and_then(|r| r.as_str()) {
            Some("assistant") => &[
                "role",
                "content",
                "name",
                "refusal",
                "tool_calls",
                "audio",
                "function_call",
            ],
            Some("tool") => &["role", "content", "tool_call_id"],
            _ => &["role", "content", "name"],
        };
        extra_key(m, allowed, &format!("messages.{i}"))?;
    }
    Ok(())
}

/// Anthropic's own tools run on its side: anything with a `type` other than `custom`.
fn validate_anthropic(obj: &Obj, messages: &[serde_json::Value]) -> Result<(), String> {
    positive(obj, "max_tokens")?;
    strings(obj, "stop_sequences")?;
    if let Some(meta) = obj.get("metadata").and_then(|m| m.as_object()) {
        extra_key(meta, &["user_id"], "metadata")?;
    }
    for (i, tool) in objects(obj.get("tools"), "tools")?.into_iter().enumerate() {
        match tool.get("type").and_then(|t| t.as_str()) {
            None | Some("custom") => {
                extra_key(
                    tool,
                    &["type", "name", "description", "input_schema", "strict", "cache_control"],
                    &format!("tools.{i}"),
                )?;
                if !tool.get("input_schema").is_some_and(|s| s.is_object()) {
                    return Err(format!("tools.{i}.input_schema: Field required"));
                }
            }
            Some(_) => {}
        }
        if !tool.get("name").is_some_and(|n| n.is_string()) {
            return Err(format!("tools.{i}.name: Field required"));
        }
    }
    let blocks: &[(&str, &[&str])] = &[
        ("text", &["type", "text", "cache_control", "citations"]),
        ("image", &["type", "source", "cache_control"]),
        ("tool_use", &["type", "id", "name", "input", "cache_control"]),
        (
            "tool_result",
            &["type", "tool_use_id", "content", "is_error", "cache_control"],
        ),
    ];
    for (i, m) in messages.iter().enumerate() {
        for (j, b) in objects(
            m.get("content").filter(|c| c.is_array()),
            &format!("messages.{i}.content"),
        )?
        .into_iter()
        .enumerate()
        {
            let kind = b.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let Some((_, allowed)) = blocks.iter().find(|(k, _)| *k == kind) else {
                return Err(format!(
                    "messages.{i}.content.{j}.type: Input tag '{kind}' is not expected"
                ));
            };
            extra_key(b, allowed, &format!("messages.{i}.content.{j}"))?;
        }
    }
    Ok(())
}

/// A tool the request offers, if the model should call one now (the last turn is not a tool
/// result).
fn tool_to_call(api: Api, body: &serde_json::Value) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    let name = match api {
        Api::OpenAi => tools.first()?.get("function")?.get("name")?.as_str()?,
        Api::Anthropic => tools.first()?.get("name")?.as_str()?,
    };
    let last = body.get("messages")?.as_array()?.last()?;
    let answered = match api {
        Api::OpenAi => last.get("role").and_then(|r| r.as_str()) == Some("tool"),
        Api::Anthropic => last.get("content").and_then(|c| c.as_array()).is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("type").and_then(|t| t.as_str()) == Some("tool_result"))
        }),
    };
    (!answered).then(|| name.to_owned())
}

fn model_error(api: Api, status: u16, message: &str) -> Vec<u8> {
    let body = match api {
        Api::OpenAi => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
        }
        Api::Anthropic => {
            json!({"type": "error", "error": {"type": if status == 400 { "invalid_request_error" } else { "api_error" }, "message": message}})
        }
    };
    body.to_string().into_bytes()
}

/// A non-streaming model answer, or `None` when the request is not a model call.
fn model_answer(request: &Request, mode: Mode) -> Option<(u16, Vec<u8>)> {
    let api = model_api(request, mode)?;
    if let Some(status) = request_header(request, "x-mock-status").and_then(|s| s.parse::<u16>().ok()) {
        return Some((status, model_error(api, status, "mock failure")));
    }
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    if let Err(message) = validate(api, request, &body) {
        return Some((400, model_error(api, 400, &message)));
    }
    let usage = mock_usage(request);
    let cache = mock_cache(request);
    let refusal = request_header(request, "x-mock-refusal");
    let model = body.get("model").cloned().unwrap_or_else(|| json!("mock"));
    let tool = tool_to_call(api, &body).filter(|_| refusal.is_none());
    let tool_args = request_header(request, "x-mock-tool-args").unwrap_or("{\"city\":\"Oslo\"}");
    // x-mock-pad: N makes the answer's text N bytes longer.
    let pad = "x".repeat(
        request_header(request, "x-mock-pad")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            .min(8 << 20),
    );
    let answer = match api {
        Api::OpenAi => {
            let message = match (&tool, refusal) {
                (_, Some(text)) => json!({"role": "assistant", "content": null, "refusal": text}),
                (Some(name), None) => json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": tool_args}}]}),
                (None, None) => {
                    json!({"role": "assistant", "content": format!("Hello from openai{pad}"), "refusal": null})
                }
            };
            let finish = if tool.is_some() { "tool_calls" } else { "stop" };
            let finish = request_header(request, "x-mock-stop").unwrap_or(finish);
            let mut v = json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}]});
            if let Some(u) = usage {
                v["usage"] = usage_json(api, u, cache);
            }
            v
        }
        Api::Anthropic => {
            let content = match (&tool, refusal) {
                (_, Some(text)) => json!([{"type": "text", "text": text}]),
                (Some(name), None) => {
                    json!([{"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {"city": "Oslo"}}])
                }
                (None, None) => json!([{"type": "text", "text": format!("Hello from anthropic{pad}")}]),
            };
            let stop = match (&tool, refusal) {
                (_, Some(_)) => "refusal",
                (Some(_), None) => "tool_use",
                (None, None) => "end_turn",
            };
            let stop = request_header(request, "x-mock-stop").unwrap_or(stop);
            let mut v = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": null});
            if let Some(u) = usage {
                v["usage"] = usage_json(api, u, cache);
            }
            v
        }
    };
    Some((200, answer.to_string().into_bytes()))
}

/// The parts of a streamed model answer, each to be flushed on its own.
fn model_stream(request: &Request, mode: Mode) -> Option<Vec<Vec<u8>>> {
    let api = model_api(request, mode)?;
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    let wants_stream =
        request_header(request, "x-mock-stream") == Some("1") || body.get("stream") == Some(&json!(true));
    if !wants_stream || request_header(request, "x-mock-status").is_some() || validate(api, request, &body).is_err() {
        return None;
    }
    let usage = mock_usage(request);
    let cache = mock_cache(request);
    let refusal = request_header(request, "x-mock-refusal");
    let tool = tool_to_call(api, &body).filter(|_| refusal.is_none());
    let tool_args = request_header(request, "x-mock-tool-args").unwrap_or("{\"city\":\"Oslo\"}");
    let stop_override = request_header(request, "x-mock-stop");
    let model = body.get("model").cloned().unwrap_or_else(|| json!("mock"));
    // x-mock-events: N streams N text deltas instead of "Hel", "lo"; a refusal streams its text
    // in two halves.
    let words: Vec<String> = match (
        request_header(request, "x-mock-events").and_then(|n| n.parse::<usize>().ok()),
        refusal,
    ) {
        (_, Some(text)) => {
            let half = text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i);
            vec![text[..half].to_owned(), text[half..].to_owned()]
        }
        (Some(n), None) => (0..n.min(10_000)).map(|i| format!("w{i} ")).collect(),
        (None, None) => vec!["Hel".to_owned(), "lo".to_owned()],
    };
    let mut events: Vec<String> = Vec::new();
    match api {
        Api::OpenAi => {
            let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
                format!(
                    "data: {}\n\n",
                    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null})
                )
            };
            events.push(chunk(json!({"role": "assistant", "content": ""}), json!(null)));
            let finish = |default: &str| json!(stop_override.unwrap_or(default));
            match &tool {
                Some(name) => {
                    events.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": ""}}]}), json!(null)));
                    let half = tool_args.len() / 2;
                    for part in [tool_args.get(..half), tool_args.get(half..)].into_iter().flatten() {
                        events.push(chunk(
                            json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                            json!(null),
                        ));
                    }
                    events.push(chunk(json!({}), finish("tool_calls")));
                }
                None => {
                    let key = if refusal.is_some() { "refusal" } else { "content" };
                    for word in &words {
                        events.push(chunk(json!({ key: word }), json!(null)));
                    }
                    events.push(chunk(json!({}), finish("stop")));
                }
            }
            if let Some(u) = usage {
                events.push(format!(
                    "data: {}\n\n",
                    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": model, "choices": [], "usage": usage_json(api, u, cache)})
                ));
            }
            events.push("data: [DONE]\n\n".to_owned());
        }
        Api::Anthropic => {
            let (p, c) = usage.unwrap_or((0, 0));
            let start_usage = if usage.is_some() {
                usage_json(api, (p, 1), cache)
            } else {
                json!({})
            };
            let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
            events.push(ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
            ));
            match &tool {
                Some(name) => {
                    events.push(ev(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}}}),
                    ));
                    for part in ["{\"city\":", "\"Oslo\"}"] {
                        events.push(ev(
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": part}}),
                        ));
                    }
                }
                None => {
                    events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
                    for word in &words {
                        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})));
                    }
                }
            }
            events.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            let delta_usage = if usage.is_some() {
                json!({"output_tokens": c})
            } else {
                json!({})
            };
            let stop = match (&tool, refusal) {
                (_, Some(_)) => "refusal",
                (Some(_), None) => "tool_use",
                (None, None) => "end_turn",
            };
            let stop = stop_override.unwrap_or(stop);
            events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": delta_usage})));
            events.push(ev("message_stop", json!({"type": "message_stop"})));
        }
    }
    // Split every event in two, mid-JSON, so readers must join chunks.
    let mut parts = Vec::new();
    for e in events {
        let bytes = e.into_bytes();
        let (a, b) = bytes.split_at(bytes.len() / 2);
        parts.push(a.to_vec());
        parts.push(b.to_vec());
    }
    Some(parts)
}

fn respond(request: &Request, jwks: &Mutex<JwksState>, identity: &Identity) -> (u16, &'static str, Vec<u8>) {
    if let Some((status, body)) = model_answer(request, identity.1) {
        return (status, "application/json", body);
    }
    if request.method == "GET" && request.path.split('?').next() == Some(JWKS_PATH) {
        if let Ok(mut state) = jwks.lock() {
            state.hits += 1;
            return (state.status, "application/json", state.body.clone().into_bytes());
        }
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &request.headers {
        headers
            .entry(name.clone())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    let echo = json!({
        "upstream": &*identity.0,
        "method": request.method,
        "path": request.path,
        "headers": headers,
        "body": String::from_utf8_lossy(&request.body),
    });
    (200, "application/json", echo.to_string().into_bytes())
}

/// A 200 answer as a broken backend would send it (see the module docs).
fn spoil(kind: &str, content_type: &'static str, mut body: Vec<u8>) -> (&'static str, Vec<u8>) {
    match kind {
        "garbage" => (content_type, b"<html><body>upstream hiccup</body></html>".to_vec()),
        "truncated" => {
            body.truncate(body.len() / 2);
            (content_type, body)
        }
        "empty" => (content_type, Vec::new()),
        "wrong_shape" => (content_type, br#"{"object":"mock","note":"not an answer"}"#.to_vec()),
        "wrong_types" => (
            content_type,
            br#"{"id":7,"type":"message","object":"chat.completion","content":"hi","choices":"none","usage":[]}"#
                .to_vec(),
        ),
        "text" => ("text/plain", body),
        _ => (content_type, body),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut raw = Vec::new();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&raw);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        if let Some((name, value)) = text.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            chunk.truncate(size);
            body.extend(chunk);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Some(Request {
        method,
        path,
        headers,
        body,
    }))
}
