//! A minimal HTTP/1.1 client that can send what real clients and attackers send: raw header
//! bytes, duplicate headers, oversized values.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Send the body chunked (no `content-length`), in pieces of this many bytes.
    chunk_size: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn get(path: &str) -> Request {
    Request::new("GET", path)
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            chunk_size: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the body with `transfer-encoding: chunked` in chunks of `size` bytes, as clients
    /// that stream their upload do: the gateway sees no `content-length`.
    pub fn chunked(mut self, size: usize) -> Self {
        self.chunk_size = Some(size.max(1));
        self
    }

    /// Sends the request on a new connection and reads the whole response.
    pub fn send(&self, addr: SocketAddr) -> Response {
        self.try_send(addr)
            .unwrap_or_else(|e| panic!("{} {} to {addr}: {e}", self.method, self.path))
    }

    pub fn try_send(&self, addr: SocketAddr) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect(addr)?;
        self.exchange(&mut stream, false)
    }

    /// Sends from the local address `from` (any 127.0.0.0/8 address on Linux).
    pub fn send_from(&self, from: std::net::IpAddr, addr: SocketAddr) -> Response {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.bind(&SocketAddr::new(from, 0).into()).expect("bind");
        socket.connect(&addr.into()).expect("connect");
        let mut stream: TcpStream = socket.into();
        self.exchange(&mut stream, false).expect("exchange")
    }

    fn exchange(&self, stream: &mut TcpStream, keep_alive: bool) -> std::io::Result<Response> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        if !self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            out.extend_from_slice(b"host: gateway.test\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        match self.chunk_size {
            Some(size) => {
                out.extend_from_slice(
                    format!("transfer-encoding: chunked\r\nconnection: {connection}\r\n\r\n").as_bytes(),
                );
                for chunk in self.body.chunks(size) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                out.extend_from_slice(
                    format!(
                        "content-length: {}\r\nconnection: {connection}\r\n\r\n",
                        self.body.len()
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(&self.body);
            }
        }
        stream.write_all(&out)?;
        let raw = read_response(stream)?;
        parse_response(&raw)
            .ok_or_else(|| std::io::Error::other(format!("unparsable response: {:?}", String::from_utf8_lossy(&raw))))
    }
}

/// A kept-alive connection, for sending many requests cheaply.
#[derive(Debug)]
pub struct Connection(TcpStream);

impl Connection {
    pub fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Connection(stream))
    }

    pub fn send(&mut self, request: &Request) -> std::io::Result<Response> {
        request.exchange(&mut self.0, true)
    }
}

/// Reads one response, stopping at the end of its body rather than waiting for the server to
/// close (Envoy delays closing a `connection: close` stream by up to a second).
fn read_response(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = raw.len() - (end + 4);
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(length) => body >= length,
                None if head.contains("transfer-encoding: chunked") => raw.ends_with(b"0\r\n\r\n"),
                None => head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304"),
            };
            if complete {
                return Ok(raw);
            }
        }
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(raw.get(..end)?);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw.get(end + 4..)?.to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    }
    Some(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(data.get(..line_end)?).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = data.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `error.code` of a Portico error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    /// A header the echo upstream received, when the request reached it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}
