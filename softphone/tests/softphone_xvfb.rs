//! The real program in a real X server: `keyline-phone` starts under Xvfb
//! (rendered by Mesa on the CPU), its window's title starts with
//! "Keyline", and what it draws is the right screen: a screenshot read
//! back by OCR shows the pairing code of the real agent behind it, then,
//! once the station is approved, that it is ready; a second
//! `keyline-phone tel:...` hands its number to this window and exits.
//! Desktop integration: `xdg-open tel:...` through the packaged `.desktop`
//! file, and a window started hidden that a ringing call brings up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::x11::{keyline_window, keyline_windows, mapped, until_text, window_pid, xvfb, Proc};
use keyline_tests::{bin, jstr, ok, wait_for, LoopbackOffice};

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

/// Desktop integration as installed: the packaged `.desktop` file is
/// valid and registers `tel:` links; `xdg-open tel:1001` (the desktop's
/// own opener) starts the window with 1001 in the number field, and a
/// second link goes to the same window. Then the session's way of
/// starting it: `--hidden` keeps the window unmapped until a call rings.
#[test]
fn tel_links_through_xdg_open_and_a_hidden_window_that_rings_to_the_front() {
    let office = LoopbackOffice::start("phonedesk", &[]);
    let mut a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let b = office.agent("b", &["--audio-in", "tone:700", "--audio-out", "null"]);
    keyline_tests::enrol(&office.gw, &a, "201");
    keyline_tests::enrol(&office.gw, &b, "202");
    let (_x, display) = xvfb();

    // The desktop file as the package installs it, and the desktop's
    // database of handlers built from it (as dpkg's trigger does).
    let data = office.scratch.join("xdg-data");
    let apps = data.join("applications");
    std::fs::create_dir_all(&apps).unwrap();
    let desktop =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/desktop/keyline-phone.desktop");
    let v = Command::new("desktop-file-validate")
        .arg(&desktop)
        .output()
        .expect("desktop-file-validate (Debian desktop-file-utils)");
    assert!(
        v.status.success() && v.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    std::fs::copy(&desktop, apps.join("keyline-phone.desktop")).unwrap();
    let st = Command::new("update-desktop-database")
        .arg(&apps)
        .status()
        .expect("update-desktop-database");
    assert!(st.success());
    let bin_dir = bin("keyline-phone").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let config = office.scratch.join("xdg-config");
    std::fs::create_dir_all(&config).unwrap();
    let xdg = |args: &[&str], prog: &str| {
        let mut c = Command::new(prog);
        c.args(args)
            .env("DISPLAY", &display)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_DATA_HOME", &data)
            .env("XDG_DATA_DIRS", &data)
            .env("XDG_CONFIG_HOME", &config)
            .env("XDG_RUNTIME_DIR", office.scratch.join(""))
            .env("PATH", &path)
            // The window the link opens drives this agent (as the user's
            // own agent under systemd).
            .env("STATE_DIRECTORY", &a.state)
            .env("LANG", "C")
            .stdin(Stdio::null());
        c
    };
    let q = xdg(&["query", "default", "x-scheme-handler/tel"], "xdg-mime")
        .output()
        .expect("xdg-mime (Debian xdg-utils)");
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        "keyline-phone.desktop"
    );

    let log = std::fs::File::create(office.scratch.join("xdg-open.log")).unwrap();
    let _opener = Proc(
        xdg(&["tel:1001"], "xdg-open")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("xdg-open"),
    );
    let (window, _) = wait_for(
        "the window opened by the link",
        Duration::from_secs(30),
        || keyline_window(&display),
    );
    let shot = office.scratch.join("shot.png");
    until_text(&display, &window, &shot, "the linked number", |t| {
        t.contains("1001") && t.contains("Ready")
    });
    // A second link: the same window takes it, no second one opens.
    let second = xdg(&["tel:1002"], "xdg-open").output().expect("xdg-open");
    assert!(second.status.success(), "{second:?}");
    until_text(&display, &window, &shot, "the second number", |t| {
        t.contains("1002")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(keyline_windows(&display).len(), 1);
    // Close it: the window's own process, by the id it gives X.
    drop(_opener);
    let pid = window_pid(&display, &window).expect("the window's _NET_WM_PID");
    let _ = Command::new("kill").arg(pid.to_string()).status();
    wait_for("the linked window closed", Duration::from_secs(10), || {
        keyline_windows(&display).is_empty().then_some(())
    });

    // Started hidden (as the session's unit does): no window shows until a
    // call rings; then it comes up with the caller.
    let log = std::fs::File::create(office.scratch.join("hidden.log")).unwrap();
    let _phone = Proc(
        Command::new(bin("keyline-phone"))
            .arg("--state")
            .arg(&a.state)
            .args(["--lang", "en", "--hidden"])
            .env("DISPLAY", &display)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_RUNTIME_DIR", office.scratch.join(""))
            .env("XDG_CONFIG_HOME", &config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keyline-phone --hidden"),
    );
    let (window, _) = wait_for("the hidden window", Duration::from_secs(30), || {
        keyline_window(&display)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!mapped(&display, &window), "the hidden window is shown");
    ok(&b, &["dial", "201"]);
    wait_for(
        "the window shown by the ring",
        Duration::from_secs(10),
        || mapped(&display, &window).then_some(()),
    );
    until_text(&display, &window, &shot, "the caller", |t| {
        t.contains("202") && t.contains("Incoming call")
    });
    ok(&a, &["hangup"]);
    assert!(a.stop());
}
