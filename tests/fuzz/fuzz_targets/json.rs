//! `portico_core::json::parse`, the strict reader of model-route bodies: it must read every
//! body without a repeated key exactly as serde_json does, and refuse the rest (a number out of
//! range only where serde_json refuses it too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_core::json::{parse, Invalid};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let loose = serde_json::from_slice::<Value>(data);
    match (parse(data), loose) {
        (Ok(strict), Ok(loose)) => assert_eq!(strict, loose, "the strict reader read another value"),
        (Ok(strict), Err(e)) => panic!("serde_json refuses ({e}) what the strict reader read: {strict}"),
        (Err(Invalid::Malformed), Ok(loose)) => panic!("refused as malformed, serde_json read {loose}"),
        (Err(Invalid::Malformed), Err(_)) => {}
        (Err(Invalid::DuplicateKey(path)), _) => {
            assert!(path.starts_with('$'), "{path:?}");
            let response = Invalid::DuplicateKey(path).content_refusal();
            assert!(response.is_some_and(|r| r.status == 400 && r.code == "duplicate_json_key"));
        }
        (Err(Invalid::NumberOutOfRange(path)), Ok(loose)) => {
            panic!("refused a number at {path} as out of range, serde_json read {loose}")
        }
        (Err(Invalid::NumberOutOfRange(path)), Err(_)) => {
            assert!(path.starts_with('$'), "{path:?}");
            let response = Invalid::NumberOutOfRange(path).content_refusal();
            assert!(response.is_some_and(|r| r.status == 400 && r.code == "number_out_of_range"));
        }
    }
});
