//! The systemd lifecycle, checked with a real NOTIFY_SOCKET listener made
//! by the test: READY, the WATCHDOG cadence, RELOADING then READY on
//! SIGHUP, a broken config on SIGHUP keeps the old one running, STOPPING
//! and exit 0 on SIGTERM with a call in progress whose peer is told.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use keyline_tests::{bin, jnum, jstr, wait_for, Daemon, Scratch};

/// Collects notify messages, with the time each arrived.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl Notify {
    fn new(path: &std::path::Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Notify {
            sock,
            seen: Vec::new(),
        }
    }

    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            self.seen.push((Instant::now(), msg));
        }
    }

    /// Wait for a message containing `needle` after index `from`; returns
    /// its index.
    fn expect(&mut self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            if let Some(i) = self.seen[from..]
                .iter()
                .position(|(_, m)| m.contains(needle))
            {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} after message {from}; saw {:?}",
                self.seen.iter().map(|(_, m)| m).collect::<Vec<_>>()
            );
        }
    }
}

fn signal(d: &Daemon, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &d.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn gateway_lifecycle_under_a_notify_listener() {
    let scratch = Scratch::new("life");
    let cfg = scratch.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nmdns = false\nring_timeout_secs = 30\n",
    )
    .unwrap();
    let mut notify = Notify::new(&scratch.join("notify.sock"));
    let sock = scratch.join("notify.sock");
    let started = Instant::now();
    let mut gw = Daemon::start_with_env(
        None,
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .unwrap();

    let ready = notify.expect("READY=1", 0, Duration::from_secs(10));
    let ready_after = notify.seen[ready].0 - started;
    eprintln!("gateway READY {ready_after:?} after spawn");
    assert!(notify.seen[ready].1.contains("STATUS="));

    // Watchdog: pings at about half of WATCHDOG_USEC (200 ms). Stamp
    // messages as they arrive, ignoring those queued before we listened.
    notify.pump();
    let mark = notify.seen.len();
    let until = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < until {
        notify.pump();
    }
    let pings: Vec<Instant> = notify.seen[mark..]
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 4,
        "only {} watchdog pings in 1.3 s",
        pings.len()
    );
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap > Duration::from_millis(100) && gap < Duration::from_millis(390),
            "watchdog gap {gap:?}"
        );
    }

    // Reload with a changed setting.
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nmdns = false\nring_timeout_secs = 7\n",
    )
    .unwrap();
    let mark = notify.seen.len();
    signal(&gw, "-HUP");
    let r = notify.expect("RELOADING=1", mark, Duration::from_secs(5));
    assert!(
        notify.seen[r].1.contains("MONOTONIC_USEC="),
        "{}",
        notify.seen[r].1
    );
    notify.expect("READY=1", r, Duration::from_secs(5));
    let st = gw.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["ring_timeout_s"]), Some(7.0), "{st}");

    // A broken config: the old one stays, and STATUS says so.
    std::fs::write(&cfg, "ring_timeout_secs = \"soon\"\n").unwrap();
    let mark = notify.seen.len();
    signal(&gw, "-HUP");
    let r = notify.expect("RELOADING=1", mark, Duration::from_secs(5));
    let ready = notify.expect("READY=1", r, Duration::from_secs(5));
    assert!(
        notify.seen[ready].1.contains("reload failed"),
        "{}",
        notify.seen[ready].1
    );
    assert!(
        notify.seen[ready].1.contains("ring_timeout_secs"),
        "names the bad field: {}",
        notify.seen[ready].1
    );
    let st = gw.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["ring_timeout_s"]), Some(7.0), "{st}");
    // check-config names the bad field too.
    let out = Command::new(bin("keyline-gatewayd"))
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ring_timeout_secs"));

    // A call in progress, then SIGTERM: STOPPING, exit 0 within 5 s, and
    // the stations are told.
    let gw_addr = jstr(&st, &["listen"]).unwrap();
    let agent = |name: &str| {
        Daemon::start(
            None,
            bin("keyline-agent"),
            &scratch.join(name),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                &gw_addr,
                "--audio-in",
                "tone:800",
                "--audio-out",
                "null",
            ],
        )
        .unwrap()
    };
    let a = agent("a");
    let b = agent("b");
    for (d, ext) in [(&a, "201"), (&b, "202")] {
        let code = wait_for("code", Duration::from_secs(10), || {
            jstr(&d.json(&["status"]).ok()?, &["code"])
        });
        assert!(gw.ctl(&["approve", &code, "--ext", ext]).status.success());
        wait_for("registered", Duration::from_secs(10), || {
            (jstr(&d.json(&["status"]).ok()?, &["ext"])? == ext).then_some(())
        });
    }
    assert!(a.ctl(&["dial", "202"]).status.success());
    wait_for("alerting", Duration::from_secs(5), || {
        (jstr(&b.json(&["status"]).ok()?, &["call", "state"])? == "alerting").then_some(())
    });
    assert!(b.ctl(&["answer"]).status.success());
    wait_for("connected", Duration::from_secs(5), || {
        (jstr(&a.json(&["status"]).ok()?, &["call", "state"])? == "connected").then_some(())
    });
    let mark = notify.seen.len();
    let t0 = Instant::now();
    let exited_ok = gw.stop();
    let took = t0.elapsed();
    assert!(
        exited_ok,
        "gateway did not exit 0 within 5 s:\n{}",
        gw.log_text()
    );
    eprintln!("gateway stopped in {took:?}");
    notify.expect("STOPPING=1", mark, Duration::from_secs(1));
    for d in [&a, &b] {
        let last = wait_for(
            "the station to hear of the shutdown",
            Duration::from_secs(5),
            || {
                let s = d.json(&["status"]).ok()?;
                s["call"].is_null().then(|| s["last_call"].clone())
            },
        );
        assert_eq!(
            jstr(&last, &["ended"]).as_deref(),
            Some("gateway-shutdown"),
            "{last}"
        );
    }

    // The call record was flushed before exit.
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nmdns = false\n").unwrap();
    let gw2 = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let cdr = wait_for("cdr", Duration::from_secs(10), || gw2.json(&["cdr"]).ok());
    let rows = cdr["cdr"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["outcome"] == "answered" && r["caller"] == "201"),
        "{cdr}"
    );
}

