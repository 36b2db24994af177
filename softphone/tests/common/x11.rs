//! The real program under a real X server (Xvfb, rendered by Mesa on the
//! CPU): the server, finding the window by its title, whether it is shown,
//! and reading what it shows by OCR.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyline_tests::wait_for;

/// A process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An X server on a free display of its own (it picks one and says
/// which on `-displayfd`).
pub fn xvfb() -> (Proc, String) {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "800x700x24",
            "-nolisten",
            "tcp",
            // Keep serving when the last window closes (a reset refuses
            // the next client meanwhile).
            "-noreset",
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
pub fn keyline_window(display: &str) -> Option<(String, String)> {
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
pub fn screen_text(display: &str, window: &str, shot: &Path) -> String {
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

pub fn until_text(
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

/// The process id of X window `id` (`_NET_WM_PID`).
pub fn window_pid(display: &str, id: &str) -> Option<u32> {
    let out = Command::new("xprop")
        .args(["-id", id, "_NET_WM_PID"])
        .env("DISPLAY", display)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split('=')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Whether X window `id` is mapped (shown).
pub fn mapped(display: &str, id: &str) -> bool {
    Command::new("xwininfo")
        .args(["-id", id])
        .env("DISPLAY", display)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("IsViewable"))
}

/// The ids of every window whose title starts with "Keyline".
pub fn keyline_windows(display: &str) -> Vec<String> {
    let Ok(out) = Command::new("xwininfo")
        .args(["-root", "-tree"])
        .env("DISPLAY", display)
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"Keyline"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
