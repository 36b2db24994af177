//! A ringing call on the desktop's notifications: the real program under
//! Xvfb, on a session bus of its own with a real notification service
//! (dunst). A call that rings while the window is not in front is offered
//! as a notification with Answer and Decline; choosing Answer on it (through
//! dunst's own action menu) answers the call, Decline declines it, and the
//! notification goes when the ringing stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::x11::{keyline_window, xvfb, Proc};
use keyline_tests::{bin, jstr, ok, status, wait_for, Daemon, LoopbackOffice};

const T: Duration = Duration::from_secs(15);

/// A session bus of the test's own, stopped (by its pid) on drop.
struct Bus {
    pid: u32,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        let sock = dir.join("bus");
        let out = Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .arg(format!("--address=unix:path={}", sock.display()))
            .stdin(Stdio::null())
            .output()
            .expect("dbus-daemon (Debian dbus)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let address = lines.next().expect("the bus's address").to_string();
        let pid = lines
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("the bus's pid");
        Bus { pid, address }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

/// dunst's action menu: the script it runs as its menu program picks the
/// first action whose line holds what `pick` says, as a person would.
fn dunst(dir: &Path, display: &str, bus: &Bus) -> (Proc, PathBuf) {
    let pick = dir.join("pick");
    let menu = dir.join("menu.txt");
    let script = dir.join("pick.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntee -a '{}' | grep -m1 -i \"$(cat '{}')\"\n",
            menu.display(),
            pick.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let rc = dir.join("dunstrc");
    std::fs::write(&rc, format!("[global]\n    dmenu = {}\n", script.display())).unwrap();
    let log = std::fs::File::create(dir.join("dunst.log")).unwrap();
    let p = Proc(
        Command::new("dunst")
            .arg("-config")
            .arg(&rc)
            .env("DISPLAY", display)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dunst (Debian dunst)"),
    );
    (p, pick)
}

fn dunstctl(bus: &Bus, display: &str, args: &[&str]) -> String {
    let o = Command::new("dunstctl")
        .args(args)
        .env("DISPLAY", display)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .output()
        .expect("dunstctl");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn displayed(bus: &Bus, display: &str) -> u32 {
    dunstctl(bus, display, &["count", "displayed"])
        .parse()
        .unwrap_or(0)
}

/// The window for `a`, started hidden (as the session starts it): not in
/// front when the next call comes.
fn phone(office: &LoopbackOffice, a: &Daemon, display: &str, bus: &Bus, n: u32) -> Proc {
    let log = std::fs::File::create(office.scratch.join(&format!("phone{n}.log"))).unwrap();
    let p = Proc(
        Command::new(bin("keyline-phone"))
            .arg("--state")
            .arg(&a.state)
            .args(["--lang", "en", "--hidden"])
            .env("DISPLAY", display)
            .env_remove("WAYLAND_DISPLAY")
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env("XDG_RUNTIME_DIR", office.scratch.join(""))
            .env("XDG_CONFIG_HOME", office.scratch.join("config"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keyline-phone"),
    );
    wait_for("the window", Duration::from_secs(30), || {
        keyline_window(display)
    });
    // Connected to its agent (the title names the extension).
    wait_for("the window ready", Duration::from_secs(15), || {
        keyline_window(display).filter(|(_, t)| t.contains("201"))
    });
    p
}

#[test]
fn a_ringing_call_is_answered_and_declined_from_a_desktop_notification() {
    let office = LoopbackOffice::start("phonenote", &[]);
    let mut a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let b = office.agent("b", &["--audio-in", "tone:700", "--audio-out", "null"]);
    office.enrol(&a, "201");
    common::enrol_named(&office.gw, &b, "202", "Bob");
    let (_x, display) = xvfb();
    let bus = Bus::start(&office.scratch.join(""));
    let (_dunst, pick) = dunst(&office.scratch.join(""), &display, &bus);

    // Answer on the notification.
    let first = phone(&office, &a, &display, &bus, 1);
    assert_eq!(displayed(&bus, &display), 0);
    ok(&b, &["dial", "201"]);
    wait_for("the notification", T, || {
        (displayed(&bus, &display) == 1).then_some(())
    });
    std::fs::write(&pick, "answer").unwrap();
    dunstctl(&bus, &display, &["context"]);
    wait_for("the call answered", T, || {
        (jstr(&status(&a), &["call", "state"])? == "connected").then_some(())
    });
    let menu = std::fs::read_to_string(office.scratch.join("menu.txt")).unwrap();
    assert!(
        menu.contains("Answer") && menu.contains("Decline") && menu.contains("Incoming call"),
        "{menu}"
    );
    wait_for("the notification gone", T, || {
        (displayed(&bus, &display) == 0).then_some(())
    });
    ok(&b, &["hangup"]);
    wait_for("idle", T, || status(&a)["call"].is_null().then_some(()));
    drop(first);

    // Decline on the notification: the caller is told it was declined.
    let _second = phone(&office, &a, &display, &bus, 2);
    ok(&b, &["dial", "201"]);
    wait_for("the second notification", T, || {
        (displayed(&bus, &display) == 1).then_some(())
    });
    std::fs::write(&pick, "decline").unwrap();
    dunstctl(&bus, &display, &["context"]);
    let last = wait_for("the call declined", T, || {
        let s = status(&b);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(
        jstr(&last, &["ended"]).as_deref(),
        Some("rejected"),
        "{last}"
    );
    wait_for("the notification gone", T, || {
        (displayed(&bus, &display) == 0).then_some(())
    });
    assert!(status(&a)["call"].is_null());
    assert!(a.stop());
}
