//! The rate-limit filter's configuration, checked with JSON paths.

use std::collections::HashMap;

use portico_core::config::{read_bytes, read_value, Errors, Node, Object, MAX_PERIOD_SECONDS, MAX_TOKENS};
use portico_core::contract::metadata;
use portico_core::refusal::RefusalLog;
use portico_core::route::{Matcher, RouteMatch};
use serde_json::Value;

use crate::gcra::Rate;

#[derive(Debug)]
pub struct Config {
    pub rules: Vec<Rule>,
    pub quotas: Vec<Quota>,
    /// Slots per rule in shared data (see `slots`).
    pub max_keys: u64,
    pub fail_open: bool,
    pub x_ratelimit_headers: bool,
    /// Where Envoy's `json_to_metadata` filter puts lifted body fields.
    pub metadata_namespace: String,
    /// Some key counts per client address: only then is it read from the host.
    pub needs_client_ip: bool,
    /// Token series per consumer as well as per tier and model (one series per consumer).
    pub per_consumer_metrics: bool,
    pub refusal_log: RefusalLog,
}

/// What a limit is counted per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Consumer,
    Tier,
    ClientIp,
    /// The rule's own path pattern.
    Route,
    Path,
    Header(String),
}

/// Conditions beyond `match`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct When {
    pub tiers: Vec<String>,
    /// Header name and, if given, the exact value it must have.
    pub headers: Vec<(String, Option<String>)>,
}

/// A limit per tier, with a default for callers without a listed tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiered<T> {
    pub default: T,
    pub by_tier: HashMap<String, T>,
}

impl<T> Tiered<T> {
    pub fn for_tier(&self, tier: Option<&str>) -> &T {
        tier.and_then(|t| self.by_tier.get(t)).unwrap_or(&self.default)
    }
}

/// What a rule or a token quota applies to and counts per.
#[derive(Debug)]
pub struct Selector {
    pub name: String,
    /// The shared-data key prefix of its slots, `portico/rate-limit/<name>`.
    pub prefix: String,
    pub matcher: Matcher,
    pub when: When,
    pub key: Vec<KeyPart>,
    /// Count and report, never refuse.
    pub dry_run: bool,
}

#[derive(Debug)]
pub struct Rule {
    pub select: Selector,
    pub limit: Tiered<Rate>,
}

#[derive(Debug)]
pub struct Quota {
    pub select: Selector,
    /// Token budgets (for example per minute and per day); all must have room.
    pub budgets: Tiered<Vec<Rate>>,
    /// The estimate of completion tokens when the request does not say `max_tokens`.
    pub default_max_tokens: u64,
}

const DEFAULT_MAX_KEYS: u64 = 10_000;
/// The fastest rate a limit or budget may allow: GCRA keeps time in whole nanoseconds per
/// unit, so at a million a second its rounding stays below 0.1%.
pub const MAX_PER_SECOND: u64 = 1_000_000;

impl Config {
    /// Parses and checks the plugin configuration bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, Errors> {
        read_bytes(bytes, read)
    }

    pub fn from_value(value: &Value) -> Result<Config, Errors> {
        read_value(value, read)
    }
}

