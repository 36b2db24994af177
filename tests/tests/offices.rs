//! Calls between offices through the directory (claims 1, 2 and 6), with
//! real processes on loopback: a `keyline-directory`, and two offices, each
//! a `keyline-gatewayd` registered with it under its office number and
//! stations enrolled on it.
//!
//! Office A's 201 calls office B's number: B's reception (every station,
//! by default) rings, the first to answer takes the call, and the two
//! stations' media runs end to end through both gateways' forwarders and
//! never through the directory. Each side's recording must carry the
//! other's tones in order. `B-NUMBER/201` rings B's 201 alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use keyline_media::{collapse_track, tone_sequence, tone_track, write_wav};
use keyline_tests::tones::{heard, write_tones, A_TONES, B_TONES, STEP_MS};
use keyline_tests::{
    add_account, bin, call_state, fails, free_udp_port, jnum, jstr, ok, registered, status,
    wait_for, wait_state, Daemon, Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";
/// Office A's number, as dialled and as the directory keeps it.
const A_NUMBER: (&str, &str) = ("+82 2 555 0100", "+8225550100");
/// Office B's number: any script is a number.
const B_NUMBER: &str = "한빛상사";

/// A directory with one account per office.
struct Directory {
    d: Daemon,
    addr: String,
    fp: String,
    state: std::path::PathBuf,
    cfg: std::path::PathBuf,
}

impl Directory {
    /// Kill it without warning and start it again on the same state.
    fn crash_and_restart(&mut self, down_for: Duration) {
        let pid = self.d.pid().expect("directory pid");
        let st = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(down_for);
        self.d = Daemon::start(
            None,
            bin("keyline-directory"),
            &self.state,
            &["serve", "--config", self.cfg.to_str().unwrap()],
        )
        .unwrap();
        wait_for("the directory again", Duration::from_secs(15), || {
            self.d.json(&["status"]).ok()
        });
    }
}

fn directory(scratch: &Scratch, accounts: &[(&str, &str)], extra_toml: &str) -> Directory {
    let state = scratch.join("dir");
    for (account, number) in accounts {
        add_account(&state, account, &[number], PW);
    }
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let cfg = scratch.join("directory.toml");
    std::fs::write(&cfg, format!("listen = \"{addr}\"\n{extra_toml}")).unwrap();
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &state,
        &["serve", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let st = wait_for("the directory", Duration::from_secs(15), || {
        d.json(&["status"]).ok()
    });
    let fp = jstr(&st, &["fingerprint"]).expect("directory fingerprint");
    Directory {
        d,
        addr,
        fp,
        state,
        cfg,
    }
}

/// A gateway registered with the directory as `account`.
struct Office {
    gw: Daemon,
    listen: String,
    dir: std::path::PathBuf,
}

fn office(scratch: &Scratch, name: &str, account: &str, dir: &Directory, extra: &str) -> Office {
    let base = scratch.join(name);
    std::fs::create_dir_all(&base).unwrap();
    let pw = base.join("directory.password");
    std::fs::write(&pw, format!("{PW}\n")).unwrap();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let cfg = base.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\nmdns = false\n{extra}\n[directory]\naddress = \"{}\"\n\
             fingerprint = \"{}\"\naccount = \"{account}\"\npassword_file = \"{}\"\n",
            dir.addr,
            dir.fp,
            pw.display()
        ),
    )
    .unwrap();
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &base.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    wait_for("the office to register", Duration::from_secs(15), || {
        let st = gw.json(&["status"]).ok()?;
        (jstr(&st, &["directory", "state"])? == "registered").then_some(())
    });
    Office {
        gw,
        listen,
        dir: base,
    }
}

impl Office {
    /// A station enrolled as `ext`, playing `input` and recording what it
    /// hears.
    fn station(&self, ext: &str, input: &str) -> Daemon {
        let out = self.dir.join(format!("{ext}-heard.wav"));
        let d = Daemon::start(
            None,
            bin("keyline-agent"),
            &self.dir.join(format!("agent-{ext}")),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                &self.listen,
                "--audio-in",
                input,
                "--audio-out",
                out.to_str().unwrap(),
            ],
        )
        .unwrap();
        let code = wait_for("a pairing code", Duration::from_secs(10), || {
            jstr(&d.json(&["status"]).ok()?, &["code"])
        });
        ok(&self.gw, &["approve", &code, "--ext", ext]);
        registered(&d, ext);
        d
    }
}

