//! Answering and logging the requests a filter refuses.
//!
//! Every refusal used to write an info line, so anonymous clients could flood the log (20,000
//! 429s wrote 20,000 lines). Each filter now logs refusals through a [`Refusals`] built from
//! the common `refusal_log` field of its configuration (one reader, [`RefusalLog::read`]): per
//! worker (a VM serves one worker), at most `per_second` lines in each one-second window at the
//! chosen level, then one summary line with the number left out, written with the first
//! refusal of a later window.
//!
//! The reply itself goes through the raw `proxy_send_local_response` call with Envoy's
//! "response code details" set to `<filter>.<code>` (for example `portico-auth.token_expired`):
//! the access log's `%RESPONSE_CODE_DETAILS%` then says which filter refused and why, and the
//! `local_reply_config` of the shipped Envoy configs recognises Portico's replies by that prefix
//! and leaves them as they are. The SDK's `send_http_response` passes no details.

use std::cell::RefCell;
use std::fmt;
use std::time::SystemTime;

use crate::clock::unix_millis;
use crate::config::{Errors, Object};

/// The most lines per second a filter may be configured to write per worker.
pub const MAX_PER_SECOND: u64 = 10_000;
/// Lines per second per worker when `refusal_log.per_second` is not set.
pub const DEFAULT_PER_SECOND: u32 = 10;
/// The prefix of the response code details of every Portico reply.
pub const DETAILS_PREFIX: &str = "portico-";

/// The level refusal lines are written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    /// Shown only when Envoy's `wasm` log component is at debug.
    Debug,
    /// Refusals are not logged at all (their metrics still count them).
    Off,
}

/// A filter's `refusal_log` setting: `{"level": "info"|"debug"|"off", "per_second": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLog {
    pub level: Level,
    pub per_second: u32,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            level: Level::Info,
            per_second: DEFAULT_PER_SECOND,
        }
    }
}

impl RefusalLog {
    /// Reads the optional `refusal_log` field of a filter's top-level configuration object.
    pub fn read(root: &mut Object<'_>, errors: &mut Errors) -> RefusalLog {
        let mut policy = RefusalLog::default();
        let Some(mut obj) = root.opt("refusal_log").and_then(|n| n.object(errors)) else {
            return policy;
        };
        if let Some(i) = obj
            .opt("level")
            .and_then(|n| n.one_of(&["info", "debug", "off"], errors))
        {
            policy.level = match i {
                0 => Level::Info,
                1 => Level::Debug,
                _ => Level::Off,
            };
        }
        if let Some(n) = obj.opt_u64_in("per_second", 0..=MAX_PER_SECOND, errors) {
            policy.per_second = u32::try_from(n).unwrap_or(u32::MAX);
        }
        obj.finish(errors);
        policy
    }
}

// === impl Limiter ===

/// What the limiter allows for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The number of events left out in the previous window(s), to report before this one.
    pub summary: Option<u64>,
    /// Whether this event gets its own line.
    pub log: bool,
}

/// At most `per_second` events in each one-second window; the rest are counted. Windows start
/// at the first event after the previous one ended, so an idle filter costs nothing.
#[derive(Debug, Clone)]
pub struct Limiter {
    per_second: u32,
    window_start_ms: Option<u64>,
    logged: u32,
    suppressed: u64,
}

