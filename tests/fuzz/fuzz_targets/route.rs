//! Route matching (`portico_core::route`), which every filter runs on every request: rules
//! from configuration (first line, a JSON array of `match` objects), a request after it. The
//! rule found must accept the request on its own, and a one-rule matcher must agree with its
//! own captures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_core::config::{Errors, Node};
use portico_core::request::RequestSource;
use portico_core::route::{Matcher, RouteMatch, RouteTable};
use portico_fuzz::request;

fuzz_target!(|data: &[u8]| {
    let (rules, rest) = data.split_at(data.iter().position(|b| *b == b'\n').unwrap_or(data.len()));
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(rules) else {
        return;
    };
    let (view, _) = request(rest.get(1..).unwrap_or_default());
    let mut errors = Errors::default();
    let matches: Vec<RouteMatch> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| RouteMatch::parse(&Node::new(format!("$[{i}]"), item), &mut errors))
        .collect();
    let table = RouteTable::build(
        matches.iter().cloned().enumerate().map(|(i, m)| (m, i)).collect(),
        |i| format!("$[{i}]"),
        &mut errors,
    );
    assert!(errors.list().iter().all(|e| e.path.starts_with("$[")));
    let alone: Vec<Matcher> = matches
        .iter()
        .map(|m| Matcher::new(m.clone(), "$", &mut Errors::default()))
        .collect();
    for matcher in &alone {
        assert_eq!(matcher.matches(&view), matcher.capture(&view).is_some());
    }
    if let Some(found) = table.find(&view) {
        let m = &matches[*found.rule];
        assert_eq!(found.pattern, m.path.as_deref());
        assert!(m.methods.is_empty() || m.methods.iter().any(|x| x == view.method()));
        assert!(m.hosts.is_empty() || m.hosts.contains(&view.host()));
        assert!(
            alone[*found.rule].matches(&view),
            "the table chose a rule that does not match alone"
        );
    }
});
