//! The real program in a real X server: `keyline-phone` starts under Xvfb
//! (rendered by Mesa on the CPU), its window's title starts with
//! "Keyline", and what it draws is the right screen: a screenshot read
//! back by OCR shows the pairing code of the real agent behind it, then,
//! once the station is approved, that it is ready; a second
//! `keyline-phone tel:...` hands its number to this window and exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyline_tests::{bin, jstr, ok, wait_for, LoopbackOffice};

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An X server on a free display of its own (it picks one and says
/// which on `-displayfd`).
fn xvfb() -> (Proc, String) {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "800x700x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb (Debian xvfb) is needed for this test");
    let out = child.stdout.take().unwrap();
    let p = Proc(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let n: u32 = line.trim().parse().expect("Xvfb's display number");
    let display = format!(":{n}");
    let sock = format!("/tmp/.X11-unix/X{n}");
    wait_for("the X server", Duration::from_secs(10), || {
        Path::new(&sock).exists().then_some(())
    });
    (p, display)
}

/// The id and title of the window whose title starts with "Keyline".
fn keyline_window(display: &str) -> Option<(String, String)> {
    let out = Command::new("xwininfo")
        .args(["-root", "-tree"])
        .env("DISPLAY", display)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        let id = l.split_whitespace().next()?.to_string();
        let start = l.find('"')?;
        let rest = &l[start + 1..];
        let end = rest.find('"')?;
        let title = &rest[..end];
        title
            .starts_with("Keyline")
            .then(|| (id, title.to_string()))
    })
}

/// The window's text, read by OCR from a screenshot at 4x (egui's body
/// text) and at 1x (the large pairing digits).
fn screen_text(display: &str, window: &str, shot: &Path) -> String {
    let mut text = String::new();
    for (scale, psm) in [("400%", "6"), ("100%", "3")] {
        let st = Command::new("import")
            .args(["-window", window, "-resize", scale])
            .arg(shot)
            .env("DISPLAY", display)
            .status()
            .expect("import (ImageMagick)");
        if !st.success() {
            // Not mapped yet: nothing to read.
            return String::new();
        }
        let out = Command::new("tesseract")
            .arg(shot)
            .args(["stdout", "--psm", psm])
            .stderr(Stdio::null())
            .output()
            .expect("tesseract");
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push('\n');
    }
    text
}

fn until_text(
    display: &str,
    window: &str,
    shot: &Path,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = screen_text(display, window, shot);
        if f(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the window did not show {what}; OCR read:\n{last}");
}

#[test]
fn the_real_window_starts_under_xvfb_and_shows_the_agents_state() {
    let office = LoopbackOffice::start("phonex", &[]);
    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let code = wait_for("a pairing code", Duration::from_secs(10), || {
        jstr(&a.json(&["status"]).ok()?, &["code"])
    });
    let (_x, display) = xvfb();
    let log = std::fs::File::create(office.scratch.join("phone.log")).unwrap();
    let _phone = Proc(
        Command::new(bin("keyline-phone"))
            .arg("--state")
            .arg(&a.state)
            .args(["--lang", "en"])
            .env("DISPLAY", &display)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_RUNTIME_DIR", office.scratch.join(""))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keyline-phone"),
    );
    let phone_log =
        || std::fs::read_to_string(office.scratch.join("phone.log")).unwrap_or_default();
    let (window, title) = wait_for("the Keyline window", Duration::from_secs(30), || {
        keyline_window(&display)
    });
    assert!(title.starts_with("Keyline"), "{title}\n{}", phone_log());

    let shot = office.scratch.join("shot.png");
    let spaced = format!("{} {}", &code[..3], &code[3..]);
    until_text(&display, &window, &shot, "the pairing code", |t| {
        t.contains("Waiting for approval") && (t.contains(&spaced) || t.contains(&code))
    });
    ok(&office.gw, &["approve", &code, "--ext", "201"]);
    until_text(&display, &window, &shot, "the station ready", |t| {
        t.contains("Ready") && t.contains("201") && t.contains("Number")
    });
    let title = wait_for(
        "the title with the extension",
        Duration::from_secs(10),
        || {
            keyline_window(&display)
                .map(|(_, t)| t)
                .filter(|t| t.contains("201"))
        },
    );
    assert!(title.starts_with("Keyline"), "{title}");

    // A tel: link opens no second window: the number goes to this one.
    let second = Command::new(bin("keyline-phone"))
        .arg("--state")
        .arg(&a.state)
        .arg("tel:2-0-9")
        .env("DISPLAY", &display)
        .env("XDG_RUNTIME_DIR", office.scratch.join(""))
        .output()
        .expect("run a second keyline-phone");
    assert!(second.status.success(), "{second:?}");
    until_text(&display, &window, &shot, "the handed-over number", |t| {
        t.contains("209")
    });
}
