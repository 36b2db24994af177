//! Ring groups with extensions of their own, and the extension range set
//! on the gateway, end to end with a real gateway and real stations on
//! loopback: `ring-group add` refuses an unknown member, a station's
//! extension, one outside the range and an empty name; a call from 201 to
//! the hunt group 600 (members 202, 203) rings 202 alone, then 203 after
//! the step, and 203 answers; as ring-all it rings both; the group and the
//! range survive a restart; `extension-range set` refuses a range that
//! would leave a station or a group outside (naming them, nothing saved)
//! and a newly approved station gets an extension in the new range.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keyline_tests::{
    bin, call_state, fails, idle, jstr, ok, registered, status, wait_for, wait_state, Daemon,
    LoopbackOffice,
};

fn agent(office: &LoopbackOffice, name: &str) -> Daemon {
    office.agent(name, &["--audio-in", "tone:440", "--audio-out", "null"])
}

/// Stop the gateway and start it again on the same state and address.
fn restart(office: &mut LoopbackOffice, extra: &[&str]) {
    assert!(office.gw.stop(), "the gateway stops cleanly");
    let listen = office.listen.clone();
    let mut args = vec!["run", "--no-mdns", "--listen", listen.as_str()];
    args.extend_from_slice(extra);
    office.gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &office.gw.state.clone(),
        &args,
    )
    .expect("start the gateway again");
    wait_for("the gateway again", Duration::from_secs(10), || {
        office.gw.json(&["status"]).ok()
    });
}