/// Why an outside call from `d` to `number` did not connect: the dial
/// fails at once, or (when the far office refuses after its directory said
/// it rings) the call ends within seconds.
fn refused(d: &Daemon, number: &str) -> String {
    let out = d.ctl(&["dial", number]);
    if !out.status.success() {
        return String::from_utf8_lossy(&out.stderr).to_string();
    }
    let s = wait_for("the call to end", Duration::from_secs(6), || {
        let s = status(d);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert!(
        jnum(&s, &["media", "played"]).unwrap_or(0.0) == 0.0,
        "it connected: {s}"
    );
    jstr(&s, &["ended"]).unwrap_or_default()
}

fn wait_connected(d: &Daemon) {
    wait_state(d, "connected");
}

#[test]
fn two_offices_call_end_to_end_through_their_gateways() {
    let scratch = Scratch::new("offices");
    write_tones(&scratch.join("a.wav"), &A_TONES);
    write_tones(&scratch.join("b.wav"), &B_TONES);
    let a_wav = scratch.join("a.wav");
    let b_wav = scratch.join("b.wav");
    let dir = directory(
        &scratch,
        &[("office-a", A_NUMBER.0), ("office-b", B_NUMBER)],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let b = office(&scratch, "b", "office-b", &dir, "");
    let mut a201 = a.station("201", a_wav.to_str().unwrap());
    let mut b201 = b.station("201", "silence");
    let mut b202 = b.station("202", b_wav.to_str().unwrap());

    // A's 201 calls B's office number: B's reception (everyone) rings,
    // showing A's office number as the caller.
    ok(&a201, &["dial", B_NUMBER]);
    for d in [&b201, &b202] {
        wait_state(d, "alerting");
        assert_eq!(
            jstr(&status(d), &["call", "peer"]).as_deref(),
            Some(A_NUMBER.1)
        );
    }
    assert_eq!(call_state(&a201).as_deref(), Some("ringing"));
    ok(&b202, &["answer"]);
    wait_connected(&a201);
    wait_connected(&b202);
    // The other member stopped ringing.
    wait_for("201 to stop ringing", Duration::from_secs(5), || {
        call_state(&b201).is_none().then_some(())
    });
    let calls = a.gw.json(&["calls"]).unwrap();
    assert_eq!(calls["calls"][0]["outside"], Value::Bool(true), "{calls}");
    assert_eq!(
        calls["calls"][0]["callee"].as_str(),
        Some(B_NUMBER),
        "{calls}"
    );
    std::thread::sleep(Duration::from_millis(u64::from(STEP_MS) * 5 + 800));
    ok(&a201, &["hangup"]);
    let b_last = wait_for("B to see the hang-up", Duration::from_secs(5), || {
        let s = status(&b202);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(jstr(&b_last, &["ended"]).as_deref(), Some("hangup"));
    let a_last = status(&a201)["last_call"].clone();
    for l in [&a_last, &b_last] {
        let played = jnum(l, &["media", "played"]).unwrap();
        let lost = jnum(l, &["media", "lost"]).unwrap();
        assert!(played > 150.0, "too little audio: {l}");
        assert!(
            lost <= (played + lost) * 0.01,
            "lost {lost} of {played}: {l}"
        );
        assert_eq!(l["relayed"], Value::Bool(true), "{l}");
    }

    // The media ran end to end through both gateways' forwarders, and the
    // directory carried none of it.
    let sent =
        jnum(&a_last, &["media", "sent"]).unwrap() + jnum(&b_last, &["media", "sent"]).unwrap();
    for o in [&a, &b] {
        let st = o.gw.json(&["status"]).unwrap();
        let pkts = jnum(&st, &["relay", "packets"]).unwrap();
        // A sender that runs late packs the frames it has into one QUIC
        // packet (seen at 2 per packet on a loaded machine), so this is a
        // floor, not an equality.
        assert!(
            pkts * 4.0 >= sent,
            "forwarded {pkts} packets for {sent} frames: {st}"
        );
    }
    let st = dir.d.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");

    // Both offices wrote a call record naming the other side's number.
    let cdr = |o: &Office| {
        wait_for("the call record", Duration::from_secs(5), || {
            let c = o.gw.json(&["cdr"]).ok()?;
            c["cdr"]
                .as_array()?
                .iter()
                .find(|r| r["outcome"] == "answered")
                .cloned()
        })
    };
    let (ra, rb) = (cdr(&a), cdr(&b));
    assert_eq!(
        (ra["caller"].as_str(), ra["callee"].as_str()),
        (Some("201"), Some(B_NUMBER))
    );
    assert_eq!(
        (rb["caller"].as_str(), rb["callee"].as_str()),
        (Some(A_NUMBER.1), Some("202"))
    );

    // OFFICE/EXT rings that extension alone.
    ok(&a201, &["dial", &format!("{B_NUMBER}/201")]);
    wait_state(&b201, "alerting");
    assert!(call_state(&b202).is_none());
    ok(&b201, &["answer"]);
    wait_connected(&a201);
    wait_connected(&b201);
    ok(&b201, &["hangup"]);
    wait_for("A to see the hang-up", Duration::from_secs(5), || {
        call_state(&a201).is_none().then_some(())
    });

    // Stop the stations so their recordings are complete, then listen.
    assert!(a201.stop(), "{}", a201.log_text());
    assert!(b202.stop(), "{}", b202.log_text());
    assert!(b201.stop(), "{}", b201.log_text());
    assert_eq!(heard(&a.dir.join("201-heard.wav"))[..5], B_TONES);
    assert_eq!(heard(&b.dir.join("202-heard.wav")), A_TONES.to_vec());
}

#[test]
fn outside_calls_that_cannot_connect_say_why() {
    let scratch = Scratch::new("offices-err");
    let dir = directory(
        &scratch,
        &[
            ("office-a", A_NUMBER.0),
            ("office-b", B_NUMBER),
            ("carol", "carol"),
        ],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let a201 = a.station("201", "silence");
    // Nobody has this number.
    let e = fails(&a201, &["dial", "nobody-at-all"]);
    assert!(e.contains("unknown number"), "{e}");
    // Carol exists but nothing is registered for her.
    let e = fails(&a201, &["dial", "carol"]);
    assert!(e.contains("unreachable"), "{e}");
    // An extension-shaped number never goes outside.
    let e = fails(&a201, &["dial", "299"]);
    assert!(e.contains("unknown number"), "{e}");
    // B is up but has no extension 250; B with nobody free is busy.
    let b = office(&scratch, "b", "office-b", &dir, "");
    let e = refused(&a201, &format!("{B_NUMBER}/250"));
    assert!(e.contains("rejected") || e.contains("declined"), "{e}");
    let e = refused(&a201, B_NUMBER);
    assert!(e.contains("busy"), "{e}");
    // The line is free after every failure.
    assert!(call_state(&a201).is_none());
    drop(b);
    // An office without a directory keeps outside numbers out.
    let solo = keyline_tests::LoopbackOffice::start("offices-solo", &[]);
    let s = solo.agent("s201", &["--audio-in", "silence", "--audio-out", "null"]);
    solo.enrol(&s, "201");
    let e = fails(&s, &["dial", B_NUMBER]);
    assert!(e.contains("unknown number"), "{e}");
    let st = solo.gw.json(&["status"]).unwrap();
    assert_eq!(jstr(&st, &["directory", "state"]).as_deref(), Some("off"));
}

#[test]
fn an_outside_caller_nobody_answers_leaves_a_voicemail_at_the_office() {
    let scratch = Scratch::new("offices-vm");
    // The caller waits out the greeting, says three tones, then is silent.
    let tones = [600.0f32, 900.0, 1200.0];
    let msg = [
        (0.0, 2500),
        (600.0, 600),
        (900.0, 600),
        (1200.0, 600),
        (0.0, 3000),
    ];
    write_wav(&scratch.join("a.wav"), &tone_sequence(&msg)).unwrap();
    let dir = directory(
        &scratch,
        &[("office-a", A_NUMBER.0), ("office-b", B_NUMBER)],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    // B: 202 is reception and keeps the office mailbox; short timeouts.
    let b = office(
        &scratch,
        "b",
        "office-b",
        &dir,
        "ring_timeout_secs = 2\nvoicemail_silence_secs = 1\nvoicemail_max_secs = 20\n\
         reception = [\"202\"]\n",
    );
    let a201 = a.station("201", scratch.join("a.wav").to_str().unwrap());
    let b202 = b.station("202", "silence");

    // A's 201 calls B's office; 202 does not answer: the office mailbox
    // takes the call, with the gateway of B as the media end.
    ok(&a201, &["dial", B_NUMBER]);
    wait_state(&b202, "alerting");
    wait_for("B's mailbox", Duration::from_secs(8), || {
        let calls = b.gw.json(&["calls"]).ok()?;
        (calls["calls"][0]["state"] == "voicemail").then_some(())
    });
    wait_for("202 to stop ringing", Duration::from_secs(5), || {
        call_state(&b202).is_none().then_some(())
    });
    // Silence after the message ends the call; A's station sees it end.
    let last = wait_for("the message to end", Duration::from_secs(20), || {
        let s = status(&a201);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(jstr(&last, &["ended"]).as_deref(), Some("hangup"), "{last}");
    wait_for("message waiting", Duration::from_secs(5), || {
        (jnum(&status(&b202), &["voicemail_waiting"])? == 1.0).then_some(())
    });
    let list = b202.json(&["voicemail", "list"]).unwrap();
    assert_eq!(list["voicemails"][0]["from"], A_NUMBER.1, "{list}");
    // The stored message holds A's tones.
    let vm_dir = b.dir.join("gw").join("voicemail").join("202");
    let file = std::fs::read_dir(&vm_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let pcm = keyline_media::read_ogg_opus(&file).unwrap();
    let got = collapse_track(&tone_track(&pcm, &tones), 8);
    assert_eq!(got, tones.to_vec());
    // The directory carried none of it.
    let st = dir.d.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");
}

/// A call between the two offices: A's 201 dials B's office, B's 202
/// answers; both hear audio; hang up. Returns both stations' last calls.
fn call_across(a201: &Daemon, b202: &Daemon) -> (Value, Value) {
    ok(a201, &["dial", B_NUMBER]);
    wait_state(b202, "alerting");
    ok(b202, &["answer"]);
    wait_connected(a201);
    wait_connected(b202);
    std::thread::sleep(Duration::from_millis(1500));
    ok(a201, &["hangup"]);
    let b_last = wait_for("B to see the hang-up", Duration::from_secs(5), || {
        let s = status(b202);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    let a_last = status(a201)["last_call"].clone();
    for l in [&a_last, &b_last] {
        let played = jnum(l, &["media", "played"]).unwrap();
        assert!(played > 40.0, "too little audio: {l}");
    }
    (a_last, b_last)
}

#[test]
fn with_the_relay_rule_the_directory_forwards_the_media_it_cannot_read() {
    let scratch = Scratch::new("offices-relay");
    let dir = directory(
        &scratch,
        &[("office-a", A_NUMBER.0), ("office-b", B_NUMBER)],
        "direct_connect = \"relay\"\n",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let b = office(&scratch, "b", "office-b", &dir, "");
    let a201 = a.station("201", "tone:440");
    let b202 = b.station("202", "tone:880");
    call_across(&a201, &b202);
    // The packets went station → A's forwarder → the directory's relay →
    // B's forwarder → station, and back.
    let st = dir.d.json(&["status"]).unwrap();
    assert!(jnum(&st, &["relay", "bytes"]).unwrap() > 10_000.0, "{st}");
    for o in [&a, &b] {
        let st = o.gw.json(&["status"]).unwrap();
        assert!(jnum(&st, &["relay", "packets"]).unwrap() > 100.0, "{st}");
    }
}

#[test]
fn offices_register_again_after_the_directory_crashes() {
    let scratch = Scratch::new("offices-crash");
    let mut dir = directory(
        &scratch,
        &[("office-a", A_NUMBER.0), ("office-b", B_NUMBER)],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let b = office(&scratch, "b", "office-b", &dir, "");
    let a201 = a.station("201", "tone:440");
    let b202 = b.station("202", "tone:880");
    call_across(&a201, &b202);
    dir.crash_and_restart(Duration::from_millis(1500));
    // A vanished directory is noticed within the directory connection's
    // idle timeout (3 s); the offices say so and try again a second later,
    // each when it noticed: both are watched at once (one after the other
    // would miss a window that closed while waiting for the first).
    let mut noticed = [false, false];
    wait_for("the offices to notice", Duration::from_secs(15), || {
        for (seen, o) in noticed.iter_mut().zip([&a, &b]) {
            let st = o.gw.json(&["status"]).ok()?;
            *seen |= jstr(&st, &["directory", "state"])? == "connecting";
        }
        (noticed == [true, true]).then_some(())
    });
    for o in [&a, &b] {
        wait_for(
            "the office to register again",
            Duration::from_secs(20),
            || {
                let st = o.gw.json(&["status"]).ok()?;
                (jstr(&st, &["directory", "state"])? == "registered").then_some(())
            },
        );
    }
    // Internal calls never depended on it, and outside calls work again.
    call_across(&a201, &b202);
}

/// A standalone terminal logged in as `account`, answering by itself.
fn terminal(scratch: &Scratch, dir: (&str, &str), account: &str) -> Daemon {
    let (addr, fp) = dir;
    let pw = scratch.join(&format!("{account}.password"));
    std::fs::write(&pw, format!("{PW}\n")).unwrap();
    let d = Daemon::start(
        None,
        bin("keyline-agent"),
        &scratch.join(&format!("term-{account}")),
        &[
            "terminal",
            "--directory",
            addr,
            "--directory-fp",
            fp,
            "--account",
            account,
            "--password-file",
            pw.to_str().unwrap(),
            "--auto-answer",
            "0",
            "--audio-in",
            "tone:1000",
            "--audio-out",
            "null",
        ],
    )
    .unwrap();
    wait_for("the terminal to register", Duration::from_secs(20), || {
        (jstr(&d.json(&["status"]).ok()?, &["state"])? == "registered").then_some(())
    });
    d
}

#[test]
fn forwards_and_transfers_reach_outside_numbers() {
    let scratch = Scratch::new("offices-fwd");
    let dir = directory(
        &scratch,
        &[
            ("office-a", A_NUMBER.0),
            ("office-b", B_NUMBER),
            ("carol", "carol"),
        ],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let b = office(&scratch, "b", "office-b", &dir, "");
    let carol = terminal(&scratch, (&dir.addr, &dir.fp), "carol");
    let a201 = a.station("201", "tone:440");
    let a202 = a.station("202", "tone:660");
    let b202 = b.station("202", "tone:880");

    // B's 202 forwards everything to carol (an outside number): A's call
    // to B/202 is sent on by B's gateway and A's follows it to carol.
    ok(&b202, &["dial", "*72carol"]);
    wait_for("the setting", Duration::from_secs(5), || {
        (jstr(&status(&b202), &["settings", "forward_always"])? == "carol").then_some(())
    });
    ok(&a201, &["dial", &format!("{B_NUMBER}/202")]);
    wait_connected(&a201);
    wait_state(&carol, "connected");
    assert!(call_state(&b202).is_none());
    let rows = b.gw.json(&["cdr"]).unwrap();
    assert!(
        rows["cdr"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "redirected" && r["callee"] == "carol"),
        "{rows}"
    );
    ok(&a201, &["hangup"]);
    wait_for("carol to see the hang-up", Duration::from_secs(5), || {
        call_state(&carol).is_none().then_some(())
    });
    ok(&b202, &["dial", "*73"]);

    // A's 202 hands its caller 201 on to carol: 201 continues with carol,
    // through A's forwarder, and 202 is free.
    ok(&a201, &["dial", "202"]);
    wait_state(&a202, "alerting");
    ok(&a202, &["answer"]);
    wait_connected(&a201);
    ok(&a202, &["transfer", "carol"]);
    wait_for("202 to be free", Duration::from_secs(8), || {
        call_state(&a202).is_none().then_some(())
    });
    wait_state(&carol, "connected");
    wait_connected(&a201);
    assert_eq!(
        jstr(&status(&a201), &["call", "peer"]).as_deref(),
        Some("carol")
    );
    std::thread::sleep(Duration::from_millis(800));
    let played = jnum(&status(&carol), &["call", "media", "played"]).unwrap_or(0.0);
    assert!(played > 10.0, "{}", status(&carol));
    ok(&carol, &["hangup"]);
    wait_for("201 to see the hang-up", Duration::from_secs(5), || {
        call_state(&a201).is_none().then_some(())
    });
    // A transfer to a number nobody answers gives the call back.
    ok(&a201, &["dial", "202"]);
    wait_state(&a202, "alerting");
    ok(&a202, &["answer"]);
    wait_connected(&a201);
    ok(&a202, &["transfer", "nobody-at-all"]);
    wait_for("the call to come back", Duration::from_secs(8), || {
        let calls = a.gw.json(&["calls"]).ok()?;
        let c = calls["calls"].as_array()?;
        (c.len() == 1 && c[0]["state"] == "answered").then_some(())
    });
    wait_connected(&a202);
    assert_eq!(call_state(&a201).as_deref(), Some("connected"));
}

#[test]
fn texts_reach_outside_numbers_and_the_office() {
    let scratch = Scratch::new("offices-text");
    let dir = directory(&scratch, &[("office-b", B_NUMBER), ("carol", "carol")], "");
    let b = office(&scratch, "b", "office-b", &dir, "reception = [\"202\"]\n");
    let b202 = b.station("202", "silence");
    let b203 = b.station("203", "silence");
    let carol = terminal(&scratch, (&dir.addr, &dir.fp), "carol");

    // A station texts an outside number: the directory delivers it, from
    // the office number.
    ok(&b203, &["message", "carol", "the parcel is here"]);
    let got = wait_for("carol's message", Duration::from_secs(10), || {
        let m = carol.json(&["messages"]).ok()?;
        m["messages"].as_array()?.first().cloned()
    });
    assert_eq!(got["from"], B_NUMBER, "{got}");
    assert_eq!(got["body"], "the parcel is here", "{got}");
    // An unknown outside number is refused clearly; an unknown extension
    // too, without a trip outside.
    let e = fails(&b203, &["message", "nobody-at-all", "hello"]);
    assert!(e.contains("nobody"), "{e}");
    let e = fails(&b203, &["message", "299", "hello"]);
    assert!(e.contains("unknown number 299"), "{e}");

    // Carol texts the office: the office mailbox's extension gets it, and
    // the directory lets go of it once the office has it.
    ok(&carol, &["message", B_NUMBER, "please call me"]);
    let got = wait_for("the office's message", Duration::from_secs(10), || {
        let m = b202.json(&["messages"]).ok()?;
        m["messages"].as_array()?.first().cloned()
    });
    assert_eq!(got["from"], "carol", "{got}");
    assert_eq!(got["body"], "please call me", "{got}");
    wait_for("the directory to let go", Duration::from_secs(5), || {
        let l = dir.d.json(&["mail", "list"]).ok()?;
        l["mail"].as_array()?.is_empty().then_some(())
    });

    // A voice message left with the directory for the office lands in the
    // office mailbox as Ogg Opus, and plays back as what was said.
    let ogg = scratch.join("message.opus");
    let mut w = keyline_media::OggOpusWriter::create(&ogg).unwrap();
    for chunk in tone_sequence(&[(600.0, 600), (900.0, 600), (0.0, 200)]).chunks(960) {
        let mut frame = chunk.to_vec();
        frame.resize(960, 0);
        w.write_frame(&frame).unwrap();
    }
    w.finish().unwrap();
    let body = std::fs::read(&ogg).unwrap();
    leave_voice_mail(&scratch, &dir, "carol", B_NUMBER, &body);
    wait_for("message waiting", Duration::from_secs(10), || {
        (jnum(&status(&b202), &["voicemail_waiting"])? == 1.0).then_some(())
    });
    let list = b202.json(&["voicemail", "list"]).unwrap();
    assert_eq!(list["voicemails"][0]["from"], "carol", "{list}");
    let vm_dir = b.dir.join("gw").join("voicemail").join("202");
    let file = std::fs::read_dir(&vm_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let pcm = keyline_media::read_ogg_opus(&file).unwrap();
    assert_eq!(
        collapse_track(&tone_track(&pcm, &[600.0, 900.0]), 8),
        vec![600.0, 900.0]
    );
    wait_for("the directory to let go", Duration::from_secs(5), || {
        let l = dir.d.json(&["mail", "list"]).ok()?;
        l["mail"].as_array()?.is_empty().then_some(())
    });
}

/// Leave a voice message for `to` as `account`, with the client library.
fn leave_voice_mail(scratch: &Scratch, dir: &Directory, account: &str, to: &str, body: &[u8]) {
    use keyline_dirclient::client::DirClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(scratch.join("mailer")).unwrap();
        let id = keyline_net::Identity::load_or_create(&scratch.join("mailer"), "mailer").unwrap();
        let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
        let (c, _events) =
            DirClient::connect(&ep, &id, dir.addr.parse().unwrap(), Some(dir.fp.clone()))
                .await
                .unwrap();
        c.login(account, PW).await.unwrap();
        c.leave_mail(
            &keyline_tests::number(to),
            keyline_proto::dir::MailKind::Voice,
            body,
            None,
        )
        .await
        .unwrap();
        c.close();
    });
}

#[test]
fn a_hunt_group_rings_the_office_in_turn() {
    let scratch = Scratch::new("offices-hunt");
    let dir = directory(
        &scratch,
        &[("office-a", A_NUMBER.0), ("office-b", B_NUMBER)],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let b = office(&scratch, "b", "office-b", &dir, "voicemail = false\n");
    let a201 = a.station("201", "tone:440");
    let b202 = b.station("202", "tone:880");
    let b203 = b.station("203", "tone:990");

    let e = fails(&b.gw, &["ring-group", "set", "--hunt", "203", "299"]);
    assert!(e.contains("299 is not an extension here"), "{e}");
    ok(
        &b.gw,
        &["ring-group", "set", "--hunt", "--step", "1", "203", "202"],
    );
    let g = b.gw.json(&["ring-group", "show"]).unwrap();
    assert_eq!(g["mode"], "hunt", "{g}");
    assert_eq!(g["members"], serde_json::json!(["203", "202"]), "{g}");

    // 203 rings alone; when it does not answer, 202 gets its turn.
    ok(&a201, &["dial", B_NUMBER]);
    wait_state(&b203, "alerting");
    assert!(call_state(&b202).is_none());
    wait_state(&b202, "alerting");
    assert!(call_state(&b203).is_none(), "203 stopped ringing");
    ok(&b202, &["answer"]);
    wait_connected(&a201);
    ok(&a201, &["hangup"]);
    wait_for("B to see the hang-up", Duration::from_secs(5), || {
        call_state(&b202).is_none().then_some(())
    });

    // Ring all, then back to the config file's default (everyone).
    ok(&b.gw, &["ring-group", "set", "203", "202"]);
    ok(&a201, &["dial", B_NUMBER]);
    wait_state(&b202, "alerting");
    wait_state(&b203, "alerting");
    ok(&b203, &["answer"]);
    wait_connected(&a201);
    ok(&a201, &["hangup"]);
    wait_for("B to see the hang-up", Duration::from_secs(5), || {
        call_state(&b203).is_none().then_some(())
    });
    ok(&b.gw, &["ring-group", "clear"]);
    let g = b.gw.json(&["ring-group", "show"]).unwrap();
    assert_eq!(g["source"], "config", "{g}");
    // `status` shows the ring group in force.
    ok(&b.gw, &["ring-group", "set", "--hunt", "202"]);
    let st = b.gw.json(&["status"]).unwrap();
    assert_eq!(st["ring_group"]["members"], serde_json::json!(["202"]));
}

#[test]
fn an_outside_caller_is_handed_on_and_connects_there_directly() {
    // Claim 5: the callee passes the caller on to a third number, and the
    // caller's end connects there directly (the office is out of the call).
    let scratch = Scratch::new("offices-handoff");
    let dir = directory(
        &scratch,
        &[
            ("office-a", A_NUMBER.0),
            ("office-b", B_NUMBER),
            ("carol", "carol"),
        ],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let b = office(&scratch, "b", "office-b", &dir, "reception = [\"202\"]\n");
    let carol = terminal(&scratch, (&dir.addr, &dir.fp), "carol");
    let a201 = a.station("201", "tone:440");
    let b202 = b.station("202", "tone:880");
    let b203 = b.station("203", "tone:990");
    let heard = |d: &Daemon| jnum(&status(d), &["call", "media", "played"]).unwrap_or(0.0);

    // A's 201 reaches B's reception, 202.
    ok(&a201, &["dial", B_NUMBER]);
    wait_state(&b202, "alerting");
    ok(&b202, &["answer"]);
    wait_connected(&a201);
    // 202 hands the caller on to 203: A's end calls B/203 itself.
    ok(&b202, &["transfer", "203"]);
    wait_for("202 to be free", Duration::from_secs(5), || {
        call_state(&b202).is_none().then_some(())
    });
    wait_state(&b203, "alerting");
    assert_eq!(
        jstr(&status(&b203), &["call", "peer"]).as_deref(),
        Some(A_NUMBER.1)
    );
    ok(&b203, &["answer"]);
    wait_connected(&a201);
    wait_connected(&b203);
    wait_for("audio from 203", Duration::from_secs(5), || {
        (heard(&a201) > 20.0).then_some(())
    });

    // 203 hands the caller on to carol, outside: A's end calls carol
    // directly and office B is out of it.
    ok(&b203, &["transfer", "carol"]);
    wait_state(&carol, "connected");
    wait_connected(&a201);
    assert_eq!(
        jstr(&status(&a201), &["call", "peer"]).as_deref(),
        Some("carol")
    );
    assert!(call_state(&b203).is_none());
    wait_for("B to be out of it", Duration::from_secs(5), || {
        let calls = b.gw.json(&["calls"]).ok()?;
        calls["calls"].as_array()?.is_empty().then_some(())
    });
    wait_for("audio from carol", Duration::from_secs(5), || {
        (heard(&a201) > 20.0).then_some(())
    });

    // A standalone terminal hands on too: carol sends 201 to B/202.
    ok(&carol, &["transfer", &format!("{B_NUMBER}/202")]);
    wait_state(&b202, "alerting");
    ok(&b202, &["answer"]);
    wait_connected(&a201);
    wait_connected(&b202);
    assert!(call_state(&carol).is_none());
    ok(&a201, &["hangup"]);
    wait_for("202 to see the hang-up", Duration::from_secs(5), || {
        call_state(&b202).is_none().then_some(())
    });
    // The directory never carried the media.
    let st = dir.d.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");
}

#[test]
fn an_office_may_ask_for_the_relay_on_the_calls_it_places() {
    let scratch = Scratch::new("offices-rule");
    let dir = directory(
        &scratch,
        &[("office-a", A_NUMBER.0), ("office-b", B_NUMBER)],
        "",
    );
    let a = office(
        &scratch,
        "a",
        "office-a",
        &dir,
        "direct_connect = \"relay\"\n",
    );
    let b = office(&scratch, "b", "office-b", &dir, "");
    let a201 = a.station("201", "tone:440");
    let b202 = b.station("202", "tone:880");
    // The directory's rule is direct-then-relay; office A wants the relay.
    call_across(&a201, &b202);
    let st = dir.d.json(&["status"]).unwrap();
    assert!(jnum(&st, &["relay", "bytes"]).unwrap() > 10_000.0, "{st}");
    // A bad rule is refused by check-config, naming the field.
    let bad = scratch.join("bad.toml");
    std::fs::write(&bad, "direct_connect = \"sometimes\"\n").unwrap();
    let out = Command::new(bin("keyline-gatewayd"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("direct_connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_standalone_office_runs_its_own_directory_for_outside_terminals() {
    let scratch = Scratch::new("offices-embedded");
    let base = scratch.join("solo");
    std::fs::create_dir_all(&base).unwrap();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let dir_listen = format!("127.0.0.1:{}", free_udp_port());
    let cfg = base.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\nmdns = false\n\n[embedded_directory]\n\
             listen = \"{dir_listen}\"\nnumber = \"Front Desk\"\n"
        ),
    )
    .unwrap();
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &base.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    wait_for("the office to register", Duration::from_secs(20), || {
        let st = gw.json(&["status"]).ok()?;
        (jstr(&st, &["directory", "state"])? == "registered").then_some(())
    });
    // The admin gives an outside user an account on the office's directory.
    let dir_state = base.join("gw").join("directory");
    add_account(&dir_state, "carol", &["carol"], PW);
    let fp = keyline_tests::directory_fingerprint(&dir_state);
    let carol = terminal(&scratch, (&dir_listen, &fp), "carol");
    let office = Office {
        gw,
        listen,
        dir: base,
    };
    let s201 = office.station("201", "tone:440");

    // Carol calls the office number; the station answers.
    ok(&carol, &["dial", "Front Desk"]);
    wait_state(&s201, "alerting");
    ok(&s201, &["answer"]);
    wait_state(&carol, "connected");
    wait_connected(&s201);
    ok(&carol, &["hangup"]);
    wait_for(
        "the station to see the hang-up",
        Duration::from_secs(5),
        || call_state(&s201).is_none().then_some(()),
    );
    // And the office calls carol.
    ok(&s201, &["dial", "carol"]);
    wait_state(&carol, "connected");
    wait_connected(&s201);
    ok(&s201, &["hangup"]);
}

#[test]
fn handed_on_callers_come_back_and_attended_transfers_take_outside_callers_over() {
    // Item 1 of the office features with an outside party on the line: a
    // blind hand-off nobody answers comes back; an attended one hands the
    // caller into the consultation; one that consulted an outside number
    // sends the caller there directly. Short codes reach outside numbers.
    let scratch = Scratch::new("offices-attended");
    let dir = directory(
        &scratch,
        &[
            ("office-a", A_NUMBER.0),
            ("office-b", B_NUMBER),
            ("carol", "carol"),
        ],
        "",
    );
    let a = office(&scratch, "a", "office-a", &dir, "");
    let b = office(
        &scratch,
        "b",
        "office-b",
        &dir,
        "reception = [\"202\"]\nring_timeout_secs = 3\n",
    );
    let carol = terminal(&scratch, (&dir.addr, &dir.fp), "carol");
    let a201 = a.station("201", "tone:440");
    let b202 = b.station("202", "tone:880");
    let b203 = b.station("203", "tone:990");
    let peer = |d: &Daemon| jstr(&status(d), &["call", "peer"]);
    let heard = |d: &Daemon| jnum(&status(d), &["call", "media", "played"]).unwrap_or(0.0);
    let audio = |d: &Daemon, what: &str| {
        wait_for(what, Duration::from_secs(5), || {
            (heard(d) > 20.0).then_some(())
        })
    };

    ok(&a201, &["dial", B_NUMBER]);
    wait_state(&b202, "alerting");
    ok(&b202, &["answer"]);
    wait_connected(&a201);

    // Blind, to 203, which does not answer: the caller comes back to 202.
    ok(&b202, &["transfer", "203"]);
    wait_state(&b203, "alerting");
    assert!(call_state(&b202).is_none());
    wait_state(&b202, "alerting");
    assert!(call_state(&b203).is_none());
    assert_eq!(peer(&b202).as_deref(), Some(A_NUMBER.1));
    ok(&b202, &["answer"]);
    wait_connected(&a201);
    audio(&a201, "audio from 202 again");

    // Attended: 202 holds the caller and consults 203, then completes.
    ok(&b202, &["transfer", "--consult", "203"]);
    wait_state(&b203, "alerting");
    ok(&b203, &["answer"]);
    wait_for("the consultation", Duration::from_secs(5), || {
        (jstr(&status(&b202), &["consult", "state"])? == "connected").then_some(())
    });
    let out = ok(&b202, &["transfer", "--complete"]);
    assert!(out.contains("handed on to 203"), "{out}");
    // The caller's end calls B/203 with the hand-off and takes over the
    // consultation: 203 does not ring again, 202 drops out.
    wait_for("203 to talk to the caller", Duration::from_secs(10), || {
        (peer(&b203)? == A_NUMBER.1 && call_state(&b203)? == "connected").then_some(())
    });
    wait_for("202 to be free", Duration::from_secs(5), || {
        call_state(&b202).is_none().then_some(())
    });
    wait_connected(&a201);
    audio(&a201, "audio from 203");
    audio(&b203, "audio from 201 at 203");

    // Attended to an outside number: the consultation with carol (who
    // answers at once) ends and the caller's end calls carol directly.
    ok(&b203, &["transfer", "--consult", "carol"]);
    wait_for(
        "the consultation with carol",
        Duration::from_secs(10),
        || (jstr(&status(&b203), &["consult", "state"])? == "connected").then_some(()),
    );
    ok(&b203, &["transfer", "--complete"]);
    wait_for("203 to be free", Duration::from_secs(5), || {
        call_state(&b203).is_none().then_some(())
    });
    wait_for("the caller to reach carol", Duration::from_secs(10), || {
        let s = status(&carol);
        (jstr(&s, &["call", "state"])? == "connected" && jstr(&s, &["call", "peer"])? == A_NUMBER.1)
            .then_some(())
    });
    wait_connected(&a201);
    assert_eq!(peer(&a201).as_deref(), Some("carol"));
    audio(&a201, "audio from carol");
    wait_for("B to be out of it", Duration::from_secs(5), || {
        let calls = b.gw.json(&["calls"]).ok()?;
        calls["calls"].as_array()?.is_empty().then_some(())
    });
    ok(&a201, &["hangup"]);
    wait_for("carol to see the hang-up", Duration::from_secs(5), || {
        call_state(&carol).is_none().then_some(())
    });

    // A short code for an outside number dials out.
    ok(&b.gw, &["speed-dial", "set", "*5", "carol"]);
    ok(&b202, &["dial", "*5"]);
    wait_connected(&b202);
    assert_eq!(
        jstr(&status(&carol), &["call", "peer"]).as_deref(),
        Some(B_NUMBER)
    );
    audio(&b202, "audio from carol at 202");
    ok(&b202, &["hangup"]);

    // The directory never carried the media.
    let st = dir.d.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");
}
