//! The directory's web site in a real browser (headless Chromium through
//! playwright-core, `tests/browser/directory_web.mjs`) against a real
//! keyline-directory and real terminals on loopback: `minjun` signs up
//! with number 김민준, downloads the settings file, a terminal started
//! from it registers and rings when another terminal dials 김민준;
//! forwarding set on the web is what the next call follows; "Sign out
//! this device" drops the binding at once; a password changed on the
//! web is refused at the terminal's next login; mail left while away is
//! listed, another account gets 404 for it, and deleting it on the web
//! removes it from the store; bad input (taken number, mismatched
//! passwords, overlong fields, markup in a number, a form without its
//! CSRF token, 20 wrong passwords) gets the right answers; axe-core finds
//! no serious violations on any page. Any failed check in the script
//! fails this test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyline_tests::{bin, jstr, ok, wait_for, wait_state, Daemon, Scratch};
use serde_json::Value;

const PW: &str = "correct horse battery";
/// The password the browser changes minjun's to.
const NEW_PW: &str = "a new password 2026";

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn password_file(scratch: &Scratch, name: &str, pw: &str) -> PathBuf {
    let p = scratch.join(&format!("{name}.pw"));
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn terminal(scratch: &Scratch, name: &str, args: &[&str]) -> Daemon {
    terminal_with(scratch, name, PW, args)
}

fn terminal_with(scratch: &Scratch, name: &str, pw: &str, args: &[&str]) -> Daemon {
    let pw = password_file(scratch, name, pw);
    let mut all = vec!["terminal", "--password-file", pw.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--audio-in", "tone:600", "--audio-out", "null"]);
    Daemon::start(None, bin("keyline-agent"), &scratch.join(name), &all).expect("start a terminal")
}

fn registered(d: &Daemon) {
    wait_for("the terminal to register", Duration::from_secs(20), || {
        let s = d.json(&["status"]).ok()?;
        (jstr(&s, &["state"]).as_deref() == Some("registered")).then_some(())
    });
}

/// The string values of a flat TOML file (`key = "v"` and `key = ["a", "b"]`).
fn settings(path: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        let values: Vec<String> = v
            .split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_string())
            .collect();
        out.push((k.trim().to_string(), values));
    }
    out
}

fn get<'a>(s: &'a [(String, Vec<String>)], k: &str) -> &'a [String] {
    &s.iter().find(|(key, _)| key == k).unwrap().1
}

