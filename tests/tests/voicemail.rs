//! Voicemail on the gateway: an unanswered call reaches the callee's
//! mailbox, the caller hears the greeting, silence ends the message, the
//! stored Ogg Opus file decodes to the caller's tones, the callee sees
//! message-waiting and plays, lists and deletes its messages; a busy
//! callee's caller goes straight to the mailbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use keyline_media::{
    collapse_track, read_ogg_opus, read_wav_mono48k, tone_sequence, tone_track, write_wav,
};
use keyline_tests::{bin, jnum, jstr, ok, status, wait_for, Daemon, Scratch};

const TONES: [f32; 3] = [600.0, 900.0, 1200.0];

fn heard(pcm: &[i16]) -> Vec<f32> {
    let mut cands = TONES.to_vec();
    cands.push(1500.0);
    collapse_track(&tone_track(pcm, &cands), 8)
}

#[test]
fn unanswered_and_busy_calls_reach_the_mailbox() {
    let scratch = Scratch::new("vm");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let cfg = scratch.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\nmdns = false\nring_timeout_secs = 2\nvoicemail_silence_secs = 1\nvoicemail_max_secs = 20\n"
        ),
    )
    .unwrap();
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    // The caller waits out the greeting, says three tones, then is silent.
    let msg = scratch.join("msg.wav");
    write_wav(
        &msg,
        &tone_sequence(&[
            (0.0, 2500),
            (600.0, 600),
            (900.0, 600),
            (1200.0, 600),
            (0.0, 3000),
        ]),
    )
    .unwrap();
    let agent = |name: &str, input: &str, out: &str| {
        Daemon::start(
            None,
            bin("keyline-agent"),
            &scratch.join(name),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                &listen,
                "--audio-in",
                input,
                "--audio-out",
                out,
            ],
        )
        .unwrap()
    };
    let a_out = scratch.join("a-heard.wav");
    let b_out = scratch.join("b-heard.wav");
    let a = agent("a", msg.to_str().unwrap(), a_out.to_str().unwrap());
    let mut b = agent("b", "tone:1500", b_out.to_str().unwrap());
    let c = agent("c", "tone:1500", "null");
    for (d, ext) in [(&a, "201"), (&b, "202"), (&c, "203")] {
        let code = wait_for("code", Duration::from_secs(10), || {
            jstr(&d.json(&["status"]).ok()?, &["code"])
        });
        ok(&gw, &["approve", &code, "--ext", ext]);
        wait_for("registered", Duration::from_secs(10), || {
            (jstr(&d.json(&["status"]).ok()?, &["ext"])? == ext).then_some(())
        });
    }

    // 201 calls 202, nobody answers: the mailbox takes it.
    ok(&a, &["dial", "202"]);
    wait_for("the mailbox", Duration::from_secs(6), || {
        let calls = gw.json(&["calls"]).ok()?;
        (calls["calls"][0]["state"] == "voicemail").then_some(())
    });
    assert!(status(&b)["call"].is_null(), "202 stops ringing");
    // Silence after the message ends the call.
    let last = wait_for("the message to end", Duration::from_secs(15), || {
        let s = status(&a);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(jstr(&last, &["ended"]).as_deref(), Some("hangup"), "{last}");
    wait_for("message waiting", Duration::from_secs(5), || {
        (jnum(&status(&b), &["voicemail_waiting"])? == 1.0).then_some(())
    });
    let cdr = gw.json(&["cdr"]).unwrap();
    assert!(
        cdr["cdr"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "voicemail"),
        "{cdr}"
    );

    // The stored file: standard tools open it, and it holds the tones.
    let dir = scratch.join("gw").join("voicemail").join("202");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = Command::new("opusinfo")
        .arg(&file)
        .output()
        .expect("opusinfo (Debian package opus-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(heard(&read_ogg_opus(&file).unwrap()), TONES.to_vec());

    // The list, playback on 202's output, and the indicator clears.
    let list = b.json(&["voicemail", "list"]).unwrap();
    let item = &list["voicemails"][0];
    assert_eq!(item["from"], "201");
    let secs = item["secs"].as_f64().unwrap();
    assert!((2.0..6.0).contains(&secs), "{list}");
    let id = item["id"].as_u64().unwrap();
    let out = ok(&b, &["dial", "*97"]);
    assert!(out.contains("playing"), "{out}");
    std::thread::sleep(Duration::from_secs_f64(secs + 1.5));
    assert_eq!(jnum(&status(&b), &["voicemail_waiting"]), Some(0.0));

    // Busy: 203 goes straight to 202's mailbox while 202 talks to 201.
    ok(&a, &["dial", "202"]);
    wait_for("ringing", Duration::from_secs(5), || {
        (jstr(&status(&b), &["call", "state"])? == "alerting").then_some(())
    });
    ok(&b, &["answer"]);
    wait_for("connected", Duration::from_secs(5), || {
        (jstr(&status(&a), &["call", "state"])? == "connected").then_some(())
    });
    ok(&c, &["dial", "202"]);
    wait_for("203 at the mailbox", Duration::from_secs(5), || {
        (jstr(&status(&c), &["call", "state"])? == "connected").then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    ok(&c, &["hangup"]);
    ok(&a, &["hangup"]);
    wait_for("second message", Duration::from_secs(5), || {
        (jnum(&status(&b), &["voicemail_waiting"])? == 1.0).then_some(())
    });

    // Delete the first one.
    ok(&b, &["voicemail", "delete", &id.to_string()]);
    assert!(!b
        .ctl(&["voicemail", "delete", &id.to_string()])
        .status
        .success());
    let list = b.json(&["voicemail", "list"]).unwrap();
    let left = list["voicemails"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{list}");
    assert_eq!(left[0]["from"], "203");
    assert!(!file.exists(), "the deleted message's file is gone");

    // What 202 heard when it played the message: 201's tones.
    assert!(b.stop());
    let played = read_wav_mono48k(&b_out).unwrap();
    let tones = heard(&played);
    assert!(
        tones.windows(3).any(|w| w == TONES),
        "202's playback should hold {TONES:?}, heard {tones:?}"
    );
    // 201 heard the greeting's beep (1000 Hz) before recording.
    let a_pcm = read_wav_mono48k(&a_out).unwrap();
    let beep = collapse_track(&tone_track(&a_pcm, &[660.0, 880.0, 1000.0]), 5);
    assert!(
        beep.ends_with(&[1000.0]) || beep.contains(&1000.0),
        "greeting: {beep:?}"
    );
}
