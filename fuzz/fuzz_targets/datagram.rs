//! Arbitrary bytes as a media datagram: decoding must never panic, and
//! whatever decodes must re-encode and decode to the same flow, header and
//! payload.
#![no_main]

use keyline_proto::media::{decode_datagram, encode_datagram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = decode_datagram(data) {
        let mut out = Vec::new();
        if encode_datagram(d.flow, &d.header, d.payload, &mut out).is_ok() {
            let again = decode_datagram(&out);
            assert_eq!(again, Ok(d), "re-encoded datagram decodes differently");
        }
    }
});