#[test]
fn agent_lifecycle_under_a_notify_listener() {
    let scratch = Scratch::new("alife");
    let mut notify = Notify::new(&scratch.join("notify.sock"));
    let sock = scratch.join("notify.sock");
    let mut a = Daemon::start_with_env(
        None,
        bin("keyline-agent"),
        &scratch.join("a"),
        &[
            "run",
            "--no-mdns",
            "--gateway",
            "127.0.0.1:9",
            "--audio-in",
            "silence",
            "--audio-out",
            "null",
        ],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .unwrap();
    let ready = notify.expect("READY=1", 0, Duration::from_secs(10));
    notify.expect("WATCHDOG=1", ready, Duration::from_secs(2));
    reload_then_stop(&mut notify, &mut a, "agent");
}

/// The agent as a standalone terminal has the same lifecycle, whether or
/// not its directory is there yet.
#[test]
fn terminal_lifecycle_under_a_notify_listener() {
    let scratch = Scratch::new("tlife");
    let mut notify = Notify::new(&scratch.join("notify.sock"));
    let sock = scratch.join("notify.sock");
    let pw = scratch.join("pw");
    std::fs::write(&pw, "secret password\n").unwrap();
    let mut t = Daemon::start_with_env(
        None,
        bin("keyline-agent"),
        &scratch.join("t"),
        &[
            "terminal",
            "--directory",
            "127.0.0.1:9",
            "--account",
            "nobody",
            "--password-file",
            pw.to_str().unwrap(),
            "--audio-in",
            "silence",
            "--audio-out",
            "null",
        ],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .unwrap();
    let ready = notify.expect("READY=1", 0, Duration::from_secs(10));
    assert!(
        notify.seen[ready]
            .1
            .contains("STATUS=connecting to the directory"),
        "{:?}",
        notify.seen[ready]
    );
    let w = notify.expect("WATCHDOG=1", ready, Duration::from_secs(2));
    notify.expect("WATCHDOG=1", w + 1, Duration::from_secs(2));
    reload_then_stop(&mut notify, &mut t, "terminal");
}

/// SIGHUP: RELOADING=1 then READY=1; SIGTERM: STOPPING=1 and exit 0.
fn reload_then_stop(notify: &mut Notify, d: &mut Daemon, what: &str) {
    let mark = notify.seen.len();
    signal(d, "-HUP");
    let r = notify.expect("RELOADING=1", mark, Duration::from_secs(5));
    notify.expect("READY=1", r, Duration::from_secs(5));
    let mark = notify.seen.len();
    assert!(d.stop(), "{what} did not exit 0:\n{}", d.log_text());
    notify.expect("STOPPING=1", mark, Duration::from_secs(1));
}

/// SIGTERM on a station in a call: it hangs up politely (the other end is
/// told) and exits 0.
#[test]
fn agent_stops_politely_with_a_call_in_progress() {
    use keyline_tests::{idle, ok, wait_state, LoopbackOffice};
    let office = LoopbackOffice::start("astop", &[]);
    let mut a = office.agent("a", &["--audio-in", "tone:500", "--audio-out", "null"]);
    let b = office.agent("b", &["--audio-in", "tone:700", "--audio-out", "null"]);
    office.enrol(&a, "201");
    office.enrol(&b, "202");
    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    let t0 = Instant::now();
    assert!(a.stop(), "the station did not exit 0:\n{}", a.log_text());
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(jstr(&idle(&b), &["ended"]).as_deref(), Some("hangup"));
}
