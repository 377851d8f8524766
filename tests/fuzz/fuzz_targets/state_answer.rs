//! portico-state's answers as the filters read them (`portico_core::state_api`): whatever
//! bytes arrive, every reader returns a value or an error, and a reservation answer read
//! twice reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_core::state_api::{decode_settle, Admission, Lease};

fuzz_target!(|data: &[u8]| {
    let reserve = Admission::decode_reserve(data);
    assert_eq!(reserve, Admission::decode_reserve(data));
    if let Ok(a) = &reserve {
        // Each status is a length-delimited field of at least its two-byte header.
        assert!(a.statuses.len() * 2 <= data.len());
    }
    let _ = Admission::decode_hit(data);
    let _ = Lease::decode(data);
    if let Ok(found) = decode_settle(data) {
        // One byte at least per flag, packed or not.
        assert!(found.len() <= data.len());
    }
});
