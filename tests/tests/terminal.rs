//! `keyline-agent terminal`, the standalone internet terminal, with the
//! real programs on loopback: a `keyline-directory` and terminals that log
//! in and register their own numbers (one of them Korean-script). A calls
//! B through the directory, B answers by itself, tones are carried both
//! ways end to end and the directory relays nothing; hang-up ends both
//! ends. An offline number is reported clearly, a text left for an offline
//! terminal is delivered (and stored, then acknowledged) when it
//! registers, a wrong password is reported, and the terminals come back
//! by themselves after the directory restarts. No mDNS anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use keyline_tests::tones::{heard, write_tones, A_TONES, B_TONES, STEP_MS};
use keyline_tests::{
    bin, fails, free_udp_port, idle, jnum, jstr, ok, status, wait_for, wait_state, Daemon, Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";
const KOREAN: &str = "김민준";

/// A directory listening on `listen`, with its state in `scratch/dir`.
fn start_dir(scratch: &Scratch, listen: &str) -> Daemon {
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &["serve", "--listen", listen],
    )
    .expect("start the directory");
    wait_for("the directory to start", Duration::from_secs(15), || {
        jstr(&d.json(&["status"]).ok()?, &["listen"])
    });
    d
}

fn add_user(d: &Daemon, id: &str, numbers: &[&str]) {
    keyline_tests::add_account(&d.state, id, numbers, PW);
}

