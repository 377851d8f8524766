//! Where a limit's state lives in shared data, with memory bounded whatever clients send.
//!
//! Shared data cannot delete keys, so one key per client would grow without bound under a
//! flood of new addresses. Each rule instead owns a fixed table of `max_keys` slots
//! (`portico/rate-limit/<rule>/<n>`). A client's key is hashed, with a per-process secret salt
//! so that nobody can aim at someone else's slot, to a fingerprint and two candidate slots:
//! 1. a slot holding this fingerprint, or empty, or idle (its bucket refilled: nothing to
//!    remember) is used, and taken over if it belonged to another key;
//! 2. if both candidates are busy with other active keys, the request is counted in the first
//!    one's bucket together with its owner.
//!
//! So memory is bounded at `max_keys` values of 16 bytes (plus the key name) per rule, and
//! while more keys are active than a rule has slots, colliding keys share a bucket: their
//! limits get stricter, never looser. A limit of N per key never admits N+1.

use std::num::NonZeroU64;

use portico_core::shared::{update, Change, Store, UpdateError};

use crate::gcra::{Rate, Verdict};

/// Attempts for one compare-and-swap update before giving up (then the fail mode applies).
pub const CAS_ATTEMPTS: u32 = 32;

/// The two slots and fingerprint of one key of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub fingerprint: u64,
    pub slots: [String; 2],
}

/// Hashes `key` for the rule whose slots are `prefix`/0..`count`.
pub fn place(salt: &[u8; 32], prefix: &str, key: &str, count: u64) -> Placement {
    let mut h = hmac_sha256::HMAC::new(salt);
    h.update(prefix.as_bytes());
    h.update([0x1f]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let word = |at: usize| le_word(&digest, at).unwrap_or(0);
    let count = NonZeroU64::new(count).unwrap_or(NonZeroU64::MIN);
    let first = word(0) % count;
    let mut second = word(8) % count;
    if second == first {
        second = first.saturating_add(1) % count;
    }
    Placement {
        // Fingerprint 0 marks "no owner" in decode; avoid it.
        fingerprint: word(16).max(1),
        slots: [format!("{prefix}/{first}"), format!("{prefix}/{second}")],
    }
}

/// The little-endian u64 at byte `at`, if eight bytes are there.
fn le_word(bytes: &[u8], at: usize) -> Option<u64> {
    let word: [u8; 8] = bytes.get(at..)?.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(word))
}

fn decode(value: Option<&[u8]>) -> (u64, u64) {
    match value {
        Some(v) if v.len() == 16 => (le_word(v, 0).unwrap_or(0), le_word(v, 8).unwrap_or(0)),
        _ => (0, 0),
    }
}

fn encode(owner: u64, tat: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&owner.to_le_bytes());
    v.extend_from_slice(&tat.to_le_bytes());
    v
}

/// Units taken from a slot, so they can be refunded or settled later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub slot: String,
    /// The owner written with the charge; if the slot changed hands since, the charge is gone.
    pub owner: u64,
    pub cost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed {
        charge: Charge,
        remaining: u64,
        reset_seconds: u64,
    },
    Limited {
        remaining: u64,
        retry_after_seconds: u64,
        reset_seconds: u64,
    },
}

enum Attempt {
    Occupied,
    Done(Outcome),
}

