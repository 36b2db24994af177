//! Everyday PBX features on the gateway, end to end with real processes:
//! feature codes for forwarding and do-not-disturb (checked through
//! `status --json`), forwarding on busy and on no answer, loops, pick-up,
//! short codes, and text messages kept until read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keyline_tests::{
    fails, idle, jnum, jstr, ok, registered, status, wait_for, wait_state, LoopbackOffice,
};
use serde_json::Value;

fn agent(office: &LoopbackOffice, name: &str) -> keyline_tests::Daemon {
    office.agent(name, &["--audio-in", "tone:440", "--audio-out", "null"])
}

#[test]
fn feature_codes_forwarding_pickup_short_codes_and_texts() {
    let office = LoopbackOffice::start("features", &["--ring-timeout", "2", "--no-voicemail"]);
    let a = agent(&office, "a");
    let b = agent(&office, "b");
    let mut c = agent(&office, "c");
    let d = agent(&office, "d");
    for (st, ext) in [(&a, "201"), (&b, "202"), (&c, "203"), (&d, "204")] {
        office.enrol(st, ext);
    }

    // *72N forwards every call; *73 clears it.
    assert!(ok(&b, &["dial", "*72203"]).contains("203"));
    assert_eq!(
        jstr(&status(&b), &["settings", "forward_always"]).as_deref(),
        Some("203")
    );
    ok(&a, &["dial", "202"]);
    wait_state(&c, "alerting");
    assert_eq!(jstr(&status(&c), &["call", "peer"]).as_deref(), Some("201"));
    assert!(status(&b)["call"].is_null(), "202 must not ring");
    ok(&c, &["hangup"]);
    idle(&a);
    ok(&b, &["dial", "*73"]);
    assert!(status(&b)["settings"]["forward_always"].is_null());

    // A forwarding loop ends with a clear error.
    ok(&b, &["dial", "*72203"]);
    ok(&c, &["dial", "*72202"]);
    assert!(fails(&a, &["dial", "202"]).contains("forwarding loop"));
    ok(&b, &["dial", "*73"]);
    ok(&c, &["dial", "*73"]);

    // *78 do-not-disturb answers busy; *79 clears it.
    ok(&b, &["dial", "*78"]);
    assert_eq!(status(&b)["settings"]["dnd"], Value::Bool(true));
    assert!(fails(&a, &["dial", "202"]).contains("do not disturb"));
    ok(&b, &["dial", "*79"]);
    assert_eq!(status(&b)["settings"]["dnd"], Value::Bool(false));

    // *90N forwards while busy.
    ok(&b, &["dial", "*90203"]);
    ok(&d, &["dial", "202"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&d, "connected");
    ok(&a, &["dial", "202"]);
    wait_state(&c, "alerting");
    ok(&a, &["hangup"]);
    idle(&c);
    ok(&d, &["hangup"]);
    idle(&b);
    ok(&b, &["dial", "*91"]);
    assert!(status(&b)["settings"]["forward_busy"].is_null());

    // *52N forwards when nobody answers (ring timeout 2 s here).
    ok(&b, &["dial", "*52203"]);
    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    let last_b = idle(&b);
    assert_eq!(jstr(&last_b, &["ended"]).as_deref(), Some("forwarded"));
    wait_state(&c, "alerting");
    assert_eq!(jstr(&status(&a), &["call", "peer"]).as_deref(), Some("203"));
    ok(&c, &["answer"]);
    wait_state(&a, "connected");
    ok(&a, &["hangup"]);
    idle(&c);
    ok(&b, &["dial", "*53"]);

    // *8 picks up a call ringing elsewhere.
    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    assert!(ok(&d, &["dial", "*8"]).contains("picked up the call from 201"));
    wait_state(&d, "connected");
    wait_state(&a, "connected");
    assert_eq!(
        jstr(&idle(&b), &["ended"]).as_deref(),
        Some("answered-elsewhere")
    );
    ok(&d, &["hangup"]);
    idle(&a);
    assert!(fails(&d, &["dial", "*8"]).contains("unreachable"));

    // Short codes, managed on the gateway.
    ok(&office.gw, &["speed-dial", "set", "*1", "203"]);
    ok(&office.gw, &["speed-dial", "set", "**42", "202"]);
    let list = office.gw.json(&["speed-dial", "list"]).unwrap();
    assert_eq!(list["speed_dials"].as_array().unwrap().len(), 2, "{list}");
    ok(&a, &["dial", "*1"]);
    wait_state(&c, "alerting");
    ok(&a, &["hangup"]);
    idle(&c);
    ok(&office.gw, &["speed-dial", "rm", "*1"]);
    assert!(fails(&a, &["dial", "*1"]).contains("unknown"));
    assert!(fails(&office.gw, &["speed-dial", "set", "*x", "203"]).contains("short code"));
    assert!(fails(&a, &["dial", "*55"]).contains("unknown feature"));

    // Texts: delivered at once when online, kept until read, and delivered
    // later to a station that was off.
    ok(&a, &["message", "202", "lunch", "at", "noon?"]);
    wait_for("text", Duration::from_secs(5), || {
        (jnum(&status(&b), &["messages_waiting"])? == 1.0).then_some(())
    });
    let msgs = b.json(&["messages"]).unwrap();
    assert_eq!(msgs["messages"][0]["body"], "lunch at noon?");
    assert_eq!(msgs["messages"][0]["from"], "201");
    assert_eq!(jnum(&status(&b), &["messages_waiting"]), Some(0.0));
    assert!(fails(&a, &["message", "299", "hello?"]).contains("unknown number"));

    assert!(c.stop());
    ok(&a, &["message", "203", "call me back"]);
    let c2 = agent(&office, "c");
    registered(&c2, "203");
    wait_for("late text", Duration::from_secs(5), || {
        (jnum(&status(&c2), &["messages_waiting"])? == 1.0).then_some(())
    });
    let msgs = c2.json(&["messages"]).unwrap();
    assert_eq!(msgs["messages"][0]["body"], "call me back");
    // Read means gone: a restart does not bring it back.
    drop(c2);
    let c3 = agent(&office, "c");
    registered(&c3, "203");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(jnum(&status(&c3), &["messages_waiting"]), Some(0.0));
}