fn read(mut root: Object<'_>, errors: &mut Errors) -> Config {
    let max_keys = root.opt_u64("max_keys", errors).unwrap_or(DEFAULT_MAX_KEYS);
    if !(16..=10_000_000).contains(&max_keys) {
        root.field_error("max_keys", errors, "must be between 16 and 10000000");
    }
    let fail_open = root
        .opt("fail_mode")
        .and_then(|n| n.one_of(&["open", "closed"], errors))
        .is_none_or(|i| i == 0);
    let x_ratelimit_headers = root.opt_bool("x_ratelimit_headers", errors).unwrap_or(true);
    let metadata_namespace = root.metadata_namespace("metadata_namespace", metadata::NAMESPACE, errors);
    let per_consumer_metrics = root.opt_bool("per_consumer_metrics", errors).unwrap_or(false);
    let mut names: Vec<String> = Vec::new();
    let mut rules = Vec::new();
    for node in root.array("rules", errors) {
        let Some(mut obj) = node.object(errors) else {
            continue;
        };
        let select = read_selector(&mut obj, &mut names, errors);
        let limit = obj.req("limit", errors).and_then(|n| read_rate(&n, errors));
        let by_tier = read_tiers(&mut obj, errors, read_rate);
        obj.finish(errors);
        if let (Some(select), Some(limit)) = (select, limit) {
            rules.push(Rule {
                select,
                limit: Tiered {
                    default: limit,
                    by_tier,
                },
            });
        }
    }
    let mut quotas = Vec::new();
    for node in root.array("token_quotas", errors) {
        let Some(mut obj) = node.object(errors) else {
            continue;
        };
        let select = read_selector(&mut obj, &mut names, errors);
        let budgets = obj.req("budgets", errors).and_then(|n| read_budgets(&n, errors));
        let by_tier = read_tiers(&mut obj, errors, read_budgets);
        let default_max_tokens = obj
            .opt_u64_in("default_max_tokens", 1..=MAX_TOKENS, errors)
            .unwrap_or(1024);
        let smallest = budgets
            .iter()
            .flatten()
            .chain(by_tier.values().flatten())
            .map(|b| b.burst)
            .min();
        if let Some(smallest) = smallest.filter(|s| default_max_tokens > *s) {
            obj.field_error(
                "default_max_tokens",
                errors,
                format!(
                    "{default_max_tokens} is more than the smallest budget ({smallest} tokens): every request \
                     that does not say max_tokens would be refused"
                ),
            );
        }
        obj.finish(errors);
        if let (Some(select), Some(budgets)) = (select, budgets) {
            quotas.push(Quota {
                select,
                budgets: Tiered {
                    default: budgets,
                    by_tier,
                },
                default_max_tokens,
            });
        }
    }
    if rules.is_empty() && quotas.is_empty() && errors.is_empty() {
        root.field_error("rules", errors, "configure at least one rule or token quota");
    }
    let refusal_log = RefusalLog::read(&mut root, errors);
    root.finish(errors);
    let needs_client_ip = rules
        .iter()
        .map(|r| &r.select)
        .chain(quotas.iter().map(|q| &q.select))
        .any(|s| s.key.contains(&KeyPart::ClientIp));
    Config {
        needs_client_ip,
        rules,
        quotas,
        max_keys,
        fail_open,
        x_ratelimit_headers,
        metadata_namespace,
        per_consumer_metrics,
        refusal_log,
    }
}

/// The fields rules and quotas share. `names` holds the names seen so far: they must be unique.
fn read_selector(obj: &mut Object<'_>, names: &mut Vec<String>, errors: &mut Errors) -> Option<Selector> {
    let name = obj.req("name", errors).and_then(|n| {
        let name = n.non_empty_str(errors)?;
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            n.error(errors, "names use a-z, 0-9 and _ only (they become metric names)");
        } else if names.iter().any(|x| x == name) {
            n.error(errors, format!("duplicate name {name:?}"));
        }
        names.push(name.to_owned());
        Some(name.to_owned())
    });
    let matcher = read_matcher(obj, errors);
    let when = obj.opt("when").map(|n| read_when(&n, errors)).unwrap_or_default();
    let key = read_key(obj, errors);
    let dry_run = obj.opt_bool("dry_run", errors).unwrap_or(false);
    let name = name?;
    Some(Selector {
        prefix: format!("portico/rate-limit/{name}"),
        name,
        matcher: matcher?,
        when,
        key,
        dry_run,
    })
}

fn read_matcher(obj: &mut Object<'_>, errors: &mut Errors) -> Option<Matcher> {
    let m = match obj.opt("match") {
        Some(n) => RouteMatch::parse(&n, errors)?,
        None => RouteMatch::default(),
    };
    Some(Matcher::new(m, obj.path(), errors))
}

