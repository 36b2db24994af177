//! Arbitrary text as a configuration file, for the gateway
//! (`keyline_gatewayd::config::Config::parse`, what `check-config` and
//! start-up read) and the directory (`keyline_directory::config::Config::
//! parse`). The agent has no configuration file (flags only). Either the
//! file is taken, and everything derived from it can be computed, or the
//! error says what is wrong; never a panic. The gateway's error for a TOML
//! mistake is one line naming where it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    match keyline_gatewayd::config::Config::parse(&text) {
        Ok(cfg) => {
            let call = cfg.call_config(cfg.extension_range);
            assert!(call.extension_range.0 <= call.extension_range.1);
            let _ = cfg.ring_timeout();
        }
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(!msg.trim().is_empty(), "an empty error");
            assert!(
                !msg.contains('\n'),
                "a gateway error on several lines: {msg}"
            );
        }
    }

    match keyline_directory::config::Config::parse(&text) {
        Ok(cfg) => {
            let _ = cfg.routing();
            let _ = cfg.limits();
            let _ = cfg.login_deadline();
            let _ = cfg.session_ttl();
            let _ = cfg.web.listen_addr(cfg.listen);
            let _ = cfg.web.hold_numbers();
        }
        Err(e) => {
            assert!(!format!("{e:#}").trim().is_empty(), "an empty error");
        }
    }
});
