//! The generic cell rate algorithm (GCRA), the limiter behind every Portico limit.
//!
//! Why GCRA: its whole state is one number, the theoretical arrival time (TAT), so one
//! compare-and-swap on one shared-data value updates it exactly, with no window boundaries
//! where twice the limit slips through (the flaw of fixed windows) and no per-request log
//! (the cost of sliding logs). It is a token bucket seen from the other side: a limit of
//! `amount` per `period` refills one unit every `period / amount`, holds at most `burst` units,
//! and a request of cost `c` is admitted when the bucket holds `c` units.
//!
//! Times are nanoseconds since the Unix epoch; a TAT at or before `now` means a full bucket.

/// A limit: `amount` units per `period_ns`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds to refill one unit.
    interval_ns: u64,
    /// Nanoseconds to refill the whole bucket (`burst` units).
    capacity_ns: u64,
    pub amount: u64,
    pub period_seconds: u64,
    pub burst: u64,
}

/// The result of asking for `cost` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        tat: u64,
        remaining: u64,
        /// Seconds until the bucket is full again.
        reset_seconds: u64,
    },
    Deny {
        remaining: u64,
        /// Seconds until `cost` units are available (at least 1).
        retry_after_seconds: u64,
        reset_seconds: u64,
    },
}

const NS: u64 = 1_000_000_000;

fn ceil_seconds(ns: u64) -> u64 {
    ns.div_ceil(NS)
}

impl Rate {
    /// `None` when a value is zero.
    pub fn new(amount: u64, period_seconds: u64, burst: u64) -> Option<Rate> {
        if amount == 0 || period_seconds == 0 || burst == 0 {
            return None;
        }
        let interval_ns = period_seconds.saturating_mul(NS).checked_div(amount)?;
        Some(Rate {
            interval_ns: interval_ns.max(1),
            capacity_ns: interval_ns.max(1).saturating_mul(burst),
            amount,
            period_seconds,
            burst,
        })
    }

    fn remaining(&self, tat: u64, now: u64) -> u64 {
        let used = tat.saturating_sub(now);
        // The interval is at least 1 by construction.
        self.capacity_ns
            .saturating_sub(used)
            .checked_div(self.interval_ns)
            .unwrap_or(0)
    }

    /// Asks for `cost` units at `now` against a stored TAT.
    pub fn check(&self, stored_tat: u64, now: u64, cost: u64) -> Verdict {
        let base = stored_tat.max(now);
        let new_tat = base.saturating_add(cost.saturating_mul(self.interval_ns));
        if new_tat.saturating_sub(now) <= self.capacity_ns {
            Verdict::Allow {
                tat: new_tat,
                remaining: self.remaining(new_tat, now),
                reset_seconds: ceil_seconds(new_tat.saturating_sub(now)),
            }
        } else {
            let allowed_at = new_tat.saturating_sub(self.capacity_ns);
            Verdict::Deny {
                remaining: self.remaining(base, now),
                retry_after_seconds: ceil_seconds(allowed_at.saturating_sub(now)).max(1),
                reset_seconds: ceil_seconds(base.saturating_sub(now)),
            }
        }
    }

    /// Moves a TAT by `delta` units: positive charges more, negative refunds. A refund never
    /// moves the TAT before `now` (a bucket cannot be more than full).
    pub fn adjust(&self, stored_tat: u64, now: u64, delta: i64) -> u64 {
        let ns = delta.unsigned_abs().saturating_mul(self.interval_ns);
        if delta >= 0 {
            stored_tat.max(now).saturating_add(ns)
        } else {
            stored_tat.saturating_sub(ns).max(now)
        }
    }

    /// Seconds until the bucket is full, for a stored TAT.
    pub fn reset_seconds_at(&self, stored_tat: u64, now: u64) -> u64 {
        ceil_seconds(stored_tat.saturating_sub(now))
    }

    /// Units left at `now` for a stored TAT.
    pub fn remaining_at(&self, stored_tat: u64, now: u64) -> u64 {
        self.remaining(stored_tat.max(now), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000 * NS;

    fn run(rate: &Rate, mut tat: u64, now: u64, n: usize) -> (u64, usize) {
        let mut allowed = 0;
        for _ in 0..n {
            if let Verdict::Allow { tat: t, .. } = rate.check(tat, now, 1) {
                tat = t;
                allowed += 1;
            }
        }
        (tat, allowed)
    }

    #[test]
    fn a_full_bucket_admits_exactly_burst_at_once() {
        let rate = Rate::new(50, 3600, 50).unwrap();
        let (_, allowed) = run(&rate, 0, T0, 200);
        assert_eq!(allowed, 50);
    }

    #[test]
    fn units_refill_one_interval_at_a_time() {
        let rate = Rate::new(10, 10, 10).unwrap(); // one per second
        let (tat, allowed) = run(&rate, 0, T0, 10);
        assert_eq!(allowed, 10);
        assert!(matches!(
            rate.check(tat, T0, 1),
            Verdict::Deny {
                retry_after_seconds: 1,
                ..
            }
        ));
        assert!(matches!(
            rate.check(tat, T0 + NS, 1),
            Verdict::Allow { remaining: 0, .. }
        ));
        let (_, later) = run(&rate, tat, T0 + 10 * NS, 20);
        assert_eq!(later, 10, "a full period refills the whole bucket");
    }

    #[test]
    fn remaining_and_reset_are_reported() {
        let rate = Rate::new(100, 60, 100).unwrap();
        match rate.check(0, T0, 1) {
            Verdict::Allow {
                remaining,
                reset_seconds,
                ..
            } => {
                assert_eq!(remaining, 99);
                assert_eq!(reset_seconds, 1);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn weighted_costs_and_adjustments() {
        let rate = Rate::new(1000, 60, 1000).unwrap(); // 1000 tokens a minute
        let Verdict::Allow { tat, remaining, .. } = rate.check(0, T0, 600) else {
            panic!()
        };
        assert_eq!(remaining, 400);
        assert!(matches!(rate.check(tat, T0, 500), Verdict::Deny { remaining: 400, .. }));
        // Settling 600 reserved to 100 used refunds 500.
        let tat = rate.adjust(tat, T0, -500);
        assert_eq!(rate.remaining_at(tat, T0), 900);
        // A refund never overfills.
        assert_eq!(rate.remaining_at(rate.adjust(tat, T0, -5000), T0), 1000);
        // Charging beyond the reservation can overdraw; later requests wait.
        let tat = rate.adjust(tat, T0, 1500);
        assert!(matches!(rate.check(tat, T0, 1), Verdict::Deny { .. }));
    }

    #[test]
    fn a_cost_larger_than_the_bucket_is_always_denied() {
        let rate = Rate::new(10, 60, 10).unwrap();
        assert!(matches!(rate.check(0, T0, 11), Verdict::Deny { .. }));
    }

    #[test]
    fn zero_values_are_not_a_rate() {
        assert!(Rate::new(0, 1, 1).is_none());
        assert!(Rate::new(1, 0, 1).is_none());
        assert!(Rate::new(1, 1, 0).is_none());
    }
}
