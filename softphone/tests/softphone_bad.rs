//! The window when things go wrong, against real agents and a real
//! gateway: no agent (it says so and how to start one, then connects by
//! itself and shows the pairing code until the station is approved), a
//! number that does not exist, an empty or overlong number, a Korean
//! number typed through the input method, and the agent killed mid-call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{click, shows, shows_part, type_into, until, window};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use keyline_phone::model::Screen;
use keyline_tests::{jstr, ok, wait_for, LoopbackOffice};

const T: Duration = Duration::from_secs(15);

#[test]
fn no_agent_then_it_starts_waits_for_approval_and_is_ready() {
    let office = LoopbackOffice::start("phoneabsent", &[]);
    let state = office.scratch.join("a");
    let mut w = window(&state);
    until(&mut w, "that the agent is not running", T, |w| {
        shows(w, "The phone service is not running")
            && shows_part(w, "systemctl --user start keyline-agent")
    });
    assert_eq!(w.state().model.screen(), Screen::NoAgent);

    // The agent starts: the window finds it by itself and shows the
    // pairing code in large digits until the administrator approves.
    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let code = wait_for("a pairing code", T, || {
        jstr(&a.json(&["status"]).ok()?, &["code"])
    });
    let spaced = format!("{} {}", &code[..3], &code[3..]);
    until(&mut w, "the pairing code", T, |w| {
        shows(w, "Waiting for approval") && shows(w, &spaced)
    });
    ok(&office.gw, &["approve", &code, "--ext", "201"]);
    until(&mut w, "the station ready", T, |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "201") && shows(w, "Ready")
    });
}

#[test]
fn bad_numbers_get_clear_messages_and_change_nothing() {
    let office = LoopbackOffice::start("phonebadnum", &[]);
    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    office.enrol(&a, "201");
    let mut w = window(&a.state);
    until(&mut w, "ready", T, |w| shows(w, "201") && shows(w, "Call"));

    // Empty.
    click(&mut w, "Call");
    until(&mut w, "the empty-number message", T, |w| {
        shows(w, "Type a number to call")
    });

    // Overlong: nothing is sent.
    type_into(&mut w, "Number", &"5".repeat(40));
    click(&mut w, "Call");
    until(&mut w, "the too-long message", T, |w| {
        shows_part(w, "too long")
    });
    assert_eq!(w.state().model.screen(), Screen::Idle);
    assert!(a.json(&["status"]).unwrap()["call"].is_null());

    // Unknown: the gateway's reason, the field kept, still idle.
    w.state_mut().model.number.clear();
    w.step();
    type_into(&mut w, "Number", "299");
    click(&mut w, "Call");
    until(&mut w, "the unknown-number message", T, |w| {
        shows_part(w, "Cannot call") && shows_part(w, "299")
    });
    assert_eq!(w.state().model.number, "299");
    assert_eq!(w.state().model.screen(), Screen::Idle);
    assert!(a.json(&["status"]).unwrap()["call"].is_null());

    // A Korean name typed through the input method lands in the number
    // field and is dialled as it is.
    w.state_mut().model.number.clear();
    w.step();
    w.get_by_role_and_label(Role::TextInput, "Number").click();
    w.step();
    w.event(egui::Event::Ime(egui::ImeEvent::Preedit {
        text: "김".into(),
        active_range_chars: None,
    }));
    w.step();
    w.event(egui::Event::Ime(egui::ImeEvent::Commit("김민준".into())));
    w.step();
    w.step();
    assert_eq!(w.state().model.number, "김민준");
    click(&mut w, "Call");
    until(&mut w, "the answer to the Korean number", T, |w| {
        shows_part(w, "Cannot call") && shows_part(w, "김민준")
    });
}

