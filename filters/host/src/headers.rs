//! Header and body views for the callbacks where Envoy allows reading them.
//!
//! A view reads lazily: [`HeaderView::get`] makes one host call per distinct name and keeps the
//! answer for the rest of the stream, and only [`HeaderView::all`] fetches the whole map. When
//! the host applies a filter's header effects it writes them through the same cache, so a
//! later read (a body callback while the headers are held, another stage) sees them without a
//! host call. Reads inside one callback see the headers as the callback started: effects are
//! applied after it returns.
//!
//! Header names are compared ignoring ASCII case (Envoy keeps them lower-case). Values are
//! bytes: Envoy passes bytes above 0x7f through, and they are data, not a reason to fail.

use std::cell::OnceCell;

use portico_core::request::RequestSource;

use crate::env::Env;
use crate::host::{Buffer, Host, Map};

// === impl HeaderCache ===

/// The values read so far from one header map: filled through `&self` while a callback runs
/// (a chain of slots that are written once), changed through `&mut self` between callbacks.
#[derive(Debug, Default)]
pub(crate) struct HeaderCache {
    slots: Slots,
    all: OnceCell<Vec<(String, Vec<u8>)>>,
}

const SLOTS: usize = 8;

#[derive(Debug, Default)]
struct Slots {
    cells: [OnceCell<Slot>; SLOTS],
    more: OnceCell<Box<Slots>>,
}

#[derive(Debug)]
struct Slot {
    name: Box<str>,
    value: Option<Vec<u8>>,
}

impl Slots {
    fn find(&self, name: &str) -> Option<&Slot> {
        let mut slots = self;
        loop {
            for cell in &slots.cells {
                match cell.get() {
                    Some(slot) if slot.name.eq_ignore_ascii_case(name) => return Some(slot),
                    Some(_) => {}
                    None => return None,
                }
            }
            slots = slots.more.get()?;
        }
    }

    /// Stores `slot` in the first free cell and returns it.
    fn insert(&self, slot: Slot) -> &Slot {
        let mut slots = self;
        loop {
            if let Some(cell) = slots.cells.iter().find(|c| c.get().is_none()) {
                return cell.get_or_init(|| slot);
            }
            slots = slots.more.get_or_init(Box::default);
        }
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut Slot> {
        let mut slots = self;
        loop {
            let Slots { cells, more } = slots;
            for cell in cells.iter_mut() {
                match cell.get_mut() {
                    Some(slot) if slot.name.eq_ignore_ascii_case(name) => return Some(slot),
                    Some(_) => {}
                    None => return None,
                }
            }
            slots = more.get_mut()?;
        }
    }

    /// Records `value` as the known first value of `name`.
    fn put(&mut self, name: &str, value: Option<Vec<u8>>) {
        match self.find_mut(name) {
            Some(slot) => slot.value = value,
            None => {
                self.insert(Slot {
                    name: name.into(),
                    value,
                });
            }
        }
    }
}

impl HeaderCache {
    fn get<'a>(&'a self, host: &dyn Host, map: Map, name: &str) -> Option<&'a [u8]> {
        if let Some(all) = self.all.get() {
            return all
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice());
        }
        if let Some(slot) = self.slots.find(name) {
            return slot.value.as_deref();
        }
        let value = match host.header(map, name) {
            Ok(value) => value,
            Err(e) => {
                log::error!("reading header {name:?} of {map:?} failed: host status {}", e.0);
                None
            }
        };
        self.slots
            .insert(Slot {
                name: name.into(),
                value,
            })
            .value
            .as_deref()
    }

    fn all<'a>(&'a self, host: &dyn Host, map: Map) -> &'a [(String, Vec<u8>)] {
        self.all.get_or_init(|| {
            host.header_pairs(map).unwrap_or_else(|e| {
                log::error!("reading the headers of {map:?} failed: host status {}", e.0);
                Vec::new()
            })
        })
    }

    /// Write-through of a set: `name` now has exactly `value`.
    pub(crate) fn set(&mut self, name: &str, value: &[u8]) {
        self.slots.put(name, Some(value.to_vec()));
        if let Some(all) = self.all.get_mut() {
            all.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            all.push((name.to_ascii_lowercase(), value.to_vec()));
        }
    }

    /// Write-through of an add: the first value changes only if there was none.
    pub(crate) fn add(&mut self, name: &str, value: &[u8]) {
        if let Some(all) = self.all.get_mut() {
            all.push((name.to_ascii_lowercase(), value.to_vec()));
        }
        match self.slots.find_mut(name) {
            Some(slot) if slot.value.is_none() => slot.value = Some(value.to_vec()),
            // Known first value: unchanged. Never read: still unknown (it may have had one).
            Some(_) | None => {}
        }
    }

    /// Write-through of a remove.
    pub(crate) fn remove(&mut self, name: &str) {
        self.slots.put(name, None);
        if let Some(all) = self.all.get_mut() {
            all.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
    }
}

