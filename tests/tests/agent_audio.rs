//! `keyline-agent audio`: a real station on a loopback office lists its
//! sound devices (ALSA's own `null` device among them) and the choice in
//! use, moves the ringtone to ALSA's `null` device (seen in `status`, kept
//! in `audio.json` and over a restart), and a ringtone that is not a WAV
//! file is refused with a clear error and changes nothing, not even a
//! microphone asked for in the same command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keyline_tests::{fails, jstr, ok, status, wait_for, LoopbackOffice};
use serde_json::Value;

#[test]
fn audio_lists_devices_sets_the_ring_device_and_refuses_a_non_wav_ringtone() {
    let office = LoopbackOffice::start("audio", &[]);
    let station = |office: &LoopbackOffice| {
        office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"])
    };
    let mut a = station(&office);
    office.enrol(&a, "201");

    // The list: every input and output with the spec that picks it, and
    // what is in use now.
    let list = a.json(&["audio", "list"]).unwrap();
    let specs = |key: &str| -> Vec<String> {
        list[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {list}"))
            .iter()
            .filter_map(|d| d["spec"].as_str().map(str::to_string))
            .collect()
    };
    assert!(
        specs("outputs").iter().any(|s| s == "device:null"),
        "{list}"
    );
    assert!(specs("inputs").iter().any(|s| s == "device:null"), "{list}");
    assert_eq!(list["audio"]["in"], "tone:600", "{list}");
    assert_eq!(list["audio"]["out"], "null", "{list}");
    assert_eq!(list["audio"]["ring_out"], Value::Null, "{list}");
    let human = ok(&a, &["audio", "list"]);
    for want in [
        "Microphones:",
        "Speakers:",
        "device:null",
        "microphone  tone:600",
        "ring on     the speaker",
        "ringtone    built-in",
    ] {
        assert!(human.contains(want), "{want:?} missing from\n{human}");
    }

    // The ringtone to ALSA's null device.
    let out = ok(&a, &["audio", "set", "--ring-device", "device:null"]);
    assert!(out.contains("ring on     device:null"), "{out}");
    assert_eq!(
        jstr(&status(&a), &["audio", "ring_out"]).as_deref(),
        Some("device:null")
    );
    let kept = a.state.join("audio.json");
    let saved = std::fs::read(&kept).unwrap();

    // A ringtone that is not a WAV file, with a microphone in the same
    // command: refused, and neither changes.
    let not_wav = office.scratch.join("ring.txt");
    std::fs::write(&not_wav, "this is not a sound\n").unwrap();
    let err = fails(
        &a,
        &[
            "audio",
            "set",
            "--mic",
            "silence",
            "--ringtone",
            not_wav.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("audio not changed") && err.contains("ring.txt"),
        "{err}"
    );
    let now = status(&a)["audio"].clone();
    assert_eq!(now["in"], "tone:600", "{now}");
    assert_eq!(now["ring_out"], "device:null", "{now}");
    assert_eq!(now["ringtone"], Value::Null, "{now}");
    assert_eq!(std::fs::read(&kept).unwrap(), saved, "audio.json changed");
    // Nothing to set is a usage error, before the daemon is asked.
    let err = fails(&a, &["audio", "set"]);
    assert!(err.contains("--ring-device"), "{err}");

    // --json gives the choice in use.
    let set = a
        .json(&["audio", "set", "--ring-device", "speaker"])
        .unwrap();
    assert_eq!(set["ring_out"], Value::Null, "{set}");
    let set = a
        .json(&["audio", "set", "--ring-device", "device:null"])
        .unwrap();
    assert_eq!(set["ring_out"], "device:null", "{set}");

    // Kept over a restart (the command line names no ring device).
    assert!(a.stop(), "{}", a.log_text());
    let a = station(&office);
    // The restarted agent answers once its control socket is up.
    let ring_out = wait_for(
        "the restarted agent's status",
        Duration::from_secs(15),
        || {
            let st = a.json(&["status"]).ok()?;
            Some(jstr(&st, &["audio", "ring_out"]))
        },
    );
    assert_eq!(ring_out.as_deref(), Some("device:null"));
}
