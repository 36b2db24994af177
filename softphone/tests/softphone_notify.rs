//! A ringing call on the desktop's notifications: the real program under
//! Xvfb, on a session bus of its own with a real notification service
//! (dunst). A ringing window asks for the focus; where it does not get it
//! (no window manager to give it, or a window manager that refuses it) the
//! call is offered as a notification with Answer and Decline; choosing
//! Answer on it (through dunst's own action menu) answers the call,
//! Decline declines it, and the notification goes when the ringing stops
//! or the window gets the focus. Where the window manager gives the
//! focus, nothing is posted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::x11::{keyline_window, mapped, xvfb, Proc};
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

/// Every `Notify` call on `bus`, as `dbus-monitor` sees it (a file of its
/// output): how many notifications were posted.
fn notify_calls(bus: &Bus, dir: &Path) -> (Proc, PathBuf) {
    let file = dir.join("notify-calls.txt");
    let out = std::fs::File::create(&file).unwrap();
    let p = Proc(
        Command::new("dbus-monitor")
            .arg("--address")
            .arg(&bus.address)
            .arg("type='method_call',interface='org.freedesktop.Notifications',member='Notify'")
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-monitor (Debian dbus)"),
    );
    // dbus-monitor is a monitor once the bus has taken its name back
    // (NameLost, after NameAcquired); before that a Notify would go unseen
    // and "no notification" would prove nothing.
    wait_for("dbus-monitor watching the bus", T, || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("member=NameLost")
            .then_some(())
    });
    (p, file)
}

fn posted(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .matches("member=Notify")
        .count()
}

/// The window that has the focus, as the window manager says
/// (`_NET_ACTIVE_WINDOW` on the root window), as xwininfo writes ids.
fn active_window(display: &str) -> Option<String> {
    let out = Command::new("xprop")
        .args(["-root", "_NET_ACTIVE_WINDOW"])
        .env("DISPLAY", display)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text.split('#').nth(1)?.trim();
    let n = u64::from_str_radix(id.trim_start_matches("0x"), 16).ok()?;
    Some(format!("{n:#x}"))
}

