//! A bounded per-worker cache of verified tokens, so a client that reuses its token pays for
//! the signature check once.
//!
//! Keyed by the SHA-256 of the whole token, never the token. An entry is used only while the
//! token is unexpired (with the provider's skew) and the provider's key set has not changed
//! since it was verified. Eviction is first-in first-out: an entry leaves when `capacity` newer
//! ones have arrived, which bounds memory at `capacity` entries whatever clients send.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::config::Identity;

#[derive(Debug)]
struct Entry {
    provider: usize,
    generation: u64,
    /// Last second (inclusive) at which the token is accepted; `None`: no `exp`.
    valid_until: Option<u64>,
    identity: Rc<Identity>,
}

#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Entry>,
    /// Insertion order; holds each key of `entries` exactly once.
    order: VecDeque<[u8; 32]>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::with_capacity(capacity.min(4096)),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached identity for `digest`, if still valid at `now` under the current key set.
    pub fn get(&self, digest: &[u8; 32], now: u64, generation_of: impl Fn(usize) -> u64) -> Option<Rc<Identity>> {
        let entry = self.entries.get(digest)?;
        let fresh =
            entry.valid_until.is_none_or(|until| now <= until) && entry.generation == generation_of(entry.provider);
        fresh.then(|| Rc::clone(&entry.identity))
    }

    pub fn insert(
        &mut self,
        digest: [u8; 32],
        provider: usize,
        generation: u64,
        valid_until: Option<u64>,
        identity: Rc<Identity>,
    ) {
        if self.capacity == 0 {
            return;
        }
        let entry = Entry {
            provider,
            generation,
            valid_until,
            identity,
        };
        if let Some(slot) = self.entries.get_mut(&digest) {
            *slot = entry;
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        self.entries.insert(digest, entry);
        self.order.push_back(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> Rc<Identity> {
        Rc::new(Identity {
            consumer: name.into(),
            tier: None,
            scopes: vec![],
            headers: vec![],
        })
    }

    #[test]
    fn entries_expire_with_the_token() {
        let mut c = TokenCache::new(4);
        c.insert([1; 32], 0, 0, Some(100), id("a"));
        assert!(c.get(&[1; 32], 100, |_| 0).is_some());
        assert!(c.get(&[1; 32], 101, |_| 0).is_none());
    }

    #[test]
    fn a_new_key_set_invalidates_entries() {
        let mut c = TokenCache::new(4);
        c.insert([1; 32], 0, 3, None, id("a"));
        assert!(c.get(&[1; 32], 0, |_| 3).is_some());
        assert!(c.get(&[1; 32], 0, |_| 4).is_none());
    }

    #[test]
    fn size_stays_bounded_and_oldest_leave_first() {
        let mut c = TokenCache::new(3);
        for i in 0..10u8 {
            c.insert([i; 32], 0, 0, None, id("x"));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.order.len(), 3);
        assert!(c.get(&[9; 32], 0, |_| 0).is_some());
        assert!(c.get(&[6; 32], 0, |_| 0).is_none());
    }

    #[test]
    fn reinserting_a_key_does_not_grow_the_order() {
        let mut c = TokenCache::new(3);
        for _ in 0..100 {
            c.insert([1; 32], 0, 0, Some(1), id("x"));
        }
        assert_eq!(c.order.len(), 1);
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let mut c = TokenCache::new(0);
        c.insert([1; 32], 0, 0, None, id("x"));
        assert!(c.is_empty());
    }
}
