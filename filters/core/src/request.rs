//! What a decision reads of a request: the [`RequestSource`] trait, so that a shell passes the
//! host's lazy header view and a decision reads only the names it needs (route matching reads
//! `:method` and `:path`, and `:authority` only for rules that list hosts), and
//! [`RequestView`], an owned map for tests, benches and `portico check`.
//!
//! Header values are kept as bytes: Envoy passes through values with bytes above 0x7f, and the
//! SDK's string accessors panic on them. Everything here treats such a value as data, never as
//! a reason to fail.

/// A request's headers as a decision reads them. Names are lower-case (Envoy keeps them so).
pub trait RequestSource {
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// Every value of header `name`, in order. A host source reads the whole map for this
    /// (the host answers one value per name): keep it to headers that may repeat.
    fn headers_named(&self, name: &str) -> Vec<&[u8]>;

    /// The first value of header `name` when it is valid UTF-8.
    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn method(&self) -> &str {
        self.header_str(":method").unwrap_or("")
    }

    /// The full `:path`, query string included.
    fn path_and_query(&self) -> &str {
        self.header_str(":path").unwrap_or("")
    }

    /// The path without its query string.
    fn path(&self) -> &str {
        let full = self.path_and_query();
        full.split_once('?').map_or(full, |(path, _)| path)
    }

    /// The query string without `?`, if any.
    fn query(&self) -> Option<&str> {
        self.path_and_query().split_once('?').map(|(_, q)| q)
    }

    /// The host from `:authority` (or `host`), as [`normalize_host`] gives it.
    fn host(&self) -> String {
        let raw = self
            .header_str(":authority")
            .or_else(|| self.header_str("host"))
            .unwrap_or("");
        normalize_host(raw)
    }
}

impl std::fmt::Debug for dyn RequestSource + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestSource({} {})", self.method(), self.path())
    }
}

/// Request headers held in memory (names lower-case, pseudo-headers included).
#[derive(Debug, Clone, Default)]
pub struct RequestView {
    headers: Vec<(String, Vec<u8>)>,
}

impl RequestView {
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Self {
        Self { headers }
    }
}

impl RequestSource for RequestView {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    fn headers_named(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// The host of an authority as every filter matches it: lower-cased, port removed, and one
/// trailing dot removed. `api.example.com.` is the fully qualified spelling of the same DNS
/// name, which clients may send and Envoy passes on as it is: without this, it (or a port)
/// would skip every rule written for `api.example.com`.
pub fn normalize_host(authority: &str) -> String {
    let host = authority_host(authority);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// The host of an authority a client wrote (`name:port`, `[v6]:port`, either without a port),
/// the brackets of an IPv6 literal removed. Not rate-limit's `ip_of_source_address`, which
/// reads Envoy's socket address of the peer.
fn authority_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split_once(']').map_or(authority, |(host, _)| host);
    }
    authority.rsplit_once(':').map_or(authority, |(host, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            host
        } else {
            authority
        }
    })
}

/// Every decoded value of query parameter `name`, in order. Values that do not decode to UTF-8
/// are returned as `None` so that a caller can reject them rather than skip them.
pub fn query_values(query: &str, name: &str) -> Vec<Option<String>> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key).as_deref() == Some(name)).then(|| percent_decode(value))
        })
        .collect()
}

/// `path_and_query` with every occurrence of query parameter `name` removed.
pub fn remove_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(key).as_deref() != Some(name)
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Decodes `%XX` escapes and `+` (as space). `None` when an escape is malformed or the result
/// is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| hex_value(*c))?;
                let lo = bytes.get(i + 2).and_then(|c| hex_value(*c))?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Every value of cookie `name` across all `cookie` header values.
pub fn cookie_values<'a>(headers: impl Iterator<Item = &'a [u8]>, name: &str) -> Vec<&'a [u8]> {
    headers
        .flat_map(|header| header.split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = trim(pair);
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (key, value) = pair.split_at(eq);
            (trim(key) == name.as_bytes()).then(|| trim(value.get(1..).unwrap_or_default()))
        })
        .collect()
}