impl Limiter {
    pub fn new(per_second: u32) -> Self {
        Limiter {
            per_second,
            window_start_ms: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Decides for an event at `now_ms` (Unix milliseconds). A clock that went back starts a
    /// new window rather than extending the old one forever.
    pub fn admit(&mut self, now_ms: u64) -> Admission {
        let expired = self
            .window_start_ms
            .is_none_or(|start| now_ms < start || now_ms >= start.saturating_add(1000));
        let mut summary = None;
        if expired {
            summary = (self.suppressed > 0).then_some(self.suppressed);
            self.window_start_ms = Some(now_ms);
            self.logged = 0;
            self.suppressed = 0;
        }
        let log = self.logged < self.per_second;
        if log {
            self.logged = self.logged.saturating_add(1);
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
        }
        Admission { summary, log }
    }
}

// === impl Refusals ===

/// One filter's refusal replies and their log, per worker.
#[derive(Debug)]
pub struct Refusals {
    filter: &'static str,
    policy: RefusalLog,
    limiter: RefCell<Limiter>,
}

impl Refusals {
    /// `filter` names the filter in log lines and response details (`portico-auth`).
    pub fn new(filter: &'static str, policy: RefusalLog) -> Self {
        Refusals {
            filter,
            policy,
            limiter: RefCell::new(Limiter::new(policy.per_second)),
        }
    }

    /// The lines to write for one refusal at `now_ms`, each with its level; `line` is only
    /// formatted when it is written.
    pub fn lines(&self, now_ms: u64, level: log::Level, line: impl FnOnce() -> String) -> Vec<(log::Level, String)> {
        let Ok(mut limiter) = self.limiter.try_borrow_mut() else {
            return Vec::new();
        };
        let admission = limiter.admit(now_ms);
        let mut out = Vec::new();
        if let Some(n) = admission.summary {
            out.push((
                level,
                format!(
                    "{}: {n} more lines were not logged (refusal_log.per_second is {} per worker)",
                    self.filter, self.policy.per_second
                ),
            ));
        }
        if admission.log {
            out.push((level, format!("{}: {}", self.filter, line())));
        }
        out
    }

    /// Logs a warning about something other than the client (a backend's bad answer) through
    /// the same per-worker budget, whatever the refusal level: a broken backend must not flood
    /// the log either.
    pub fn warn(&self, now: SystemTime, message: fmt::Arguments<'_>) {
        self.note(now, log::Level::Warn, message);
    }

    /// Logs a line that can come once per request without being a refusal (a backend's usage
    /// out of bounds, an answer the cache does not store) at `level`, through the same
    /// per-worker budget: traffic must not be able to flood the log through any line.
    pub fn note(&self, now: SystemTime, level: log::Level, message: fmt::Arguments<'_>) {
        for (level, line) in self.lines(unix_millis(now), level, || message.to_string()) {
            log::log!(level, "{line}");
        }
    }
}

/// Serialises headers the way the proxy-wasm ABI passes a header map: the pair count, each
/// name and value length (all u32 little-endian), then each name and value followed by a NUL.
pub fn serialize_headers(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = pairs.iter().fold(4usize, |n, (k, v)| {
        n.saturating_add(10).saturating_add(k.len()).saturating_add(v.len())
    });
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::read_value;
    use serde_json::json;

    #[test]
    fn the_limiter_allows_n_a_second_then_reports_what_it_left_out() {
        let mut l = Limiter::new(3);
        let logged: Vec<bool> = (0..5).map(|i| l.admit(1_000 + i * 10).log).collect();
        assert_eq!(logged, [true, true, true, false, false]);
        // Still the same window at 1999 ms.
        assert_eq!(
            l.admit(1_999),
            Admission {
                summary: None,
                log: false
            }
        );
        // A new window: the three left out are reported once, and logging resumes.
        assert_eq!(
            l.admit(2_000),
            Admission {
                summary: Some(3),
                log: true
            }
        );
        assert_eq!(l.admit(2_001).summary, None);
        // A window without suppressions reports nothing, even after a long quiet time.
        assert_eq!(
            l.admit(3_600_000),
            Admission {
                summary: None,
                log: true
            }
        );
    }

    #[test]
    fn a_clock_that_goes_back_starts_a_new_window() {
        let mut l = Limiter::new(1);
        assert!(l.admit(5_000).log);
        assert!(!l.admit(5_001).log);
        assert_eq!(
            l.admit(4_000),
            Admission {
                summary: Some(1),
                log: true
            }
        );
    }

    #[test]
    fn zero_per_second_writes_only_summaries() {
        let mut l = Limiter::new(0);
        assert!(!l.admit(0).log);
        assert!(!l.admit(1).log);
        assert_eq!(
            l.admit(1_000),
            Admission {
                summary: Some(2),
                log: false
            }
        );
    }

    #[test]
    fn a_flood_is_bounded_and_every_refusal_is_accounted_for() {
        let r = Refusals::new("portico-test", RefusalLog::default());
        let mut lines = Vec::new();
        // 20,000 refusals over 2.5 seconds, then one more later.
        for i in 0..20_000u64 {
            lines.extend(r.lines(10_000 + i / 8, log::Level::Info, || format!("refusal {i}")));
        }
        lines.extend(r.lines(20_000, log::Level::Info, || "late".to_owned()));
        let refusal_lines = lines
            .iter()
            .filter(|(_, l)| l.starts_with("portico-test: refusal"))
            .count();
        let summaries: Vec<u64> = lines
            .iter()
            .filter_map(|(_, l)| {
                l.strip_prefix("portico-test: ")?
                    .split_once(" more lines were not logged")
                    .and_then(|(n, _)| n.parse().ok())
            })
            .collect();
        assert_eq!(refusal_lines, 30, "three windows of ten");
        assert_eq!(summaries.len(), 3, "{lines:?}");
        assert_eq!(refusal_lines as u64 + summaries.iter().sum::<u64>(), 20_000);
        assert_eq!(lines.last().map(|(_, l)| l.as_str()), Some("portico-test: late"));
        assert!(lines.iter().all(|(level, _)| *level == log::Level::Info));
    }

    #[test]
    fn lines_are_formatted_only_when_written() {
        let r = Refusals::new(
            "portico-test",
            RefusalLog {
                level: Level::Info,
                per_second: 1,
            },
        );
        assert_eq!(r.lines(0, log::Level::Debug, || "a".to_owned()).len(), 1);
        let lines = r.lines(1, log::Level::Debug, || panic!("formatted a line that is not written"));
        assert!(lines.is_empty());
    }

    fn read(v: serde_json::Value) -> Result<RefusalLog, Errors> {
        read_value(&v, |mut root, errors| {
            let policy = RefusalLog::read(&mut root, errors);
            root.finish(errors);
            policy
        })
    }

    #[test]
    fn the_setting_is_read_with_defaults_and_paths() {
        assert_eq!(read(json!({})).unwrap(), RefusalLog::default());
        assert_eq!(
            read(json!({"refusal_log": {"level": "debug", "per_second": 0}})).unwrap(),
            RefusalLog {
                level: Level::Debug,
                per_second: 0
            }
        );
        assert_eq!(
            read(json!({"refusal_log": {"level": "off"}})).unwrap().level,
            Level::Off
        );
        assert_eq!(
            read(json!({"refusal_log": {"level": "warn", "per_second": 10_001, "burst": 1}}))
                .unwrap_err()
                .to_string(),
            "$.refusal_log.level: unknown value \"warn\", expected one of: info, debug, off; \
             $.refusal_log.per_second: must be between 0 and 10000; \
             $.refusal_log.burst: unknown field"
        );
        assert_eq!(
            read(json!({"refusal_log": "info"})).unwrap_err().to_string(),
            "$.refusal_log: expected an object"
        );
    }

    #[test]
    fn header_maps_are_serialised_as_the_abi_wants() {
        assert_eq!(
            serialize_headers(&[("a", "bc"), ("", "")]),
            [
                &2u32.to_le_bytes()[..],
                &1u32.to_le_bytes(),
                &2u32.to_le_bytes(),
                &0u32.to_le_bytes(),
                &0u32.to_le_bytes(),
                b"a\0bc\0\0\0",
            ]
            .concat()
        );
    }
}