fn bound(dir: &Daemon, number: &str) -> bool {
    let b: Value = dir.json(&["bindings"]).unwrap();
    b["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["number"] == number)
}

#[test]
fn the_directory_site_in_a_browser() {
    let scratch = Scratch::new("dirweb");
    let port = free_tcp_port();
    let mport = free_tcp_port();
    let cfg = scratch.join("directory.toml");
    std::fs::write(
        &cfg,
        format!(
            "[web]\nlisten = \"127.0.0.1:{port}\"\n\
             [login]\nmax_failures_per_account = 20\nmax_failures_per_address = 100\n\
             max_failures_account_wide = 100\nlockout_secs = 2\n\
             [metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
        ),
    )
    .unwrap();
    let dir = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .expect("start the directory");
    let st = wait_for("the directory to start", Duration::from_secs(15), || {
        dir.json(&["status"]).ok()
    });
    let (listen, fp) = (
        jstr(&st, &["listen"]).unwrap(),
        jstr(&st, &["fingerprint"]).unwrap(),
    );
    assert_eq!(
        jstr(&st, &["web"]).as_deref(),
        Some(format!("https://127.0.0.1:{port}/").as_str())
    );
    keyline_tests::add_account(&dir.state, "caller", &["2002"], PW);
    keyline_tests::add_account(&dir.state, "helper", &["3003"], PW);
    let b = terminal(
        &scratch,
        "b",
        &["--directory", &listen, "--account", "caller"],
    );
    let c = terminal(
        &scratch,
        "c",
        &["--directory", &listen, "--account", "helper"],
    );
    registered(&b);
    registered(&c);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/directory_web.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .env("SITE_URL", format!("https://127.0.0.1:{port}"))
        .env("DIR_FP", &fp)
        .env("PASSWORD", PW)
        .env("NEW_PASSWORD", NEW_PW)
        .env("DOWNLOADS", scratch.join("downloads"))
        .env(
            "SHOTS",
            std::env::var_os("KEYLINE_SHOTS").unwrap_or(scratch.join("shots").into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (tests/browser needs its node_modules)");
    let mut to_node = node.stdin.take().unwrap();
    let from_node = BufReader::new(node.stdout.take().unwrap());
    let mut err = node.stderr.take().unwrap();
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });

    let mut a: Option<Daemon> = None;
    let mut a2: Option<Daemon> = None;
    for line in from_node.lines() {
        let Ok(line) = line else { break };
        let Some(step) = line.strip_prefix("STEP ") else {
            continue;
        };
        let mut words = step.splitn(2, ' ');
        let answer = match (words.next(), words.next()) {
            (Some("terminal-a"), Some(path)) => {
                // A terminal set up from the downloaded file alone (and
                // the password file the page tells the person to write).
                let s = settings(Path::new(path));
                assert!(
                    !std::fs::read_to_string(path).unwrap().contains(PW),
                    "no password in the file"
                );
                // `--config` takes everything from the file; the password
                // is where this test keeps it, not in the home directory.
                let d = terminal(&scratch, "a", &["--config", path]);
                assert_eq!(get(&s, "directory_fp")[0], fp);
                registered(&d);
                a = Some(d);
                String::new()
            }
            (Some("ring"), _) => {
                let ad = a.as_ref().unwrap();
                ok(&b, &["dial", "김민준"]);
                wait_state(ad, "alerting");
                ok(&b, &["hangup"]);
                keyline_tests::idle(ad);
                keyline_tests::idle(&b);
                String::new()
            }
            (Some("answered-call"), _) => {
                // After the missed one ("ring"): answered, about a second.
                let ad = a.as_ref().unwrap();
                ok(&b, &["dial", "김민준"]);
                wait_state(ad, "alerting");
                ok(ad, &["answer"]);
                wait_state(&b, "connected");
                std::thread::sleep(Duration::from_millis(1300));
                ok(&b, &["hangup"]);
                keyline_tests::idle(ad);
                keyline_tests::idle(&b);
                String::new()
            }
            (Some("forwarded"), _) => {
                // The rule set on the web is what this call follows.
                ok(&b, &["dial", "김민준"]);
                wait_state(&c, "alerting");
                let s = a.as_ref().unwrap().json(&["status"]).unwrap();
                assert!(s["call"].is_null(), "a rang too: {s}");
                ok(&b, &["hangup"]);
                keyline_tests::idle(&c);
                keyline_tests::idle(&b);
                String::new()
            }
            (Some("bound"), _) => {
                wait_for("김민준 registered", Duration::from_secs(20), || {
                    bound(&dir, "김민준").then_some(())
                });
                String::new()
            }
            (Some("unbound"), _) => {
                // At once: checked right after the click returned.
                assert!(!bound(&dir, "김민준"), "the binding is still there");
                String::new()
            }
            (Some("refused"), _) => {
                let ad = a.as_ref().unwrap();
                let e = wait_for(
                    "the terminal's login refused",
                    Duration::from_secs(20),
                    || {
                        jstr(&ad.json(&["status"]).ok()?, &["error"])
                            .filter(|e| e.contains("wrong account or password"))
                    },
                );
                assert!(!bound(&dir, "김민준"), "{e}");
                // Its retries would count against the account from this
                // address, as the browser's wrong passwords do next.
                a.take();
                String::new()
            }
            (Some("leave-mail"), _) => {
                ok(&b, &["message", "김민준", "hello", "from", "b"]);
                let mail = dir.json(&["mail", "list"]).unwrap();
                let n = mail["mail"].as_array().unwrap().len();
                assert_eq!(n, 1, "{mail}");
                String::new()
            }
            (Some("leave-voice"), _) => {
                // Two voice messages while 김민준 is away, left with the
                // client library as a caller's terminal would.
                let ogg = voice_message(&scratch);
                leave_voice_mail(&scratch, &listen, &fp, &ogg, 2);
                String::new()
            }
            (Some("voice-delivered"), _) => {
                // One was deleted on the web: only the other reaches the
                // terminal, and the deleted one never does.
                let d = terminal_with(
                    &scratch,
                    "a2",
                    NEW_PW,
                    &[
                        "--directory",
                        &listen,
                        "--directory-fp",
                        &fp,
                        "--account",
                        "minjun",
                    ],
                );
                registered(&d);
                let count = |d: &Daemon| -> Option<usize> {
                    Some(
                        d.json(&["voicemail", "list"]).ok()?["voicemails"]
                            .as_array()?
                            .len(),
                    )
                };
                wait_for(
                    "the kept voice mail delivered",
                    Duration::from_secs(20),
                    || count(&d).filter(|n| *n >= 1),
                );
                std::thread::sleep(Duration::from_secs(2));
                assert_eq!(count(&d), Some(1), "{:?}", d.json(&["voicemail", "list"]));
                a2 = Some(d);
                String::new()
            }
            (Some("mail-gone"), _) => {
                let mail = dir.json(&["mail", "list"]).unwrap();
                assert!(mail["mail"].as_array().unwrap().is_empty(), "{mail}");
                String::new()
            }
            other => panic!("unknown step {other:?}"),
        };
        writeln!(to_node, "OK {answer}").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "node did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(a2);
    let log = err_text.join().unwrap();
    eprintln!("{log}");
    assert!(status.success(), "the browser script failed:\n{log}");
    assert!(log.contains("ok: axe on account"), "{log}");

    // The directory's metrics saw it: registrations, look-ups, the wrong
    // passwords (web and terminal alike) and the lock-outs.
    let text = scrape(mport);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    assert!(
        value("keyline_directory_registrations_total") >= 4.0,
        "{text}"
    );
    assert!(
        value("keyline_directory_auth_failures_total") >= 20.0,
        "{text}"
    );
    assert!(value("keyline_directory_lockouts_total") >= 1.0, "{text}");
    assert!(value("keyline_directory_bindings") >= 2.0, "{text}");
    value("keyline_directory_lookups_total");
    value("keyline_directory_relay_bytes_total{direction=\"to_callee\"}");
}

/// The account and operator pages in headless Chromium
/// (`tests/browser/directory_account.mjs`): `jiwoo` signs up with 지우,
/// adds `Ji-Woo 2` (kept as `jiwoo2`), a taken number is refused next to
/// the field; a terminal registers both; removing jiwoo2 on the web
/// unbinds it at once and leaves 지우; with do-not-disturb on a call to
/// 지우 does not ring; forwarding when not answered sends the next call on
/// to 3003 after the ring timeout; busy to 3003 and offline to 2002 set
/// beside it on the web are each followed by the next call, and the
/// terminal's `forward list` shows all three; the operator sees the
/// rules, and searches accounts; Korean pages; the forms without
/// JavaScript; axe-core finds no serious violations.
#[test]
fn the_account_and_operator_pages_in_a_browser() {
    let scratch = Scratch::new("dirweb-account");
    let port = free_tcp_port();
    let cfg = scratch.join("directory.toml");
    std::fs::write(
        &cfg,
        format!("ring_timeout_secs = 3\n[web]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let dir = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .expect("start the directory");
    let st = wait_for("the directory to start", Duration::from_secs(15), || {
        dir.json(&["status"]).ok()
    });
    let listen = jstr(&st, &["listen"]).unwrap();
    keyline_tests::add_account(&dir.state, "caller", &["2002"], PW);
    keyline_tests::add_account(&dir.state, "helper", &["3003"], PW);
    let b = terminal(
        &scratch,
        "b",
        &["--directory", &listen, "--account", "caller"],
    );
    let c = terminal(
        &scratch,
        "c",
        &["--directory", &listen, "--account", "helper"],
    );
    registered(&b);
    registered(&c);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/directory_account.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .env("SITE_URL", format!("https://127.0.0.1:{port}"))
        .env("PASSWORD", PW)
        .env(
            "SHOTS",
            std::env::var_os("KEYLINE_SHOTS").unwrap_or(scratch.join("shots").into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (tests/browser needs its node_modules)");
    let mut to_node = node.stdin.take().unwrap();
    let from_node = BufReader::new(node.stdout.take().unwrap());
    let mut err = node.stderr.take().unwrap();
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });

    let mut j: Option<Daemon> = None;
    for line in from_node.lines() {
        let Ok(line) = line else { break };
        let Some(step) = line.strip_prefix("STEP ") else {
            continue;
        };
        match step {
            "terminal-j" => {
                let d = terminal(
                    &scratch,
                    "j",
                    &[
                        "--directory",
                        &listen,
                        "--account",
                        "jiwoo",
                        "--number",
                        "지우",
                        "--number",
                        "jiwoo2",
                    ],
                );
                registered(&d);
                wait_for("both numbers bound", Duration::from_secs(20), || {
                    (bound(&dir, "지우") && bound(&dir, "jiwoo2")).then_some(())
                });
                j = Some(d);
            }
            "unbound-jiwoo2" => {
                // At once: checked right after the click returned.
                assert!(!bound(&dir, "jiwoo2"), "jiwoo2 is still bound");
                assert!(bound(&dir, "지우"), "지우 went too");
            }
            "dnd-call" => {
                let jd = j.as_ref().unwrap();
                let _ = b.ctl(&["dial", "지우"]);
                let until = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < until {
                    assert!(
                        keyline_tests::call_state(jd).is_none(),
                        "지우 rang despite do-not-disturb"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                keyline_tests::idle(&b);
            }
            "no-answer-call" => {
                let jd = j.as_ref().unwrap();
                wait_for("지우 bound", Duration::from_secs(20), || {
                    bound(&dir, "지우").then_some(())
                });
                ok(&b, &["dial", "지우"]);
                wait_state(jd, "alerting");
                // Unanswered for the ring timeout (3 s), then 3003 rings.
                wait_state(&c, "alerting");
                keyline_tests::idle(jd);
                ok(&b, &["hangup"]);
                keyline_tests::idle(&c);
                keyline_tests::idle(&b);
            }
            "busy-and-offline-calls" => {
                let jd = j.take().unwrap();
                // The rules set on the web, as the terminal lists them.
                let out = jd.ctl(&["forward", "list"]);
                let list = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(out.status.success(), "{list}");
                for line in [
                    "지우: busy -> 3003",
                    "지우: no-answer -> 3003",
                    "지우: offline -> 2002",
                ] {
                    assert!(list.contains(line), "{line} missing from:\n{list}");
                }
                assert!(!list.contains("always"), "{list}");
                // Turned off and on again from the command line: the
                // target stays while it is off.
                let out = jd.ctl(&["forward", "off", "busy"]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(text.contains("지우: busy -> 3003 (off)"), "{text}");
                let out = jd.ctl(&["forward", "set", "--busy", "3003"]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(
                    text.contains("지우: busy -> 3003\n") && !text.contains("(off)"),
                    "{text}"
                );
                // Busy (do-not-disturb is on): 3003 rings, 지우 does not.
                ok(&b, &["dial", "지우"]);
                wait_state(&c, "alerting");
                assert!(keyline_tests::call_state(&jd).is_none(), "지우 rang");
                ok(&b, &["hangup"]);
                keyline_tests::idle(&c);
                keyline_tests::idle(&b);
                // Offline: with its terminal gone, a call from 3003 rings
                // 2002.
                drop(jd);
                wait_for("지우 unbound", Duration::from_secs(20), || {
                    (!bound(&dir, "지우")).then_some(())
                });
                ok(&c, &["dial", "지우"]);
                wait_state(&b, "alerting");
                ok(&c, &["hangup"]);
                keyline_tests::idle(&b);
                keyline_tests::idle(&c);
                // Back online for the operator's pages.
                let d = terminal(
                    &scratch,
                    "j2",
                    &["--directory", &listen, "--account", "jiwoo"],
                );
                registered(&d);
                j = Some(d);
            }
            "make-admin" => {
                ok(&dir, &["user", "admin", "jiwoo"]);
            }
            other => panic!("unknown step {other:?}"),
        }
        writeln!(to_node, "OK").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "node did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(j);
    let log = err_text.join().unwrap();
    eprintln!("{log}");
    assert!(status.success(), "the browser script failed:\n{log}");
    assert!(log.contains("ok: axe on operator in Korean"), "{log}");
    let rows = dir.json(&["bindings"]).unwrap();
    assert!(
        rows["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["number"] != "jiwoo2"),
        "{rows}"
    );
}

/// One second and a half of a tone as Ogg Opus (sox, opusenc).
fn voice_message(scratch: &Scratch) -> Vec<u8> {
    let wav = scratch.join("voice.wav");
    let ogg = scratch.join("voice.ogg");
    let st = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .args(["synth", "1.5", "sine", "440", "vol", "0.3"])
        .status()
        .expect("sox");
    assert!(st.success());
    let st = Command::new("opusenc")
        .arg("--quiet")
        .arg(&wav)
        .arg(&ogg)
        .status()
        .expect("opusenc (opus-tools)");
    assert!(st.success());
    std::fs::read(&ogg).unwrap()
}

/// Leave `n` voice messages for 김민준 as `caller`, with the client library.
fn leave_voice_mail(scratch: &Scratch, listen: &str, fp: &str, body: &[u8], n: usize) {
    use keyline_dirclient::client::DirClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(scratch.join("mailer")).unwrap();
        let id = keyline_net::Identity::load_or_create(&scratch.join("mailer"), "mailer").unwrap();
        let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
        let (c, _events) = DirClient::connect(&ep, &id, listen.parse().unwrap(), Some(fp.into()))
            .await
            .unwrap();
        c.login("caller", PW).await.unwrap();
        for _ in 0..n {
            c.leave_mail("김민준", keyline_proto::dir::MailKind::Voice, body, None)
                .await
                .unwrap();
        }
        c.close();
    });
}

/// `GET /metrics` over plain HTTP/1.1.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
