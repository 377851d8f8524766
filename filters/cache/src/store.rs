//! The cache in Envoy shared data, bounded in entries and bytes, shared by every worker.
//!
//! Shared-data keys can never be deleted, so the cache is a fixed set of slots
//! (`portico/cache/slot/<i>`, `max_entries` of them) plus one usage record
//! (`portico/cache/usage`: bytes and entries in use) and one clock hand
//! (`portico/cache/hand`).
//!
//! - **Where an entry lives.** Each key has two candidate slots, from two parts of its hash.
//!   A lookup reads both and compares the whole 32-byte key, so a slot shared by two keys can
//!   only miss, never answer for the wrong request.
//! - **Entries bound.** A new entry takes the candidate that already holds its key, else an
//!   empty one, else an expired one, else the one stored earlier, which is evicted.
//! - **Bytes bound.** Before writing, the storing worker reserves the entry's bytes in the
//!   usage record with compare-and-swap. If they do not fit under `max_bytes`, it evicts the
//!   slot under the clock hand and moves the hand on (round robin over all slots) until they
//!   fit. Bytes are reserved before an entry is written and released only after it is
//!   replaced or cleared, so the bytes actually stored never exceed `max_bytes`, whatever the
//!   workers interleave.
//! - **Expiry.** An expired entry is never served; its slot is reused by the next key that
//!   lands there, or cleared by the hand.

use portico_core::shared::{update, Change, SetOutcome, Store, UpdateError};

use crate::config::Limits;
use crate::entry::Entry;
use crate::key::Key;

const SLOT_PREFIX: &str = "portico/cache/slot/";
const USAGE_KEY: &str = "portico/cache/usage";
const HAND_KEY: &str = "portico/cache/hand";
/// Compare-and-swap attempts before an update gives up.
const ATTEMPTS: u32 = 16;

fn slot_key(slot: u32) -> String {
    format!("{SLOT_PREFIX}{slot}")
}

/// The two candidate slots of `key`.
pub fn candidates(key: &Key, slots: u32) -> [u32; 2] {
    let word = |i: usize| {
        let mut b = [0u8; 4];
        if let Some(part) = key.get(i..i + 4) {
            b.copy_from_slice(part);
        }
        u32::from_le_bytes(b) % slots.max(1)
    };
    [word(0), word(4)]
}

/// Bytes and entries in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

impl Usage {
    fn decode(bytes: Option<&[u8]>) -> Usage {
        let word = |i: usize| {
            bytes
                .and_then(|b| b.get(i..i + 8))
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Usage {
            bytes: word(0),
            entries: word(8),
        }
    }

    fn encode(self) -> Vec<u8> {
        let mut out = self.bytes.to_le_bytes().to_vec();
        out.extend_from_slice(&self.entries.to_le_bytes());
        out
    }
}

/// The usage record now.
pub fn usage<S: Store + ?Sized>(store: &S) -> Usage {
    match store.get(USAGE_KEY) {
        Ok(Some((v, _))) => Usage::decode(Some(&v)),
        _ => Usage::default(),
    }
}

/// The fresh entry for `key`, if one is stored.
pub fn lookup<S: Store + ?Sized>(store: &S, limits: &Limits, key: &Key, now_ms: u64) -> Option<Entry> {
    for slot in candidates(key, limits.max_entries) {
        let Ok(Some((value, _))) = store.get(&slot_key(slot)) else {
            continue;
        };
        match Entry::peek(&value) {
            Some((k, _, expires)) if &k == key && now_ms < expires => return Entry::decode(&value),
            _ => {}
        }
    }
    None
}

/// What storing an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored; `evicted` other entries made room (by slot or by bytes).
    Stored { evicted: u32 },
    /// Larger than `max_entry_bytes`.
    TooLarge,
    /// Could not make room (every slot swept and still no room: only if entries are being
    /// written faster than they can be cleared).
    NoRoom,
    /// Shared data refused or kept changing underneath.
    Failed,
}