// === impl HeaderView ===

/// One header map, readable for the duration of a callback.
#[derive(Clone, Copy)]
pub struct HeaderView<'a> {
    host: &'a dyn Host,
    map: Map,
    cache: &'a HeaderCache,
    end_of_stream: bool,
}

impl<'a> HeaderView<'a> {
    pub(crate) fn new(host: &'a dyn Host, map: Map, cache: &'a HeaderCache, end_of_stream: bool) -> Self {
        Self {
            host,
            map,
            cache,
            end_of_stream,
        }
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.cache.get(self.host, self.map, name)
    }

    /// The first value of header `name` when it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header in order, fetched in one host call (a filter that must see headers it
    /// cannot name in advance, or store them).
    pub fn all(&self) -> &'a [(String, Vec<u8>)] {
        self.cache.all(self.host, self.map)
    }

    /// Every value of header `name`, in order (reads the whole map).
    pub fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.all()
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether the message ends with these headers (no body follows).
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }

    /// Clock, properties, shared data and metrics.
    pub fn env(&self) -> Env<'a> {
        Env::new(self.host)
    }
}

/// Request headers: [`HeaderView`] plus the pseudo-headers by name.
#[derive(Clone, Copy)]
pub struct RequestHeaders<'a>(HeaderView<'a>);

impl<'a> RequestHeaders<'a> {
    pub(crate) fn new(view: HeaderView<'a>) -> Self {
        Self(view)
    }

    pub fn method(&self) -> &'a str {
        self.0.get_str(":method").unwrap_or("")
    }

    /// `:path` with its query string.
    pub fn path_and_query(&self) -> &'a str {
        self.0.get_str(":path").unwrap_or("")
    }

    /// `:path` without its query string.
    pub fn path(&self) -> &'a str {
        let full = self.path_and_query();
        full.split_once('?').map_or(full, |(path, _)| path)
    }

    /// `:authority` as sent (port included).
    pub fn authority(&self) -> &'a str {
        self.0.get_str(":authority").unwrap_or("")
    }
}

/// Decisions read the request through [`RequestSource`]: one host call per distinct name they
/// ask for (none for a name already read), the whole map only for [`RequestSource::headers_named`].
/// A filter that will read most of the map anyway calls [`HeaderView::all`] first: later reads
/// are then answered from it.
impl RequestSource for RequestHeaders<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name)
    }

    fn headers_named(&self, name: &str) -> Vec<&[u8]> {
        self.0.values(name).collect()
    }
}

impl<'a> std::ops::Deref for RequestHeaders<'a> {
    type Target = HeaderView<'a>;
    fn deref(&self) -> &HeaderView<'a> {
        &self.0
    }
}

/// Response headers: [`HeaderView`] plus the status.
#[derive(Clone, Copy)]
pub struct ResponseHeaders<'a>(HeaderView<'a>);

impl<'a> ResponseHeaders<'a> {
    pub(crate) fn new(view: HeaderView<'a>) -> Self {
        Self(view)
    }

    /// `:status`; `None` if absent or not a number.
    pub fn status(&self) -> Option<u16> {
        self.0.get_str(":status")?.parse().ok()
    }
}

impl<'a> std::ops::Deref for ResponseHeaders<'a> {
    type Target = HeaderView<'a>;
    fn deref(&self) -> &HeaderView<'a> {
        &self.0
    }
}

