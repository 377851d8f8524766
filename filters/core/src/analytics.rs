//! What every filter reports about a request, in one vocabulary: labelled metric names that
//! Envoy's tag extraction turns into Prometheus labels, and how a response status becomes an
//! outcome. The filter-state keys the access log reads are in [`crate::contract::state`].
//!
//! A metric name carries its labels as `<name>;<label>=<value>;<label>=<value>`. The
//! `stats_config.stats_tags` in `envoy/gateway.yaml` hold one rule per label in [`LABELS`],
//! with the regex `(;<label>=([^;]*))`: Envoy removes the first group from the name and keeps
//! the second as the label's value, so `/stats/prometheus` shows
//! `portico_requests_total{route="chat",tier="free",...}`. Values are cleaned by
//! [`label_value`] so that they can never end a label early or start a new one.

/// Every label any Portico metric uses; each needs its tag rule in the Envoy bootstrap.
pub const LABELS: &[&str] = &[
    "route", "tier", "model", "backend", "variant", "outcome", "consumer", "kind", "rule", "status", "reason",
];

/// The `stats_tags` regex for `label`: the first group is cut from the name, the second is
/// the value.
pub fn tag_regex(label: &str) -> String {
    format!("(;{label}=([^;]*))")
}

/// Longest label value kept; longer ones are cut (model names and routes fit easily).
const MAX_VALUE: usize = 64;
/// What marks a value that had to be changed: `@h` and 16 hex digits of its SHA-256.
const HASH_MARK: &str = "@h";
const HASH_HEX: usize = 16;

fn kept(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@')
}

/// Whether `value` ends as a changed value does, with `@h` and 16 lower-case hex digits.
fn looks_hashed(value: &str) -> bool {
    let Some(at) = value.len().checked_sub(HASH_MARK.len() + HASH_HEX) else {
        return false;
    };
    value.get(at..).is_some_and(|tail| {
        tail.starts_with(HASH_MARK)
            && tail
                .bytes()
                .skip(HASH_MARK.len())
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A label value that is safe inside a metric name: letters, digits and `-_.:/@` kept, at
/// most 64 characters, and `none` for an empty value. A value that does not fit as it is
/// (another character, too long) has its other characters replaced by `_`, is cut, and gets
/// `@h` and a short hash of the original, so that two consumers (or models) whose names clean
/// to the same text still count in two series. A clean value that ends the way a changed one
/// does is treated as changed, so it cannot pose as one.
pub fn label_value(raw: &str) -> String {
    if raw.is_empty() {
        return "none".to_owned();
    }
    if raw.len() <= MAX_VALUE && raw.chars().all(kept) && !looks_hashed(raw) {
        return raw.to_owned();
    }
    let mut out: String = raw
        .chars()
        .take(MAX_VALUE - HASH_MARK.len() - HASH_HEX)
        .map(|c| if kept(c) { c } else { '_' })
        .collect();
    out.push_str(HASH_MARK);
    for b in hmac_sha256::Hash::hash(raw.as_bytes()).iter().take(HASH_HEX / 2) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `name;label=value;...` with every value cleaned.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(name.len() + labels.len() * 24);
    out.push_str(name);
    for (label, value) in labels {
        out.push(';');
        out.push_str(label);
        out.push('=');
        out.push_str(&label_value(value));
    }
    out
}

/// What happened to a request, from the status the client got (0: no response was sent, the
/// client or upstream went away first).
pub fn outcome(status: u32) -> &'static str {
    match status {
        0 => "cancelled",
        100..=399 => "success",
        401 | 403 => "denied",
        429 => "rate_limited",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names_carry_cleaned_labels() {
        assert_eq!(
            series("portico_requests_total", &[("route", "chat"), ("tier", "free")]),
            "portico_requests_total;route=chat;tier=free"
        );
        // A hostile value cannot add a label or break the name.
        let hostile = series("m", &[("model", "gpt;tier=admin x")]);
        assert!(hostile.starts_with("m;model=gpt_tier_admin_x@h"), "{hostile}");
        assert_eq!(hostile.matches(';').count(), 1, "{hostile}");
        assert_eq!(series("m", &[("tier", "")]), "m;tier=none");
        assert_eq!(label_value("claude-3.5-sonnet@2024/v1"), "claude-3.5-sonnet@2024/v1");
    }

    #[test]
    fn values_that_had_to_be_changed_get_a_hash_so_two_never_share_a_series() {
        let long = |tail: &str| format!("idp:{}{tail}", "x".repeat(80));
        let pairs = [
            ("idp:a b".to_owned(), "idp:a_b".to_owned()),
            ("idp:é".to_owned(), "idp:ü".to_owned()),
            (long("1"), long("2")),
            ("gpt;tier=admin x".to_owned(), "gpt_tier_admin_x".to_owned()),
        ];
        for (a, b) in pairs {
            let (la, lb) = (label_value(&a), label_value(&b));
            assert_ne!(la, lb, "{a} and {b}");
            assert!(la.len() <= 64 && lb.len() <= 64, "{la} {lb}");
            assert_eq!(la, label_value(&a), "stable");
        }
        let changed = label_value("idp:a b");
        assert!(
            changed.starts_with("idp:a_b@h") && changed.len() == "idp:a_b@h".len() + 16,
            "{changed}"
        );
        // A clean value shaped like a hashed one is hashed too, so it cannot pose as another.
        assert_ne!(label_value(&changed), changed);
        assert_eq!(label_value(&"x".repeat(500)).len(), 64);
        assert_eq!(label_value("apikey:demo"), "apikey:demo");
    }

    #[test]
    fn statuses_become_outcomes() {
        let cases = [
            (200, "success"),
            (304, "success"),
            (0, "cancelled"),
            (401, "denied"),
            (403, "denied"),
            (429, "rate_limited"),
            (400, "client_error"),
            (413, "client_error"),
            (500, "server_error"),
            (503, "server_error"),
        ];
        for (status, want) in cases {
            assert_eq!(outcome(status), want, "status {status}");
        }
    }

    #[test]
    fn every_label_is_one_word() {
        for label in LABELS {
            assert!(label.chars().all(|c| c.is_ascii_lowercase()), "{label}");
        }
    }
}