/// Stores `entry` (already encoded) under `key`.
pub fn insert<S: Store + ?Sized>(store: &S, limits: &Limits, key: &Key, entry: &[u8], now_ms: u64) -> Stored {
    let size = entry.len() as u64;
    if size > limits.max_entry_bytes {
        return Stored::TooLarge;
    }
    let Some(target) = choose_slot(store, limits, key, now_ms) else {
        return Stored::Failed;
    };
    let mut evicted = 0;
    let mut reserved = false;
    for _ in 0..=limits.max_entries {
        match change_usage(store, signed(entry.len()), 1, Some(limits.max_bytes)) {
            Ok(true) => {
                reserved = true;
                break;
            }
            Ok(false) => match clear_slot(store, next_hand(store, limits.max_entries)) {
                Some(true) => evicted += 1,
                Some(false) => {}
                None => return Stored::Failed,
            },
            Err(_) => return Stored::Failed,
        }
    }
    if !reserved {
        return Stored::NoRoom;
    }
    let name = slot_key(target);
    for _ in 0..ATTEMPTS {
        let Ok(current) = store.get(&name) else { break };
        let (old, cas) = match &current {
            Some((v, cas)) => (v.as_slice(), *cas),
            None => (&[][..], portico_core::shared::CREATE_CAS),
        };
        let replaced_other = Entry::peek(old).is_some_and(|(k, _, _)| &k != key);
        let old_len = signed(old.len());
        match store.set(&name, entry, cas) {
            Ok(SetOutcome::Written) => {
                if old_len > 0 {
                    let _ = change_usage(store, -old_len, -1, None);
                }
                return Stored::Stored {
                    evicted: evicted + u32::from(replaced_other),
                };
            }
            Ok(SetOutcome::CasMismatch) => continue,
            Err(_) => break,
        }
    }
    let _ = change_usage(store, -signed(entry.len()), -1, None);
    Stored::Failed
}

/// Where a new entry for `key` goes (see the module docs).
fn choose_slot<S: Store + ?Sized>(store: &S, limits: &Limits, key: &Key, now_ms: u64) -> Option<u32> {
    let mut best: Option<(u32, u8, u64)> = None;
    for slot in candidates(key, limits.max_entries) {
        let value = store.get(&slot_key(slot)).ok()?.map(|(v, _)| v).unwrap_or_default();
        // Lower rank is better: same key, empty, expired, then the oldest.
        let (rank, stored_at) = match Entry::peek(&value) {
            Some((k, _, _)) if &k == key => (0, 0),
            None => (1, 0),
            Some((_, _, expires)) if expires <= now_ms => (2, 0),
            Some((_, stored_at, _)) => (3, stored_at),
        };
        if best.is_none_or(|(_, r, s)| (rank, stored_at) < (r, s)) {
            best = Some((slot, rank, stored_at));
        }
    }
    best.map(|(slot, _, _)| slot)
}

/// Adds `bytes` and `entries` (negative to release) to the usage record. With a `limit`,
/// refuses (`Ok(false)`) when the bytes would pass it.
fn change_usage<S: Store + ?Sized>(
    store: &S,
    bytes: i64,
    entries: i64,
    limit: Option<u64>,
) -> Result<bool, UpdateError> {
    update(store, USAGE_KEY, ATTEMPTS, |current| {
        let u = Usage::decode(current);
        let next = Usage {
            bytes: u.bytes.saturating_add_signed(bytes),
            entries: u.entries.saturating_add_signed(entries),
        };
        match limit {
            Some(max) if next.bytes > max => Change::Keep(false),
            _ => Change::Write(next.encode(), true),
        }
    })
}