// === impl Exchange ===

/// What the log callback may read besides the host services: the request and response
/// headers, which Envoy still holds after the response (its access log reads them too). A map
/// the stream never had (a client that went away before the response) reads as empty. Reads
/// go through the caches of the earlier callbacks, so a name this filter already read costs
/// no host call.
#[derive(Clone, Copy)]
pub struct Exchange<'a> {
    request: RequestHeaders<'a>,
    response: ResponseHeaders<'a>,
}

impl<'a> Exchange<'a> {
    pub(crate) fn new(request: RequestHeaders<'a>, response: ResponseHeaders<'a>) -> Self {
        Self { request, response }
    }

    pub fn request(&self) -> &RequestHeaders<'a> {
        &self.request
    }

    pub fn response(&self) -> &ResponseHeaders<'a> {
        &self.response
    }

    /// Clock, properties, shared data and metrics.
    pub fn env(&self) -> Env<'a> {
        self.request.env()
    }
}

// === impl Body ===

/// The body as the host holds it in a body callback: the latest chunk when the filter let the
/// previous ones go, everything so far while it buffers.
pub struct Body<'a> {
    host: &'a dyn Host,
    buffer: Buffer,
    /// Where this view starts in the host's buffer: 0, except for a stage behind one that
    /// buffers, which sees only what arrived since it last let the body go.
    start: usize,
    size: usize,
    end_of_stream: bool,
    bytes: OnceCell<Vec<u8>>,
}

impl<'a> Body<'a> {
    pub(crate) fn new(host: &'a dyn Host, buffer: Buffer, size: usize, end_of_stream: bool) -> Self {
        Self::range(host, buffer, 0, size, end_of_stream)
    }

    /// The `size` bytes of the host's buffer from `start`.
    pub(crate) fn range(host: &'a dyn Host, buffer: Buffer, start: usize, size: usize, end_of_stream: bool) -> Self {
        Self {
            host,
            buffer,
            start,
            size,
            end_of_stream,
            bytes: OnceCell::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Whether this is the last callback of the body.
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }

    /// The bytes, read from the host on first use (empty if the host cannot give them).
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get_or_init(|| {
            if self.size == 0 {
                return Vec::new();
            }
            match self.host.buffer(self.buffer, self.start, self.size) {
                Ok(bytes) => bytes.unwrap_or_default(),
                Err(e) => {
                    log::error!("reading {:?} failed: host status {}", self.buffer, e.0);
                    Vec::new()
                }
            }
        })
    }

