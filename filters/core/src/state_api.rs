//! The messages of `portico.state.v1` (filters/state/proto/portico/state/v1/state.proto), the
//! protocol between the filters and portico-state, in protobuf's wire format.
//!
//! Written by hand rather than generated: the filters send five small requests and read five
//! small answers, and a protobuf runtime plus a code generator in every wasm build would cost
//! more than these few hundred lines. portico-state's tests decode what this module writes
//! with the service's own (prost) types and the reverse, so the two cannot drift apart.
//!
//! Decoding never panics and never trusts a length: every read is bounded by the bytes at
//! hand, unknown fields are skipped as protobuf requires, and a known field with the wrong
//! wire type is an error.

use std::fmt;

/// The gRPC service name the filters call (`dispatch_grpc_call`'s `service`).
pub const SERVICE: &str = "portico.state.v1.State";

/// A method of [`SERVICE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Reserve,
    Settle,
    Release,
    Lease,
    Hit,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Reserve => "Reserve",
            Method::Settle => "Settle",
            Method::Release => "Release",
            Method::Lease => "Lease",
            Method::Hit => "Hit",
        }
    }
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

// === the wire format ===

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Appends protobuf fields to a buffer. Scalars equal to their default are left out, as a
/// proto3 encoder does.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            // Only the low seven bits are kept by the mask, so the cast cannot lose data.
            self.buf.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    fn sint(&mut self, field: u32, v: i64) {
        // Zigzag: small magnitudes of either sign stay short.
        self.uint(field, ((v << 1) ^ (v >> 63)) as u64);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    /// A nested message, always written (an empty one still says "present").
    fn message(&mut self, field: u32, write: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        write(&mut inner);
        self.bytes(field, &inner.buf);
    }
}

/// One field of a message being read.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first().ok_or(WireError("truncated varint"))?;
            self.rest = rest;
            v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError("varint longer than ten bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], WireError> {
        let n = usize::try_from(n).map_err(|_| WireError("length out of range"))?;
        if n > self.rest.len() {
            return Err(WireError("length past the end of the message"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// The next field, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| WireError("field number out of range"))?;
        if field == 0 {
            return Err(WireError("field number 0"));
        }
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            LEN => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            FIXED64 => {
                self.take(8)?;
                Value::Other
            }
            FIXED32 => {
                self.take(4)?;
                Value::Other
            }
            _ => return Err(WireError("unsupported wire type")),
        };
        Ok(Some((field, value)))
    }
}

fn as_u64(v: Value<'_>) -> Result<u64, WireError> {
    match v {
        Value::Varint(n) => Ok(n),
        _ => Err(WireError("expected a varint")),
    }
}

fn as_bool(v: Value<'_>) -> Result<bool, WireError> {
    as_u64(v).map(|n| n != 0)
}

fn as_bytes(v: Value<'_>) -> Result<&[u8], WireError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(WireError("expected a length-delimited field")),
    }
}

fn as_string(v: Value<'_>) -> Result<String, WireError> {
    let b = as_bytes(v)?;
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| WireError("string is not UTF-8"))
}

// === messages ===

/// A budget or limit: `amount` units per `period_seconds`, at most `burst` held (0: `amount`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limit {
    pub name: String,
    pub amount: u64,
    pub period_seconds: u64,
    pub burst: u64,
}

impl Limit {
    fn write(&self, w: &mut Writer) {
        w.string(1, &self.name);
        w.uint(2, self.amount);
        w.uint(3, self.period_seconds);
        w.uint(4, self.burst);
    }
}

/// Where a budget stands after a call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitStatus {
    pub name: String,
    pub amount: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub exceeded: bool,
    pub retry_after_ms: u64,
}

impl LimitStatus {
    fn read(bytes: &[u8]) -> Result<Self, WireError> {
        let mut s = LimitStatus::default();
        let mut r = Reader::new(bytes);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => s.name = as_string(v)?,
                2 => s.amount = as_u64(v)?,
                3 => s.remaining = as_u64(v)?,
                4 => s.reset_after_ms = as_u64(v)?,
                5 => s.exceeded = as_bool(v)?,
                6 => s.retry_after_ms = as_u64(v)?,
                _ => {}
            }
        }
        Ok(s)
    }
}

/// `Reserve`: take `amount` from every budget, or from none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest<'a> {
    pub consumer: &'a str,
    pub budgets: &'a [(Limit, u64)],
    pub ttl_ms: u64,
}

impl ReserveRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.string(1, self.consumer);
        for (budget, amount) in self.budgets {
            w.message(2, |m| {
                m.message(1, |l| budget.write(l));
                m.uint(2, *amount);
            });
        }
        w.uint(3, self.ttl_ms);
        w.buf
    }
}

