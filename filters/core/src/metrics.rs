//! Metrics through the proxy-wasm metrics API, shown at Envoy's `/stats/prometheus`.
//!
//! A metric that cannot be defined or updated only loses a count; it never affects a request.
//! Labelled series ([`crate::analytics::series`]) are defined on first use by a [`Family`],
//! which caps how many distinct series one VM creates: label values come from requests
//! (models, tiers, consumers), and an unbounded number of series would exhaust Envoy's stats.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use proxy_wasm::types::MetricType;

use crate::analytics::series;

/// Defines counter `name`; `None` if the host refused it.
pub fn counter(name: &str) -> Option<u32> {
    proxy_wasm::hostcalls::define_metric(MetricType::Counter, name).ok()
}

/// Adds `by` to counter `id`, if it was defined.
pub fn bump(id: Option<u32>, by: u64) {
    if let Some(id) = id {
        let _ = proxy_wasm::hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}

/// Series of one metric with labels, defined on first use.
///
/// Series are found by a hash of their raw label values, so counting an existing series
/// builds no string; the cleaned name is built once, when the series is defined.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    kind: MetricType,
    max_series: usize,
    hasher: RandomState,
    ids: RefCell<HashMap<u64, Option<u32>>>,
    /// The series every label set past `max_series` counts in.
    other: RefCell<Option<Option<u32>>>,
}

impl Family {
    /// A counter family; past `max_series` distinct label sets, new ones count under labels
    /// that all read `other`.
    pub fn counter(name: &'static str, max_series: usize) -> Self {
        Self::new(name, MetricType::Counter, max_series)
    }

    /// A histogram family (Envoy's default buckets, shown at the next stats flush).
    pub fn histogram(name: &'static str, max_series: usize) -> Self {
        Self::new(name, MetricType::Histogram, max_series)
    }

    fn new(name: &'static str, kind: MetricType, max_series: usize) -> Self {
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
    pub fn add(&self, labels: &[(&str, &str)], by: u64) {
        let Some(id) = self.id(labels) else { return };
        let _ = match self.kind {
            MetricType::Histogram => proxy_wasm::hostcalls::record_metric(id, by),
            _ => proxy_wasm::hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)),
        };
    }

    fn define(&self, labels: &[(&str, &str)]) -> Option<u32> {
        proxy_wasm::hostcalls::define_metric(self.kind, &series(self.name, labels)).ok()
    }

    fn id(&self, labels: &[(&str, &str)]) -> Option<u32> {
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
            let id = self.define(labels);
            ids.insert(key, id);
            return id;
        }
        let mut other = self.other.try_borrow_mut().ok()?;
        *other.get_or_insert_with(|| {
            let others: Vec<(&str, &str)> = labels.iter().map(|(label, _)| (*label, "other")).collect();
            self.define(&others)
        })
    }
}

/// Defines gauge `name`; `None` if the host refused it.
pub fn gauge(name: &str) -> Option<u32> {
    proxy_wasm::hostcalls::define_metric(MetricType::Gauge, name).ok()
}

/// Sets gauge `id` to `value`, if it was defined.
pub fn set(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = proxy_wasm::hostcalls::record_metric(id, value);
    }
}