fn try_slot<S: Store + ?Sized>(
    store: &S,
    slot: &str,
    fingerprint: u64,
    share: bool,
    rate: &Rate,
    now: u64,
    cost: u64,
) -> Result<Attempt, UpdateError> {
    update(store, slot, CAS_ATTEMPTS, |current| {
        let (owner, tat) = decode(current);
        let active_other = owner != 0 && owner != fingerprint && tat > now;
        if active_other && !share {
            return Change::Keep(Attempt::Occupied);
        }
        let keep_owner = if active_other { owner } else { fingerprint };
        match rate.check(tat, now, cost) {
            Verdict::Allow {
                tat,
                remaining,
                reset_seconds,
            } => Change::Write(
                encode(keep_owner, tat),
                Attempt::Done(Outcome::Allowed {
                    charge: Charge {
                        slot: slot.to_owned(),
                        owner: keep_owner,
                        cost,
                    },
                    remaining,
                    reset_seconds,
                }),
            ),
            Verdict::Deny {
                remaining,
                retry_after_seconds,
                reset_seconds,
            } => Change::Keep(Attempt::Done(Outcome::Limited {
                remaining,
                retry_after_seconds,
                reset_seconds,
            })),
        }
    })
}

/// Takes `cost` units for the placed key, per the module's slot rules.
pub fn consume<S: Store + ?Sized>(
    store: &S,
    placement: &Placement,
    rate: &Rate,
    now: u64,
    cost: u64,
) -> Result<Outcome, UpdateError> {
    let [first, second] = &placement.slots;
    for slot in [first, second] {
        if let Attempt::Done(outcome) = try_slot(store, slot, placement.fingerprint, false, rate, now, cost)? {
            return Ok(outcome);
        }
    }
    share_slot(store, first, placement.fingerprint, rate, now, cost)
}

/// Takes `cost` more units in the slot of an earlier charge, as its owner: the request turned
/// out to need more than it reserved. The new charge is returned; if the slot changed hands
/// since (the earlier charge expired with it), it counts with the new owner, as in a shared slot.
pub fn consume_more<S: Store + ?Sized>(
    store: &S,
    charge: &Charge,
    rate: &Rate,
    now: u64,
    cost: u64,
) -> Result<Outcome, UpdateError> {
    share_slot(store, &charge.slot, charge.owner, rate, now, cost)
}

fn share_slot<S: Store + ?Sized>(
    store: &S,
    slot: &str,
    fingerprint: u64,
    rate: &Rate,
    now: u64,
    cost: u64,
) -> Result<Outcome, UpdateError> {
    match try_slot(store, slot, fingerprint, true, rate, now, cost)? {
        Attempt::Done(outcome) => Ok(outcome),
        // Unreachable by construction (sharing never reports occupied); treat as limited.
        Attempt::Occupied => Ok(Outcome::Limited {
            remaining: 0,
            retry_after_seconds: 1,
            reset_seconds: 1,
        }),
    }
}

