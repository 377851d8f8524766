//! The demo and mock upstream: a small HTTP/1.1 server on std only.
//!
//! Every request is answered with a JSON echo of what arrived (method, path, headers, body), so
//! tests can assert on exactly what Envoy forwarded. `GET /.well-known/jwks.json` serves a JWKS
//! document whose status and body the owner of the [`Upstream`] can change at any time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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
}

impl Upstream {
    /// Binds `addr` (port 0 for any free port) and serves on background threads.
    pub fn start(addr: &str) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let jwks = Arc::new(Mutex::new(JwksState {
            status: 404,
            body: String::new(),
            hits: 0,
        }));
        let shared = Arc::clone(&jwks);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let jwks = Arc::clone(&shared);
                thread::spawn(move || {
                    let _ = serve_connection(stream, &jwks);
                });
            }
        });
        Ok(Upstream { addr, jwks })
    }

    /// Sets what the JWKS endpoint answers.
    pub fn set_jwks(&self, status: u16, body: impl Into<String>) {
        if let Ok(mut state) = self.jwks.lock() {
            state.status = status;
            state.body = body.into();
        }
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

fn serve_connection(stream: TcpStream, jwks: &Mutex<JwksState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader)? {
        let (status, content_type, body) = respond(&request, jwks);
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            reason_phrase(status),
            body.len()
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(&body)?;
        writer.flush()?;
    }
    Ok(())
}

fn respond(request: &Request, jwks: &Mutex<JwksState>) -> (u16, &'static str, Vec<u8>) {
    if request.method == "GET" && request.path.split('?').next() == Some(JWKS_PATH) {
        if let Ok(mut state) = jwks.lock() {
            state.hits += 1;
            return (
                state.status,
                "application/json",
                state.body.clone().into_bytes(),
            );
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
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
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
