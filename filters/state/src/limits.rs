//! The limits of Envoy's rate limit service API, read from a YAML (or JSON) file at start, in
//! the shape of Envoy's reference rate limit service: per domain, a tree of descriptors, each
//! a `key` with an optional `value`, a `rate_limit` (`requests_per_unit` per `unit`) and nested
//! `descriptors`.
//!
//! ```yaml
//! domains:
//!   - domain: portico
//!     descriptors:
//!       - key: generic_key
//!         value: chat
//!         rate_limit: {unit: minute, requests_per_unit: 5}
//!       - key: remote_address        # no value: one counter per address
//!         rate_limit: {unit: second, requests_per_unit: 10}
//! ```
//!
//! A request's descriptor (its list of entries) matches by walking the tree entry by entry,
//! preferring a node with the entry's exact value over one without a value; the limit is the
//! one on the node the last entry reaches. A descriptor that matches nothing is not limited.
//!
//! A limit is counted as Portico's rate-limit filter counts: GCRA with a burst of
//! `requests_per_unit`, refilled one request every `unit / requests_per_unit` (no window
//! boundary where twice the limit passes). Units are those of fixed length: `second`,
//! `minute`, `hour`, `day`, `week`.

use std::collections::HashMap;

use portico_core::config::{parse_root, Errors, Node};
use serde_json::Value;

/// A limit's window, the units Envoy's API names that have a fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
}

const UNITS: [&str; 5] = ["second", "minute", "hour", "day", "week"];

impl Unit {
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub requests_per_unit: u32,
    pub unit: Unit,
    /// Reported to Envoy in the descriptor status.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Descriptor {
    key: String,
    value: Option<String>,
    rate: Option<Rate>,
    children: Vec<Descriptor>,
}

/// Every domain's descriptor tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    domains: HashMap<String, Vec<Descriptor>>,
}

impl Limits {
    /// Reads a limits file's text; every error carries its JSON path.
    pub fn parse(text: &str) -> Result<Limits, String> {
        let value: Value = serde_norway::from_str(text).map_err(|e| format!("$: not valid YAML or JSON: {e}"))?;
        let mut errors = Errors::default();
        let limits = parse_root(&value, &mut errors).map(|mut root| {
            let mut domains = HashMap::new();
            for node in root.array("domains", &mut errors) {
                let Some(mut domain) = node.object(&mut errors) else {
                    continue;
                };
                let name = domain.req_str("domain", &mut errors).map(str::to_owned);
                let tree = read_descriptors(domain.array("descriptors", &mut errors), &mut errors);
                if let Some(name) = name {
                    if domains.insert(name.clone(), tree).is_some() {
                        domain.field_error("domain", &mut errors, format!("domain {name:?} appears twice"));
                    }
                }
                domain.finish(&mut errors);
            }
            root.finish(&mut errors);
            Limits { domains }
        });
        errors.into_result(limits).map_err(|e| e.to_string())
    }

    /// The limit on a descriptor of `domain`, if any.
    pub fn find<'a>(&self, domain: &str, entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<&Rate> {
        let mut level = self.domains.get(domain)?;
        let mut rate = None;
        for (key, value) in entries {
            let exact = level.iter().find(|d| d.key == key && d.value.as_deref() == Some(value));
            let node = exact.or_else(|| level.iter().find(|d| d.key == key && d.value.is_none()))?;
            rate = node.rate.as_ref();
            level = &node.children;
        }
        rate
    }
}

fn read_descriptors(nodes: Vec<Node<'_>>, errors: &mut Errors) -> Vec<Descriptor> {
    let mut out: Vec<Descriptor> = Vec::new();
    for node in nodes {
        let Some(mut object) = node.object(errors) else {
            continue;
        };
        let key = object.req_str("key", errors).map(str::to_owned);
        let value = object.opt_str("value", errors).map(str::to_owned);
        let rate = object.opt("rate_limit").and_then(|n| read_rate(&n, errors));
        let children = read_descriptors(object.array("descriptors", errors), errors);
        if let Some(key) = key {
            if out.iter().any(|d| d.key == key && d.value == value) {
                object.field_error("key", errors, "the same key and value appear twice at this level");
            }
            out.push(Descriptor {
                key,
                value,
                rate,
                children,
            });
        }
        object.finish(errors);
    }
    out
}

fn read_rate(node: &Node<'_>, errors: &mut Errors) -> Option<Rate> {
    let mut object = node.object(errors)?;
    let unit = object
        .req("unit", errors)
        .and_then(|n| n.one_of(&UNITS, errors))
        .and_then(|i| {
            [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Week]
                .get(i)
                .copied()
        });
    // As every Portico limit: at most a million per second, one per microsecond (GCRA's tick
    // in the scripts), and what Envoy's API can carry.
    let max = unit.map_or(u64::from(u32::MAX), |u| {
        (u.seconds() * 1_000_000).min(u64::from(u32::MAX))
    });
    let requests = object
        .req("requests_per_unit", errors)
        .and_then(|n| n.u64_in(1..=max, errors));
    let name = object.opt_str("name", errors).map(str::to_owned);
    object.finish(errors);
    Some(Rate {
        requests_per_unit: u32::try_from(requests?).ok()?,
        unit: unit?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
domains:
  - domain: d
    descriptors:
      - key: k
        value: v
        rate_limit: {unit: minute, requests_per_unit: 5, name: five}
        descriptors:
          - key: user
            rate_limit: {unit: second, requests_per_unit: 1}
      - key: k
        rate_limit: {unit: hour, requests_per_unit: 100}
";

    fn limits() -> Limits {
        Limits::parse(FILE).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_exact_value_wins_over_a_wildcard() {
        let rate = limits().find("d", [("k", "v")]).cloned();
        assert_eq!(
            rate,
            Some(Rate {
                requests_per_unit: 5,
                unit: Unit::Minute,
                name: Some("five".into())
            })
        );
        assert_eq!(limits().find("d", [("k", "other")]).map(|r| r.unit), Some(Unit::Hour));
    }

    #[test]
    fn nested_descriptors_match_entry_by_entry() {
        let rate = limits()
            .find("d", [("k", "v"), ("user", "alice")])
            .map(|r| (r.requests_per_unit, r.unit));
        assert_eq!(rate, Some((1, Unit::Second)));
    }

    #[test]
    fn unmatched_descriptors_and_domains_are_not_limited() {
        assert_eq!(limits().find("d", [("x", "v")]), None);
        assert_eq!(limits().find("d", [("k", "other"), ("user", "a")]), None);
        assert_eq!(limits().find("other", [("k", "v")]), None);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let bad = "
domains:
  - domain: d
    descriptors:
      - key: k
        rate_limit: {unit: month, requests_per_unit: -1}
      - value: v
        extra: 1
      - key: fast
        rate_limit: {unit: second, requests_per_unit: 1000001}
";
        assert_eq!(
            Limits::parse(bad).err().as_deref(),
            Some(
                "$.domains[0].descriptors[0].rate_limit.unit: unknown value \"month\", expected one of: second, minute, hour, day, week; \
                 $.domains[0].descriptors[0].rate_limit.requests_per_unit: expected a non-negative integer; \
                 $.domains[0].descriptors[1].key: required field is missing; \
                 $.domains[0].descriptors[1].extra: unknown field; \
                 $.domains[0].descriptors[2].rate_limit.requests_per_unit: must be between 1 and 1000000"
            )
        );
    }

    #[test]
    fn a_file_that_is_not_yaml_is_refused() {
        assert!(Limits::parse("domains: [").is_err());
    }
}