fn read_when(node: &Node<'_>, errors: &mut Errors) -> When {
    let Some(mut obj) = node.object(errors) else {
        return When::default();
    };
    let tiers = obj.narrowing_list("tiers", errors);
    let mut headers = Vec::new();
    for h in obj.array("headers", errors) {
        let Some(mut ho) = h.object(errors) else {
            continue;
        };
        let name = ho.req("name", errors).and_then(|n| n.header_name(errors));
        let value = ho.opt("value").and_then(|v| v.str(errors)).map(str::to_owned);
        ho.finish(errors);
        if let Some(name) = name {
            headers.push((name, value));
        }
    }
    obj.finish(errors);
    When { tiers, headers }
}

fn read_key(obj: &mut Object<'_>, errors: &mut Errors) -> Vec<KeyPart> {
    let mut parts = Vec::new();
    for item in obj.array("key", errors) {
        let part = match item.value() {
            Value::String(_) => item
                .one_of(&["consumer", "tier", "client_ip", "route", "path"], errors)
                .map(|i| match i {
                    0 => KeyPart::Consumer,
                    1 => KeyPart::Tier,
                    2 => KeyPart::ClientIp,
                    3 => KeyPart::Route,
                    _ => KeyPart::Path,
                }),
            Value::Object(_) => item.object(errors).and_then(|mut o| {
                let name = o
                    .req("header", errors)
                    .and_then(|h| h.header_name(errors))
                    .map(KeyPart::Header);
                o.finish(errors);
                name
            }),
            _ => {
                item.error(
                    errors,
                    "expected \"consumer\", \"tier\", \"client_ip\", \"route\", \"path\" or {\"header\": NAME}",
                );
                None
            }
        };
        parts.extend(part);
    }
    parts
}

/// `period_seconds`, then the amount per period (`requests` or `tokens`) within
/// [`MAX_PER_SECOND`] of it.
fn read_amount_and_period(obj: &mut Object<'_>, amount: &'static str, errors: &mut Errors) -> Option<(u64, u64)> {
    let period = obj
        .req("period_seconds", errors)
        .and_then(|n| n.u64_in(1..=MAX_PERIOD_SECONDS, errors));
    let node = obj.req(amount, errors)?;
    let n = node.u64(errors)?;
    let max = period.unwrap_or(MAX_PERIOD_SECONDS).saturating_mul(MAX_PER_SECOND);
    if !(1..=max).contains(&n) {
        node.error(
            errors,
            format!("must be between 1 and {max}: at most {MAX_PER_SECOND} per second of period_seconds"),
        );
        return None;
    }
    Some((n, period?))
}

fn read_rate(node: &Node<'_>, errors: &mut Errors) -> Option<Rate> {
    let mut obj = node.object(errors)?;
    let amount = read_amount_and_period(&mut obj, "requests", errors);
    let burst = obj.opt("burst");
    let burst = match (burst, amount) {
        (None, Some((requests, _))) => Some(requests),
        (None, None) => None,
        (Some(n), None) => {
            let _ = n.u64(errors);
            None
        }
        (Some(n), Some((requests, period))) => {
            // A full bucket must refill within the longest period: a larger one never empties
            // in any sense an operator could reason about, and its nanoseconds would overflow.
            // (period is at least 1, as read above.)
            let max = u128::from(requests)
                .saturating_mul(u128::from(MAX_PERIOD_SECONDS))
                .checked_div(u128::from(period))
                .unwrap_or(0);
            let max = u64::try_from(max).unwrap_or(u64::MAX);
            n.u64(errors).filter(|b| {
                let ok = (1..=max).contains(b);
                if !ok {
                    n.error(
                        errors,
                        format!("must be between 1 and {max}: a full bucket must refill within {MAX_PERIOD_SECONDS} seconds"),
                    );
                }
                ok
            })
        }
    };
    obj.finish(errors);
    let ((requests, period), burst) = (amount?, burst?);
    let rate = Rate::new(requests, period, burst);
    if rate.is_none() {
        node.error(errors, "requests, period_seconds and burst must be at least 1");
    }
    rate
}

