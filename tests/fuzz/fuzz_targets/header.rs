//! The header name and value validator (`portico_core::header`) that every filter runs on
//! the headers its configuration will write: what it accepts can never split or break a
//! message, and the JSON readers agree with the plain checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_core::config::{Errors, Node};
use portico_core::header::{name_problem, value_problem, write_problem, Writer};

const TCHAR: &str = "!#$%&'*+-.^_`|~";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if name_problem(text).is_none() {
        let token = text.strip_prefix(':').unwrap_or(text);
        assert!(!token.is_empty());
        assert!(
            token.chars().all(|c| c.is_ascii_alphanumeric() || TCHAR.contains(c)),
            "{text:?}"
        );
    }
    for writer in [Writer::Operation, Writer::Portico] {
        if write_problem(text, writer).is_none() {
            let lower = text.to_ascii_lowercase();
            assert!(name_problem(text).is_none(), "{text:?}");
            assert!(!lower.starts_with(':') && lower != "host", "{text:?}");
            assert!(!["content-length", "transfer-encoding", "connection"].contains(&lower.as_str()));
            assert!(
                writer == Writer::Portico || !lower.starts_with("x-portico-"),
                "{text:?}"
            );
        }
    }
    if value_problem(text).is_none() {
        assert!(!text.contains(['\r', '\n', '\0']), "{text:?} accepted as a value");
    }

    let value = serde_json::Value::String(text.to_owned());
    let node = Node::new("$.h".to_owned(), &value);
    let mut errors = Errors::default();
    let name = node.header_name(&mut errors);
    assert_eq!(name.is_some(), name_problem(text).is_none() && !text.is_empty());
    assert_eq!(name, name.as_ref().map(|n| n.to_ascii_lowercase()));
    let written = node.writable_header_name(Writer::Operation, &mut errors);
    assert_eq!(
        written.is_some(),
        write_problem(text, Writer::Operation).is_none() && !text.is_empty()
    );
    let header_value = node.header_value(&mut errors);
    assert_eq!(header_value.as_deref(), value_problem(text).is_none().then_some(text));
    assert!(errors.list().iter().all(|e| e.path == "$.h"));
});
