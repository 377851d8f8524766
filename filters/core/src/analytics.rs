//! What every filter reports about a request, in one vocabulary: labelled metric names that
//! Envoy's tag extraction turns into Prometheus labels, the filter-state keys the access log
//! reads, and how a response status becomes an outcome.
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

/// Filter-state keys (`set_property`), read by the access log as
/// `%FILTER_STATE(wasm.<key>:PLAIN)%` and by later filters with `get_property`.
pub mod state {
    /// Set by auth: the authenticated consumer and tier.
    pub const CONSUMER: &str = "portico_consumer";
    pub const TIER: &str = "portico_tier";
    /// Set by header-routing: the route name, A/B variant, backend and upstream model.
    pub const ROUTE: &str = "portico_route";
    pub const VARIANT: &str = "portico_variant";
    pub const BACKEND: &str = "portico_backend";
    pub const MODEL: &str = "portico_model";
    /// Set by rate-limit when a model response reports usage.
    pub const PROMPT_TOKENS: &str = "portico_prompt_tokens";
    pub const COMPLETION_TOKENS: &str = "portico_completion_tokens";
    /// Set by rate-limit on requests a token quota reserved for: the output tokens it reserved
    /// (the client's `max_tokens`, else the quota's default). body-transform asks a backend
    /// that requires `max_tokens` for this many when the client named none, so the request
    /// never asks for more than was reserved.
    pub const MAX_OUTPUT_TOKENS: &str = "portico_max_output_tokens";
    /// Set by body-transform on every answer it translates from a backend's success (a
    /// complete body or a stream, including one it had to refuse as a bad answer): the usage
    /// the backend itself reported, which the translation may have hidden (an OpenAI client
    /// that did not ask for stream usage, a 502 in place of the answer) or had to fill in (an
    /// Anthropic client always gets a count). rate-limit settles from it; see
    /// [`BackendUsage`].
    pub const BACKEND_USAGE: &str = "portico_backend_usage";
    /// Set by body-transform when a backend's answer could not be translated (the client got
    /// a 502 `bad_upstream_response`, or an error in place of the body or at the end of the
    /// stream): the cache must not store what it saw of that answer.
    pub const BAD_UPSTREAM: &str = "portico_bad_upstream";
    /// Set by cache: HIT, MISS or BYPASS.
    pub const CACHE: &str = "portico_cache";
    /// Set by a filter that changes the path across APIs (translation, a rewrite): the API
    /// the client speaks (`openai`, `anthropic`), which Envoy's `local_reply_config` reads to
    /// answer its own errors in the client's format.
    pub const CLIENT_API: &str = "portico_client_api";
}

/// What a backend reported about its usage, as body-transform publishes it in
/// [`state::BACKEND_USAGE`]: `<prompt> <completion>`, or `unknown` when the backend's answer
/// carried no final count (no usage object, a stream cut before its last usage, usage that is
/// not a count). Unknown is not zero: the backend may have done the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendUsage {
    Reported { prompt: u64, completion: u64 },
    Unknown,
}

impl BackendUsage {
    pub fn encode(self) -> String {
        match self {
            BackendUsage::Reported { prompt, completion } => format!("{prompt} {completion}"),
            BackendUsage::Unknown => "unknown".to_owned(),
        }
    }

    /// Reads the property's value; anything malformed is unknown.
    pub fn decode(raw: &[u8]) -> BackendUsage {
        let text = std::str::from_utf8(raw).unwrap_or_default();
        let mut parts = text.split(' ').map(str::parse::<u64>);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(prompt)), Some(Ok(completion)), None) => BackendUsage::Reported { prompt, completion },
            _ => BackendUsage::Unknown,
        }
    }
}

/// The response header the cache sets, which rate-limit reads to release a hit's token
/// reservation.
pub const CACHE_HEADER: &str = "x-portico-cache";

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
    fn backend_usage_round_trips_and_anything_else_is_unknown() {
        for usage in [
            BackendUsage::Reported {
                prompt: 3,
                completion: 0,
            },
            BackendUsage::Reported {
                prompt: u64::MAX,
                completion: u64::MAX,
            },
            BackendUsage::Unknown,
        ] {
            assert_eq!(BackendUsage::decode(usage.encode().as_bytes()), usage);
        }
        for raw in [&b""[..], b"3", b"3 4 5", b"-1 2", b"a b", b"\xff", b"3  4"] {
            assert_eq!(BackendUsage::decode(raw), BackendUsage::Unknown, "{raw:?}");
        }
    }

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