#[test]
fn the_agent_killed_mid_call_ends_the_call_and_the_window_recovers() {
    let office = LoopbackOffice::start("phonekill", &[]);
    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let b_args = ["--audio-in", "tone:900", "--audio-out", "null"];
    let b = office.agent("b", &b_args);
    office.enrol(&a, "201");
    office.enrol(&b, "202");
    let mut wa = window(&a.state);
    let mut wb = window(&b.state);
    until(&mut wa, "ready", T, |w| shows(w, "201"));
    until(&mut wb, "ready", T, |w| shows(w, "202"));
    type_into(&mut wa, "Number", "202");
    click(&mut wa, "Call");
    until(&mut wb, "ringing", T, |w| shows(w, "Answer"));
    click(&mut wb, "Answer");
    until(&mut wb, "connected", T, |w| shows_part(w, "Connected"));

    // B's agent dies without a word.
    let pid = b.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    until(&mut wb, "the call ended with the agent", T, |w| {
        shows(w, "The call ended: the phone service stopped")
            && shows(w, "The phone service is not running")
    });
    // A's call ends too (the gateway notices B is gone).
    until(&mut wa, "A's call ended", Duration::from_secs(40), |w| {
        w.state().model.screen() == Screen::Idle
    });
    drop(b);

    // The agent comes back (same station): the window reconnects by
    // itself, and the station is ready again.
    let b = office.agent("b", &b_args);
    until(&mut wb, "the station back", Duration::from_secs(20), |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "202")
    });
    drop(b);
}

#[test]
fn keys_dial_answer_decline_and_a_text() {
    let office = LoopbackOffice::start("phonekeys", &[]);
    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let b = office.agent("b", &["--audio-in", "tone:900", "--audio-out", "null"]);
    office.enrol(&a, "201");
    office.enrol(&b, "202");
    let mut wa = window(&a.state);
    let mut wb = window(&b.state);
    until(&mut wa, "ready", T, |w| shows(w, "201"));
    until(&mut wb, "ready", T, |w| shows(w, "202"));

    // Digits typed with no field in focus go to the number field; Enter
    // dials.
    wa.event(egui::Event::Text("202".into()));
    wa.step();
    wa.step();
    assert_eq!(wa.state().model.number, "202");
    assert!(wa
        .get_by_role_and_label(Role::TextInput, "Number")
        .is_focused());
    wa.key_press(egui::Key::Enter);
    wa.step();
    wa.step();
    // Esc declines the ringing call; the caller is told.
    until(&mut wb, "ringing", T, |w| shows(w, "Answer"));
    wb.key_press(egui::Key::Escape);
    wb.step();
    until(&mut wa, "declined", T, |w| {
        w.state().model.call.is_none() && shows(w, "The call was declined: rejected")
    });

    // Enter answers a ringing call; Esc hangs up a connected one.
    type_into(&mut wa, "Number", "202");
    click(&mut wa, "Call");
    until(&mut wb, "ringing again", T, |w| shows(w, "Answer"));
    wb.key_press(egui::Key::Enter);
    wb.step();
    until(&mut wb, "connected", T, |w| shows_part(w, "Connected"));
    wb.key_press(egui::Key::Escape);
    wb.step();
    until(&mut wa, "hung up", T, |w| {
        w.state().model.call.is_none() && shows(w, "Call ended")
    });

    // Do not disturb, kept on the gateway: B's call to A does not ring
    // here (the gateway turns it away, to busy or to voicemail).
    click(&mut wa, "Phone");
    wa.get_by_role_and_label(Role::CheckBox, "Do not disturb")
        .click();
    wa.step();
    wa.step();
    until(&mut wa, "do not disturb on", T, |w| w.state().model.dnd);
    until(&mut wb, "idle", T, |w| {
        w.state().model.screen() == Screen::Idle
    });
    type_into(&mut wb, "Number", "201");
    click(&mut wb, "Call");
    until(&mut wb, "turned away", T, |w| {
        let m = &w.state().model;
        m.call.as_ref().is_some_and(|c| c.connected())
            || (m.call.is_none() && !m.dialing && m.notice.is_some())
    });
    wa.step();
    assert!(
        wa.state().model.call.is_none(),
        "A rang with do not disturb on"
    );
    if wb.state().model.call.is_some() {
        click(&mut wb, "Hang up");
    }
    wa.get_by_role_and_label(Role::CheckBox, "Do not disturb")
        .click();
    wa.step();
    wa.step();
    until(&mut wa, "do not disturb off", T, |w| !w.state().model.dnd);

    // A text from A's Messages tab arrives in B's.
    click(&mut wa, "Messages");
    type_into(&mut wa, "To", "202");
    type_into(&mut wa, "Text", "call me back");
    click(&mut wa, "Send");
    until(&mut wa, "sent", T, |w| shows(w, "Message sent"));
    until(&mut wb, "a message waiting", T, |w| {
        shows(w, "Messages (1)")
    });
    click(&mut wb, "Messages (1)");
    until(&mut wb, "the message", T, |w| {
        shows(w, "201:") && shows(w, "call me back")
    });
}
