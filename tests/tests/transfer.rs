//! Keyphone hand-off inside the office (claim 5): a blind transfer to an
//! extension re-bridges the other party to the target; busy, unknown and
//! unanswered targets give the call back; `##N` in a call does the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keyline_tests::{
    fails, idle, jnum, jstr, ok, status, wait_for, wait_state, Daemon, LoopbackOffice,
};
use serde_json::Value;

fn connect(from: &Daemon, to: &Daemon, ext: &str) {
    ok(from, &["dial", ext]);
    wait_state(to, "alerting");
    ok(to, &["answer"]);
    wait_state(from, "connected");
    wait_state(to, "connected");
}

/// Media keeps arriving at `d` (ten more frames, allowing a loaded
/// machine a few seconds).
fn media_flows(d: &Daemon) {
    let n = |d: &Daemon| jnum(&status(d), &["call", "media", "received"]).unwrap_or(0.0);
    let before = n(d);
    wait_for("media to keep arriving", Duration::from_secs(5), || {
        (n(d) > before + 10.0).then_some(())
    });
}

#[test]
fn blind_transfer_and_calls_that_come_back() {
    let office = LoopbackOffice::start("transfer", &["--ring-timeout", "2"]);
    let gw = &office.gw;
    let agent =
        |name: &str, tone: &str| office.agent(name, &["--audio-in", tone, "--audio-out", "null"]);
    let a = agent("a", "tone:600");
    let b = agent("b", "tone:900");
    let c = agent("c", "tone:1200");
    let d = agent("d", "tone:1500");
    for (st, ext) in [(&a, "201"), (&b, "202"), (&c, "203"), (&d, "204")] {
        office.enrol(st, ext);
    }

    // 201 calls 202; 202 hands 201 on to 203.
    connect(&a, &b, "202");
    assert!(ok(&b, &["transfer", "203"]).contains("transferring to 203"));
    wait_state(&c, "alerting");
    assert_eq!(jstr(&status(&c), &["call", "peer"]).as_deref(), Some("201"));
    assert_eq!(status(&a)["call"]["held_by_peer"], Value::Bool(true));
    ok(&c, &["answer"]);
    assert_eq!(jstr(&idle(&b), &["ended"]).as_deref(), Some("transferred"));
    wait_state(&a, "connected");
    assert_eq!(jstr(&status(&a), &["call", "peer"]).as_deref(), Some("203"));
    wait_state(&c, "connected");
    media_flows(&a);
    media_flows(&c);
    ok(&a, &["hangup"]);
    idle(&c);

    // Busy target: the call stays with 202, media untouched.
    connect(&a, &b, "202");
    connect(&c, &d, "204");
    assert!(fails(&b, &["transfer", "203"]).contains("busy"));
    assert_eq!(
        jstr(&status(&b), &["call", "state"]).as_deref(),
        Some("connected")
    );
    media_flows(&a);
    // Unknown target.
    assert!(fails(&b, &["transfer", "299"]).contains("unknown number"));
    media_flows(&a);
    ok(&c, &["hangup"]);
    idle(&d);

    // Unanswered target (ring timeout 2 s): back to 202.
    ok(&b, &["transfer", "204"]);
    wait_state(&d, "alerting");
    assert_eq!(jstr(&idle(&d), &["ended"]).as_deref(), Some("no-answer"));
    wait_state(&b, "connected");
    wait_for("201 off hold", Duration::from_secs(3), || {
        (status(&a)["call"]["held_by_peer"] == Value::Bool(false)).then_some(())
    });
    media_flows(&a);
    media_flows(&b);

    // ##N during a call transfers too.
    assert!(ok(&b, &["dial", "##203"]).contains("transferring to 203"));
    wait_state(&c, "alerting");
    ok(&c, &["answer"]);
    idle(&b);
    wait_state(&a, "connected");
    media_flows(&a);
    ok(&c, &["hangup"]);
    idle(&a);

    // Attended: 202 consults 203 first, then joins 201 to it.
    connect(&a, &b, "202");
    assert!(ok(&b, &["transfer", "--consult", "203"]).contains("consulting 203"));
    wait_state(&c, "alerting");
    assert_eq!(jstr(&status(&c), &["call", "peer"]).as_deref(), Some("202"));
    wait_for("201 held", Duration::from_secs(3), || {
        (status(&a)["call"]["held_by_peer"] == Value::Bool(true)).then_some(())
    });
    ok(&c, &["answer"]);
    wait_for("consultation up", Duration::from_secs(5), || {
        (jstr(&status(&b), &["consult", "state"])? == "connected").then_some(())
    });
    media_flows(&c);
    assert!(ok(&b, &["transfer", "--complete"]).contains("201 is now talking to 203"));
    assert_eq!(jstr(&idle(&b), &["ended"]).as_deref(), Some("transferred"));
    wait_for("201 with 203", Duration::from_secs(5), || {
        let s = status(&a);
        (jstr(&s, &["call", "peer"])? == "203" && jstr(&s, &["call", "state"])? == "connected")
            .then_some(())
    });
    wait_for("203 with 201", Duration::from_secs(5), || {
        let s = status(&c);
        (jstr(&s, &["call", "peer"])? == "201" && jstr(&s, &["call", "state"])? == "connected")
            .then_some(())
    });
    media_flows(&a);
    media_flows(&c);
    ok(&a, &["hangup"]);
    idle(&c);

    // Consult with *2N in the call, then cancel: back to 201.
    connect(&a, &b, "202");
    ok(&b, &["dial", "*2203"]);
    wait_state(&c, "alerting");
    ok(&c, &["answer"]);
    wait_for("consultation up", Duration::from_secs(5), || {
        (jstr(&status(&b), &["consult", "state"])? == "connected").then_some(())
    });
    ok(&b, &["transfer", "--cancel"]);
    idle(&c);
    wait_for("201 off hold", Duration::from_secs(3), || {
        (status(&a)["call"]["held_by_peer"] == Value::Bool(false)).then_some(())
    });
    media_flows(&a);
    media_flows(&b);

    // The held party hangs up during a consultation: it becomes the call.
    ok(&b, &["transfer", "--consult", "203"]);
    wait_state(&c, "alerting");
    ok(&c, &["answer"]);
    wait_for("consultation up", Duration::from_secs(5), || {
        (jstr(&status(&b), &["consult", "state"])? == "connected").then_some(())
    });
    ok(&a, &["hangup"]);
    wait_for(
        "the consultation is the call",
        Duration::from_secs(5),
        || {
            let s = status(&b);
            (jstr(&s, &["call", "peer"])? == "203" && s["consult"].is_null()).then_some(())
        },
    );
    media_flows(&b);
    ok(&b, &["hangup"]);
    idle(&c);

    // The records: each leg once.
    let cdr = gw.json(&["cdr"]).unwrap();
    let rows = cdr["cdr"].as_array().unwrap();
    let pairs: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["caller"].as_str().unwrap().to_string(),
                r["callee"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        pairs.contains(&("201".into(), "203".into(), "answered".into())),
        "{cdr}"
    );
    assert!(
        pairs.contains(&("201".into(), "204".into(), "no-answer".into())),
        "{cdr}"
    );
}
