//! A full disk under the gateway: its state directory is a small tmpfs
//! (mounted here, unmounted on the way out) filled to the last byte.
//! Calls between stations go on (their media never touches the disk) and
//! their records wait in memory; nobody is sent to a mailbox that could
//! not store the message (the call ends unanswered, as with voicemail
//! off); once space is freed the records are written, in order, and the
//! mailbox takes messages again. The directory on a full disk refuses
//! the mail it cannot store with a clear error and routes on. A
//! workstation's recording that the disk cannot take stops, says why in
//! `status` and the call's record, keeps what it holds, and the call goes
//! on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keyline_tests::{
    bin, enrol, jnum, jstr, ok, status, wait_for, Daemon, LoopbackOffice, Scratch,
};

/// A tmpfs of `mib` MiB mounted at a directory for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700")])
            .arg("tmpfs")
            .arg(at)
            .output()
            .expect("mount (needs root)");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    /// Fill the file system to the last byte; the fillers, to remove
    /// for room again.
    fn fill(&self) -> Fillers {
        let mut files = Vec::new();
        // Big pieces, then smaller, then one-byte files until not even a
        // new file can take a byte (the kernel may free a page it kept
        // ahead for the big writes once they fail).
        for k in 0.. {
            let path = self.0.join(format!("filler{k}"));
            let mut f = std::fs::File::create(&path).unwrap();
            files.push(path);
            let mut wrote_any = false;
            for size in [64 * 1024, 4096, 1] {
                let chunk = vec![0u8; size];
                loop {
                    match f.write(&chunk) {
                        Ok(0) => break,
                        Ok(_) => wrote_any = true,
                        Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                        Err(e) => panic!("filling {}: {e}", self.0.display()),
                    }
                }
            }
            let _ = f.sync_all();
            if !wrote_any || k > 64 {
                break;
            }
        }
        // tmpfs counts its pages per CPU, so near the limit one CPU may
        // still find a page another cannot: fill from every CPU too.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        for cpu in 0..cpus {
            let script = format!(
                "i=0; while [ $i -lt 256 ] && printf x > '{dir}/filler-cpu{cpu}-'$i 2>/dev/null; do i=$((i+1)); done",
                dir = self.0.display()
            );
            let out = Command::new("taskset")
                .args(["-c", &cpu.to_string(), "sh", "-c", &script])
                .output()
                .expect("taskset (util-linux)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for e in std::fs::read_dir(&self.0).unwrap().flatten() {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with("filler-cpu") {
                files.push(path);
            }
        }
        Fillers(files)
    }
}

/// The files that fill a [`Tmpfs`].
struct Fillers(Vec<PathBuf>);

