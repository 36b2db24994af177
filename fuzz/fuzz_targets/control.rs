//! Arbitrary bytes on a control socket, taken as `keyline_net::control`
//! takes them (lines of UTF-8, each at most 64 KiB, each a JSON value) and
//! then as each daemon reads a request: the gateway's typed
//! `api::parse_request` and the agent's (`keyline_agent::api`, shared by
//! the office station and the internet terminal; its call requests then
//! as the phone core's commands) and the directory's
//! (`keyline_directory::api`). Also as the gateway's and the directory's
//! events, which `keyline-gatewayd events` and `keyline-directory events`
//! read back from the socket. Never a panic; a request or event that parses must
//! come out the same after being written as JSON and parsed again.
#![no_main]

use keyline_gatewayd::api::{parse_request, Event};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// `keyline_net::control`'s limit on a request line.
const MAX_LINE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        // The socket stops at the first line that is not UTF-8.
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_LINE {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };

        if let Ok(req) = parse_request(v.clone()) {
            let json = serde_json::to_value(&req).expect("a request encodes");
            let again = parse_request(json.clone());
            assert_eq!(
                again.as_ref(),
                Ok(&req),
                "a request changed on the way back: {json}"
            );
        }

        if let Ok(req) = keyline_agent::api::parse_request(v.clone()) {
            let _ = req.call_command();
            let json = serde_json::to_value(&req).expect("an agent request encodes");
            let again = keyline_agent::api::parse_request(json.clone());
            assert_eq!(
                again.as_ref(),
                Ok(&req),
                "an agent request changed on the way back: {json}"
            );
        }

        if let Ok(req) = keyline_directory::api::parse_request(v.clone()) {
            let json = serde_json::to_value(&req).expect("a directory request encodes");
            let again = keyline_directory::api::parse_request(json.clone());
            assert_eq!(
                again.as_ref(),
                Ok(&req),
                "a directory request changed on the way back: {json}"
            );
        }

        if let Ok(ev) = serde_json::from_value::<keyline_directory::api::Event>(v.clone()) {
            let _ = ev.describe();
            let json = serde_json::to_value(&ev).expect("a directory event encodes");
            let again: keyline_directory::api::Event =
                serde_json::from_value(json.clone()).expect("a directory event decodes");
            assert_eq!(
                again, ev,
                "a directory event changed on the way back: {json}"
            );
        }

        if let Ok(ev) = serde_json::from_value::<Event>(v) {
            let _ = ev.describe();
            let json = serde_json::to_value(&ev).expect("an event encodes");
            let again: Event = serde_json::from_value(json.clone()).expect("an event decodes");
            assert_eq!(again, ev, "an event changed on the way back: {json}");
        }
    }
});
