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
//! answer (none without it), `x-mock-delay-ms: N` waits before answering, `x-mock-stream: 1` streams with `x-mock-events: N` text deltas and `x-mock-gap-ms: N` between writes (default 15) (and `x-mock-cut: 1` drops the connection halfway, `x-mock-cut: clean` ends the body there), SSE in several flushed chunks with the
//! usage event split across two of them, `x-mock-status: N` answers an error without usage,
//! `x-mock-pad: N` lengthens the answer text by N bytes, `x-mock-cache-control: V` sends that
//! `cache-control`, `x-mock-header: NAME=VALUE` sends that header. Every non-streamed answer carries `x-upstream-request: N`, its number.

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

fn mock_usage(request: &Request) -> Option<(u64, u64)> {
    let Some(given) = request_header(request, "x-mock-usage") else {
        // Unsteered (the demo backend): a plausible count, a token per 4 bytes of request.
        let steered = request.headers.iter().any(|(n, _)| n.starts_with("x-mock-"));
        return (!steered).then_some((request.body.len() as u64 / 4, 2));
    };
    let (p, c) = given.split_once(',')?;
    Some((p.trim().parse().ok()?, c.trim().parse().ok()?))
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
    let model = body.get("model").cloned().unwrap_or_else(|| json!("mock"));
    let tool = tool_to_call(api, &body);
    // x-mock-pad: N makes the answer's text N bytes longer.
    let pad = "x".repeat(
        request_header(request, "x-mock-pad")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            .min(8 << 20),
    );
    let answer = match api {
        Api::OpenAi => {
            let message = match &tool {
                Some(name) => json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": "{\"city\":\"Oslo\"}"}}]}),
                None => json!({"role": "assistant", "content": format!("Hello from openai{pad}")}),
            };
            let finish = if tool.is_some() { "tool_calls" } else { "stop" };
            let mut v = json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}]});
            if let Some((p, c)) = usage {
                v["usage"] = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
            }
            v
        }
        Api::Anthropic => {
            let content = match &tool {
                Some(name) => {
                    json!([{"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {"city": "Oslo"}}])
                }
                None => json!([{"type": "text", "text": format!("Hello from anthropic{pad}")}]),
            };
            let stop = if tool.is_some() { "tool_use" } else { "end_turn" };
            let mut v = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": null});
            if let Some((p, c)) = usage {
                v["usage"] = json!({"input_tokens": p, "output_tokens": c});
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
    let tool = tool_to_call(api, &body);
    let model = body.get("model").cloned().unwrap_or_else(|| json!("mock"));
    // x-mock-events: N streams N text deltas instead of "Hel", "lo".
    let words: Vec<String> = match request_header(request, "x-mock-events").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => (0..n.min(10_000)).map(|i| format!("w{i} ")).collect(),
        None => vec!["Hel".to_owned(), "lo".to_owned()],
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
            match &tool {
                Some(name) => {
                    events.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": ""}}]}), json!(null)));
                    events.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                        json!(null),
                    ));
                    events.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
                        json!(null),
                    ));
                    events.push(chunk(json!({}), json!("tool_calls")));
                }
                None => {
                    for word in &words {
                        events.push(chunk(json!({"content": word}), json!(null)));
                    }
                    events.push(chunk(json!({}), json!("stop")));
                }
            }
            if let Some((p, c)) = usage {
                events.push(format!("data: {}\n\n", json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": model, "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})));
            }
            events.push("data: [DONE]\n\n".to_owned());
        }
        Api::Anthropic => {
            let (p, c) = usage.unwrap_or((0, 0));
            let start_usage = if usage.is_some() {
                json!({"input_tokens": p, "output_tokens": 1})
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
            let stop = if tool.is_some() { "tool_use" } else { "end_turn" };
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
