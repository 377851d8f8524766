//! The cache filter's configuration parser (also `portico check`'s), and the request after the
//! NUL byte judged and keyed with every configuration it accepts. A body's canonical JSON, the
//! key's input, is JSON that reads back to the same value and the same canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_cache::config::Config;
use portico_cache::key::{compute, Body, Parts};
use portico_cache::policy::{directive, judge, opted_in};
use portico_core::request::RequestSource;
use portico_fuzz::{check_config_errors, config_and_request};

fuzz_target!(|data: &[u8]| {
    let (config, (view, body)) = config_and_request(data);
    let config = match Config::from_bytes(config) {
        Ok(config) => config,
        Err(errors) => return check_config_errors(&errors),
    };
    let Ok(parsed) = Body::parse(body) else {
        return;
    };
    let canonical = parsed.canonical();
    if !canonical.is_empty() {
        let again = Body::parse(&canonical).expect("canonical JSON reads back");
        assert_eq!(again, parsed, "canonical JSON reads back to another body");
        assert_eq!(again.canonical(), canonical, "canonical JSON is not a fixed point");
    }
    let Some(found) = config.routes.find(&view) else {
        return;
    };
    let rule = found.rule;
    let asked = directive(view.header_str("cache-control"), view.header_str("pragma"));
    judge(rule, asked, opted_in(view.header(&rule.opt_in_header)), &parsed);
    let vary = rule
        .vary
        .iter()
        .map(|name| (name.as_str(), view.header(name).unwrap_or_default()))
        .collect();
    let parts = Parts {
        scope_kind: rule.scope.as_str(),
        scope: view.header_str("x-portico-consumer").unwrap_or(""),
        method: view.method(),
        path: view.path_and_query(),
        backend: view.header_str(&config.backend_header).unwrap_or(""),
        vary,
    };
    assert_eq!(
        compute(&parts, &parsed),
        compute(&parts, &Body::parse(body).expect("parsed once"))
    );
});