    pub fn env(&self) -> Env<'a> {
        Env::new(self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockHost;

    fn host_with(pairs: &[(&str, &str)]) -> MockHost {
        let host = MockHost::new();
        host.set_headers(Map::RequestHeaders, pairs);
        host.open(Map::RequestHeaders);
        host
    }

    #[test]
    fn each_distinct_name_is_read_once() {
        let host = host_with(&[(":path", "/a?q=1"), ("x-a", "1")]);
        let cache = HeaderCache::default();
        let view = RequestHeaders::new(HeaderView::new(&host, Map::RequestHeaders, &cache, false));
        assert_eq!(view.path(), "/a");
        assert_eq!(view.path_and_query(), "/a?q=1");
        assert_eq!(view.get("x-a"), Some(&b"1"[..]));
        assert_eq!(view.get("X-A"), Some(&b"1"[..]));
        assert_eq!(view.get("x-missing"), None);
        assert_eq!(view.get("x-missing"), None);
        assert_eq!(host.calls(), 3, "one call each for :path, x-a and x-missing");
    }

    #[test]
    fn a_decision_reads_only_the_names_it_asks_for() {
        let host = host_with(&[
            (":method", "GET"),
            (":path", "/a?q=1"),
            ("x-a", "1"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        let cache = HeaderCache::default();
        let headers = RequestHeaders::new(HeaderView::new(&host, Map::RequestHeaders, &cache, false));
        let source: &dyn RequestSource = &headers;
        assert_eq!(source.method(), "GET");
        assert_eq!(source.path(), "/a");
        assert_eq!(source.query(), Some("q=1"));
        assert_eq!(host.calls(), 2, "one call each for :method and :path");
        assert_eq!(source.headers_named("cookie"), vec![&b"a=1"[..], &b"b=2"[..]]);
        assert_eq!(host.calls(), 3, "a repeated header reads the whole map, once");
        assert_eq!(source.header("x-a"), Some(&b"1"[..]));
        assert_eq!(source.header_str("x-missing"), None);
        assert_eq!(host.calls(), 3, "the whole map answers the rest");
    }

    #[test]
    fn more_names_than_one_chunk_of_slots_are_all_kept() {
        let pairs: Vec<(String, String)> = (0..20).map(|i| (format!("x-{i}"), i.to_string())).collect();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let host = host_with(&refs);
        let cache = HeaderCache::default();
        let view = HeaderView::new(&host, Map::RequestHeaders, &cache, false);
        let held: Vec<&[u8]> = (0..20).filter_map(|i| view.get(&format!("x-{i}"))).collect();
        assert_eq!(held.len(), 20);
        assert_eq!(held.get(19), Some(&&b"19"[..]));
        let before = host.calls();
        assert_eq!(view.get("x-13"), Some(&b"13"[..]));
        assert_eq!(host.calls(), before);
    }

    #[test]
    fn the_whole_map_answers_later_reads_without_host_calls() {
        let host = host_with(&[("cookie", "a=1"), ("cookie", "b=2"), ("x-a", "1")]);
        let cache = HeaderCache::default();
        let view = HeaderView::new(&host, Map::RequestHeaders, &cache, false);
        assert_eq!(
            view.values("cookie").collect::<Vec<_>>(),
            vec![&b"a=1"[..], &b"b=2"[..]]
        );
        assert_eq!(view.get("x-a"), Some(&b"1"[..]));
        assert_eq!(view.get("nope"), None);
        assert_eq!(host.calls(), 1);
    }

    #[test]
    fn writes_go_through_the_cache() {
        let host = host_with(&[("x-a", "old"), ("x-b", "b")]);
        let mut cache = HeaderCache::default();
        {
            let view = HeaderView::new(&host, Map::RequestHeaders, &cache, false);
            assert_eq!(view.get("x-a"), Some(&b"old"[..]));
        }
        cache.set("x-a", b"new");
        cache.remove("x-b");
        cache.set("x-c", b"c");
        cache.add("x-c", b"c2");
        cache.add("x-d", b"d");
        let view = HeaderView::new(&host, Map::RequestHeaders, &cache, false);
        let before = host.calls();
        assert_eq!(view.get("x-a"), Some(&b"new"[..]));
        assert_eq!(view.get("x-b"), None);
        assert_eq!(view.get("x-c"), Some(&b"c"[..]));
        assert_eq!(host.calls(), before, "known names need no host call");
        // Added to a header never read: its first value is unknown, so it is asked for.
        assert_eq!(view.get("x-d"), None);
        assert_eq!(host.calls(), before + 1);
    }

    #[test]
    fn writes_go_through_the_whole_map_too() {
        let host = host_with(&[("x-a", "1"), ("x-b", "2")]);
        let mut cache = HeaderCache::default();
        let _ = HeaderView::new(&host, Map::RequestHeaders, &cache, false).all();
        cache.set("x-a", b"9");
        cache.add("x-b", b"3");
        cache.remove("x-missing");
        let view = HeaderView::new(&host, Map::RequestHeaders, &cache, false);
        assert_eq!(view.values("x-b").collect::<Vec<_>>(), vec![&b"2"[..], &b"3"[..]]);
        assert_eq!(view.get("x-a"), Some(&b"9"[..]));
        assert_eq!(view.all().len(), 3);
    }

    #[test]
    fn a_body_is_read_once_and_only_when_asked() {
        let host = MockHost::new();
        host.set_body(Buffer::RequestBody, b"hello");
        let body = Body::new(&host, Buffer::RequestBody, 5, true);
        assert_eq!(host.calls(), 0);
        assert_eq!(body.bytes(), b"hello");
        assert_eq!(body.bytes(), b"hello");
        assert_eq!(host.calls(), 1);
        assert!(Body::new(&host, Buffer::RequestBody, 0, true).bytes().is_empty());
    }
}
