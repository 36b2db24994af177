//! The window in front of an internet terminal (`keyline-agent terminal`)
//! with a real `keyline-directory` on loopback: window A types a
//! Korean-script number through the input method and calls, window B shows
//! the caller and answers, both show the call connected, A hangs up and
//! B's history shows the call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{click, compose_into, shows, shows_part, terminal, until, window};
use keyline_phone::model::Screen;
use keyline_tests::{bin, jstr, wait_for, Daemon, Scratch};

const T: Duration = Duration::from_secs(20);
const PW: &str = "correct horse battery";
const KOREAN: &str = "김민준";

#[test]
fn two_terminal_windows_call_by_a_korean_number() {
    let scratch = Scratch::new("phoneterm");
    let dir = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .expect("start the directory");
    let listen = wait_for("the directory to start", T, || {
        jstr(&dir.json(&["status"]).ok()?, &["listen"])
    });
    keyline_tests::add_account(&dir.state, "alice", &["1001"], PW);
    keyline_tests::add_account(&dir.state, "minjun", &[KOREAN], PW);
    let term = |name: &str, account: &str, tone: &str| {
        let args = [
            "--bind",
            "127.0.0.1:0",
            "--audio-in",
            tone,
            "--audio-out",
            "null",
        ];
        terminal(&scratch, None, name, &listen, account, PW, &args)
    };
    let a = term("a", "alice", "tone:600");
    let b = term("b", "minjun", "tone:900");
    let mut wa = window(&a.state);
    let mut wb = window(&b.state);
    until(&mut wa, "registered", T, |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "Ready") && shows(w, "1001")
    });
    until(&mut wb, "registered", T, |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "Ready") && shows(w, KOREAN)
    });

    // The Korean number arrives through the input method.
    compose_into(&mut wa, "Number", KOREAN);
    assert_eq!(wa.state().model.number, KOREAN);
    click(&mut wa, "Call");

    until(&mut wb, "the incoming call", T, |w| {
        shows(w, "Answer") && shows(w, "1001")
    });
    click(&mut wb, "Answer");
    for w in [&mut wa, &mut wb] {
        until(w, "connected", T, |w| shows_part(w, "Connected"));
    }
    click(&mut wa, "Hang up");
    for w in [&mut wa, &mut wb] {
        until(w, "idle", T, |w| w.state().model.screen() == Screen::Idle);
    }
    click(&mut wb, "History");
    until(&mut wb, "the call in its history", T, |w| {
        shows_part(w, "in: 1001")
    });
    click(&mut wa, "History");
    until(&mut wa, "the call in its history", T, |w| {
        shows_part(w, &format!("out: {KOREAN}"))
    });
}
