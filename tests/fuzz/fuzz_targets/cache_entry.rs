//! Cache entries as read back from Envoy shared data (any worker, any earlier version may have
//! written the bytes), and upstream answers checked before they are stored. A decoded entry
//! encodes back to the same bytes, `peek` agrees with `decode`, and an entry stored is the
//! entry found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_cache::answer::{check_body, check_headers, Api};
use portico_cache::config::Limits;
use portico_cache::entry::Entry;
use portico_cache::store::{insert, lookup, Stored};
use portico_core::shared::MemoryStore;

const LIMITS: Limits = Limits {
    max_entries: 4,
    max_bytes: 1 << 20,
    max_entry_bytes: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let peeked = Entry::peek(data);
    if let Some(entry) = Entry::decode(data) {
        assert_eq!(entry.encode(), data, "a decoded entry encodes to other bytes");
        assert_eq!(peeked, Some((entry.key, entry.stored_at_ms, entry.expires_at_ms)));
        let store = MemoryStore::default();
        let now = entry.stored_at_ms;
        if insert(&store, &LIMITS, &entry.key, data, now) == (Stored::Stored { evicted: 0 }) {
            let found = lookup(&store, &LIMITS, &entry.key, now);
            assert_eq!(found.as_ref(), (now < entry.expires_at_ms).then_some(&entry));
        }
    }

    for api in ["/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/other"].map(Api::of_path) {
        let _ = check_body(api, data);
    }
    let (head, _) = data.split_at(data.len().min(64));
    let _ = check_headers(Some(head), None);
    let _ = check_headers(Some(b"application/json"), Some(head));
});