fn password_file(scratch: &Scratch, name: &str, pw: &str) -> PathBuf {
    let p = scratch.join(&format!("{name}.pw"));
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A terminal logged in as `account` at `dir`, with `extra` arguments.
fn terminal(scratch: &Scratch, name: &str, dir: &str, account: &str, extra: &[&str]) -> Daemon {
    let pw = password_file(scratch, name, PW);
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
    Daemon::start(None, bin("keyline-agent"), &scratch.join(name), &args).expect("start a terminal")
}

/// Wait until a terminal is registered (for the `n`th time at least).
fn registered(d: &Daemon, n: f64) -> Value {
    wait_for("the terminal to register", Duration::from_secs(20), || {
        let s = d.json(&["status"]).ok()?;
        (jstr(&s, &["state"]).as_deref() == Some("registered")
            && jnum(&s, &["registrations"]) >= Some(n))
        .then_some(s)
    })
}

fn relayed_bytes(d: &Daemon) -> f64 {
    jnum(&d.json(&["status"]).unwrap(), &["relay", "bytes"]).unwrap()
}

#[test]
fn two_terminals_call_each_other_through_the_directory() {
    let scratch = Scratch::new("term");
    let dir = start_dir(&scratch, "127.0.0.1:0");
    let st = dir.json(&["status"]).unwrap();
    let (listen, fp) = (
        jstr(&st, &["listen"]).unwrap(),
        jstr(&st, &["fingerprint"]).unwrap(),
    );
    add_user(&dir, "alice", &["1001"]);
    add_user(&dir, "minjun", &[KOREAN, "+82 10 5555 0102"]);
    write_tones(&scratch.join("a.wav"), &A_TONES);
    write_tones(&scratch.join("b.wav"), &B_TONES);
    let (a_out, b_out) = (scratch.join("a-heard.wav"), scratch.join("b-heard.wav"));

    // A pins the directory's fingerprint and binds loopback; B trusts on
    // first use and binds the wildcard address (its candidate is then the
    // address that faces the directory).
    let mut a = terminal(
        &scratch,
        "a",
        &listen,
        "alice",
        &[
            "--directory-fp",
            &fp,
            "--bind",
            "127.0.0.1:0",
            "--audio-in",
            scratch.join("a.wav").to_str().unwrap(),
            "--audio-out",
            a_out.to_str().unwrap(),
        ],
    );
    let mut b = terminal(
        &scratch,
        "b",
        &listen,
        "minjun",
        &[
            "--number",
            KOREAN,
            "--auto-answer",
            "1",
            "--audio-in",
            scratch.join("b.wav").to_str().unwrap(),
            "--audio-out",
            b_out.to_str().unwrap(),
        ],
    );
    let sa = registered(&a, 1.0);
    let sb = registered(&b, 1.0);
    assert_eq!(sa["numbers"], serde_json::json!(["1001"]), "{sa}");
    // Only the number asked for is registered, not the account's other one.
    assert_eq!(sb["numbers"], serde_json::json!([KOREAN]), "{sb}");
    assert_eq!(
        std::fs::read_to_string(scratch.join("b").join("directory.fp"))
            .unwrap()
            .trim(),
        fp,
        "B pinned the directory on first use"
    );
    let bport = jstr(&sb, &["listen"]).unwrap();
    let bport = bport.rsplit(':').next().unwrap();
    assert!(
        sb["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str() == Some(&format!("127.0.0.1:{bport}"))),
        "B registered its own address: {sb}"
    );
    let human = ok(&b, &["status"]);
    assert!(
        human.contains(KOREAN) && human.contains("registered"),
        "{human}"
    );

    let out = ok(&a, &["dial", KOREAN]);
    assert!(out.contains(&format!("ringing {KOREAN}")), "{out}");
    // B rings (the directory asserts A's number), then answers by itself.
    let ring = wait_for("B to ring", Duration::from_secs(5), || {
        let s = status(&b);
        (!s["call"].is_null()).then_some(s)
    });
    assert_eq!(jstr(&ring, &["call", "peer"]).as_deref(), Some("1001"));
    for d in [&a, &b] {
        wait_state(d, "connected");
    }
    let sa = status(&a);
    assert_eq!(sa["call"]["relayed"], Value::Bool(false), "{sa}");
    assert_eq!(jstr(&sa, &["call", "peer"]).as_deref(), Some(KOREAN));
    std::thread::sleep(Duration::from_millis(u64::from(STEP_MS) * 5 + 800));
    let live = status(&b);
    assert!(
        jnum(&live, &["call", "media", "received"]).unwrap() > 100.0,
        "{live}"
    );
    ok(&a, &["record", "on"]);
    std::thread::sleep(Duration::from_millis(300));
    let rec = ok(&a, &["record", "off"]);
    assert!(rec.contains("recorded"), "{rec}");

    ok(&a, &["hangup"]);
    let b_last = idle(&b);
    let a_last = idle(&a);
    assert_eq!(
        jstr(&b_last, &["ended"]).as_deref(),
        Some("hangup"),
        "{b_last}"
    );
    assert_eq!(
        jstr(&a_last, &["ended"]).as_deref(),
        Some("local-hangup"),
        "{a_last}"
    );
    for l in [&a_last, &b_last] {
        let played = jnum(l, &["media", "played"]).unwrap();
        let lost = jnum(l, &["media", "lost"]).unwrap();
        assert!(played > 150.0, "too little audio: {l}");
        assert!(
            lost <= (played + lost) * 0.01,
            "lost {lost} of {played}: {l}"
        );
    }
    assert_eq!(relayed_bytes(&dir), 0.0, "the directory carried media");
    assert!(
        dir.json(&["calls"]).unwrap()["calls"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the directory forgot the call"
    );

    // Stop the terminals so the recordings are complete, then listen.
    assert!(a.stop(), "A did not stop cleanly:\n{}", a.log_text());
    assert!(b.stop(), "B did not stop cleanly:\n{}", b.log_text());
    assert_eq!(heard(&a_out), B_TONES.to_vec(), "what A heard");
    assert_eq!(heard(&b_out), A_TONES.to_vec(), "what B heard");
    // Neither terminal used mDNS.
    for log in [a.log_text(), b.log_text()] {
        assert!(!log.to_lowercase().contains("mdns"), "{log}");
    }
}

#[test]
fn offline_numbers_mail_wrong_password_and_directory_restart() {
    let scratch = Scratch::new("termmail");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let mut dir = start_dir(&scratch, &listen);
    add_user(&dir, "alice", &["1001"]);
    add_user(&dir, "minjun", &[KOREAN]);
    let a = terminal(
        &scratch,
        "a",
        &listen,
        "alice",
        &["--audio-in", "tone:700", "--audio-out", "null"],
    );
    registered(&a, 1.0);

    // The callee's terminal is off: a clear message, at once.
    let t = std::time::Instant::now();
    let e = fails(&a, &["dial", KOREAN]);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(e.contains("offline"), "{e}");
    assert!(e.contains("keyline-agent message"), "{e}");
    assert!(status(&a)["call"].is_null());
    assert_eq!(
        jstr(&status(&a), &["last_call", "ended"]).as_deref(),
        Some("offline")
    );
    let e = fails(&a, &["dial", "nobody"]);
    assert!(e.contains("nobody"), "{e}");

    // Leave a text for the offline terminal.
    let out = ok(&a, &["message", KOREAN, "다시", "전화해", "주세요"]);
    assert!(out.contains("sent"), "{out}");
    assert_eq!(
        dir.json(&["mail", "list"]).unwrap()["mail"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A wrong password is reported in the terminal's status.
    let bad_pw = password_file(&scratch, "m", "not the password");
    let m = Daemon::start(
        None,
        bin("keyline-agent"),
        &scratch.join("m"),
        &[
            "terminal",
            "--directory",
            &listen,
            "--account",
            "minjun",
            "--password-file",
            bad_pw.to_str().unwrap(),
            "--audio-out",
            "null",
            "--audio-in",
            "silence",
        ],
    )
    .unwrap();
    let err = wait_for("a login error", Duration::from_secs(10), || {
        jstr(&m.json(&["status"]).ok()?, &["error"])
    });
    assert!(err.contains("wrong account or password"), "{err}");
    drop(m);

    // B comes online: the text is delivered, stored, acknowledged.
    let b = terminal(
        &scratch,
        "b",
        &listen,
        "minjun",
        &[
            "--auto-answer",
            "0",
            "--audio-in",
            "tone:1300",
            "--audio-out",
            "null",
        ],
    );
    registered(&b, 1.0);
    wait_for("the text to arrive", Duration::from_secs(10), || {
        (jnum(&status(&b), &["messages_waiting"]) == Some(1.0)).then_some(())
    });
    wait_for(
        "the directory to forget it",
        Duration::from_secs(10),
        || {
            dir.json(&["mail", "list"]).ok()?["mail"]
                .as_array()?
                .is_empty()
                .then_some(())
        },
    );
    let msgs = b.json(&["messages"]).unwrap();
    let list = msgs["messages"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{msgs}");
    assert_eq!(list[0]["from"], "1001");
    assert_eq!(list[0]["body"], "다시 전화해 주세요");
    let file = jstr(&list[0], &["file"]).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "다시 전화해 주세요"
    );
    assert!(ok(&b, &["messages"]).contains("no messages"));

    // The directory goes away; both terminals notice and come back.
    assert!(dir.stop(), "the directory did not stop cleanly");
    wait_for("A to notice", Duration::from_secs(15), || {
        (jstr(&status(&a), &["state"]).as_deref() != Some("registered")).then_some(())
    });
    let e = fails(&a, &["dial", KOREAN]);
    assert!(e.contains("not connected to the directory"), "{e}");
    std::thread::sleep(Duration::from_secs(1));
    let dir = start_dir(&scratch, &listen);
    registered(&a, 2.0);
    registered(&b, 2.0);

    // And they can call each other again.
    ok(&a, &["dial", KOREAN]);
    for d in [&a, &b] {
        wait_state(d, "connected");
    }
    wait_for("media both ways", Duration::from_secs(5), || {
        let (sa, sb) = (status(&a), status(&b));
        (jnum(&sa, &["call", "media", "received"])? > 25.0
            && jnum(&sb, &["call", "media", "received"])? > 25.0)
            .then_some(())
    });
    // B hangs up this time.
    ok(&b, &["hangup"]);
    assert_eq!(jstr(&idle(&a), &["ended"]).as_deref(), Some("hangup"));
    idle(&b);
    assert_eq!(relayed_bytes(&dir), 0.0);
}

/// A gateway registered with the directory as `account` (no mDNS), and
/// one station enrolled on it as 201.
fn office(scratch: &Scratch, dir: &str, fp: &str, account: &str) -> (Daemon, Daemon) {
    keyline_tests::office_with_station(
        &scratch.join("office"),
        None,
        &format!("127.0.0.1:{}", free_udp_port()),
        dir,
        fp,
        account,
        PW,
        &["--audio-in", "tone:1300", "--audio-out", "null"],
    )
}

/// Media flowing both ways in the call in progress.
fn media_both_ways(x: &Daemon, y: &Daemon) {
    wait_for("media both ways", Duration::from_secs(8), || {
        let (sx, sy) = (status(x), status(y));
        (jnum(&sx, &["call", "media", "played"])? > 50.0
            && jnum(&sy, &["call", "media", "played"])? > 50.0)
            .then_some(())
    });
}

#[test]
fn a_terminal_and_an_office_call_each_other_both_ways() {
    const OFFICE: &str = "한빛상사";
    let scratch = Scratch::new("termoffice");
    let dir = start_dir(&scratch, &format!("127.0.0.1:{}", free_udp_port()));
    let st = dir.json(&["status"]).unwrap();
    let (listen, fp) = (
        jstr(&st, &["listen"]).unwrap(),
        jstr(&st, &["fingerprint"]).unwrap(),
    );
    add_user(&dir, "office", &[OFFICE]);
    add_user(&dir, "alice", &["1001"]);
    let (_gw, s201) = office(&scratch, &listen, &fp, "office");
    let t = terminal(
        &scratch,
        "t",
        &listen,
        "alice",
        &["--audio-in", "tone:700", "--audio-out", "null"],
    );
    registered(&t, 1.0);

    // The terminal calls the office's 201 directly (OFFICE/EXT).
    let out = ok(&t, &["dial", &format!("{OFFICE}/201")]);
    assert!(out.contains("ringing"), "{out}");
    wait_state(&s201, "alerting");
    assert_eq!(
        jstr(&status(&s201), &["call", "peer"]).as_deref(),
        Some("1001")
    );
    ok(&s201, &["answer"]);
    for d in [&t, &s201] {
        wait_state(d, "connected");
    }
    media_both_ways(&t, &s201);
    ok(&t, &["hangup"]);
    idle(&s201);
    idle(&t);

    // The office's 201 calls the terminal's number.
    ok(&s201, &["dial", "1001"]);
    wait_state(&t, "alerting");
    let peer = jstr(&status(&t), &["call", "peer"]).unwrap();
    assert!(
        peer.starts_with(OFFICE),
        "the office calls as itself: {peer}"
    );
    ok(&t, &["answer"]);
    for d in [&t, &s201] {
        wait_state(d, "connected");
    }
    media_both_ways(&t, &s201);
    ok(&s201, &["hangup"]);
    assert_eq!(jstr(&idle(&t), &["ended"]).as_deref(), Some("hangup"));
    idle(&s201);
    assert_eq!(relayed_bytes(&dir), 0.0, "the directory carried media");
}

/// `keyline-agent passwd` with `input` on its standard input.
fn passwd(d: &Daemon, input: &str) -> Output {
    let mut child = Command::new(&d.bin)
        .arg("--state")
        .arg(&d.state)
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keyline-agent passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the passwords");
    child.wait_with_output().expect("keyline-agent passwd")
}

/// The terminal changes its account's password (the patent's client
/// changes its ID and password): a wrong old password changes nothing; the
/// right one changes it on the directory and in the terminal's password
/// file, the terminal stays registered, the old password is refused from
/// then on, and after a restart the terminal logs in with the new one.
#[test]
fn the_terminal_changes_its_password_and_logs_in_with_it_after_a_restart() {
    let scratch = Scratch::new("tpasswd");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let d = start_dir(&scratch, &listen);
    add_user(&d, "alice", &["1001"]);
    let quiet = ["--audio-in", "silence", "--audio-out", "null"];
    let mut a = terminal(&scratch, "a", &listen, "alice", &quiet);
    registered(&a, 1.0);
    let file = scratch.join("a.pw");

    // The account as the directory knows it: its number, and this
    // terminal as its one device, with the program it runs.
    let acct = a.json(&["account"]).expect("account");
    assert_eq!(
        jstr(&acct, &["account"]).as_deref(),
        Some("alice"),
        "{acct}"
    );
    assert_eq!(acct["numbers"], serde_json::json!(["1001"]), "{acct}");
    let devices = acct["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 1, "{acct}");
    assert_eq!(devices[0]["this"], Value::Bool(true), "{acct}");
    assert_eq!(devices[0]["numbers"], serde_json::json!(["1001"]), "{acct}");
    assert!(
        jstr(&devices[0], &["client"]).is_some_and(|c| c.starts_with("keyline-agent ")),
        "{acct}"
    );
    let said = keyline_tests::ok(&a, &["account"]);
    assert!(said.contains("account alice"), "{said}");
    assert!(said.contains("number 1001"), "{said}");
    assert!(said.contains("(this one)"), "{said}");

    let out = passwd(&a, "not the password\nnew password 42\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong old password must fail");
    assert!(
        err.contains("the old password is wrong; nothing was changed"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{PW}\n"));
    let out = passwd(&a, &format!("{PW}\nshort\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("too short"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{PW}\n"));

    let out = passwd(&a, &format!("{PW}\nnew password 42\n"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("the password was changed"), "{said}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new password 42\n");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // This terminal's own session goes on.
    assert_eq!(jstr(&status(&a), &["state"]).as_deref(), Some("registered"));

    // The old password is refused from now on.
    let m = terminal(&scratch, "m", &listen, "alice", &quiet);
    let err = wait_for("a login error", Duration::from_secs(10), || {
        jstr(&m.json(&["status"]).ok()?, &["error"])
    });
    assert!(err.contains("wrong account or password"), "{err}");
    drop(m);

    // After a restart (no session token kept) the terminal logs in with
    // the password its file now holds.
    assert!(a.stop(), "a did not stop cleanly:\n{}", a.log_text());
    let mut args = vec![
        "terminal",
        "--directory",
        &listen,
        "--account",
        "alice",
        "--password-file",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(&quiet);
    let a2 = Daemon::start(None, bin("keyline-agent"), &scratch.join("a"), &args)
        .expect("restart the terminal");
    registered(&a2, 1.0);
}
