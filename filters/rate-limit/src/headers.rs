//! Rate-limit response headers.
//!
//! `RateLimit-Policy` and `RateLimit` follow draft-ietf-httpapi-ratelimit-headers-09: each is a
//! Structured Fields list with one item per policy, a string naming it, and parameters `q`
//! (quota), `w` (window, seconds) and `qu` (quota unit) for the policy, `r` (remaining) and
//! `t` (seconds until the quota is fully restored) for its state. The `X-RateLimit-*` trio
//! (and `X-RateLimit-*-Tokens` for token budgets, as OpenAI sends them) describe the most
//! restrictive policy, for the many clients that read those.

/// The state of one policy after this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub name: String,
    pub quota: u64,
    pub window_seconds: u64,
    pub tokens: bool,
    pub remaining: u64,
    pub reset_seconds: u64,
}

/// Every header for `policies`; `x_headers` adds the legacy trio.
pub fn render(policies: &[PolicyState], x_headers: bool) -> Vec<(&'static str, String)> {
    if policies.is_empty() {
        return Vec::new();
    }
    let unit = |p: &PolicyState| if p.tokens { ";qu=\"tokens\"" } else { "" };
    let policy = policies
        .iter()
        .map(|p| format!("\"{}\";q={};w={}{}", p.name, p.quota, p.window_seconds, unit(p)))
        .collect::<Vec<_>>()
        .join(", ");
    let state = policies
        .iter()
        .map(|p| format!("\"{}\";r={};t={}", p.name, p.remaining, p.reset_seconds))
        .collect::<Vec<_>>()
        .join(", ");
    let mut headers = vec![("ratelimit-policy", policy), ("ratelimit", state)];
    if x_headers {
        let tightest = |tokens: bool| {
            policies
                .iter()
                .filter(|p| p.tokens == tokens)
                .min_by_key(|p| p.remaining)
        };
        if let Some(p) = tightest(false) {
            headers.push(("x-ratelimit-limit", p.quota.to_string()));
            headers.push(("x-ratelimit-remaining", p.remaining.to_string()));
            headers.push(("x-ratelimit-reset", p.reset_seconds.to_string()));
        }
        if let Some(p) = tightest(true) {
            headers.push(("x-ratelimit-limit-tokens", p.quota.to_string()));
            headers.push(("x-ratelimit-remaining-tokens", p.remaining.to_string()));
            headers.push(("x-ratelimit-reset-tokens", format!("{}s", p.reset_seconds)));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, quota: u64, remaining: u64, tokens: bool) -> PolicyState {
        PolicyState {
            name: name.into(),
            quota,
            window_seconds: 60,
            tokens,
            remaining,
            reset_seconds: 3,
        }
    }

    #[test]
    fn draft_headers_list_every_policy() {
        let h = render(
            &[p("per_consumer", 100, 99, false), p("llm_60s", 1000, 400, true)],
            false,
        );
        assert_eq!(
            h,
            vec![
                (
                    "ratelimit-policy",
                    "\"per_consumer\";q=100;w=60, \"llm_60s\";q=1000;w=60;qu=\"tokens\"".to_owned()
                ),
                (
                    "ratelimit",
                    "\"per_consumer\";r=99;t=3, \"llm_60s\";r=400;t=3".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn legacy_headers_show_the_tightest_policy() {
        let h = render(&[p("a", 100, 50, false), p("b", 10, 2, false)], true);
        assert!(h.contains(&("x-ratelimit-limit", "10".to_owned())));
        assert!(h.contains(&("x-ratelimit-remaining", "2".to_owned())));
        assert!(h.contains(&("x-ratelimit-reset", "3".to_owned())));
    }

    #[test]
    fn no_policy_no_headers() {
        assert!(render(&[], true).is_empty());
    }
}