fn hc(display: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("herbstclient")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// herbstluftwm refuses focus to a ringing window by its own rule
/// (`focus_stealing_prevention`, on by default: only pagers and taskbars
/// may move the focus) and grants it with the rule off. Granted: the
/// hidden window comes up with the focus, no notification is posted (none
/// at all on the bus), and Enter on the keyboard answers. Refused: another
/// program keeps the focus, the call is posted as a notification after
/// the grace period and Answer on it answers; on the next ring the person
/// brings the window up (as a taskbar does) and the notification is
/// withdrawn while the call still rings.
#[test]
fn a_notification_only_when_the_window_manager_refuses_focus() {
    let office = LoopbackOffice::start("phonefocus", &[]);
    let mut a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let b = office.agent("b", &["--audio-in", "tone:700", "--audio-out", "null"]);
    office.enrol(&a, "201");
    common::enrol_named(&office.gw, &b, "202", "Bob");
    let dir = office.scratch.join("");
    let (_x, display) = xvfb();
    let bus = Bus::start(&dir);
    let (_dunst, pick) = dunst(&dir, &display, &bus);
    let (_monitor, calls) = notify_calls(&bus, &dir);
    let auto = dir.join("hlwm-autostart");
    std::fs::write(
        &auto,
        "#!/bin/sh\nherbstclient set focus_stealing_prevention false\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&auto).status().unwrap();
    let wm_log = std::fs::File::create(dir.join("herbstluftwm.log")).unwrap();
    let _wm = Proc(
        Command::new("herbstluftwm")
            .arg("--autostart")
            .arg(&auto)
            .env("DISPLAY", &display)
            .stdout(wm_log.try_clone().unwrap())
            .stderr(wm_log)
            .spawn()
            .expect("herbstluftwm (Debian herbstluftwm)"),
    );
    wait_for("the window manager, granting focus", T, || {
        (hc(&display, &["get", "focus_stealing_prevention"])? == "false").then_some(())
    });
    // Another program, in front with the focus.
    let other_log = std::fs::File::create(dir.join("xev.log")).unwrap();
    let _other = Proc(
        Command::new("xev")
            .args(["-name", "Other program"])
            .env("DISPLAY", &display)
            .stdout(other_log)
            .stderr(Stdio::null())
            .spawn()
            .expect("xev (Debian x11-utils)"),
    );
    let other = wait_for("the other program's window", T, || {
        let out = Command::new("xdotool")
            .args(["search", "--name", "^Other program$"])
            .env("DISPLAY", &display)
            .output()
            .ok()?;
        let id: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        Some(format!("{id:#x}"))
    });
    common::x11::xdotool(&display, &["windowactivate", "--sync", &other]);
    wait_for("the other program in front", T, || {
        (active_window(&display)? == other).then_some(())
    });

    // Focus granted: the hidden window comes up in front; nothing posted.
    let _phone = phone(&office, &a, &display, &bus, 1);
    let (win, _) = keyline_window(&display).unwrap();
    let win = format!(
        "{:#x}",
        u64::from_str_radix(win.trim_start_matches("0x"), 16).unwrap()
    );
    wait_for("the window hidden", T, || {
        (!mapped(&display, &win)).then_some(())
    });
    common::x11::xdotool(&display, &["windowactivate", "--sync", &other]);
    wait_for("the other program in front", T, || {
        (active_window(&display)? == other).then_some(())
    });
    ok(&b, &["dial", "201"]);
    wait_for("the ringing window in front", T, || {
        (active_window(&display)? == win).then_some(())
    });
    // Well past the grace period, still ringing: no notification.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        jstr(&status(&a), &["call", "state"]).as_deref(),
        Some("alerting")
    );
    assert_eq!(posted(&calls), 0, "a notification was posted");
    assert_eq!(displayed(&bus, &display), 0);
    // The keyboard is the window's: Enter answers.
    common::x11::press_key(&display, "Return");
    wait_for("the call answered with Enter", T, || {
        (jstr(&status(&a), &["call", "state"])? == "connected").then_some(())
    });
    ok(&b, &["hangup"]);
    wait_for("idle", T, || status(&a)["call"].is_null().then_some(()));
    assert_eq!(posted(&calls), 0, "a notification was posted");

    // Focus refused: the other program keeps it; the call is posted and
    // answered on the notification.
    hc(&display, &["set", "focus_stealing_prevention", "true"]).expect("herbstclient");
    common::x11::xdotool(&display, &["windowactivate", "--sync", &other]);
    wait_for("the other program in front", T, || {
        (active_window(&display)? == other).then_some(())
    });
    ok(&b, &["dial", "201"]);
    wait_for("the notification", T, || {
        (displayed(&bus, &display) == 1).then_some(())
    });
    assert_eq!(active_window(&display), Some(other.clone()));
    assert_eq!(posted(&calls), 1);
    std::fs::write(&pick, "answer").unwrap();
    dunstctl(&bus, &display, &["context"]);
    wait_for("the call answered on the notification", T, || {
        (jstr(&status(&a), &["call", "state"])? == "connected").then_some(())
    });
    wait_for("the notification gone", T, || {
        (displayed(&bus, &display) == 0).then_some(())
    });
    ok(&b, &["hangup"]);
    wait_for("idle", T, || status(&a)["call"].is_null().then_some(()));

    // Refused again, then the person brings the window up themselves (a
    // taskbar's request, which the rule allows): the notification goes
    // while the call still rings.
    ok(&b, &["dial", "201"]);
    wait_for("the third notification", T, || {
        (displayed(&bus, &display) == 1).then_some(())
    });
    common::x11::xdotool(&display, &["windowactivate", "--sync", &win]);
    wait_for("the notification withdrawn", T, || {
        (displayed(&bus, &display) == 0).then_some(())
    });
    assert_eq!(
        jstr(&status(&a), &["call", "state"]).as_deref(),
        Some("alerting")
    );
    assert_eq!(posted(&calls), 2);
    common::x11::press_key(&display, "Return");
    wait_for("the call answered with Enter", T, || {
        (jstr(&status(&a), &["call", "state"])? == "connected").then_some(())
    });
    ok(&b, &["hangup"]);
    wait_for("idle", T, || status(&a)["call"].is_null().then_some(()));
    assert!(a.stop());
}