/// A `cookie` header value without cookie `name`; `None` when nothing is left.
pub fn remove_cookie(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let kept: Vec<&[u8]> = header
        .split(|b| *b == b';')
        .map(trim)
        .filter(|pair| {
            let key = pair.split(|b| *b == b'=').next().unwrap_or_default();
            !pair.is_empty() && trim(key) != name.as_bytes()
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(kept.join(&b"; "[..]))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pairs: &[(&str, &[u8])]) -> RequestView {
        RequestView::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect())
    }

    #[test]
    fn path_and_query_are_split() {
        let v = view(&[(":path", b"/a/b?x=1&y=2")]);
        assert_eq!(v.path(), "/a/b");
        assert_eq!(v.query(), Some("x=1&y=2"));
        let v = view(&[(":path", b"/a")]);
        assert_eq!(v.query(), None);
    }

    #[test]
    fn host_drops_port_and_case() {
        assert_eq!(
            view(&[(":authority", b"API.Example.com:8080")]).host(),
            "api.example.com"
        );
        assert_eq!(view(&[(":authority", b"[::1]:80")]).host(), "::1");
        assert_eq!(view(&[("host", b"a.test")]).host(), "a.test");
    }

    #[test]
    fn host_drops_one_trailing_dot_so_a_fully_qualified_name_is_the_same_host() {
        for raw in ["api.example.com.", "API.example.com.:443", "api.example.com"] {
            assert_eq!(normalize_host(raw), "api.example.com", "{raw}");
        }
        assert_eq!(view(&[(":authority", b"A.test.:80")]).host(), "a.test");
        assert_eq!(
            normalize_host("a.test.."),
            "a.test.",
            "only one dot: two is not a DNS name"
        );
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("."), "");
    }

    #[test]
    fn non_utf8_header_values_are_data_not_failures() {
        let v = view(&[("x-bin", b"\xff\xfe"), (":path", b"/\xff")]);
        assert_eq!(v.header("x-bin"), Some(&b"\xff\xfe"[..]));
        assert_eq!(v.header_str("x-bin"), None);
        assert_eq!(v.path(), "");
    }

    #[test]
    fn query_values_decode_and_keep_duplicates() {
        assert_eq!(
            query_values("a=1&token=x%2By&b&token=z+w", "token"),
            vec![Some("x+y".to_owned()), Some("z w".to_owned())]
        );
        assert_eq!(query_values("token=%zz", "token"), vec![None]);
        assert_eq!(query_values("token=%ff", "token"), vec![None]);
        assert!(query_values("", "token").is_empty());
    }

    #[test]
    fn removing_a_query_param_keeps_the_rest() {
        assert_eq!(remove_query_param("/p?a=1&key=s&b=2", "key"), "/p?a=1&b=2");
        assert_eq!(remove_query_param("/p?key=s", "key"), "/p");
        assert_eq!(remove_query_param("/p", "key"), "/p");
    }

    #[test]
    fn percent_decoding_rejects_truncated_escapes() {
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%"), None);
        assert_eq!(percent_decode("%41b"), Some("Ab".to_owned()));
    }

    #[test]
    fn cookies_are_found_across_headers() {
        let headers: Vec<&[u8]> = vec![b"a=1; jwt=t1", b"jwt = t2 ;b=3"];
        assert_eq!(cookie_values(headers.into_iter(), "jwt"), vec![&b"t1"[..], &b"t2"[..]]);
    }

    #[test]
    fn removing_a_cookie_keeps_the_others() {
        assert_eq!(remove_cookie(b"a=1; jwt=t; b=2", "jwt"), Some(b"a=1; b=2".to_vec()));
        assert_eq!(remove_cookie(b"jwt=t", "jwt"), None);
    }
}
