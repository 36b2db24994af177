//! The window's office features on real agents and a real gateway:
//! contacts (the other stations and the gateway's short codes; a click
//! calls), settings (a ringtone file chosen in the window rings the next
//! call, and the agent keeps it across a restart; the microphone and the
//! ringtone's device chosen among the agent's sound cards) and voicemail (a
//! message left by an unanswered call is counted, listed, played on the
//! station's speaker and deleted, all from the window).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{click, enrol_named, shows, shows_part, type_into, until, window};
use egui_kittest::kittest::Queryable;
use keyline_media::{collapse_track, read_wav_mono48k, tone_sequence, tone_track, write_wav};
use keyline_phone::model::Screen;
use keyline_tests::{jstr, ok, status, wait_for, LoopbackOffice, Scratch};

const T: Duration = Duration::from_secs(15);

/// The ringtone chosen in the window.
const RING_HZ: f32 = 2200.0;
/// What the caller says into the mailbox.
const MESSAGE: [f32; 3] = [600.0, 900.0, 1200.0];

#[test]
fn contacts_settings_and_voicemail_in_the_window() {
    let cfg = Scratch::new("phoneoffice-cfg");
    let cfg_file = cfg.join("gatewayd.toml");
    std::fs::write(
        &cfg_file,
        "voicemail_silence_secs = 1\nvoicemail_max_secs = 20\n",
    )
    .unwrap();
    let office = LoopbackOffice::start(
        "phoneoffice",
        &[
            "--config",
            cfg_file.to_str().unwrap(),
            "--ring-timeout",
            "3",
        ],
    );
    let sc = |f: &str| office.scratch.join(f).to_str().unwrap().to_string();
    // A waits out the greeting, says three tones, then is silent.
    write_wav(
        &office.scratch.join("msg.wav"),
        &tone_sequence(&[
            (0.0, 2500),
            (MESSAGE[0], 600),
            (MESSAGE[1], 600),
            (MESSAGE[2], 600),
            (0.0, 4000),
        ]),
    )
    .unwrap();
    write_wav(
        &office.scratch.join("ring.wav"),
        &tone_sequence(&[(RING_HZ, 400), (0.0, 200)]),
    )
    .unwrap();
    let a = office.agent("a", &["--audio-in", &sc("msg.wav"), "--audio-out", "null"]);
    let mut b = office.agent(
        "b",
        &["--audio-in", "tone:440", "--audio-out", &sc("b-heard.wav")],
    );
    let c = office.agent("c", &["--audio-in", "tone:440", "--audio-out", "null"]);
    // Approved with names, as an administrator would.
    enrol_named(&office.gw, &a, "201", "Alice Kim");
    office.enrol(&b, "202");
    enrol_named(&office.gw, &c, "203", "Carol");
    ok(&office.gw, &["speed-dial", "set", "*1", "203"]);

    let mut wb = window(&b.state);
    until(&mut wb, "its extension", T, |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "202")
    });

    // Contacts: the other stations by name and the short code; not 202.
    click(&mut wb, "Contacts");
    until(&mut wb, "the contacts", T, |w| {
        shows(w, "Alice Kim  201") && shows(w, "Carol  203") && shows(w, "*1  203")
    });
    assert!(!shows_part(&wb, "  202"), "{:?}", wb.state().model.contacts);
    // The search field narrows the list.
    type_into(&mut wb, "Search", "ali");
    until(&mut wb, "one contact", T, |w| {
        shows(w, "Alice Kim  201") && !shows(w, "Carol  203")
    });
    wb.get_by_role_and_label(egui::accesskit::Role::TextInput, "Search")
        .click();
    wb.step();
    wb.state_mut().model.contact_filter.clear();
    wb.step();
    // A click on the short code calls its number: 203 rings.
    click(&mut wb, "*1  203");
    wait_for("203 ringing", T, || {
        (jstr(&status(&c), &["call", "state"])? == "alerting").then_some(())
    });
    until(&mut wb, "the call to 203", T, |w| {
        w.state().model.screen() == Screen::InCall && shows(w, "Hang up")
    });
    click(&mut wb, "Hang up");
    until(&mut wb, "idle", T, |w| w.state().model.call.is_none());

    // Settings: the agent's audio, and a ringtone file of our own.
    click(&mut wb, "Settings");
    until(&mut wb, "the audio settings", T, |w| {
        shows(w, "Microphone") && shows(w, "Speaker") && shows(w, "Ring on")
    });
    type_into(&mut wb, "Ringtone file", &sc("ring.wav"));
    click(&mut wb, "Use");
    until(&mut wb, "the ringtone taken", T, |w| {
        w.state().model.audio.ringtone.as_deref() == Some(sc("ring.wav").as_str())
    });
    assert_eq!(
        jstr(&status(&b), &["audio", "ringtone"]).as_deref(),
        Some(sc("ring.wav").as_str())
    );
    // A file that is no WAV is refused, and nothing changes.
    std::fs::write(office.scratch.join("not.wav"), b"not a wav").unwrap();
    type_into(&mut wb, "Ringtone file", "");
    wb.state_mut().model.ringtone_file = sc("not.wav");
    click(&mut wb, "Use");
    until(&mut wb, "the refusal", T, |w| {
        shows_part(w, "That did not work") && shows_part(w, "audio not changed")
    });
    assert_eq!(
        jstr(&status(&b), &["audio", "ringtone"]).as_deref(),
        Some(sc("ring.wav").as_str())
    );

    // The next call rings with it (on B's speaker, a WAV file here).
    ok(&a, &["dial", "202"]);
    until(&mut wb, "the incoming call", T, |w| {
        shows(w, "Answer") && shows(w, "Alice Kim")
    });
    let ring_until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < ring_until {
        wb.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    click(&mut wb, "Decline");
    until(&mut wb, "idle", T, |w| w.state().model.call.is_none());
    wait_for("A's call over", T, || {
        status(&a)["call"].is_null().then_some(())
    });

    // Voicemail: 201 calls again, nobody answers, the mailbox takes it.
    ok(&a, &["dial", "202"]);
    until(&mut wb, "the second call ringing", T, |w| {
        shows(w, "Answer")
    });
    wait_for("the message left", Duration::from_secs(30), || {
        status(&a)["call"].is_null().then_some(())
    });
    until(&mut wb, "a voicemail waiting", T, |w| {
        shows(w, "Voicemail (1)") && shows_part(w, "New voicemail: 1")
    });
    click(&mut wb, "Voicemail (1)");
    until(&mut wb, "the message in the list", T, |w| {
        w.state().model.voicemails.len() == 1 && shows_part(w, "201 ")
    });
    let vm = wb.state().model.voicemails[0].clone();
    assert!((2.0..8.0).contains(&vm.secs), "{vm:?}");
    assert!(!vm.heard);
    click(&mut wb, &format!("Play {}", vm.id));
    wait_for("playback to start", T, || {
        (status(&b)["playing_voicemail"] == true).then_some(())
    });
    wait_for("playback to end", Duration::from_secs(20), || {
        (status(&b)["playing_voicemail"] == false).then_some(())
    });
    until(&mut wb, "the message heard", T, |w| {
        w.state().model.voicemails.first().is_some_and(|v| v.heard)
            && w.state().model.voicemail_waiting == 0
    });
    let mailbox = office.scratch.join("gw").join("voicemail").join("202");
    assert_eq!(std::fs::read_dir(&mailbox).unwrap().count(), 1);
    click(&mut wb, &format!("Delete {}", vm.id));
    until(&mut wb, "the list empty", T, |w| {
        w.state().model.voicemails.is_empty() && shows(w, "No voicemail.")
    });
    assert_eq!(
        std::fs::read_dir(&mailbox).unwrap().count(),
        0,
        "the message's file is gone"
    );

    // What B's speaker played: the chosen ringtone, then the message.
    assert!(b.stop(), "b did not stop cleanly:\n{}", b.log_text());
    let pcm = read_wav_mono48k(&office.scratch.join("b-heard.wav")).unwrap();
    let mut cands = MESSAGE.to_vec();
    cands.push(RING_HZ);
    let heard = collapse_track(&tone_track(&pcm, &cands), 8);
    let ring_at = heard.iter().position(|&f| f == RING_HZ);
    assert!(ring_at.is_some(), "no ringtone in {heard:?}");
    assert!(
        heard.windows(3).any(|w| w == MESSAGE),
        "the message's tones should follow: {heard:?}"
    );

    // The agent keeps the window's choice when it starts again.
    let b2 = office.agent("b", &["--audio-in", "tone:440", "--audio-out", "null"]);
    wait_for("b back", T, || {
        jstr(&b2.json(&["status"]).ok()?, &["audio", "ringtone"])
    });
    assert_eq!(
        jstr(&status(&b2), &["audio", "ringtone"]).as_deref(),
        Some(sc("ring.wav").as_str())
    );

    // The sound cards the agent offers (ALSA's own `null` device is on
    // every Debian machine): chosen in the window, opened by the agent.
    let mut w2 = window(&b2.state);
    until(&mut w2, "its extension", T, |w| {
        w.state().model.screen() == Screen::Idle && shows(w, "202")
    });
    click(&mut w2, "Settings");
    until(&mut w2, "the agent's sound cards", T, |w| {
        w.state()
            .model
            .outputs
            .iter()
            .any(|d| d.spec == "device:null")
    });
    let null = w2
        .state()
        .model
        .outputs
        .iter()
        .find(|d| d.spec == "device:null")
        .unwrap()
        .name
        .clone();
    for (combo, key) in [("Ring on", "ring_out"), ("Microphone", "in")] {
        w2.get_by_role_and_label(egui::accesskit::Role::ComboBox, combo)
            .click();
        w2.step();
        w2.step();
        w2.get_by_label(&null).click();
        w2.step();
        w2.step();
        wait_for("the device in use", T, || {
            (jstr(&status(&b2), &["audio", key]).as_deref() == Some("device:null")).then_some(())
        });
    }
    // Back to the speaker for the ringtone.
    w2.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Ring on")
        .click();
    w2.step();
    w2.step();
    w2.get_by_label("Same as the speaker").click();
    w2.step();
    w2.step();
    wait_for("the ringtone on the speaker again", T, || {
        status(&b2)["audio"]["ring_out"].is_null().then_some(())
    });
    until(&mut w2, "the window following", T, |w| {
        w.state().model.audio.ring_out.is_none()
            && w.state().model.audio.input.as_deref() == Some("device:null")
    });
}
