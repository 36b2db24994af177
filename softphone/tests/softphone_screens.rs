//! Pictures of every screen, in English and Korean, compared with the
//! reference images in `tests/snapshots/` (rendered by wgpu; on machines
//! without a GPU, by Mesa's lavapipe). The model is fed the agent's events
//! in the documented format (docs/control-api.md), with the clock frozen,
//! so each picture is the same every run.
//!
//! After a deliberate change of the look:
//! `UPDATE_SNAPSHOTS=true cargo test -p keyline-phone --test softphone_screens`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use egui_kittest::{Harness, SnapshotOptions, SnapshotResults};
use keyline_phone::model::{Action, Input, Req, Tab};
use keyline_phone::{Lang, Model, PhoneApp};
use serde_json::{json, Value};

/// The window over a model in a given state, no agent behind it.
fn harness(model: Model) -> Harness<'static, PhoneApp> {
    let mut app = PhoneApp::new(model, None);
    app.freeze_clock(100.0);
    let mut h = Harness::builder()
        .with_size(egui::Vec2::new(440.0, 640.0))
        .build_ui_state(|ui, app: &mut PhoneApp| app.ui(ui), app);
    h.run_steps(4);
    h
}

fn ev(m: &mut Model, v: Value) {
    m.handle(100.0, Input::Event(v));
}

fn reply(m: &mut Model, req: Req, v: Value) {
    m.handle(100.0, Input::Reply { req, result: Ok(v) });
}

fn registered(lang: Lang) -> Model {
    let mut m = Model::new(lang);
    m.handle(100.0, Input::AgentUp);
    reply(
        &mut m,
        Req::Status,
        json!({"ok": true, "state": "registered", "ext": "201", "name": "Alice",
            "call": null, "settings": {"dnd": false, "forward_always": null},
            "messages_waiting": 1, "voicemail_waiting": 2,
            "audio": {"in": "device", "out": "device:hw:CARD=USB,DEV=0", "ring_out": null,
                "ringtone": "/home/alice/ring.wav"}}),
    );
    m
}

fn call(state: &str, dir: &str, extra: Value) -> Value {
    let mut c = json!({"id": 7, "peer": "202", "peer_name": "Bob Lee", "direction": dir,
        "state": state, "seconds": 65.0, "relayed": false, "consult": false,
        "on_hold": false, "held_by_peer": false, "muted": false, "recording": null});
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    json!({"event": "call", "call": c})
}

fn history() -> Value {
    json!({"ok": true, "calls": [
        {"peer": "202", "peer_name": "Bob Lee", "direction": "out", "connected": true, "ended": "local-hangup", "seconds": 125.0},
        {"peer": "203", "direction": "in", "connected": false, "ended": "cancelled"},
        {"peer": "김민준", "direction": "in", "connected": true, "ended": "hangup", "seconds": 31.0}]})
}

/// Every screen, in state order.
fn screens(lang: Lang) -> Vec<(&'static str, Model)> {
    let mut out = Vec::new();

    let mut m = Model::new(lang);
    m.handle(
        100.0,
        Input::AgentAbsent(
            "no agent answers at /home/alice/.local/state/keyline/agent/control.sock".into(),
        ),
    );
    out.push(("no_agent", m));

    let mut m = registered(lang);
    ev(
        &mut m,
        json!({"event": "link", "state": "pending", "code": "547266"}),
    );
    out.push(("pairing", m));

    let mut m = registered(lang);
    m.number = "202".into();
    out.push(("idle", m));

    let mut m = registered(lang);
    ev(&mut m, call("alerting", "in", json!({})));
    out.push(("ringing_in", m));

    let mut m = registered(lang);
    ev(&mut m, call("ringing", "out", json!({"peer_name": null})));
    out.push(("ringing_out", m));

    let mut m = registered(lang);
    ev(&mut m, call("connected", "in", json!({})));
    out.push(("connected", m));

    let mut m = registered(lang);
    ev(
        &mut m,
        call("connected", "in", json!({"on_hold": true, "muted": true})),
    );
    out.push(("held", m));

    let mut m = registered(lang);
    ev(&mut m, call("connected", "in", json!({"on_hold": true})));
    ev(
        &mut m,
        json!({"event": "call", "call": {"id": 8, "peer": "203", "direction": "out",
        "state": "connected", "seconds": 5.0, "consult": true}}),
    );
    out.push(("consulting", m));

    let mut m = registered(lang);
    ev(&mut m, call("connected", "in", json!({})));
    m.act(Action::OpenTransfer { consult: false });
    if let Some((_, t)) = &mut m.transfer {
        t.push_str("203");
    }
    out.push(("transfer", m));

    let mut m = registered(lang);
    m.act(Action::Tab(Tab::History));
    reply(&mut m, Req::History, history());
    out.push(("history", m));

    let mut m = registered(lang);
    m.act(Action::Tab(Tab::Messages));
    reply(
        &mut m,
        Req::Messages,
        json!({"ok": true, "messages": [
        {"id": 1, "from": "202", "body": "Lunch at 12?"},
        {"id": 2, "from": "203", "body": "회의실 예약했습니다"}]}),
    );
    m.message_to = "202".into();
    out.push(("messages", m));

    let mut m = registered(lang);
    m.act(Action::Tab(Tab::Contacts));
    reply(
        &mut m,
        Req::Contacts,
        json!({"ok": true, "contacts": [
        {"name": "Bob Lee", "number": "202", "code": null},
        {"name": "김민준", "number": "203", "code": null},
        {"name": null, "number": "204", "code": null},
        {"name": null, "number": "+8225551234", "code": "*1"},
        {"name": null, "number": "1001", "code": "**12"}]}),
    );
    out.push(("contacts", m));

    let mut m = registered(lang);
    m.act(Action::Tab(Tab::Voicemail));
    reply(
        &mut m,
        Req::VoicemailList,
        json!({"ok": true, "voicemails": [
        {"id": 3, "from": "202", "at_ms": 0, "secs": 12.4, "heard": false},
        {"id": 2, "from": "203", "at_ms": 0, "secs": 4.0, "heard": true}]}),
    );
    out.push(("voicemail", m));

    let mut m = registered(lang);
    m.act(Action::Tab(Tab::Settings));
    reply(
        &mut m,
        Req::AudioDevices,
        json!({"ok": true,
        "inputs": [{"spec": "device:default", "name": "Default", "default": true}],
        "outputs": [{"spec": "device:hw:CARD=USB,DEV=0", "name": "USB headset", "default": false}]}),
    );
    out.push(("settings", m));
    out
}

#[test]
fn every_screen_looks_as_recorded_in_english_and_korean() {
    let options = SnapshotOptions::new()
        .output_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots"))
        // Anti-aliasing differs a little between renderers; a moved
        // widget or a changed word fails by far more than this.
        .threshold(1.0)
        .max_failed_pixels(40);
    let mut results = SnapshotResults::new();
    for (lang, tag) in [(Lang::En, "en"), (Lang::Ko, "ko")] {
        for (name, model) in screens(lang) {
            let mut h = harness(model);
            h.snapshot_options(format!("{name}_{tag}"), &options);
            results.extend_harness(&mut h);
        }
    }
    results.unwrap();
}
