//! Arbitrary text as a number: canonicalisation must never panic, and its
//! result must be a fixed point.
#![no_main]

use keyline_proto::number::canonicalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(canon) = canonicalize(text) {
        assert_eq!(
            canonicalize(&canon).as_deref(),
            Ok(canon.as_str()),
            "canonicalisation is not idempotent"
        );
    }
});
