//! The host clock as numbers: every filter stamps shared data and timings in Unix time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch; 0 for a time before it.
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(time: SystemTime) -> u64 {
    unix_nanos(time) / 1_000_000
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(time: SystemTime) -> u64 {
    unix_nanos(time) / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn units_agree_and_times_before_the_epoch_are_zero() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_nanos(t), 1_700_000_000_123_000_000);
        assert_eq!(unix_millis(t), 1_700_000_000_123);
        assert_eq!(unix_seconds(t), 1_700_000_000);
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