/// Moves a previous charge by `delta` units (negative refunds). Returns the units left and the
/// seconds until the bucket is full.
pub fn adjust<S: Store + ?Sized>(
    store: &S,
    charge: &Charge,
    rate: &Rate,
    now: u64,
    delta: i64,
) -> Result<(u64, u64), UpdateError> {
    update(store, &charge.slot, CAS_ATTEMPTS, |current| {
        let (owner, tat) = decode(current);
        let state = |tat| (rate.remaining_at(tat, now), rate.reset_seconds_at(tat, now));
        if owner != charge.owner {
            // The slot went idle and changed hands: the charge already expired with it.
            return Change::Keep(state(tat));
        }
        let tat = rate.adjust(tat, now, delta);
        Change::Write(encode(owner, tat), state(tat))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::shared::MemoryStore;

    const NS: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * NS;
    const SALT: [u8; 32] = [7; 32];

    fn allowed(o: &Outcome) -> bool {
        matches!(o, Outcome::Allowed { .. })
    }

    #[test]
    fn placement_is_stable_salted_and_in_range() {
        let a = place(&SALT, "p/r", "alice", 100);
        assert_eq!(a, place(&SALT, "p/r", "alice", 100));
        assert_ne!(a, place(&[8; 32], "p/r", "alice", 100));
        assert_ne!(a.slots[0], a.slots[1]);
        for s in &a.slots {
            let n: u64 = s.rsplit('/').next().unwrap().parse().unwrap();
            assert!(n < 100);
        }
    }

    #[test]
    fn each_key_gets_its_own_exact_limit() {
        let store = MemoryStore::default();
        let rate = Rate::new(5, 3600, 5).unwrap();
        for key in ["a", "b", "c"] {
            let p = place(&SALT, "p/r", key, 1000);
            let n = (0..20)
                .filter(|_| allowed(&consume(&store, &p, &rate, T0, 1).unwrap()))
                .count();
            assert_eq!(n, 5, "{key}");
        }
    }

    #[test]
    fn memory_stays_bounded_and_limits_never_loosen() {
        let store = MemoryStore::default();
        let rate = Rate::new(3, 3600, 3).unwrap();
        let slots = 16;
        let mut admitted = std::collections::HashMap::new();
        for round in 0..5 {
            for k in 0..500 {
                let key = format!("client-{k}");
                let p = place(&SALT, "p/r", &key, slots);
                if allowed(&consume(&store, &p, &rate, T0 + round, 1).unwrap()) {
                    *admitted.entry(key).or_insert(0) += 1;
                }
            }
        }
        assert!(store.len() <= slots as usize, "{} keys", store.len());
        assert!(admitted.values().all(|n| *n <= 3), "a key got more than its limit");
    }

    #[test]
    fn an_idle_slot_is_taken_over() {
        let store = MemoryStore::default();
        let rate = Rate::new(1, 1, 1).unwrap();
        // Two keys forced onto the same two slots.
        let a = Placement {
            fingerprint: 1,
            slots: ["s/0".into(), "s/1".into()],
        };
        let b = Placement {
            fingerprint: 2,
            slots: ["s/0".into(), "s/1".into()],
        };
        let c = Placement {
            fingerprint: 3,
            slots: ["s/0".into(), "s/1".into()],
        };
        assert!(allowed(&consume(&store, &a, &rate, T0, 1).unwrap()));
        assert!(allowed(&consume(&store, &b, &rate, T0, 1).unwrap()), "second slot");
        // Both slots busy: c shares a's bucket, which is empty.
        assert!(!allowed(&consume(&store, &c, &rate, T0, 1).unwrap()));
        // A second later both buckets are full again: c takes a slot of its own.
        assert!(allowed(&consume(&store, &c, &rate, T0 + NS, 1).unwrap()));
    }

    #[test]
    fn more_units_come_from_the_slot_of_the_first_charge() {
        let store = MemoryStore::default();
        let rate = Rate::new(10, 3600, 10).unwrap();
        let p = place(&SALT, "p/r", "k", 100);
        let Outcome::Allowed { charge, .. } = consume(&store, &p, &rate, T0, 4).unwrap() else {
            panic!()
        };
        let Outcome::Allowed {
            charge: more,
            remaining,
            ..
        } = consume_more(&store, &charge, &rate, T0, 5).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (more.slot.as_str(), more.owner, remaining),
            (charge.slot.as_str(), charge.owner, 1)
        );
        assert!(matches!(
            consume_more(&store, &charge, &rate, T0, 2).unwrap(),
            Outcome::Limited { remaining: 1, .. }
        ));
    }

    #[test]
    fn refunds_restore_units_unless_the_slot_changed_hands() {
        let store = MemoryStore::default();
        let rate = Rate::new(10, 3600, 10).unwrap();
        let p = place(&SALT, "p/r", "k", 100);
        let Outcome::Allowed { charge, remaining, .. } = consume(&store, &p, &rate, T0, 4).unwrap() else {
            panic!()
        };
        assert_eq!(remaining, 6);
        assert_eq!(adjust(&store, &charge, &rate, T0, -4).unwrap(), (10, 0));
        let stranger = Charge { owner: 999, ..charge };
        assert_eq!(
            adjust(&store, &stranger, &rate, T0, 5).unwrap(),
            (10, 0),
            "not ours: untouched"
        );
    }
}
