//! The window on a real office LAN: a gateway and three stations in network
//! namespaces of their own (the stations find the gateway by mDNS), tone
//! files as the microphones and WAV files as the speakers. Each station has
//! its window twice: the real `keyline-phone` program under Xvfb (what the
//! person sees, read back by title and OCR) and the same window code in a
//! harness that the test types and clicks into by accessibility label.
//! A types 202 and presses Call, B shows the caller and rings, Answer, both
//! show connected within 100 ms of their agent's event, the tones are heard
//! both ways, Hold in A shows held in B, Transfer from B rings C, C
//! answers, Hang up, and the history shows the call in every window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::x11::{keyline_window, until_text, xvfb, Proc};
use common::{click, shows, shows_part, type_into, until, window, Window};
use keyline_phone::model::Screen;
use keyline_tests::tones::{heard, write_tones, A_TONES, B_TONES, STEP_MS};
use keyline_tests::{bin, wait_for, Daemon, Lan, Scratch};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// When each `call` event of `d`'s agent arrives (a subscriber of the
/// test's own, beside the windows').
fn events(d: &Daemon) -> mpsc::Receiver<(Instant, Value)> {
    let mut s = UnixStream::connect(d.state.join("control.sock")).unwrap();
    s.write_all(b"{\"cmd\": \"subscribe\"}\n").unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if tx.send((Instant::now(), v)).is_err() {
                break;
            }
        }
    });
    rx
}

fn when_state(rx: &mpsc::Receiver<(Instant, Value)>, state: &str) -> Instant {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let Ok((t, v)) = rx.recv_timeout(Duration::from_millis(100)) {
            if v["event"] == "call" && v["call"]["state"] == state {
                return t;
            }
        }
    }
    panic!("no {state} event");
}

fn connected(w: &Window) -> bool {
    w.state().model.call.as_ref().is_some_and(|c| c.connected()) && shows_part(w, "Connected")
}

