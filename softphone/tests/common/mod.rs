//! Windows for the tests: the real window code in an egui_kittest
//! harness, connected to a real agent's control socket.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod x11;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use keyline_phone::io::AgentIo;
use keyline_phone::{Lang, Model, PhoneApp};
use serde_json::Value;

pub type Window = Harness<'static, PhoneApp>;

/// A window following the agent whose state directory is `state`.
pub fn window(state: &Path) -> Window {
    let io = AgentIo::start(state.join("control.sock"), Arc::new(|| {}));
    let app = PhoneApp::new(Model::new(Lang::En), Some(io));
    Harness::builder()
        .with_size(egui::Vec2::new(440.0, 640.0))
        .build_ui_state(|ui, app: &mut PhoneApp| app.ui(ui), app)
}

/// Step the window until `f` holds (checked after each frame); how long
/// that took. Fails after `timeout` with what the window shows.
pub fn until(
    w: &mut Window,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Window) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        w.step();
        if f(w) {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!(
                "the window did not show {what} within {timeout:?}; it shows:\n{:#?}",
                w.state().model
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether something labelled exactly `label` is shown.
pub fn shows(w: &Window, label: &str) -> bool {
    w.query_all_by_label(label).next().is_some()
}

/// Whether something whose label contains `part` is shown.
pub fn shows_part(w: &Window, part: &str) -> bool {
    w.query_all_by_label_contains(part).next().is_some()
}

/// Click the button labelled `label`.
pub fn click(w: &mut Window, label: &str) {
    w.get_by_role_and_label(Role::Button, label).click();
    w.step();
    w.step();
}

/// Type `text` into the text field labelled `label`.
pub fn type_into(w: &mut Window, label: &str, text: &str) {
    w.get_by_role_and_label(Role::TextInput, label).click();
    w.step();
    w.get_by_role_and_label(Role::TextInput, label)
        .type_text(text);
    w.step();
    w.step();
}

/// Approve station `d` on gateway `gw` as `ext` with a name, as an
/// administrator would, and wait until it is registered.
pub fn enrol_named(gw: &keyline_tests::Daemon, d: &keyline_tests::Daemon, ext: &str, name: &str) {
    let code = keyline_tests::wait_for("a pairing code", Duration::from_secs(10), || {
        keyline_tests::jstr(&d.json(&["status"]).ok()?, &["code"])
    });
    keyline_tests::ok(gw, &["approve", &code, "--ext", ext, "--name", name]);
    keyline_tests::registered(d, ext);
}

/// Every event of `d`'s agent with the instant it arrived (a subscriber
/// of the test's own, beside the windows').
pub fn agent_events(d: &keyline_tests::Daemon) -> mpsc::Receiver<(Instant, Value)> {
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

/// Wait (up to `timeout`) for the agent's event of a call in `state`;
/// when it arrived.
pub fn when_state(
    rx: &mpsc::Receiver<(Instant, Value)>,
    state: &str,
    timeout: Duration,
) -> Instant {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((t, v)) = rx.recv_timeout(Duration::from_millis(100)) {
            if v["event"] == "call" && v["call"]["state"] == state {
                return t;
            }
        }
    }
    panic!("no {state} event");
}

/// Whether the window shows its call connected.
pub fn connected(w: &Window) -> bool {
    w.state().model.call.as_ref().is_some_and(|c| c.connected()) && shows_part(w, "Connected")
}

/// Step every window in turn until each satisfies `f`; the instant each
/// first did. Fails after `timeout`.
pub fn until_each(
    ws: &mut [&mut Window],
    what: &str,
    timeout: Duration,
    f: impl Fn(&Window) -> bool,
) -> Vec<Instant> {
    let start = Instant::now();
    let mut shown: Vec<Option<Instant>> = vec![None; ws.len()];
    while shown.iter().any(Option::is_none) {
        for (w, s) in ws.iter_mut().zip(shown.iter_mut()) {
            if s.is_none() {
                w.step();
                if f(w) {
                    *s = Some(Instant::now());
                }
            }
        }
        assert!(
            start.elapsed() < timeout,
            "the windows did not all show {what} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    shown.into_iter().flatten().collect()
}

/// Let the windows run for `d` (their agents' news is taken each frame).
pub fn run_for(ws: &mut [&mut Window], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for w in ws.iter_mut() {
            w.step();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An internet terminal (`keyline-agent terminal`) called `name` for
/// `account` of the directory at `dir`, in network namespace `ns` (or
/// here), its password written beside its state; `extra` are its other
/// arguments (`--audio-in`, `--audio-out`, `--bind`, `--directory-fp`).
/// Does not wait for it to register.
pub fn terminal(
    scratch: &keyline_tests::Scratch,
    ns: Option<&str>,
    name: &str,
    dir: &str,
    account: &str,
    password: &str,
    extra: &[&str],
) -> keyline_tests::Daemon {
    use std::os::unix::fs::PermissionsExt;
    let pw = scratch.join(&format!("{name}.pw"));
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut args = vec![
        "terminal",
        "--directory",
        dir,
        "--account",
        account,
        "--password-file",
        pw.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    keyline_tests::Daemon::start(
        ns,
        keyline_tests::bin("keyline-agent"),
        &scratch.join(name),
        &args,
    )
    .expect("start a terminal")
}

/// Type `text` into the text field labelled `label` the way an input
/// method gives it: a composition (preedit) of its first character, then
/// the whole text committed.
pub fn compose_into(w: &mut Window, label: &str, text: &str) {
    w.get_by_role_and_label(Role::TextInput, label).click();
    w.step();
    let first: String = text.chars().take(1).collect();
    w.event(egui::Event::Ime(egui::ImeEvent::Preedit {
        text: first,
        active_range_chars: None,
    }));
    w.step();
    w.event(egui::Event::Ime(egui::ImeEvent::Commit(text.into())));
    w.step();
    w.step();
}