#[test]
fn ring_groups_with_their_own_extension_ring_in_turn_or_all_at_once() {
    let run = ["--ring-timeout", "20", "--no-voicemail"];
    let mut office = LoopbackOffice::start("ring-groups", &run);
    let a = agent(&office, "a");
    let b = agent(&office, "b");
    let c = agent(&office, "c");
    for (st, ext) in [(&a, "201"), (&b, "202"), (&c, "203")] {
        office.enrol(st, ext);
    }
    let gw = &office.gw;

    // 600 is outside the configuration file's range (201-499) until the
    // range is widened here.
    let e = fails(gw, &["ring-group", "add", "600", "--name", "Sales", "202"]);
    assert!(e.contains("outside the extension range 201-499"), "{e}");
    assert!(ok(gw, &["extension-range", "set", "201", "699"]).contains("201-699 (set here)"));
    // Bad groups are refused with the field they are about, and nothing
    // is stored.
    let e = fails(
        gw,
        &["ring-group", "add", "600", "--name", "Sales", "202", "299"],
    );
    assert!(e.contains("Members: 299 is not an extension here"), "{e}");
    let e = fails(gw, &["ring-group", "add", "202", "--name", "Desk", "203"]);
    assert!(e.contains("Extension: 202 is taken by a station"), "{e}");
    let e = fails(gw, &["ring-group", "add", "600", "--name", " ", "202"]);
    assert!(e.contains("Name: a ring group needs a name"), "{e}");
    let e = fails(gw, &["ring-group", "add", "6x0", "--name", "Sales", "202"]);
    assert!(e.contains("not a valid extension"), "{e}");
    let groups = gw.json(&["ring-group", "list"]).unwrap();
    assert_eq!(groups["ring_groups"], serde_json::json!([]), "{groups}");

    let step = 2;
    ok(
        gw,
        &[
            "ring-group",
            "add",
            "600",
            "--name",
            "Sales",
            "--hunt",
            "--step",
            "2",
            "202",
            "203",
        ],
    );
    let e = fails(gw, &["ring-group", "add", "600", "--name", "Other", "203"]);
    assert!(
        e.contains("Extension: 600 is taken by the ring group Sales"),
        "{e}"
    );
    // `status` shows it at once.
    let st = gw.json(&["status"]).unwrap();
    assert_eq!(st["ring_groups"][0]["ext"], "600", "{st}");
    assert_eq!(st["ring_groups"][0]["name"], "Sales", "{st}");
    assert_eq!(st["ring_groups"][0]["mode"], "hunt", "{st}");
    assert_eq!(
        st["ring_groups"][0]["members"],
        serde_json::json!(["202", "203"])
    );
    assert!(ok(gw, &["status"]).contains("600    Sales: 202, 203 (in turn, 2 s each)"));

    // Hunt: 202 rings alone; after the step, 203; 203 answers.
    ok(&a, &["dial", "600"]);
    wait_state(&b, "alerting");
    let rang_b = Instant::now();
    assert!(call_state(&c).is_none(), "203 rang before its turn");
    wait_state(&c, "alerting");
    let waited = rang_b.elapsed();
    assert!(call_state(&b).is_none(), "202 still rings after its turn");
    assert!(
        waited >= Duration::from_millis(step * 1000 - 500),
        "203 rang {waited:?} after 202, before the {step} s step"
    );
    ok(&c, &["answer"]);
    wait_state(&a, "connected");
    assert_eq!(jstr(&status(&a), &["call", "peer"]).as_deref(), Some("600"));
    ok(&a, &["hangup"]);
    idle(&c);
    let cdr = gw.json(&["cdr", "--limit", "1"]).unwrap();
    assert_eq!(cdr["cdr"][0]["callee"], "203", "{cdr}");
    assert_eq!(cdr["cdr"][0]["outcome"], "answered", "{cdr}");

    // Ring all: both ring at once; 202 answers and 203 stops.
    ok(gw, &["ring-group", "edit", "600", "202", "203"]);
    let g = gw.json(&["ring-group", "list"]).unwrap();
    assert_eq!(g["ring_groups"][0]["mode"], "all", "{g}");
    assert_eq!(
        g["ring_groups"][0]["name"], "Sales",
        "edit keeps the name: {g}"
    );
    ok(&a, &["dial", "600"]);
    wait_state(&b, "alerting");
    wait_state(&c, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    assert_eq!(
        jstr(&idle(&c), &["ended"]).as_deref(),
        Some("answered-elsewhere")
    );
    ok(&a, &["hangup"]);
    idle(&b);

    // A member calling its own group does not ring itself.
    ok(&b, &["dial", "600"]);
    wait_state(&c, "alerting");
    ok(&b, &["hangup"]);
    idle(&c);

    // Nobody free (203 on do-not-disturb, 202 busy calling): unavailable.
    ok(gw, &["ring-group", "edit", "600", "203"]);
    ok(&c, &["dial", "*78"]);
    assert!(fails(&a, &["dial", "600"]).contains("busy"));
    ok(&c, &["dial", "*79"]);

    // The group and the range survive a restart.
    restart(&mut office, &run);
    let gw = &office.gw;
    let st = gw.json(&["status"]).unwrap();
    assert_eq!(st["ring_groups"][0]["ext"], "600", "{st}");
    assert_eq!(st["extension_range"], serde_json::json!([201, 699]), "{st}");
    assert_eq!(st["extension_range_source"], "set-here", "{st}");
    wait_for("the stations back", Duration::from_secs(20), || {
        (gw.json(&["status"]).ok()?["stations_online"] == 3).then_some(())
    });
    ok(&a, &["dial", "600"]);
    wait_state(&c, "alerting");
    ok(&a, &["hangup"]);
    idle(&c);

    // Removed, 600 is an unknown extension again.
    assert!(ok(gw, &["ring-group", "remove", "600"]).contains("600 removed"));
    assert!(fails(gw, &["ring-group", "remove", "600"]).contains("no ring group 600"));
    assert!(fails(&a, &["dial", "600"]).contains("unknown"));
}

#[test]
fn the_extension_range_set_here_wins_and_is_refused_when_it_leaves_anyone_out() {
    let mut office = LoopbackOffice::start("ext-range", &["--no-voicemail"]);
    let a = agent(&office, "a");
    office.enrol(&a, "205");
    let gw = &office.gw;
    let st = gw.json(&["status"]).unwrap();
    assert_eq!(st["extension_range"], serde_json::json!([201, 499]), "{st}");
    assert_eq!(st["extension_range_source"], "config", "{st}");
    assert!(ok(gw, &["status"]).contains("extensions    201-499 (from the configuration file)"));

    // Bad ranges are refused and nothing is saved.
    assert!(fails(gw, &["extension-range", "set", "400", "300"]).contains("empty"));
    assert!(fails(gw, &["extension-range", "set", "5", "50"]).contains("out of bounds"));
    assert!(fails(gw, &["extension-range", "set", "100", "1000000"]).contains("out of bounds"));
    let e = fails(gw, &["extension-range", "set", "300", "399"]);
    assert!(e.contains("would leave station 205 outside it"), "{e}");
    let st = gw.json(&["status"]).unwrap();
    assert_eq!(st["extension_range"], serde_json::json!([201, 499]), "{st}");
    assert_eq!(st["extension_range_source"], "config", "{st}");

    // A range that keeps 205 and adds 700-799; a group at 700 then pins it.
    ok(gw, &["extension-range", "set", "205", "799"]);
    ok(
        gw,
        &["ring-group", "add", "700", "--name", "Support", "205"],
    );
    let e = fails(gw, &["extension-range", "set", "205", "699"]);
    assert!(e.contains("ring group 700 (Support)"), "{e}");
    let shown = gw.json(&["extension-range", "show"]).unwrap();
    assert_eq!(
        shown["extension_range"],
        serde_json::json!([205, 799]),
        "{shown}"
    );
    assert_eq!(shown["source"], "set-here", "{shown}");
    // Back to the file's range would leave the group outside: refused.
    assert!(fails(gw, &["extension-range", "clear"]).contains("ring group 700 (Support)"));
    ok(gw, &["ring-group", "remove", "700"]);

    // A station approved now gets an extension in the new range: 205 is
    // taken, so the next free one is 206; with the range 600-699 it is
    // 600. An extension outside the range is refused.
    ok(gw, &["extension-range", "set", "205", "206"]);
    let b = agent(&office, "b");
    let code = wait_for("b's pairing code", Duration::from_secs(10), || {
        jstr(&b.json(&["status"]).ok()?, &["code"])
    });
    let e = fails(gw, &["approve", &code, "--ext", "300"]);
    assert!(e.contains("outside the range 205-206"), "{e}");
    assert!(ok(gw, &["approve", &code]).contains("extension 206"));
    registered(&b, "206");
    let e = fails(gw, &["extension-range", "set", "600", "699"]);
    assert!(
        e.contains("station 205") && e.contains("station 206"),
        "{e}"
    );
    ok(gw, &["revoke", "205"]);
    ok(gw, &["revoke", "206"]);
    ok(gw, &["extension-range", "set", "600", "699"]);
    let c = agent(&office, "c");
    let code = wait_for("c's pairing code", Duration::from_secs(10), || {
        jstr(&c.json(&["status"]).ok()?, &["code"])
    });
    assert!(ok(gw, &["approve", &code]).contains("extension 600"));
    registered(&c, "600");

    // It survives a restart and wins over the file; going back to the
    // file's range would leave 600 outside.
    restart(&mut office, &["--no-voicemail"]);
    let gw = &office.gw;
    assert!(ok(gw, &["extension-range", "show"]).contains("600-699 (set here)"));
    let e = fails(gw, &["extension-range", "clear"]);
    assert!(e.contains("would leave station 600"), "{e}");
    ok(gw, &["revoke", "600"]);
    assert!(ok(gw, &["extension-range", "clear"]).contains("201-499 (from the configuration file)"));
    let st = gw.json(&["status"]).unwrap();
    assert_eq!(st["extension_range_source"], "config", "{st}");
}

/// A station's extension that is renumbered follows it into the ring
/// groups (members and mailbox); a revoked one leaves them, so a new
/// station given the freed extension is rung by no group.
#[test]
fn a_renumbered_or_revoked_station_follows_or_leaves_the_ring_groups() {
    let mut office = LoopbackOffice::start("groups-follow", &["--no-voicemail"]);
    let a = agent(&office, "a");
    let b = agent(&office, "b");
    office.enrol(&a, "205");
    office.enrol(&b, "206");
    let gw = &office.gw;
    ok(
        gw,
        &["ring-group", "add", "450", "--name", "Sales", "205", "206"],
    );
    let members = |gw: &Daemon| {
        let st = gw.json(&["status"]).unwrap();
        st["ring_groups"][0]["members"].clone()
    };
    assert_eq!(members(gw), serde_json::json!(["205", "206"]));
    ok(gw, &["renumber", "205", "--to", "207"]);
    assert_eq!(members(gw), serde_json::json!(["207", "206"]));
    ok(gw, &["revoke", "207"]);
    assert_eq!(members(gw), serde_json::json!(["206"]));
    // After a restart the database says the same.
    restart(&mut office, &["--no-voicemail"]);
    assert_eq!(members(&office.gw), serde_json::json!(["206"]));
}
