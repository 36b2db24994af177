//! Hold and recording, end to end: the held party hears the music on hold
//! (and not the holder), either side can hang up while held, and a call
//! recording holds both parties' tones in an Ogg Opus file that standard
//! tools open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use keyline_media::tones::{midi_hz, HOLD_MUSIC_NOTES};
use keyline_media::{goertzel_power, read_ogg_opus, read_wav_mono48k, FRAME_SAMPLES};
use keyline_tests::{jstr, ok, status, wait_for, wait_state, LoopbackOffice};
use serde_json::Value;

/// Share of a frame's energy at `hz`, roughly.
fn power(frame: &[i16], hz: f32) -> f64 {
    goertzel_power(frame, hz)
}

#[test]
fn held_party_hears_music_and_recordings_hold_both_sides() {
    let office = LoopbackOffice::start("hold", &[]);
    let gw = &office.gw;
    let rec_dir = office.scratch.join("recordings");
    let b_out = office.scratch.join("b-heard.wav");
    let a = office.agent(
        "a",
        &[
            "--audio-in",
            "tone:600",
            "--audio-out",
            "null",
            "--record-dir",
            rec_dir.to_str().unwrap(),
        ],
    );
    let mut b = office.agent(
        "b",
        &[
            "--audio-in",
            "tone:1300",
            "--audio-out",
            b_out.to_str().unwrap(),
        ],
    );
    office.enrol(&a, "201");
    office.enrol(&b, "202");

    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    wait_state(&b, "connected");
    std::thread::sleep(Duration::from_millis(1500));

    // 201 holds: 202 is told, the gateway shows it, 202 hears the music.
    ok(&a, &["hold"]);
    wait_for("held", Duration::from_secs(3), || {
        (status(&b)["call"]["held_by_peer"] == Value::Bool(true)).then_some(())
    });
    let calls = gw.json(&["calls"]).unwrap();
    assert_eq!(calls["calls"][0]["state"], "held", "{calls}");
    // The held party cannot resume a call it does not hold.
    assert!(!b.ctl(&["resume"]).status.success());
    std::thread::sleep(Duration::from_millis(3000));
    ok(&a, &["resume"]);
    wait_for("resumed", Duration::from_secs(3), || {
        (status(&b)["call"]["held_by_peer"] == Value::Bool(false)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1000));

    // 202 records on demand too.
    let out = ok(&b, &["record", "on"]);
    assert!(out.contains("recording to"), "{out}");
    std::thread::sleep(Duration::from_millis(1500));
    let out = ok(&b, &["record", "off"]);
    let b_rec = out.trim().strip_prefix("recorded ").unwrap().to_string();

    // Held again, and the held party hangs up: allowed, and 201 is told.
    ok(&a, &["hold"]);
    std::thread::sleep(Duration::from_millis(300));
    ok(&b, &["hangup"]);
    let last = wait_for("201 told", Duration::from_secs(5), || {
        let s = status(&a);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(jstr(&last, &["ended"]).as_deref(), Some("hangup"));
    let a_rec = jstr(&last, &["recording"]).expect("201 recorded the call (--record-dir)");
    assert!(b.stop());

    // What 202 heard: 600 Hz before and after the hold, music during it.
    let heard = read_wav_mono48k(&b_out).unwrap();
    let frames: Vec<&[i16]> = heard.chunks_exact(FRAME_SAMPLES).collect();
    let notes: Vec<f32> = HOLD_MUSIC_NOTES
        .iter()
        .map(|&n| midi_hz(n) as f32)
        .collect();
    let is_voice = |f: &[i16]| power(f, 600.0) > 1e7;
    let is_music = |f: &[i16]| !is_voice(f) && notes.iter().any(|&hz| power(f, hz) > 1e6);
    // Find the longest run without 201's tone: it is the hold.
    let mut best = (0usize, 0usize);
    let mut start = None;
    for (i, f) in frames.iter().enumerate() {
        match (is_voice(f), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                if i - s > best.1 - best.0 {
                    best = (s, i);
                }
                start = None;
            }
            _ => {}
        }
    }
    let (s, e) = best;
    let hold_frames = e - s;
    assert!(
        (130..=170).contains(&hold_frames),
        "the hold should silence 201's tone for about 3 s, got {hold_frames} frames"
    );
    let music = frames[s..e].iter().filter(|f| is_music(f)).count();
    assert!(
        music * 10 >= hold_frames * 7,
        "music in {music} of {hold_frames} held frames"
    );
    assert!(frames[..s].iter().filter(|f| is_voice(f)).count() > 50);

    // Both recordings open in standard tools and hold both parties.
    for rec in [&a_rec, &b_rec] {
        let out = Command::new("opusinfo")
            .arg(rec)
            .output()
            .expect("opusinfo (Debian package opus-tools)");
        assert!(
            out.status.success(),
            "opusinfo {rec}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let pcm = read_ogg_opus(std::path::Path::new(rec)).unwrap();
        let both = pcm
            .chunks_exact(FRAME_SAMPLES)
            .filter(|f| power(f, 600.0) > 1e7 && power(f, 1300.0) > 1e7)
            .count();
        assert!(both > 40, "{rec}: only {both} frames hold both tones");
    }
    assert!(a_rec.contains("_202"), "named by peer: {a_rec}");
}
