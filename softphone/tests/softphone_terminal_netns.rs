//! The window in front of internet terminals on a network of namespaces:
//! a real `keyline-directory` in one namespace, two `keyline-agent
//! terminal`s in others (tone files as their microphones, WAV files as
//! their speakers). The callee's number is Korean script (영업부); window
//! A gets it through the input method (a composition, then the commit),
//! calls, window B shows the caller and answers, both show the call
//! connected and direct, the tones are heard both ways, A hangs up, and
//! the call is in both windows' history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{click, compose_into, connected, run_for, shows, shows_part, terminal, until, window};
use keyline_phone::model::Screen;
use keyline_tests::tones::{heard, write_tones, A_TONES, B_TONES, STEP_MS};
use keyline_tests::{add_account, bin, jstr, wait_for, Daemon, Lan, Scratch};

const T: Duration = Duration::from_secs(30);
const PW: &str = "correct horse battery";
const KOREAN: &str = "영업부";
const DIR: &str = "10.77.0.1:7443";

#[test]
fn terminal_windows_in_namespaces_call_a_korean_number() {
    let scratch = Scratch::new("phonetermns");
    let lan = Lan::new(3).expect("build the network");
    let ns: Vec<String> = lan.hosts.iter().map(|h| h.ns.name.clone()).collect();
    write_tones(&scratch.join("a.wav"), &A_TONES);
    write_tones(&scratch.join("b.wav"), &B_TONES);

    let state = scratch.join("dir");
    add_account(&state, "alice", &["1001"], PW);
    add_account(&state, "sales", &[KOREAN], PW);
    let dir = Daemon::start(
        Some(&ns[0]),
        bin("keyline-directory"),
        &state,
        &["serve", "--listen", DIR],
    )
    .expect("start the directory");
    let fp = wait_for("the directory to start", T, || {
        jstr(&dir.json(&["status"]).ok()?, &["fingerprint"])
    });
    let sc = |f: &str| scratch.join(f).to_str().unwrap().to_string();
    let term = |host: &str, name: &str, account: &str, input: &str, out: &str| {
        let args = [
            "--directory-fp",
            fp.as_str(),
            "--audio-in",
            input,
            "--audio-out",
            out,
        ];
        terminal(&scratch, Some(host), name, DIR, account, PW, &args)
    };
    let mut a = term(&ns[1], "a", "alice", &sc("a.wav"), &sc("a-heard.wav"));
    let mut b = term(&ns[2], "b", "sales", &sc("b.wav"), &sc("b-heard.wav"));

    let mut wa = window(&a.state);
    let mut wb = window(&b.state);
    until(&mut wa, "registered", T, |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "Ready") && shows(w, "1001")
    });
    until(&mut wb, "registered", T, |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "Ready") && shows(w, KOREAN)
    });

    // The Korean number arrives through the input method; Call.
    compose_into(&mut wa, "Number", KOREAN);
    assert_eq!(wa.state().model.number, KOREAN);
    click(&mut wa, "Call");

    until(&mut wb, "the incoming call", T, |w| {
        shows(w, "Answer") && shows(w, "1001")
    });
    click(&mut wb, "Answer");
    for w in [&mut wa, &mut wb] {
        until(w, "connected", T, |w| {
            connected(w) && shows_part(w, "direct")
        });
    }
    assert_eq!(
        wa.state().model.call.as_ref().map(|c| c.peer.as_str()),
        Some(KOREAN)
    );
    // Let the tones play both ways.
    run_for(
        &mut [&mut wa, &mut wb],
        Duration::from_millis(u64::from(STEP_MS) * 5 + 800),
    );

    click(&mut wa, "Hang up");
    for w in [&mut wa, &mut wb] {
        until(w, "idle", T, |w| w.state().model.screen() == Screen::Idle);
    }
    click(&mut wb, "History");
    until(&mut wb, "the call in B's history", T, |w| {
        shows_part(w, "in: 1001")
    });
    click(&mut wa, "History");
    until(&mut wa, "the call in A's history", T, |w| {
        shows_part(w, &format!("out: {KOREAN}"))
    });

    // The tones were heard both ways.
    assert!(a.stop(), "a did not stop cleanly:\n{}", a.log_text());
    assert!(b.stop(), "b did not stop cleanly:\n{}", b.log_text());
    let ha = heard(&scratch.join("a-heard.wav"));
    let hb = heard(&scratch.join("b-heard.wav"));
    assert_eq!(ha, B_TONES.to_vec(), "A heard {ha:?}");
    assert_eq!(hb, A_TONES.to_vec(), "B heard {hb:?}");
    drop(dir);
    drop(lan);
}
