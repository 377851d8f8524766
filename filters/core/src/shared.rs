//! Envoy shared data: one key-value store for every worker's VM with the same `vm_id`, with
//! compare-and-swap. Counters that must be exact across workers live here.
//!
//! Facts this relies on (proxy-wasm-cpp-host `SharedData::set`, measured on Envoy 1.40.0):
//! - every successful set stamps the key with the next value of one global CAS counter, which
//!   is never 0;
//! - a set with CAS 0 always writes; a set with another CAS on an existing key writes only if it
//!   matches, else answers `CasMismatch`;
//! - a set on a key that does not exist yet ignores the CAS and creates it;
//! - keys cannot be deleted.
//!
//! So two workers that both saw a key missing would both "create" it, the second overwriting
//! the first. [`update`] creates with [`CREATE_CAS`] instead of 0: if another worker created the
//! key in the meantime, the set meets a real CAS and fails with `CasMismatch`, and the update
//! runs again on what the other worker wrote. (It could only wrongly succeed if that key's
//! current CAS were exactly `u32::MAX`, one value of Envoy's 32-bit counter.)

/// A set that fails if the key already exists (see the module docs).
pub const CREATE_CAS: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Written,
    CasMismatch,
}

/// The host answered with a status other than the expected ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// The shared-data calls, so decisions can be tested against an in-memory store.
pub trait Store {
    /// The value and CAS of `key`, if it exists.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError>;
}

/// What an update function wants done with the current value.
#[derive(Debug)]
pub enum Change<T> {
    Write(Vec<u8>, T),
    Keep(T),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// Every attempt lost a CAS race.
    Contention,
    Host(HostError),
}

/// Read, compute, write with CAS, retried up to `attempts` times. `f` sees the current value
/// (`None`: key missing) and may be called once per attempt.
pub fn update<S: Store + ?Sized, T>(
    store: &S,
    key: &str,
    attempts: u32,
    mut f: impl FnMut(Option<&[u8]>) -> Change<T>,
) -> Result<T, UpdateError> {
    for _ in 0..attempts {
        let current = store.get(key).map_err(UpdateError::Host)?;
        let (value, cas) = match &current {
            Some((value, cas)) => (Some(value.as_slice()), *cas),
            None => (None, CREATE_CAS),
        };
        match f(value) {
            Change::Keep(result) => return Ok(result),
            Change::Write(bytes, result) => match store.set(key, &bytes, cas).map_err(UpdateError::Host)? {
                SetOutcome::Written => return Ok(result),
                SetOutcome::CasMismatch => continue,
            },
        }
    }
    Err(UpdateError::Contention)
}

// === impl MemoryStore ===

/// An in-memory [`Store`] with Envoy's semantics, for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
    next_cas: std::cell::Cell<u32>,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.data.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.borrow().is_empty()
    }

    fn stamp(&self) -> u32 {
        let cas = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(cas);
        cas
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(self.data.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError> {
        let stamp = self.stamp();
        let mut data = self.data.borrow_mut();
        match data.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Ok(SetOutcome::CasMismatch);
                }
                *entry = (value.to_vec(), stamp);
            }
            None => {
                data.insert(key.to_owned(), (value.to_vec(), stamp));
            }
        }
        Ok(SetOutcome::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(store: &impl Store, key: &str) -> Result<u8, UpdateError> {
        update(store, key, 8, |v| {
            let n = v.and_then(|v| v.first().copied()).unwrap_or(0) + 1;
            Change::Write(vec![n], n)
        })
    }

    #[test]
    fn updates_read_modify_write() {
        let s = MemoryStore::default();
        assert_eq!(incr(&s, "k"), Ok(1));
        assert_eq!(incr(&s, "k"), Ok(2));
        assert_eq!(s.get("k").unwrap().unwrap().0, vec![2]);
    }

    /// A store where another worker acts between our get and our set, `times` times.
    struct Racing<'a> {
        inner: &'a MemoryStore,
        interfere: std::cell::Cell<u32>,
    }

    impl Store for Racing<'_> {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, HostError> {
            if self.interfere.get() > 0 {
                self.interfere.set(self.interfere.get() - 1);
                // The other worker saw the key missing too and created it first.
                let _ = incr(self.inner, key);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn two_workers_creating_one_key_both_count() {
        let s = MemoryStore::default();
        let racing = Racing {
            inner: &s,
            interfere: std::cell::Cell::new(1),
        };
        // We saw no key; the other worker created it (value 1) before our set. Our create must
        // fail and retry on their value, giving 2, not overwrite it with 1.
        assert_eq!(incr(&racing, "k"), Ok(2));
        assert_eq!(s.get("k").unwrap().unwrap().0, vec![2]);
    }

    #[test]
    fn lost_races_retry_then_give_up() {
        let s = MemoryStore::default();
        incr(&s, "k").unwrap();
        let racing = Racing {
            inner: &s,
            interfere: std::cell::Cell::new(100),
        };
        assert_eq!(incr(&racing, "k"), Err(UpdateError::Contention));
    }

    #[test]
    fn keep_writes_nothing() {
        let s = MemoryStore::default();
        let r = update(&s, "k", 3, |_| Change::Keep(7));
        assert_eq!(r, Ok(7));
        assert!(s.is_empty());
    }

    #[test]
    fn cas_zero_always_writes_and_missing_keys_ignore_cas() {
        let s = MemoryStore::default();
        assert_eq!(s.set("k", b"a", 12345), Ok(SetOutcome::Written));
        assert_eq!(s.set("k", b"b", 12345), Ok(SetOutcome::CasMismatch));
        assert_eq!(s.set("k", b"c", 0), Ok(SetOutcome::Written));
    }
}
