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

/// Real input into the real window, as a person's keyboard and mouse give
/// it: XTEST through `xdotool`. winit's X11 backend only takes keys for a
/// window it has seen an XInput2 FocusIn for (`active_window` in its event
/// processor); with no window manager the server's focus stays PointerRoot
/// and no FocusIn comes, so the window is given the focus first (as a
/// window manager would, `XSetInputFocus`). The pointer arrives over the
/// window before it clicks, as a hand's does: egui clicks where it last
/// saw the pointer.
pub fn xdotool(display: &str, args: &[&str]) {
    let st = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .status()
        .expect("xdotool (Debian xdotool) is needed for this test");
    assert!(st.success(), "xdotool {args:?} failed");
}

/// Give window `id` the keyboard focus and wait until the server says so.
pub fn focus(display: &str, id: &str) {
    xdotool(display, &["windowfocus", "--sync", id]);
}

/// Type `text` on the keyboard (into the focused window).
pub fn type_keys(display: &str, text: &str) {
    xdotool(display, &["type", "--delay", "40", text]);
}

/// Press and release a key by its X name (`Return`, `Escape`).
pub fn press_key(display: &str, key: &str) {
    xdotool(display, &["key", key]);
}

/// Move the pointer to (`x`, `y`) in window `id`, then click there.
pub fn click_at(display: &str, id: &str, x: i32, y: i32) {
    let (x, y) = (x.to_string(), y.to_string());
    xdotool(display, &["mousemove", "--window", id, &x, &y]);
    std::thread::sleep(Duration::from_millis(150));
    xdotool(display, &["click", "1"]);
}

/// Where the window shows `word` (the middle of the word, in window
/// pixels), read by OCR of a screenshot at 4x; also read with every
/// coloured pixel blacked out (the light blue text cursor beside what was
/// typed), and with the colours turned to black on white (light text on
/// coloured buttons).
pub fn find_word(display: &str, window: &str, shot: &Path, word: &str) -> Option<(i32, i32)> {
    let st = Command::new("import")
        .args(["-window", window, "-resize", "400%"])
        .arg(shot)
        .env("DISPLAY", display)
        .status()
        .ok()?;
    if !st.success() {
        return None;
    }
    let grey = shot.with_extension("grey.png");
    let _ = Command::new("convert")
        .arg(shot)
        .args(["(", "+clone", "-colorspace", "HSL", "-channel", "G"])
        .args(["-separate", "+channel", "-threshold", "12%", "-negate", ")"])
        .args(["-compose", "multiply", "-composite"])
        .arg(&grey)
        .status();
    let inverted = shot.with_extension("inv.png");
    let _ = Command::new("convert")
        .arg(shot)
        .args(["-colorspace", "Gray", "-threshold", "60%", "-negate"])
        .arg(&inverted)
        .status();
    for img in [shot, grey.as_path(), inverted.as_path()] {
        let Ok(out) = Command::new("tesseract")
            .arg(img)
            .args(["stdout", "--psm", "11", "tsv"])
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        // level page block par line word left top width height conf text
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 12 || f[11].trim() != word {
                continue;
            }
            let n = |i: usize| f[i].parse::<i32>().ok();
            if let (Some(l), Some(t), Some(w), Some(h)) = (n(6), n(7), n(8), n(9)) {
                return Some(((l + w / 2) / 4, (t + h / 2) / 4));
            }
        }
    }
    None
}

/// Click the button labelled `word` once the window shows it.
pub fn click_word(display: &str, window: &str, shot: &Path, word: &str) {
    let (x, y) = wait_for(
        &format!("{word} in the window"),
        Duration::from_secs(40),
        || find_word(display, window, shot, word),
    );
    click_at(display, window, x, y);
}

/// The real program for the agent whose state is `state`, on `display`,
/// in English, with no session bus (no notifications), logging to
/// `log`.
pub fn real_phone(state: &Path, display: &str, scratch: &Path, log: &Path) -> Proc {
    let logf = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(keyline_tests::bin("keyline-phone"))
            .arg("--state")
            .arg(state)
            .args(["--lang", "en"])
            .env("DISPLAY", display)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_RUNTIME_DIR", scratch)
            .env("XDG_CONFIG_HOME", scratch.join("config"))
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
            // One rendering thread (Mesa on the CPU): the test's other
            // windows and the agents share the same cores.
            .env("LP_NUM_THREADS", "1")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start keyline-phone"),
    )
}
