//! One stored response in its shared-data form.
//!
//! Layout: `PC1`, the 32-byte key, stored-at and expires-at (Unix milliseconds, u64 LE), the
//! header count (u16 LE), each header as name length (u16 LE), name, value length (u32 LE),
//! value, and then the body to the end. An empty value is an empty slot. Decoding never trusts
//! a length: a damaged value decodes to `None`.

use crate::key::Key;

const MAGIC: &[u8; 3] = b"PC1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub stored_at_ms: u64,
    pub expires_at_ms: u64,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The fixed part of an entry before its headers.
pub const HEADER_BYTES: usize = 3 + 32 + 8 + 8 + 2;

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let headers: usize = self.headers.iter().map(|(n, v)| 6 + n.len() + v.len()).sum();
        let mut out = Vec::with_capacity(HEADER_BYTES + headers + self.body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.stored_at_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        let kept: Vec<&(String, String)> = self
            .headers
            .iter()
            .filter(|(n, v)| u16::try_from(n.len()).is_ok() && u32::try_from(v.len()).is_ok())
            .take(usize::from(u16::MAX))
            .collect();
        out.extend_from_slice(&u16::try_from(kept.len()).unwrap_or(0).to_le_bytes());
        for (name, value) in kept {
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC {
            return None;
        }
        let key: Key = r.take(32)?.try_into().ok()?;
        let stored_at_ms = r.u64()?;
        let expires_at_ms = r.u64()?;
        let count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let n = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(n)?).ok()?.to_owned();
            let n = usize::try_from(r.u32()?).ok()?;
            let value = std::str::from_utf8(r.take(n)?).ok()?.to_owned();
            headers.push((name, value));
        }
        Some(Entry {
            key,
            stored_at_ms,
            expires_at_ms,
            headers,
            body: r.0.to_vec(),
        })
    }

    /// The key and times only, without copying headers or body.
    pub fn peek(bytes: &[u8]) -> Option<(Key, u64, u64)> {
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC {
            return None;
        }
        let key: Key = r.take(32)?.try_into().ok()?;
        Some((key, r.u64()?, r.u64()?))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            key: [7; 32],
            stored_at_ms: 1_000,
            expires_at_ms: 301_000,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-id".into(), String::new()),
            ],
            body: br#"{"ok":true}"#.to_vec(),
        }
    }

    #[test]
    fn entries_round_trip() {
        let e = sample();
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes), Some(e.clone()));
        assert_eq!(Entry::peek(&bytes), Some(([7; 32], 1_000, 301_000)));
    }

    #[test]
    fn damaged_values_decode_to_none() {
        let bytes = sample().encode();
        // Every cut inside the fixed part or the headers (44 bytes here) fails.
        for cut in 0..HEADER_BYTES + 44 {
            assert_eq!(Entry::decode(bytes.get(..cut).unwrap()), None, "cut at {cut}");
        }
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(b"XX1aaaa"), None);
        let mut huge = bytes.clone();
        // A header length far past the end.
        if let Some(b) = huge.get_mut(HEADER_BYTES) {
            *b = 0xff;
        }
        assert_eq!(Entry::decode(&huge), None);
    }
}