/// Let the windows run for `d` (their agents' news is taken each frame).
fn run_for(ws: &mut [&mut Window], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for w in ws.iter_mut() {
            w.step();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real program for the agent at `d`, on `display`.
fn real_window(d: &Daemon, display: &str, scratch: &Scratch, name: &str) -> Proc {
    let log = std::fs::File::create(scratch.join(&format!("{name}-window.log"))).unwrap();
    Proc(
        Command::new(bin("keyline-phone"))
            .arg("--state")
            .arg(&d.state)
            .args(["--lang", "en"])
            .env("DISPLAY", display)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_RUNTIME_DIR", scratch.join(""))
            .env("XDG_CONFIG_HOME", scratch.join("config"))
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keyline-phone"),
    )
}

#[test]
fn a_call_on_an_office_lan_in_real_windows() {
    let scratch = Scratch::new("phonelan");
    let lan = Lan::new(4).expect("build the office LAN");
    let ns: Vec<String> = lan.hosts.iter().map(|h| h.ns.name.clone()).collect();
    write_tones(&scratch.join("a.wav"), &A_TONES);
    write_tones(&scratch.join("b.wav"), &B_TONES);
    let gw = Daemon::start(
        Some(&ns[0]),
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &[],
    )
    .expect("start the gateway");
    let agent = |host: &str, name: &str, input: &str, out: &str| {
        Daemon::start(
            Some(host),
            bin("keyline-agent"),
            &scratch.join(name),
            &["run", "--audio-in", input, "--audio-out", out],
        )
        .expect("start a station")
    };
    let sc = |f: &str| scratch.join(f).to_str().unwrap().to_string();
    let mut a = agent(&ns[1], "a", &sc("a.wav"), &sc("a-heard.wav"));
    let mut b = agent(&ns[2], "b", &sc("b.wav"), &sc("b-heard.wav"));
    let c = agent(&ns[3], "c", "tone:440", "null");
    // Each finds the gateway by mDNS and waits for approval.
    common::enrol_named(&gw, &a, "201", "Alice");
    common::enrol_named(&gw, &b, "202", "Bob");
    common::enrol_named(&gw, &c, "203", "Carol");

    let (_x, display) = xvfb();
    let _real_b = real_window(&b, &display, &scratch, "b");
    let (b_win, _) = wait_for("B's real window", T, || {
        keyline_window(&display).filter(|(_, t)| t.contains("202"))
    });
    let mut wa = window(&a.state);
    let mut wb = window(&b.state);
    let mut wc = window(&c.state);
    for (w, ext) in [(&mut wa, "201"), (&mut wb, "202"), (&mut wc, "203")] {
        until(w, "its extension", T, |w| {
            w.state().model.screen() == Screen::Idle && shows(w, ext)
        });
    }
    let ev_a = events(&a);
    let ev_b = events(&b);

    // A types 202 and presses Call; B shows the caller and rings, in the
    // harness and in the real window.
    type_into(&mut wa, "Number", "202");
    click(&mut wa, "Call");
    until(&mut wb, "the incoming call", T, |w| {
        shows(w, "Answer") && shows(w, "Alice")
    });
    wait_for("the real window ringing", T, || {
        keyline_window(&display).filter(|(_, t)| t.contains("Incoming call Alice"))
    });
    let shot = scratch.join("b.png");
    until_text(
        &display,
        &b_win,
        &shot,
        "the caller in B's real window",
        |t| t.contains("Incoming call") && t.contains("201"),
    );

    // Answer in B: both show connected soon after their agent says so.
    click(&mut wb, "Answer");
    let at_a = when_state(&ev_a, "connected");
    let at_b = when_state(&ev_b, "connected");
    until(&mut wa, "connected", T, connected);
    let lag_a = at_a.elapsed();
    until(&mut wb, "connected", T, connected);
    let lag_b = at_b.elapsed();
    assert!(
        lag_a < Duration::from_millis(100) && lag_b < Duration::from_millis(100),
        "connected shown {lag_a:?} (A) and {lag_b:?} (B) after the agents' events"
    );
    until_text(
        &display,
        &b_win,
        &shot,
        "connected in B's real window",
        |t| t.contains("Connected") && t.contains("direct"),
    );
    run_for(
        &mut [&mut wa, &mut wb],
        Duration::from_millis(u64::from(STEP_MS) * 5 + 800),
    );

    // Hold in A: B shows it is held (the real window too); Resume.
    click(&mut wa, "Hold");
    until(&mut wb, "held", T, |w| {
        shows_part(w, "Held by the other side")
    });
    until_text(&display, &b_win, &shot, "held in B's real window", |t| {
        t.contains("Held by the other side")
    });
    until(&mut wa, "on hold", T, |w| shows(w, "Resume"));
    click(&mut wa, "Resume");
    until(&mut wb, "resumed", T, |w| {
        connected(w) && !shows_part(w, "Held")
    });

    // Transfer from B to 203: C rings with A, answers; B is free.
    click(&mut wb, "Transfer");
    type_into(&mut wb, "Transfer to", "203");
    click(&mut wb, "Transfer");
    until(&mut wc, "the transferred call", T, |w| {
        shows(w, "Answer") && shows(w, "Alice")
    });
    click(&mut wc, "Answer");
    until(&mut wb, "B's call handed over", T, |w| {
        w.state().model.call.is_none()
    });
    until(&mut wa, "connected to C", T, |w| {
        connected(w)
            && w.state()
                .model
                .call
                .as_ref()
                .is_some_and(|c| c.peer == "203")
    });

    // Hang up in A; history in every window.
    click(&mut wa, "Hang up");
    for w in [&mut wa, &mut wb, &mut wc] {
        until(w, "idle", T, |w| w.state().model.screen() == Screen::Idle);
    }
    click(&mut wa, "History");
    until(&mut wa, "the call in A's history", T, |w| {
        shows_part(w, "out: 203")
    });
    for (w, who) in [(&mut wb, "B"), (&mut wc, "C")] {
        click(w, "History");
        until(w, &format!("the call in {who}'s history"), T, |w| {
            shows_part(w, "in: ") && shows_part(w, "201")
        });
    }
    until_text(&display, &b_win, &shot, "B's real window idle again", |t| {
        t.contains("Ready") && t.contains("Number")
    });

    // The tones were heard both ways (before the transfer).
    drop((ev_a, ev_b));
    assert!(a.stop(), "a did not stop cleanly:\n{}", a.log_text());
    assert!(b.stop(), "b did not stop cleanly:\n{}", b.log_text());
    let ha = heard(&scratch.join("a-heard.wav"));
    let hb = heard(&scratch.join("b-heard.wav"));
    assert_eq!(ha, B_TONES.to_vec(), "A heard {ha:?}");
    assert_eq!(hb, A_TONES.to_vec(), "B heard {hb:?}");
    drop(lan);
}
