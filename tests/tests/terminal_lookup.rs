//! Look-up-only calls (claim 3) between standalone terminals, with the
//! real programs on loopback: A asks the directory only where B is
//! (`dial --lookup`) and connects straight to B's endpoint, which rings
//! itself (the directory told it to expect A). B answers after a second;
//! media flows both ways end to end, the directory has no call in its
//! table and relays nothing, and A's hang-up (its media connection
//! closing) ends B's end. An unknown number fails clearly; a caller giving
//! up, a callee declining and an auto-answering callee all end cleanly.
//! An office station refuses `--lookup`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use keyline_tests::{
    bin, fails, free_udp_port, idle, jnum, jstr, ok, status, wait_for, wait_state, Daemon, Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";

/// A directory on loopback, with its state in `scratch/dir`.
fn start_dir(scratch: &Scratch) -> Daemon {
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .expect("start the directory");
    wait_for("the directory to start", Duration::from_secs(15), || {
        jstr(&d.json(&["status"]).ok()?, &["listen"])
    });
    d
}

fn add_user(d: &Daemon, id: &str, number: &str) {
    keyline_tests::add_account(&d.state, id, &[number], PW);
}

fn password_file(scratch: &Scratch, name: &str) -> PathBuf {
    let p = scratch.join(&format!("{name}.pw"));
    std::fs::write(&p, format!("{PW}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A terminal on loopback logged in as `account`, sending `tone`.
fn terminal(
    scratch: &Scratch,
    name: &str,
    dir: &str,
    fp: &str,
    account: &str,
    tone: &str,
    extra: &[&str],
) -> Daemon {
    let pw = password_file(scratch, name);
    let mut args = vec![
        "terminal",
        "--directory",
        dir,
        "--directory-fp",
        fp,
        "--account",
        account,
        "--password-file",
        pw.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "--audio-in",
        tone,
        "--audio-out",
        "null",
    ];
    args.extend_from_slice(extra);
    Daemon::start(None, bin("keyline-agent"), &scratch.join(name), &args).expect("start a terminal")
}

fn registered(d: &Daemon) {
    wait_for("the terminal to register", Duration::from_secs(20), || {
        let s = d.json(&["status"]).ok()?;
        (jstr(&s, &["state"]).as_deref() == Some("registered")).then_some(())
    });
}

/// Wait until `d` has a call in `state`; its status.
fn call_in(d: &Daemon, state: &str) -> Value {
    wait_for(state, Duration::from_secs(8), || {
        let s = status(d);
        (jstr(&s, &["call", "state"]).as_deref() == Some(state)).then_some(s)
    })
}

fn ended(last: &Value) -> String {
    jstr(last, &["ended"]).unwrap_or_default()
}

#[test]
fn lookup_only_calls_between_terminals() {
    let scratch = Scratch::new("tlookup");
    let mut dir = start_dir(&scratch);
    let st = dir.json(&["status"]).unwrap();
    let (listen, fp) = (
        jstr(&st, &["listen"]).unwrap(),
        jstr(&st, &["fingerprint"]).unwrap(),
    );
    add_user(&dir, "alice", "1001");
    add_user(&dir, "bob", "1002");
    add_user(&dir, "carol", "1003");
    let mut a = terminal(&scratch, "a", &listen, &fp, "alice", "tone:600", &[]);
    let mut b = terminal(&scratch, "b", &listen, &fp, "bob", "tone:900", &[]);
    let mut c = terminal(
        &scratch,
        "c",
        &listen,
        &fp,
        "carol",
        "tone:1200",
        &["--auto-answer", "1"],
    );
    for d in [&a, &b, &c] {
        registered(d);
    }

    // A looks B up and connects straight to it; B rings itself.
    let out = ok(&a, &["dial", "--lookup", "1002"]);
    assert!(out.contains("ringing 1002"), "{out}");
    let ring = call_in(&b, "alerting");
    assert_eq!(jstr(&ring, &["call", "peer"]).as_deref(), Some("1001"));
    assert_eq!(ring["call"]["lookup"], Value::Bool(true), "{ring}");
    let sa = call_in(&a, "ringing");
    assert_eq!(sa["call"]["lookup"], Value::Bool(true), "{sa}");
    // Nothing is answered before B's user answers.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        jstr(&status(&a), &["call", "state"]).as_deref(),
        Some("ringing")
    );
    assert_eq!(
        jstr(&status(&b), &["call", "state"]).as_deref(),
        Some("alerting")
    );
    ok(&b, &["answer"]);
    for d in [&a, &b] {
        wait_state(d, "connected");
    }
    wait_for("media both ways", Duration::from_secs(8), || {
        let (sa, sb) = (status(&a), status(&b));
        (jnum(&sa, &["call", "media", "received"])? > 50.0
            && jnum(&sb, &["call", "media", "received"])? > 50.0
            && jnum(&sa, &["call", "media", "played"])? > 50.0
            && jnum(&sb, &["call", "media", "played"])? > 50.0)
            .then_some(())
    });
    let sa = status(&a);
    assert_eq!(sa["call"]["relayed"], Value::Bool(false), "{sa}");
    assert_eq!(jstr(&sa, &["call", "peer"]).as_deref(), Some("1002"));
    // The directory only looked B up: no call of its own, no media.
    let ds = dir.json(&["status"]).unwrap();
    assert_eq!(jnum(&ds, &["relay", "bytes"]), Some(0.0), "{ds}");
    let calls = dir.json(&["calls"]).unwrap();
    assert!(
        calls["calls"].as_array().unwrap().is_empty(),
        "the directory has a call: {calls}"
    );

    // A hangs up: its media connection closes, and B's call ends.
    ok(&a, &["hangup"]);
    let b_last = idle(&b);
    let a_last = idle(&a);
    assert_eq!(ended(&b_last), "hangup", "{b_last}");
    assert_eq!(ended(&a_last), "local-hangup", "{a_last}");
    for l in [&a_last, &b_last] {
        assert_eq!(l["lookup"], Value::Bool(true), "{l}");
        assert!(jnum(l, &["media", "played"]).unwrap() > 50.0, "{l}");
    }

    // An unknown number fails clearly, and leaves no call behind.
    let err = fails(&a, &["dial", "--lookup", "9999"]);
    assert!(err.contains("cannot look up 9999"), "{err}");
    let a_last = idle(&a);
    assert_eq!(ended(&a_last), "unknown", "{a_last}");

    // A gives up while B rings: both ends end cleanly.
    ok(&a, &["dial", "--lookup", "1002"]);
    call_in(&b, "alerting");
    call_in(&a, "ringing");
    // Let A's media connection reach B (and be held there).
    std::thread::sleep(Duration::from_millis(500));
    ok(&a, &["hangup"]);
    let a_last = idle(&a);
    let b_last = idle(&b);
    assert_eq!(ended(&a_last), "local-hangup", "{a_last}");
    assert_eq!(ended(&b_last), "cancelled", "{b_last}");
    assert_eq!(b_last["connected"], Value::Bool(false), "{b_last}");

    // B declines: A hears so.
    ok(&a, &["dial", "--lookup", "1002"]);
    call_in(&b, "alerting");
    std::thread::sleep(Duration::from_millis(500));
    ok(&b, &["hangup"]);
    let b_last = idle(&b);
    let a_last = idle(&a);
    assert_eq!(ended(&b_last), "local-hangup", "{b_last}");
    assert_eq!(ended(&a_last), "rejected", "{a_last}");

    // A callee with --auto-answer answers a look-up-only call by itself.
    ok(&a, &["dial", "--lookup", "1003"]);
    let ring = call_in(&c, "alerting");
    assert_eq!(jstr(&ring, &["call", "peer"]).as_deref(), Some("1001"));
    for d in [&a, &c] {
        wait_state(d, "connected");
    }

    // B looks up C while C talks to A: C is busy, and B hears so at once.
    ok(&b, &["dial", "--lookup", "1003"]);
    let b_last = idle(&b);
    assert_eq!(ended(&b_last), "busy", "{b_last}");
    assert_eq!(b_last["connected"], Value::Bool(false), "{b_last}");
    assert_eq!(
        jstr(&status(&c), &["call", "peer"]).as_deref(),
        Some("1001")
    );

    ok(&c, &["hangup"]);
    assert_eq!(ended(&idle(&a)), "hangup");
    assert_eq!(ended(&idle(&c)), "local-hangup");

    for d in [&mut a, &mut b, &mut c] {
        assert!(
            d.stop(),
            "a terminal did not stop cleanly:\n{}",
            d.log_text()
        );
    }
    assert!(dir.stop(), "{}", dir.log_text());
}

#[test]
fn an_office_station_refuses_lookup_calls() {
    let scratch = Scratch::new("tlookup-office");
    // No gateway is there; the station still serves its control socket.
    let gw = format!("127.0.0.1:{}", free_udp_port());
    let mut station = Daemon::start(
        None,
        bin("keyline-agent"),
        &scratch.join("station"),
        &[
            "run",
            "--no-mdns",
            "--gateway",
            &gw,
            "--audio-in",
            "silence",
            "--audio-out",
            "null",
        ],
    )
    .expect("start a station");
    wait_for("the station to start", Duration::from_secs(15), || {
        station.json(&["status"]).ok()
    });
    let err = fails(&station, &["dial", "--lookup", "1002"]);
    assert!(err.contains("standalone terminals"), "{err}");
    station.stop();
}
