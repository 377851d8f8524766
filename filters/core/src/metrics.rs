//! Metrics through the proxy-wasm metrics API, shown at Envoy's `/stats/prometheus`.
//!
//! A metric that cannot be defined or updated only loses a count; it never affects a request.
//! Labelled series ([`crate::analytics::series`]) are defined on first use by a [`Family`],
//! which caps how many distinct series one VM creates: label values come from requests
//! (models, tiers, consumers), and an unbounded number of series would exhaust Envoy's stats.

use std::cell::RefCell;
use std::collections::HashMap;

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
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    kind: MetricType,
    max_series: usize,
    ids: RefCell<HashMap<String, Option<u32>>>,
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
            ids: RefCell::new(HashMap::new()),
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

    fn id(&self, labels: &[(&str, &str)]) -> Option<u32> {
        let mut ids = self.ids.try_borrow_mut().ok()?;
        let mut name = series(self.name, labels);
        if !ids.contains_key(&name) && ids.len() >= self.max_series {
            let other: Vec<(&str, &str)> = labels.iter().map(|(label, _)| (*label, "other")).collect();
            name = series(self.name, &other);
        }
        let kind = self.kind;
        *ids.entry(name)
            .or_insert_with_key(|n| proxy_wasm::hostcalls::define_metric(kind, n).ok())
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