fn read_budgets(node: &Node<'_>, errors: &mut Errors) -> Option<Vec<Rate>> {
    let items = node.array(errors)?;
    if items.is_empty() {
        node.error(errors, "list at least one budget");
    }
    let mut budgets = Vec::new();
    let mut periods: Vec<(u64, String)> = Vec::new();
    for item in items {
        let Some(mut obj) = item.object(errors) else {
            continue;
        };
        let amount = read_amount_and_period(&mut obj, "tokens", errors);
        if let Some((_, period)) = amount {
            if let Some((_, first)) = periods.iter().find(|(p, _)| *p == period) {
                obj.field_error(
                    "period_seconds",
                    errors,
                    format!(
                        "another budget ({first}) has the same period: the smaller one always binds first, so the \
                         other never does; give one budget per period"
                    ),
                );
            }
            periods.push((period, item.path().to_owned()));
        }
        obj.finish(errors);
        if let Some((tokens, period)) = amount {
            match Rate::new(tokens, period, tokens) {
                Some(rate) => budgets.push(rate),
                None => item.error(errors, "tokens and period_seconds must be at least 1"),
            }
        }
    }
    Some(budgets)
}

fn read_tiers<T>(
    obj: &mut Object<'_>,
    errors: &mut Errors,
    read: fn(&Node<'_>, &mut Errors) -> Option<T>,
) -> HashMap<String, T> {
    let mut by_tier = HashMap::new();
    if let Some(mut tiers) = obj.opt("tiers").and_then(|n| n.object(errors)) {
        for (tier, node) in tiers.entries() {
            if let Some(value) = read(&node, errors) {
                by_tier.insert(tier.to_owned(), value);
            }
        }
        tiers.finish(errors);
    }
    by_tier
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_configuration_reads() {
        let c = Config::from_value(&json!({
            "rules": [{
                "name": "per_consumer",
                "match": {"path": "/v1/{*rest}"},
                "when": {"tiers": ["free"], "headers": [{"name": "X-Beta", "value": "1"}]},
                "key": ["consumer", {"header": "X-Team"}],
                "limit": {"requests": 10, "period_seconds": 60},
                "tiers": {"pro": {"requests": 100, "period_seconds": 60, "burst": 20}},
                "dry_run": true
            }],
            "token_quotas": [{"name": "llm", "key": ["consumer"], "budgets": [{"tokens": 100000, "period_seconds": 60}]}]
        }))
        .unwrap();
        let r = &c.rules[0];
        assert_eq!(r.select.key, vec![KeyPart::Consumer, KeyPart::Header("x-team".into())]);
        assert_eq!(r.select.when.headers, vec![("x-beta".into(), Some("1".into()))]);
        assert_eq!(r.select.prefix, "portico/rate-limit/per_consumer");
        assert_eq!(r.limit.for_tier(Some("pro")).burst, 20);
        assert_eq!(r.limit.for_tier(Some("gold")).amount, 10);
        assert_eq!(r.limit.for_tier(None).amount, 10);
        assert!(r.select.dry_run);
        assert_eq!(c.quotas[0].default_max_tokens, 1024);
        assert!(c.fail_open);
        assert!(!c.needs_client_ip, "no key counts per address");
    }

    #[test]
    fn every_error_has_its_path() {
        let err = Config::from_value(&json!({
            "rules": [
                {"name": "A b", "key": ["ip"], "limit": {"requests": 0, "period_seconds": 1}},
                {"name": "x", "limit": {"requests": 1}, "tiers": {"pro": {"period_seconds": 1, "requests": "many"}}}
            ],
            "token_quotas": [{"name": "x", "budgets": []}],
            "fail_mode": "sideways"
        }))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "$.fail_mode: unknown value \"sideways\", expected one of: open, closed; \
             $.rules[0].name: names use a-z, 0-9 and _ only (they become metric names); \
             $.rules[0].key[0]: unknown value \"ip\", expected one of: consumer, tier, client_ip, route, path; \
             $.rules[0].limit.requests: must be between 1 and 1000000: at most 1000000 per second of period_seconds; \
             $.rules[1].limit.period_seconds: required field is missing; \
             $.rules[1].tiers.pro.requests: expected a non-negative integer; \
             $.token_quotas[0].name: duplicate name \"x\"; \
             $.token_quotas[0].budgets: list at least one budget"
        );
    }

    fn errors_of(v: &Value) -> String {
        Config::from_value(v).err().map(|e| e.to_string()).unwrap_or_default()
    }

    fn rule(limit: Value) -> Value {
        json!({"rules": [{"name": "r", "limit": limit}]})
    }

    fn quota(extra: Value) -> Value {
        let mut q = json!({"name": "q", "budgets": [{"tokens": 100_000, "period_seconds": 60}]});
        if let (Some(q), Value::Object(extra)) = (q.as_object_mut(), extra) {
            q.extend(extra);
        }
        json!({"token_quotas": [q]})
    }

    #[test]
    fn zero_and_absurd_sizes_and_periods_are_refused() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "requests 0",
                rule(json!({"requests": 0, "period_seconds": 60})),
                "$.rules[0].limit.requests: must be between 1 and 60000000: at most 1000000 per second of period_seconds",
            ),
            (
                "period 0",
                rule(json!({"requests": 1, "period_seconds": 0})),
                "$.rules[0].limit.period_seconds: must be between 1 and 31536000",
            ),
            (
                "period beyond 365 days (its nanoseconds saturated)",
                rule(json!({"requests": 1, "period_seconds": 31_536_001})),
                "$.rules[0].limit.period_seconds: must be between 1 and 31536000",
            ),
            (
                "a rate faster than a million a second",
                rule(json!({"requests": 2_000_001, "period_seconds": 2})),
                "$.rules[0].limit.requests: must be between 1 and 2000000: at most 1000000 per second of period_seconds",
            ),
            (
                "burst 0",
                rule(json!({"requests": 10, "period_seconds": 60, "burst": 0})),
                "$.rules[0].limit.burst: must be between 1 and 5256000: a full bucket must refill within 31536000 seconds",
            ),
            (
                "a burst that would take more than 365 days to refill",
                rule(json!({"requests": 1, "period_seconds": 31_536_000, "burst": 2})),
                "$.rules[0].limit.burst: must be between 1 and 1: a full bucket must refill within 31536000 seconds",
            ),
            (
                "a tier's absurd period",
                json!({"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1},
                                  "tiers": {"pro": {"requests": 1, "period_seconds": u64::MAX}}}]}),
                "$.rules[0].tiers.pro.period_seconds: must be between 1 and 31536000",
            ),
            (
                "budget tokens 0",
                json!({"token_quotas": [{"name": "q", "budgets": [{"tokens": 0, "period_seconds": 60}]}]}),
                "$.token_quotas[0].budgets[0].tokens: must be between 1 and 60000000: at most 1000000 per second of period_seconds",
            ),
            (
                "budget period beyond 365 days",
                json!({"token_quotas": [{"name": "q", "budgets": [{"tokens": 10, "period_seconds": 40_000_000}]}]}),
                "$.token_quotas[0].budgets[0].period_seconds: must be between 1 and 31536000",
            ),
            (
                "default_max_tokens 0",
                quota(json!({"default_max_tokens": 0})),
                "$.token_quotas[0].default_max_tokens: must be between 1 and 1000000",
            ),
            (
                "absurd default_max_tokens",
                quota(json!({"default_max_tokens": 1_000_001})),
                "$.token_quotas[0].default_max_tokens: must be between 1 and 1000000",
            ),
            (
                "default_max_tokens no budget can ever hold",
                quota(json!({"default_max_tokens": 4096, "tiers": {"free": [{"tokens": 1000, "period_seconds": 60}]}})),
                "$.token_quotas[0].default_max_tokens: 4096 is more than the smallest budget (1000 tokens): every request that does not say max_tokens would be refused",
            ),
            (
                "max_keys 0",
                json!({"max_keys": 0, "rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}]}),
                "$.max_keys: must be between 16 and 10000000",
            ),
            (
                "when header that can never be present",
                json!({"rules": [{"name": "r", "when": {"headers": [{"name": "x beta"}]}, "limit": {"requests": 1, "period_seconds": 1}}]}),
                "$.rules[0].when.headers[0].name: header name \"x beta\" contains ' ', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "key header that can never be present",
                json!({"rules": [{"name": "r", "key": [{"header": "x\tteam"}], "limit": {"requests": 1, "period_seconds": 1}}]}),
                "$.rules[0].key[0].header: header name \"x\\tteam\" contains '\\t', which HTTP does not allow in a name (use letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                "duplicate rule and quota names",
                json!({"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}},
                                 {"name": "r", "limit": {"requests": 1, "period_seconds": 1}}],
                       "token_quotas": [{"name": "r", "budgets": [{"tokens": 10000, "period_seconds": 1}]}]}),
                "$.rules[1].name: duplicate name \"r\"; $.token_quotas[0].name: duplicate name \"r\"",
            ),
        ];
        for (name, config, want) in cases {
            assert_eq!(errors_of(&config), want, "case: {name}");
        }
    }

    #[test]
    fn dead_budgets_empty_tier_lists_and_bad_namespaces_are_refused() {
        let quota = |budgets: Value| json!({"token_quotas": [{"name": "q", "budgets": budgets}]});
        let cases = [
            (
                quota(json!([{"tokens": 100000, "period_seconds": 60}, {"tokens": 5000, "period_seconds": 60}])),
                "$.token_quotas[0].budgets[1].period_seconds: another budget ($.token_quotas[0].budgets[0]) has the same period: the smaller one always binds first, so the other never does; give one budget per period",
            ),
            (
                json!({"rules": [{"name": "r", "when": {"tiers": []}, "limit": {"requests": 1, "period_seconds": 1}}]}),
                "$.rules[0].when.tiers: an empty list would leave the rule to every value: omit the field, or list at least one",
            ),
            (
                json!({"metadata_namespace": "a b", "rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}]}),
                "$.metadata_namespace: \"a b\" is not a metadata namespace",
            ),
            (
                json!({"rules": [{"name": "r", "limit": {"requests": 1, "period_seconds": 1}}],
                       "token_quotas": [{"name": "r", "budgets": [{"tokens": 100000, "period_seconds": 60}]}]}),
                "$.token_quotas[0].name: duplicate name \"r\"",
            ),
        ];
        for (config, want) in cases {
            let got = errors_of(&config);
            assert!(got.starts_with(want), "want {want}\n got {got}");
        }
    }

    #[test]
    fn limits_at_the_bounds_are_accepted() {
        let c = Config::from_value(&json!({
            "rules": [
                {"name": "fast", "limit": {"requests": MAX_PER_SECOND, "period_seconds": 1, "burst": MAX_PER_SECOND * MAX_PERIOD_SECONDS}},
                {"name": "slow", "limit": {"requests": 1, "period_seconds": MAX_PERIOD_SECONDS, "burst": 1}}
            ],
            "token_quotas": [{"name": "q", "default_max_tokens": MAX_TOKENS,
                              "budgets": [{"tokens": MAX_TOKENS, "period_seconds": MAX_PERIOD_SECONDS}]}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.rules[0].limit.default.burst, MAX_PER_SECOND * MAX_PERIOD_SECONDS);
        assert_eq!(c.rules[1].limit.default.period_seconds, MAX_PERIOD_SECONDS);
        assert_eq!(c.quotas[0].default_max_tokens, MAX_TOKENS);
    }

    #[test]
    fn an_empty_configuration_is_refused() {
        assert_eq!(
            Config::from_bytes(b"{}").unwrap_err().to_string(),
            "$.rules: configure at least one rule or token quota"
        );
    }
}
