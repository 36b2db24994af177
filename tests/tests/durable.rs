//! What the gateway confirms is on disk first. While a test holds the
//! gateway's database locked, a feature code dialled by a station is not
//! confirmed; once the lock goes, it is, and a SIGKILL right after the
//! confirmation loses nothing. A change that cannot be stored at all is
//! refused and changes nothing. At start-up, voice message files a kill cut
//! short are removed, and a whole one with no row is put in its mailbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use keyline_tests::{bin, jstr, wait_for, Daemon, LoopbackOffice};
use rusqlite::{Connection, OpenFlags};

/// The gateway's database under its state directory.
fn db_path(gw: &Daemon) -> std::path::PathBuf {
    gw.state.join("gatewayd.sqlite")
}

/// 201's do-not-disturb as stored (`None`: no row).
fn dnd_stored(db: &Path) -> Option<bool> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row("SELECT dnd FROM line_settings WHERE ext = '201'", [], |r| {
        r.get::<_, i64>(0)
    })
    .ok()
    .map(|d| d != 0)
}

/// The station's own view of its settings.
fn dnd_shown(st: &Daemon) -> Option<bool> {
    st.json(&["status"]).ok()?["settings"]["dnd"].as_bool()
}

/// SIGKILL the gateway and wait for it to be gone.
fn kill9(gw: &mut Daemon) {
    let mut child = gw.child.take().expect("the gateway runs");
    let st = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = child.wait();
}

/// Dial `number` on `st` in a thread; its CLI's output when done.
fn dial_in_background(st: &Daemon, number: &str) -> std::thread::JoinHandle<Output> {
    let (b, state, number) = (st.bin.clone(), st.state.clone(), number.to_string());
    std::thread::spawn(move || {
        std::process::Command::new(b)
            .arg("--state")
            .arg(state)
            .args(["dial", &number])
            .output()
            .unwrap()
    })
}

/// Hold the database's write lock (as a slow or busy disk would) until
/// dropped.
struct WriteLock(Connection);

impl WriteLock {
    fn take(db: &Path) -> WriteLock {
        let c = Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(c)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

#[test]
fn a_confirmed_feature_code_is_stored_first_and_survives_a_kill() {
    let mut office = LoopbackOffice::start("durable-set", &[]);
    let st = office.agent("st201", &["--audio-out", "null"]);
    office.enrol(&st, "201");
    wait_for("the station's settings", Duration::from_secs(10), || {
        (dnd_shown(&st) == Some(false)).then_some(())
    });
    let db = db_path(&office.gw);

    // The disk is slow: the change cannot be written yet, so it must not be
    // confirmed yet either.
    let lock = WriteLock::take(&db);
    let dial = dial_in_background(&st, "*78");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !dial.is_finished(),
        "the gateway confirmed *78 while it could not store it: {:?}",
        dial.join()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    );
    lock.release();
    let out = dial.join().unwrap();
    assert!(
        out.status.success(),
        "*78: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Killed the moment it confirmed: the change is on disk all the same.
    kill9(&mut office.gw);
    assert_eq!(dnd_stored(&db), Some(true), "a confirmed change was lost");

    // And the restarted gateway gives it back to the station.
    let args = ["run", "--no-mdns", "--listen", office.listen.as_str()];
    office.gw = Daemon::start(None, bin("keyline-gatewayd"), &office.gw.state, &args).unwrap();
    wait_for("the station to reconnect", Duration::from_secs(20), || {
        let s = st.json(&["status"]).ok()?;
        (jstr(&s, &["state"]).as_deref() == Some("registered")).then_some(())
    });
    wait_for("dnd on the station", Duration::from_secs(10), || {
        (dnd_shown(&st) == Some(true)).then_some(())
    });
}

#[test]
fn a_feature_code_that_cannot_be_stored_is_refused_and_changes_nothing() {
    let office = LoopbackOffice::start("durable-refuse", &[]);
    let st = office.agent("st201", &["--audio-out", "null"]);
    office.enrol(&st, "201");
    wait_for("the station's settings", Duration::from_secs(10), || {
        (dnd_shown(&st) == Some(false)).then_some(())
    });
    let db = db_path(&office.gw);

    // Locked for longer than the gateway waits for its database.
    let lock = WriteLock::take(&db);
    let t0 = Instant::now();
    let out = dial_in_background(&st, "*78").join().unwrap();
    let waited = t0.elapsed();
    lock.release();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "*78 confirmed after {waited:?} though it was not stored: {said}"
    );
    assert!(said.contains("could not be stored"), "{said}");
    // Nothing changed: not on disk, not on the station.
    assert_ne!(dnd_stored(&db), Some(true));
    assert_eq!(dnd_shown(&st), Some(false));
    // Once the disk takes writes again, the same code works.
    let out = dial_in_background(&st, "*78").join().unwrap();
    assert!(out.status.success());
    assert_eq!(dnd_stored(&db), Some(true));
}

#[test]
fn start_up_removes_voice_messages_a_kill_cut_short() {
    let scratch = keyline_tests::Scratch::new("durable-sweep");
    let gw_state = scratch.join("gw");
    let mb = gw_state.join("voicemail").join("204");
    std::fs::create_dir_all(&mb).unwrap();
    // What a kill during a recording leaves: the first pages of a file
    // under its temporary name.
    let cut = mb.join("1700000001000-203.part");
    std::fs::write(&cut, b"OggS\0\x02 the first page and no more").unwrap();
    let listen = format!("127.0.0.1:{}", keyline_tests::free_udp_port());
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &gw_state,
        &["run", "--no-mdns", "--listen", &listen],
    )
    .unwrap();
    wait_for("the gateway", Duration::from_secs(10), || {
        gw.json(&["status"]).ok()
    });
    assert!(!cut.exists(), "the cut-short file is still there");
    let log = gw.log_text();
    assert!(
        log.contains("1700000001000-203.part") && log.contains("cut short"),
        "no log line says what was removed: {log}"
    );
}