/// The answer to `Reserve`, and to `Hit` (which has no reservation id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admission {
    pub admitted: bool,
    pub reservation_id: String,
    pub statuses: Vec<LimitStatus>,
    pub retry_after_ms: u64,
}

impl Admission {
    /// Reads a `ReserveResponse`.
    pub fn decode_reserve(bytes: &[u8]) -> Result<Self, WireError> {
        let mut a = Admission::default();
        let mut r = Reader::new(bytes);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => a.admitted = as_bool(v)?,
                2 => a.reservation_id = as_string(v)?,
                3 => a.statuses.push(LimitStatus::read(as_bytes(v)?)?),
                4 => a.retry_after_ms = as_u64(v)?,
                _ => {}
            }
        }
        Ok(a)
    }

    /// Reads a `HitResponse`.
    pub fn decode_hit(bytes: &[u8]) -> Result<Self, WireError> {
        let mut a = Admission::default();
        let mut r = Reader::new(bytes);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => a.admitted = as_bool(v)?,
                2 => a.statuses.push(LimitStatus::read(as_bytes(v)?)?),
                3 => a.retry_after_ms = as_u64(v)?,
                _ => {}
            }
        }
        Ok(a)
    }
}

/// `Settle`: end a reservation, charging its amount plus a signed difference per budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRequest<'a> {
    pub consumer: &'a str,
    pub reservation_id: &'a str,
    pub budgets: &'a [(&'a str, i64)],
}

impl SettleRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.string(1, self.consumer);
        w.string(2, self.reservation_id);
        for (budget, difference) in self.budgets {
            w.message(3, |m| {
                m.string(1, budget);
                m.sint(2, *difference);
            });
        }
        w.buf
    }
}

/// `Release`: end a reservation and refund all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest<'a> {
    pub consumer: &'a str,
    pub reservation_id: &'a str,
    pub budgets: &'a [&'a str],
}

impl ReleaseRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.string(1, self.consumer);
        w.string(2, self.reservation_id);
        for budget in self.budgets {
            // A repeated string is written even when empty: its position matters.
            w.bytes(3, budget.as_bytes());
        }
        w.buf
    }
}

/// The answer to `Settle` and `Release`: per budget, whether the reservation was still held.
pub fn decode_settle(bytes: &[u8]) -> Result<Vec<bool>, WireError> {
    let mut found = Vec::new();
    let mut r = Reader::new(bytes);
    while let Some((field, v)) = r.next()? {
        if field == 1 {
            match v {
                // proto3 packs repeated scalars; a sender may also write them one by one.
                Value::Bytes(packed) => {
                    let mut p = Reader::new(packed);
                    while !p.rest.is_empty() {
                        found.push(p.varint()? != 0);
                    }
                }
                other => found.push(as_bool(other)?),
            }
        }
    }
    Ok(found)
}

/// `Lease`: up to `wanted` units of a budget for this replica to spend locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest<'a> {
    pub consumer: &'a str,
    pub budget: &'a Limit,
    pub wanted: u64,
}

impl LeaseRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.string(1, self.consumer);
        w.message(2, |l| self.budget.write(l));
        w.uint(3, self.wanted);
        w.buf
    }
}

/// The answer to `Lease`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    pub granted: u64,
    pub status: Option<LimitStatus>,
}

impl Lease {
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut l = Lease::default();
        let mut r = Reader::new(bytes);
        while let Some((field, v)) = r.next()? {
            match field {
                1 => l.granted = as_u64(v)?,
                2 => l.status = Some(LimitStatus::read(as_bytes(v)?)?),
                _ => {}
            }
        }
        Ok(l)
    }
}

/// `Hit`: charge `cost` to every limit, or to none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitRequest<'a> {
    pub consumer: &'a str,
    pub limits: &'a [Limit],
    pub cost: u64,
}