impl Fillers {
    fn remove(self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// ENOSPC on Linux.
fn libc_enospc() -> i32 {
    28
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn agent(scratch: &Scratch, name: &str, gw: &str, input: &str) -> Daemon {
    Daemon::start(
        None,
        bin("keyline-agent"),
        &scratch.join(name),
        &[
            "run",
            "--no-mdns",
            "--gateway",
            gw,
            "--audio-in",
            input,
            "--audio-out",
            "null",
        ],
    )
    .unwrap()
}

#[test]
fn a_full_disk_under_the_gateway_loses_no_call() {
    let scratch = Scratch::new("diskfull");
    let port = keyline_tests::free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let cfg = scratch.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\nmdns = false\nring_timeout_secs = 2\nvoicemail_silence_secs = 1\nvoicemail_max_secs = 20\n"
        ),
    )
    .unwrap();
    let disk_fs = Tmpfs::mount(&scratch.join("gw"), 16);
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let a = agent(&scratch, "a", &listen, "tone:600");
    let b = agent(&scratch, "b", &listen, "tone:900");
    enrol(&gw, &a, "201");
    enrol(&gw, &b, "202");
    let records = |gw: &Daemon| -> Vec<serde_json::Value> {
        gw.json(&["cdr"]).unwrap()["cdr"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(records(&gw).is_empty());
    let disk = |gw: &Daemon, key: &str| status(gw)["disk"][key].clone();
    wait_for("the disk watcher", Duration::from_secs(5), || {
        (disk(&gw, "mailboxes_writable") == true).then_some(())
    });
    let filler = disk_fs.fill();
    wait_for(
        "the gateway to see the full disk",
        Duration::from_secs(5),
        || (disk(&gw, "mailboxes_writable") == false).then_some(()),
    );

    // A call between two stations: answered, audio both ways, hung up.
    ok(&a, &["dial", "202"]);
    wait_for("ringing", Duration::from_secs(5), || {
        (jstr(&status(&b), &["call", "state"])? == "alerting").then_some(())
    });
    ok(&b, &["answer"]);
    wait_for("audio both ways", Duration::from_secs(5), || {
        let (sa, sb) = (status(&a), status(&b));
        (jnum(&sa, &["call", "media", "received"])? > 10.0
            && jnum(&sb, &["call", "media", "received"])? > 10.0)
            .then_some(())
    });
    ok(&a, &["hangup"]);
    wait_for("both idle", Duration::from_secs(5), || {
        (status(&a)["call"].is_null() && status(&b)["call"].is_null()).then_some(())
    });
    // Its record could not be written: kept, and shown.
    wait_for("the record kept", Duration::from_secs(5), || {
        (disk(&gw, "unwritten_call_records") == 1).then_some(())
    });
    let kept = records(&gw);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["outcome"], "answered");

    // Nobody answers: no mailbox that cannot store the message; the
    // caller hears no answer, as with voicemail off.
    ok(&a, &["dial", "202"]);
    let last = wait_for("the call to end", Duration::from_secs(10), || {
        let s = status(&a);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(
        jstr(&last, &["ended"]).as_deref(),
        Some("no-answer"),
        "{last}"
    );
    assert_eq!(last["connected"], false, "{last}");
    assert!(!scratch.join("gw").join("voicemail").join("202").exists());
    assert!(
        gw.log_text().contains("voicemail takes no messages"),
        "{}",
        gw.log_text()
    );

    // Room again: the kept records are written, in order, and the
    // mailbox takes the next unanswered call.
    filler.remove();
    wait_for("the records written", Duration::from_secs(6), || {
        (disk(&gw, "mailboxes_writable") == true && disk(&gw, "unwritten_call_records") == 0)
            .then_some(())
    });
    let written = records(&gw);
    let outcomes: Vec<&str> = written
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["answered", "no-answer"], "{written:?}");
    assert!(written.iter().all(|r| r["id"].as_i64().unwrap() > 0));
    ok(&a, &["dial", "202"]);
    wait_for("the mailbox", Duration::from_secs(6), || {
        let calls = gw.json(&["calls"]).ok()?;
        (calls["calls"][0]["state"] == "voicemail").then_some(())
    });
    // 201 hears the greeting out, speaks (a steady tone), hangs up.
    std::thread::sleep(Duration::from_secs(5));
    ok(&a, &["hangup"]);
    wait_for("a message for 202", Duration::from_secs(10), || {
        (jnum(&status(&b), &["voicemail_waiting"])? == 1.0).then_some(())
    });
}

const PW: &str = "correct horse battery";

/// A terminal logged in as `account` at the directory `dir`.
fn terminal(scratch: &Scratch, name: &str, dir: &str, account: &str) -> Daemon {
    let pw = scratch.join(&format!("{name}.pw"));
    std::fs::write(&pw, format!("{PW}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    Daemon::start(
        None,
        bin("keyline-agent"),
        &scratch.join(name),
        &[
            "terminal",
            "--directory",
            dir,
            "--account",
            account,
            "--password-file",
            pw.to_str().unwrap(),
            "--audio-in",
            "silence",
            "--audio-out",
            "null",
        ],
    )
    .unwrap()
}

/// The directory on a full disk: mail it cannot store is refused with a
/// clear error (the sender knows it was not left), nothing else stops,
/// and once there is room mail is stored again.
#[test]
fn a_full_disk_under_the_directory_refuses_mail_clearly() {
    let scratch = Scratch::new("dirfull");
    let state = scratch.join("dir");
    let disk_fs = Tmpfs::mount(&state, 16);
    keyline_tests::add_account(&state, "alice", &["1001"], PW);
    keyline_tests::add_account(&state, "bob", &["1002"], PW);
    let dir = Daemon::start(
        None,
        bin("keyline-directory"),
        &state,
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .unwrap();
    let listen = wait_for("the directory", Duration::from_secs(15), || {
        jstr(&dir.json(&["status"]).ok()?, &["listen"])
    });
    let a = terminal(&scratch, "a", &listen, "alice");
    wait_for("alice registered", Duration::from_secs(20), || {
        (jstr(&a.json(&["status"]).ok()?, &["state"])? == "registered").then_some(())
    });
    let filler = disk_fs.fill();

    let e = keyline_tests::fails(&a, &["message", "1002", "call", "me", "back"]);
    assert!(e.contains("not left for 1002"), "{e}");
    assert!(e.contains("full"), "{e}");
    // Everything else goes on: Bob is reported offline at once, and the
    // directory answers its control socket.
    let e = keyline_tests::fails(&a, &["dial", "1002"]);
    assert!(e.contains("offline"), "{e}");
    assert_eq!(
        dir.json(&["mail", "list"]).unwrap()["mail"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    filler.remove();
    let out = ok(&a, &["message", "1002", "call", "me", "back"]);
    assert!(out.contains("sent"), "{out}");
    assert_eq!(
        dir.json(&["mail", "list"]).unwrap()["mail"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Recording on a workstation whose recordings disk fills: `record` on a
/// full disk says why at once and leaves no empty file; a recording the
/// disk fills up during stops, keeps what it holds, and says why; the
/// call goes on either way.
#[test]
fn recording_onto_a_full_disk_says_why_and_the_call_goes_on() {
    let office = LoopbackOffice::start("recfull", &[]);
    let recs = office.scratch.join("recs");
    let disk_fs = Tmpfs::mount(&recs, 1);
    let audio = |tone: &'static str| ["--audio-in", tone, "--audio-out", "null"];
    let mut a_args = audio("tone:600").to_vec();
    a_args.extend(["--record-dir", recs.to_str().unwrap()]);
    let a = office.agent("a", &a_args);
    let b = office.agent("b", &audio("tone:900"));
    office.enrol(&a, "201");
    office.enrol(&b, "202");
    ok(&a, &["dial", "202"]);
    wait_for("ringing", Duration::from_secs(5), || {
        (jstr(&status(&b), &["call", "state"])? == "alerting").then_some(())
    });
    ok(&b, &["answer"]);
    wait_for("connected", Duration::from_secs(5), || {
        (jstr(&status(&a), &["call", "state"])? == "connected").then_some(())
    });
    let received = |d: &Daemon| jnum(&status(d), &["call", "media", "received"]).unwrap_or(0.0);

    // Full before it starts: refused at once, or (tmpfs counts pages per
    // CPU, so the headers may still find a page) stopped at the first
    // page of audio, a second in; said either way.
    let filler = disk_fs.fill();
    let first = a.ctl(&["record", "on"]);
    if first.status.success() {
        let err = wait_for("the recording to stop", Duration::from_secs(5), || {
            jstr(&status(&a), &["call", "recording_error"])
        });
        assert!(err.contains("No space left"), "{err}");
    } else {
        let e = String::from_utf8_lossy(&first.stderr).to_string();
        assert!(
            e.contains("cannot record") && e.contains("No space left"),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(&recs)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| !n.to_string_lossy().starts_with("filler"))
            .collect();
        assert!(left.is_empty(), "no empty file is left: {left:?}");
    }
    filler.remove();

    // Room for a few seconds: it records, then the disk fills up.
    let out = ok(&a, &["record", "on"]);
    assert!(out.contains("recording"), "{out}");
    let path = jstr(&status(&a), &["call", "recording"]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let filler = disk_fs.fill();
    let err = wait_for("the recording to stop", Duration::from_secs(10), || {
        jstr(&status(&a), &["call", "recording_error"])
    });
    assert!(err.contains("No space left"), "{err}");
    assert!(err.contains(&path), "{err}");
    assert!(status(&a)["call"]["recording"].is_null());
    let e = keyline_tests::fails(&a, &["record", "off"]);
    assert!(e.contains("had stopped"), "{e}");

    // The call goes on, both ways.
    let (ra, rb) = (received(&a), received(&b));
    std::thread::sleep(Duration::from_millis(600));
    assert!(received(&a) > ra + 10.0 && received(&b) > rb + 10.0);
    assert_eq!(
        jstr(&status(&a), &["call", "state"]).as_deref(),
        Some("connected")
    );
    ok(&a, &["hangup"]);
    let last = wait_for("the call record", Duration::from_secs(5), || {
        let s = status(&a);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert!(
        jstr(&last, &["recording_error"]).is_some_and(|e| e.contains("No space left")),
        "{last}"
    );
    filler.remove();
    // What was written before the disk filled is a playable file.
    let pcm = keyline_media::read_ogg_opus(Path::new(&path)).unwrap();
    assert!(pcm.len() > 48_000 / 2, "{} samples", pcm.len());
}