fn signed(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The slot under the clock hand, moving the hand on.
fn next_hand<S: Store + ?Sized>(store: &S, slots: u32) -> u32 {
    update(store, HAND_KEY, ATTEMPTS, |current| {
        let hand = current.and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
        let next = hand.wrapping_add(1) % slots.max(1);
        Change::Write(next.to_le_bytes().to_vec(), hand % slots.max(1))
    })
    .unwrap_or(0)
}

/// Empties `slot`: `Some(true)` if it held an entry, `None` if shared data failed.
fn clear_slot<S: Store + ?Sized>(store: &S, slot: u32) -> Option<bool> {
    let name = slot_key(slot);
    for _ in 0..ATTEMPTS {
        let (value, cas) = match store.get(&name).ok()? {
            Some(v) => v,
            None => return Some(false),
        };
        if value.is_empty() {
            return Some(false);
        }
        match store.set(&name, &[], cas).ok()? {
            SetOutcome::Written => {
                change_usage(store, -signed(value.len()), -1, None).ok()?;
                return Some(true);
            }
            SetOutcome::CasMismatch => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::shared::MemoryStore;

    fn limits(max_entries: u32, max_bytes: u64) -> Limits {
        Limits {
            max_entries,
            max_bytes,
            max_entry_bytes: 10_000,
        }
    }

    fn key(n: u32) -> Key {
        hmac_sha256::Hash::hash(&n.to_le_bytes())
    }

    fn entry(k: Key, now: u64, ttl: u64, body_len: usize) -> Vec<u8> {
        Entry {
            key: k,
            stored_at_ms: now,
            expires_at_ms: now + ttl,
            headers: vec![("content-type".into(), "application/json".into())],
            body: vec![b'x'; body_len],
        }
        .encode()
    }

    /// Bytes really held in slots, and how many slots hold an entry.
    fn held(store: &MemoryStore, slots: u32) -> (u64, u64) {
        (0..slots)
            .filter_map(|i| store.get(&slot_key(i)).unwrap())
            .filter(|(v, _)| !v.is_empty())
            .fold((0, 0), |(b, n), (v, _)| (b + v.len() as u64, n + 1))
    }

    #[test]
    fn a_stored_entry_is_found_until_it_expires() {
        let s = MemoryStore::default();
        let l = limits(16, 100_000);
        let e = entry(key(1), 1_000, 5_000, 10);
        assert_eq!(insert(&s, &l, &key(1), &e, 1_000), Stored::Stored { evicted: 0 });
        assert_eq!(lookup(&s, &l, &key(1), 5_999).map(|e| e.body.len()), Some(10));
        assert_eq!(lookup(&s, &l, &key(2), 5_999), None);
        assert_eq!(lookup(&s, &l, &key(1), 6_000), None, "expired at stored_at + ttl");
    }

    #[test]
    fn storing_a_key_again_replaces_it_without_counting_twice() {
        let s = MemoryStore::default();
        let l = limits(16, 100_000);
        insert(&s, &l, &key(1), &entry(key(1), 0, 1000, 10), 0);
        insert(&s, &l, &key(1), &entry(key(1), 1, 1000, 20), 1);
        let u = usage(&s);
        assert_eq!((u.bytes, u.entries), held(&s, 16));
        assert_eq!(u.entries, 1);
        assert_eq!(lookup(&s, &l, &key(1), 2).unwrap().body.len(), 20);
    }

    #[test]
    fn entries_over_the_size_limit_are_not_stored() {
        let s = MemoryStore::default();
        let l = limits(16, 100_000);
        assert_eq!(
            insert(&s, &l, &key(1), &entry(key(1), 0, 1000, 10_001), 0),
            Stored::TooLarge
        );
        assert_eq!(lookup(&s, &l, &key(1), 1), None);
        assert_eq!(usage(&s), Usage::default());
    }

    #[test]
    fn bytes_and_entries_stay_bounded_under_many_keys_and_recent_ones_survive() {
        let s = MemoryStore::default();
        let l = limits(32, 4_000);
        let mut evictions = 0;
        for n in 0..500 {
            let e = entry(key(n), u64::from(n), 1_000_000, 200 + (n as usize % 7) * 50);
            match insert(&s, &l, &key(n), &e, u64::from(n)) {
                Stored::Stored { evicted } => evictions += evicted,
                other => panic!("insert {n}: {other:?}"),
            }
            let (bytes, entries) = held(&s, 32);
            assert!(bytes <= 4_000, "after {n}: {bytes} bytes held");
            assert!(entries <= 32);
            assert_eq!(
                usage(&s),
                Usage { bytes, entries },
                "usage record matches the slots after {n}"
            );
        }
        assert!(evictions > 400, "{evictions}");
        assert!(lookup(&s, &l, &key(499), 500).is_some(), "the newest entry is kept");
        let old_kept = (0..100).filter(|n| lookup(&s, &l, &key(*n), 500).is_some()).count();
        assert_eq!(old_kept, 0, "the oldest entries were evicted");
    }

    #[test]
    fn expired_candidates_are_reused_before_live_ones() {
        let s = MemoryStore::default();
        // One slot: both candidates are slot 0.
        let l = limits(1, 100_000);
        insert(&s, &l, &key(1), &entry(key(1), 0, 10, 10), 0);
        assert_eq!(
            insert(&s, &l, &key(2), &entry(key(2), 20, 10, 10), 20),
            Stored::Stored { evicted: 1 }
        );
        assert_eq!(lookup(&s, &l, &key(1), 21), None);
        assert!(lookup(&s, &l, &key(2), 21).is_some());
        assert_eq!(usage(&s).entries, 1);
    }

    #[test]
    fn candidates_stay_in_range() {
        for n in 0..1000 {
            for slot in candidates(&key(n), 7) {
                assert!(slot < 7);
            }
        }
        assert_eq!(candidates(&key(1), 0), [0, 0]);
    }
}