impl HitRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.string(1, self.consumer);
        for limit in self.limits {
            w.message(2, |l| limit.write(l));
        }
        w.uint(3, self.cost);
        w.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, amount: u64) -> Limit {
        Limit {
            name: name.into(),
            amount,
            period_seconds: 60,
            burst: 0,
        }
    }

    #[test]
    fn varints_and_zigzag_match_the_protobuf_spec() {
        // The spec's examples: 150 is 96 01; -1 zigzags to 1, 1 to 2, i64::MIN to u64::MAX.
        let mut w = Writer::default();
        w.uint(1, 150);
        assert_eq!(w.buf, [0x08, 0x96, 0x01]);
        for (v, z) in [
            (-1i64, 1u64),
            (1, 2),
            (-2, 3),
            (i64::MAX, u64::MAX - 1),
            (i64::MIN, u64::MAX),
        ] {
            let mut w = Writer::default();
            w.sint(1, v);
            let mut r = Reader::new(&w.buf);
            let Some((1, Value::Varint(got))) = r.next().unwrap() else {
                panic!("{v}")
            };
            assert_eq!(got, z, "{v}");
        }
        let mut w = Writer::default();
        w.uint(1, u64::MAX);
        assert_eq!(w.buf.len(), 11);
        let mut r = Reader::new(&w.buf);
        assert!(matches!(r.next().unwrap(), Some((1, Value::Varint(u64::MAX)))));
    }

    #[test]
    fn defaults_are_left_out_as_proto3_does() {
        let req = HitRequest {
            consumer: "",
            limits: &[],
            cost: 0,
        };
        assert!(req.encode().is_empty());
        let reserve = ReserveRequest {
            consumer: "jwt:idp:alice",
            budgets: &[(limit("daily", 5), 0)],
            ttl_ms: 0,
        };
        // consumer, then one BudgetAmount holding a Limit of name, amount and period only.
        let bytes = reserve.encode();
        assert_eq!(bytes.first(), Some(&0x0a));
        assert!(bytes.windows(7).any(|w| w == b"\x0a\x05daily"));
    }

    #[test]
    fn answers_are_read_field_by_field_skipping_unknown_ones() {
        let mut status = Writer::default();
        status.string(1, "rpm");
        status.uint(2, 50);
        status.uint(3, 7);
        status.uint(5, 1);
        status.uint(6, 1200);
        status.uint(99, 3); // unknown: skipped
        let mut w = Writer::default();
        w.uint(1, 1);
        w.bytes(3, &status.buf);
        w.bytes(3, &status.buf);
        w.uint(4, 1200);
        w.key(15, FIXED64);
        w.buf.extend_from_slice(&[0; 8]);
        w.key(16, FIXED32);
        w.buf.extend_from_slice(&[0; 4]);
        w.string(2, "r-1");
        let a = Admission::decode_reserve(&w.buf).unwrap();
        assert!(a.admitted);
        assert_eq!(a.reservation_id, "r-1");
        assert_eq!(a.retry_after_ms, 1200);
        assert_eq!(a.statuses.len(), 2);
        assert_eq!(
            a.statuses.first(),
            Some(&LimitStatus {
                name: "rpm".into(),
                amount: 50,
                remaining: 7,
                reset_after_ms: 0,
                exceeded: true,
                retry_after_ms: 1200,
            })
        );
    }

    #[test]
    fn settle_answers_read_packed_and_unpacked() {
        let mut w = Writer::default();
        w.bytes(1, &[1, 0, 1]);
        w.uint(1, 1);
        w.key(1, VARINT);
        w.varint(0);
        assert_eq!(decode_settle(&w.buf).unwrap(), vec![true, false, true, true, false]);
        assert_eq!(decode_settle(&[]).unwrap(), Vec::<bool>::new());
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x08], "truncated varint"),
            (
                &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                "varint longer than ten bytes",
            ),
            (&[0x12, 0x05, b'a'], "length past the end of the message"),
            (
                &[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                "length past the end of the message",
            ),
            (&[0x00, 0x01], "field number 0"),
            (&[0x0b], "unsupported wire type"),
            (&[0x0a, 0x01, b'x'], "expected a varint"),
            (&[0x12, 0x02, 0xc3, 0x28], "string is not UTF-8"),
            (&[0x1a, 0x02, 0x08, 0x80], "truncated varint"),
            (&[0x10, 0x01], "expected a length-delimited field"),
        ];
        for (bytes, want) in cases {
            assert_eq!(Admission::decode_reserve(bytes), Err(WireError(want)), "{bytes:02x?}");
        }
        assert!(Lease::decode(&[0x12, 0x01]).is_err());
        assert!(decode_settle(&[0x0a, 0x01, 0x80]).is_err());
        // Every prefix of a valid answer is either read or refused, never a panic.
        let mut w = Writer::default();
        w.uint(1, 9);
        w.message(2, |s| {
            s.string(1, "daily");
            s.uint(3, 1 << 40);
        });
        for end in 0..=w.buf.len() {
            let _ = Lease::decode(w.buf.get(..end).unwrap_or_default());
            let _ = Admission::decode_hit(w.buf.get(..end).unwrap_or_default());
        }
        assert_eq!(Lease::decode(&w.buf).unwrap().granted, 9);
    }
}
