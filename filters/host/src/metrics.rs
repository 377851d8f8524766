//! Metrics through the host, shown at Envoy's `/stats/prometheus`, taking the host as an
//! [`Env`] so shells can be tested on the mock (series names come from
//! `portico_core::analytics::series`).
//!
//! A metric that cannot be defined or updated only loses a count; it never affects a request.
//! A labelled [`Family`] defines series on first use and caps how many one VM creates: label
//! values come from requests (models, tiers, consumers), and unbounded series would exhaust
//! Envoy's stats.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use portico_core::analytics::series;

use crate::env::Env;
use crate::host::MetricKind;

fn define(env: &Env<'_>, kind: MetricKind, name: &str) -> Option<u32> {
    match env.host().define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("defining metric {name} failed: host status {}", e.0);
            None
        }
    }
}

fn add(env: &Env<'_>, kind: MetricKind, id: u32, by: u64) {
    let _ = match kind {
        MetricKind::Histogram | MetricKind::Gauge => env.host().record_metric(id, by),
        MetricKind::Counter => env.host().increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)),
    };
}

/// A counter without labels.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(env: &Env<'_>, name: &str) -> Self {
        Self(define(env, MetricKind::Counter, name))
    }

    pub fn add(&self, env: &Env<'_>, by: u64) {
        if let Some(id) = self.0 {
            add(env, MetricKind::Counter, id, by);
        }
    }
}

/// A gauge without labels.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn define(env: &Env<'_>, name: &str) -> Self {
        Self(define(env, MetricKind::Gauge, name))
    }

    pub fn set(&self, env: &Env<'_>, value: u64) {
        if let Some(id) = self.0 {
            add(env, MetricKind::Gauge, id, value);
        }
    }
}

/// Series of one metric with labels, defined on first use and found again by a hash of their
/// raw label values, so counting an existing series builds no string.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    kind: MetricKind,
    max_series: usize,
    hasher: RandomState,
    ids: RefCell<HashMap<u64, Option<u32>>>,
    /// The series every label set past `max_series` counts in (labels all `other`).
    other: RefCell<Option<Option<u32>>>,
}

impl Family {
    pub fn counter(name: &'static str, max_series: usize) -> Self {
        Self::new(name, MetricKind::Counter, max_series)
    }

    /// Envoy's default buckets, shown at the next stats flush.
    pub fn histogram(name: &'static str, max_series: usize) -> Self {
        Self::new(name, MetricKind::Histogram, max_series)
    }

    fn new(name: &'static str, kind: MetricKind, max_series: usize) -> Self {
        Self {
            name,
            kind,
            max_series,
            hasher: RandomState::new(),
            ids: RefCell::new(HashMap::new()),
            other: RefCell::new(None),
        }
    }

    /// Adds `by` to a counter series, or records `by` in a histogram series.
    pub fn add(&self, env: &Env<'_>, labels: &[(&str, &str)], by: u64) {
        if let Some(id) = self.id(env, labels) {
            add(env, self.kind, id, by);
        }
    }

    fn id(&self, env: &Env<'_>, labels: &[(&str, &str)]) -> Option<u32> {
        let mut h = self.hasher.build_hasher();
        for (label, value) in labels {
            h.write(label.as_bytes());
            h.write_u8(0xff);
            h.write(value.as_bytes());
            h.write_u8(0xff);
        }
        let key = h.finish();
        let mut ids = self.ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.get(&key) {
            return *id;
        }
        if ids.len() < self.max_series {
            let id = define(env, self.kind, &series(self.name, labels));
            ids.insert(key, id);
            return id;
        }
        let mut other = self.other.try_borrow_mut().ok()?;
        *other.get_or_insert_with(|| {
            let others: Vec<(&str, &str)> = labels.iter().map(|(label, _)| (*label, "other")).collect();
            define(env, self.kind, &series(self.name, &others))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockHost;

    #[test]
    fn a_family_defines_each_series_once_and_caps_them() {
        let host = MockHost::new();
        let env = Env::new(&host);
        let family = Family::counter("portico_x_total", 2);
        family.add(&env, &[("tier", "a")], 1);
        family.add(&env, &[("tier", "a")], 2);
        family.add(&env, &[("tier", "b")], 1);
        family.add(&env, &[("tier", "c")], 1);
        family.add(&env, &[("tier", "d")], 5);
        assert_eq!(host.metric("portico_x_total;tier=a"), Some(3));
        assert_eq!(host.metric("portico_x_total;tier=b"), Some(1));
        assert_eq!(host.metric("portico_x_total;tier=c"), None);
        assert_eq!(host.metric("portico_x_total;tier=other"), Some(6));
    }

    #[test]
    fn counters_and_gauges_record_through_the_host() {
        let host = MockHost::new();
        let env = Env::new(&host);
        let c = Counter::define(&env, "c");
        c.add(&env, 2);
        c.add(&env, 3);
        let g = Gauge::define(&env, "g");
        g.set(&env, 7);
        g.set(&env, 4);
        assert_eq!(host.metric("c"), Some(5));
        assert_eq!(host.metric("g"), Some(4));
    }
}
